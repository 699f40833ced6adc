"""What the patched Ray 2.60.0 calls (see ray-patches/ and docs/ray-integration.md).

Ray reaches this module through ``ray.experimental.rdt.util.rdt_plugin()``,
which returns it only when the plugin is on (``RAY_RDT_PLUGIN``, default on), so
every patched site reads ``plugin = rdt_plugin(); if plugin is not None: ...``
and otherwise runs stock 2.60 code unchanged.

Data path of a plugin transport (GLOO, SHM, NIXL):

* task return (producer): ``serialize_rdt_objects`` pulls the tensors out of the
  return value as in stock Ray; :func:`serialize_with_record` then stores them in
  the plugin under the return ObjectID (``rdt_context_put``) and serializes the
  value again with placeholders ``(index, key, record)`` instead of tensor
  indices, so the value in Ray's object store carries the plugin's metadata
  record. The owner gets the record too (:func:`store_rdt_objects`).
* argument resolution (consumer): unpickling a placeholder calls
  :func:`resolve_placeholder`, which fetches all tensors of the object once
  (``rdt_context_fetch``): views of the same memory if this process produced
  them, else bytes moved by the plugin straight from the producer's plugin. No
  ``__ray_send__``/``__ray_recv__`` task is submitted.
"""

import logging
import os
import struct
import threading
from typing import Any, List, Optional

import ray

import ray_rdt
from ray_rdt import _ffi
from ray_rdt import context as _context

logger = logging.getLogger(__name__)

_tls = threading.local()

# Collective groups this process joined through the plugin: backend -> name.
_local_groups = {}
_local_groups_lock = threading.Lock()

KV_NAMESPACE = "ray_rdt"

MUTABLE_WARNING = (
    "GPU ObjectRef({obj_id}) is being passed back to the actor that created it {actor}. "
    "Note that GPU objects are mutable. If the tensor is modified, Ray's internal copy will "
    "also be updated, and subsequent passes to other actors will receive the updated version "
    "instead of the original."
)

RAY_GET_ERROR = (
    "Currently ray.get() only supports OBJECT_STORE and NIXL tensor transport, got "
    "TensorTransportEnum.{transport}, please specify the correct tensor transport in ray.get()"
)


def enabled() -> bool:
    """Whether the plugin is on in this process (read by Ray's ``rdt_plugin()``)."""
    return ray_rdt.enabled()


class RDTTransferError(RuntimeError):
    """A plugin transfer of an RDT object failed (a system error)."""


# -- transports -------------------------------------------------------------------


def register_transports(transport_manager_info: dict, info_cls) -> None:
    """Routes GLOO and NIXL through the plugin and adds SHM (as listed by
    ``RAY_RDT_PLUGIN_TRANSPORTS``; called by Ray's registry)."""
    import torch

    from ray_rdt.transports import enabled_transports

    for name, cls in enabled_transports().items():
        transport_manager_info[name] = info_cls(cls, list(cls.DEVICES), torch.Tensor)


def transport_class(name: Optional[str]):
    """The plugin transport class registered under ``name``, or None."""
    if not name:
        return None
    from ray.experimental.rdt import util

    from ray_rdt.transports import PluginTensorTransport

    util._ensure_default_transports_registered()
    info = util.transport_manager_info.get(name)
    if info is not None and issubclass(info.transport_manager_class, PluginTensorTransport):
        return info.transport_manager_class
    return None


def is_plugin_transport(name: Optional[str]) -> bool:
    return transport_class(name) is not None


# -- the custom serializer of RDT data types (torch.Tensor) --------------------------
#
# Stock 2.60 registers two closures; Ray pickles the deserializer *by value* with
# every tensor it serializes (hundreds of microseconds each). These module-level
# functions speak the same thread-local protocol, are pickled by reference, and
# understand the plugin's placeholders.


def tensor_serializer(tensor):
    tl = ray._private.worker.global_worker.get_serialization_context()._thread_local
    if getattr(tl, "use_external_transport", False):
        # Out of band: the tensor stays with the RDT store; its index (and, for
        # plugin transports, the plugin's key and record) go into the value.
        tl.rdt_tensors.append(tensor)
        index = len(tl.rdt_tensors) - 1
        record = getattr(tl, "rdt_plugin_record", None)
        return index if record is None else (index,) + record
    import pickle

    return pickle.dumps(tensor)


