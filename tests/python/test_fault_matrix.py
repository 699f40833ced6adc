"""The fault matrix (issue 9, item 3): for every transport, kill the producer,
the consumer or the owner before, during and after a transfer.

Each transport moves its own bytes (``conftest.TRANSPORT_ONLY``: no same-host
path, nothing inline). The producer and consumer are ``benches/soak.py``'s
``SoakActor`` (16 MiB uint8 tensors whose bytes the consumer checks); the
owner is the driver, or, where the owner is the victim, an ``Owner`` actor that
creates the gloo group and submits the tasks (the actors themselves belong to
the driver, so they outlive it). Processes are killed with SIGKILL.

*During* is made deterministic with the plugin's test-only hold points
(``src/hold.rs``; every process of the module's cluster has
``RAY_RDT_TEST_HOLD_DIR`` set): the test arms one point in one process and
waits until that process reached it, kills the victim, then releases the point
if its process lives. ``serve`` holds the producer with the request accepted and
no byte sent (gloo, shm); ``fetch`` holds the consumer with the transfer under
way (all three; nixl's producer is not involved in a one-sided read, so a
producer killed during a nixl transfer dies while the consumer is held at
``fetch``). Points nobody armed are released at once by a thread of the test.

*Before*: the object exists (the producer's method returned) and the victim
dies before the consumer's task is submitted. *After*: the consumer's task
returned, then the victim dies.

Every cell asserts:

- nothing hangs: every wait is bounded (``ray.get(..., timeout=...)``);
- every error names its cause: a dependent of a dead actor raises
  ``ActorDiedError`` naming that actor (for the producer as for the consumer),
  a result borrowed from a dead owner ``OwnerDiedError``; for gloo, where a
  member died (the owner lives), the owner logs at ERROR ``RDT transfer with
  src actor ... and dst actor ... failed.`` and ``Destroyed collective group
  ... due to a hanging/failed RDT transfer`` (stock Ray 2.60's lines), also
  *after* a completed transfer: the survivor's group watch noticed the peer
  gone (stock logs them once a transfer hangs); in every cell some result
  depends on what died: the consumer's task of the transfer, or, where the
  owner died before it or the transfer was done, a consumer task the driver
  submits after the fault with its (own or borrowed) ref: that task receives
  the right bytes from the producer, which keeps the primary copy (stock Ray
  2.60 fails it with a RaySystemError; a deliberate difference);
- the survivors hold no RDT object, no more shm segments (memfds open or
  mapped), NIXL registrations (``ray_rdt.nixl_stats()``) or threads than after
  the warm-up transfer that preceded the fault; where the owner died, exactly
  its object's primary copy stays with the producer (as in stock Ray, whose
  producers free only on their owner's word);
- a later transfer between the survivors (a fresh actor replaces a dead one,
  the driver owns it) moves the bytes through the plugin; for gloo the new
  group is created at once (the dead member's group must be gone everywhere).

Actors that come out of a cell healthy serve the next cells; a failed cell,
and one whose owner died, discards its actors.
"""

import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time

import pytest

import ray
from ray.experimental.collective import create_collective_group, destroy_collective_group

from conftest import REPO, TRANSPORT_ONLY, Holds, wait_for

