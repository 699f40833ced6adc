"""``tensor_transport="shm"``: same-host CPU tensors through the plugin's shared
memory, without a collective group; ``ray.put``/``ray.get`` as for one-sided
transports."""

import gc

import pytest
import torch

import ray

from conftest import ReceivingActor, actor_stats, delta, num_rdt_objects, wait_for, TRANSPORT_ONLY

# These tests exercise the transport itself (see conftest.TRANSPORT_ONLY).
RAY_ENV = TRANSPORT_ONLY


@ray.remote
class ShmActor(ReceivingActor):
    @ray.method(tensor_transport="shm")
    def random_tensor(self, n=1000):
        return torch.randn(n, n)

    @ray.method(tensor_transport="shm")
    def echo(self, data):
        return data

    @ray.method(tensor_transport="shm")
    def keep_and_return(self, n):
        self.tensor = torch.randn(n)
        return self.tensor

    def increment(self, tensor):
        tensor += 1
        return tensor.clone()

    def produce(self, tensors):
        return [ray.put(t, _tensor_transport="shm") for t in tensors]

    def consume(self, refs):
        return sum(ray.get(ref).sum().item() for ref in refs)

    def count_serialization_passes(self):
        """From now on, records how many serialization passes each RDT return takes."""
        ctx = ray._private.worker.global_worker.get_serialization_context()
        self.passes, calls = [], [0]
        to_msgpack, rdt_objects = ctx._serialize_to_msgpack, ctx.serialize_rdt_objects

        def counted_to_msgpack(value):
            calls[0] += 1
            return to_msgpack(value)

        def counted_rdt_objects(value, tensor_transport, _for_put=False):
            before = calls[0]
            try:
                return rdt_objects(value, tensor_transport, _for_put)
            finally:
                self.passes.append(calls[0] - before)

        ctx._serialize_to_msgpack = counted_to_msgpack
        ctx.serialize_rdt_objects = counted_rdt_objects

    def serialization_passes(self):
        passes, self.passes = self.passes, []
        return passes

    def tensor_sums(self, value):
        tensors = value.values() if isinstance(value, dict) else value
        return [float(t.sum()) for t in tensors]


@pytest.fixture(scope="module")
def actors(ray_cluster):
    return ShmActor.remote(), ShmActor.remote()


def test_pass_without_group(actors):
    sender, receiver = actors
    s0, r0 = actor_stats(sender, "shm"), actor_stats(receiver, "shm")
    ref = sender.random_tensor.remote()
    expected = torch.sum(ray.get(ref), dtype=torch.float64)  # one-sided: ray.get works without a group
    assert torch.allclose(ray.get(receiver.sum64.remote(ref)), expected)
    r1, s1 = actor_stats(receiver, "shm"), actor_stats(sender, "shm")
    assert delta(r1, r0) == 4_000_000
    assert r1["transfers"] - r0["transfers"] == 1
    assert delta(s1, s0, "bytes_sent") >= 4_000_000  # the receiver and the driver
    # No gloo traffic at all.
    assert actor_stats(receiver, "gloo")["bytes_received"] == 0


def test_nested_and_several_tensors(actors):
    sender, receiver = actors
    a, b = torch.randn(3, 5), torch.arange(10, dtype=torch.int32)
    r0 = actor_stats(receiver, "shm")
    ref = sender.echo.remote({"a": a, "rest": [b, "text", 7]})
    got = ray.get(ref)  # fetched by the driver
    assert torch.equal(got["a"], a) and torch.equal(got["rest"][0], b) and got["rest"][1:] == ["text", 7]
    assert delta(actor_stats(receiver, "shm"), r0) == 0
    pair = sender.echo.remote((a, a * 2))
    assert torch.allclose(ray.get(receiver.sum.remote(pair)), 3 * a.sum())
    assert delta(actor_stats(receiver, "shm"), r0) == 2 * a.nbytes


def test_common_values_serialized_once(actors):
    # A tensor, or a list, tuple or dict of tensors: the producer finds the
    # tensors without pickling and serializes the value once. Anything else
    # (here one tensor twice, and tensors inside other values) takes Ray's two
    # passes. Every value arrives intact either way, through the plugin.
    sender, receiver = actors
    ray.get(sender.count_serialization_passes.remote())
    a, b = torch.randn(64), torch.arange(8, dtype=torch.float32)
    cases = [
        ([a, b], 1, [a, b]),
        ((a, b), 1, [a, b]),
        ({"x": a, "y": b}, 1, [a, b]),
        ([a, a], 2, [a, a]),
        ([a, "text"], 2, None),
    ]
    for value, passes, tensors in cases:
        r0 = actor_stats(receiver, "shm")
        ref = sender.echo.remote(value)
        if tensors is None:
            got = ray.get(ref)
            assert torch.equal(got[0], a) and got[1] == "text"
        else:
            assert ray.get(receiver.tensor_sums.remote(ref)) == pytest.approx([float(t.sum()) for t in tensors])
            assert actor_stats(receiver, "shm")["transfers"] - r0["transfers"] == 1
        assert ray.get(sender.serialization_passes.remote()) == [passes], value
    single = torch.randn(16)
    assert torch.allclose(ray.get(receiver.sum.remote(sender.echo.remote(single))), single.sum())
    assert ray.get(sender.serialization_passes.remote()) == [1]