def tensor_deserializer(val):
    ctx = ray._private.worker.global_worker.get_serialization_context()
    if isinstance(val, int):
        assert val < len(ctx._thread_local.rdt_tensors)
        return ctx._thread_local.rdt_tensors[val]
    if isinstance(val, tuple):
        return resolve_placeholder(ctx, val)
    import pickle

    assert isinstance(val, bytes)
    return pickle.loads(val)


# -- producer: task return and ray.put ----------------------------------------------


class _PendingPut:
    __slots__ = ("key", "record", "tensors", "transport")

    def __init__(self, key: bytes, record: bytes, tensors: List[Any], transport: str):
        self.key = key
        self.record = record
        self.tensors = tensors
        self.transport = transport


def _return_object_id() -> bytes:
    """The ObjectID of the running actor task's (single) return value.

    Ray's ``ObjectID::FromIndex(task_id, 1)``: the task ID followed by the return
    index 1 as a little-endian uint32. RDT methods have exactly one return.
    """
    task_id = ray._private.worker.global_worker.current_task_id
    return task_id.binary() + struct.pack("<I", 1)


def local_group(backend: str) -> Optional[str]:
    with _local_groups_lock:
        return _local_groups.get(backend)


def _drop_pending():
    pending = getattr(_tls, "pending", None)
    _tls.pending = None
    if pending is not None:
        # A put that Ray never completed (e.g. an error between serialization and
        # storing the value): free the plugin's copy.
        ctx = _context.peek_context()
        if ctx is not None:
            try:
                ctx.free(pending.key)
            except Exception:  # pragma: no cover - best effort
                logger.exception("freeing an abandoned RDT object")


def serialize_with_record(serialization_context, value: Any, tensors: List[Any], transport: str, for_put: bool):
    """Stores ``tensors`` in the plugin and re-serializes ``value`` with placeholders
    that carry the plugin's metadata record. Returns the new serialized value, or
    None to keep Ray's (a ``ray.put`` without tensors)."""
    cls = transport_class(transport)
    _drop_pending()
    if for_put and not tensors:
        return None  # ray.put of a value without tensors is no RDT object (stock)
    ctx = _context.get_context()
    key = os.urandom(_context.OBJECT_ID_SIZE) if for_put else _return_object_id()
    group = None
    if not cls.ONE_SIDED:
        group = local_group(transport)
        if group is None:
            raise ValueError(
                f"This actor is not in a {transport} collective group; create one with "
                "ray.experimental.collective.create_collective_group before returning "
                f'tensors with tensor_transport="{transport.lower()}".'
            )
    try:
        record = ctx.put(key, cls.CODE, tensors, group)
    except _ffi.RdtError as e:
        if e.status != _ffi.ERR_ALREADY_EXISTS:
            raise
        # A retry of a task whose earlier reply was lost: this attempt's tensors
        # replace the earlier attempt's (consumers fetch by the record Ray keeps).
        ctx.free(key)
        record = ctx.put(key, cls.CODE, tensors, group)
    tl = serialization_context._thread_local
    tl.use_external_transport = True
    tl.rdt_tensors = []
    # A put's placeholders say so: its ObjectRef ID is only assigned after the
    # value is stored, so errors name the object by its put (see fetch()).
    tl.rdt_plugin_record = (key, record, "put") if for_put else (key, record)
    try:
        serialized = serialization_context._serialize_to_msgpack(value)
        again = tl.rdt_tensors
    except BaseException:
        ctx.free(key)
        raise
    finally:
        tl.use_external_transport = False
        tl.rdt_tensors = []
        tl.rdt_plugin_record = None
    if len(again) != len(tensors) or any(a is not b for a, b in zip(again, tensors)):
        ctx.free(key)
        raise RuntimeError("ray_rdt: the value's tensors changed between two serialization passes")
    _tls.pending = _PendingPut(key, record, tensors, transport)
    return serialized


def _metadata(pending: _PendingPut):
    from ray_rdt.transports import PluginTransportMetadata

    device = pending.tensors[0].device.type if pending.tensors else None
    return PluginTransportMetadata(
        tensor_meta=[(t.shape, t.dtype) for t in pending.tensors],
        tensor_device=device,
        record=pending.record,
        key=pending.key.hex(),
    )


def _take_pending(tensors: List[Any]) -> Optional[_PendingPut]:
    pending = getattr(_tls, "pending", None)
    if pending is None or pending.tensors is not tensors:
        return None
    _tls.pending = None
    return pending


