"""Where each plugin process of a Ray node leaves its counters for ``ray-rdt stats``.

A process's counters live in its own memory (``rdt_stats_get``), so another
process cannot read them. Instead every process that created a plugin context
writes a snapshot, ``<session dir>/ray_rdt/proc-<pid>.json``, from its reporter
thread (:mod:`ray_rdt.reporter`, every few seconds and at exit). The Ray session
directory is per node and per cluster, so clusters sharing a machine never see
each other's files. A reader on that node (``ray-rdt stats`` runs one task per
node) lists the files and drops those whose process is gone; a snapshot is as
old as its ``time`` says.
"""

import json
import os
import tempfile
import time
from pathlib import Path
from typing import List, Optional

DIRECTORY = "ray_rdt"


def session_dir() -> Optional[Path]:
    """This node's Ray session directory when this process is connected to Ray."""
    try:
        import ray._private.worker as ray_worker

        worker = ray_worker.global_worker
        if not worker.connected or worker.node is None:
            return None
        return Path(worker.node.get_session_dir_path())
    except Exception:
        return None


def process_start_time(pid: int) -> Optional[int]:
    """The start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat``), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after it are plain.
    return int(stat.rsplit(")", 1)[1].split()[19])


def write(record: dict, directory: Optional[Path] = None) -> Optional[Path]:
    """Atomically replaces this process's snapshot; returns its path (None outside Ray)."""
    base = directory or session_dir()
    if base is None:
        return None
    folder = base / DIRECTORY
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"proc-{os.getpid()}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".proc-{os.getpid()}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh)
    os.replace(tmp, path)
    return path


def alive(record: dict) -> bool:
    """Whether the process that wrote ``record`` still runs (same pid and start time)."""
    started = process_start_time(record.get("pid", -1))
    return started is not None and started == record.get("start_time")


def read_all(directory: Optional[Path] = None) -> List[dict]:
    """The snapshots of this node's live plugin processes (each with its ``age_s``)."""
    base = directory or session_dir()
    if base is None:
        return []
    out = []
    now = time.time()
    for path in sorted((base / DIRECTORY).glob("proc-*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced, or removed by another reader
        if not alive(record):
            continue
        record["age_s"] = max(0.0, now - record.get("time", now))
        out.append(record)
    return out
