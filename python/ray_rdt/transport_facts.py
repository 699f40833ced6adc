"""Facts about the plugin's transports, and which of them this process routes
through the plugin: a leaf module (it imports only the C ABI binding, and Ray
only when asked what a name is registered as).

Each transport has a name (upper case, as Ray names it), the plugin's wire
code, whether it is one-sided (a consumer reads without the producer's
participation: no collective group, ``ray.get`` allowed) and the device types
it moves. ``RAY_RDT_PLUGIN_TRANSPORTS`` (comma-separated, default
``gloo,shm,nixl``) lists those routed through the plugin; ``nccl`` and
``cuda_ipc`` join once ``ci/gpu-nightly`` has run them on a GPU.
"""

import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ray_rdt import _ffi


@dataclass(frozen=True)
class Facts:
    """What one plugin transport is."""

    name: str
    code: int
    one_sided: bool
    devices: Tuple[str, ...]


FACTS: Dict[str, Facts] = {
    f.name: f
    for f in (
        Facts("GLOO", _ffi.TRANSPORT_GLOO, False, ("cpu",)),
        Facts("SHM", _ffi.TRANSPORT_SHM, True, ("cpu",)),
        Facts("NIXL", _ffi.TRANSPORT_NIXL, True, ("cuda", "cpu")),
        Facts("NCCL", _ffi.TRANSPORT_NCCL, False, ("cuda",)),
        Facts("CUDA_IPC", _ffi.TRANSPORT_CUDA_IPC, True, ("cuda",)),
    )
}

# Routed through the plugin unless RAY_RDT_PLUGIN_TRANSPORTS says otherwise.
DEFAULT_ROUTED = ("GLOO", "SHM", "NIXL")


def routed() -> Dict[str, Facts]:
    """The transports this process routes through the plugin
    (``RAY_RDT_PLUGIN_TRANSPORTS``; a transport left out is stock 2.60's, and
    SHM then does not exist)."""
    names = os.environ.get("RAY_RDT_PLUGIN_TRANSPORTS")
    if names is None:
        return {n: FACTS[n] for n in DEFAULT_ROUTED}
    wanted = [n.strip().upper() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in FACTS]
    if unknown:
        raise ValueError(f"RAY_RDT_PLUGIN_TRANSPORTS names {unknown}; the plugin serves {sorted(FACTS)}")
    return {n: FACTS[n] for n in wanted}


# registered()'s answers. A name's answer never changes once Ray's default
# transports are registered: plugin transports are registered only then, and
# Ray refuses to register a name twice.
_registered: Dict[str, Optional[Facts]] = {}


def registered(name: Optional[str]) -> Optional[Facts]:
    """The facts of the plugin transport registered in this process's Ray
    under ``name``, or None (not a plugin transport: stock Ray's, or unknown)."""
    try:
        return _registered[name]
    except KeyError:
        pass
    if not name:
        return None
    from ray.experimental.rdt import util

    util._ensure_default_transports_registered()
    info = util.transport_manager_info.get(name)
    facts = getattr(info.transport_manager_class, "FACTS", None) if info is not None else None
    if info is not None:
        _registered[name] = facts
    return facts


def is_plugin_transport(name: Optional[str]) -> bool:
    """Whether ``name`` is a transport whose bytes the plugin moves."""
    return registered(name) is not None


def is_one_sided_plugin_transport(name: Optional[str]) -> bool:
    """Whether ``name`` is a one-sided transport whose bytes the plugin moves
    (nothing to check or start when its object is passed to a task)."""
    facts = registered(name)
    return facts is not None and facts.one_sided
