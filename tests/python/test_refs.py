"""RDT refs of plugin transports however they travel and however they are read:
nested in Python structures and passed through borrowers (actors and tasks),
submitted by a process that did not create the collective group, consumed by
an actor of another class, and read with ``ray.get``, ``await``,
``ref.future()`` and ``ray.wait`` in the driver and in sync and asyncio actors.
Each transfer is checked against the consumer's plugin counters."""

import asyncio
import gc

import pytest
import torch

import ray
from ray.experimental.collective import create_collective_group

from conftest import TRANSPORT_ONLY, actor_stats, delta, wait_for

# The declared transport moves every byte (no inline objects, no same-host path).
RAY_ENV = TRANSPORT_ONLY

N = 1 << 16  # float32 elements: 256 KiB
EXPECTED = float(N * (N - 1) / 2)
TRANSPORTS = ["gloo", "nixl", "shm"]


@ray.remote(max_concurrency=4)
class Producer:
    @ray.method(tensor_transport="gloo")
    def gloo(self):
        self.tensor = torch.arange(N, dtype=torch.float32)
        return self.tensor

    @ray.method(tensor_transport="nixl")
    def nixl(self):
        self.tensor = torch.arange(N, dtype=torch.float32)
        return self.tensor

    @ray.method(tensor_transport="shm")
    def shm(self):
        self.tensor = torch.arange(N, dtype=torch.float32)
        return self.tensor

    def wait_freed(self, timeout):
        ray.experimental.wait_tensor_freed(self.tensor, timeout=timeout)
        return True

    def holds(self, ref_hex):
        """Whether this process's plugin still holds the object ``ref_hex``."""
        from ray_rdt import process

        return process.get_context().contains(ref_hex)

    def objects_freed(self):
        """Objects the owner's free requests freed here so far."""
        import ray_rdt

        return ray_rdt.endpoint_stats()["objects_freed"]


@ray.remote(max_concurrency=4)
class Consumer:
    """Declares no tensor_transport method (another class than the producer);
    threaded, so that a borrower can hand a ref to its own actor."""

    def total(self, tensor):
        return float(tensor.sum())

    def pass_on(self, nested, to):
        """Borrows ``nested`` and hands its ref to ``to`` as a direct argument."""
        return ray.get(to.total.remote(nested["inner"][0]))

    def pass_nested(self, nested, to):
        """Borrows ``nested`` and hands it on, still nested, to borrower ``to``,
        which hands the ref to its own task."""
        return ray.get(to.pass_on.remote(nested, to))

    def get(self, nested):
        return float(ray.get(nested["inner"][0]).sum())

    def wait_then_get(self, nested):
        ready, _ = ray.wait([nested["inner"][0]], timeout=60)
        return float(ray.get(ready[0]).sum())

    def read_error(self, nested, how):
        """What reading the nested ref raises here: (is a ValueError, text)."""
        ref = nested["inner"][0]
        try:
            if how == "get":
                ray.get(ref)
            else:
                ref.future().result(timeout=60)
        except Exception as e:
            return isinstance(e, ValueError), str(e)
        return False, "no error"

    def submit_pair(self, producer, consumer, method):
        """A process that did not create the group submits an RDT task and passes
        its ref between the group's members."""
        ref = getattr(producer, method).remote()
        return ray.get(consumer.total.remote(ref))


@ray.remote
class AsyncConsumer:
    async def await_ref(self, nested):
        return float((await nested["inner"][0]).sum())

    async def future(self, nested):
        return float((await asyncio.wrap_future(nested["inner"][0].future())).sum())

    async def get(self, nested):
        return float(ray.get(nested["inner"][0]).sum())

    async def read_error(self, nested, how):
        """What reading the nested ref raises here: (is a ValueError, text)."""
        ref = nested["inner"][0]
        try:
            if how == "await":
                await ref
            elif how == "future":
                await asyncio.wrap_future(ref.future())
            else:
                ray.get(ref)
        except Exception as e:
            return isinstance(e, ValueError), str(e)
        return False, "no error"