BENCHES = os.path.join(REPO, "benches")
sys.path.insert(0, BENCHES)
# Ray workers import the actor class from benches/soak.py by module name.
os.environ["PYTHONPATH"] = os.pathsep.join([BENCHES] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

import soak  # noqa: E402

HOLD_DIR = tempfile.mkdtemp(prefix="rdt-fault-holds-")
RAY_ENV = dict(TRANSPORT_ONLY, RAY_RDT_TEST_HOLD_DIR=HOLD_DIR)

TRANSPORTS = ("gloo", "shm", "nixl")
VICTIMS = ("producer", "consumer", "owner")
TIMINGS = ("before", "during", "after")

NBYTES = 16 << 20
# Bounds on every wait (none is a timing assertion: a healthy run takes a
# fraction of each).
RESULT_TIMEOUT_S = 30
HOLD_TIMEOUT_S = 60
DEATH_TIMEOUT_S = 20
CLEAN_TIMEOUT_S = 15
# The path each transport's bytes take in this module (consumer's counters).
PATH = {"gloo": "network", "shm": "same_host", "nixl": "network"}
# What the survivors must not hold more of after a fault than after the warm-up.
COUNTS = ("threads_not_grpc", "memfd_fds", "memfd_maps")
NIXL_COUNTS = ("exported_ranges", "exported_refs", "received")


@ray.remote(num_cpus=0)
class Owner:
    """An owner other than the driver: creates the gloo group, submits the
    producer's and the consumer's tasks, and holds their refs."""

    def setup(self, producer, consumer, transport, group):
        self.producer, self.consumer, self.transport = producer, consumer, transport
        self.refs = []
        if transport == "gloo":
            create_collective_group([producer, consumer], backend="torch_gloo", name=group)
        return os.getpid()

    def produce(self, i):
        """Runs the producer's method to completion; keeps its ref and returns
        it (in a list, so the caller borrows the ref itself)."""
        ref = getattr(self.producer, f"make_{self.transport}").remote(i, NBYTES)
        ray.wait([ref], timeout=RESULT_TIMEOUT_S, fetch_local=False)
        self.refs.append(ref)
        return [ref]

    def consume(self, i):
        """Submits the consumer's task on the last produced object; returns its
        result's ref (in a list, so the caller borrows the ref itself)."""
        out = self.consumer.take.remote(self.refs[-1], i, NBYTES)
        self.refs.append(out)
        return [out]

    def drop(self):
        self.refs = []
        return True


class Pool:
    """Healthy SoakActors for the cells, spares started ahead, and a fresh
    Owner started ahead for the next cell that kills one."""

    def __init__(self):
        self.idle = []
        self.spares = [self._spawn() for _ in range(2)]
        self.owner = Owner.remote()

    def take_owner(self):
        owner, self.owner = self.owner, Owner.remote()
        return owner

    @staticmethod
    def _spawn():
        return soak.SoakActor.options(num_cpus=0).remote()

    def take(self, n):
        out = []
        while len(out) < n:
            if self.idle:
                out.append(self.idle.pop(0))
            else:
                out.append(self.spares.pop(0))
                self.spares.append(self._spawn())
        ray.get([a.pid.remote() for a in out], timeout=120)
        return out

    def give(self, actors):
        self.idle.extend(actors)

    def shutdown(self):
        for a in self.idle + self.spares + [self.owner]:
            ray.kill(a)


@pytest.fixture(scope="module")
def holds(ray_cluster):
    h = Holds(HOLD_DIR, HOLD_TIMEOUT_S)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def pool(ray_cluster):
    p = Pool()
    yield p
    p.shutdown()


class ErrorLog:
    """ERROR records of the driver's loggers while a cell runs, read from
    pytest's ``caplog`` (its handler sits on the root logger; a handler of our
    own on Ray's loggers would not last: Ray reconfigures them)."""

    def __init__(self, caplog):
        self.caplog = caplog
        self.first = len(caplog.records)

    def __enter__(self):
        self.first = len(self.caplog.records)
        return self

    def __exit__(self, *exc):
        pass

    @property
    def messages(self):
        return [r.getMessage() for r in self.caplog.records[self.first :] if r.levelno >= logging.ERROR]


def kill(pid):
    """SIGKILLs ``pid`` and waits until it is gone (a zombie counts as gone)."""
    os.kill(pid, signal.SIGKILL)

    def gone():
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except OSError:
            return True

    assert wait_for(gone, timeout=DEATH_TIMEOUT_S), f"process {pid} still runs {DEATH_TIMEOUT_S} s after SIGKILL"


def expect_error(ref, error_type, names, what):
    """``ray.get(ref)`` must raise ``error_type`` (within the bound) with every
    string of ``names`` in its message."""
    try:
        value = ray.get(ref, timeout=RESULT_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        raise AssertionError(f"{what}: no result within {RESULT_TIMEOUT_S} s (hangs); expected {error_type.__name__}")
    except Exception as e:  # noqa: BLE001 - the type is what is checked
        text = str(e)
        assert isinstance(e, error_type), f"{what}: expected {error_type.__name__}, got {type(e).__name__}: {text[:2000]}"
        missing = [n for n in names if n not in text]
        assert not missing, f"{what}: the {type(e).__name__} does not name {missing}: {text[:2000]}"
        return
    raise AssertionError(f"{what}: expected {error_type.__name__}, got the value {value!r}")


def unclean(base, now, held):
    """What a survivor holds beyond its warm-up state: {what: (base, now)}."""
    out = {}
    if held:
        out["rdt_objects"] = (0, held)
    for k in COUNTS:
        if now[k] > base[k]:
            out[k] = (base[k], now[k])
    if now["nixl"] is None:
        out["nixl"] = "ray_rdt.nixl_stats() is missing: NIXL registrations cannot be read"
    else:
        for k in NIXL_COUNTS:
            if now["nixl"][k] > base["nixl"][k]:
                out[f"nixl.{k}"] = (base["nixl"][k], now["nixl"][k])
    return out


class Cell:
    """One cell of the matrix: its actors, its group, and the checks."""

    counter = 0

    def __init__(self, pool, holds, transport, victim, timing):
        Cell.counter += 1
        self.pool, self.holds = pool, holds
        self.transport, self.victim, self.timing = transport, victim, timing
        self.name = f"{transport}/{victim}/{timing}"
        self.group = f"fault-{Cell.counter}" if transport == "gloo" else None
        self.producer, self.consumer = pool.take(2)
        self.pids = dict(zip(("producer", "consumer"), ray.get([self.producer.pid.remote(), self.consumer.pid.remote()])))
        self.ids = {"producer": self.producer._actor_id.hex(), "consumer": self.consumer._actor_id.hex()}
        self.owner = None
        self.actors = [self.producer, self.consumer]
        self.driver_groups = []
        if victim == "owner":
            self.owner = pool.take_owner()
            self.pids["owner"] = ray.get(
                self.owner.setup.remote(self.producer, self.consumer, transport, self.group), timeout=120
            )
        elif self.group:
            create_collective_group([self.producer, self.consumer], backend="torch_gloo", name=self.group)
            self.driver_groups.append(self.group)
        self.i = 0

    # -- transfers -------------------------------------------------------------

    def _make(self, producer):
        self.i += 1
        return getattr(producer, f"make_{self.transport}").remote(self.i, NBYTES)

    def produce(self):
        """The producer's method has returned (through the owner: the driver
        borrows the ref)."""
        if self.owner:
            (ref,) = ray.get(self.owner.produce.remote(self.i + 1), timeout=RESULT_TIMEOUT_S)
            self.i += 1
            return ref
        ref = self._make(self.producer)
        ray.wait([ref], timeout=RESULT_TIMEOUT_S, fetch_local=False)
        return ref

    def consume(self, ref):
        """Submits the consumer's task (through the owner); returns its result's ref."""
        if self.owner:
            return ray.get(self.owner.consume.remote(self.i), timeout=RESULT_TIMEOUT_S)[0]
        return self.consume_directly(ref)

    def transfer(self):
        out = self.consume(self.produce())
        assert ray.get(out, timeout=RESULT_TIMEOUT_S), f"{self.name}: the consumer received wrong bytes"
        self.drop()

    def drop(self):
        if self.owner and self.victim_alive("owner"):
            ray.get(self.owner.drop.remote(), timeout=RESULT_TIMEOUT_S)

    def victim_alive(self, role):
        return role != self.victim or not getattr(self, "killed", False)

    # -- the fault -------------------------------------------------------------

    def warm_up(self):
        """One transfer over the cell's path; returns the pair's probes."""
        self.transfer()
        return soak.settle(self.producer, self.consumer)

    def hold_point(self):
        """(point, role) armed for *during*: see the module docs."""
        if self.victim == "producer" and self.transport != "nixl":
            return "serve", "producer"
        return "fetch", "consumer"

    def kill_victim(self):
        kill(self.pids[self.victim])
        self.killed = True

    def consume_directly(self, ref):
        """The consumer's task on object ``ref`` (the driver's own or borrowed
        ref), submitted by the driver itself; its result's ref.

        A gloo task needs a group its submitter knows (stock Ray looks the
        communicator up in the submitting process): where the dead owner made
        the group, the driver makes one of its own for the pair first."""
        if self.group and self.victim == "owner" and not self.driver_groups:
            name = f"{self.group}-driver"
            create_collective_group([self.producer, self.consumer], backend="torch_gloo", name=name)
            self.driver_groups.append(name)
        return self.consumer.take.remote(ref, self.i, NBYTES)

    def run_fault(self):
        """Kills the victim at the cell's time; returns the ref of a result
        that depends on what died: the consumer's task of the transfer, or
        (the owner dead before it, or the transfer done) one the driver
        submits after the fault."""
        if self.timing == "before":
            ref = self.produce()
            self.kill_victim()
            if self.victim == "owner":
                return self.consume_directly(ref)
            return self.consume(ref)
        if self.timing == "during":
            point, role = self.hold_point()
            pid = self.pids[role]
            self.holds.arm(point, pid)
            try:
                out = self.consume(self.produce())
                self.holds.wait_reached(point, pid)
                self.kill_victim()
            finally:
                self.holds.release(point, pid)
            return out
        ref = self.produce()
        out = self.consume(ref)
        assert ray.get(out, timeout=RESULT_TIMEOUT_S), f"{self.name}: the consumer received wrong bytes"
        self.kill_victim()
        return self.consume_directly(ref)

    def check_error(self, out):
        if self.victim == "owner" and self.timing != "during":
            # The driver's own task on a ref borrowed from the dead owner: the
            # producer still holds the primary copy (producers free only on
            # their owner's word), so the consumer receives the right bytes.
            # A deliberate difference: stock Ray 2.60 fails this task with
            # RaySystemError ("'_thread._local' object has no attribute
            # 'rdt_tensors'"; docs/ray-integration.md).
            value = ray.get(out, timeout=RESULT_TIMEOUT_S)
            # The group made for it is the driver's, not the cell's state.
            for g in self.driver_groups:
                destroy_collective_group(g)
            self.driver_groups = []
            assert value is True, f"{self.name}: the task on the ref borrowed from the dead owner returned {value!r}"
        elif self.victim == "owner":
            expect_error(out, ray.exceptions.OwnerDiedError, [], f"{self.name}: the result borrowed from the dead owner")
        else:
            expect_error(
                out,
                ray.exceptions.ActorDiedError,
                [self.ids[self.victim]],
                f"{self.name}: the consumer's task (the {self.victim}, actor {self.ids[self.victim]}, died)",
            )

    def check_logs(self, log):
        """gloo, a transfer failed, the driver owns it: stock Ray's two ERROR lines."""
        if self.transport != "gloo" or self.victim == "owner":
            return
        # A failed transfer's report names its src and dst; a report of the
        # group watch (a member saw its peer gone: "after", and often "before")
        # names the reporter and the dead member.
        p, c = self.ids["producer"], self.ids["consumer"]
        transfer = re.compile(
            rf"RDT transfer with src actor .*({p}.* and dst actor .*{c}|{c}.* and dst actor .*{p}).* failed\."
        )
        destroyed = f"Destroyed collective group {self.group} due to a hanging/failed RDT transfer"

        def both():
            return any(transfer.search(m) for m in log.messages) and any(destroyed in m for m in log.messages)

        # The owner handles a reported failure on its watcher thread, at once
        # but not before the dependent task's error reached the driver.
        assert wait_for(both, timeout=RESULT_TIMEOUT_S), (
            f"{self.name}: the owner did not log both ERROR lines (transfer failed, group {self.group} destroyed); "
            f"its ERROR records: {log.messages}"
        )

    def survivors(self):
        return [a for role, a in (("producer", self.producer), ("consumer", self.consumer)) if role != self.victim]

    def check_clean(self, base):
        """The survivors hold nothing of the failed transfer (bounded wait)."""
        survivors = self.survivors()
        bases = [b for role, b in zip(("producer", "consumer"), base) if role != self.victim]
        state = {}

        roles = [r for r in ("producer", "consumer") if r != self.victim]
        # A dead owner never frees: its producer keeps the object's primary
        # copy (and, for nixl, its registration) until the producer exits, as
        # in stock Ray 2.60, whose producers free only on the owner's
        # __ray_free__ (docs/ray-integration.md). Exactly that and no more.
        allowed = [self.owner_leftover(bases[i]) if r == "producer" and self.victim == "owner" else {} for i, r in enumerate(roles)]

        def clean():
            probes = ray.get([a.probe.remote() for a in survivors], timeout=RESULT_TIMEOUT_S)
            held = ray.get([a.collect.remote() for a in survivors], timeout=RESULT_TIMEOUT_S)
            state["unclean"] = [unclean(b, p, h) for b, p, h in zip(bases, probes, held)]
            return state["unclean"] == allowed

        wait_for(clean, timeout=CLEAN_TIMEOUT_S, interval=0.25)
        leftovers = {r: u for r, u, a in zip(roles, state["unclean"], allowed) if u != a}
        assert not leftovers, f"{self.name}: {CLEAN_TIMEOUT_S} s after the fault the survivors still hold {leftovers}"

    def owner_leftover(self, base):
        """What the producer of a dead owner's object keeps (see :meth:`check_clean`)."""
        out = {"rdt_objects": (0, 1)}
        if self.transport == "nixl":
            for k in ("exported_ranges", "exported_refs"):
                out[f"nixl.{k}"] = (base["nixl"][k], base["nixl"][k] + 1)
        return out

    def check_later_transfer(self):
        """Survivors (and a fresh actor for a dead one) transfer again, owned by the driver."""
        if self.victim == "producer":
            self.producer = self.pool.take(1)[0]
            self.actors.append(self.producer)
        elif self.victim == "consumer":
            self.consumer = self.pool.take(1)[0]
            self.actors.append(self.consumer)
        self.owner = None
        if self.group:
            if self.victim != "owner":
                # The plugin destroyed the dead member's group (check_logs
                # waited for it), also where no transfer failed ("after").
                self.driver_groups.remove(self.group)
            self.group = f"{self.group}-again"
            try:
                create_collective_group([self.producer, self.consumer], backend="torch_gloo", name=self.group)
            except Exception as e:  # noqa: BLE001 - reported with the cell
                raise AssertionError(
                    f"{self.name}: a new group of the survivors cannot be created at once: {type(e).__name__}: {e}"
                ) from e
            self.driver_groups.append(self.group)
        before = ray.get(self.consumer.stats.remote(self.transport))
        try:
            self.transfer()
        except Exception as e:  # noqa: BLE001 - reported with the cell
            raise AssertionError(f"{self.name}: the later transfer between the survivors failed: {type(e).__name__}: {e}") from e
        after = ray.get(self.consumer.stats.remote(self.transport))
        path = PATH[self.transport]
        moved = after["paths"][path]["bytes_received"] - before["paths"][path]["bytes_received"]
        assert moved == NBYTES, f"{self.name}: the later transfer moved {moved} bytes over the {path} path, not {NBYTES}"

    def close(self, healthy):
        """Destroys the driver's groups; healthy actors go back to the pool."""
        for g in self.driver_groups:
            try:
                destroy_collective_group(g)
            except Exception:  # noqa: BLE001 - cleanup after a failed cell
                pass
        alive = [a for a in self.actors if a is not None]
        if healthy:
            keep = [self.producer, self.consumer]
            self.pool.give(keep)
            alive = [a for a in alive if all(a is not k for k in keep)]
        for a in alive:
            ray.kill(a)


@pytest.mark.parametrize("timing", TIMINGS)
@pytest.mark.parametrize("victim", VICTIMS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_fault(ray_cluster, pool, holds, caplog, transport, victim, timing):
    """One cell. Every check runs (each wait is bounded) and the cell reports
    all that failed, so one run shows the whole matrix's state."""
    cell = Cell(pool, holds, transport, victim, timing)
    failures = []

    def check(step, *args):
        try:
            step(*args)
        except AssertionError as e:
            failures.append(str(e))

    try:
        base = cell.warm_up()
        with ErrorLog(caplog) as log:
            out = cell.run_fault()
            check(cell.check_error, out)
            del out
            check(cell.check_logs, log)
        check(cell.check_clean, base)
        check(cell.check_later_transfer)
    finally:
        # A dead owner's objects stay with the producer: its actors go.
        cell.close(healthy=not failures and victim != "owner")
    assert not failures, "\n".join(failures)