def test_driver_get_and_receiver_consistent(actors):
    sender, receiver = actors
    t = torch.randn(256, 256)
    ref = sender.echo.remote(t)
    assert torch.equal(ray.get(ref), t)
    ptr, s = ray.get(receiver.ptr_and_sum.remote(ref))
    assert torch.allclose(s, t.sum(dtype=torch.float64))


def test_pass_back_same_memory(actors):
    sender, receiver = actors
    ref = sender.keep_and_return.remote(1000)
    stored = ray.get(sender.stored_ptr.remote())
    ptr, _ = ray.get(sender.ptr_and_sum.remote(ref))
    assert ptr == stored


def test_mutability_through_pass_back(actors):
    sender, receiver = actors
    ref = sender.echo.remote(torch.zeros(4))
    assert torch.equal(ray.get(sender.increment.remote(ref)), torch.ones(4))
    # The producer's stored tensor was modified in place: the receiver sees it.
    assert torch.allclose(ray.get(receiver.sum.remote(ref)), torch.tensor(4.0))


def test_driver_put_consumed_by_actor(actors):
    _, receiver = actors
    t = torch.arange(1000, dtype=torch.float32)
    r0 = actor_stats(receiver, "shm")
    ref = ray.put(t, _tensor_transport="shm")
    assert torch.allclose(ray.get(receiver.sum.remote(ref)), t.sum())
    assert delta(actor_stats(receiver, "shm"), r0) == t.nbytes
    # The driver's own ray.get returns its tensor, no copy.
    assert ray.get(ref).data_ptr() == t.data_ptr()


def test_actor_put_and_borrower_get(actors):
    # The guide's NIXL produce/consume_with_nixl example, on shm.
    sender, receiver = actors
    tensor1, tensor2 = torch.randn(100, 100), torch.randn(100, 100)
    r0 = actor_stats(receiver, "shm")
    refs = sender.produce.remote([tensor1, tensor2])
    total = ray.get(receiver.consume.remote(refs))
    assert total == pytest.approx((tensor1.sum() + tensor2.sum()).item(), rel=1e-4)
    assert delta(actor_stats(receiver, "shm"), r0) == tensor1.nbytes + tensor2.nbytes


def test_free_when_out_of_scope(actors):
    sender, receiver = actors
    gc.collect()
    assert wait_for(lambda: num_rdt_objects(sender) == 0)
    refs = [sender.echo.remote(torch.randn(10)) for _ in range(5)]
    ray.get([receiver.sum.remote(r) for r in refs])
    assert num_rdt_objects(sender) == 5
    del refs
    assert wait_for(lambda: num_rdt_objects(sender) == 0)


def test_freed_object_is_a_clear_error(actors):
    sender, receiver = actors
    ref = sender.echo.remote(torch.randn(10))
    ray.wait([ref])

    def free_it(self, obj_id):
        ray._private.worker.global_worker.rdt_manager.rdt_store.pop_object(obj_id)

    ray.get(sender.__ray_call__.remote(free_it, ref.hex()))
    with pytest.raises(ray.exceptions.RayError, match="is not held by the producer"):
        ray.get(receiver.sum.remote(ref))
    # A missing object is no transport failure: things keep working.
    t = torch.randn(3)
    assert torch.allclose(ray.get(receiver.sum.remote(sender.echo.remote(t))), t.sum())


def test_invalid_transport_and_put_rules(ray_cluster):
    with pytest.raises(ValueError, match="Invalid tensor transport"):
        ray.put(torch.randn(1), _tensor_transport="invalid")
    with pytest.raises(ValueError, match="not supported for two-sided RDT transport"):
        ray.put(torch.randn(1), _tensor_transport="gloo")


def test_put_without_tensors_is_a_plain_object(ray_cluster):
    before = ray._private.worker.global_worker.rdt_manager.rdt_store.get_num_objects()
    ref = ray.put({"no": "tensors"}, _tensor_transport="shm")
    assert ray.get(ref) == {"no": "tensors"}
    assert not ray._private.worker.global_worker.rdt_manager.is_managed_object(ref.hex())
    assert ray._private.worker.global_worker.rdt_manager.rdt_store.get_num_objects() == before


def test_core_worker_thread_keeps_its_python_state(actors):
    # The owner's RDT callbacks run on Ray's core-worker thread, which Python
    # did not start: the plugin keeps that thread's Python state (one per such
    # thread) instead of Python building a new one for every callback. Python's
    # own threads are left alone.
    import threading

    from ray_rdt import threads

    sender, receiver = actors
    threads.keep_thread_state()  # the main thread: nothing to keep
    assert threading.get_ident() not in threads._kept
    refs = [sender.echo.remote(torch.randn(8)) for _ in range(3)]
    ray.get([receiver.sum.remote(r) for r in refs])
    del refs
    assert wait_for(lambda: num_rdt_objects(sender) == 0)
    kept = [threading._active.get(ident) for ident in threads._kept]
    assert kept and all(isinstance(t, threading._DummyThread) for t in kept), kept
