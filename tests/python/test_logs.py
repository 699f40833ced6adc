"""The plugin's log records reach Ray's worker log files (``logs/worker-*.err`` of
the session) and the driver, in Ray's line format, at the level that
``RAY_RDT_LOG_LEVEL`` sets (default: warning).

NIXL moves its own bytes in this module (``TRANSPORT_ONLY``), so the consumer
really loads NIXL. The unauthenticated-data-plane warning needs a cluster with
Ray's token authentication off, started in its own process
(unauthenticated_log_check.py): Ray caches that mode per process."""

import glob
import os
import re
import subprocess
import sys

import ray
import torch

from conftest import HERE, TRANSPORT_ONLY, actor_stats, wait_for

RAY_ENV = TRANSPORT_ONLY
UNAUTHENTICATED = r"ray-rdt: the data plane is unauthenticated: Ray's token authentication is off, .*"

# [2026-12-01 20:11:08,381 W 13826 13864] logging.rs:63: ray-rdt: ...
RAY_LINE = r"^\[\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} {level} {pid} \d+\] {file}:\d+: {message}"


@ray.remote
class LoggingActor:
    def start_plugin(self):
        from ray_rdt import process

        process.get_context()
        return os.getpid()

    @ray.method(tensor_transport="nixl")
    def make(self, n):
        return torch.arange(n, dtype=torch.float32)

    def total(self, tensor):
        return float(tensor.sum())

    def pid(self):
        return os.getpid()


def with_level(level):
    return LoggingActor.options(runtime_env={"env_vars": {"RAY_RDT_LOG_LEVEL": level}})


def worker_log(pid):
    """The text of the ``.err`` file Ray keeps for worker process ``pid``."""
    session = ray._private.worker.global_worker.node.get_session_dir_path()
    (path,) = glob.glob(os.path.join(session, "logs", f"worker-*-{pid}.err"))
    with open(path, errors="replace") as fh:
        return fh.read()


def line(level, pid, file, message):
    return re.compile(RAY_LINE.format(level=level, pid=pid, file=re.escape(file), message=message), re.M)


def test_the_unauthenticated_data_plane_warning_is_in_the_worker_log():
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "unauthenticated_log_check.py")],
        env=env, cwd=HERE, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("PID ", "LOG ")))
    with open(out["LOG"], errors="replace") as fh:
        log = fh.read()
    assert line("W", out["PID"], "endpoint/mod.rs", UNAUTHENTICATED).search(log), log


def test_a_bad_level_warning_is_in_the_worker_log_and_on_the_driver(ray_cluster, capfd):
    pid = ray.get(with_level("loud").remote().start_plugin.remote())
    log = worker_log(pid)
    bad_level = line("W", pid, "logging.rs", r'ray-rdt: RAY_RDT_LOG_LEVEL="loud" is not a log level .*; using warning$')
    assert bad_level.search(log), log
    # log_to_driver: Ray's log monitor prints it on the driver, prefixed with the actor.
    seen = []

    def on_driver():
        captured = capfd.readouterr()
        seen.append(captured.out + captured.err)
        return any(f"pid={pid})" in s and "RAY_RDT_LOG_LEVEL" in s for s in seen)

    assert wait_for(on_driver, timeout=30), seen


def test_info_records_follow_the_level(ray_cluster):
    producer = with_level("info").remote()
    consumer = LoggingActor.remote()  # default level: warning
    ref = producer.make.remote(1000)
    assert ray.get(consumer.total.remote(ref)) == sum(range(1000))
    assert actor_stats(consumer, "nixl")["bytes_received"] == 4000  # NIXL really ran in both
    producer_pid, consumer_pid = ray.get([producer.pid.remote(), consumer.pid.remote()])
    # Loading NIXL is an INFO record (once per process, never per transfer).
    loaded = line("I", producer_pid, "transport/nixl/library.rs", r"ray-rdt: nixl transport uses .*libnixl_capi\.so$")
    assert loaded.search(worker_log(producer_pid)), worker_log(producer_pid)
    # The consumer loaded NIXL too, synchronously with its fetch, but logs only warnings.
    assert "ray-rdt: nixl transport uses" not in worker_log(consumer_pid)
