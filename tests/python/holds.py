"""The driver's side of the plugin's test-only hold points (src/hold.rs), and
the polling helpers (:func:`wait_for`, :func:`pid_alive`), for the test
modules, the harness and the scripts tests run as drivers."""

import os
import threading
import time


def wait_for(predicate, timeout=20.0, interval=0.05):
    """Polls ``predicate`` until it holds or ``timeout`` seconds have passed;
    returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class Holds:
    """The driver's side of the plugin's test-only hold points
    (``RAY_RDT_TEST_HOLD_DIR``, src/hold.rs): releases every point nobody
    armed, keeps armed ones held until :meth:`release`."""

    def __init__(self, directory, timeout_s=60.0):
        self.dir = directory
        self.timeout_s = timeout_s
        self._armed = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._release_unarmed, name="hold-releaser", daemon=True)
        self._thread.start()

    def _path(self, key, suffix):
        return os.path.join(self.dir, f"{key}.{suffix}")

    def _release_unarmed(self):
        while not self._stop.wait(0.005):
            for name in os.listdir(self.dir):
                if not name.endswith(".reached"):
                    continue
                key = name[: -len(".reached")]
                with self._lock:
                    if key not in self._armed and not os.path.exists(self._path(key, "release")):
                        open(self._path(key, "release"), "w").close()

    def arm(self, point, pid):
        """Makes the next arrival of ``pid`` at ``point`` wait for :meth:`release`."""
        key = f"{point}-{pid}"
        with self._lock:
            self._armed.add(key)
            if os.path.exists(self._path(key, "release")):
                os.remove(self._path(key, "release"))  # a stale one would let it pass

    def wait_reached(self, point, pid):
        key = f"{point}-{pid}"
        if not wait_for(lambda: os.path.exists(self._path(key, "reached")), self.timeout_s, interval=0.005):
            raise AssertionError(f"process {pid} did not reach hold point {point} within {self.timeout_s} s")

    def release(self, point, pid):
        with self._lock:
            self._armed.discard(f"{point}-{pid}")

    def stop(self):
        self._stop.set()
        self._thread.join()
