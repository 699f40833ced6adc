"""DLPack plumbing between torch tensors and the plugin's ``DLManagedTensor*``.

Into the plugin: ``torch.utils.dlpack.to_dlpack`` gives a PyCapsule named
"dltensor" that owns a ``DLManagedTensor``. Its pointer is handed to the plugin;
once the plugin has accepted it, the capsule is renamed "used_dltensor" so its
destructor no longer calls the deleter (the plugin calls it, exactly once).

Out of the plugin: a returned ``DLManagedTensor*`` is wrapped in a new "dltensor"
capsule and given to ``torch.from_dlpack``, which takes ownership and calls the
deleter when the tensor dies.
"""

import collections
import ctypes
import itertools
from typing import TYPE_CHECKING, List, Sequence, Tuple

from ray_rdt import _ffi

if TYPE_CHECKING:
    import torch

_api = ctypes.pythonapi
_api.PyCapsule_New.restype = ctypes.py_object
_api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]

_DLTENSOR = b"dltensor"
_DLTENSOR_NAME = ctypes.c_char_p(_DLTENSOR)
# PyCapsule_SetName keeps the pointer: the name must outlive the capsule.
_USED_DLTENSOR = ctypes.create_string_buffer(b"used_dltensor")
_USED_NAME = ctypes.cast(_USED_DLTENSOR, ctypes.c_char_p)

# The two capsule calls made once per tensor of a put, as prototypes of their
# own (the GIL held; an error still raises), called through map(): for
# 100,000 tensors about 8 ms less than a loop over ``ctypes.pythonapi``'s.
_GET_POINTER = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(("PyCapsule_GetPointer", _api))
_SET_NAME = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(("PyCapsule_SetName", _api))


def _capsules(tensors: Sequence["torch.Tensor"]):
    """DLPack capsules of ``tensors`` and a C array of their ``DLManagedTensor`` pointers."""
    from torch.utils.dlpack import to_dlpack

    try:
        # map() over torch's C function: no Python frame per tensor (for
        # 100,000 tensors about 12 ms less than a comprehension).
        capsules = list(map(to_dlpack, tensors))
    except RuntimeError:
        # DLPack refuses tensors that need grad; detach() gives the same memory.
        # (The capsules made before the refusal free their tensors as they go.)
        capsules = [to_dlpack(t.detach() if t.requires_grad else t) for t in tensors]
    array = (ctypes.c_void_p * max(len(capsules), 1))()
    array[: len(capsules)] = list(map(_GET_POINTER, capsules, itertools.repeat(_DLTENSOR_NAME)))
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
        # Renames every capsule (a zero-length deque consumes the map in C).
        collections.deque(map(_SET_NAME, self.capsules, itertools.repeat(_USED_NAME)), maxlen=0)
        self.capsules = []


def _from_capsule():
    """torch's DLPack capsule importer (what ``torch.utils.dlpack.from_dlpack``
    calls for a capsule, without its per-call argument handling)."""
    import torch

    return getattr(torch._C, "_from_dlpack", torch.utils.dlpack.from_dlpack)


def to_torch(ptr: int) -> "torch.Tensor":
    """Wraps a ``DLManagedTensor*`` the plugin handed out into a torch tensor.

    Ownership moves to torch (the deleter runs when the tensor is released). If
    torch refuses the tensor, its deleter is called here and the error re-raised.
    """
    return adopt_all([ptr])[0]


def release(ptr: int):
    """Calls a ``DLManagedTensor``'s deleter (for tensors nobody will adopt)."""
    if not ptr:
        return
    managed = _ffi.DLManagedTensor.from_address(ptr)
    if managed.deleter:
        managed.deleter(ctypes.cast(ptr, ctypes.POINTER(_ffi.DLManagedTensor)))


def adopt_all(ptrs: Sequence[int]) -> List["torch.Tensor"]:
    """Wraps each ``DLManagedTensor*`` the plugin handed out into a torch
    tensor (ownership moves to torch: the deleter runs when the tensor is
    released). If torch refuses one, its deleter and those of the rest are
    called here and the error re-raised."""
    importer = _from_capsule()
    new = _api.PyCapsule_New
    out = []
    capsule = None
    try:
        for p in ptrs:
            capsule = None
            capsule = new(p, _DLTENSOR, None)
            out.append(importer(capsule))
    except BaseException:
        failed = len(out)
        # The one that failed is still ours unless torch took it.
        if failed < len(ptrs) and (capsule is None or _api.PyCapsule_IsValid(capsule, _DLTENSOR)):
            release(ptrs[failed])
        for p in ptrs[failed + 1 :]:
            release(p)
        raise
    return out


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


