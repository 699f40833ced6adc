"""Weight sync at the shape RL uses, through the plugin on a local cluster: a
model of 100,000 tensors (the rows of one matrix), every transport and path,
``set_target_for_ref`` landing the bytes in the generator's own weights (in
the owner and in a borrower), 2.60's target checks, several refs of one
``ray.get`` fetched at once, several generators served at once and sharing
one staged copy (a lone one reading the trainer's memory directly), and a
death during a staged read.

Every transfer is checked byte for byte and against the plugin's counters;
concurrency is shown with the plugin's hold points and in-flight gauges,
never with timing."""

import os
import tempfile
import threading

import pytest
import torch

import ray
from ray.exceptions import ActorDiedError
from ray.experimental import set_target_for_ref
from ray.experimental.collective import create_collective_group

from conftest import Holds, actor_stats, delta, shared_regions, staging_segments, wait_for
from holds import pid_alive

N = 100_000  # tensors
ROW = 8  # int32 elements per tensor: 32 bytes, 3.2 MB in all

HOLD_DIR = tempfile.mkdtemp(prefix="rdt-weights-holds-")
# Environments of the actors, by path: the same-host path (default), the
# declared transport's own path (network, over loopback here), inline.
PATH_ENV = {
    "same_host": {},
    "network": {"RAY_RDT_SAME_HOST_PATH": "0", "RAY_RDT_INLINE_BYTES": "0"},
    "inline": {"RAY_RDT_INLINE_BYTES": str(8 << 20)},
}
# Where each transport's bytes go on each path (shm has only the same host).
CASES = [
    ("shm", "same_host"),
    ("shm", "inline"),
    ("nixl", "same_host"),
    ("nixl", "network"),
    ("nixl", "inline"),
    ("gloo", "same_host"),
    ("gloo", "network"),
    ("gloo", "inline"),
]
HOLDS = {"RAY_RDT_TEST_HOLD_DIR": HOLD_DIR}


def expected_rows(seed=0):
    return (torch.arange(N * ROW, dtype=torch.int32) + seed).view(N, ROW)


@ray.remote(max_concurrency=4)
class Trainer:
    """Holds a model (one matrix) and returns or puts its rows."""

    def __init__(self):
        self.w = expected_rows()

    def step(self, seed):
        self.w.copy_(expected_rows(seed))

    def _rows(self):
        return [self.w[i] for i in range(N)]

    @ray.method(tensor_transport="shm")
    def rows_shm(self):
        return self._rows()

    @ray.method(tensor_transport="nixl")
    def rows_nixl(self):
        return self._rows()

    @ray.method(tensor_transport="gloo")
    def rows_gloo(self):
        return self._rows()

    @ray.method(tensor_transport="gloo")
    def first_row_gloo(self):
        return [self.w[0]]

    @ray.method(tensor_transport="shm")
    def separate_shm(self):
        # Separate allocations, not views of one.
        return [row.clone() for row in self._rows()]

    def put(self, transport, chunks=1):
        """The rows as ``chunks`` refs (ray.put; one-sided transports)."""
        rows = self._rows()
        step = N // chunks
        return [ray.put(rows[i * step : (i + 1) * step], _tensor_transport=transport) for i in range(chunks)]

    def extents(self, ref_hex):
        """(extents, bytes) of the record this process holds for a task return."""
        import ray_rdt
        from ray_rdt import _ffi, process

        record = process.get_context().record(ref_hex)
        return _ffi.record_extents(record), ray_rdt.nixl_stats()

    def concurrency(self):
        import ray_rdt

        return ray_rdt.concurrency_stats()

    def pid(self):
        return os.getpid()

    def share_memory(self):
        """Moves the model into the plugin's shared memory (in place)."""
        import ray_rdt

        ray_rdt.share_memory_([self.w])
        return self.w.data_ptr()


