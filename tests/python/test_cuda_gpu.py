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

import hashlib
import os
import sys

import pytest
import torch

import ray
import ray_rdt
from ray.experimental.collective import create_collective_group, destroy_collective_group

from conftest import REPO, ReceivingActor, actor_stats, cluster_with_env

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
COUNTERS = ("bytes_sent", "bytes_received", "transfers", "errors")
# About a second of GPU time for torch.cuda._sleep (clock cycles).
LONG_WORK_CYCLES = 2_000_000_000
# What the plugin says when a rank cannot join an NCCL group because another
# rank of the group is on its device (src/transport/nccl/mod.rs).
ONE_GPU_REFUSAL = (
    r'(?s)joining NCCL group ".+" as rank [01] of 2 on cuda:0: .*'
    r"\(NCCL cannot form a communicator with two ranks on one GPU\)"
)


def counters(after, before):
    """What a process's counters of one transport grew by."""
    return {k: after[k] - before[k] for k in COUNTERS}


def grew(sent=0, received=0, transfers=0, errors=0):
    return {"bytes_sent": sent, "bytes_received": received, "transfers": transfers, "errors": errors}


def digest(tensor):
    """Every byte of a tensor (a checksum would let permuted or partly stale
    bytes pass), with its shape and dtype."""
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()
    return hashlib.sha256(raw).hexdigest(), tuple(tensor.shape), str(tensor.dtype)


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
    def after_long_work(self, n, value):
        # The returned memory first holds a sentinel (-1), written and finished
        # before anything else is queued; `value` is written by the last of the
        # work queued on the current stream, still running when the method
        # returns: only the plugin's event can order the consumer's copy after
        # it. A copy that did not wait reads -1 (or a mix), never `value`; each
        # round's value is new, so a block reused from an earlier round (torch's
        # caching allocator here, the plugin's pool in the consumer) cannot
        # pass for it.
        out = torch.full((n,), -1.0, device="cuda")
        torch.cuda.synchronize()
        stream = torch.cuda.current_stream()
        if hasattr(torch.cuda, "_sleep"):
            torch.cuda._sleep(LONG_WORK_CYCLES)
        else:
            a = torch.randn(4096, 4096, device="cuda")
            for _ in range(60):
                a = torch.tanh(a @ a)
        out.fill_(value)
        self.pending_at_return = not stream.query()
        self.tensor = out
        return out

    def was_pending_at_return(self):
        return self.pending_at_return

    @ray.method(tensor_transport="nccl")
    def make_nccl(self, n, seed):
        torch.manual_seed(seed)
        self.tensor = torch.randn(n, device="cuda")
        return self.tensor

    @ray.method(tensor_transport="nccl")
    def cpu_over_nccl(self):
        return torch.ones(4)

    def values(self, tensor):
        return tensor.cpu()

    def digest(self, tensor):
        assert tensor.device.type == "cuda", tensor.device
        return digest(tensor)

    def produce_ipc(self, tensors):
        return [ray.put(t.cuda(), _tensor_transport="cuda_ipc") for t in tensors]

    def consume(self, refs):
        out = []
        for ref in refs:
            t = ray.get(ref)
            assert t.device.type == "cuda", t.device
            out.append(t.cpu())
        return out

    def device_uuid(self):
        return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)


@pytest.fixture(scope="module")
def pair(gpu_cluster):
    return CudaActor.remote(), CudaActor.remote()


# -- cuda_ipc -------------------------------------------------------------------


def test_cuda_ipc_between_actors(pair):
    sender, receiver = pair
    r0, s0 = actor_stats(receiver, "cuda_ipc"), actor_stats(sender, "cuda_ipc")
    ref = sender.make_ipc.remote(1 << 20, 3)
    got = ray.get(receiver.digest.remote(ref))
    own = ray.get(sender.digest.remote(ref))  # its own tensor, no transfer
    assert own[1:] == ((1 << 20,), "torch.float32")
    assert got == own, "the receiver's copy differs from the producer's tensor"
    assert counters(actor_stats(receiver, "cuda_ipc"), r0) == grew(received=(1 << 20) * 4, transfers=1)
    # One-sided: the producer's process neither sends nor counts anything.
    assert counters(actor_stats(sender, "cuda_ipc"), s0) == grew()


