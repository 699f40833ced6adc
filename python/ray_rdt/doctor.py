"""``ray-rdt doctor``: can RDT run through the plugin in this process (or on every
node of a cluster), and what can it use?

:func:`report` inspects the process it runs in: the package and the library it
loads (path, C ABI version), whether this environment's Ray is patched, which
transports can run here (gloo is built in; shm needs Linux shared memory; NIXL
is probed by storing a one-element tensor for the nixl transport, which loads
NIXL's library the way a real transfer does), the CUDA and NCCL libraries found,
the context's endpoint addresses and whether the data plane is authenticated.
:func:`problems` names what cannot work, including what the user required.
"""

import ctypes
import glob
import importlib.util
import os
import socket
import sys
from typing import Dict, List, Optional

REQUIREMENTS = ("gloo", "shm", "nixl", "cuda", "nccl", "authenticated")


def _package_version() -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version("ray-rdt")
    except metadata.PackageNotFoundError:
        return None


def _plugin() -> dict:
    """The library: where it is, its ABI, or why it does not load."""
    from ray_rdt import _ffi, enabled

    out = {"enabled": enabled(), "library": None, "abi": None, "error": None}
    try:
        lib = _ffi.lib()
        version = lib.rdt_abi_version()
        out["library"] = _ffi.library_path()
        out["abi"] = f"{version >> 16}.{version & 0xFFFF}"
    except _ffi.PluginUnavailableError as e:
        out["error"] = str(e)
    return out


def _ray() -> dict:
    """This environment's Ray and the state of each patch."""
    from ray_rdt import patching

    try:
        env = patching.Environment.of(sys.executable)
    except patching.PatchError as e:
        return {"version": None, "patches": "unknown", "error": str(e)}
    out = {"version": env.ray_version, "patches": "unsupported Ray version", "error": None}
    if env.ray_version == patching.RAY_VERSION:
        try:
            states = {p.name: patching.state_of(env, p).value for p in patching.load_patches()}
        except patching.PatchError as e:
            out.update(patches="unknown", error=str(e))
            return out
        values = set(states.values())
        out["patches"] = values.pop() if len(values) == 1 else "partly applied"
        out["files"] = states
    return out


def _find(patterns: List[str]) -> Optional[str]:
    """The first file matching any of ``patterns`` in site-packages' NVIDIA
    wheels, then the system library directories."""
    roots = [p for p in sys.path if p.endswith("site-packages")]
    dirs = [d for r in roots for d in glob.glob(os.path.join(r, "nvidia", "*", "lib"))]
    dirs += os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    dirs += ["/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"]
    for d in dirs:
        for pattern in patterns:
            hits = sorted(glob.glob(os.path.join(d, pattern))) if d else []
            if hits:
                return hits[0]
    return None


def _cuda_devices() -> dict:
    """The CUDA driver (``libcuda.so.1``) and how many devices it reports."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return {"driver": None, "devices": 0}
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return {"driver": "libcuda.so.1", "devices": 0}
    return {"driver": "libcuda.so.1", "devices": count.value}


def _probe_nixl(ctx) -> Optional[str]:
    """None when a one-element tensor can be stored for NIXL, else the plugin's error."""
    import torch

    from ray_rdt import _ffi

    oid = os.urandom(28)
    try:
        ctx.put(oid, _ffi.TRANSPORT_NIXL, [torch.zeros(1)])
    except _ffi.RdtError as e:
        return e.message
    ctx.free(oid)
    return None


