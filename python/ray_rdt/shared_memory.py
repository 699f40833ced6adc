"""``ray_rdt.share_memory_``: weights in memory that generators on this host
read in place.

On one host the plugin lands an object in a generator's targets by copying
from the trainer's memory: through a staging copy the trainer makes (several
generators at once) or by reading the trainer's memory across processes (one
generator, `process_vm_readv`, which costs more CPU than a memcpy). Tensors
that live in the plugin's shared memory are read in place instead: every
generator maps the memory once and, each step, copies straight from it into
its own weights, and the trainer copies nothing. For N generators that is N
copies in all, the machine's parallel-copy limit.

As with any RDT object, the trainer must not change the tensors while a
generator reads them (until the generators' ``ray.get`` returned); on one
host a generator reads them at its ``ray.get``, not at the ``ray.put``.
"""

from typing import Any, List

from ray_rdt import _ffi, dlpack

# Each storage starts at a multiple of this many bytes in the region (wider
# than any element, and a cache line).
ALIGN = 64


def allocate(nbytes: int) -> Any:
    """A new uint8 CPU tensor of ``nbytes`` (zeroed) in the plugin's shared
    memory (``rdt_shared_memory_new``)."""
    out = (_ffi._c_void_p * 1)()
    _ffi.check(_ffi.lib().rdt_shared_memory_new(nbytes, out), "rdt_shared_memory_new")
    return dlpack.adopt(out, 1)[0]


def share_memory_(tensors) -> List[Any]:
    """Moves the storages of ``tensors`` (CPU tensors, or an ``nn.Module``: its
    parameters and buffers) into one region of the plugin's shared memory, in
    place, and returns the tensors. Each tensor keeps its identity, values,
    shape and strides (``Tensor.set_``; a parameter stays a parameter, and an
    optimizer that holds it keeps working); views of one storage stay views of
    one storage. Every tensor that views one of these storages must be passed
    (a module's all are): a tensor left out keeps the old storage and no
    longer shares memory with the others.

    Then an object of these tensors (``ray.put(weights,
    _tensor_transport="shm")`` or ``"nixl"``) is copied by each generator on
    this host straight from this memory into its targets, with no copy by this
    process. Raises ``ValueError`` for a tensor not on the CPU, and for one
    that an RDT object of this process still holds (move the tensors before
    putting them)."""
    import torch

    if isinstance(tensors, torch.nn.Module):
        items = list(tensors.parameters()) + list(tensors.buffers())
    else:
        items = list(tensors)
    for i, t in enumerate(items):
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            where = t.device if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"share_memory_ moves CPU tensors; item {i} is {where}")
    _refuse_held(items)
    # Each storage (by address) and where it goes in the region; each tensor
    # and where it will view the region, all read before any tensor moves (a
    # tensor may be given twice).
    placed = {}
    moves = []
    total = 0
    for t in items:
        storage = t.untyped_storage()
        if not storage.nbytes():
            continue
        if storage.data_ptr() not in placed:
            placed[storage.data_ptr()] = (storage, total)
            total += -(-storage.nbytes() // ALIGN) * ALIGN
        at = placed[storage.data_ptr()][1] // t.element_size() + t.storage_offset()
        moves.append((t, at, t.size(), t.stride()))
    if not placed:
        return items
    region = allocate(total)
    with torch.no_grad():
        for storage, at in placed.values():
            region[at : at + storage.nbytes()].copy_(torch.empty(0, dtype=torch.uint8).set_(storage))
        shared = region.untyped_storage()
        for t, at, size, stride in moves:
            t.set_(shared, at, size, stride)
    return items


def _refuse_held(tensors) -> None:
    """Raises ``ValueError`` if an RDT object of this process still holds one
    of ``tensors``: the object keeps reading the memory it was made of, which
    moving the tensor would free under it."""
    from ray_rdt import process

    ctx = process.peek_context()
    if ctx is None:
        return
    for i, t in enumerate(tensors):
        try:
            ctx.wait_tensor_freed(t, 0)
        except _ffi.RdtTimeoutError:
            raise ValueError(
                f"share_memory_: tensor {i} is held by an RDT object of this process (a ray.put or a task "
                "return not freed yet); move the tensors before putting them, or wait for the object to be "
                "freed (ray.experimental.wait_tensor_freed)"
            ) from None