@ray.remote(max_concurrency=4)
class Generator:
    """Holds its own copy of the model and syncs it from the trainer."""

    def __init__(self):
        self.w = torch.zeros(N, ROW, dtype=torch.int32)

    def check(self, rows, seed=0):
        """A task argument: every byte of every row."""
        return len(rows) == N and bool(torch.equal(torch.stack(rows), expected_rows(seed)))

    def sync(self, refs, seed=0, temporary=False):
        """Pulls the weights straight into ``self.w``'s rows (a borrower's
        set_target_for_ref); returns whether ray.get returned the very
        targets, and whether every weight arrived."""
        views = [self.w[i] for i in range(N)]
        if temporary:
            # Only temporaries: 2.60's weak references would drop them.
            set_target_for_ref(refs[0], [self.w[i] for i in range(N)])
        else:
            set_target_for_ref(refs[0], views)
        got = ray.get(refs[0])
        same = all(a.data_ptr() == b.data_ptr() for a, b in zip(got, views))
        identical = temporary or all(a is b for a, b in zip(got, views))
        return same and identical, bool(torch.equal(self.w, expected_rows(seed)))

    def weights(self):
        return self.w

    def expect(self, refs):
        """Names temporary views of ``self.w``'s rows as the targets of the
        collective object in ``refs`` (borrowed), which a later task of this
        actor receives as its argument."""
        set_target_for_ref(refs[0], [self.w[i] for i in range(N)])

    def landed(self, rows, seed=0):
        """A task argument received into the targets :meth:`expect` set:
        whether the rows are ``self.w``'s own rows, and whether every weight
        arrived."""
        base, size = self.w.data_ptr(), ROW * self.w.element_size()
        own = len(rows) == N and all(r.data_ptr() == base + i * size for i, r in enumerate(rows))
        return own, bool(torch.equal(self.w, expected_rows(seed)))

    def get_chunks(self, refs, seed=0):
        """ray.get of several refs at once (a model in chunks)."""
        got = ray.get(refs)
        rows = [row for chunk in got for row in chunk]
        return bool(torch.equal(torch.stack(rows), expected_rows(seed)))

    def keep(self, refs):
        """Keeps the first of ``refs`` (borrowed) for later."""
        self.kept = refs[0]

    def get_kept(self, seed):
        """ray.get of the kept ref: whether its rows are the first chunk's."""
        rows = ray.get(self.kept)
        return bool(torch.equal(torch.stack(rows), expected_rows(seed)[: len(rows)]))

    def rdt_metadata_entries(self):
        """How many refs Ray's RDT manager keeps metadata for here (a stock internal)."""
        import gc

        gc.collect()
        return len(ray._private.worker.global_worker.rdt_manager._managed_rdt_metadata)

    def concurrency(self):
        import ray_rdt

        return ray_rdt.concurrency_stats()

    def pid(self):
        return os.getpid()


def make(cls, path, extra=None):
    env = dict(PATH_ENV[path], **(extra or {}))
    return cls.options(runtime_env={"env_vars": env}).remote()


@pytest.fixture(scope="module")
def pairs(ray_cluster):
    """A trainer and a generator per path, the gloo ones in a group."""
    out = {}
    for path in PATH_ENV:
        trainer, generator = make(Trainer, path), make(Generator, path)
        create_collective_group([trainer, generator], backend="torch_gloo")
        out[path] = (trainer, generator)
    return out


@pytest.mark.parametrize("transport,path", CASES)
def test_a_hundred_thousand_rows_arrive_byte_exact(pairs, transport, path):
    trainer, generator = pairs[path]
    before = actor_stats(generator, transport)["paths"][path]
    ref = getattr(trainer, f"rows_{transport}").remote()
    assert ray.get(generator.check.remote(ref))
    after = actor_stats(generator, transport)["paths"][path]
    assert delta(after, before) == N * ROW * 4
    assert delta(after, before, "transfers") == 1
    # The rows of one matrix are one extent of the record (one mapping, one
    # registration, one message stream), not 100,000.
    (extents, nbytes), _ = ray.get(trainer.extents.remote(ref.hex()))
    assert (extents, nbytes) == (1, N * ROW * 4)