@ray.remote
def borrow_in_task(nested, to):
    """A task borrower: hands the nested ref on to borrower ``to``."""
    return ray.get(to.pass_on.remote(nested, to))


@pytest.fixture(scope="module")
def actors(ray_cluster):
    producer = Producer.remote()
    final = Consumer.remote()
    middle = Consumer.remote()
    outsider = Consumer.remote()
    async_consumer = AsyncConsumer.remote()
    create_collective_group([producer, final, middle], backend="torch_gloo")
    return producer, final, middle, outsider, async_consumer


def counted(actor, transport, fn):
    before = actor_stats(actor, transport)
    result = fn()
    return result, delta(actor_stats(actor, transport), before)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_consumer_of_another_class(actors, transport):
    """Stock 2.60 never runs the receive when the consumer's class declares no
    tensor_transport method; through the plugin it works."""
    producer, final, *_ = actors
    ref = getattr(producer, transport).remote()
    result, moved = counted(final, transport, lambda: ray.get(final.total.remote(ref)))
    assert result == EXPECTED and moved == N * 4


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_nested_ref_through_two_borrowers(actors, transport):
    """Driver -> middle (borrower, nested) -> final (borrower, nested) -> final's
    task gets it as a direct argument: the bytes move once, over the plugin."""
    producer, final, middle, *_ = actors
    ref = getattr(producer, transport).remote()
    nested = {"inner": [ref, "label"]}
    result, moved = counted(final, transport, lambda: ray.get(middle.pass_nested.remote(nested, final)))
    assert result == EXPECTED and moved == N * 4


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_nested_ref_through_a_task(actors, transport):
    producer, final, middle, *_ = actors
    ref = getattr(producer, transport).remote()
    result, moved = counted(final, transport, lambda: ray.get(borrow_in_task.remote({"inner": [ref]}, final)))
    assert result == EXPECTED and moved == N * 4


@pytest.mark.parametrize("transport", ["nixl", "shm"])
@pytest.mark.parametrize("how", ["get", "wait_then_get"])
def test_borrower_reads_one_sided_objects(actors, transport, how):
    producer, _, _, outsider, _ = actors
    ref = getattr(producer, transport).remote()
    result, moved = counted(outsider, transport, lambda: ray.get(getattr(outsider, how).remote({"inner": [ref]})))
    assert result == EXPECTED and moved == N * 4


@pytest.mark.parametrize("transport", ["nixl", "shm"])
@pytest.mark.parametrize("how", ["await_ref", "future", "get"])
def test_asyncio_actor_reads_one_sided_objects(actors, transport, how):
    producer, *_, async_consumer = actors
    ref = getattr(producer, transport).remote()
    result, moved = counted(async_consumer, transport, lambda: ray.get(getattr(async_consumer, how).remote({"inner": [ref]})))
    assert result == EXPECTED and moved == N * 4


@pytest.mark.parametrize("transport", ["nixl", "shm"])
def test_every_way_of_reading_in_the_driver(actors, transport):
    """Each read of a fresh ref moves its bytes through the plugin into the
    driver (its own counters)."""
    producer = actors[0]
    import ray_rdt

    def read(how):
        ref = getattr(producer, transport).remote()
        before = ray_rdt.stats()[transport]
        if how == "get":
            value = ray.get(ref)
        elif how == "wait":
            ready, _ = ray.wait([ref], timeout=60)
            value = ray.get(ready[0])
        elif how == "future":
            value = ref.future().result(timeout=60)
        else:

            async def awaited():
                return await ref

            value = asyncio.run(awaited())
        return float(value.sum()), delta(ray_rdt.stats()[transport], before)

    for how in ("get", "wait", "future", "await"):
        assert read(how) == (EXPECTED, N * 4), how


GUIDE_GET_ERROR = (
    "Currently ray.get() only supports OBJECT_STORE and NIXL tensor transport, got "
    "TensorTransportEnum.GLOO, please specify the correct tensor transport in ray.get()"
)