def store_rdt_objects(obj_id: str, tensors: List[Any], transport: str) -> bytes:
    """Task return, after serialization: the pickled transport metadata for the owner."""
    import ray.cloudpickle as pickle

    pending = _take_pending(tensors)
    if pending is None:
        raise RuntimeError(f"ray_rdt: no plugin object was stored for the return value {obj_id}")
    if pending.key.hex() != obj_id:
        # Should not happen (see _return_object_id); stay consistent regardless.
        logger.warning("ray_rdt: return ID %s differs from the plugin key %s", obj_id, pending.key.hex())
        ray._private.worker.global_worker.rdt_manager.rdt_store.add_alias(obj_id, pending.key.hex())
    return pickle.dumps(_metadata(pending))


def claim_pending_put(obj_id: str, tensors: List[Any], transport: str, store) -> Optional[Any]:
    """``ray.put``: binds the plugin object stored during serialization to its ref."""
    pending = _take_pending(tensors)
    if pending is None:
        return None
    store.add_alias(obj_id, pending.key.hex())
    return _metadata(pending)


def free_primary_copy(obj_id: str, src_actor, transport: str, meta) -> bool:
    """Owner side, when an RDT object goes out of scope: frees the producer's
    primary copy over the producer's plugin endpoint (batched, no Ray task).
    Returns False to leave the free to stock 2.60 (objects of other transports,
    and objects this process produced itself, which 2.60 frees in place)."""
    from ray.experimental.rdt.rdt_manager import RDTSource

    from ray_rdt.transports import PluginTransportMetadata

    if not is_plugin_transport(transport) or not isinstance(meta, PluginTransportMetadata) or not meta.record:
        return False
    if src_actor == RDTSource.DRIVER or src_actor._actor_id == ray._private.worker.global_worker.actor_id:
        return False
    _context.get_context().free_remote(meta.key, meta.record)
    return True


# -- consumer: argument resolution and ray.get ----------------------------------------


def fetch_timeout_s() -> float:
    from ray._private import ray_constants

    return ray_constants.RDT_FETCH_FAIL_TIMEOUT_SECONDS


def fetch(key, record: bytes, transport: str = "", object_ref: Optional[str] = None, put: bool = False) -> List[Any]:
    """Fetches an object's tensors through the plugin; raises RDTTransferError.

    ``object_ref`` (hex), when known, names the object in errors; otherwise the
    plugin key does, which is the ObjectRef's ID for task returns and a key of
    its own for ``ray.put`` objects (``put``)."""
    ctx = _context.get_context()
    try:
        return ctx.fetch(key, record, fetch_timeout_s())
    except _ffi.RdtError as e:
        key_hex = key.hex() if isinstance(key, bytes) else key
        _on_fetch_error(e, transport)
        if object_ref is not None:
            what = f"ObjectRef({object_ref})"
        elif put:
            what = f"a ray.put object (plugin key {key_hex})"
        else:
            what = f"ObjectRef({key_hex})"
        raise RDTTransferError(f"RDT transfer of {what} failed: {e}") from None


# Statuses of a failed transfer itself (peer died, connection broke, timeout).
_SYSTEM_ERRORS = (_ffi.ERR_TRANSPORT, _ffi.ERR_TIMEOUT, _ffi.ERR_IO, _ffi.ERR_PEER_GONE)


def _on_fetch_error(error: "_ffi.RdtError", transport: str):
    """A failed transfer over a collective transport is a system error: the
    collective group is destroyed (guide: "Limitations")."""
    name = transport
    cls = transport_class(name)
    if cls is None or cls.ONE_SIDED or error.status not in _SYSTEM_ERRORS:
        # One-sided transports have no group; a refusal (object freed, unknown
        # group, unsupported tensor) leaves the group usable.
        return
    group = local_group(name)
    if group is None:
        return
    reason = f"destroyed after a failed transfer: {error}"
    logger.error("Destroying collective group %s: %s", group, error)
    destroy_local_group(group)
    _teardown_torch_group(group)
    mark_group_destroyed(group, reason)


def _teardown_torch_group(name: str):
    """Drops torch's side of a broken group in this member (Ray's
    ``ray.util.collective`` group and torch's default process group, which is
    bound to the group's first rank 0), so that a new group can form."""
    try:
        import ray.util.collective as col

        if col.is_group_initialized(name):
            col.destroy_collective_group(name)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # pragma: no cover - best effort on a broken group
        logger.exception("tearing down torch's side of collective group %s", name)


