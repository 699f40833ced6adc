"""ray_rdt: Python binding of the Ray Direct Transport plugin (libray_rdt.so).

A thin ctypes layer over the plugin's C ABI, plus the glue a patched Ray 2.60.0
calls (:mod:`ray_rdt.ray_hooks`). Tensors cross the boundary as DLPack.

``RAY_RDT_PLUGIN=0`` (read in every process) turns the plugin off: Ray behaves
exactly like stock 2.60.0.
"""

import os

from ray_rdt._ffi import (
    PluginUnavailableError,
    RdtError,
    RdtNotFoundError,
    RdtTimeoutError,
    RdtTransportError,
    TRANSPORT_CODES,
)

__all__ = [
    "enabled",
    "stats",
    "library_path",
    "cuda_libraries",
    "RdtError",
    "RdtTimeoutError",
    "RdtNotFoundError",
    "RdtTransportError",
    "PluginUnavailableError",
]

SUPPORTED_RAY_VERSION = "2.60.0"


def enabled() -> bool:
    """Whether this process routes RDT through the plugin (``RAY_RDT_PLUGIN``, default on)."""
    return os.environ.get("RAY_RDT_PLUGIN", "1").strip().lower() not in ("0", "false", "no", "off", "")


def library_path() -> str:
    """Path of the loaded libray_rdt.so (loads it if needed)."""
    from ray_rdt import _ffi

    _ffi.lib()
    return _ffi.library_path()


def cuda_libraries() -> dict:
    """What the plugin finds of the CUDA driver, the CUDA runtime and NCCL in
    this process: ``{"driver": {...}, "runtime": {...}, "nccl": {...}}``, each
    with the ``"path"`` loaded (the driver's ``"devices"``, NCCL's
    ``"version"``) or the ``"error"`` saying what is missing. Loads them (and
    initialises the driver) if that has not happened yet."""
    from ray_rdt import _ffi

    return _ffi.cuda_libraries()


def stats() -> dict:
    """This process's plugin counters, from the C ABI (``rdt_stats_get``).

    Returns ``{transport: {"bytes_sent", "bytes_received", "transfers", "errors"}}``
    keyed by lower-case transport name ("gloo", "nccl", "nixl", "cuda_ipc",
    "shm"). The counters are per process and monotonic: diff two snapshots.
    With the plugin off (``RAY_RDT_PLUGIN=0``) and the library missing, every
    counter reads 0.
    """
    import ctypes

    from ray_rdt import _ffi

    try:
        _ffi.lib()
    except PluginUnavailableError:
        if enabled():
            raise
        zero = {"bytes_sent": 0, "bytes_received": 0, "transfers": 0, "errors": 0}
        return {name: dict(zero) for name in TRANSPORT_CODES}
    out = {}
    for name, code in TRANSPORT_CODES.items():
        s = _ffi.TransportStats()
        _ffi.check(_ffi.lib().rdt_stats_get(code, ctypes.byref(s)), "rdt_stats_get")
        out[name] = {
            "bytes_sent": s.bytes_sent,
            "bytes_received": s.bytes_received,
            "transfers": s.transfers,
            "errors": s.errors,
        }
    return out
