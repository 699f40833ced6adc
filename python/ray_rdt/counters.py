"""The plugin's counters in this process, from the C ABI: bytes, transfers
and errors per transport and path (:func:`stats`), what the endpoint was asked
(:func:`endpoint_stats`), NIXL registrations (:func:`nixl_stats`) and transfers
under way (:func:`concurrency_stats`). Re-exported as ``ray_rdt.stats()`` and
friends."""

import ctypes

from ray_rdt import _ffi
from ray_rdt._ffi import PluginUnavailableError
from ray_rdt.settings import enabled


_COUNTERS = ("bytes_sent", "bytes_received", "transfers", "errors")


def stats() -> dict:
    """This process's plugin counters, from the C ABI.

    Returns ``{transport: {"bytes_sent", "bytes_received", "transfers", "errors",
    "paths": {path: {...the same four..., "latency_us": {"bounds", "counts", "sum"}}}}}``
    keyed by lower-case transport name ("gloo", "nccl", "nixl", "cuda_ipc", "shm",
    as the producer declared it) and path ("same_host": shared memory between
    two processes of one host; "network": the declared transport's own path,
    to another host or, with the same-host path off, over loopback; "inline":
    a small object carried in its record; "node_copy": bytes taken from the
    copy another consumer of this node read over the network); the top-level
    counters are the sums over paths. ``latency_us`` is
    the receiver's histogram of fetch times: ``counts[i]`` fetches took at most
    ``bounds[i]`` microseconds (the last count is for slower ones). The
    counters are per process and monotonic:
    diff two snapshots. The names are the library's (``rdt_transport_name``,
    ``rdt_path_name``). With the plugin off (``RAY_RDT_PLUGIN=0``) and the
    library missing there are no counters: ``{}``.
    """
    try:
        lib = _ffi.lib()
    except PluginUnavailableError:
        if enabled():
            raise
        return {}
    bounds = [lib.rdt_stats_latency_bound_us(i) for i in range(_ffi.LATENCY_BUCKETS - 1)]
    path_names = _ffi.path_names()
    out = {}
    for code, name in _ffi.transport_names().items():
        total = {k: 0 for k in _COUNTERS}
        paths = {}
        for path_code, path in path_names.items():
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