def test_every_way_of_reading_a_gloo_object_outside_its_group(actors):
    """The driver is in no group: ray.get, await and futures all raise the
    guide's ValueError."""
    producer = actors[0]
    ref = producer.gloo.remote()
    with pytest.raises(ValueError) as e:
        ray.get(ref)
    assert GUIDE_GET_ERROR in str(e.value)
    with pytest.raises(ValueError) as e:
        ref.future().result(timeout=60)
    assert GUIDE_GET_ERROR in str(e.value)

    async def awaited():
        return await ref

    with pytest.raises(ValueError) as e:
        asyncio.run(asyncio.wait_for(awaited(), 60))
    assert GUIDE_GET_ERROR in str(e.value)
    # The object store still works, as the guide says.
    assert float(ray.get(ref, _tensor_transport="object_store").sum()) == EXPECTED


@pytest.mark.parametrize(
    "reader, how",
    [("sync", "get"), ("sync", "future"), ("async", "get"), ("async", "future"), ("async", "await")],
)
def test_every_way_of_reading_a_gloo_object_in_actors(actors, reader, how):
    """In sync (threaded) and asyncio actors too, reading a gloo object raises
    the guide's ValueError, whichever way it is read (a sync method cannot
    ``await``)."""
    producer, final, _, _, async_consumer = actors
    actor = final if reader == "sync" else async_consumer
    ref = producer.gloo.remote()
    is_value_error, text = ray.get(actor.read_error.remote({"inner": [ref]}, how))
    assert is_value_error and GUIDE_GET_ERROR in text, text


def test_gloo_consumer_outside_the_group_through_a_borrower(actors):
    """A borrowed gloo ref reaching an actor outside the producer's group: the
    error says exactly that."""
    producer, _, middle, outsider, _ = actors
    ref = producer.gloo.remote()
    with pytest.raises(ray.exceptions.RayTaskError, match="not in collective group"):
        ray.get(middle.pass_on.remote({"inner": [ref]}, outsider))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_process_that_did_not_create_the_group_submits_rdt_tasks(actors, transport):
    producer, final, middle, *_ = actors
    result, moved = counted(final, transport, lambda: ray.get(middle.submit_pair.remote(producer, final, transport)))
    assert result == EXPECTED and moved == N * 4


def test_borrowed_refs_are_freed_once_after_the_last_borrower(actors):
    """The producer keeps the object while the driver still holds the ref
    after every borrower let go, frees it once the driver lets go too
    (``wait_tensor_freed`` unblocks then), exactly once."""
    _, final, middle, *_ = actors
    # A producer of its own: a late free of an earlier test's object (a
    # borrower may hold a ref until its own garbage collection) must not count
    # as a second free of this test's object.
    producer = Producer.remote()
    ref = producer.shm.remote()
    key = ref.hex()
    nested = {"inner": [ref]}
    freed_before = ray.get(producer.objects_freed.remote())
    assert ray.get(middle.pass_nested.remote(nested, final)) == EXPECTED
    # The borrowers are done; Ray's borrowing protocol has told the owner. The
    # producer still holds the object (the driver holds the ref).
    assert ray.get(producer.holds.remote(key))
    waiting = producer.wait_freed.remote(60)
    del ref, nested
    gc.collect()
    assert ray.get(waiting, timeout=60)
    assert not ray.get(producer.holds.remote(key))
    assert wait_for(lambda: ray.get(producer.objects_freed.remote()) >= freed_before + 1, timeout=30)
    # A second object's free counts one more, and nothing else was freed
    # meanwhile: the first was freed once.
    second = producer.shm.remote()
    assert ray.get(final.total.remote(second)) == EXPECTED
    del second
    gc.collect()
    assert wait_for(lambda: ray.get(producer.objects_freed.remote()) >= freed_before + 2, timeout=30)
    assert ray.get(producer.objects_freed.remote()) == freed_before + 2
    ray.kill(producer)
