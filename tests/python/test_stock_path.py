"""Objects the plugin leaves to stock Ray's transport code (ray_rdt.stock_path):
CUDA tensors over nixl until the plugin's CUDA paths have run on a GPU.

The routing decision is tested on its own (no GPU is needed to decide); the
stock path end to end runs here with CPU tensors, by telling the plugin's nixl
to move no device itself (``RAY_RDT_NIXL_DEVICES=`` for this module's cluster):
the bytes then move through stock Ray's ``NixlTensorTransport``, which the
plugin's counters show by not moving."""

import types

import pytest
import torch

import ray
from ray.experimental import set_target_for_ref

from conftest import actor_stats, wait_for

# Nothing through the plugin's nixl: every nixl object takes stock Ray's path.
RAY_ENV = {"RAY_RDT_NIXL_DEVICES": ""}


def on(device):
    return types.SimpleNamespace(device=types.SimpleNamespace(type=device))


def test_cuda_objects_on_nixl_take_stock_rays_path_by_default(monkeypatch):
    from ray_rdt import stock_path

    monkeypatch.delenv("RAY_RDT_NIXL_DEVICES", raising=False)
    assert stock_path.takes("NIXL", [on("cuda")])
    assert not stock_path.takes("NIXL", [on("cpu")])
    # Other transports decide for themselves (gloo and shm refuse CUDA tensors,
    # nccl and cuda_ipc are stock Ray's unless RAY_RDT_PLUGIN_TRANSPORTS lists them).
    assert not stock_path.takes("SHM", [on("cuda")])
    assert not stock_path.takes("NIXL", [])


def test_the_setting_turns_the_plugins_cuda_path_on(monkeypatch):
    from ray_rdt import stock_path

    monkeypatch.setenv("RAY_RDT_NIXL_DEVICES", "cpu,cuda")
    assert not stock_path.takes("NIXL", [on("cuda")])
    monkeypatch.setenv("RAY_RDT_NIXL_DEVICES", "")
    assert stock_path.takes("NIXL", [on("cpu")])


def test_the_doctor_says_which_devices_the_plugins_nixl_moves(monkeypatch):
    from ray_rdt import doctor

    monkeypatch.delenv("RAY_RDT_NIXL_DEVICES", raising=False)
    text = doctor.format_report(doctor.report())
    assert "nixl moves     cpu through the plugin" in text
    assert "stock Ray's NIXL code" in text


@ray.remote
class Producer:
    def __init__(self):
        self.t = torch.arange(1 << 16, dtype=torch.float32)

    @ray.method(tensor_transport="nixl")
    def tensor(self):
        return self.t

    def put(self):
        return [ray.put([self.t[:100], self.t[100:]], _tensor_transport="nixl")]

    def held(self):
        import ray

        return ray._private.worker.global_worker.rdt_manager.rdt_store.get_num_objects()


@ray.remote
class Consumer:
    def total(self, t):
        return float(t.sum())

    def into_targets(self, refs):
        a, b = torch.zeros(100), torch.zeros((1 << 16) - 100)
        set_target_for_ref(refs[0], [a, b])
        got = ray.get(refs[0])
        return got[0].data_ptr() == a.data_ptr(), float(a.sum() + b.sum())


def test_nixl_objects_move_through_stock_rays_code(ray_cluster):
    producer, consumer = Producer.remote(), Consumer.remote()
    expected = float(sum(range(1 << 16)))
    before = actor_stats(consumer, "nixl")["bytes_received"]
    # A task return, as a task argument; a put into targets, in a borrower.
    assert ray.get(consumer.total.remote(producer.tensor.remote())) == expected
    assert ray.get(consumer.into_targets.remote(ray.get(producer.put.remote()))) == (True, expected)
    # None of it went through the plugin's nixl.
    assert actor_stats(consumer, "nixl")["bytes_received"] == before
    # Ray's own free task releases them on the producer once the refs are gone.
    assert wait_for(lambda: ray.get(producer.held.remote()) == 0, timeout=30), ray.get(producer.held.remote())
