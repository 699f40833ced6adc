"""CUDA tensors through the plugin's ``cuda_ipc`` and ``nccl`` transports, on a
GPU. Marked ``gpu``; skipped, with the reason, where ``torch.cuda.is_available()``
is False. ``ci/gpu-nightly`` runs them (NIXL on CUDA: test_nixl_gpu.py).

The module's cluster routes NCCL and CUDA_IPC through the plugin
(``RAY_RDT_PLUGIN_TRANSPORTS``). On a machine with one GPU it declares two and
sets ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1``, so two actors share
device 0: cuda_ipc then copies between two processes on one GPU, while NCCL,
which cannot put two ranks of one communicator on one device, runs only its
single-device tests (a one-rank group; two ranks on one GPU fail clearly). The
two-GPU NCCL tests skip there, saying so."""

import os
import sys

import pytest
import torch

import ray
import ray_rdt
from ray.experimental.collective import create_collective_group, destroy_collective_group

from conftest import REPO, ReceivingActor, actor_stats, cluster_with_env, delta

CUDA = torch.cuda.is_available()
DEVICES = torch.cuda.device_count() if CUDA else 0
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not CUDA, reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine (ci/gpu-nightly runs these)"
    ),
]
TWO_GPUS = pytest.mark.skipif(
    CUDA and DEVICES < 2,
    reason=f"needs 2 GPUs: NCCL cannot form a two-rank communicator on one device ({DEVICES} GPU here); "
    "the single-device nccl tests ran instead",
)
ONE_GPU = pytest.mark.skipif(CUDA and DEVICES != 1, reason="checks what happens on a machine with exactly one GPU")

sys.path.insert(0, os.path.join(REPO, "examples"))

import run_walkthrough  # noqa: E402

NOSET = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"
ENV = {
    "RAY_RDT_PLUGIN_TRANSPORTS": "gloo,shm,nixl,nccl,cuda_ipc",
    "RAY_RDT_GROUP_TIMEOUT_S": "30",
}
TENSOR_BYTES = 1000 * 1000 * 4


@pytest.fixture(scope="module")
def gpu_cluster():
    env = dict(ENV)
    if DEVICES < 2:
        env[NOSET] = "1"
        print(
            f"\n{DEVICES} GPU: NCCL cannot form a two-rank communicator on one device; "
            "running only the single-device nccl tests"
        )
    with cluster_with_env(env, num_cpus=8, num_gpus=max(2, DEVICES)) as r:
        yield r


@ray.remote(num_gpus=1)
class CudaActor(ReceivingActor):
    @ray.method(tensor_transport="cuda_ipc")
    def make_ipc(self, n, seed):
        torch.manual_seed(seed)
        self.tensor = torch.randn(n, device="cuda")
        return self.tensor

    @ray.method(tensor_transport="cuda_ipc")
    def after_long_work(self, n):
        # Queued on the current stream and still running when the method
        # returns: the plugin's event must order the consumer's copy after it.
        a = torch.randn(4096, 4096, device="cuda")
        for _ in range(30):
            a = torch.tanh(a @ a)
        out = torch.full((n,), 3.0, device="cuda")
        out += a[0, 0] * 0
        return out

    @ray.method(tensor_transport="nccl")
    def make_nccl(self, n, seed):
        torch.manual_seed(seed)
        self.tensor = torch.randn(n, device="cuda")
        return self.tensor

    @ray.method(tensor_transport="nccl")
    def cpu_over_nccl(self):
        return torch.ones(4)

    def checksum(self, tensor):
        assert tensor.device.type == "cuda", tensor.device
        return tensor.double().sum().item(), tuple(tensor.shape), tensor.dtype

    def values(self, tensor):
        return tensor.cpu()

    def produce_ipc(self, tensors):
        return [ray.put(t.cuda(), _tensor_transport="cuda_ipc") for t in tensors]

    def consume(self, refs):
        out = []
        for ref in refs:
            t = ray.get(ref)
            assert t.device.type == "cuda", t.device
            out.append(t.double().sum().item())
        return out

    def device_uuid(self):
        return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)


@pytest.fixture(scope="module")
def pair(gpu_cluster):
    return CudaActor.remote(), CudaActor.remote()


# -- cuda_ipc -------------------------------------------------------------------


def test_cuda_ipc_between_actors(pair):
    sender, receiver = pair
    r0 = actor_stats(receiver, "cuda_ipc")
    ref = sender.make_ipc.remote(1 << 20, 3)
    total, shape, dtype = ray.get(receiver.checksum.remote(ref))
    expected = ray.get(sender.checksum.remote(ref))[0]  # its own tensor, no transfer
    assert shape == (1 << 20,) and dtype == torch.float32
    assert total == pytest.approx(expected)
    r1 = actor_stats(receiver, "cuda_ipc")
    assert delta(r1, r0) == (1 << 20) * 4 and r1["transfers"] - r0["transfers"] == 1


def test_cuda_ipc_waits_for_the_producers_stream(pair):
    sender, receiver = pair
    for _ in range(3):
        values = ray.get(receiver.values.remote(sender.after_long_work.remote(1 << 16)))
        assert torch.equal(values, torch.full((1 << 16,), 3.0))