def test_nixl_registers_the_rows_of_one_matrix_once(pairs):
    trainer, generator = pairs["network"]
    ref = trainer.rows_nixl.remote()
    assert ray.get(generator.check.remote(ref))
    _, nixl = ray.get(trainer.extents.remote(ref.hex()))
    # This object's registration, and no other one is alive in the trainer.
    assert nixl["exported_ranges"] == 1 and nixl["exported_refs"] == 1


def test_separate_allocations_arrive_byte_exact(pairs):
    trainer, generator = pairs["same_host"]
    before = actor_stats(generator, "shm")
    assert ray.get(generator.check.remote(trainer.separate_shm.remote()))
    assert delta(actor_stats(generator, "shm"), before) == N * ROW * 4


@pytest.mark.parametrize("transport", ["shm", "nixl"])
@pytest.mark.parametrize("path", ["same_host", "network"])
def test_a_borrower_syncs_straight_into_its_weights(pairs, transport, path):
    if transport == "shm" and path == "network":
        pytest.skip("shm has only the same-host path")
    trainer, generator = pairs[path]
    for seed, temporary in ((1, False), (2, True)):
        ray.get(trainer.step.remote(seed))
        before = actor_stats(generator, transport)["paths"][path]
        refs = ray.get(trainer.put.remote(transport))
        returned_targets, synced = ray.get(generator.sync.remote(refs, seed, temporary))
        assert synced and returned_targets
        assert delta(actor_stats(generator, transport)["paths"][path], before) == N * ROW * 4


@pytest.mark.parametrize("transport", ["shm", "nixl"])
def test_the_owner_gets_into_its_targets(pairs, transport):
    trainer, _ = pairs["same_host"]
    ray.get(trainer.step.remote(3))
    ref = getattr(trainer, f"rows_{transport}").remote()
    weights = torch.zeros(N, ROW, dtype=torch.int32)
    targets = [weights[i] for i in range(N)]
    set_target_for_ref(ref, targets)
    got = ray.get(ref)
    assert all(a is b for a, b in zip(got, targets))
    assert torch.equal(weights, expected_rows(3))


@pytest.mark.parametrize(
    "bad,message",
    [
        (lambda w: [w[i] for i in range(N - 1)], "Length of tensor_buffers (99999) does not match"),
        (
            lambda w: [w[i] for i in range(N - 1)] + [torch.zeros(ROW + 1, dtype=torch.int32)],
            "Shape of tensor_buffer at index 99999",
        ),
        (
            lambda w: [w[i] for i in range(N - 1)] + [torch.zeros(ROW, dtype=torch.float32)],
            "Dtype of tensor_buffer at index 99999",
        ),
        (lambda w: [w[i] for i in range(N - 1)] + [w[0]], "Tensor buffers at index 0 and 99999 overlap"),
    ],
    ids=["count", "shape", "dtype", "overlap"],
)
def test_targets_that_do_not_match_are_refused_before_any_byte_moves(pairs, bad, message):
    trainer, _ = pairs["same_host"]
    ref = trainer.rows_shm.remote()
    weights = torch.full((N, ROW), -7, dtype=torch.int32)
    set_target_for_ref(ref, bad(weights))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ray.get(ref)
    assert bool((weights == -7).all())


