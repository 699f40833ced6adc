"""The same-host path's off switch (``RAY_RDT_SAME_HOST_PATH=0``): every
transport then moves its own bytes on one host too (its "network" path), as
measurements need."""

import pytest
import torch

import ray
from ray.experimental.collective import create_collective_group

from test_paths import LARGE, PRODUCERS, PathActor, counters, path_delta

RAY_ENV = {"RAY_RDT_SAME_HOST_PATH": "0"}


@pytest.fixture(scope="module")
def actors(ray_cluster):
    sender, receiver = PathActor.remote(), PathActor.remote()
    create_collective_group([sender, receiver], backend="torch_gloo")
    return sender, receiver


@pytest.mark.parametrize("transport", ["gloo", "nixl"])
def test_off_switch_leaves_the_bytes_to_the_declared_transport(actors, transport):
    sender, receiver = actors
    r0 = counters(receiver)
    ref = getattr(sender, PRODUCERS[transport]).remote(LARGE)
    assert torch.equal(ray.get(receiver.sum.remote(ref)), torch.arange(LARGE, dtype=torch.float32).sum())
    r1 = counters(receiver)
    assert path_delta(r1, r0, transport, "network") == LARGE * 4
    assert path_delta(r1, r0, transport, "same_host") == 0
