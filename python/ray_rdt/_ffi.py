"""ctypes bindings for the plugin's C ABI (``include/ray_rdt.h``).

Only declarations and error translation live here: every function returns an
``rdt_status``; a non-zero status becomes an :class:`RdtError` carrying the
plugin's ``rdt_last_error()`` text. Functions are loaded with ``ctypes.CDLL`` so
blocking calls release the GIL; the few in ``_KEEP_GIL`` keep it.
"""

import contextlib
import ctypes
import struct
import os
import sys
import threading
from pathlib import Path
from typing import Optional

ABI_MAJOR = 2
# The binding needs the functions and codes of this minor version (2.0: one
# handle family, the context; rdt_context_record_get; 2.2: RDT_PATH_NODE_COPY;
# 2.3: the capsule helpers; 2.4: rdt_shared_memory_new; 2.5: the DLPack
# exchange API helpers; 2.6: rdt_tensors_view, rdt_list_distinct).
ABI_MINOR = 6

# rdt_transport codes (RDT_TRANSPORT_* in ray_rdt.h).
TRANSPORT_GLOO = 0
TRANSPORT_NCCL = 1
TRANSPORT_NIXL = 2
TRANSPORT_CUDA_IPC = 3
TRANSPORT_SHM = 4

# Every transport code, in order.
TRANSPORTS = (TRANSPORT_GLOO, TRANSPORT_NCCL, TRANSPORT_NIXL, TRANSPORT_CUDA_IPC, TRANSPORT_SHM)

# rdt_status codes the binding tells apart (RDT_ERR_* in ray_rdt.h; the names
# come from the library: status_name).
OK = 0
ERR_INVALID_ARGUMENT = 2
ERR_NOT_FOUND = 3
ERR_ALREADY_EXISTS = 4
ERR_TIMEOUT = 5
ERR_MALFORMED_METADATA = 6
ERR_UNSUPPORTED = 7
ERR_TRANSPORT = 8
ERR_UNAVAILABLE = 10
ERR_BUFFER_TOO_SMALL = 11
ERR_IO = 12
ERR_AUTH_REFUSED = 14
ERR_PEER_GONE = 15

# "No limit" for timeout_ms arguments.
NO_TIMEOUT_MS = 2**64 - 1


class RdtError(RuntimeError):
    """A C ABI call of the plugin failed."""

    def __init__(self, status: int, message: str, call: str = ""):
        self.status = status
        self.status_name = status_name(status)
        self.message = message
        self.call = call
        text = f"{message} ({self.status_name}"
        text += f" from {call})" if call else ")"
        super().__init__(text)

    def __reduce__(self):
        # Picklable, so that Ray can ship it inside a RayTaskError to the caller
        # (the default reduction would call __init__ with the formatted text only).
        return (self.__class__, (self.status, self.message, self.call))


class RdtTimeoutError(RdtError, TimeoutError):
    """A blocking plugin call ran past its timeout."""


class RdtNotFoundError(RdtError, KeyError):
    """The object, group or peer is not known to the plugin."""

    __str__ = RuntimeError.__str__


class RdtTransportError(RdtError):
    """The transport failed: a peer died, a connection broke, a library erred."""


class RdtAuthRefusedError(RdtError, PermissionError):
    """A peer plugin refused us, or we refused it: wrong or missing proof of
    Ray's cluster token, or (same host) another user's process."""


class RdtPeerGoneError(RdtTransportError):
    """The peer process is gone: nothing listens at its plugin endpoint."""


class PluginUnavailableError(ImportError):
    """libray_rdt.so could not be found or loaded."""


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class TensorDesc(ctypes.Structure):
    """``rdt_tensor_desc``: one tensor of a decoded record."""

    _fields_ = [
        ("dtype", DLDataType),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("nbytes", ctypes.c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    pass


DLManagedTensor._fields_ = [
    ("dl_tensor", DLTensor),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))),
]


class TransportStats(ctypes.Structure):
    _fields_ = [
        ("bytes_sent", ctypes.c_uint64),
        ("bytes_received", ctypes.c_uint64),
        ("transfers", ctypes.c_uint64),
        ("errors", ctypes.c_uint64),
    ]