def report() -> dict:
    """Everything :mod:`ray_rdt.doctor` checks, for the process it runs in (JSON-able)."""
    out = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "python": sys.executable,
        "package": {"version": _package_version(), "location": os.path.dirname(os.path.abspath(__file__))},
        "plugin": _plugin(),
        "ray": _ray(),
    }
    try:
        from ray_rdt.transport_facts import routed

        out["routed"] = sorted(n.lower() for n in routed())
    except Exception as e:
        out["routed"] = f"error: {e}"
    from ray_rdt import stock_path

    devices = stock_path.plugin_devices()
    out["nixl_devices"] = {
        "plugin": list(devices),
        "why": (
            f"{stock_path.DEVICES_ENV}={','.join(devices)}: nixl objects on other devices move through stock Ray's "
            "NIXL code (the plugin's CUDA paths wait for a ci/gpu-nightly run on a GPU)"
        ),
    }
    cuda = _cuda_devices()
    libraries = {
        "cudart": _find(["libcudart.so*"]),
        "nccl": _find(["libnccl.so*"]),
        "cuda_driver": cuda["driver"],
        "gpus": cuda["devices"],
    }
    out["libraries"] = libraries
    transports: Dict[str, dict] = {}
    endpoint = {"unix": None, "tcp": None, "authenticated": None}
    ctx = None
    if out["plugin"]["library"]:
        from ray_rdt import process

        try:
            ctx = process.get_context()
        except Exception as e:
            out["plugin"]["error"] = f"the plugin context cannot start: {e}"
    if ctx is not None:
        endpoint = {
            "unix": ctx.endpoint,
            "tcp": getattr(ctx, "tcp_endpoint", None),
            "authenticated": getattr(ctx, "authenticated", None),
        }
        transports["gloo"] = {"ok": True, "detail": "built into the plugin (Gloo)"}
        shm = sys.platform.startswith("linux") and os.path.isdir("/dev/shm")
        transports["shm"] = {"ok": shm, "detail": "same-host shared memory" if shm else "needs Linux /dev/shm"}
        nixl_error = _probe_nixl(ctx)
        transports["nixl"] = {"ok": nixl_error is None, "detail": nixl_error or "NIXL loaded (UCX)"}
    else:
        for name in ("gloo", "shm", "nixl"):
            transports[name] = {"ok": False, "detail": "the plugin is not loaded"}
    gpu = libraries["gpus"] > 0
    transports["cuda"] = {
        "ok": gpu and libraries["cudart"] is not None,
        "detail": f"{libraries['gpus']} GPU(s), runtime {libraries['cudart'] or 'not found'}",
    }
    transports["nccl"] = {
        "ok": gpu and libraries["nccl"] is not None,
        "detail": f"{libraries['nccl'] or 'libnccl not found'}{'' if gpu else ' (no GPU)'} (stock Ray's NCCL transport)",
    }
    out["transports"] = transports
    out["endpoint"] = endpoint
    out["metrics_agent"] = all(importlib.util.find_spec(m) is not None for m in ("prometheus_client", "opencensus"))
    return out


def problems(rep: dict, required=()) -> List[str]:
    """What cannot work: the plugin itself (library, ABI, patches) and each required item."""
    out = []
    host = rep.get("host", "?")
    plugin = rep["plugin"]
    if plugin["error"]:
        out.append(f"{host}: the plugin cannot load: {plugin['error']}")
    if rep["ray"]["patches"] != "applied":
        out.append(f"{host}: Ray's patches are {rep['ray']['patches']} (run `ray-rdt patch`)")
    for item in required:
        if item == "authenticated":
            if rep["endpoint"]["authenticated"] is not True:
                state = "unknown" if rep["endpoint"]["authenticated"] is None else "not authenticated"
                out.append(f"{host}: the data plane is {state}")
            continue
        t = rep["transports"].get(item)
        if t is None or not t["ok"]:
            out.append(f"{host}: {item} cannot run: {t['detail'] if t else 'unknown'}")
    return out


def _yes(value) -> str:
    return {True: "yes", False: "no", None: "unknown"}[value]


def format_report(rep: dict) -> str:
    """The human-readable form of one :func:`report`."""
    p, r = rep["plugin"], rep["ray"]
    lines = [
        f"host {rep['host']} (pid {rep['pid']}, {rep['python']})",
        f"  ray-rdt        {rep['package']['version'] or 'not installed (source tree)'} at {rep['package']['location']}",
        f"  plugin         {'on' if p['enabled'] else 'off (RAY_RDT_PLUGIN=0)'}; "
        + (f"library {p['library']}, C ABI {p['abi']}" if p["library"] else f"NOT LOADED: {p['error']}"),
        f"  ray            {r['version'] or 'not installed'}, patches {r['patches']}",
        f"  routed         {', '.join(rep['routed']) if isinstance(rep['routed'], list) else rep['routed']}",
        f"  nixl moves     {', '.join(rep['nixl_devices']['plugin']) or 'nothing'} through the plugin "
        f"({rep['nixl_devices']['why']})",
    ]
    for name, t in rep["transports"].items():
        lines.append(f"  {name:<14} {'ok' if t['ok'] else 'NO':<3} {t['detail']}")
    e = rep["endpoint"]
    lines.append(f"  endpoint       unix {e['unix'] or '-'}; tcp {e['tcp'] or '-'}")
    lines.append(f"  authenticated  {_yes(e['authenticated'])}")
    lines.append(
        "  metrics agent  "
        + ("available" if rep["metrics_agent"] else "missing (Ray's metrics need ray[default]: pip install ray-rdt[metrics])")
    )
    return "\n".join(lines)
