"""With the plugin on, Ray 2.60's own RDT paths keep working next to the plugin's
transports: custom transports (``register_tensor_transport``),
``set_target_for_ref`` (on the plugin's NIXL and shm), and the public methods of
the RDT store object. (Stock 2.60 NIXL, with the plugin off, is checked by
stock_mode_check.py.)"""

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, List, Optional

import pytest
import torch

import ray
from ray.experimental import (
    CommunicatorMetadata,
    TensorTransportManager,
    TensorTransportMetadata,
    register_tensor_transport,
    set_target_for_ref,
)
from ray.experimental.collective import create_collective_group

from conftest import actor_stats, delta


@dataclass
class KvMetadata(TensorTransportMetadata):
    key: Optional[str] = None


class KvTransport(TensorTransportManager):
    """A toy one-sided transport: the bytes go through Ray's GCS key-value store."""

    def tensor_transport_backend(self) -> str:
        return "KV_TEST"

    @staticmethod
    def is_one_sided() -> bool:
        return True

    @staticmethod
    def can_abort_transport() -> bool:
        return False

    def actor_has_tensor_transport(self, actor) -> bool:
        return True

    def extract_tensor_transport_metadata(self, obj_id: str, rdt_object: List[Any]) -> KvMetadata:
        import pickle

        from ray.experimental import internal_kv

        key = f"kv_test:{obj_id}"
        internal_kv._internal_kv_put(key, pickle.dumps([t.clone() for t in rdt_object]))
        return KvMetadata(tensor_meta=[(t.shape, t.dtype) for t in rdt_object], tensor_device="cpu", key=key)

    def get_communicator_metadata(self, src_actor, dst_actor, backend=None) -> CommunicatorMetadata:
        return CommunicatorMetadata()

    def recv_multiple_tensors(self, obj_id, tensor_transport_metadata, communicator_metadata, target_buffers=None):
        import pickle

        from ray.experimental import internal_kv

        return pickle.loads(internal_kv._internal_kv_get(tensor_transport_metadata.key))

    def send_multiple_tensors(self, tensors, tensor_transport_metadata, communicator_metadata):
        pass

    def garbage_collect(self, obj_id, tensor_transport_meta, tensors):
        from ray.experimental import internal_kv

        internal_kv._internal_kv_del(tensor_transport_meta.key)

    def abort_transport(self, obj_id, communicator_metadata):
        pass


@pytest.fixture(scope="module")
def mixed(ray_cluster):
    from ray import cloudpickle

    register_tensor_transport("KV_TEST", ["cpu"], KvTransport, torch.Tensor)
    cloudpickle.register_pickle_by_value(sys.modules[KvTransport.__module__])

    @ray.remote
    class Mixed:
        @ray.method(tensor_transport="gloo")
        def via_gloo(self, t):
            return t

        @ray.method(tensor_transport="KV_TEST")
        def via_kv(self, t):
            return t

        @ray.method(tensor_transport="nixl")
        def via_nixl(self, t):
            return t

        @ray.method(tensor_transport="shm")
        def via_shm(self, t):
            return t

        def plain(self, t):
            return t

        def sum(self, t):
            return torch.sum(t)

    a, b = Mixed.remote(), Mixed.remote()
    create_collective_group([a, b], backend="torch_gloo")
    return a, b


def test_custom_transport_next_to_plugin_transports(mixed):
    a, b = mixed
    t = torch.arange(10.0)
    r0 = actor_stats(b)
    # The custom transport goes the stock way (its own recv on the receiver).
    assert torch.equal(ray.get(b.plain.remote(a.via_kv.remote(t))), t)
    assert torch.equal(ray.get(a.via_kv.remote(t)), t)  # one-sided: ray.get works
    r1 = actor_stats(b)
    assert all(delta(r1[k], r0[k]) == 0 for k in r1)
    # Plugin transports in the same actors, and plain returns of tensors.
    assert torch.equal(ray.get(b.plain.remote(a.via_gloo.remote(t))), t)
    assert torch.equal(ray.get(b.plain.remote(a.via_shm.remote(t))), t)
    assert torch.equal(ray.get(b.plain.remote(a.plain.remote(t))), t)
    r2 = actor_stats(b)
    assert delta(r2["gloo"], r1["gloo"]) == t.nbytes and delta(r2["shm"], r1["shm"]) == t.nbytes


def test_nixl_next_to_custom_transport(mixed):
    a, b = mixed
    t = torch.randn(64, 64)
    r0 = actor_stats(b, "nixl")
    ref = a.via_nixl.remote(t)
    assert torch.allclose(ray.get(b.sum.remote(ref)), t.sum())
    assert torch.equal(ray.get(ref), t)
    assert delta(actor_stats(b, "nixl"), r0) == t.nbytes  # the plugin moved it


@pytest.mark.parametrize("method", ["via_nixl", "via_shm"])
def test_set_target_for_ref(mixed, method):
    import ray_rdt

    a, _ = mixed
    transport = method[len("via_") :]
    t = torch.randn(32)
    ref = getattr(a, method).remote(t)
    target = torch.empty(32)
    set_target_for_ref(ref, [target])
    d0 = ray_rdt.stats()[transport]
    got = ray.get(ref)
    assert torch.equal(target, t)
    assert got.data_ptr() == target.data_ptr()
    # The driver's fetch went through the plugin's transport.
    d1 = ray_rdt.stats()[transport]
    assert delta(d1, d0) == t.nbytes and d1["transfers"] - d0["transfers"] == 1


def test_driver_store_api_and_wait_tensor_freed(ray_cluster):
    store = ray._private.worker.global_worker.rdt_manager.rdt_store
    tensor = torch.randn(1)
    store.add_object_primary("random_id", [tensor], "GLOO")
    assert store.has_object("random_id")
    with pytest.raises(TimeoutError):
        ray.experimental.wait_tensor_freed(tensor, timeout=0.2)

    def gc():
        time.sleep(0.1)
        store.pop_object("random_id")

    thread = threading.Thread(target=gc)
    thread.start()
    ray.experimental.wait_tensor_freed(tensor, timeout=10)
    thread.join()
    assert not store.has_object("random_id")
