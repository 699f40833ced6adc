"""A weight-sync loop that survives a killed generator and a killed trainer.

The controller (this driver) runs the loop of Ray's own weight-transfer
script (``python/ray/tests/rdt/test_weights_transfer.py``): every step the
trainer changes its weights and ``ray.put``s their rows over nixl, and every
generator pulls them straight into its own weights (``set_target_for_ref``).
Unlike that script, the controller catches the failures: a sync to a killed
generator raises ``ActorDiedError`` naming it (never a hang), a killed
trainer's step does too, the controller starts a replacement, and the next
step reaches it through the plugin. Afterwards the survivors hold nothing
more than before the faults: no RDT objects, no NIXL registrations, no
mapping of the dead trainer's staging segment.

The loop runs twice: with nixl moving its own bytes (the same-host path off),
so that its registrations are what the survivors are checked for, and on the
same-host path (the trainer's staging segment, mapped by every generator)."""

import os

import pytest
import torch

import ray
from ray.exceptions import ActorDiedError
from ray.experimental import set_target_for_ref

from conftest import TRANSPORT_ONLY, actor_stats, staging_segments, wait_for
from holds import pid_alive

RAY_ENV = TRANSPORT_ONLY
N = 10_000  # tensors
ROW = 64  # float32 elements each: 2.5 MB in all
TIMEOUT_S = 60


def weights(seed):
    return torch.full((N, ROW), float(seed))


@ray.remote
class Trainer:
    def __init__(self):
        self.w = torch.zeros(N, ROW)

    def step(self, seed):
        """Updates the weights and puts their rows."""
        self.w.fill_(float(seed))
        return [ray.put([self.w[i] for i in range(N)], _tensor_transport="nixl")]

    def pid(self):
        return os.getpid()

    def held(self):
        import ray_rdt
        from ray_rdt import process

        return process.get_context().counts()[0], ray_rdt.nixl_stats()["exported_ranges"]


@ray.remote
class Generator:
    def __init__(self):
        self.w = torch.zeros(N, ROW)

    def sync(self, refs, seed):
        (ref,) = refs
        set_target_for_ref(ref, [self.w[i] for i in range(N)])
        ray.get(ref)
        return bool(torch.equal(self.w, weights(seed)))

    def pid(self):
        return os.getpid()

    def held(self):
        import ray_rdt

        return ray_rdt.nixl_stats()["received"]


def sync_all(trainer, generators, seed):
    """One step: ``(outcome per generator, trainer error)``; an outcome is True
    (synced), or the error its sync raised."""
    try:
        refs = ray.get(trainer.step.remote(seed), timeout=TIMEOUT_S)
    except ActorDiedError as e:
        return [], e
    calls = [g.sync.remote(refs, seed) for g in generators]
    outcomes = []
    for call in calls:
        try:
            outcomes.append(ray.get(call, timeout=TIMEOUT_S))
        except ActorDiedError as e:
            outcomes.append(e)
    return outcomes, None


# The actors' environments: nixl's own path (over loopback here), and the
# same-host path (the bytes through the trainer's staging segment).
PATHS = {"network": {}, "same_host": {"RAY_RDT_SAME_HOST_PATH": "1"}}


@pytest.mark.parametrize("path", PATHS)
def test_the_loop_survives_a_killed_generator_and_a_killed_trainer(ray_cluster, path):
    def spawn(cls):
        return cls.options(runtime_env={"env_vars": PATHS[path]}).remote()

    trainer = spawn(Trainer)
    generators = [spawn(Generator), spawn(Generator)]
    assert sync_all(trainer, generators, 1) == ([True, True], None)
    baseline = ray.get(trainer.held.remote())

    # A generator dies: its sync says so, naming it; the other one syncs.
    victim = generators[0]
    ray.kill(victim)
    outcomes, trainer_error = sync_all(trainer, generators, 2)
    assert trainer_error is None and outcomes[1] is True
    assert isinstance(outcomes[0], ActorDiedError)
    assert victim._actor_id.hex() in str(outcomes[0])
    # The controller replaces it; the next step reaches the new one through
    # the plugin.
    generators[0] = spawn(Generator)
    assert sync_all(trainer, generators, 3) == ([True, True], None)
    assert actor_stats(generators[0], "nixl")["bytes_received"] == N * ROW * 4

    # The trainer dies: its step says so; a new trainer serves the next step.
    old, old_pid = trainer, ray.get(trainer.pid.remote())
    ray.kill(trainer)
    outcomes, trainer_error = sync_all(trainer, generators, 4)
    assert isinstance(trainer_error, ActorDiedError) and old._actor_id.hex() in str(trainer_error)
    # (Its process is gone before the next step, as the survivors' check below
    # needs: they let go of a peer's segments once its process has exited.)
    assert wait_for(lambda: not pid_alive(old_pid), timeout=30)
    trainer = spawn(Trainer)
    assert sync_all(trainer, generators, 5) == ([True, True], None)

    # Survivors hold no more than one step's worth: once the last step's refs
    # are gone, the trainer holds no object and no registration, and no
    # generator keeps a registration of its targets, nor the dead trainer's
    # staging segment (only the new trainer's, kept for the next step).
    assert wait_for(lambda: ray.get(trainer.held.remote()) == (0, 0), timeout=30), ray.get(trainer.held.remote())
    assert baseline[1] <= 1
    assert [ray.get(g.held.remote()) for g in generators] == [0, 0]
    # A generator maps no staging segment but the live trainer's (none on
    # nixl's own path).
    kept = {pid: staging_segments(pid) for pid in ray.get([g.pid.remote() for g in generators])}
    assert all(segments <= staging_segments(ray.get(trainer.pid.remote())) for segments in kept.values()), kept
    if path == "network":
        assert kept == {pid: set() for pid in kept}


@pytest.mark.parametrize("victim", ["generator", "trainer"])
def test_a_sync_never_hangs_on_a_dead_peer(ray_cluster, victim):
    """Killed while the step is under way, either side's death is an error
    within the timeout: the generator's death, or its fetch finding the
    trainer dead; or, when the trainer (the put's owner) died before the
    generator had the object's value from it, Ray's own ``OwnerDiedError``,
    as in stock 2.60 (no transfer was attempted)."""
    trainer, generator = Trainer.remote(), Generator.remote()
    assert sync_all(trainer, [generator], 1) == ([True], None)
    refs = ray.get(trainer.step.remote(2))
    call = generator.sync.remote(refs, 2)
    ray.kill(generator if victim == "generator" else trainer)
    try:
        ray.get(call, timeout=TIMEOUT_S)
    except ActorDiedError:
        pass  # the generator died, or its fetch found the trainer dead
    except ray.exceptions.RayTaskError as e:
        owner_gone = victim == "trainer" and isinstance(e.cause, ray.exceptions.OwnerDiedError)
        assert isinstance(e.cause, ActorDiedError) or owner_gone or "died" in str(e), e
    # else: the fetch completed before the kill landed; nothing hung either way.
