"""``tensor_transport="nixl"`` through the plugin (the default in the patched Ray):
the guide's NIXL section in CPU form, ``ray.put`` inside actors, ``ray.get`` from
actors and from the driver, each checked against the plugin's counters
(``ray_rdt.stats()``), and the faults: a dead producer and a missing NIXL.

CUDA variants: test_nixl_gpu.py (skipped without a GPU)."""

import ast
import gc
import os
import subprocess
import sys
import time

import pytest
import torch

import ray
import ray_rdt

from conftest import HERE, REPO, ReceivingActor, actor_stats, delta, num_rdt_objects, wait_for, TRANSPORT_ONLY
from holds import pid_alive

# These tests exercise the transport itself (see conftest.TRANSPORT_ONLY).
RAY_ENV = TRANSPORT_ONLY

sys.path.insert(0, os.path.join(REPO, "examples"))

import run_walkthrough  # noqa: E402

TENSOR_BYTES = 1000 * 1000 * 4  # torch.randn(1000, 1000), float32


@ray.remote
class NixlActor(ReceivingActor):
    @ray.method(tensor_transport="nixl")
    def random_tensor(self, n=1000):
        return torch.randn(n, n)

    @ray.method(tensor_transport="nixl")
    def echo(self, data):
        return data

    @ray.method(tensor_transport="nixl")
    def keep_and_return(self, n):
        self.tensor = torch.randn(n)
        # 2.60's NIXL helpers are accepted (the plugin caches registrations itself).
        ray.experimental.register_nixl_memory(self.tensor)
        ray.experimental.deregister_nixl_memory(self.tensor)
        return self.tensor

    def describe(self, data):
        """What the task received: values, dtypes, shapes, devices (nested)."""
        if isinstance(data, torch.Tensor):
            return ("tensor", data.clone(), data.device.type)
        if isinstance(data, dict):
            return {k: self.describe(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return [self.describe(v) for v in data]
        return data

    def produce(self, tensors):
        return [ray.put(t, _tensor_transport="nixl") for t in tensors]

    def consume_with_nixl(self, refs):
        tensors = [ray.get(ref) for ref in refs]
        total = 0
        for t in tensors:
            assert t.device.type == "cpu"
            total += t.sum().item()
        return total

    def get_and_describe(self, refs):
        return [self.describe(ray.get(ref)) for ref in refs]

    def slow(self):
        time.sleep(60)


@pytest.fixture(scope="module")
def actors(ray_cluster):
    return NixlActor.remote(), NixlActor.remote()


def driver_nixl():
    return ray_rdt.stats()["nixl"]


def test_nixl_is_the_plugin_by_default(actors):
    from ray.experimental.rdt import util

    from ray_rdt.transports import PluginNixlTransport

    assert "RAY_RDT_PLUGIN_TRANSPORTS" not in os.environ
    util._ensure_default_transports_registered()
    assert util.transport_manager_info["NIXL"].transport_manager_class is PluginNixlTransport

    def in_actor(self):
        from ray.experimental.rdt import util

        util._ensure_default_transports_registered()
        return util.transport_manager_info["NIXL"].transport_manager_class.__name__

    assert ray.get(actors[0].__ray_call__.remote(in_actor)) == "PluginNixlTransport"


# A process that serves one object over NIXL (its agent and UCX backend get
# created), then prints its C environment's UCX segment sizes.
UCX_SETTINGS_CHECK = """
import ctypes, os, torch
from ray_rdt import _ffi
from ray_rdt.context import Context
ctx = Context(b"\\x01" * 28, b"\\x02" * 16)
ctx.put(os.urandom(28), _ffi.TRANSPORT_NIXL, [torch.ones(1 << 20)])
getenv = ctypes.CDLL(None).getenv
getenv.restype = ctypes.c_char_p
print({k: (getenv(k.encode()) or b"").decode() for k in ("UCX_TCP_TX_SEG_SIZE", "UCX_TCP_RX_SEG_SIZE")})
"""


def ucx_settings(**env):
    """(C environment printed, UCX settings NIXL applied) of a process that
    creates the plugin's NIXL agent, with ``env`` added to its environment.
    NIXL logs each setting it gives UCX at debug level."""
    env = {**os.environ, "NIXL_LOG_LEVEL": "DEBUG", **env}
    proc = subprocess.run([sys.executable, "-c", UCX_SETTINGS_CHECK], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    applied = {line.split("Modified UCX config: ", 1)[1].strip() for line in proc.stderr.splitlines()
               if "Modified UCX config: TCP_" in line}
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1]), applied


def test_ucx_segment_defaults_apply_unless_set():
    """The plugin's NIXL agents start UCX with 1 MiB TCP segments (its
    defaults, src/transport/nixl/agent.rs), given to NIXL's UCX backend as its
    engine_config: the process environment is never written (Ray's threads
    read it). A process that sets either keeps its own and gets neither (UCX
    refuses a send segment larger than the receive segment, so the plugin
    never pairs a user's value with its own)."""
    environment, applied = ucx_settings()
    assert environment == {"UCX_TCP_TX_SEG_SIZE": "", "UCX_TCP_RX_SEG_SIZE": ""}
    assert applied == {"TCP_TX_SEG_SIZE=1M", "TCP_RX_SEG_SIZE=1M"}
    environment, applied = ucx_settings(UCX_TCP_TX_SEG_SIZE="32K")
    assert environment == {"UCX_TCP_TX_SEG_SIZE": "32K", "UCX_TCP_RX_SEG_SIZE": ""}
    assert applied == set()


def test_opt_out_leaves_nixl_stock(monkeypatch):
    from ray_rdt.transport_facts import routed as enabled_transports

    monkeypatch.delenv("RAY_RDT_PLUGIN_TRANSPORTS", raising=False)
    assert set(enabled_transports()) == {"GLOO", "SHM", "NIXL"}
    monkeypatch.setenv("RAY_RDT_PLUGIN_TRANSPORTS", "gloo,shm")
    assert set(enabled_transports()) == {"GLOO", "SHM"}
    monkeypatch.setenv("RAY_RDT_PLUGIN_TRANSPORTS", "gloo,nixl,bogus")
    with pytest.raises(ValueError, match="BOGUS"):
        enabled_transports()


def test_guide_walkthrough_cpu_form(ray_cluster, capsys):
    """examples/nixl_01_walkthrough.py: the guide's NIXL code in CPU form."""
    stats = run_walkthrough.run_example(os.path.join(REPO, "examples", "nixl_01_walkthrough.py"))
    lines = capsys.readouterr().out.splitlines()
    # print(ray.get(tensor)) then print(ray.get(ref1)), as in the guide.
    assert lines[0].startswith("tensor([[") and lines[-2].endswith("]])")
    float(lines[-1])
    received = {name: s["nixl"]["bytes_received"] for name, (_, s) in stats.items()}
    # receiver.sum (4 MB) and the two ray.put tensors consume_with_nixl fetched
    # (8 MB); the driver's ray.get(tensor) (4 MB); the sender reads nothing.
    assert received == {"receiver": 3 * TENSOR_BYTES, "sender": 0, run_walkthrough.DRIVER: TENSOR_BYTES}
    for _, s in stats.values():
        assert s["nixl"]["errors"] == 0
        assert all(s[t]["bytes_received"] == 0 for t in ("gloo", "shm"))


def test_pass_between_actors_without_group(actors):
    sender, receiver = actors
    r0, s0 = actor_stats(receiver, "nixl"), actor_stats(sender, "nixl")
    ref = sender.random_tensor.remote()
    result = receiver.sum64.remote(ref)
    expected = torch.sum(ray.get(ref), dtype=torch.float64)
    assert torch.allclose(ray.get(result), expected)
    r1, s1 = actor_stats(receiver, "nixl"), actor_stats(sender, "nixl")
    assert delta(r1, r0) == TENSOR_BYTES
    assert r1["transfers"] - r0["transfers"] == 1 and r1["errors"] == r0["errors"]
    # One-sided: the producer takes no part in the read (docs/nixl.md).
    assert delta(s1, s0) == 0 and delta(s1, s0, "bytes_sent") == 0


def test_driver_get_uses_nixl(actors):
    sender, _ = actors
    t = torch.arange(12345, dtype=torch.float64)
    ref = sender.echo.remote(t)
    d0 = driver_nixl()
    got = ray.get(ref)
    d1 = driver_nixl()
    assert torch.equal(got, t) and got.device.type == "cpu"
    assert delta(d1, d0) == t.nbytes and d1["transfers"] - d0["transfers"] == 1
    # The guide's spelling naming the transport: NIXL again.
    assert torch.equal(ray.get(ref, _tensor_transport="nixl"), t)
    assert delta(driver_nixl(), d1) == t.nbytes
    # And through the object store, as for any RDT object.
    assert torch.equal(ray.get(ref, _tensor_transport="object_store"), t)
    assert delta(driver_nixl(), d1) == t.nbytes


def test_actor_put_and_consume_with_nixl(actors):
    """The guide's produce / consume_with_nixl."""
    sender, receiver = actors
    tensor1, tensor2 = torch.randn(1000, 1000), torch.randn(1000, 1000)
    r0, s0 = actor_stats(receiver, "nixl"), actor_stats(sender, "nixl")
    refs = sender.produce.remote([tensor1, tensor2])
    total = ray.get(receiver.consume_with_nixl.remote(refs))
    assert total == pytest.approx((tensor1.sum() + tensor2.sum()).item(), rel=1e-4, abs=1e-2)
    r1 = actor_stats(receiver, "nixl")
    assert delta(r1, r0) == 2 * TENSOR_BYTES and r1["transfers"] - r0["transfers"] == 2
    assert delta(actor_stats(sender, "nixl"), s0) == 0
    # The driver can read the actor's puts too (it borrows the refs).
    d0 = driver_nixl()
    inner = ray.get(refs)
    assert torch.equal(ray.get(inner[0]), tensor1) and torch.equal(ray.get(inner[1]), tensor2)
    assert delta(driver_nixl(), d0) == 2 * TENSOR_BYTES


def test_driver_put_consumed_by_actor(actors):
    _, receiver = actors
    t = torch.arange(1000, dtype=torch.float32)
    r0 = actor_stats(receiver, "nixl")
    ref = ray.put(t, _tensor_transport="nixl")
    assert torch.allclose(ray.get(receiver.sum.remote(ref)), t.sum())
    assert delta(actor_stats(receiver, "nixl"), r0) == t.nbytes
    # The driver's own ray.get returns its tensor: same memory, no transfer.
    d0 = driver_nixl()
    assert ray.get(ref).data_ptr() == t.data_ptr()
    assert delta(driver_nixl(), d0) == 0


def test_nested_dtypes_and_layouts(actors):
    sender, receiver = actors
    data = {
        "f32": torch.randn(3, 5),
        "rest": [torch.arange(10, dtype=torch.int32), "text", 7],
        "i64_scalar": torch.tensor(42),
        "empty": torch.empty(0, 4),
        "strided": torch.arange(64, dtype=torch.uint8).reshape(8, 8).t(),
        "bf16": torch.randn(17, dtype=torch.bfloat16),
    }
    nbytes = sum(t.nbytes for t in (data["f32"], data["rest"][0], data["i64_scalar"], data["strided"], data["bf16"]))
    r0, d0 = actor_stats(receiver, "nixl"), driver_nixl()
    ref = sender.echo.remote(data)
    got = ray.get(receiver.describe.remote(ref))
    r1 = actor_stats(receiver, "nixl")
    assert delta(r1, r0) == nbytes and r1["transfers"] - r0["transfers"] == 1
    assert got["rest"][1:] == ["text", 7]
    for key, expected in [
        ("f32", data["f32"]),
        ("i64_scalar", data["i64_scalar"]),
        ("empty", data["empty"]),
        ("strided", data["strided"]),
        ("bf16", data["bf16"]),
    ]:
        kind, value, device = got[key]
        assert kind == "tensor" and device == "cpu"
        assert value.dtype == expected.dtype and value.shape == expected.shape and torch.equal(value, expected), key
    assert torch.equal(got["rest"][0][1], data["rest"][0])
    # The driver sees the same.
    local = ray.get(ref)
    assert torch.equal(local["strided"], data["strided"]) and torch.equal(local["bf16"], data["bf16"])
    assert delta(driver_nixl(), d0) == nbytes


def test_pass_back_to_producer_same_memory(actors):
    sender, receiver = actors
    ref = sender.keep_and_return.remote(1000)
    stored = ray.get(sender.stored_ptr.remote())
    s0 = actor_stats(sender, "nixl")
    ptr, _ = ray.get(sender.ptr_and_sum.remote(ref))
    assert ptr == stored
    assert delta(actor_stats(sender, "nixl"), s0) == 0  # no copy, no transfer
    ptr2, _ = ray.get(receiver.ptr_and_sum.remote(ref))
    assert ptr2 != stored


def test_free_when_out_of_scope(actors):
    sender, receiver = actors
    gc.collect()
    assert wait_for(lambda: num_rdt_objects(sender) == 0)
    refs = [sender.echo.remote(torch.randn(10)) for _ in range(5)]
    ray.get([receiver.sum.remote(r) for r in refs])
    assert num_rdt_objects(sender) == 5
    del refs
    assert wait_for(lambda: num_rdt_objects(sender) == 0)


# -- faults ---------------------------------------------------------------------------


def assert_names_failed_transfer(text: str, obj_hex: str, pid: int):
    assert f"RDT transfer of ObjectRef({obj_hex}) from actor" in text, text
    assert f"(pid {pid}) to " in text and "failed: the producer died" in text, text
    # The plugin's diagnosis: the producer's process is gone; stock 2.60's
    # words for a failed NIXL read come first.
    assert f"the producer (pid {pid}) is gone" in text, text
    assert "The source actor may have died during the transfer." in text, text


def test_producer_killed_after_ref_created(actors):
    _, receiver = actors
    victim = NixlActor.remote()
    pid = ray.get(victim.__ray_call__.remote(lambda self: os.getpid()))
    ref = victim.random_tensor.remote()
    refs = victim.produce.remote([torch.ones(100)])
    ray.wait([ref, refs], num_returns=2, timeout=60)
    ray.kill(victim)
    # The kill is asynchronous: a task submitted at once may still run. Once the
    # process has exited (which also pins down the plugin's diagnosis: a fetch
    # just before says "(producer pid N, still running)"), Ray knows it is dead.
    assert wait_for(lambda: not pid_alive(pid), timeout=20)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(victim.sum.remote(torch.ones(1)), timeout=30)
    r0 = actor_stats(receiver, "nixl")

    # A consumer task: its argument cannot be resolved; the task fails at once,
    # with the ActorDiedError of the producer.
    start = time.monotonic()
    with pytest.raises(ray.exceptions.ActorDiedError) as info:
        ray.get(receiver.sum.remote(ref), timeout=60)
    assert time.monotonic() - start < 30
    assert_names_failed_transfer(str(info.value), ref.hex(), pid)
    assert delta(actor_stats(receiver, "nixl"), r0, "errors") == 1

    # ray.get in the driver: the same ActorDiedError, raised by ray.get.
    start = time.monotonic()
    with pytest.raises(ray.exceptions.ActorDiedError) as info:
        ray.get(ref, timeout=60)
    assert time.monotonic() - start < 30
    assert_names_failed_transfer(str(info.value), ref.hex(), pid)

    # ray.put objects of the dead actor, read with ray.get by a borrower: the dead
    # actor also owned them. Either Ray already knows the owner died
    # (OwnerDiedError, no transfer attempted) or the borrower still has the value
    # and the plugin's fetch fails; both are clear, which one is a race.
    inner = ray.get(refs)
    attempts = [
        lambda: ray.get(receiver.consume_with_nixl.remote(inner), timeout=60),  # ray.get in the borrower
        lambda: ray.get(inner[0], timeout=60),  # ray.get in the driver
    ]
    for attempt in attempts:
        start = time.monotonic()
        with pytest.raises((ray.exceptions.RayTaskError, ray.exceptions.OwnerDiedError, ray.exceptions.ActorDiedError)) as info:
            attempt()
        assert time.monotonic() - start < 30
        error = getattr(info.value, "cause", None) or info.value
        if not isinstance(error, ray.exceptions.OwnerDiedError):
            assert_names_failed_transfer(str(error), inner[0].hex(), pid)

    # The consumer is fine and keeps working with other producers.
    t = torch.randn(7)
    assert torch.allclose(ray.get(receiver.sum.remote(ray.put(t, _tensor_transport="nixl"))), t.sum())


def test_producer_killed_before_returning(actors):
    _, receiver = actors
    victim = NixlActor.remote()
    ray.get(victim.sum.remote(torch.ones(1)))  # the actor is up
    pending = victim.slow.remote()  # occupies the actor
    ref = victim.random_tensor.remote()  # never runs
    ray.kill(victim)
    # Ray's own error: the argument was never produced.
    start = time.monotonic()
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(receiver.sum.remote(ref), timeout=60)
    assert time.monotonic() - start < 30
    assert isinstance(info.value.cause, ray.exceptions.ActorDiedError), repr(info.value)
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(ref, timeout=30)
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(pending, timeout=30)


def test_nixl_missing_is_a_clear_error():
    """Workers without NIXL (``RAY_RDT_NIXL_LIB`` pointing nowhere, no search), in
    a cluster of their own: every NIXL use names what to install, nobody aborts."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "nixl_missing_check.py")],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "NIXL-MISSING-OK" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-6000:]
