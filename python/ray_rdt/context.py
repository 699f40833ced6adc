"""The per-process plugin context (``rdt_context``): one per driver or actor.

It owns the plugin's object store, its endpoint (a same-host Unix socket, and
TCP on the node's IP for peers on other hosts, authenticated with Ray's cluster
token when Ray's token authentication is on) and its transports. This module
only converts arguments; bookkeeping and bytes live in the plugin.
"""

import ctypes
import os
import sys
import threading
import weakref
from typing import TYPE_CHECKING, List, Optional, Sequence

from ray_rdt import _ffi, dlpack

if TYPE_CHECKING:
    import torch

OBJECT_ID_SIZE = 28


def _object_id_bytes(object_id) -> bytes:
    """A 28-byte binary ObjectID from bytes, a hex string or an ObjectRef."""
    if isinstance(object_id, (bytes, bytearray)):
        raw = bytes(object_id)
    elif isinstance(object_id, str):
        raw = bytes.fromhex(object_id)
    else:
        raw = object_id.binary()
    if len(raw) != OBJECT_ID_SIZE:
        raise ValueError(f"an ObjectID has {OBJECT_ID_SIZE} bytes, got {len(raw)}")
    return raw


def _cstr(s: Optional[str]) -> Optional[bytes]:
    return None if s is None else s.encode("utf-8")