@pytest.mark.parametrize("path", ["same_host", "network", "inline"])
def test_a_gloo_argument_lands_in_the_targets_its_receiver_set(pairs, path):
    """2.60 refuses ``ray.get`` of a collective object, so a generator names
    its targets on the ref it borrowed (inside a list); the ref's next arrival
    as its task argument lands in them, and the argument is its own weights
    (docs/design.md, "Targets of a collective object")."""
    trainer, generator = pairs[path]
    ray.get(trainer.step.remote(5))
    before = actor_stats(generator, "gloo")["paths"][path]
    ref = trainer.rows_gloo.remote()
    # A threaded actor runs one caller's tasks in any order: wait for it.
    ray.get(generator.expect.remote([ref]))
    assert ray.get(generator.landed.remote(ref, 5)) == (True, True)
    assert delta(actor_stats(generator, "gloo")["paths"][path], before) == N * ROW * 4


def test_gloo_targets_that_do_not_match_fail_the_task_before_any_byte_moves(pairs):
    trainer, generator = pairs["network"]
    ray.get(trainer.step.remote(6))
    before = ray.get(generator.weights.remote())
    ref = trainer.rows_gloo.remote()

    def fewer(self, refs):
        set_target_for_ref(refs[0], [self.w[i] for i in range(N - 1)])

    ray.get(generator.__ray_call__.remote(fewer, [ref]))
    with pytest.raises(ValueError, match=r"Length of tensor_buffers \(99999\) does not match"):
        ray.get(generator.landed.remote(ref, 6))
    assert torch.equal(ray.get(generator.weights.remote()), before)
    # The targets went with the failed task: the ref's next arrival is new tensors.
    assert ray.get(generator.check.remote(ref, 6))


def test_gloo_objects_are_still_refused_by_ray_get(pairs):
    trainer, _ = pairs["same_host"]
    ref = trainer.rows_gloo.remote()
    set_target_for_ref(ref, [torch.zeros(ROW, dtype=torch.int32) for _ in range(N)])
    with pytest.raises(ValueError, match="ray.get\\(\\) only supports OBJECT_STORE and NIXL"):
        ray.get(ref)


@pytest.fixture(scope="module")
def held(ray_cluster):
    """A trainer and generators whose processes stop at the plugin's hold
    points (the generator before its bytes arrive, the trainer before it
    serves), driven by :class:`conftest.Holds`."""
    holds = Holds(HOLD_DIR)
    env = dict(HOLDS)
    trainer = make(Trainer, "same_host", env)
    generators = [make(Generator, "same_host", env) for _ in range(3)]
    yield holds, trainer, generators
    holds.stop()


def test_the_refs_of_one_get_are_fetched_at_once(held):
    holds, trainer, (generator, *_) = held
    pid = ray.get(generator.pid.remote())
    refs = ray.get(trainer.put.remote("shm", chunks=2))
    holds.arm("fetch", pid)
    result = generator.get_chunks.remote(refs)
    try:
        holds.wait_reached("fetch", pid)
        # Both fetches are under way while the first is held: a get that
        # fetched one ref after the other would never show two.
        assert wait_for(lambda: ray.get(generator.concurrency.remote())["fetching"] == 2, timeout=30), ray.get(
            generator.concurrency.remote()
        )
    finally:
        holds.release("fetch", pid)
    assert ray.get(result)


def test_generators_are_served_at_once(held):
    holds, trainer, generators = held
    pid = ray.get(trainer.pid.remote())
    ref = trainer.rows_shm.remote()
    holds.arm("serve", pid)
    results = [g.check.remote(ref) for g in generators]
    try:
        holds.wait_reached("serve", pid)
        # Every generator's request is being served while the first is held.
        assert wait_for(lambda: ray.get(trainer.concurrency.remote())["serving"] == len(generators), timeout=30), ray.get(
            trainer.concurrency.remote()
        )
    finally:
        holds.release("serve", pid)
    assert all(ray.get(results))


