"""Targets of plugin objects: ``ray.experimental.set_target_for_ref`` and
``set_target_device_for_ref``.

Ray 2.60 keeps weak references to a ref's target tensors in the owner's RDT
metadata, so targets handed over as temporaries (``set_target_for_ref(ref,
model.get_views())``) are silently dropped, and a borrower (a generator that
got the ref inside a list) cannot set targets at all. For plugin objects this
module holds the targets itself, in any process, by the ref's ID, from
``set_target_for_ref`` until the ref's next fetch in that process lands in
them (or the object is freed, or a borrower lets go of the ref:
:mod:`ray_rdt.borrowed`): a ``ray.get``,
or the ref arriving as an argument of a task there, which then gets the
targets themselves. The argument is the only way targets reach an object of
a collective transport (gloo), whose ``ray.get`` 2.60 refuses
(docs/design.md, "Targets of a collective object"). That fetch consumes
them: a later one returns new tensors unless targets are set again (2.60
lands every get in still-living targets; holding 100,000 weak references
per step to do the same would cost more than the transfer).

A target device (``set_target_device_for_ref``) is kept until the object is
freed (or a borrower lets go of the ref) and moves every fetch's tensors there. Setting one replaces the other,
as in 2.60.
"""

import threading
from typing import Any, Dict, List, Optional, Tuple

_lock = threading.Lock()
# ref hex -> (targets, None) or (None, target device)
_held: Dict[str, Tuple[Optional[List[Any]], Optional[str]]] = {}


def _plugin_ref(ref) -> bool:
    """Whether ``ref`` names an object a plugin transport moves."""
    from ray_rdt.transport_facts import is_plugin_transport

    transport = ref.tensor_transport()
    return transport is not None and is_plugin_transport(str(transport).upper())


def set_targets(ref, targets: List[Any]) -> bool:
    """``set_target_for_ref`` for a plugin object: holds ``targets`` for the
    ref's next fetch here (``ray.get``, or a task argument). False for other
    objects (stock 2.60 handles them)."""
    if not _plugin_ref(ref):
        return False
    with _lock:
        _held[ref.hex()] = (list(targets), None)
    return True


def set_target_device(ref, device: str) -> bool:
    """``set_target_device_for_ref`` for a plugin object: its next fetches land
    on ``device``. False for other objects."""
    if not _plugin_ref(ref):
        return False
    import torch

    torch.device(device)  # a malformed device string raises as in 2.60
    with _lock:
        _held[ref.hex()] = (None, device)
    return True


def take(ref_hex: str) -> Tuple[Optional[List[Any]], Optional[str]]:
    """``(targets, device)`` for a fetch of ``ref_hex`` now (``ray.get`` or a
    task argument; targets are consumed by it)."""
    with _lock:
        entry = _held.get(ref_hex)
        if entry is None:
            return None, None
        if entry[0] is not None:
            del _held[ref_hex]
        return entry


def drop(ref_hex: str) -> Optional[Tuple[Optional[List[Any]], Optional[str]]]:
    """Forgets the targets or target device of an object that was freed (or
    a borrowed ref that is gone); returns what was held, if anything."""
    with _lock:
        return _held.pop(ref_hex, None)


def restore(ref_hex: str, entry: Optional[Tuple[Optional[List[Any]], Optional[str]]]) -> None:
    """Holds again what :func:`drop` returned for ``ref_hex``, unless
    something else was set for it since."""
    if entry is not None:
        with _lock:
            _held.setdefault(ref_hex, entry)
