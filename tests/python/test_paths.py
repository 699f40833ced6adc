"""How objects travel on one host, whatever transport was declared: small
objects inside their metadata record (no fetch from the producer), CPU tensors
of every transport over the same-host path (shared memory), and frees sent to
the producer's plugin endpoint instead of ``__ray_free__`` tasks. Each test reads
the plugin's per-path counters (``ray_rdt.stats()[t]["paths"]``) and the
producer's endpoint counters (``ray_rdt.endpoint_stats()``) in the actors.

Defaults are on here (inline threshold 16 KiB, same-host path on); the off
switch is tested in test_paths_off.py.
"""

import gc

import pytest
import torch

import ray
from ray.experimental.collective import create_collective_group

from conftest import ReceivingActor, wait_for

SMALL = 1024  # float32 elements: 4 KiB, inside the record
LARGE = 1 << 18  # float32 elements: 1 MiB, fetched


@ray.remote
class PathActor(ReceivingActor):
    @ray.method(tensor_transport="gloo")
    def gloo_tensor(self, n):
        self.tensor = torch.arange(n, dtype=torch.float32)
        return self.tensor

    @ray.method(tensor_transport="nixl")
    def nixl_tensor(self, n):
        self.tensor = torch.arange(n, dtype=torch.float32)
        return self.tensor

    @ray.method(tensor_transport="shm")
    def shm_tensor(self, n):
        self.tensor = torch.arange(n, dtype=torch.float32)
        return self.tensor

    def counters(self):
        import ray_rdt

        return ray_rdt.stats(), ray_rdt.endpoint_stats()

    def count_ray_free_tasks(self):
        """Counts the calls of Ray's ``__ray_free__`` in this process from now on
        (an owner's free task resolves the function by module attribute)."""
        import ray.experimental.rdt.rdt_store as rdt_store

        self.ray_frees = 0
        original = rdt_store.__ray_free__

        def counting(*args, **kwargs):
            self.ray_frees += 1
            return original(*args, **kwargs)

        rdt_store.__ray_free__ = counting

    def ray_free_tasks(self):
        return self.ray_frees

    def held(self):
        return ray._private.worker.global_worker.rdt_manager.rdt_store.get_num_objects()

    def holds(self, ref_hex):
        """Whether this process's plugin holds the object ``ref_hex``."""
        from ray_rdt import process

        return process.get_context().contains(ref_hex)

    def wait_freed(self, timeout):
        ray.experimental.wait_tensor_freed(self.tensor, timeout=timeout)
        return True

    def put_and_drop(self, transport, count):
        """``ray.put``s ``count`` views here (this actor owns and produces
        the object), drops the ref, and says how the object went: whether
        the plugin held it, how many of its tensors were built for the free
        (the store's ``_plugin_get``), and whether it is gone within 30 s."""
        from ray_rdt.store import PluginRDTStore

        built = []
        original = PluginRDTStore._plugin_get

        def counting(store, obj_id):
            tensors = original(store, obj_id)
            built.append(len(tensors))
            return tensors

        PluginRDTStore._plugin_get = counting
        try:
            self.model = torch.ones(count, 4)
            ref = ray.put(list(self.model), _tensor_transport=transport)
            held = self.held()
            del ref
            gc.collect()
            gone = wait_for(lambda: self.held() == 0, timeout=30)
        finally:
            PluginRDTStore._plugin_get = original
        return {"held": held, "gone": gone, "tensors_built": sum(built)}


@pytest.fixture(scope="module")
def actors(ray_cluster):
    # Threaded, so that a task blocked in wait_tensor_freed leaves the actor usable.
    sender, receiver, outsider = (PathActor.options(max_concurrency=4).remote() for _ in range(3))
    create_collective_group([sender, receiver], backend="torch_gloo")
    return sender, receiver, outsider


def counters(actor):
    return ray.get(actor.counters.remote())


def path_delta(after, before, transport, path, field="bytes_received"):
    return after[0][transport]["paths"][path][field] - before[0][transport]["paths"][path][field]


PRODUCERS = {"gloo": "gloo_tensor", "nixl": "nixl_tensor", "shm": "shm_tensor"}


@pytest.mark.parametrize("transport", sorted(PRODUCERS))
def test_small_object_resolves_from_its_record(actors, transport):
    """A 4 KiB object reaches the consumer with no fetch: the producer's endpoint
    serves nothing, the consumer counts the bytes under the declared transport's
    inline path."""
    sender, receiver, _ = actors
    s0, r0 = counters(sender), counters(receiver)
    ref = getattr(sender, PRODUCERS[transport]).remote(SMALL)
    expected = torch.arange(SMALL, dtype=torch.float32).sum()
    assert torch.equal(ray.get(receiver.sum.remote(ref)), expected)
    s1, r1 = counters(sender), counters(receiver)
    assert path_delta(r1, r0, transport, "inline") == SMALL * 4
    assert r1[0][transport]["bytes_received"] - r0[0][transport]["bytes_received"] == SMALL * 4
    assert s1[1]["fetches_served"] == s0[1]["fetches_served"], "the producer served a fetch"


