"""ray_rdt: Python binding of the Ray Direct Transport plugin (libray_rdt.so).

A thin ctypes layer over the plugin's C ABI, plus the glue a patched Ray 2.60.0
calls (:mod:`ray_rdt.ray_hooks`). Tensors cross the boundary as DLPack.

``RAY_RDT_PLUGIN=0`` (read in every process) turns the plugin off: Ray behaves
exactly like stock 2.60.0.
"""

import os

from ray_rdt import _ffi
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
    "endpoint_stats",
    "nixl_stats",
    "concurrency_stats",
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


_COUNTERS = ("bytes_sent", "bytes_received", "transfers", "errors")


def _zero_stats() -> dict:
    zero = {k: 0 for k in _COUNTERS}
    paths = {p: dict(zero, latency_us={"bounds": [], "counts": [], "sum": 0}) for p in _ffi.PATH_CODES}
    return {name: dict(zero, paths={p: dict(v) for p, v in paths.items()}) for name in TRANSPORT_CODES}


def stats() -> dict:
    """This process's plugin counters, from the C ABI.

    Returns ``{transport: {"bytes_sent", "bytes_received", "transfers", "errors",
    "paths": {path: {...the same four..., "latency_us": {"bounds", "counts", "sum"}}}}}``
    keyed by lower-case transport name ("gloo", "nccl", "nixl", "cuda_ipc", "shm",
    as the producer declared it) and path ("same_host": shared memory between
    two processes of one host; "network": the declared transport's own path,
    to another host or, with the same-host path off, over loopback; "inline":
    a small object carried in its record); the top-level counters are the sums over paths. ``latency_us`` is
    the receiver's histogram of fetch times: ``counts[i]`` fetches took at most
    ``bounds[i]`` microseconds (the last count is for slower ones). The
    counters are per process and monotonic:
    diff two snapshots. With the plugin off (``RAY_RDT_PLUGIN=0``) and the
    library missing, every counter reads 0.
    """
    import ctypes

    try:
        lib = _ffi.lib()
    except PluginUnavailableError:
        if enabled():
            raise
        return _zero_stats()
    bounds = [lib.rdt_stats_latency_bound_us(i) for i in range(_ffi.LATENCY_BUCKETS - 1)]
    out = {}
    for name, code in TRANSPORT_CODES.items():
        total = {k: 0 for k in _COUNTERS}
        paths = {}
        for path, path_code in _ffi.PATH_CODES.items():
            s = _ffi.PathStats()
            _ffi.check(lib.rdt_stats_path_get(code, path_code, ctypes.byref(s)), "rdt_stats_path_get")
            entry = {k: getattr(s, k) for k in _COUNTERS}
            entry["latency_us"] = {"bounds": bounds, "counts": list(s.latency), "sum": s.latency_sum_us}
            paths[path] = entry
            for k in _COUNTERS:
                total[k] += entry[k]
        out[name] = dict(total, paths=paths)
    return out


def _read_stats(function: str, struct) -> dict:
    """A stats struct of the plugin as a dict (zeros with the plugin off and
    the library missing)."""
    import ctypes

    try:
        lib = _ffi.lib()
    except PluginUnavailableError:
        if enabled():
            raise
        return {k: 0 for k, _ in struct._fields_}
    s = struct()
    _ffi.check(getattr(lib, function)(ctypes.byref(s)), function)
    return {k: getattr(s, k) for k, _ in struct._fields_}


def endpoint_stats() -> dict:
    """What peers asked of this process's plugin endpoint:
    ``{"fetches_served", "free_requests", "objects_freed"}`` (monotonic)."""
    return _read_stats("rdt_stats_endpoint_get", _ffi.EndpointStats)


def nixl_stats() -> dict:
    """What this process holds in NIXL through the plugin:
    ``{"exported_ranges", "exported_refs"}`` (a producer's registrations of
    exported objects and the objects' references on them), ``"received"``
    (a consumer's registrations of received objects' memory, alive until their
    tensors are dropped) and ``"loaded_peers"``, ``"loaded_ranges"`` (producers
    and their registrations a consumer loaded; bounded). Zeros in a process
    that never used nixl."""
    return _read_stats("rdt_stats_nixl_get", _ffi.NixlStats)


def concurrency_stats() -> dict:
    """How many transfers this process runs at once: ``{"fetching",
    "fetching_peak"}`` (a consumer's fetches now, and the most at once so
    far: several refs of one ``ray.get``), ``{"serving", "serving_peak"}``
    (a producer's endpoint serving several consumers)."""
    return _read_stats("rdt_stats_concurrency_get", _ffi.ConcurrencyStats)
