"""Shared fixtures: one local Ray cluster per test module (``ray.init(num_cpus=8)``)."""

import contextlib
import os
import sys

import pytest

from holds import Holds, wait_for  # noqa: F401 (shared with the scripts of two-node tests)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "python"))
# Ray workers (children of the raylet this process starts) must import the test
# modules, whose actor classes they run, and the examples.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [HERE, os.path.join(REPO, "examples")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "gpu: needs a CUDA GPU (skipped with the reason when torch.cuda.is_available() is False; "
        "with RAY_RDT_REQUIRE_GPU=1, as ci/gpu-nightly sets it, a failure instead; "
        "ci/gpu-nightly runs `pytest -m gpu`)",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """With ``RAY_RDT_REQUIRE_GPU=1`` (ci/gpu-nightly, not rehearsing), a ``gpu``
    test on a machine without a usable CUDA GPU fails, saying why, instead of
    skipping: a GPU run that ran no GPU test must not pass. A wrapper, so that
    this runs before the ``skipif`` marks of the test modules are evaluated."""
    if os.environ.get("RAY_RDT_REQUIRE_GPU", "0") not in ("", "0") and item.get_closest_marker("gpu"):
        try:
            import torch

            reason = None if torch.cuda.is_available() else "torch.cuda.is_available() is False on this machine"
        except ImportError as e:
            reason = f"torch cannot be imported ({e})"
        if reason is not None:
            pytest.fail(
                f"needs a CUDA GPU: {reason}; RAY_RDT_REQUIRE_GPU=1 makes that a failure, not a skip "
                "(unset it to skip the gpu tests here)",
                pytrace=False,
            )
    yield


# Settings for modules that test a transport itself: the same-host path and
# small objects inside their records are off, so the declared transport moves
# every byte (a module opts in with ``RAY_ENV = TRANSPORT_ONLY``).
TRANSPORT_ONLY = {"RAY_RDT_SAME_HOST_PATH": "0", "RAY_RDT_INLINE_BYTES": "0"}


@pytest.fixture(scope="module")
def ray_cluster(request):
    """A local cluster for the module, started with the module's ``RAY_ENV``
    (environment variables the driver and its workers see)."""
    with cluster_with_env(getattr(request.module, "RAY_ENV", {}), num_cpus=8, log_to_driver=True) as ray:
        yield ray


def staging_segments(pid):
    """Inodes of the plugin's shm staging segments that process ``pid`` (on
    this host) maps."""
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split()[4] for line in maps if "memfd:ray-rdt-stage" in line}


def shared_regions(pid):
    """Inodes of the plugin's shared regions (``ray_rdt.share_memory_``) that
    process ``pid`` (on this host) maps."""
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split()[4] for line in maps if "memfd:ray-rdt-shared" in line}


def actor_stats(actor, transport=None):
    """``ray_rdt.stats()`` read inside an actor's process."""
    import ray

    def _stats(self):
        import ray_rdt

        return ray_rdt.stats()

    stats = ray.get(actor.__ray_call__.remote(_stats))
    return stats if transport is None else stats[transport]


def num_rdt_objects(actor):
    import ray

    def _count(self):
        import ray

        return ray._private.worker.global_worker.rdt_manager.rdt_store.get_num_objects()

    return ray.get(actor.__ray_call__.remote(_count))


def delta(after, before, field="bytes_received"):
    return after[field] - before[field]


class ReceivingActor:
    """Methods the test actors share: what a task received and what the actor
    holds (`self.tensor`, set by the producing method)."""

    def stored_ptr(self):
        return self.tensor.data_ptr()

    def sum(self, tensor):
        import torch

        if isinstance(tensor, (list, tuple)):
            return sum(torch.sum(t) for t in tensor)
        return torch.sum(tensor)

    def sum64(self, tensor):
        """The sum accumulated in float64: the same for the same values in
        any summation order (a float32 sum of a million random values differs
        in its fourth digit between a driver's threads and an actor's one)."""
        import torch

        return torch.sum(tensor, dtype=torch.float64)

    def ptr_and_sum(self, tensor):
        """The tensor's address and its float64 sum (see `sum64`)."""
        import torch

        return tensor.data_ptr(), torch.sum(tensor, dtype=torch.float64)


@contextlib.contextmanager
def cluster_with_env(env, **init_kwargs):
    """A local Ray cluster whose processes (this driver included) see ``env``
    (e.g. ``RAY_RDT_PLUGIN_TRANSPORTS``): the driver's transport registry is
    rebuilt under it, and everything is restored afterwards."""
    import ray
    from ray.experimental.rdt import util

    if ray.is_initialized():
        ray.shutdown()
    saved_env = {k: os.environ.get(k) for k in env}
    saved = (dict(util.transport_manager_info), dict(util.transport_managers), util._default_transports_registered)

    def reset_registry(info, managers, registered):
        util.transport_manager_info.clear()
        util.transport_manager_info.update(info)
        util.transport_managers.clear()
        util.transport_managers.update(managers)
        util._default_transports_registered = registered

    os.environ.update(env)
    reset_registry({}, {}, False)
    ray.init(include_dashboard=False, **init_kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_registry(*saved)


RAY_FILES = [
    "ray/experimental/rdt/util.py",
    "ray/experimental/rdt/rdt_manager.py",
    "ray/_private/serialization.py",
    "ray/_private/worker.py",
    "ray/experimental/collective/collective.py",
]


@pytest.fixture(scope="session")
def ray_wheel():
    """The real ray-2.60.0 wheel from the package registry (cached in
    ``$RAY_RDT_WHEEL_CACHE``, default ``~/.cache/ray-rdt/wheels``): the source of
    pristine Ray files for the patch tests."""
    import glob
    import subprocess

    cache = os.environ.get("RAY_RDT_WHEEL_CACHE") or os.path.expanduser("~/.cache/ray-rdt/wheels")
    pattern = os.path.join(cache, "ray-2.60.0-*.whl")
    if not glob.glob(pattern):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", cache, "ray==2.60.0"],
            check=True,
            timeout=600,
        )
    return sorted(glob.glob(pattern))[0]


def wheel_file(wheel, path):
    """The bytes of ``path`` in a wheel."""
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        return z.read(path)