def test_generators_syncing_at_once_share_one_staged_copy(held):
    # Into targets on one host, several generators reading one object at once
    # are served from one copy: the trainer copies the model into a staging
    # segment and each generator copies from there. All three generators are
    # held after the trainer answered them and before they said they are
    # done, so they are readers of one object at once: one segment in the
    # trainer, the same one in every generator that did not read the
    # trainer's memory directly (the first, if the object before had one
    # reader).
    holds, trainer, generators = held
    pids = ray.get([g.pid.remote() for g in generators])
    trainer_pid = ray.get(trainer.pid.remote())
    refs = ray.get(trainer.put.remote("shm"))
    for pid in pids:
        holds.arm("fetch", pid)
    results = [g.sync.remote(refs) for g in generators]
    try:
        for pid in pids:
            holds.wait_reached("fetch", pid)
        staged = staging_segments(trainer_pid)
        assert len(staged) == 1, staged
        mapped = sorted(len(staging_segments(pid) & staged) for pid in pids)
        assert mapped in ([0, 1, 1], [1, 1, 1]), mapped
    finally:
        for pid in pids:
            holds.release("fetch", pid)
    assert ray.get(results) == [(True, True)] * len(generators)
    # The next step is staged from its first reader on (the step before had
    # three readers at once), reusing the segment on both sides: every
    # generator maps it, and no process maps another.
    ray.get(trainer.step.remote(5))
    refs = ray.get(trainer.put.remote("shm"))
    assert ray.get([g.sync.remote(refs, 5) for g in generators]) == [(True, True)] * len(generators)
    assert staging_segments(trainer_pid) == staged
    assert [staging_segments(pid) for pid in pids] == [staged] * len(pids)
    ray.get(trainer.step.remote(0))


@pytest.mark.parametrize("memory", ["private", "shared"])
@pytest.mark.parametrize("victim", ["generator", "trainer"])
def test_a_death_during_a_staged_read_fails_only_what_depended_on_it(held, victim, memory):
    # Three generators read one staged copy (or, with the trainer's model in
    # shared memory, its region in place); all are held mid-read (the trainer
    # answered them, no byte copied) when one of them, or the trainer, is
    # killed. A dead generator costs the others nothing: they complete
    # byte-exact, and the trainer still maps one staging segment (none for
    # shared memory). A dead trainer fails every sync with an error, never a
    # hang.
    holds, _, _ = held
    trainer = make(Trainer, "same_host", HOLDS)
    generators = [make(Generator, "same_host", HOLDS) for _ in range(3)]
    staged = 1
    if memory == "shared":
        ray.get(trainer.share_memory.remote())
        staged = 0
    # A first step with three readers: the next is staged from its first reader.
    refs = ray.get(trainer.put.remote("shm"))
    assert ray.get([g.sync.remote(refs) for g in generators]) == [(True, True)] * 3
    trainer_pid = ray.get(trainer.pid.remote())
    pids = ray.get([g.pid.remote() for g in generators])
    ray.get(trainer.step.remote(6))
    refs = ray.get(trainer.put.remote("shm"))
    for pid in pids:
        holds.arm("fetch", pid)
    calls = [g.sync.remote(refs, 6) for g in generators]
    try:
        for pid in pids:
            holds.wait_reached("fetch", pid)
        ray.kill(generators[0] if victim == "generator" else trainer)
        # Released only once the victim's process is gone.
        victim_pid = pids[0] if victim == "generator" else trainer_pid
        assert wait_for(lambda: not pid_alive(victim_pid), timeout=30)
    finally:
        for pid in pids:
            holds.release("fetch", pid)
    if victim == "generator":
        with pytest.raises(ActorDiedError):
            ray.get(calls[0], timeout=60)
        assert ray.get(calls[1:], timeout=60) == [(True, True)] * 2
        assert len(staging_segments(trainer_pid)) == staged
        ray.get(trainer.step.remote(7))
        refs = ray.get(trainer.put.remote("shm"))
        assert ray.get([g.sync.remote(refs, 7) for g in generators[1:]], timeout=60) == [(True, True)] * 2
        assert len(staging_segments(trainer_pid)) == staged
    else:
        for call in calls:
            with pytest.raises((ActorDiedError, ray.exceptions.RayTaskError)) as failed:
                ray.get(call, timeout=60)
            assert "died" in str(failed.value) or "gone" in str(failed.value), failed.value
    for actor in [trainer, *generators]:
        ray.kill(actor)


