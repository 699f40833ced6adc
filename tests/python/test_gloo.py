"""The guide's gloo behaviours on the patched Ray, each checked against the
plugin's counters (``ray_rdt.stats()`` read inside the actors)."""

import gc
import os
import re
import signal
import subprocess
import sys
import warnings

import pytest
import torch

import ray
from ray.experimental.collective import (
    create_collective_group,
    destroy_collective_group,
    get_collective_groups,
)

from conftest import ReceivingActor, actor_stats, delta, num_rdt_objects, wait_for, TRANSPORT_ONLY
from holds import pid_alive

# These tests exercise the transport itself (see conftest.TRANSPORT_ONLY).
RAY_ENV = TRANSPORT_ONLY

GUIDE_GET_ERROR = (
    "Currently ray.get() only supports OBJECT_STORE and NIXL tensor transport, got "
    "TensorTransportEnum.GLOO, please specify the correct tensor transport in ray.get()"
)


class Holder:
    """A plain Python object with tensors inside."""

    def __init__(self, a, b, label):
        self.a = a
        self.b = b
        self.label = label


@ray.remote
class MyActor(ReceivingActor):
    @ray.method(tensor_transport="gloo")
    def random_tensor(self, n=1000):
        return torch.randn(n, n)

    @ray.method(tensor_transport="gloo")
    def echo(self, data):
        return data

    @ray.method(tensor_transport="gloo")
    def keep_and_return(self, n):
        self.tensor = torch.randn(n, n)
        return self.tensor

    def increment_and_sum_stored_tensor(self, wait):
        if wait:
            ray.experimental.wait_tensor_freed(self.tensor)
        self.tensor += 1
        return torch.sum(self.tensor)

    def increment_and_sum(self, tensor):
        return torch.sum(tensor + 1)

    def sum(self, tensor):
        return torch.sum(tensor)

    def sum_dict(self, d):
        return torch.sum(d["tensor1"]) + torch.sum(d["tensor2"])

    def describe(self, data):
        """Structure, values and data pointers of what the task received."""
        if isinstance(data, torch.Tensor):
            return ("tensor", data.clone(), data.data_ptr())
        if isinstance(data, dict):
            return {k: self.describe(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return [self.describe(v) for v in data]
        if isinstance(data, Holder):
            return ("holder", self.describe(data.a), self.describe(data.b), data.label)
        return data

    def stored_ptr(self):
        return self.tensor.data_ptr()

    @ray.method(tensor_transport="gloo")
    def fail(self, message):
        raise ValueError(message)

    def get_out_of_band_tensors(self, obj_id, timeout=0):
        store = ray._private.worker.global_worker.rdt_manager.rdt_store
        return store.wait_and_get_object(obj_id, timeout)

    def has_object(self, obj_id):
        return ray._private.worker.global_worker.rdt_manager.rdt_store.has_object(obj_id)


@pytest.fixture(scope="module")
def pair(ray_cluster):
    sender, receiver = MyActor.remote(), MyActor.remote()
    group = create_collective_group([sender, receiver], backend="torch_gloo")
    yield sender, receiver, group


def test_transport_is_the_plugin(ray_cluster):
    from ray.experimental.rdt import util

    from ray_rdt.transports import PluginGlooTransport, PluginNixlTransport, PluginShmTransport

    util._ensure_default_transports_registered()
    assert util.transport_manager_info["GLOO"].transport_manager_class is PluginGlooTransport
    assert util.transport_manager_info["SHM"].transport_manager_class is PluginShmTransport
    assert util.transport_manager_info["NIXL"].transport_manager_class is PluginNixlTransport
    # Stock transports stay stock.
    assert util.transport_manager_info["NCCL"].transport_manager_class.__module__.startswith("ray.")
    assert util.transport_manager_info["CUDA_IPC"].transport_manager_class.__module__.startswith("ray.")


def test_pass_tensor_between_actors(pair):
    sender, receiver, _ = pair
    s0, r0 = actor_stats(sender, "gloo"), actor_stats(receiver, "gloo")
    tensor = sender.random_tensor.remote()
    result = receiver.sum64.remote(tensor)
    expected = torch.sum(ray.get(tensor, _tensor_transport="object_store"), dtype=torch.float64)
    assert torch.allclose(ray.get(result), expected)
    s1, r1 = actor_stats(sender, "gloo"), actor_stats(receiver, "gloo")
    nbytes = 1000 * 1000 * 4
    assert delta(r1, r0) == nbytes
    assert r1["transfers"] - r0["transfers"] == 1
    assert delta(s1, s0, "bytes_sent") == nbytes
    assert r1["errors"] == r0["errors"]


def test_nested_dict(pair):
    sender, receiver, _ = pair

    @ray.remote
    class DictActor:
        @ray.method(tensor_transport="gloo")
        def random_tensor_dict(self):
            return {"tensor1": torch.randn(1000, 1000), "tensor2": torch.randn(1000, 1000)}

    # The guide's dict example through the module's pair (same group).
    r0 = actor_stats(receiver, "gloo")
    d = {"tensor1": torch.randn(100, 100), "tensor2": torch.randn(100, 100)}
    ref = sender.echo.remote(d)
    got = ray.get(receiver.sum_dict.remote(ref))
    assert torch.allclose(got, torch.sum(d["tensor1"]) + torch.sum(d["tensor2"]))
    r1 = actor_stats(receiver, "gloo")
    assert delta(r1, r0) == 2 * 100 * 100 * 4
    assert r1["transfers"] - r0["transfers"] == 1


def test_tensors_nested_in_lists_objects_and_cpu_data(pair):
    sender, receiver, _ = pair
    t1, t2, t3 = torch.randn(7), torch.arange(12, dtype=torch.int64).reshape(3, 4), torch.ones(2, 2, dtype=torch.bool)
    data = [t1, {"x": t2, "cpu": b"1" * 100, "n": 3}, Holder(t3, t1 * 2, "lbl"), 42]
    r0 = actor_stats(receiver, "gloo")
    got = ray.get(receiver.describe.remote(sender.echo.remote(data)))
    assert torch.equal(got[0][1], t1)
    assert torch.equal(got[1]["x"][1], t2)
    assert got[1]["cpu"] == b"1" * 100 and got[1]["n"] == 3
    assert got[2][0] == "holder" and torch.equal(got[2][1][1], t3) and torch.equal(got[2][2][1], t1 * 2)
    assert got[2][3] == "lbl" and got[3] == 42
    r1 = actor_stats(receiver, "gloo")
    assert delta(r1, r0) == t1.nbytes + t2.nbytes + t3.nbytes + t1.nbytes


def test_cpu_data_only(pair):
    sender, receiver, _ = pair
    r0 = actor_stats(receiver, "gloo")
    assert ray.get(receiver.describe.remote(sender.echo.remote(123))) == 123
    assert delta(actor_stats(receiver, "gloo"), r0) == 0


def test_large_cpu_payload_in_plasma(pair):
    sender, receiver, _ = pair
    t = torch.randn(10)
    data = [t, b"x" * (2 * 1024 * 1024)]
    r0 = actor_stats(receiver, "gloo")
    got = ray.get(receiver.describe.remote(sender.echo.remote(data)))
    assert torch.equal(got[0][1], t) and got[1] == data[1]
    # The tensor went through the plugin; the 2 MiB of bytes through plasma.
    r1 = actor_stats(receiver, "gloo")
    assert delta(r1, r0) == t.nbytes and r1["transfers"] - r0["transfers"] == 1


def test_pass_back_to_producer_is_same_memory(pair):
    sender, receiver, _ = pair
    s0 = actor_stats(sender, "gloo")
    ref = sender.keep_and_return.remote(100)
    stored = ray.get(sender.stored_ptr.remote())
    kind, value, ptr = ray.get(sender.describe.remote(ref))
    assert ptr == stored  # the very same memory: no copy
    s1 = actor_stats(sender, "gloo")
    assert delta(s1, s0) == 0 and s1["transfers"] == s0["transfers"]
    # The guide's example: the producer and another actor agree.
    sum1 = sender.sum.remote(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sum2 = receiver.sum.remote(ref)
    assert torch.allclose(*ray.get([sum1, sum2]))


def test_ray_get_errors_with_guide_message_and_object_store_works(pair):
    sender, _, _ = pair
    t = torch.randn(50, 50)
    ref = sender.echo.remote(t)
    ray.wait([ref])
    s0 = actor_stats(sender, "gloo")
    with pytest.raises(ValueError) as e:
        ray.get(ref)
    assert GUIDE_GET_ERROR in str(e.value)
    assert torch.equal(ray.get(ref, _tensor_transport="object_store"), t)
    assert torch.equal(ray.get(ref, _use_object_store=True), t)
    with pytest.raises(ValueError, match=re.escape("got TensorTransportEnum.GLOO")):
        ray.get(ref, _tensor_transport="gloo")
    for name in ("nccl", "bogus"):
        with pytest.raises(ValueError, match=re.escape(f"got TensorTransportEnum.{name.upper()}, please")):
            ray.get(ref, _tensor_transport=name)
    # The object store reads went past the plugin: no gloo send.
    s1 = actor_stats(sender, "gloo")
    assert delta(s1, s0, "bytes_sent") == 0 and s1["transfers"] == s0["transfers"]


def test_mutability_visible_to_receiver(pair):
    sender, receiver, _ = pair
    r0 = actor_stats(receiver, "gloo")
    ref = sender.keep_and_return.remote(200)
    tensor1 = ray.get(sender.increment_and_sum_stored_tensor.remote(False))
    tensor2 = ray.get(receiver.increment_and_sum.remote(ref))
    # The update travelled through the plugin.
    r1 = actor_stats(receiver, "gloo")
    assert delta(r1, r0) == 200 * 200 * 4 and r1["transfers"] - r0["transfers"] == 1
    # The receiver saw the in-place update: its +1 lands on top of it.
    assert not torch.allclose(tensor1, tensor2)
    assert torch.allclose(tensor2, tensor1 + 200 * 200, rtol=1e-3)


def test_wait_tensor_freed(pair):
    sender, receiver, _ = pair
    r0 = actor_stats(receiver, "gloo")
    ref = sender.keep_and_return.remote(300)
    tensor1 = sender.increment_and_sum_stored_tensor.remote(True)
    tensor2 = receiver.increment_and_sum.remote(ref)
    # The sender blocks while the ref is in scope.
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(tensor1, timeout=1)
    del ref
    assert torch.allclose(ray.get(tensor1), ray.get(tensor2))
    assert delta(actor_stats(receiver, "gloo"), r0) == 300 * 300 * 4


def test_warning_when_passed_back_and_to_another_actor(pair):
    sender, receiver, _ = pair
    t = sender.random_tensor.remote(10)
    ray.wait([t])
    r0, s0 = actor_stats(receiver, "gloo"), actor_stats(sender, "gloo")
    pattern = (
        r"GPU ObjectRef\(" + t.hex() + r"\) is being passed back to the actor that created it Actor\(MyActor, "
        r".*\)\. Note that GPU objects are mutable\. If the tensor is modified, Ray's internal copy will also be "
        r"updated, and subsequent passes to other actors will receive the updated version instead of the original\."
    )
    with pytest.warns(UserWarning, match=pattern):
        t1 = sender.sum.remote(t)
        t2 = receiver.sum.remote(t)
    assert torch.allclose(*ray.get([t1, t2]))
    # Once per object.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ray.get(receiver.sum.remote(t))
    # The receiver's two tasks each fetched through the plugin; the producer's
    # own task read its memory (no transfer).
    r1, s1 = actor_stats(receiver, "gloo"), actor_stats(sender, "gloo")
    assert delta(r1, r0) == 2 * 10 * 10 * 4 and r1["transfers"] - r0["transfers"] == 2
    assert delta(s1, s0) == 0 and delta(s1, s0, "bytes_sent") == 2 * 10 * 10 * 4


def test_several_refs_to_one_task_and_same_ref_twice(pair):
    sender, receiver, _ = pair

    @ray.remote
    def noop():
        return None

    a, b = torch.randn(10), torch.randn(20)
    ra, rb = sender.echo.remote(a), sender.echo.remote(b)
    r0 = actor_stats(receiver, "gloo")

    @ray.remote
    class Adder:
        pass

    got = ray.get(receiver.describe.remote([1]))  # warm
    assert got == [1]
    sum_ref = receiver.sum.remote(ra)
    assert torch.allclose(ray.get(sum_ref), a.sum())
    assert torch.allclose(ray.get(receiver.sum.remote(ra)), a.sum())
    assert torch.allclose(ray.get(receiver.sum.remote(rb)), b.sum())
    r1 = actor_stats(receiver, "gloo")
    assert delta(r1, r0) == 2 * a.nbytes + b.nbytes


def test_store_api_and_free_on_out_of_scope(pair):
    sender, receiver, _ = pair
    gc.collect()  # refs of earlier tests go out of scope
    assert wait_for(lambda: num_rdt_objects(sender) == 0)
    before = 0
    t = torch.arange(6.0)
    ref = sender.echo.remote(t)
    r0 = actor_stats(receiver, "gloo")
    ray.get(receiver.sum.remote(ref))
    assert delta(actor_stats(receiver, "gloo"), r0) == t.nbytes
    obj_id = ref.hex()
    # 2.60's RDTStore API sees the plugin-held object.
    assert ray.get(sender.has_object.remote(obj_id))
    assert torch.equal(ray.get(sender.get_out_of_band_tensors.remote(obj_id))[0], t)
    assert num_rdt_objects(sender) == before + 1
    rdt_manager = ray._private.worker.global_worker.rdt_manager
    assert rdt_manager.is_managed_object(obj_id)
    del ref
    assert wait_for(lambda: num_rdt_objects(sender) == before)
    assert not ray.get(sender.has_object.remote(obj_id))
    assert wait_for(lambda: not rdt_manager.is_managed_object(obj_id))
    # The receiver keeps nothing after its task.
    assert num_rdt_objects(receiver) == 0


def test_application_error_propagates_and_group_survives(pair):
    sender, receiver, group = pair
    ref = sender.fail.remote("test_app_error")
    with pytest.raises(Exception, match="test_app_error"):
        ray.get(receiver.sum.remote(ref))
    with pytest.raises(Exception, match="test_app_error"):
        ray.get(ref, _tensor_transport="object_store")
    assert get_collective_groups([sender, receiver])
    t = torch.randn(5)
    r0 = actor_stats(receiver, "gloo")
    assert torch.allclose(ray.get(receiver.sum.remote(sender.echo.remote(t))), t.sum())
    r1 = actor_stats(receiver, "gloo")
    assert delta(r1, r0) == t.nbytes and r1["errors"] == r0["errors"]


def test_destroy_and_recreate_group(ray_cluster):
    a, b = MyActor.remote(), MyActor.remote()
    for _ in range(2):
        group = create_collective_group([a, b], backend="torch_gloo")
        t = torch.randn(64)
        r0 = actor_stats(b, "gloo")
        assert torch.allclose(ray.get(b.sum.remote(a.echo.remote(t))), t.sum())
        assert delta(actor_stats(b, "gloo"), r0) == t.nbytes
        destroy_collective_group(group)
    with pytest.raises(ValueError, match="does not have tensor transport GLOO"):
        a.echo.remote(torch.randn(2))
    # Reverse the ranks on a new group.
    create_collective_group([b, a], backend="torch_gloo")
    t = torch.randn(8)
    r0 = actor_stats(a, "gloo")
    assert torch.allclose(ray.get(a.sum.remote(b.echo.remote(t))), t.sum())
    assert delta(actor_stats(a, "gloo"), r0) == t.nbytes


def test_system_error_destroys_group(ray_cluster):
    sender, receiver = MyActor.remote(), MyActor.remote()
    group = create_collective_group([sender, receiver], backend="torch_gloo")
    ref = sender.random_tensor.remote(100)
    ray.wait([ref])
    pid = ray.get(sender.__ray_call__.remote(lambda self: os.getpid()))
    ray.kill(sender)
    # Ray marks the actor dead before its process has exited, and until then the
    # process's plugin still serves fetches: wait for the process itself.
    wait_for(lambda: not _alive(sender) and not pid_alive(pid), timeout=10)
    # The producer died: the dependent task raises ActorDiedError naming the
    # object, both actors and the cause.
    with pytest.raises(ray.exceptions.ActorDiedError) as e:
        ray.get(receiver.sum.remote(ref))
    message = str(e.value)
    assert f"RDT transfer of ObjectRef({ref.hex()}) from actor {sender._actor_id.hex()}" in message
    assert f"to actor {receiver._actor_id.hex()} failed: the producer died" in message
    assert actor_stats(receiver, "gloo")["errors"] >= 1
    # The receiver left the group; the owner forgets it and the receiver can be
    # grouped again.
    other = MyActor.remote()
    create_collective_group([receiver, other], backend="torch_gloo")
    assert group.name not in [g.name for g in get_collective_groups([receiver])]
    t = torch.randn(16)
    o0 = actor_stats(other, "gloo")
    assert torch.allclose(ray.get(other.sum.remote(receiver.echo.remote(t))), t.sum())
    assert delta(actor_stats(other, "gloo"), o0) == t.nbytes


def test_a_driver_exits_cleanly_while_a_group_failure_is_handled(ray_cluster):
    """A driver exits while its group-failure watcher waits for a member that
    cannot answer (exit_while_handling_check.py): Ray's shutdown stops the
    watcher first, and the driver exits with status 0, not SIGSEGV."""
    script = os.path.join(os.path.dirname(__file__), "exit_while_handling_check.py")
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run([sys.executable, script, address], capture_output=True, text=True, timeout=120)
    stopped = re.search(r"STOPPED_PID (\d+)", proc.stdout)
    if stopped and pid_alive(int(stopped.group(1))):
        os.kill(int(stopped.group(1)), signal.SIGCONT)  # Ray reaps it with the driver's job
    assert "EXITING" in proc.stdout and proc.returncode == 0, (
        f"exit status {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )


def _alive(actor):
    try:
        ray.get(actor.__ray_call__.remote(lambda self: 1), timeout=2)
        return True
    except Exception:
        return False


@ray.remote
class Flaky:
    def __init__(self):
        self.attempts = 0

    @ray.method(tensor_transport="gloo", max_task_retries=1, retry_exceptions=[ValueError])
    def fail_first_attempt(self):
        self.attempts += 1
        if self.attempts == 1:
            raise ValueError("first-attempt failure")
        return torch.tensor([1.0, 2.0, 3.0])

    def sum(self, t):
        return torch.sum(t)

    def serialize_twice(self):
        """What a retried task whose first reply was lost does: the same return
        ObjectID is stored twice; the second attempt's tensors win."""
        ctx = ray._private.worker.global_worker.get_serialization_context()
        for value in (torch.zeros(3), torch.ones(3)):
            _, tensors = ctx.serialize_rdt_objects(value, "GLOO")
            meta = ctx.store_rdt_objects(ray_hooks_return_id(), tensors, "GLOO")
        store = ray._private.worker.global_worker.rdt_manager.rdt_store
        held = store.get_object(ray_hooks_return_id())
        return len(meta) > 0, held[0].clone()


def ray_hooks_return_id():
    from ray_rdt import producer

    return producer.return_object_id().hex()


def test_retried_task(ray_cluster):
    sender, receiver = Flaky.remote(), Flaky.remote()
    create_collective_group([sender, receiver], backend="torch_gloo")
    ref = sender.fail_first_attempt.remote()
    r0 = actor_stats(receiver, "gloo")
    assert torch.allclose(ray.get(receiver.sum.remote(ref)), torch.tensor(6.0))
    # The retry's tensor came through the plugin (3 float32).
    assert delta(actor_stats(receiver, "gloo"), r0) == 3 * 4
    assert num_rdt_objects(sender) == 1
    ok, held = ray.get(sender.serialize_twice.remote())
    assert ok and torch.equal(held, torch.ones(3))


def test_consumer_outside_the_group(ray_cluster):
    x, y, z, w = (MyActor.remote() for _ in range(4))
    create_collective_group([x, y], backend="torch_gloo")
    create_collective_group([z, w], backend="torch_gloo")
    ref = x.random_tensor.remote(10)
    # The owner refuses at submission, as 2.60 does.
    with pytest.raises(ValueError, match="No communicators found"):
        z.sum.remote(ref)

    # A plain task is no member of any group: a clear error in it, and no group
    # is destroyed.
    @ray.remote
    def total(t):
        return torch.sum(t)

    with pytest.raises(ray.exceptions.RayError, match="RDT transfer of ObjectRef"):
        ray.get(total.remote(ref))
    t = torch.randn(4)
    w0, y0 = actor_stats(w, "gloo"), actor_stats(y, "gloo")
    assert torch.allclose(ray.get(w.sum.remote(z.echo.remote(t))), t.sum())
    assert torch.allclose(ray.get(y.sum.remote(ref)), ray.get(x.sum.remote(ref)))
    # Both groups still move bytes through the plugin.
    assert delta(actor_stats(w, "gloo"), w0) == t.nbytes
    assert delta(actor_stats(y, "gloo"), y0) == 10 * 10 * 4
