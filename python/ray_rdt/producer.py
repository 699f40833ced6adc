"""The producer side: task return and ``ray.put`` of RDT objects.

At task return, Ray's ``serialize_rdt_objects`` pulls the tensors out of the
value; :func:`serialize_with_record` stores them in the plugin under the
return's ObjectID (``rdt_context_put``) and serializes the value again with
placeholders that carry the plugin's metadata record. For the common values
(a tensor; a list, tuple or dict of tensors: a model's weights)
:func:`serialize_in_one_pass` finds the tensors without pickling and
serializes one small stand-in for the whole value.
:func:`store_rdt_objects` gives the owner its metadata;
:func:`claim_pending_put` binds a ``ray.put``.
"""

import logging
import os
import struct
import threading
from typing import Any, List, Optional, Tuple

import ray

from ray_rdt import _ffi, groups, serializer, stock_path
from ray_rdt import process
from ray_rdt.context import OBJECT_ID_SIZE
from ray_rdt.plugin_metadata import PluginTransportMetadata, RecordTensorMeta
from ray_rdt.transport_facts import registered

logger = logging.getLogger(__name__)

_tls = threading.local()


class _PendingPut:
    """An object stored in the plugin whose Ray value is being stored."""

    __slots__ = ("key", "record", "tensors", "transport")

    def __init__(self, key: bytes, record: bytes, tensors: List[Any], transport: str):
        self.key = key
        self.record = record
        self.tensors = tensors
        self.transport = transport


def return_object_id() -> bytes:
    """The ObjectID of the running actor task's (single) return value.

    Ray's ``ObjectID::FromIndex(task_id, 1)``: the task ID followed by the return
    index 1 as a little-endian uint32. RDT methods have exactly one return.
    """
    task_id = ray._private.worker.global_worker.current_task_id
    return task_id.binary() + struct.pack("<I", 1)


def _drop_pending():
    pending = getattr(_tls, "pending", None)
    _tls.pending = None
    if pending is not None:
        # A put that Ray never completed (e.g. an error between serialization and
        # storing the value): free the plugin's copy.
        ctx = process.peek_context()
        if ctx is not None:
            try:
                ctx.free(pending.key)
            except Exception:  # pragma: no cover - best effort
                logger.exception("freeing an abandoned RDT object")


def serialize_with_record(serialization_context, value: Any, tensors: List[Any], transport: str, for_put: bool):
    """Stores ``tensors`` in the plugin and re-serializes ``value`` with placeholders
    that carry the plugin's metadata record. Returns the new serialized value, or
    None to keep Ray's (a ``ray.put`` without tensors)."""
    return _store_and_serialize(serialization_context, value, tensors, transport, for_put)


def _shape_of(value: Any) -> Optional[Tuple[int, Optional[list], List[Any], Optional[bytes]]]:
    """``(kind, dict keys or None, tensors, parameters)`` of a value that is a
    tensor, or a list, tuple or dict whose items are all distinct tensors (and
    whose keys are none); None for any other value (or one without tensors).
    ``parameters`` (see :func:`_parameters_of`) is None unless some items are
    ``nn.Parameter``s, which travel as their data."""
    import torch

    kind = type(value)
    keys = None
    if kind is torch.Tensor or kind is torch.nn.Parameter:
        code, tensors = serializer.TENSOR, [value]
    elif kind is list:
        code, tensors = serializer.LIST, list(value)
    elif kind is tuple:
        code, tensors = serializer.TUPLE, list(value)
    elif kind is dict:
        keys = list(value)
        if torch.Tensor in set(map(type, keys)):
            return None
        code, tensors = serializer.DICT, list(value.values())
    else:
        return None
    if not tensors:
        return None
    # map() over builtins: a model's 100,000 tensors are checked in C.
    types = set(map(type, tensors))
    if not _ffi.list_distinct(tensors):
        return None  # pickling meets a tensor given twice only once
    if types == {torch.Tensor}:
        return code, keys, tensors, None
    if types <= {torch.Tensor, torch.nn.Parameter}:
        found = _parameters_of(tensors)
        if found is not None:
            return (code, keys) + found
    return None


def _parameters_of(tensors: List[Any]) -> Optional[Tuple[List[Any], bytes]]:
    """A list of tensors and ``nn.Parameter``s as ``(the list with each
    Parameter's data in its place, one byte per item: 0 a tensor, 1 a
    Parameter, 2 a Parameter that requires grad)``, from which
    :func:`~ray_rdt.serializer.rebuild_value` makes the Parameters again, as
    unpickling one does (``torch._utils._rebuild_parameter``). None when a
    Parameter carries more than its data and ``requires_grad`` (attributes of
    its own, or backward hooks, which a pickle warns about): Ray's two passes
    then keep what pickling keeps."""
    import torch

    parameter = torch.nn.Parameter
    params = [t for t in tensors if type(t) is parameter]
    if any(map(vars, params)) or any(p._backward_hooks for p in params):
        return None
    flags = bytes(0 if type(t) is not parameter else 2 if t.requires_grad else 1 for t in tensors)
    return [t.detach() if f else t for t, f in zip(tensors, flags)], flags


