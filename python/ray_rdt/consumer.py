"""The consumer side: argument resolution and ``ray.get`` of plugin objects.

A fetch goes to the plugin (``rdt_context_fetch``) with the object's metadata
record: views of the same memory when this process produced it, else bytes
moved straight from the producer's plugin. A failure becomes the error Ray
users expect:

- the producer died (its plugin endpoint is gone, or Ray reports its actor
  dead): ``ActorDiedError`` naming the object, both ends and the cause;
- an object of a collective transport read as a value (``ray.get``,
  ``await``, ``ref.future()``, in a driver or an actor): the guide's
  ``ValueError`` (an argument of a task or actor outside the group gets the
  transfer error saying so);
- anything else: :class:`~ray_rdt.errors.RDTTransferError` naming the object,
  both ends and the cause (inside a ``RaySystemError`` for a task argument).
"""

import threading
from typing import Any, List, Optional

import ray

from ray_rdt import _ffi, errors, stock_path, targets
from ray_rdt import process
from ray_rdt.plugin_metadata import PluginTransportMetadata
from ray_rdt.transport_facts import is_one_sided_plugin_transport, registered

# Statuses of a failed transfer itself (peer died, connection broke, timeout).
SYSTEM_ERRORS = (_ffi.ERR_TRANSPORT, _ffi.ERR_TIMEOUT, _ffi.ERR_IO, _ffi.ERR_PEER_GONE)


def fetch_timeout_s() -> float:
    """Ray's bound on an RDT transfer (``RAY_rdt_fetch_fail_timeout_milliseconds``)."""
    from ray._private import ray_constants

    return ray_constants.RDT_FETCH_FAIL_TIMEOUT_SECONDS


def record_transport(record: bytes) -> str:
    """The transport name a metadata record names ("" if it is not a record)."""
    try:
        return _ffi.transport_names().get(_ffi.record_header(record)[0], "").upper()
    except _ffi.RdtError:
        return ""


def resolve(key, record: bytes, put: bool = False, ref=None) -> List[Any]:
    """A placeholder's object (see :func:`fetch`).

    A read of the value (a driver's, or an ``await``/``ref.future()``, whose
    callbacks resolve on a thread Ray's core worker made) of an object of a
    collective transport raises the guide's ``ValueError``, as ``ray.get``
    does; an argument resolution fetches. The record is decoded here only for
    reads (and for a fetch that failed). ``ref`` is the ObjectRef being
    resolved, whose targets (``set_target_for_ref``) the bytes land in."""
    if _is_read():
        transport = record_transport(record)
        facts = registered(transport)
        if facts is not None and not facts.one_sided:
            raise errors.read_outside_group(transport)
    return fetch(key, record, None, put=put, ref_hex=None if ref is None else ref.hex())


def _is_read() -> bool:
    """Whether this resolution reads a value rather than a task's argument: in a
    driver always; elsewhere on the threads of ``await`` and future callbacks.
    Those are threads Ray's core worker (not Python) started, running no task
    of this actor: a threaded actor's tasks also run on such threads, and are
    told apart by the actor their task ID names."""
    worker = ray._private.worker.global_worker
    if worker.mode == ray.SCRIPT_MODE:
        return True
    if not isinstance(threading.current_thread(), threading._DummyThread):
        return False
    return worker.core_worker.get_current_task_id().actor_id() != worker.actor_id


def fetch(
    key,
    record: bytes,
    transport: Optional[str] = None,
    object_ref: Optional[str] = None,
    put: bool = False,
    ref_hex: Optional[str] = None,
) -> List[Any]:
    """Fetches an object's tensors through the plugin: into the targets set
    for ``ref_hex`` (its ObjectRef, hex) when there are, which it then returns
    themselves; onto its target device when one is set.

    ``transport`` (None: the record's) and ``object_ref`` (hex) name the object
    in errors; without ``object_ref`` the plugin key does, which is the
    ObjectRef's ID for task returns and a key of its own for ``ray.put``
    objects (``put``)."""
    started = _claim(ref_hex, record)
    if started is not None:
        return started.result()
    into, device = targets.take(ref_hex) if ref_hex is not None else (None, None)
    if stock_path.is_record(record):
        key_hex = key.hex() if isinstance(key, bytes) else key
        return _on_device(stock_path.fetch(key_hex, record, into), device)
    ctx = process.get_context()
    try:
        if into is not None and _lands_in_place(record, into):
            ctx.fetch_into(key, record, into, fetch_timeout_s())
            return list(into)
        fetched = ctx.fetch(key, record, fetch_timeout_s())
    except _ffi.RdtError as e:
        if e.status == _ffi.ERR_INVALID_ARGUMENT and into is not None:
            raise errors.targets_refused(into, record, e) from None
        raise _failure(e, key, record, transport or record_transport(record), object_ref, put) from None
    if into is not None:
        return _copy_into(into, fetched)
    return _on_device(fetched, device)