# Paths an object can take (rdt_path), by the name ray_rdt.stats() uses.
# rdt_path codes (RDT_PATH_* in ray_rdt.h; the names come from the library).
PATHS = (0, 1, 2, 3)
# Buckets of the fetch-latency histogram (RDT_LATENCY_BUCKETS).
LATENCY_BUCKETS = 16


class PathStats(ctypes.Structure):
    """``rdt_path_stats``."""

    _fields_ = [
        ("bytes_sent", ctypes.c_uint64),
        ("bytes_received", ctypes.c_uint64),
        ("transfers", ctypes.c_uint64),
        ("errors", ctypes.c_uint64),
        ("latency", ctypes.c_uint64 * LATENCY_BUCKETS),
        ("latency_sum_us", ctypes.c_uint64),
    ]


class NixlStats(ctypes.Structure):
    """``rdt_nixl_stats``."""

    _fields_ = [
        ("exported_ranges", ctypes.c_uint64),
        ("exported_refs", ctypes.c_uint64),
        ("received", ctypes.c_uint64),
        ("loaded_peers", ctypes.c_uint64),
        ("loaded_ranges", ctypes.c_uint64),
    ]


class EndpointStats(ctypes.Structure):
    """``rdt_endpoint_stats``."""

    _fields_ = [
        ("fetches_served", ctypes.c_uint64),
        ("free_requests", ctypes.c_uint64),
        ("objects_freed", ctypes.c_uint64),
    ]


class ConcurrencyStats(ctypes.Structure):
    """``rdt_concurrency_stats``."""

    _fields_ = [
        ("fetching", ctypes.c_uint64),
        ("fetching_peak", ctypes.c_uint64),
        ("serving", ctypes.c_uint64),
        ("serving_peak", ctypes.c_uint64),
    ]


class Buffer(ctypes.Structure):
    _fields_ = [("data", ctypes.POINTER(ctypes.c_uint8)), ("len", ctypes.c_size_t)]


class ContextConfig(ctypes.Structure):
    """``rdt_context_config``."""

    _fields_ = [
        ("node_id", ctypes.c_char_p),
        ("node_id_len", ctypes.c_size_t),
        ("actor_id", ctypes.c_char_p),
        ("actor_id_len", ctypes.c_size_t),
        ("node_ip", ctypes.c_char_p),
        ("auth_token", ctypes.c_char_p),
        ("auth_token_len", ctypes.c_size_t),
    ]


class GroupFailure(ctypes.Structure):
    """``rdt_group_failure``."""

    _fields_ = [
        ("transport", ctypes.c_uint32),
        ("group", Buffer),
        ("object_id", ctypes.c_uint8 * 28),
        ("src_rank", ctypes.c_uint32),
        ("dst_rank", ctypes.c_uint32),
        ("reporter_rank", ctypes.c_uint32),
        ("cause", Buffer),
    ]


_c_void_p = ctypes.c_void_p
_c_u8p = ctypes.c_char_p  # const uint8_t* taking Python bytes
_status = ctypes.c_uint32

# The arguments of rdt_context_put and rdt_context_put_versioned (the tensor
# pointers as void*).
_PUT_ARGS = [
    _c_void_p,
    _c_u8p,
    ctypes.c_uint32,
    ctypes.c_char_p,
    ctypes.POINTER(_c_void_p),
    ctypes.c_size_t,
    ctypes.POINTER(Buffer),
]