def test_a_lone_generator_reads_the_trainers_memory_directly(ray_cluster):
    # One reader at a time costs the trainer nothing: no staging segment on
    # either side, step after step.
    trainer, generator = make(Trainer, "same_host"), make(Generator, "same_host")
    for seed in (1, 2):
        ray.get(trainer.step.remote(seed))
        refs = ray.get(trainer.put.remote("shm"))
        assert ray.get(generator.sync.remote(refs, seed)) == (True, True)
    pids = ray.get([trainer.pid.remote(), generator.pid.remote()])
    assert [staging_segments(pid) for pid in pids] == [set(), set()]
    for actor in (trainer, generator):
        ray.kill(actor)


@pytest.mark.parametrize("transport", ["shm", "nixl"])
def test_weights_in_shared_memory_are_read_in_place(ray_cluster, transport):
    # A trainer whose model lives in the plugin's shared memory
    # (ray_rdt.share_memory_) copies nothing for its generators: no staging
    # segment in any process, and every generator maps the trainer's region
    # and copies from it into its own weights, step after step, while the
    # trainer updates the model in place.
    trainer = make(Trainer, "same_host")
    generators = [make(Generator, "same_host") for _ in range(2)]
    ray.get(trainer.share_memory.remote())
    trainer_pid = ray.get(trainer.pid.remote())
    pids = ray.get([g.pid.remote() for g in generators])
    region = shared_regions(trainer_pid)
    assert len(region) == 1, region
    for seed in (8, 9):
        ray.get(trainer.step.remote(seed))
        before = [actor_stats(g, transport)["paths"]["same_host"] for g in generators]
        refs = ray.get(trainer.put.remote(transport))
        assert ray.get([g.sync.remote(refs, seed) for g in generators]) == [(True, True)] * 2
        for g, b in zip(generators, before):
            assert delta(actor_stats(g, transport)["paths"]["same_host"], b) == N * ROW * 4
        assert [shared_regions(pid) for pid in pids] == [region] * 2
        assert [staging_segments(pid) for pid in [trainer_pid, *pids]] == [set()] * 3
    for actor in [trainer, *generators]:
        ray.kill(actor)


def test_a_borrower_keeps_no_metadata_of_refs_it_no_longer_holds(pairs):
    """2.60 keeps a borrower's RDT metadata of every ref it ever borrowed
    (ray#57962): a generator syncing every step grows by one entry (the
    object's record) a step. The plugin drops the entries of refs the
    borrower no longer holds; a ref it still holds keeps its entry and is
    still read."""
    trainer, generator = pairs["same_host"]
    ray.get(trainer.step.remote(7))
    refs = ray.get(trainer.put.remote("shm", chunks=100))
    ray.get(generator.keep.remote(refs))
    borrowed = len(refs)
    del refs
    for seed in (8, 9, 10):
        ray.get(trainer.step.remote(seed))
        refs = ray.get(trainer.put.remote("shm", chunks=100))
        assert ray.get(generator.get_chunks.remote(refs, seed))
        borrowed += len(refs)
        del refs
    # Stock 2.60 keeps all 400; the plugin keeps the refs still held (the
    # kept one, and the last step's until Ray lets go of them) and the ones
    # borrowed since its last look.
    assert ray.get(generator.rdt_metadata_entries.remote()) <= 2 * 100 + 1 < borrowed
    assert ray.get(generator.get_kept.remote(10))