def resolve_placeholder(serialization_context, placeholder: tuple):
    """Unpickling a plugin placeholder ``(index, key, record[, "put"])`` of a tensor."""
    index, key, record = placeholder[:3]
    tl = serialization_context._thread_local
    provided = getattr(tl, "rdt_tensors", None)
    if provided:
        # ray.get: the tensors were fetched before deserialization.
        return provided[index]
    cached = getattr(tl, "rdt_plugin_fetched", None)
    if cached is None or cached[0] != key:
        tensors = fetch(key, record, _record_transport(record), put=len(placeholder) > 3)
        cached = (key, tensors)
        tl.rdt_plugin_fetched = cached
    return cached[1][index]


_TRANSPORT_NAMES = {code: name.upper() for name, code in _ffi.TRANSPORT_CODES.items()}


def _record_transport(record: bytes) -> str:
    """The transport name a metadata record names ("" if it cannot be decoded)."""
    try:
        return _TRANSPORT_NAMES.get(_ffi.record_summary(record)[0], "")
    except _ffi.RdtError:
        return ""


def clear_fetch_cache(serialization_context):
    serialization_context._thread_local.rdt_plugin_fetched = None


# -- owner: ray.get, warnings ---------------------------------------------------------


def mutable_warning(obj_id: str, src_actor) -> str:
    return MUTABLE_WARNING.format(obj_id=obj_id, actor=src_actor)


def ray_get_error(transport: str) -> ValueError:
    return ValueError(RAY_GET_ERROR.format(transport=transport))


def get_use_object_store(tensor_transport: Optional[str], use_object_store: bool) -> bool:
    """``ray.get(ref, _tensor_transport=...)`` (the guide's spelling) to 2.60's
    ``_use_object_store``."""
    if tensor_transport is None:
        return use_object_store
    name = str(tensor_transport).upper()
    if name == "OBJECT_STORE":
        return True
    from ray.experimental.rdt import util

    util._ensure_default_transports_registered()
    if name not in util.transport_manager_info or not util.is_one_sided_transport(name):
        raise ray_get_error(name)
    return use_object_store


# -- collective groups ----------------------------------------------------------------


def _serve_rendezvous(self_actor) -> str:
    return _context.get_context().rendezvous_serve(ray.util.get_node_ip_address())


def serve_rendezvous(actor) -> str:
    """Owner side of ``create_collective_group``: starts the group's rendezvous
    store in the process of rank 0 and returns its address."""
    return ray.get(actor.__ray_call__.remote(_serve_rendezvous))


def join_group(name: str, backend: str, rank: int, world_size: int, address: str):
    """Runs in each member: joins the plugin's collective group ``name``."""
    from ray_rdt.transports import PLUGIN_TRANSPORTS

    ctx = _context.get_context()
    ctx.group_create(name, PLUGIN_TRANSPORTS[backend].CODE, rank, world_size, address, group_timeout_s())
    with _local_groups_lock:
        _local_groups[backend] = name


def destroy_local_group(name: str):
    """Runs in a member: leaves the plugin's group ``name`` (no error if absent)."""
    with _local_groups_lock:
        for backend in [b for b, n in _local_groups.items() if n == name]:
            del _local_groups[backend]
    ctx = _context.peek_context()
    if ctx is None:
        return
    try:
        ctx.group_destroy(name)
    except _ffi.RdtNotFoundError:
        pass


def group_timeout_s() -> float:
    return float(os.environ.get("RAY_RDT_GROUP_TIMEOUT_S", "60"))


def mark_group_destroyed(name: str, reason: str):
    """Records in Ray's GCS that group ``name`` was destroyed by a system error,
    so the owner drops its handle (see :func:`purge_destroyed_groups`)."""
    try:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(f"destroyed:{name}", reason, overwrite=True, namespace=KV_NAMESPACE)
    except Exception:  # pragma: no cover - best effort
        logger.exception("recording the destruction of collective group %s", name)


def group_destroyed_reason(name: str) -> Optional[str]:
    from ray.experimental import internal_kv

    value = internal_kv._internal_kv_get(f"destroyed:{name}", namespace=KV_NAMESPACE)
    return value.decode() if value else None


def purge_destroyed_groups(manager, destroy) -> List[str]:
    """Owner side: destroys (``destroy(name)``: Ray's ``destroy_collective_group``)
    the groups a member reported destroyed after a system error."""
    purged = []
    for comm in list(manager.get_collective_groups()):
        if comm.backend != "GLOO":
            continue
        reason = group_destroyed_reason(comm.name)
        if reason is None:
            continue
        logger.error("Collective group %s was %s", comm.name, reason)
        try:
            destroy(comm.name)
        except Exception:
            logger.exception("destroying collective group %s", comm.name)
            manager.remove_remote_communicator(comm.name)
        purged.append(comm.name)
    return purged