# name: (restype, argtypes)
_SIGNATURES = {
    "rdt_abi_version": (ctypes.c_uint32, []),
    "rdt_status_name": (ctypes.c_char_p, [ctypes.c_uint32]),
    "rdt_transport_name": (ctypes.c_char_p, [ctypes.c_uint32]),
    "rdt_path_name": (ctypes.c_char_p, [ctypes.c_uint32]),
    "rdt_last_error": (ctypes.c_char_p, []),
    "rdt_stats_get": (_status, [ctypes.c_uint32, ctypes.POINTER(TransportStats)]),
    "rdt_stats_path_get": (_status, [ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(PathStats)]),
    "rdt_stats_latency_bound_us": (ctypes.c_uint64, [ctypes.c_size_t]),
    "rdt_stats_endpoint_get": (_status, [ctypes.POINTER(EndpointStats)]),
    "rdt_stats_nixl_get": (_status, [ctypes.POINTER(NixlStats)]),
    "rdt_stats_concurrency_get": (_status, [ctypes.POINTER(ConcurrencyStats)]),
    "rdt_buffer_free": (None, [ctypes.POINTER(Buffer)]),
    "rdt_context_new": (
        _status,
        [_c_u8p, ctypes.c_size_t, _c_u8p, ctypes.c_size_t, ctypes.POINTER(_c_void_p)],
    ),
    "rdt_context_create": (_status, [ctypes.POINTER(ContextConfig), ctypes.POINTER(_c_void_p)]),
    "rdt_context_destroy": (None, [_c_void_p]),
    "rdt_context_endpoint": (_status, [_c_void_p, ctypes.POINTER(Buffer)]),
    "rdt_context_tcp_endpoint": (_status, [_c_void_p, ctypes.POINTER(Buffer)]),
    "rdt_context_authenticated": (_status, [_c_void_p, ctypes.POINTER(ctypes.c_bool)]),
    "rdt_context_put": (_status, _PUT_ARGS),
    "rdt_context_put_versioned": (_status, _PUT_ARGS),
    # DLPack's C exchange API in bulk (src/ffi/exchange.rs; called with the GIL held).
    "rdt_tensors_export": (
        _status,
        [
            ctypes.py_object,
            ctypes.py_object,
            ctypes.py_object,
            ctypes.POINTER(_c_void_p),
            ctypes.POINTER(_c_void_p),
            ctypes.c_size_t,
        ],
    ),
    "rdt_tensors_view": (
        _status,
        [
            ctypes.py_object,
            ctypes.py_object,
            ctypes.py_object,
            ctypes.POINTER(DLTensor),
            ctypes.POINTER(_c_void_p),
            ctypes.c_size_t,
        ],
    ),
    "rdt_tensors_release": (_status, [ctypes.POINTER(_c_void_p), ctypes.c_size_t]),
    # A Python list's items distinct (src/ffi/list.rs; called with the GIL held).
    "rdt_list_distinct": (_status, [ctypes.py_object, ctypes.c_size_t, ctypes.POINTER(ctypes.c_bool)]),
    # DLPack capsules in bulk (src/ffi/capsule.rs; called with the GIL held).
    "rdt_capsules_pointers": (_status, [ctypes.py_object, ctypes.POINTER(_c_void_p), ctypes.c_size_t]),
    "rdt_capsules_consume": (_status, [ctypes.py_object, ctypes.c_size_t]),
    "rdt_capsules_new": (_status, [ctypes.POINTER(_c_void_p), ctypes.c_size_t, ctypes.py_object]),
    # Shared host memory read in place (src/ffi/shared_memory.rs).
    "rdt_shared_memory_new": (_status, [ctypes.c_size_t, ctypes.POINTER(_c_void_p)]),
    "rdt_context_fetch": (
        _status,
        [
            _c_void_p,
            _c_u8p,
            _c_u8p,
            ctypes.c_size_t,
            ctypes.c_uint64,
            ctypes.POINTER(_c_void_p),
            ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_size_t),
        ],
    ),
    "rdt_context_fetch_into": (
        _status,
        [
            _c_void_p,
            _c_u8p,
            _c_u8p,
            ctypes.c_size_t,
            ctypes.POINTER(_c_void_p),
            ctypes.c_size_t,
            ctypes.c_uint64,
        ],
    ),
    "rdt_context_free": (_status, [_c_void_p, _c_u8p, ctypes.POINTER(ctypes.c_bool)]),
    "rdt_context_contains": (_status, [_c_void_p, _c_u8p, ctypes.POINTER(ctypes.c_bool)]),
    "rdt_context_get": (
        _status,
        [_c_void_p, _c_u8p, ctypes.POINTER(_c_void_p), ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)],
    ),
    "rdt_context_record_get": (_status, [_c_void_p, _c_u8p, ctypes.POINTER(Buffer)]),
    "rdt_context_free_remote": (_status, [_c_void_p, _c_u8p, _c_u8p, ctypes.c_size_t]),
    "rdt_context_flush_frees": (_status, [_c_void_p, ctypes.c_uint64, ctypes.POINTER(ctypes.c_bool)]),
    "rdt_context_wait_tensor_freed": (_status, [_c_void_p, _c_void_p, ctypes.c_uint64]),
    "rdt_context_counts": (
        _status,
        [_c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_uint64)],
    ),
    "rdt_rendezvous_serve": (_status, [_c_void_p, ctypes.c_char_p, ctypes.POINTER(Buffer)]),
    "rdt_group_create": (
        _status,
        [
            _c_void_p,
            ctypes.c_char_p,
            ctypes.c_uint32,
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.c_char_p,
            ctypes.c_uint64,
        ],
    ),
    "rdt_group_create_owned": (
        _status,
        [
            _c_void_p,
            ctypes.c_char_p,
            ctypes.c_uint32,
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.c_char_p,
            _c_u8p,
            ctypes.c_size_t,
            ctypes.c_uint64,
        ],
    ),
    "rdt_context_contact": (_status, [_c_void_p, ctypes.POINTER(Buffer)]),
    "rdt_context_next_group_failure": (
        _status,
        [_c_void_p, ctypes.c_uint64, ctypes.POINTER(GroupFailure), ctypes.POINTER(ctypes.c_bool)],
    ),
    "rdt_group_failure_free": (None, [ctypes.POINTER(GroupFailure)]),
    "rdt_metadata_producer": (_status, [_c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(Buffer)]),
    "rdt_group_destroy": (_status, [_c_void_p, ctypes.c_char_p]),
    "rdt_cuda_set_current": (_status, [ctypes.c_int32, ctypes.c_uint64]),
    "rdt_library_search_prefix": (_status, [ctypes.c_char_p]),
    "rdt_cuda_libraries": (_status, [ctypes.POINTER(Buffer)]),
    "rdt_metadata_decode": (_status, [_c_u8p, ctypes.c_size_t, ctypes.POINTER(_c_void_p)]),
    "rdt_metadata_destroy": (None, [_c_void_p]),
    "rdt_metadata_tensor": (_status, [_c_void_p, ctypes.c_size_t, ctypes.POINTER(TensorDesc)]),
    "rdt_metadata_extents": (
        _status,
        [_c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_uint64)],
    ),
    "rdt_metadata_place": (
        _status,
        [_c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint64)],
    ),
    "rdt_metadata_summary": (
        _status,
        [
            _c_void_p,
            ctypes.POINTER(ctypes.c_uint32),
            ctypes.POINTER(DLDevice),
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.POINTER(ctypes.c_uint64),
        ],
    ),
}

