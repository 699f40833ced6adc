"""DLPack plumbing between torch tensors and the plugin's ``DLManagedTensor*``.

Into the plugin: ``torch.utils.dlpack.to_dlpack`` gives a PyCapsule named
"dltensor" that owns a ``DLManagedTensor``. Its pointer is handed to the plugin;
once the plugin has accepted it, the capsule is renamed "used_dltensor" so its
destructor no longer calls the deleter (the plugin calls it, exactly once).

Out of the plugin: a returned ``DLManagedTensor*`` is wrapped in a new "dltensor"
capsule and given to ``torch.from_dlpack``, which takes ownership and calls the
deleter when the tensor dies.

The per-capsule CPython calls (read a pointer, rename, make a capsule) are made
by the plugin for a whole list at once (``rdt_capsules_*``, src/ffi/capsule.rs):
one ``ctypes`` call per tensor costs more than torch's own export.
"""

import ctypes
from typing import TYPE_CHECKING, List, Sequence, Tuple

from ray_rdt import _ffi

if TYPE_CHECKING:
    import torch


def _capsules(tensors: Sequence["torch.Tensor"]):
    """DLPack capsules of ``tensors`` and a C array of their ``DLManagedTensor``
    pointers (read by the plugin in one call: ``rdt_capsules_pointers``)."""
    from torch.utils.dlpack import to_dlpack

    # map() over torch's C function: no Python frame per tensor (for 100,000
    # tensors about 12 ms less than a comprehension). Unlike
    # ``Tensor.__dlpack__``, ``to_dlpack`` exports tensors that need grad.
    capsules = list(map(to_dlpack, tensors))
    array = (ctypes.c_void_p * max(len(capsules), 1))()
    _ffi.check(_ffi.lib().rdt_capsules_pointers(capsules, array, len(capsules)), "rdt_capsules_pointers")
    return capsules, array


class Borrowed:
    """DLPack views of tensors the plugin only reads and writes during one call
    (targets of a fetch): it never takes them, so the capsules, dropped with
    this object, release them."""

    def __init__(self, tensors: Sequence["torch.Tensor"]):
        self.capsules, self.array = _capsules(tensors)
        self.count = len(self.capsules)


class Exported:
    """DLPack capsules for a list of tensors, and the C array of their pointers.

    Call :meth:`commit` once the plugin owns the tensors (the capsules then no
    longer free them); otherwise dropping this object frees them.
    """

    def __init__(self, tensors: Sequence["torch.Tensor"]):
        self.capsules, self.array = _capsules(tensors)
        self.count = len(self.capsules)

    def commit(self):
        """Renames every capsule to "used_dltensor" (one plugin call)."""
        _ffi.check(_ffi.lib().rdt_capsules_consume(self.capsules, self.count), "rdt_capsules_consume")
        self.capsules = []


def _from_capsule():
    """torch's DLPack capsule importer (what ``torch.utils.dlpack.from_dlpack``
    calls for a capsule, without its per-call argument handling)."""
    import torch

    return getattr(torch._C, "_from_dlpack", torch.utils.dlpack.from_dlpack)


def adopt(array, count: int) -> List["torch.Tensor"]:
    """Wraps the ``count`` ``DLManagedTensor*`` of the C array ``array``, which
    the plugin handed out, into torch tensors (ownership moves to torch: each
    deleter runs when its tensor is released).

    The plugin makes the capsules in one call (``rdt_capsules_new``); a capsule
    torch did not take (torch refused a tensor: the error is re-raised) calls
    its tensor's deleter when it dies."""
    capsules = [None] * count
    _ffi.check(_ffi.lib().rdt_capsules_new(array, count, capsules), "rdt_capsules_new")
    return list(map(_from_capsule(), capsules))


# DLPack (code, bits) of single-lane types -> torch dtype name.
_TORCH_DTYPES = {
    (0, 8): "int8",
    (0, 16): "int16",
    (0, 32): "int32",
    (0, 64): "int64",
    (1, 8): "uint8",
    (1, 16): "uint16",
    (1, 32): "uint32",
    (1, 64): "uint64",
    (2, 16): "float16",
    (2, 32): "float32",
    (2, 64): "float64",
    (4, 16): "bfloat16",
    (5, 64): "complex64",
    (5, 128): "complex128",
    (6, 8): "bool",
}


def record_tensor_meta(record: bytes) -> List[Tuple["torch.Size", "torch.dtype"]]:
    """A record's tensors as Ray 2.60's ``tensor_meta`` lists them
    (``(torch.Size, torch.dtype)``; a dtype torch has no name for is None)."""
    import torch

    out = []
    for shape, (code, bits, lanes) in _ffi.record_tensors(record):
        name = _TORCH_DTYPES.get((code, bits)) if lanes == 1 else None
        out.append((torch.Size(shape), getattr(torch, name) if name else None))
    return out


