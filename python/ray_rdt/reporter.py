"""The per-process reporter: the plugin's counters, periodically, to Ray's metrics
(:mod:`ray_rdt.metrics`) and to this node's snapshot directory for
``ray-rdt stats`` (:mod:`ray_rdt.registry`).

:func:`start` runs once per process, when the plugin context is created
(``process.get_context``): a daemon thread reads ``ray_rdt.stats()`` every
``RAY_RDT_REPORT_INTERVAL_S`` seconds (default 5; ``0`` turns the reporter off)
and once more at interpreter exit. Transfers never wait for it: it only reads
the plugin's atomic counters. Ray's shutdown pauses it (:func:`pause`, after
the report under way) until the process connects again.
"""

import atexit
import logging
import os
import threading
import time
from typing import Optional

INTERVAL_ENV = "RAY_RDT_REPORT_INTERVAL_S"
DEFAULT_INTERVAL_S = 5.0

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_started_pid: Optional[int] = None
_stop = threading.Event()
# Set from Ray's shutdown until this process connects again: reports skip.
_paused = threading.Event()
# This process's reporter, once started.
_current: Optional["Reporter"] = None


def interval_s() -> float:
    """The reporting period from ``RAY_RDT_REPORT_INTERVAL_S`` (0: off)."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        return max(0.0, float(raw))
    except ValueError:
        logger.warning("ray-rdt: %s=%r is not a number of seconds; using %s", INTERVAL_ENV, raw, DEFAULT_INTERVAL_S)
        return DEFAULT_INTERVAL_S


def _identity() -> Optional[dict]:
    """Who this process is in Ray (None when not connected)."""
    import ray._private.worker as ray_worker

    worker = ray_worker.global_worker
    if not worker.connected:
        return None
    actor = worker.actor_id
    return {
        "node_id": worker.current_node_id.hex(),
        "worker_id": worker.worker_id.hex() if isinstance(worker.worker_id, bytes) else str(worker.worker_id),
        "job_id": worker.current_job_id.hex(),
        "actor_id": None if actor.is_nil() else actor.hex(),
        "mode": "driver" if worker.mode == ray_worker.SCRIPT_MODE else "worker",
    }


def _identity_or_none() -> Optional[dict]:
    try:
        return _identity()
    except Exception:
        return None


class Reporter:
    """One process's reporting state: the metrics exporter and what it knows
    about itself (``addresses()``: its plugin endpoint's addresses)."""

    def __init__(self, addresses):
        from ray_rdt import metrics, registry

        self._addresses = addresses
        self._exporter = metrics.Exporter()
        self._registry = registry
        self._start_time = registry.process_start_time(os.getpid())
        self._actor_class: Optional[str] = None
        self._lock = threading.Lock()

    def note_caller(self):
        """Remembers the actor class from the running task's name (``Class.method``), if any."""
        try:
            import ray
            import ray._private.worker as ray_worker

            worker = ray_worker.global_worker
            if not worker.connected or worker.mode != ray_worker.WORKER_MODE or worker.actor_id.is_nil():
                return
            name = ray.get_runtime_context().get_task_name() or ""
            if "." in name:
                self._actor_class = name.split(".", 1)[0]
        except Exception:
            pass

    def report(self):
        """One flush: metrics, then this process's snapshot file (nothing
        while paused: :func:`pause`)."""
        with self._lock:
            if not _paused.is_set():
                self._report()

    def _report(self):
        from ray_rdt import _ffi, counters

        who = _identity()
        if who is None:
            return
        snapshot = counters.stats()
        self._exporter.update(snapshot, {"ActorId": who["actor_id"] or ""})
        endpoint, tcp_endpoint = self._addresses()
        self._registry.write(
            dict(
                who,
                pid=os.getpid(),
                start_time=self._start_time,
                actor_class=self._actor_class,
                endpoint=endpoint,
                tcp_endpoint=tcp_endpoint,
                library=_ffi.library_path(),  # loaded: the process has a context
                time=time.time(),
                stats=snapshot,
            )
        )


def _loop(reporter: Reporter, period: float):
    while True:
        try:
            reporter.report()
        except Exception as e:  # never let reporting take the process down
            if _identity_or_none() is not None:  # not merely Ray shutting down under it
                logger.warning("ray-rdt: reporting the plugin's counters failed: %s", e)
        if _stop.wait(period):
            return


def pause():
    """Ray is shutting down (``process.on_ray_shutdown``): waits for a report
    under way (it calls into Ray's core worker, which the shutdown destroys),
    then skips reports until :func:`resume`."""
    _paused.set()
    reporter = _current
    if reporter is not None:
        with reporter._lock:
            pass


def resume():
    """This process is connected to Ray again: reports go on."""
    _paused.clear()


def start(addresses):
    """Starts this process's reporter once (a no-op when it runs or is turned
    off); ``addresses()`` gives the plugin endpoint's addresses when it reports."""
    global _started_pid, _current
    period = interval_s()
    if period <= 0:
        return
    with _lock:
        if _started_pid == os.getpid():
            return
        _started_pid = os.getpid()
        reporter = Reporter(addresses)
        _current = reporter
        reporter.note_caller()
        threading.Thread(target=_loop, args=(reporter, period), name="ray-rdt-reporter", daemon=True).start()
        atexit.register(_final_report, reporter)


def _final_report(reporter: Reporter):
    _stop.set()
    try:
        reporter.report()
    except Exception:
        pass
