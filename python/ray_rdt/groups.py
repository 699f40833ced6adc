"""Collective groups through the plugin (the GLOO transport).

``create_collective_group(actors, backend="torch_gloo")`` still creates Ray's
torch gloo group and, with the plugin on, the plugin's group of the same name:
rank 0's process serves a rendezvous store, every member joins it, and each
member knows the group's owner (the creating process) by its plugin contact.

A transfer that fails with a system error breaks the group in the member that
saw it, which reports it to the owner over the owner's plugin endpoint before
its failing call returns; a member whose group noticed a peer gone outside
any transfer (the plugin's group watch, ``src/engine/group_watch.rs``) reports
it too, and the owner acts on that only if Ray reports a member dead. The owner (:func:`handle_reported_failures`, from a
watcher thread that looks at the plugin's local queue five times a second, and
at the next ``create_collective_group``) logs what stock Ray logs and destroys the group
everywhere: on every live member (the plugin's group, Ray's collective group
and torch's default process group, which is bound to the broken world) and in
its own registry, so that the survivors can form a new group at once. Unlike
stock Ray it kills no actor: the plugin aborts a failed transfer itself (stock
kills both actors because NCCL cannot abort).
"""

import logging
import os
import threading
import time
from typing import Optional

import ray

from ray_rdt import _ffi
from ray_rdt import process
from ray_rdt.consumer import actor_dead

logger = logging.getLogger(__name__)
# Stock 2.60 logs failed RDT transfers here; operators' searches keep working.
_rdt_logger = logging.getLogger("ray.experimental.rdt.rdt_manager")

# Collective groups this process joined through the plugin: backend -> name.
_local_groups = {}
_local_groups_lock = threading.Lock()


def local_group(backend: str) -> Optional[str]:
    """The plugin group this process is in for ``backend``, if any."""
    with _local_groups_lock:
        return _local_groups.get(backend)


def group_timeout_s() -> float:
    """Bound on joining a group (``RAY_RDT_GROUP_TIMEOUT_S``, default 60)."""
    return float(os.environ.get("RAY_RDT_GROUP_TIMEOUT_S", "60"))


def _serve_rendezvous(self_actor) -> str:
    return process.get_context().rendezvous_serve(ray.util.get_node_ip_address())


def serve_rendezvous(actor) -> str:
    """Owner side of ``create_collective_group``: starts the group's rendezvous
    store in the process of rank 0 and returns its address."""
    return ray.get(actor.__ray_call__.remote(_serve_rendezvous))


def owner_contact() -> bytes:
    """Owner side of ``create_collective_group``: how the members reach this
    process to report failed transfers; starts the owner's failure watcher."""
    ctx = process.get_context()
    ctx.watch_group_failures(handle_reported_failures)
    return ctx.contact()


def join_group(name: str, backend: str, rank: int, world_size: int, address: str, owner: bytes = b""):
    """Runs in each member: joins the plugin's collective group ``name``."""
    from ray_rdt.transport_facts import FACTS

    ctx = process.get_context()
    ctx.group_create(name, FACTS[backend].code, rank, world_size, address, group_timeout_s(), owner)
    with _local_groups_lock:
        _local_groups[backend] = name


def destroy_local_group(name: str):
    """Runs in a member: leaves the plugin's group ``name`` (no error if absent)."""
    with _local_groups_lock:
        for backend in [b for b, n in _local_groups.items() if n == name]:
            del _local_groups[backend]
    ctx = process.peek_context()
    if ctx is None:
        return
    try:
        ctx.group_destroy(name)
    except _ffi.RdtNotFoundError:
        pass


def release_torch_world():
    """Runs in a member after Ray destroyed one of its collective groups: when
    Ray's collective layer holds no group of this process any more, destroys
    torch's default process group too. Ray's torch_gloo groups are subgroups of
    that one world, created by the first group and kept by stock 2.60, so a
    survivor of a dead member could never join a new group (its world's store
    died with the member: ``DistNetworkError``); with the world released, the
    next group starts a new one."""
    try:
        from ray.util.collective import collective as col

        if col._group_mgr._name_group_map:
            return
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # best effort: the group itself is destroyed
        logger.exception("releasing torch's default process group")


