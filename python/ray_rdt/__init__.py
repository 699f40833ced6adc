"""ray_rdt: Python binding of the Ray Direct Transport plugin (libray_rdt.so).

A thin ctypes layer over the plugin's C ABI, plus the glue a patched Ray 2.60.0
calls (:mod:`ray_rdt.ray_hooks`). Tensors cross the boundary as DLPack.

``RAY_RDT_PLUGIN=0`` (read in every process) turns the plugin off: Ray behaves
exactly like stock 2.60.0.
"""

from ray_rdt._ffi import (
    PluginUnavailableError,
    RdtError,
    RdtNotFoundError,
    RdtTimeoutError,
    RdtTransportError,
)
from ray_rdt.counters import concurrency_stats, endpoint_stats, nixl_stats, stats
from ray_rdt.settings import enabled
from ray_rdt.shared_memory import share_memory_

__all__ = [
    "enabled",
    "stats",
    "endpoint_stats",
    "nixl_stats",
    "concurrency_stats",
    "library_path",
    "share_memory_",
    "cuda_libraries",
    "RdtError",
    "RdtTimeoutError",
    "RdtNotFoundError",
    "RdtTransportError",
    "PluginUnavailableError",
]

SUPPORTED_RAY_VERSION = "2.60.0"


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

