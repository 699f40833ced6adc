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
        # The manager places the tensors (2.60's packing and errors) and
        # hands where to its copy step, which here only keeps them: the copy
        # is made in one torch call for the whole object, where the
        # manager's own copies each tensor in a Python loop (10,000 views:
        # most of a put's time).
        self.manager._copy_into_pool = self._placed
        self._starts: List[int] = []
        self.device = self.manager.get_pool_tensor().device
        self.keys = set()
        self.lock = threading.Lock()

    def _placed(self, tensors: List[Any], sizes: List[int], starts: List[int]) -> None:
        """The manager's copy step (``_copy_into_pool``): keeps the pool
        offset of each tensor of the object being placed (under ``lock``)."""
        self._starts = starts

    def copy(self, key_hex: str, tensors: List[Any]) -> List[Any]:
        """Copies ``tensors`` into pool blocks; returns views of the copies."""
        if self.device.type != "cpu" and any(t.device != self.device for t in tensors):
            return tensors
        import torch

        with self.lock:
            self._reclaim()
            self.manager.allocate_group(key_hex, tensors)
            starts = self._starts
            self.keys.add(key_hex)
        with torch.no_grad():
            views, dsts, srcs = _placed_copies(self.manager.get_pool_tensor(), tensors, starts)
            torch._foreach_copy_(dsts, srcs)
        return views

    def _reclaim(self) -> None:
        """Returns the blocks of objects the plugin has freed."""
        from ray_rdt import process

        ctx = process.peek_context()
        for key in [k for k in self.keys if ctx is None or not ctx.contains(k)]:
            self.manager.free_object(key)
            self.keys.discard(key)


def _placed_copies(pool, tensors: List[Any], offsets: List[int]):
    """Views of ``pool`` (bytes) shaped as ``tensors``, each at its offset,
    and the copies that fill them: ``(views, destinations, sources)``. A run
    of tensors of one dtype and shape packed back to back (the rows of a
    matrix) becomes views in one ``unbind``, and, when the tensors are also
    back to back in one storage of their own, one copy of the whole run."""
    import torch

    views: List[Any] = []
    dsts: List[Any] = []
    srcs: List[Any] = []
    i = 0
    while i < len(tensors):
        t = tensors[i]
        nbytes = t.numel() * t.element_size()
        joined = t._base is not None and t.is_contiguous()
        j = i + 1
        while (
            j < len(tensors)
            and offsets[j] == offsets[i] + (j - i) * nbytes
            and tensors[j].dtype == t.dtype
            and tensors[j].shape == t.shape
        ):
            u = tensors[j]
            joined = (
                joined
                and u._base is t._base
                and u.is_contiguous()
                and u.data_ptr() == t.data_ptr() + (j - i) * nbytes
            )
            j += 1
        block = pool[offsets[i] : offsets[i] + (j - i) * nbytes].view(t.dtype)
        run = [block.view(t.shape)] if j - i == 1 else list(block.view(j - i, *t.shape).unbind(0))
        views.extend(run)
        if joined and j - i > 1:
            flat = torch.empty(0, dtype=t.dtype, device=t.device)
            dsts.append(block)
            srcs.append(flat.set_(t.untyped_storage(), t.storage_offset(), ((j - i) * t.numel(),), (1,)))
        else:
            dsts.extend(run)
            srcs.extend(tensors[i:j])
        i = j
    return views, dsts, srcs
