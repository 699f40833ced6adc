"""The plugin's log records reach Ray's worker log files (``logs/worker-*.err`` of
the session) and the driver, in Ray's line format, at the level that
``RAY_RDT_LOG_LEVEL`` sets (default: warning).

The module's cluster runs with Ray's token authentication off, so every plugin
process warns that its data plane is unauthenticated; NIXL moves its own bytes
(``TRANSPORT_ONLY``), so the consumer really loads NIXL."""

import glob
import os
import re

import ray
import torch

from conftest import TRANSPORT_ONLY, actor_stats, wait_for

RAY_ENV = dict(TRANSPORT_ONLY, RAY_AUTH_MODE="disabled")
UNAUTHENTICATED = r"ray-rdt: the data plane is unauthenticated: Ray's token authentication is off, .*"

# [2026-12-01 20:11:08,381 W 13826 13864] logging.rs:63: ray-rdt: ...
RAY_LINE = r"^\[\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} {level} {pid} \d+\] {file}:\d+: {message}"


@ray.remote
class LoggingActor:
    def start_plugin(self):
        from ray_rdt import context

        context.get_context()
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


def test_a_plugin_warning_is_in_the_worker_log_and_on_the_driver(ray_cluster, capfd):
    actor = LoggingActor.remote()
    pid = ray.get(actor.start_plugin.remote())
    warning = line("W", pid, "endpoint/mod.rs", UNAUTHENTICATED)
    assert warning.search(worker_log(pid)), worker_log(pid)
    # log_to_driver: Ray's log monitor prints it on the driver, prefixed with the actor.
    seen = []

    def on_driver():
        captured = capfd.readouterr()
        seen.append(captured.out + captured.err)
        return any(f"pid={pid})" in s and "the data plane is unauthenticated" in s for s in seen)

    assert wait_for(on_driver, timeout=30), seen


def test_a_bad_level_is_a_warning(ray_cluster):
    pid = ray.get(with_level("loud").remote().start_plugin.remote())
    log = worker_log(pid)
    assert line("W", pid, "logging.rs", r'ray-rdt: RAY_RDT_LOG_LEVEL="loud" is not a log level .*; using warning$').search(log), log
    assert line("W", pid, "endpoint/mod.rs", UNAUTHENTICATED).search(log)  # the default level applies


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