def test_a_borrower_drops_the_targets_of_refs_it_let_go(pairs):
    """Targets named on a borrowed ref whose fetch never comes (a step given
    up) go once the borrower no longer holds the ref, as its RDT metadata
    does (borrowed.py): a ref of a collective object carries no metadata to
    drop, so only its targets would be left, for good."""
    trainer, generator = pairs["same_host"]

    def name_targets(self, refs):
        from ray.experimental import set_target_for_ref

        for ref in refs:
            set_target_for_ref(ref, [self.w[0]])

    def held(self):
        from ray_rdt import targets

        return len(targets._held)

    before = ray.get(generator.__ray_call__.remote(held))
    batch = 150
    for _ in range(3):
        refs = [trainer.first_row_gloo.remote() for _ in range(batch)]
        ray.get(generator.__ray_call__.remote(name_targets, refs))
        del refs
    # Kept: the refs noted since the last look (at most two batches), not all.
    assert ray.get(generator.__ray_call__.remote(held)) - before <= 2 * batch


def test_a_temporary_target_list_is_not_dropped(pairs):
    # 2.60 keeps weak references: a list made on the spot dies before the get.
    trainer, generator = pairs["same_host"]
    ray.get(trainer.step.remote(4))
    refs = ray.get(trainer.put.remote("nixl"))
    returned_targets, synced = ray.get(generator.sync.remote(refs, 4, True))
    assert synced and returned_targets


