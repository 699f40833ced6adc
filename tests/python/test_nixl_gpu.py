"""NIXL through the plugin with CUDA tensors: the guide's NIXL walkthrough
verbatim (examples/gpu/nixl_01_walkthrough_cuda.py) and the CPU suite's main
paths on the GPU. Marked ``gpu``; skipped, with the reason, where
``torch.cuda.is_available()`` is False. ``ci/gpu-nightly`` runs them.

The guide's actors ask for ``num_gpus=1`` each. On a one-GPU machine the module's
cluster declares two GPUs and sets ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1``
so that both actors (and the driver) use device 0; NIXL then moves the bytes
between two processes on one device (UCX cuda_ipc).

By default CUDA tensors on nixl take stock Ray's NIXL code
(``ray_rdt.stock_path``) until these tests have passed on a GPU; the module's
cluster turns the plugin's CUDA path on (``RAY_RDT_NIXL_DEVICES=cpu,cuda``), and
one test checks the default on the GPU."""

import hashlib
import os
import sys

import pytest
import torch

import ray
import ray_rdt

from conftest import REPO, actor_stats

CUDA = torch.cuda.is_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not CUDA, reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine (ci/gpu-nightly runs these)"
    ),
]

sys.path.insert(0, os.path.join(REPO, "examples"))

import run_walkthrough  # noqa: E402

TENSOR_BYTES = 1000 * 1000 * 4
NOSET = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"
DEVICES = "RAY_RDT_NIXL_DEVICES"
COUNTERS = ("bytes_sent", "bytes_received", "transfers", "errors")


def counters(after, before):
    """What a process's counters of one transport grew by."""
    return {k: after[k] - before[k] for k in COUNTERS}


def digest(tensor):
    """Every byte of a tensor (a checksum would let permuted or partly stale
    bytes pass), with its shape and dtype."""
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()
    return hashlib.sha256(raw).hexdigest(), tuple(tensor.shape), str(tensor.dtype)


@pytest.fixture(scope="module")
def gpu_cluster():
    if ray.is_initialized():
        ray.shutdown()
    devices = torch.cuda.device_count()
    shared = devices < 2
    if shared:
        os.environ[NOSET] = "1"
    # The plugin's own CUDA path, in the driver and (inherited) every worker.
    os.environ[DEVICES] = "cpu,cuda"
    ray.init(num_cpus=8, num_gpus=max(2, devices), include_dashboard=False)
    yield ray
    ray.shutdown()
    os.environ.pop(DEVICES, None)
    if shared:
        os.environ.pop(NOSET, None)


@ray.remote(num_gpus=1)
class CudaActor:
    @ray.method(tensor_transport="nixl")
    def make(self, n, seed):
        torch.manual_seed(seed)
        return torch.randn(n, device="cuda")

    @ray.method(tensor_transport="nixl")
    def echo(self, data):
        return data

    def digest(self, tensor):
        assert tensor.device.type == "cuda", tensor.device
        return digest(tensor)

    def produce(self, tensors):
        return [ray.put(t.cuda(), _tensor_transport="nixl") for t in tensors]

    def consume_with_nixl(self, refs):
        out = []
        for ref in refs:
            t = ray.get(ref)
            assert t.device.type == "cuda", t.device
            out.append(t.cpu())
        return out


@pytest.fixture(scope="module")
def actors(gpu_cluster):
    return CudaActor.remote(), CudaActor.remote()


def test_guide_walkthrough_cuda(gpu_cluster, capsys):
    stats = run_walkthrough.run_example(os.path.join(REPO, "examples", "gpu", "nixl_01_walkthrough_cuda.py"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("tensor([[") and "device='cuda:" in lines[-2]
    float(lines[-1])
    received = {name: s["nixl"]["bytes_received"] for name, (_, s) in stats.items()}
    assert received == {"receiver": 3 * TENSOR_BYTES, "sender": 0, run_walkthrough.DRIVER: TENSOR_BYTES}
    assert {name: s["nixl"]["errors"] for name, (_, s) in stats.items()} == dict.fromkeys(stats, 0)


def test_cuda_tensor_between_actors(actors):
    sender, receiver = actors
    r0 = actor_stats(receiver, "nixl")
    d0 = ray_rdt.stats()["nixl"]
    ref = sender.make.remote(1 << 20, 7)
    got = ray.get(receiver.digest.remote(ref))
    own = ray.get(sender.digest.remote(ref))  # its own tensor, no transfer
    local = ray.get(ref)  # the driver reads over NIXL into its own GPU memory
    assert local.device.type == "cuda"
    assert own[1:] == ((1 << 20,), "torch.float32")
    assert got == own, "the receiver's copy differs from the producer's tensor"
    assert digest(local) == own, "the driver's copy differs from the producer's tensor"
    size = (1 << 20) * 4
    assert counters(actor_stats(receiver, "nixl"), r0) == {
        "bytes_sent": 0,
        "bytes_received": size,
        "transfers": 1,
        "errors": 0,
    }
    assert counters(ray_rdt.stats()["nixl"], d0) == {"bytes_sent": 0, "bytes_received": size, "transfers": 1, "errors": 0}


def test_cuda_put_and_consume_with_nixl(actors):
    sender, receiver = actors
    a, b = torch.randn(1000, 1000), torch.randn(1000, 1000)
    r0 = actor_stats(receiver, "nixl")
    got = ray.get(receiver.consume_with_nixl.remote(sender.produce.remote([a, b])))
    assert len(got) == 2 and torch.equal(got[0], a) and torch.equal(got[1], b)
    assert counters(actor_stats(receiver, "nixl"), r0) == {
        "bytes_sent": 0,
        "bytes_received": 2 * TENSOR_BYTES,
        "transfers": 2,
        "errors": 0,
    }


def test_cuda_driver_get_and_stats(actors):
    sender, _ = actors
    d0 = ray_rdt.stats()["nixl"]
    data = {"x": torch.arange(4096, dtype=torch.int64), "y": [torch.ones(3, 3)]}
    ref = sender.echo.remote({k: v.cuda() if torch.is_tensor(v) else [t.cuda() for t in v] for k, v in data.items()})
    got = ray.get(ref)
    assert got["x"].device.type == "cuda" and torch.equal(got["x"].cpu(), data["x"])
    assert got["y"][0].device.type == "cuda" and torch.equal(got["y"][0].cpu(), data["y"][0])
    assert counters(ray_rdt.stats()["nixl"], d0) == {
        "bytes_sent": 0,
        "bytes_received": data["x"].nbytes + data["y"][0].nbytes,
        "transfers": 1,
        "errors": 0,
    }


def test_cuda_objects_take_stock_rays_nixl_by_default(actors):
    """A producer with the default setting leaves its CUDA tensors to stock
    Ray's NIXL code: the bytes arrive, and no plugin counter moves."""
    _, receiver = actors
    sender = CudaActor.options(runtime_env={"env_vars": {DEVICES: "cpu"}}).remote()
    r0, s0 = actor_stats(receiver, "nixl"), actor_stats(sender, "nixl")
    ref = sender.make.remote(1 << 20, 11)
    assert ray.get(receiver.digest.remote(ref)) == ray.get(sender.digest.remote(ref))
    assert counters(actor_stats(receiver, "nixl"), r0) == dict.fromkeys(COUNTERS, 0)
    assert counters(actor_stats(sender, "nixl"), s0) == dict.fromkeys(COUNTERS, 0)
