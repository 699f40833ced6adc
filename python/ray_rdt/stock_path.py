"""Objects the plugin leaves to stock Ray's transport code.

The plugin's CUDA paths have not run on a GPU yet (``ci/gpu-nightly``), so
until they have, CUDA tensors put over nixl move through stock Ray 2.60's own
``NixlTensorTransport`` (the code Ray's GPU CI runs), not through the plugin's
CUDA code. Which devices the plugin's nixl moves itself is
``RAY_RDT_NIXL_DEVICES`` (comma-separated; default ``cpu``; ``cpu,cuda`` turns
the plugin's CUDA path on). nixl is the only plugin transport by default that
serves CUDA tensors; ``nccl`` and ``cuda_ipc`` stay stock Ray's unless
``RAY_RDT_PLUGIN_TRANSPORTS`` lists them.

Such an object still travels the plugin's way through Ray (its value carries a
record, no ``__ray_recv__`` task), but the record is stock Ray's NIXL metadata
(:func:`record`): the producer registers the tensors with stock Ray's NIXL agent
and keeps them in Ray's own RDT store; a consumer reads them with stock Ray's
``recv_multiple_tensors``; the owner frees them with Ray's ``__ray_free__``
task, which calls stock Ray's ``garbage_collect``.
"""

import os
import pickle
import threading
from typing import Any, List, Optional, Tuple

DEVICES_ENV = "RAY_RDT_NIXL_DEVICES"
DEFAULT_DEVICES = ("cpu",)
# A stock record starts with this; the plugin's own records start with b"RDTM".
MAGIC = b"RDTS"

_lock = threading.Lock()
_stock = {}


def plugin_devices() -> Tuple[str, ...]:
    """The device types whose tensors the plugin's nixl moves itself."""
    raw = os.environ.get(DEVICES_ENV)
    if raw is None:
        return DEFAULT_DEVICES
    return tuple(d.strip().lower() for d in raw.split(",") if d.strip())


def takes(transport: str, tensors: List[Any]) -> bool:
    """Whether stock Ray moves an object of ``tensors`` declared with
    ``transport`` (upper case, as Ray names it): nixl objects on a device the
    plugin's nixl does not move (all tensors of an object share one device)."""
    if transport != "NIXL" or not tensors:
        return False
    return tensors[0].device.type not in plugin_devices()


def is_record(record) -> bool:
    """Whether a record is a stock one (:func:`record`)."""
    return isinstance(record, (bytes, bytearray)) and record[:4] == MAGIC


def manager(transport: str):
    """This process's stock Ray transport manager for ``transport``."""
    with _lock:
        if transport not in _stock:
            from ray.experimental.rdt.nixl_tensor_transport import NixlTensorTransport

            assert transport == "NIXL", transport
            _stock[transport] = NixlTensorTransport()
        return _stock[transport]


def put(key_hex: str, tensors: List[Any], transport: str) -> bytes:
    """Producer: registers ``tensors`` with stock Ray's transport, keeps them
    in Ray's RDT store under ``key_hex`` and returns their stock record."""
    import ray

    meta = manager(transport).extract_tensor_transport_metadata(key_hex, tensors)
    store = ray._private.worker.global_worker.rdt_manager.rdt_store
    store.add_object(key_hex, tensors, is_primary=True)
    return MAGIC + pickle.dumps((transport, meta), protocol=pickle.HIGHEST_PROTOCOL)


def rename(key_hex: str, obj_id: str) -> None:
    """A ``ray.put``'s object, stored under its key before its ObjectRef ID
    existed, is kept under that ID (where ``__ray_free__`` looks)."""
    import ray

    store = ray._private.worker.global_worker.rdt_manager.rdt_store
    store.add_object(obj_id, store.pop_object(key_hex), is_primary=True)


def metadata(record: bytes):
    """``(transport, stock Ray's metadata)`` of a stock record."""
    return pickle.loads(record[len(MAGIC) :])


def fetch(key_hex: str, record: bytes, targets: Optional[List[Any]]) -> List[Any]:
    """Consumer: the object's tensors, read by stock Ray's transport (into
    ``targets`` when given, as 2.60 does)."""
    transport, meta = metadata(record)
    stock = manager(transport)
    comm = stock.get_communicator_metadata(None, None, transport)
    return stock.recv_multiple_tensors(key_hex, meta, comm, targets)


def garbage_collect(obj_id: str, record: bytes, tensors: List[Any]) -> None:
    """Producer, when the owner frees the object (``__ray_free__``): stock
    Ray's cleanup of its registration."""
    transport, meta = metadata(record)
    manager(transport).garbage_collect(obj_id, meta, tensors)