def serialize_in_one_pass(serialization_context, value: Any, transport: str, for_put: bool):
    """Task return or ``ray.put`` of a value that is a tensor, or a list,
    tuple or dict of distinct tensors: stores the tensors in the plugin and
    serializes, in their place, one small :class:`~ray_rdt.serializer.PluginValue`
    that rebuilds the value from the fetched tensors (whatever their number:
    no per-tensor pickling on either side). Returns ``(serialized value,
    tensors)`` as Ray's ``serialize_rdt_objects`` does, or None for Ray's two
    passes (any other value)."""
    shape = _shape_of(value)
    if shape is None:
        return None
    kind, keys, tensors, parameters = shape
    key, record = _store(tensors, transport, for_put)
    placeholder = (key, record, "put") if for_put else (key, record)
    try:
        serialized = serialization_context._serialize_to_msgpack(
            serializer.PluginValue(kind, keys, placeholder, parameters)
        )
    except BaseException:
        process.get_context().free(key)
        raise
    _tls.pending = _PendingPut(key, record, tensors, transport)
    return serialized, tensors


def _store(tensors: List[Any], transport: str, for_put: bool) -> Tuple[bytes, bytes]:
    """Stores ``tensors`` in the plugin; returns ``(plugin key, record)``: the
    key is the task's return ID, or a fresh one for a ``ray.put``."""
    facts = registered(transport)
    _drop_pending()
    ctx = process.get_context()
    key = os.urandom(OBJECT_ID_SIZE) if for_put else return_object_id()
    group = None
    if not facts.one_sided:
        group = groups.local_group(transport)
        if group is None:
            raise ValueError(
                f"This actor is not in a {transport} collective group; create one with "
                "ray.experimental.collective.create_collective_group before returning "
                f'tensors with tensor_transport="{transport.lower()}".'
            )
    if stock_path.takes(facts.name, tensors):
        return key, stock_path.put(key.hex(), tensors, facts.name)
    if facts.name == "NIXL":
        from ray_rdt import nixl_pool

        tensors = nixl_pool.pooled(key.hex(), tensors)
    try:
        record = ctx.put(key, facts.code, tensors, group)
    except _ffi.RdtError as e:
        if e.status != _ffi.ERR_ALREADY_EXISTS:
            raise
        # A retry of a task whose earlier reply was lost: this attempt's tensors
        # replace the earlier attempt's (consumers fetch by the record Ray keeps).
        ctx.free(key)
        record = ctx.put(key, facts.code, tensors, group)
    return key, record


def _store_and_serialize(serialization_context, value: Any, tensors: List[Any], transport: str, for_put: bool):
    """Stores ``tensors`` in the plugin, then serializes ``value`` with the
    placeholders; the serialized value, None (a ``ray.put`` without tensors),
    or raises when pickling met other tensors than given (nothing is left
    stored then)."""
    if for_put and not tensors:
        _drop_pending()
        return None  # ray.put of a value without tensors is no RDT object (stock)
    key, record = _store(tensors, transport, for_put)
    ctx = process.get_context()
    tl = serialization_context._thread_local
    tl.use_external_transport = True
    tl.rdt_tensors = []
    # A put's placeholders say so: its ObjectRef ID is only assigned after the
    # value is stored, so errors name the object by its put (see consumer.fetch).
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
    if len(again) != len(tensors) or not all(map(_same_tensor, again, tensors)):
        ctx.free(key)
        raise RuntimeError("ray_rdt: the value's tensors changed between two serialization passes")
    _tls.pending = _PendingPut(key, record, tensors, transport)
    return serialized


def _same_tensor(a, b) -> bool:
    """Whether two passes met the same tensor: the same object, or the same
    memory described alike (an ``nn.Parameter`` pickles ``self.data``, a new
    tensor object over its memory at every pass)."""
    return a is b or (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
        and a.device == b.device
    )


def _metadata(pending: _PendingPut) -> PluginTransportMetadata:
    device = pending.tensors[0].device.type if pending.tensors else None
    if stock_path.is_record(pending.record):
        tensor_meta = stock_path.metadata(pending.record)[1].tensor_meta
    else:
        tensor_meta = RecordTensorMeta(pending.record)
    return PluginTransportMetadata(
        tensor_meta=tensor_meta,
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
    """Task return, after serialization: the pickled transport metadata for the
    owner (the standard pickle: the dataclass is importable, and cloudpickle's
    pure-Python pickler costs about 100 us more per object)."""
    import pickle

    pending = _take_pending(tensors)
    if pending is None:
        raise RuntimeError(f"ray_rdt: no plugin object was stored for the return value {obj_id}")
    if pending.key.hex() != obj_id:
        # Should not happen (see return_object_id); stay consistent regardless.
        logger.warning("ray_rdt: return ID %s differs from the plugin key %s", obj_id, pending.key.hex())
        ray._private.worker.global_worker.rdt_manager.rdt_store.add_alias(obj_id, pending.key.hex())
    return pickle.dumps(_metadata(pending), protocol=pickle.HIGHEST_PROTOCOL)


def claim_pending_put(obj_id: str, tensors: List[Any], transport: str, store) -> Optional[Any]:
    """``ray.put``: binds the plugin object stored during serialization to its ref."""
    pending = _take_pending(tensors)
    if pending is None:
        return None
    if stock_path.is_record(pending.record):
        stock_path.rename(pending.key.hex(), obj_id)
    else:
        store.add_alias(obj_id, pending.key.hex())
    return _metadata(pending)