def test_many_threads_share_nothing(pairs):
    """Two threads of one process get into their own targets at once."""
    trainer, _ = pairs["same_host"]
    ray.get(trainer.step.remote(5))
    outcomes = []

    def one():
        ref = trainer.rows_shm.remote()
        weights = torch.zeros(N, ROW, dtype=torch.int32)
        set_target_for_ref(ref, [weights[i] for i in range(N)])
        ray.get(ref)
        outcomes.append(torch.equal(weights, expected_rows(5)))

    threads = [threading.Thread(target=one) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert outcomes == [True, True]


@ray.remote
class PoolTrainer:
    """A trainer that registers a NIXL memory pool, as Ray's weight-transfer
    script does (``register_nixl_memory_pool``)."""

    def __init__(self, pool_bytes):
        from ray.experimental import register_nixl_memory_pool

        self.w = expected_rows()
        register_nixl_memory_pool(pool_bytes, torch.device("cpu"))

    def put_then_change(self, seed, registered=False):
        """Puts the rows, then changes the weights before anyone reads them."""
        from ray.experimental import deregister_nixl_memory, register_nixl_memory

        self.w.copy_(expected_rows(seed))
        if registered:
            register_nixl_memory(self.w)
        try:
            refs = [ray.put([self.w[i] for i in range(N)], _tensor_transport="nixl")]
        finally:
            if registered:
                deregister_nixl_memory(self.w)
        self.w.add_(1000)
        return refs

    def second_pool(self):
        from ray.experimental import register_nixl_memory_pool

        try:
            register_nixl_memory_pool(1 << 20, torch.device("cpu"))
        except ValueError as e:
            return str(e)


def test_a_nixl_pool_keeps_2_60_meaning(pairs):
    _, generator = pairs["same_host"]
    nbytes = N * ROW * 4
    # Room for two objects: a third put while two are alive fills it.
    trainer = PoolTrainer.remote(2 * nbytes + (1 << 20))
    assert ray.get(trainer.second_pool.remote()) == (
        "A memory pool is already registered. Only one memory pool is supported."
    )
    # Puts copy into the pool: the generator gets the weights of the put,
    # not those changed after it.
    first = ray.get(trainer.put_then_change.remote(6))
    assert ray.get(generator.sync.remote(first, 6)) == (True, True)
    second = ray.get(trainer.put_then_change.remote(7))
    from ray.experimental.rdt.nixl_memory_pool import NixlOutOfMemoryError

    with pytest.raises(NixlOutOfMemoryError, match="NIXL memory pool out of memory"):
        try:
            ray.get(trainer.put_then_change.remote(8))
        except ray.exceptions.RayTaskError as e:
            raise e.cause
    # Freed objects give their blocks back: steps go on once refs are gone
    # (a free reaches the trainer a moment after the last ref goes).
    del first, second

    def step(seed):
        try:
            refs = ray.get(trainer.put_then_change.remote(seed))
        except ray.exceptions.RayTaskError as e:
            assert isinstance(e.cause, NixlOutOfMemoryError), e
            return False
        return ray.get(generator.sync.remote(refs, seed)) == (True, True)

    for seed in (9, 10, 11):
        assert wait_for(lambda: step(seed), timeout=30)
    # Registered memory is sent in place (not pooled, as in 2.60): the change
    # made after the put is what the generator reads.
    refs = ray.get(trainer.put_then_change.remote(12, registered=True))
    returned_targets, _ = ray.get(generator.sync.remote(refs, 12))
    assert returned_targets
    assert bool(torch.equal(ray.get(generator.weights.remote()), expected_rows(12) + 1000))


@ray.remote
class ParameterOwner:
    """A trainer that puts its model's ``nn.Parameter``s themselves (not
    tensors): pickling a Parameter pickles ``self.data``, a new tensor object
    over the same memory at every serialization pass."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Linear(512, 8))
        self.model[1].weight.requires_grad_(False)

    def put(self, transport, tag=False):
        """``[ref]`` and how many times the put took Ray's two serialization
        passes (``producer._store_and_serialize``); ``tag`` first gives one
        Parameter an attribute of its own."""
        from ray_rdt import producer

        if tag:
            self.model[0].bias.tag = "kept"
        passes = []
        two_passes = producer._store_and_serialize

        def counted(*args, **kwargs):
            passes.append(1)
            return two_passes(*args, **kwargs)

        producer._store_and_serialize = counted
        try:
            return [ray.put(list(self.model.parameters()), _tensor_transport=transport)], len(passes)
        finally:
            producer._store_and_serialize = two_passes

    def put_one(self, transport):
        """``[ref]`` of one Parameter put alone (``requires_grad`` off)."""
        return [ray.put(self.model[1].weight, _tensor_transport=transport)]

    def expected(self):
        return [(p.requires_grad, p.detach().clone()) for p in self.model.parameters()]


@ray.remote
class ParameterReader:
    def read(self, refs):
        return [(type(p), p.requires_grad, p.detach().clone(), vars(p)) for p in ray.get(refs[0])]


@pytest.mark.parametrize("transport", ["nixl", "shm"])
def test_model_parameters_arrive_as_parameters(ray_cluster, transport):
    """A list of ``nn.Parameter``s put through the plugin arrives as
    Parameters (``requires_grad`` kept), byte-exact, the bytes moved by the
    plugin, as stock 2.60 delivers them; in one serialization pass, unless a
    Parameter has attributes of its own, which then arrive too (Ray's two
    passes, as stock pickles them)."""
    owner, reader = ParameterOwner.remote(), ParameterReader.remote()
    expected = ray.get(owner.expected.remote())
    for tag, passes in ((False, 0), (True, 1)):
        before = actor_stats(reader, transport)
        refs, two_passes = ray.get(owner.put.remote(transport, tag))
        assert two_passes == passes
        got = ray.get(reader.read.remote(refs))
        assert [t for t, _, _, _ in got] == [torch.nn.Parameter] * len(expected)
        assert [g for _, g, _, _ in got] == [g for g, _ in expected]
        assert all(torch.equal(a, b) for (_, _, a, _), (_, b) in zip(got, expected))
        assert [state for _, _, _, state in got] == [{}, {"tag": "kept"} if tag else {}, {}, {}]
        assert delta(actor_stats(reader, transport), before) == sum(t.nbytes for _, t in expected)
    one = ray.get(ray.get(owner.put_one.remote(transport))[0])
    assert type(one) is torch.nn.Parameter and not one.requires_grad and torch.equal(one, expected[2][1])