@pytest.mark.parametrize("transport", sorted(PRODUCERS))
def test_small_object_passed_back_is_the_same_tensor(actors, transport):
    sender, receiver, _ = actors
    ref = getattr(sender, PRODUCERS[transport]).remote(SMALL)
    ptr, _ = ray.get(sender.ptr_and_sum.remote(ref))
    assert ptr == ray.get(sender.stored_ptr.remote())


def test_small_gloo_object_keeps_the_group_contract(actors):
    """Inline or not, a gloo object reaches only members of the producer's group
    (stock 2.60's check at submission, unchanged)."""
    sender, _, outsider = actors
    ref = sender.gloo_tensor.remote(SMALL)
    with pytest.raises(ValueError, match="No communicators found"):
        ray.get(outsider.sum.remote(ref))


@pytest.mark.parametrize("transport", ["gloo", "nixl"])
def test_same_host_path_for_every_cpu_transport(actors, transport):
    """1 MiB gloo and nixl objects move through shared memory on one host,
    counted under their declared transport's same-host path; the producer
    serves the fetch (nixl's own path would not involve it)."""
    sender, receiver, _ = actors
    s0, r0 = counters(sender), counters(receiver)
    ref = getattr(sender, PRODUCERS[transport]).remote(LARGE)
    expected = torch.arange(LARGE, dtype=torch.float32).sum()
    assert torch.equal(ray.get(receiver.sum.remote(ref)), expected)
    s1, r1 = counters(sender), counters(receiver)
    assert path_delta(r1, r0, transport, "same_host") == LARGE * 4
    assert path_delta(r1, r0, transport, "network") == 0
    assert path_delta(s1, s0, transport, "same_host", "bytes_sent") == LARGE * 4
    assert r1[0]["shm"]["bytes_received"] == r0[0]["shm"]["bytes_received"], "counted under shm"


def test_same_host_path_keeps_the_group_contract(actors):
    sender, _, outsider = actors
    ref = sender.gloo_tensor.remote(LARGE)
    with pytest.raises(ValueError, match="No communicators found"):
        ray.get(outsider.sum.remote(ref))


def test_frees_go_over_the_endpoint_exactly_once(actors):
    """Out-of-scope objects are freed by the owner's plugin over the producer's
    endpoint, batched, with no ``__ray_free__`` task; each exactly once, and
    only when the last reference is gone (``wait_tensor_freed`` unblocks then)."""
    sender, receiver, _ = actors
    ray.get(sender.count_ray_free_tasks.remote())
    gc.collect()
    assert wait_for(lambda: ray.get(sender.held.remote()) == 0, timeout=30)
    s0 = counters(sender)
    n = 20
    refs = [sender.shm_tensor.remote(LARGE) for _ in range(n)]
    ray.get([receiver.sum.remote(r) for r in refs])
    assert ray.get(sender.held.remote()) == n
    last = sender.gloo_tensor.remote(LARGE)  # the one `self.tensor` now holds
    ray.get(receiver.sum.remote(last))
    waiting = sender.wait_freed.remote(60)
    del refs
    gc.collect()
    # The other objects are freed; the one the driver still refers to is held
    # (and `wait_tensor_freed` on its tensor returns only once it goes).
    assert wait_for(lambda: ray.get(sender.held.remote()) == 1, timeout=30)
    assert ray.get(sender.holds.remote(last.hex()))
    del last
    gc.collect()
    assert ray.get(waiting, timeout=30)
    assert wait_for(lambda: ray.get(sender.held.remote()) == 0, timeout=30)
    s1 = counters(sender)
    freed = s1[1]["objects_freed"] - s0[1]["objects_freed"]
    requests = s1[1]["free_requests"] - s0[1]["free_requests"]
    assert freed == n + 1, freed
    assert 1 <= requests <= n + 1
    assert ray.get(sender.ray_free_tasks.remote()) == 0


@pytest.mark.parametrize("transport", ["nixl", "shm"])
def test_an_object_put_by_its_own_producer_is_freed_in_place(actors, transport):
    """A ``ray.put`` in an actor (the trainer's weight sync): when the actor
    drops the ref, the plugin frees the object in place, with no
    ``__ray_free__`` task and without building its tensors (2.60's task
    builds every tensor twice, get then pop: 20,000 torch tensors here)."""
    sender = actors[0]
    ray.get(sender.count_ray_free_tasks.remote())
    assert wait_for(lambda: ray.get(sender.held.remote()) == 0, timeout=30)
    out = ray.get(sender.put_and_drop.remote(transport, 10_000))
    assert out == {"held": 1, "gone": True, "tensors_built": 0}, out
    assert ray.get(sender.ray_free_tasks.remote()) == 0
