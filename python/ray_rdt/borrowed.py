"""The RDT metadata of borrowed refs, and when a borrower lets go of it.

Ray 2.60 keeps the RDT metadata of every ref a process ever borrowed
(``rdt_manager._managed_rdt_metadata``; its own note, ray#57962: "Metadata is
currently not removed on borrowers that borrow through the NIXL ray.put /
ray.get"). A generator that gets the trainer's ref every step keeps one more
entry a step: for a plugin object the entry holds the object's record (about
60 KB for 10,000 tensors; stock 2.60's entry holds a ``(shape, dtype)`` per
tensor, more). ``ci/bench weights-soak`` measured +126 MiB of heap in each
generator over 2,000 steps of a 64 MiB model of 10,000 tensors.

The plugin notes each RDT ref this process borrows (one another process owns)
as Ray deserializes it. Once it has noted twice as many as were left at its
last look (at least :data:`FIRST_LOOK`, and an eighth of all the refs the
process held then), it drops the metadata, and any target or target device,
of the noted refs that Ray's reference counter no longer lists: no reference
to them is left in this process, so no ``ray.get`` of them can come. At most
two listings of the counts per doubling (see :func:`_forget_unreferenced` for
why two): amortized constant work per ref.
"""

import threading
from typing import Set, Tuple

import ray

from ray_rdt import targets

# The fewest borrowed refs noted before the first look at the reference counts.
FIRST_LOOK = 64

_lock = threading.Lock()
_noted: Set[str] = set()
_next_look = FIRST_LOOK


def _owned_here(worker, owner_address: bytes) -> bool:
    """Whether ``owner_address`` (a serialized ``rpc::Address``) is this worker's."""
    from ray.core.generated.common_pb2 import Address

    address = Address()
    address.ParseFromString(owner_address)
    return address.worker_id == worker.core_worker.get_worker_id().binary()


def ref_deserialized(obj_ref, owner_address: bytes) -> None:
    """Ray deserialized the RDT ref ``obj_ref``, owned by ``owner_address``,
    in this process (and set its metadata): a borrowed one is noted (see
    :func:`note`)."""
    worker = ray._private.worker.global_worker
    if _owned_here(worker, owner_address):
        return  # the owner's free drops it
    note(obj_ref.hex())


def set_targets(ref, tensors) -> bool:
    """``set_target_for_ref`` (:func:`ray_rdt.targets.set_targets`), the ref
    noted (see :func:`note`)."""
    return _note_if_held(ref, targets.set_targets(ref, tensors))


def set_target_device(ref, device: str) -> bool:
    """``set_target_device_for_ref`` (:func:`ray_rdt.targets.set_target_device`),
    the ref noted (see :func:`note`)."""
    return _note_if_held(ref, targets.set_target_device(ref, device))


def _note_if_held(ref, held: bool) -> bool:
    if held:
        note(ref.hex())
    return held


def note(ref_hex: str) -> None:
    """Notes a ref this process keeps something of (RDT metadata, targets or
    a target device); every doubling of the noted refs drops what the gone
    ones kept (see the module docs). Targets are noted too: a borrowed ref of
    a collective object carries no metadata (Ray serializes it before its
    producer reported any), and targets named on it whose fetch never comes
    would otherwise stay for good."""
    global _next_look
    worker = ray._private.worker.global_worker
    with _lock:
        _noted.add(ref_hex)
        if len(_noted) < _next_look:
            return
        looked_at = set(_noted)
    gone, listed = _forget_unreferenced(worker, looked_at)
    with _lock:
        _noted.difference_update(gone)
        # A listing costs what the process references in all: a process
        # holding many refs looks less often (at most 8 listed per noted).
        _next_look = max(FIRST_LOOK, 2 * len(_noted), listed // 8)


def _forget_unreferenced(worker, ids: Set[str]) -> Tuple[Set[str], int]:
    """Drops the RDT metadata, targets and target device of each of ``ids``
    that Ray's reference counter no longer lists; returns those ids, and how
    many refs the counter listed.

    No lock is held while the counts are listed (Ray's reference counter has
    its own). A ref of one of the ids that is deserialized again meanwhile
    registers with the counter before Ray sets its metadata: registered
    before the first listing, it is kept; before the second, what was
    dropped is put back (unless Ray set it again already); after it, Ray sets
    it again itself."""
    manager = worker.rdt_manager
    listed = worker.core_worker.get_all_reference_counts()
    unlisted = {i for i in ids if i.encode() not in listed}
    if not unlisted:
        return unlisted, len(listed)
    with manager._lock:
        dropped = {i: manager._managed_rdt_metadata.pop(i, None) for i in unlisted}
    held = {i: targets.drop(i) for i in unlisted}
    listed = worker.core_worker.get_all_reference_counts()
    back = {i for i in unlisted if i.encode() in listed}
    with manager._lock:
        for i in back:
            if dropped[i] is not None:
                manager._managed_rdt_metadata.setdefault(i, dropped[i])
    for i in back:
        targets.restore(i, held[i])
    return unlisted - back, len(listed)