# Functions called with the GIL held (bound through ``ctypes.PyDLL``). Each
# returns at once: it takes only the plugin's short internal locks, which no
# holder keeps while it waits for Python (the store drops tensors, whose
# deleters may need the GIL, after releasing its lock), and it never waits on
# another thread. Releasing and retaking the GIL around them cost more than the
# call: the owner frees objects on Ray's core-worker thread, which had to
# wait for the GIL to come back (150 us of wall time per free, measured).
# The capsule and exchange helpers call the CPython API, so they need the GIL
# (releasing exported tensors runs torch's deleters, which take no lock).
_KEEP_GIL = (
    "rdt_context_free_remote",
    "rdt_context_free",
    "rdt_context_contains",
    "rdt_capsules_pointers",
    "rdt_capsules_consume",
    "rdt_capsules_new",
    "rdt_tensors_export",
    "rdt_tensors_view",
    "rdt_tensors_release",
    "rdt_list_distinct",
)

_lib = None
_lib_path: Optional[str] = None
_lib_lock = threading.Lock()


def candidate_paths():
    """Where the library is looked for, in order: ``$RAY_RDT_LIB``; else the copy
    bundled in the package (``pip install``); in a source checkout (an editable
    install) the fresh ``cargo build --release`` output comes before that copy,
    which only the last install refreshed."""
    env = os.environ.get("RAY_RDT_LIB")
    if env:
        return [Path(env)]
    here = Path(__file__).resolve().parent
    bundled = here / "libray_rdt.so"
    source_tree = here.parent.parent
    if (source_tree / "Cargo.toml").is_file():
        return [source_tree / "target" / "release" / "libray_rdt.so", bundled]
    return [bundled]


