"""Ray 2.60's NIXL memory helpers on the plugin's nixl transport.

- ``register_nixl_memory_pool(size, device)``: as in 2.60, later nixl puts
  (``ray.put`` and task returns) copy their tensors into one pre-allocated
  pool (Ray's own ``MemoryPoolManager`` packs them) and the object is the
  pool's copy: the sent weights are those of the put, however the trainer
  changes its tensors afterwards, and a full pool raises 2.60's
  ``NixlOutOfMemoryError``. A second pool is refused with 2.60's
  ``ValueError``. An object's blocks return to the pool once the plugin has
  freed it (checked at the next put).
- ``register_nixl_memory(tensor)`` / ``deregister_nixl_memory(tensor)``: the
  plugin registers every object's extents when it is stored and deregisters
  them when it is freed, and UCX's registration cache makes registering the
  same memory again cost microseconds (docs/nixl.md: 0.19 ms for 256 MiB the
  first time, 0.01 ms after), so there is no registration left to keep.
  What stays of their 2.60 meaning: a registered tensor's object is never
  copied into the pool (2.60 sends registered memory in place).
"""

import threading
from typing import Any, Dict, List, Optional

_lock = threading.Lock()
# Storage address -> registrations of it (register_nixl_memory).
_registered: Dict[int, int] = {}
_pool: Optional["Pool"] = None


def register(tensor) -> None:
    """``register_nixl_memory``."""
    with _lock:
        key = tensor.untyped_storage().data_ptr()
        _registered[key] = _registered.get(key, 0) + 1


def deregister(tensor) -> None:
    """``deregister_nixl_memory``."""
    with _lock:
        key = tensor.untyped_storage().data_ptr()
        if _registered.get(key, 0) > 1:
            _registered[key] -= 1
        else:
            _registered.pop(key, None)


def register_pool(size: int, device) -> None:
    """``register_nixl_memory_pool``."""
    global _pool
    with _lock:
        if _pool is not None:
            raise ValueError("A memory pool is already registered. Only one memory pool is supported.")
        _pool = Pool(size, device)


def pooled(key_hex: str, tensors: List[Any]) -> List[Any]:
    """The tensors a nixl object is made of: copies in the pool when one is
    registered and the object may use it (as 2.60 decides), else ``tensors``."""
    pool = _pool
    if pool is None or not tensors:
        return tensors
    with _lock:
        if any(t.untyped_storage().data_ptr() in _registered for t in tensors):
            return tensors
    return pool.copy(key_hex, tensors)


class Pool:
    """One registered pool: Ray's ``MemoryPoolManager`` and the objects that
    hold blocks of it."""

    def __init__(self, size: int, device):
        from ray.experimental.rdt.nixl_memory_pool import MemoryPoolManager

        self.manager = MemoryPoolManager(pool_size=size, device=device)
        # The manager places the tensors (2.60's packing and errors); the
        # copy is made here, in one torch call for the whole object, where
        # the manager's own copies each tensor in a Python loop (10,000
        # views: most of a put's time).
        self.manager._copy_into_pool = lambda tensors, sizes, starts: None
        self.device = self.manager.get_pool_tensor().device
        self.keys = set()
        self.lock = threading.Lock()

    def copy(self, key_hex: str, tensors: List[Any]) -> List[Any]:
        """Copies ``tensors`` into pool blocks; returns views of the copies."""
        if self.device.type != "cpu" and any(t.device != self.device for t in tensors):
            return tensors
        import torch
        from ray.experimental.rdt.nixl_memory_pool import (
            TensorLayout,
            group_tensors_by_desc,
            packed_offsets,
        )

        with self.lock:
            self._reclaim()
            regions = self.manager.allocate_group(key_hex, tensors)
            self.keys.add(key_hex)
        layouts = [TensorLayout(t.numel() * t.element_size(), t.element_size()) for t in tensors]
        views: List[Any] = []
        for region, group in zip(regions, group_tensors_by_desc(layouts, [r.numel() for r in regions])):
            offsets, _ = packed_offsets([layouts[i] for i in group])
            views.extend(_views(region, [tensors[i] for i in group], offsets))
        with torch.no_grad():
            torch._foreach_copy_(views, tensors)
        return views

    def _reclaim(self) -> None:
        """Returns the blocks of objects the plugin has freed."""
        from ray_rdt import process

        ctx = process.peek_context()
        for key in [k for k in self.keys if ctx is None or not ctx.contains(k)]:
            self.manager.free_object(key)
            self.keys.discard(key)


def _views(region, tensors: List[Any], offsets: List[int]) -> List[Any]:
    """Views of ``region`` (bytes) shaped as ``tensors``, each at its offset.
    A run of tensors of one dtype and shape packed back to back (the rows of
    a matrix) becomes views in one ``unbind``."""
    out: List[Any] = []
    i = 0
    while i < len(tensors):
        t = tensors[i]
        nbytes = t.numel() * t.element_size()
        j = i + 1
        while (
            j < len(tensors)
            and offsets[j] == offsets[i] + (j - i) * nbytes
            and tensors[j].dtype == t.dtype
            and tensors[j].shape == t.shape
        ):
            j += 1
        block = region[offsets[i] : offsets[i] + (j - i) * nbytes].view(t.dtype)
        if j - i == 1:
            out.append(block.view(t.shape))
        else:
            out.extend(block.view(j - i, *t.shape).unbind(0))
        i = j
    return out