def test_cuda_ipc_driver_get_and_actor_put(pair):
    sender, receiver = pair
    d0 = ray_rdt.stats()["cuda_ipc"]
    got = ray.get(sender.make_ipc.remote(4096, 5))  # one-sided: ray.get copies over CUDA IPC
    assert got.device.type == "cuda"
    assert delta(ray_rdt.stats()["cuda_ipc"], d0) == 4096 * 4
    a, b = torch.randn(1000, 1000), torch.randn(1000, 1000)
    sums = ray.get(receiver.consume.remote(sender.produce_ipc.remote([a, b])))
    assert sums == pytest.approx([a.double().sum().item(), b.double().sum().item()], rel=1e-6)


def test_cuda_ipc_pass_back_is_the_same_memory(pair):
    sender, _ = pair
    ref = sender.make_ipc.remote(1024, 1)
    ptr, _ = ray.get(sender.ptr_and_sum.remote(ref))
    assert ptr == ray.get(sender.stored_ptr.remote())


def test_cuda_ipc_many_objects_one_allocation(pair):
    # torch's caching allocator hands out blocks of one segment: each object's
    # handle names the segment, and the consumer maps it once.
    sender, receiver = pair
    r0 = actor_stats(receiver, "cuda_ipc")
    refs = [sender.make_ipc.remote(256, i) for i in range(20)]
    sums = ray.get([receiver.checksum.remote(r) for r in refs])
    own = ray.get([sender.checksum.remote(r) for r in refs])
    assert [s[0] for s in sums] == pytest.approx([s[0] for s in own])
    assert delta(actor_stats(receiver, "cuda_ipc"), r0) == 20 * 256 * 4


def test_cuda_ipc_walkthrough(gpu_cluster, capsys):
    stats = run_walkthrough.run_example(os.path.join(REPO, "examples", "gpu", "cuda_ipc_01_walkthrough.py"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("tensor([[") and "device='cuda:" in lines[-2]
    float(lines[-1])
    received = {name: s["cuda_ipc"]["bytes_received"] for name, (_, s) in stats.items()}
    assert received == {"receiver": 3 * TENSOR_BYTES, "sender": 0, run_walkthrough.DRIVER: TENSOR_BYTES}


# -- nccl, one device -------------------------------------------------------------


def test_nccl_one_rank_group(gpu_cluster):
    (actor,) = [CudaActor.remote()]
    group = create_collective_group([actor], backend="nccl")
    try:
        ref = actor.make_nccl.remote(1024, 2)
        ptr, _ = ray.get(actor.ptr_and_sum.remote(ref))
        assert ptr == ray.get(actor.stored_ptr.remote()), "passed back to its producer: the same memory"
        with pytest.raises(ValueError, match=r"ray.get\(\) only supports OBJECT_STORE and NIXL"):
            ray.get(ref)
    finally:
        destroy_collective_group(group)


def test_nccl_cpu_tensor_is_a_system_error(gpu_cluster):
    actor = CudaActor.remote()
    group = create_collective_group([actor], backend="nccl")
    with pytest.raises(ray.exceptions.RayTaskError, match="is a cpu tensor, which the nccl transport does not move"):
        ray.get(actor.cpu_over_nccl.remote(), _tensor_transport="object_store")
    # The guide: the collective group is destroyed; a new one can be created.
    from ray.experimental.collective import get_collective_groups

    group = create_collective_group([actor], backend="nccl")  # purges the broken one first
    assert [g.name for g in get_collective_groups([actor], backend="nccl")] == [group.name]
    destroy_collective_group(group)


@ONE_GPU
def test_nccl_two_ranks_on_one_gpu_fail_clearly(gpu_cluster):
    a, b = CudaActor.remote(), CudaActor.remote()
    with pytest.raises(Exception) as info:
        create_collective_group([a, b], backend="nccl")
    assert "NCCL" in str(info.value)
    # Both actors live on.
    assert ray.get(a.device_uuid.remote()) == ray.get(b.device_uuid.remote())


# -- nccl, two devices ------------------------------------------------------------


@TWO_GPUS
def test_nccl_between_two_gpus(gpu_cluster):
    sender, receiver = CudaActor.remote(), CudaActor.remote()
    group = create_collective_group([sender, receiver], backend="nccl")
    try:
        s0, r0 = actor_stats(sender, "nccl"), actor_stats(receiver, "nccl")
        ref = sender.make_nccl.remote(1 << 22, 4)
        total, shape, _ = ray.get(receiver.checksum.remote(ref))
        assert total == pytest.approx(ray.get(sender.checksum.remote(ref))[0])
        assert delta(actor_stats(receiver, "nccl"), r0) == (1 << 22) * 4
        assert delta(actor_stats(sender, "nccl"), s0, "bytes_sent") == (1 << 22) * 4
        # Crossing transfers do not deadlock (one NCCL transfer per rank at a time).
        back = receiver.make_nccl.remote(1 << 20, 6)
        refs = [sender.make_nccl.remote(1 << 20, i) for i in range(4)]
        results = ray.get([receiver.checksum.remote(r) for r in refs] + [sender.checksum.remote(back)])
        assert len(results) == 5
    finally:
        destroy_collective_group(group)


@TWO_GPUS
def test_nccl_guide_example(gpu_cluster, capsys):
    stats = run_walkthrough.run_example(os.path.join(REPO, "examples", "gpu", "nccl_01_walkthrough.py"))
    received = {name: s["nccl"]["bytes_received"] for name, (_, s) in stats.items()}
    assert received["receiver"] == TENSOR_BYTES and received["sender"] == 0
