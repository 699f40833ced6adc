"""DLPack plumbing between torch tensors and the plugin's DLPack tensors.

Into the plugin, where torch publishes DLPack's C exchange API
(``torch.Tensor.__dlpack_c_exchange_api__``): the plugin exports a whole list
of tensors in one call (``rdt_tensors_export``, src/ffi/exchange.rs), each as
an owning ``DLManagedTensorVersioned`` that the plugin then takes (a put) or
releases (targets, after the call). Elsewhere, through capsules: torch's
``to_dlpack`` gives a PyCapsule named "dltensor" that owns a
``DLManagedTensor``; its pointer is handed to the plugin and, once the plugin
has accepted it, the capsule is renamed "used_dltensor" so its destructor no
longer calls the deleter (the plugin calls it, exactly once).

Out of the plugin: a returned ``DLManagedTensor*`` is wrapped in a new "dltensor"
capsule and given to ``torch.from_dlpack``, which takes ownership and calls the
deleter when the tensor dies.

The per-tensor CPython calls (read a pointer, rename, make a capsule, export
through the exchange API) are made by the plugin for a whole list at once
(src/ffi/capsule.rs, src/ffi/exchange.rs): one ``ctypes`` call per tensor
costs more than torch's own export.
"""

import ctypes
from typing import TYPE_CHECKING, List, Sequence, Tuple

from ray_rdt import _ffi

if TYPE_CHECKING:
    import torch

# torch's exchange API capsule, looked up once (False: not looked up yet).
_EXCHANGE_API = False


def _exchange_api():
    """``torch.Tensor.__dlpack_c_exchange_api__`` (a capsule of C functions,
    DLPack 1.2), or None where this torch has none."""
    global _EXCHANGE_API
    if _EXCHANGE_API is False:
        import torch

        _EXCHANGE_API = getattr(torch.Tensor, "__dlpack_c_exchange_api__", None)
    return _EXCHANGE_API


def _pointer_array(count: int):
    return (ctypes.c_void_p * max(count, 1))()


class _Export:
    """Tensors exported as DLPack for one plugin call, and the C array of their
    pointers (``array``; ``views``: their ``DLTensor`` pointers). Exported
    through torch's exchange API when it has one (``versioned``: the pointers
    are ``DLManagedTensorVersioned*``), else as capsules (``DLManagedTensor*``,
    whose ``dl_tensor`` comes first, so ``views`` is ``array``). Until
    :meth:`release` or the plugin takes them, this object owns them: dropping
    it releases them."""

    def __init__(self, tensors: Sequence["torch.Tensor"], views: bool):
        import torch

        self.count = len(tensors)
        self.array = _pointer_array(self.count)
        exchange = _exchange_api()
        self.versioned = exchange is not None
        self._owned = False
        self.capsules = None
        if self.versioned:
            self.views = _pointer_array(self.count) if views else None
            items = tensors if type(tensors) is list else list(tensors)
            status = _ffi.lib().rdt_tensors_export(exchange, torch.Tensor, items, self.array, self.views, self.count)
            _ffi.check(status, "rdt_tensors_export")  # on an error it exported none
            self._owned = True
        else:
            from torch.utils.dlpack import to_dlpack

            # map() over torch's C function: no Python frame per tensor (for
            # 100,000 tensors about 12 ms less than a comprehension). Unlike
            # ``Tensor.__dlpack__``, ``to_dlpack`` exports tensors that need grad.
            self.capsules = list(map(to_dlpack, tensors))
            status = _ffi.lib().rdt_capsules_pointers(self.capsules, self.array, self.count)
            _ffi.check(status, "rdt_capsules_pointers")
            self.views = self.array

    def release(self):
        """Releases every tensor the plugin did not take (idempotent)."""
        if self._owned:
            self._owned = False
            _ffi.lib().rdt_tensors_release(self.array, self.count)
        self.capsules = None

    def __del__(self):
        try:
            self.release()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


# Whether torch's exchange API describes a tensor without exporting it
# (``dltensor_from_py_object_no_sync``): None until the first Borrowed asks.
_DESCRIBES = None


class Borrowed:
    """DLPack descriptions of tensors the plugin only reads and writes during
    one call (the targets of a fetch): ``views``, the C array of their
    ``DLTensor`` pointers, ``count`` of them. Where torch's exchange API can,
    they are described in place (``rdt_tensors_view``: nothing exported or
    released, about half the cost; valid while this object keeps the
    tensors, as an export is valid while it holds them); otherwise exported
    (:class:`_Export`). Call :meth:`release` after the call."""

    def __init__(self, tensors: Sequence["torch.Tensor"]):
        global _DESCRIBES
        self.count = len(tensors)
        self._tensors = tensors if type(tensors) is list else list(tensors)
        self._export = None
        exchange = _exchange_api()
        if exchange is not None and _DESCRIBES is not False:
            import torch

            self._described = (_ffi.DLTensor * max(self.count, 1))()
            self.views = _pointer_array(self.count)
            status = _ffi.lib().rdt_tensors_view(
                exchange, torch.Tensor, self._tensors, self._described, self.views, self.count
            )
            if status != _ffi.ERR_UNSUPPORTED:
                _ffi.check(status, "rdt_tensors_view")
                _DESCRIBES = True
                return
            _DESCRIBES = False
        self._export = _Export(self._tensors, views=True)
        self.views = self._export.views

    def release(self):
        """Ends the borrow: releases the exports, if the tensors were
        exported (idempotent)."""
        if self._export is not None:
            self._export.release()
        self._tensors = None


class Exported(_Export):
    """Tensors to hand to the plugin (a put: ``rdt_context_put_versioned``
    when ``versioned``, else ``rdt_context_put``). Call :meth:`commit` once
    the plugin owns them; otherwise dropping this object frees them."""

    def __init__(self, tensors: Sequence["torch.Tensor"]):
        super().__init__(tensors, views=False)

    def commit(self):
        """The plugin owns the tensors now (capsules are renamed
        "used_dltensor" in one plugin call)."""
        if self.versioned:
            self._owned = False
            return
        _ffi.check(_ffi.lib().rdt_capsules_consume(self.capsules, self.count), "rdt_capsules_consume")
        self.capsules = None


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