def find_library() -> Path:
    for path in candidate_paths():
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidate_paths())
    raise PluginUnavailableError(
        f"libray_rdt.so not found (tried: {tried}). Build it with `cargo build --release`, "
        "point RAY_RDT_LIB at it, or set RAY_RDT_PLUGIN=0 for stock Ray behaviour."
    )


def lib():
    """The loaded plugin library (loaded and version-checked once per process)."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        path = find_library()
        try:
            handle = ctypes.CDLL(str(path))
        except OSError as e:
            raise PluginUnavailableError(f"cannot load {path}: {e}") from e
        # The version first: an older library lacks functions declared below.
        handle.rdt_abi_version.restype = ctypes.c_uint32
        version = handle.rdt_abi_version()
        if version >> 16 != ABI_MAJOR or version & 0xFFFF < ABI_MINOR:
            raise PluginUnavailableError(
                f"{path} implements C ABI {version >> 16}.{version & 0xFFFF}; "
                f"this ray_rdt binding needs {ABI_MAJOR}.{ABI_MINOR} or a later {ABI_MAJOR}.x"
            )
        holding_gil = ctypes.PyDLL(str(path))
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(holding_gil if name in _KEEP_GIL else handle, name)
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(handle, name, fn)
        # Where the plugin looks for the libraries it loads at run time (NIXL,
        # the CUDA runtime, NCCL): this interpreter's site-packages too.
        handle.rdt_library_search_prefix(sys.prefix.encode("utf-8"))
        _lib_path = str(path)
        _lib = handle
        return _lib


def library_path() -> Optional[str]:
    return _lib_path


def last_error() -> str:
    msg = lib().rdt_last_error()
    return msg.decode("utf-8", "replace") if msg else ""


def check(status: int, call: str = ""):
    """Raises the error a non-zero ``rdt_status`` stands for."""
    if status == OK:
        return
    message = last_error() or "unknown error"
    cls = {
        ERR_TIMEOUT: RdtTimeoutError,
        ERR_NOT_FOUND: RdtNotFoundError,
        ERR_TRANSPORT: RdtTransportError,
        ERR_AUTH_REFUSED: RdtAuthRefusedError,
        ERR_PEER_GONE: RdtPeerGoneError,
    }.get(status, RdtError)
    raise cls(status, message, call)


def take_buffer(buf: Buffer) -> bytes:
    """Copies a plugin-owned buffer into bytes and frees it."""
    try:
        if not buf.data or buf.len == 0:
            return b""
        return ctypes.string_at(buf.data, buf.len)
    finally:
        lib().rdt_buffer_free(ctypes.byref(buf))


def list_distinct(items: list) -> bool:
    """Whether no object appears twice in the list ``items`` (one plugin
    call: a sort of the items' addresses)."""
    out = ctypes.c_bool(False)
    check(lib().rdt_list_distinct(items, len(items), ctypes.byref(out)), "rdt_list_distinct")
    return out.value


def status_name(status: int) -> str:
    """The C ABI's name of ``status`` (``"RDT_ERR_TIMEOUT"``), from the library;
    ``"status N"`` for a value it does not know or when it cannot be loaded."""
    try:
        name = lib().rdt_status_name(status)
    except PluginUnavailableError:
        name = None
    return name.decode() if name else f"status {status}"


def transport_names() -> dict:
    """``{code: name}`` of the plugin's transports (``"gloo"``...), from the library."""
    return {code: lib().rdt_transport_name(code).decode() for code in TRANSPORTS}


def path_names() -> dict:
    """``{code: name}`` of the paths an object takes (``"same_host"``...), from the library."""
    return {code: lib().rdt_path_name(code).decode() for code in PATHS}


def timeout_ms(timeout_s: Optional[float]) -> int:
    """Seconds (None or negative: no limit) to the ABI's milliseconds."""
    if timeout_s is None or timeout_s < 0:
        return NO_TIMEOUT_MS
    return max(0, int(timeout_s * 1000))


@contextlib.contextmanager
def _decoded(record: bytes):
    """A decoded metadata record's handle, destroyed after the block."""
    handle = ctypes.c_void_p()
    check(lib().rdt_metadata_decode(record, len(record), ctypes.byref(handle)), "rdt_metadata_decode")
    try:
        yield handle
    finally:
        lib().rdt_metadata_destroy(handle)


def record_producer(record: bytes):
    """(pid, Ray actor ID hex or None for a driver) of a metadata record's producer."""
    with _decoded(record) as handle:
        pid = ctypes.c_uint32()
        actor = Buffer()
        check(lib().rdt_metadata_producer(handle, ctypes.byref(pid), ctypes.byref(actor)), "rdt_metadata_producer")
        actor_id = take_buffer(actor)
        return pid.value, (actor_id.hex() if actor_id else None)


def record_tensors(record: bytes):
    """``[(shape tuple, (dtype code, bits, lanes))]`` of a metadata record's tensors."""
    with _decoded(record) as handle:
        transport, device, count, total = ctypes.c_uint32(), DLDevice(), ctypes.c_size_t(), ctypes.c_uint64()
        check(
            lib().rdt_metadata_summary(
                handle, ctypes.byref(transport), ctypes.byref(device), ctypes.byref(count), ctypes.byref(total)
            ),
            "rdt_metadata_summary",
        )
        out = []
        desc = TensorDesc()
        for i in range(count.value):
            check(lib().rdt_metadata_tensor(handle, i, ctypes.byref(desc)), "rdt_metadata_tensor")
            shape = tuple(desc.shape[d] for d in range(desc.ndim))
            out.append((shape, (desc.dtype.code, desc.dtype.bits, desc.dtype.lanes)))
        return out


def record_extents(record: bytes):
    """(number of extents, their total bytes) of a metadata record: the byte
    ranges its transfers move (views of one allocation are one)."""
    with _decoded(record) as handle:
        count, total = ctypes.c_size_t(), ctypes.c_uint64()
        check(lib().rdt_metadata_extents(handle, ctypes.byref(count), ctypes.byref(total)), "rdt_metadata_extents")
        return count.value, total.value


def _summary(record: bytes):
    """(transport code, DLDevice, number of tensors, total bytes) of a metadata record."""
    with _decoded(record) as handle:
        transport = ctypes.c_uint32()
        device = DLDevice()
        count = ctypes.c_size_t()
        total = ctypes.c_uint64()
        check(
            lib().rdt_metadata_summary(
                handle, ctypes.byref(transport), ctypes.byref(device), ctypes.byref(count), ctypes.byref(total)
            ),
            "rdt_metadata_summary",
        )
        return transport.value, device, count.value, total.value


# The record's fixed header (src/metadata.rs): magic, version, transport code,
# device type and id, at fixed offsets.
_MAGIC = b"RDTM"
_RECORD_VERSION = 3
_HEADER = struct.Struct("<4sHBii")


def record_header(record: bytes):
    """(transport code, device type, device id) of a metadata record, read from
    its fixed header without decoding the rest (the plugin validates the whole
    record where it is used); raises ``RdtError`` for something that is not a
    record of this version."""
    try:
        magic, version, transport, device_type, device_id = _HEADER.unpack_from(record)
    except struct.error:
        magic, version = b"", 0
    if magic != _MAGIC or version != _RECORD_VERSION:
        raise RdtError(ERR_MALFORMED_METADATA, "not an RDT metadata record of version 3")
    return transport, device_type, device_id


def record_summary(record: bytes):
    """(transport code, number of tensors, total bytes) of a metadata record."""
    transport, _, count, total = _summary(record)
    return transport, count, total


# DLPack device types (kDLCPU, kDLCUDA).
DEVICE_CPU = 1
DEVICE_CUDA = 2


def record_device(record: bytes):
    """(device type, device id) of a metadata record's tensors (``DEVICE_CPU``, ``DEVICE_CUDA``)."""
    _, device_type, device_id = record_header(record)
    return device_type, device_id


def cuda_libraries() -> dict:
    """What the plugin finds of the CUDA driver, runtime and NCCL (``rdt_cuda_libraries``)."""
    import json

    buf = Buffer()
    check(lib().rdt_cuda_libraries(ctypes.byref(buf)), "rdt_cuda_libraries")
    return json.loads(take_buffer(buf).decode("utf-8"))