def _leave_broken_group(self_actor, name: str):
    """Runs in a live member after a system error broke group ``name``: leaves
    the plugin's group, Ray's collective group and torch's default process
    group (bound to the broken world), so that a new group can form."""
    destroy_local_group(name)
    try:
        import ray.util.collective as col

        if col.is_group_initialized(name):
            col.destroy_collective_group(name)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # best effort on a broken group
        logger.exception("tearing down torch's side of collective group %s", name)


class _FailureHandler:
    """The owner's handling of failed transfers its groups' members reported."""

    # Held for a whole handling, so that a group is destroyed everywhere before
    # create_collective_group (handle_reported_failures) goes on.
    lock = threading.RLock()

    @classmethod
    def handle(cls, failure: dict, stopping: Optional[threading.Event] = None):
        """Logs a reported failure as stock Ray does and destroys its group
        everywhere (once: both ends of a transfer may report it). Stops waiting
        for the members once ``stopping`` is set (Ray is shutting down)."""
        with cls.lock:
            cls._handle(failure, stopping)

    @classmethod
    def _handle(cls, failure: dict, stopping: Optional[threading.Event]):
        from ray.experimental.collective.collective import RemoteCommunicatorManager

        if not ray.is_initialized():
            return
        manager = RemoteCommunicatorManager.get()
        comm = next((c for c in manager.get_collective_groups() if c.name == failure["group"]), None)
        if comm is None:
            return  # destroyed already
        actors = comm.actors

        def actor(rank):
            return actors[rank] if rank < len(actors) else f"rank {rank}"

        reporter = failure["reporter_rank"]
        if failure["src_rank"] == failure["dst_rank"] == reporter and set(failure["object_id"]) <= {"0"}:
            # A member noticed a peer gone outside any transfer: destroy the
            # group only if Ray reports a member dead (a peer that merely left
            # the group, e.g. a destroy in progress, closes its connections too).
            dead = [rank for rank, a in enumerate(actors) if actor_dead(a._actor_id.hex())]
            if not dead:
                return
            src, dst, what = reporter, dead[0], "no transfer can complete in this group"
        else:
            src, dst, what = failure["src_rank"], failure["dst_rank"], f"object {failure['object_id']}"
        manager.remove_remote_communicator(comm.name)
        _rdt_logger.error(
            "RDT transfer with src actor %s and dst actor %s failed. The plugin aborted the transfer; "
            "both actors stay alive. Transfer failed with exception: %s (%s, reported by rank %d)",
            actor(src),
            actor(dst),
            failure["cause"],
            what,
            reporter,
        )
        tasks = [
            a.__ray_call__.options(concurrency_group="_ray_system").remote(_leave_broken_group, comm.name)
            for a in actors
        ]
        for task in _finished(tasks, group_timeout_s(), stopping):
            try:
                ray.get(task)
            except ray.exceptions.RayActorError:
                pass  # a dead member has nothing left to leave
            except Exception:
                logger.exception("leaving broken collective group %s", comm.name)
        _rdt_logger.error("Destroyed collective group %s due to a hanging/failed RDT transfer", comm.name)


def _finished(tasks: list, timeout_s: float, stopping: Optional[threading.Event]) -> list:
    """The ``tasks`` that finish within ``timeout_s``, waited for in short
    rounds so that a set ``stopping`` ends the wait within one round (a member
    on a dead node answers only when Ray notices the node gone, seconds later;
    Ray's shutdown must not find this thread inside Ray)."""
    deadline = time.monotonic() + timeout_s
    done, pending = [], list(tasks)
    while pending and not (stopping is not None and stopping.is_set()):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=min(left, 0.2))
        done += ready
    return done


def handle_reported_failures(manager=None, stopping: Optional[threading.Event] = None):
    """Owner side, at ``create_collective_group`` and from the failure watcher
    (which passes ``stopping``): handles the failures already reported, so that
    survivors of a failed transfer can form a new group at once."""
    ctx = process.peek_context()
    if ctx is None:
        return
    # Taken and handled under one lock: a caller finds every reported failure
    # handled when this returns, also one the watcher thread was handling.
    with _FailureHandler.lock:
        while stopping is None or not stopping.is_set():
            failure = ctx.next_group_failure(0)
            if failure is None:
                return
            _FailureHandler.handle(failure, stopping)