def _on_device(tensors: List[Any], device: Optional[str]) -> List[Any]:
    """The tensors on the target device (``set_target_device_for_ref``), if any."""
    return tensors if device is None else [t.to(device) for t in tensors]


# The fetches started together for the ray.get running on this thread:
# {ref hex: (record, future)}.
_batch = threading.local()
_executor = None
_executor_lock = threading.Lock()
# Most fetches of one ray.get under way at once.
MAX_PARALLEL_FETCHES = 8


def prefetch(serialized_objects, object_refs, use_object_store: bool = False) -> None:
    """``ray.get`` of several plugin objects (a model sent in chunks): starts
    their fetches at once, on a small pool of threads, so that they overlap;
    :func:`fetch` then takes each one's result. Only objects whose record this
    process already knows (owned refs, and refs borrowed with their metadata)
    are started; the rest are fetched as they are deserialized."""
    _batch.fetches = None
    if use_object_store:
        return
    manager = ray._private.worker.global_worker.rdt_manager
    found = []
    for ref, (_, _, transport) in zip(object_refs, serialized_objects):
        if transport is None or not is_one_sided_plugin_transport(transport):
            continue
        ref_hex = ref.hex()
        if not manager.is_managed_object(ref_hex):
            continue
        meta = manager.get_rdt_metadata(ref_hex).tensor_transport_meta
        if isinstance(meta, PluginTransportMetadata) and meta.record:
            found.append((ref_hex, meta))
    if len(found) < 2:
        return
    pool = _pool()
    _batch.fetches = {
        ref_hex: (meta.record, pool.submit(fetch, meta.key, meta.record, None, ref_hex, False, ref_hex))
        for ref_hex, meta in found
    }


def end_prefetch() -> None:
    """Forgets the fetches :func:`prefetch` started that nobody took."""
    _batch.fetches = None


def _pool():
    global _executor
    with _executor_lock:
        if _executor is None:
            from concurrent.futures import ThreadPoolExecutor

            _executor = ThreadPoolExecutor(MAX_PARALLEL_FETCHES, thread_name_prefix="ray-rdt-fetch")
        return _executor


def _claim(ref_hex: Optional[str], record: bytes):
    """The fetch :func:`prefetch` started for ``ref_hex`` (and this record), if any."""
    fetches = getattr(_batch, "fetches", None)
    if not fetches or ref_hex is None:
        return None
    started = fetches.get(ref_hex)
    if started is None or started[0] != record:
        return None
    del fetches[ref_hex]
    return started[1]


def _lands_in_place(record: bytes, into: List[Any]) -> bool:
    """Whether the plugin lands the object straight in ``into``: CPU objects
    into CPU tensors (the plugin checks every target; CUDA objects, and
    targets on another device, are fetched, then copied, as 2.60's transports
    do)."""
    _, device_type, _ = _ffi.record_header(record)
    return device_type == _ffi.DEVICE_CPU and (not into or into[0].device.type == "cpu")


def _copy_into(into: List[Any], fetched: List[Any]) -> List[Any]:
    """Copies fetched tensors into targets after 2.60's checks (a ValueError
    before any copy)."""
    from ray.experimental.rdt.rdt_store import validate_tensor_buffers

    validate_tensor_buffers(into, [(t.shape, t.dtype) for t in fetched])
    for dst, src in zip(into, fetched):
        dst.copy_(src)
    return list(into)


def _failure(e: "_ffi.RdtError", key, record: bytes, transport: str, object_ref, put: bool) -> Exception:
    worker = ray._private.worker.global_worker
    in_actor = not worker.actor_id.is_nil()
    key_hex = key.hex() if isinstance(key, bytes) else key
    if object_ref is not None:
        what = f"ObjectRef({object_ref})"
    elif put:
        what = f"a ray.put object (plugin key {key_hex})"
    else:
        what = f"ObjectRef({key_hex})"
    try:
        pid, src_actor = _ffi.record_producer(record)
    except _ffi.RdtError:
        pid, src_actor = 0, None
    transfer = errors.describe(what, src_actor, pid, worker.actor_id.hex() if in_actor else None)
    message, cause = e.message, str(e)
    if transport.upper() == "NIXL" and e.status in SYSTEM_ERRORS:
        # Stock 2.60's words for a failed NIXL read, before the plugin's own.
        suspect = errors.nixl_source_may_have_died(key_hex)
        message, cause = f"{suspect} {message}", f"{suspect} {cause}"
    if e.status == _ffi.ERR_PEER_GONE or (e.status in SYSTEM_ERRORS and actor_dead(src_actor)):
        return errors.actor_died(transfer, cause)
    return errors.RDTTransferError(e.status, f"{transfer} failed: {message}", e.call)


def actor_dead(actor_hex: Optional[str]) -> bool:
    """Whether Ray reports actor ``actor_hex`` dead (one GCS read, on failures only)."""
    if not actor_hex:
        return False
    try:
        from ray._private import state

        return state.actors(actor_id=actor_hex).get("State") == "DEAD"
    except Exception:
        return False