def test_cuda_ipc_waits_for_the_producers_stream(pair):
    sender, receiver = pair
    n = 1 << 20
    for i in range(3):
        value = 3.0 + i
        r0, s0 = actor_stats(receiver, "cuda_ipc"), actor_stats(sender, "cuda_ipc")
        values = ray.get(receiver.values.remote(sender.after_long_work.remote(n, value)))
        assert ray.get(sender.was_pending_at_return.remote()), (
            "the producer's work had finished when its method returned: this round tested no ordering "
            "(make LONG_WORK_CYCLES larger)"
        )
        assert torch.equal(values, torch.full((n,), value)), (
            f"round {i}: the consumer read {values.unique()[:8].tolist()}, not only {value}: "
            "its copy did not wait for the producer's stream"
        )
        assert counters(actor_stats(receiver, "cuda_ipc"), r0) == grew(received=n * 4, transfers=1)
        assert counters(actor_stats(sender, "cuda_ipc"), s0) == grew()


def test_cuda_ipc_driver_get_and_actor_put(pair):
    sender, receiver = pair
    d0 = ray_rdt.stats()["cuda_ipc"]
    ref = sender.make_ipc.remote(4096, 5)
    got = ray.get(ref)  # one-sided: ray.get copies over CUDA IPC
    assert got.device.type == "cuda"
    assert digest(got) == ray.get(sender.digest.remote(ref))
    assert counters(ray_rdt.stats()["cuda_ipc"], d0) == grew(received=4096 * 4, transfers=1)
    a, b = torch.randn(1000, 1000), torch.randn(1000, 1000)
    r0 = actor_stats(receiver, "cuda_ipc")
    got = ray.get(receiver.consume.remote(sender.produce_ipc.remote([a, b])))
    assert len(got) == 2 and torch.equal(got[0], a) and torch.equal(got[1], b)
    assert counters(actor_stats(receiver, "cuda_ipc"), r0) == grew(received=2 * TENSOR_BYTES, transfers=2)


def test_cuda_ipc_pass_back_is_the_same_memory(pair):
    sender, _ = pair
    s0 = actor_stats(sender, "cuda_ipc")
    ref = sender.make_ipc.remote(1024, 1)
    ptr, _ = ray.get(sender.ptr_and_sum.remote(ref))
    assert ptr == ray.get(sender.stored_ptr.remote())
    assert counters(actor_stats(sender, "cuda_ipc"), s0) == grew(), "no transfer"


def test_cuda_ipc_many_objects_one_allocation(pair):
    # torch's caching allocator hands out blocks of one segment: each object's
    # handle names the segment, and the consumer maps it once.
    sender, receiver = pair
    r0 = actor_stats(receiver, "cuda_ipc")
    refs = [sender.make_ipc.remote(256, i) for i in range(20)]
    got = ray.get([receiver.digest.remote(r) for r in refs])
    own = ray.get([sender.digest.remote(r) for r in refs])
    assert len(set(own)) == 20, "20 different objects"
    assert got == own
    assert counters(actor_stats(receiver, "cuda_ipc"), r0) == grew(received=20 * 256 * 4, transfers=20)