class Context:
    """A plugin context. Prefer :func:`get_context` (one per process)."""

    def __init__(
        self,
        node_id: bytes = b"",
        actor_id: bytes = b"",
        node_ip: Optional[str] = None,
        auth_token: Optional[bytes] = None,
    ):
        """``node_ip``: the node's IP as Ray knows it (the TCP endpoint binds it;
        None: same-host endpoint only). ``auth_token``: Ray's cluster token, which
        peers on other hosts must prove (None: authentication off)."""
        lib = _ffi.lib()
        handle = ctypes.c_void_p()
        token = auth_token or b""
        config = _ffi.ContextConfig(
            node_id, len(node_id), actor_id, len(actor_id), _cstr(node_ip), token or None, len(token)
        )
        _ffi.check(lib.rdt_context_create(ctypes.byref(config), ctypes.byref(handle)), "rdt_context_create")
        self._lib = lib
        self._handle = handle
        self._watcher = None
        self._pid = os.getpid()
        # The Ray connection get_context last checked this context against
        # (a weak reference to Ray's Node object; see _ray_connection).
        self._connection = lambda: None
        self.node_id = node_id
        self.actor_id = actor_id
        #: Same-host endpoint (``unix:@...``).
        self.endpoint = self._address(lib.rdt_context_endpoint, "rdt_context_endpoint")
        #: Endpoint for other hosts (``tcp:IP:PORT``), or None.
        self.tcp_endpoint = self._address(lib.rdt_context_tcp_endpoint, "rdt_context_tcp_endpoint") or None
        flag = ctypes.c_bool(False)
        _ffi.check(lib.rdt_context_authenticated(handle, ctypes.byref(flag)), "rdt_context_authenticated")
        #: Whether peers on other hosts must prove Ray's cluster token.
        self.authenticated = bool(flag.value)

    def _bytes(self, fn, name: str) -> bytes:
        buf = _ffi.Buffer()
        _ffi.check(fn(self._handle, ctypes.byref(buf)), name)
        return _ffi.take_buffer(buf)

    def _address(self, fn, name: str) -> str:
        return self._bytes(fn, name).decode("utf-8")

    def close(self):
        """Destroys the context (after stopping its group-failure watcher, which
        must not be inside a call on it then)."""
        self.stop_group_watcher()
        if self._handle:
            self._lib.rdt_context_destroy(self._handle)
            self._handle = ctypes.c_void_p()

    def watch_group_failures(self, handle_all) -> None:
        """Starts (once) a thread that calls ``handle_all(stopping=event)`` five
        times a second to take the failed transfers reported by members of
        groups this process owns (see :meth:`next_group_failure`: the local
        queue, no Ray call); ``event`` is set when the thread must end, and
        ``handle_all`` returns soon after. :meth:`stop_group_watcher` and
        :meth:`close` stop it."""
        if self._watcher is not None:
            return
        stop = threading.Event()

        def loop():
            while not stop.wait(0.2):
                handle_all(stopping=stop)

        thread = threading.Thread(target=loop, name="ray-rdt-group-failures", daemon=True)
        self._watcher = (stop, thread)
        thread.start()

    def stop_group_watcher(self, timeout_s: float = 5.0) -> None:
        """Stops the thread :meth:`watch_group_failures` started, waiting up to
        ``timeout_s`` for it to end. Ray's shutdown calls this before it
        disconnects: the thread waits on Ray tasks while it handles a failure,
        and a thread still inside Ray when the core worker is destroyed crashes
        the process at exit."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher[0].set()
            if watcher[1] is not threading.current_thread():
                watcher[1].join(timeout=timeout_s)

    # -- objects --------------------------------------------------------------

    def put(self, object_id, transport: int, tensors: Sequence["torch.Tensor"], group: Optional[str] = None) -> bytes:
        """Stores ``tensors`` as the primary copy of ``object_id``; returns the metadata record.

        CUDA tensors: the plugin orders its sends or copies after the work queued
        so far on torch's current stream of their device (or the stream set with
        :func:`set_put_stream` for this transport)."""
        oid = _object_id_bytes(object_id)
        if tensors and getattr(tensors[0], "is_cuda", False):
            device = tensors[0].device.index
            tell_cuda_current(device, _put_streams.get(transport))
        exported = dlpack.Exported(tensors)
        put = self._lib.rdt_context_put_versioned if exported.versioned else self._lib.rdt_context_put
        buf = _ffi.Buffer()
        status = put(self._handle, oid, transport, _cstr(group), exported.array, exported.count, ctypes.byref(buf))
        if status != _ffi.OK:
            exported.release()  # on an error the tensors stay with the caller
        _ffi.check(status, "rdt_context_put")
        exported.commit()
        return _ffi.take_buffer(buf)

    def fetch(self, object_id, record: bytes, timeout_s: Optional[float] = None) -> List["torch.Tensor"]:
        """The tensors a metadata record describes: views when this process produced
        them, else received directly from the producer's plugin."""
        oid = _object_id_bytes(object_id)
        if _cuda_possible() and _ffi.record_device(record)[0] == _ffi.DEVICE_CUDA:
            # Received on torch's current device, ready for its current stream.
            tell_cuda_current()
        return self._tensors_out(
            lambda out, capacity, count: self._lib.rdt_context_fetch(
                self._handle, oid, record, len(record), _ffi.timeout_ms(timeout_s), out, capacity, count
            ),
            "rdt_context_fetch",
        )

    def fetch_into(self, object_id, record: bytes, targets: Sequence["torch.Tensor"], timeout_s: Optional[float] = None):
        """Fetches the object a metadata record describes straight into
        ``targets`` (CPU tensors, checked against the record before any byte
        moves: ``RdtError`` with ``ERR_INVALID_ARGUMENT`` naming the index)."""
        oid = _object_id_bytes(object_id)
        # Borrowed for the call: described in place (or exported), ended after it.
        borrowed = dlpack.Borrowed(targets)
        try:
            status = self._lib.rdt_context_fetch_into(
                self._handle, oid, record, len(record), borrowed.views, borrowed.count, _ffi.timeout_ms(timeout_s)
            )
        finally:
            borrowed.release()
        _ffi.check(status, "rdt_context_fetch_into")

    def get(self, object_id) -> List["torch.Tensor"]:
        """Views of the tensors of an object this process holds (raises
        ``RdtNotFoundError`` when it holds none)."""
        oid = _object_id_bytes(object_id)
        return self._tensors_out(
            lambda out, capacity, count: self._lib.rdt_context_get(self._handle, oid, out, capacity, count),
            "rdt_context_get",
        )

    def record(self, object_id) -> bytes:
        """The metadata record of an object this process holds (what :meth:`put`
        returned for it; raises ``RdtNotFoundError`` when it holds none)."""
        buf = _ffi.Buffer()
        _ffi.check(
            self._lib.rdt_context_record_get(self._handle, _object_id_bytes(object_id), ctypes.byref(buf)),
            "rdt_context_record_get",
        )
        return _ffi.take_buffer(buf)

    def contains(self, object_id) -> bool:
        """Whether this process holds the object (a primary copy it produced)."""
        held = ctypes.c_bool(False)
        _ffi.check(
            self._lib.rdt_context_contains(self._handle, _object_id_bytes(object_id), ctypes.byref(held)),
            "rdt_context_contains",
        )
        return bool(held.value)

    @staticmethod
    def _tensors_out(call, name: str) -> List["torch.Tensor"]:
        """Runs a call that writes DLPack tensors to an output array, growing
        the array when the call says it is too small."""
        capacity = 8
        while True:
            out = (ctypes.c_void_p * capacity)()
            count = ctypes.c_size_t(0)
            status = call(out, capacity, ctypes.byref(count))
            if status == _ffi.ERR_BUFFER_TOO_SMALL and count.value > capacity:
                capacity = count.value
                continue
            _ffi.check(status, name)
            return dlpack.adopt(out, count.value)

    def free(self, object_id) -> bool:
        """Frees the primary copy of ``object_id``; returns whether it was held."""
        found = ctypes.c_bool(False)
        _ffi.check(
            self._lib.rdt_context_free(self._handle, _object_id_bytes(object_id), ctypes.byref(found)),
            "rdt_context_free",
        )
        return bool(found.value)

    def free_remote(self, object_id, record: bytes):
        """The owner's free of an object whose metadata record is ``record``:
        sent to the producer's plugin in the background, batched (no Ray task)."""
        _ffi.check(
            self._lib.rdt_context_free_remote(self._handle, _object_id_bytes(object_id), record, len(record)),
            "rdt_context_free_remote",
        )

    def flush_frees(self, timeout_s: Optional[float] = None) -> bool:
        """Waits until every queued remote free was sent; returns whether they all were."""
        flushed = ctypes.c_bool(False)
        _ffi.check(
            self._lib.rdt_context_flush_frees(self._handle, _ffi.timeout_ms(timeout_s), ctypes.byref(flushed)),
            "rdt_context_flush_frees",
        )
        return bool(flushed.value)

    def wait_tensor_freed(self, tensor, timeout_s: Optional[float] = None):
        """Waits until no stored object holds the memory of ``tensor`` (its first element)."""
        _ffi.check(
            self._lib.rdt_context_wait_tensor_freed(
                self._handle, ctypes.c_void_p(tensor.data_ptr()), _ffi.timeout_ms(timeout_s)
            ),
            "rdt_context_wait_tensor_freed",
        )

    def counts(self):
        """(number of objects, tensor bytes) held."""
        objects = ctypes.c_size_t(0)
        nbytes = ctypes.c_uint64(0)
        _ffi.check(
            self._lib.rdt_context_counts(self._handle, ctypes.byref(objects), ctypes.byref(nbytes)),
            "rdt_context_counts",
        )
        return objects.value, nbytes.value

    # -- collective groups ----------------------------------------------------

    def rendezvous_serve(self, bind_host: str) -> str:
        buf = _ffi.Buffer()
        _ffi.check(
            self._lib.rdt_rendezvous_serve(self._handle, _cstr(bind_host), ctypes.byref(buf)),
            "rdt_rendezvous_serve",
        )
        return _ffi.take_buffer(buf).decode("utf-8")

    def group_create(
        self,
        name: str,
        backend: int,
        rank: int,
        world_size: int,
        address: str,
        timeout_s: Optional[float],
        owner_contact: bytes = b"",
    ):
        """Joins collective group ``name``; failed transfers are reported to the
        owner whose :meth:`contact` is ``owner_contact`` (empty: nobody)."""
        if backend == _ffi.TRANSPORT_NCCL and _cuda_possible():
            tell_cuda_current()  # the communicator lives on torch's current device
        _ffi.check(
            self._lib.rdt_group_create_owned(
                self._handle,
                _cstr(name),
                backend,
                rank,
                world_size,
                _cstr(address),
                owner_contact or None,
                len(owner_contact),
                _ffi.timeout_ms(timeout_s),
            ),
            "rdt_group_create_owned",
        )

    def contact(self) -> bytes:
        """How peers reach this process's endpoint (opaque), for groups it owns."""
        return self._bytes(self._lib.rdt_context_contact, "rdt_context_contact")

    def next_group_failure(self, timeout_s: Optional[float]) -> Optional[dict]:
        """The next failed transfer a member of a group this process owns
        reported (``{"transport", "group", "object_id", "src_rank", "dst_rank",
        "reporter_rank", "cause"}``), waiting up to ``timeout_s``; None if none came."""
        if not self._handle:
            return None
        failure = _ffi.GroupFailure()
        got = ctypes.c_bool(False)
        _ffi.check(
            self._lib.rdt_context_next_group_failure(
                self._handle, _ffi.timeout_ms(timeout_s), ctypes.byref(failure), ctypes.byref(got)
            ),
            "rdt_context_next_group_failure",
        )
        if not got.value:
            return None
        try:
            return {
                "transport": _ffi.transport_names().get(failure.transport, str(failure.transport)).upper(),
                "group": ctypes.string_at(failure.group.data, failure.group.len).decode("utf-8", "replace"),
                "object_id": bytes(failure.object_id).hex(),
                "src_rank": failure.src_rank,
                "dst_rank": failure.dst_rank,
                "reporter_rank": failure.reporter_rank,
                "cause": ctypes.string_at(failure.cause.data, failure.cause.len).decode("utf-8", "replace"),
            }
        finally:
            self._lib.rdt_group_failure_free(ctypes.byref(failure))

    def group_destroy(self, name: str):
        _ffi.check(self._lib.rdt_group_destroy(self._handle, _cstr(name)), "rdt_group_destroy")


# Per transport code: a CUDA stream puts order against instead of torch's
# current stream (``ray.experimental.set_nixl_cuda_stream``).
_put_streams = {}


def set_put_stream(transport: int, stream) -> None:
    """Puts over ``transport`` order their CUDA work against ``stream`` (a
    ``torch.cuda.Stream``; None: torch's current stream, the default)."""
    if stream is None:
        _put_streams.pop(transport, None)
    else:
        _put_streams[transport] = stream


def _cuda_possible() -> bool:
    """Whether this process could hold CUDA tensors (torch imported, CUDA usable)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_available()


def tell_cuda_current(device: Optional[int] = None, stream=None) -> None:
    """Tells the plugin torch's current CUDA device (or ``device``) and its
    current stream (or ``stream``) on this thread (``rdt_cuda_set_current``),
    for the next put, fetch or NCCL group creation."""
    import torch

    if device is None:
        device = torch.cuda.current_device()
    if stream is None:
        stream = torch.cuda.current_stream(device)
    _ffi.check(_ffi.lib().rdt_cuda_set_current(device, stream.cuda_stream), "rdt_cuda_set_current")