def test_cuda_ipc_walkthrough(gpu_cluster, capsys):
    stats = run_walkthrough.run_example(os.path.join(REPO, "examples", "gpu", "cuda_ipc_01_walkthrough.py"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("tensor([[") and "device='cuda:" in lines[-2]
    float(lines[-1])
    received = {name: s["cuda_ipc"]["bytes_received"] for name, (_, s) in stats.items()}
    assert received == {"receiver": 3 * TENSOR_BYTES, "sender": 0, run_walkthrough.DRIVER: TENSOR_BYTES}
    assert {name: s["cuda_ipc"]["errors"] for name, (_, s) in stats.items()} == dict.fromkeys(stats, 0)


# -- nccl, one device -------------------------------------------------------------


def test_nccl_one_rank_group(gpu_cluster):
    (actor,) = [CudaActor.remote()]
    group = create_collective_group([actor], backend="nccl")
    try:
        s0 = actor_stats(actor, "nccl")
        ref = actor.make_nccl.remote(1024, 2)
        ptr, _ = ray.get(actor.ptr_and_sum.remote(ref))
        assert ptr == ray.get(actor.stored_ptr.remote()), "passed back to its producer: the same memory"
        with pytest.raises(ValueError, match=r"ray.get\(\) only supports OBJECT_STORE and NIXL"):
            ray.get(ref)
        assert counters(actor_stats(actor, "nccl"), s0) == grew(), "no transfer"
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
    from ray_rdt._ffi import RdtTimeoutError, RdtTransportError

    a, b = CudaActor.remote(), CudaActor.remote()
    # The plugin's own refusal, from the member's join (not, say, stock Ray's
    # "Backend NCCL is not available" where cupy is missing).
    with pytest.raises(ray.exceptions.RayTaskError, match=ONE_GPU_REFUSAL) as info:
        create_collective_group([a, b], backend="nccl")
    assert isinstance(info.value.cause, (RdtTransportError, RdtTimeoutError)), repr(info.value.cause)
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
        got = ray.get(receiver.digest.remote(ref))
        own = ray.get(sender.digest.remote(ref))  # its own tensor, no transfer
        assert own[1:] == ((1 << 22,), "torch.float32")
        assert got == own, "the receiver's copy differs from the sender's tensor"
        size = (1 << 22) * 4
        assert counters(actor_stats(receiver, "nccl"), r0) == grew(received=size, transfers=1)
        assert counters(actor_stats(sender, "nccl"), s0) == grew(sent=size, transfers=1)
        # Crossing transfers (one NCCL transfer per rank at a time; a rank busy
        # with its own fetch answers "busy" and is asked again): no deadlock,
        # every byte right, each object counted once on each side.
        s1, r1 = actor_stats(sender, "nccl"), actor_stats(receiver, "nccl")
        n = 1 << 20
        back = receiver.make_nccl.remote(n, 6)
        refs = [sender.make_nccl.remote(n, i) for i in range(4)]
        got = ray.get([receiver.digest.remote(r) for r in refs] + [sender.digest.remote(back)])
        own = ray.get([sender.digest.remote(r) for r in refs] + [receiver.digest.remote(back)])
        assert len(set(own)) == 5, "5 different objects"
        assert got == own
        assert counters(actor_stats(receiver, "nccl"), r1) == grew(sent=n * 4, received=4 * n * 4, transfers=5)
        assert counters(actor_stats(sender, "nccl"), s1) == grew(sent=4 * n * 4, received=n * 4, transfers=5)
    finally:
        destroy_collective_group(group)


@TWO_GPUS
def test_nccl_guide_example(gpu_cluster, capsys):
    stats = run_walkthrough.run_example(os.path.join(REPO, "examples", "gpu", "nccl_01_walkthrough.py"))
    nccl = {name: s["nccl"] for name, (_, s) in stats.items()}
    assert nccl["receiver"]["bytes_received"] == TENSOR_BYTES and nccl["sender"]["bytes_received"] == 0
    assert nccl["sender"]["bytes_sent"] == TENSOR_BYTES and nccl["receiver"]["bytes_sent"] == 0
    assert (nccl["sender"]["transfers"], nccl["receiver"]["transfers"]) == (1, 1)
    assert nccl["sender"]["errors"] == nccl["receiver"]["errors"] == 0
