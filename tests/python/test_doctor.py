"""``ray-rdt doctor`` in one process: what it reports, and that its exit status
says whether what the user required can work (here: NIXL, present in this
environment, then hidden from the plugin)."""

import json
import os
import subprocess
import sys

from conftest import REPO

NO_NIXL = {"RAY_RDT_NIXL_LIB": "/nonexistent/libnixl_capi.so", "RAY_RDT_NIXL_NO_SEARCH": "1"}


def doctor(*args, **env):
    full_env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "python"), **env)
    return subprocess.run(
        [sys.executable, "-m", "ray_rdt", "doctor", *args], capture_output=True, text=True, timeout=300, env=full_env
    )


def test_reports_this_process():
    proc = doctor("--json", "--require", "gloo", "shm", "nixl")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["problems"] == []
    (rep,) = result["reports"]
    assert rep["plugin"]["enabled"] and rep["plugin"]["error"] is None
    assert os.path.samefile(rep["plugin"]["library"], os.path.join(REPO, "target", "release", "libray_rdt.so"))
    assert rep["ray"]["version"] == "2.60.0" and rep["ray"]["patches"] == "applied"
    assert {n: t["ok"] for n, t in rep["transports"].items() if n in ("gloo", "shm", "nixl")} == dict.fromkeys(
        ("gloo", "shm", "nixl"), True
    )
    assert rep["routed"] == ["gloo", "nixl", "shm"]
    assert rep["endpoint"]["unix"].startswith("unix:")


def test_a_required_transport_that_cannot_run_fails():
    proc = doctor("--require", "nixl", **NO_NIXL)
    assert proc.returncode == 1
    assert "nixl           NO" in proc.stdout
    assert "nixl cannot run: the nixl transport is unavailable" in proc.stderr
    # Not required: reported, not a failure.
    relaxed = doctor("--require", "shm", **NO_NIXL)
    assert relaxed.returncode == 0, relaxed.stderr
    assert "nixl           NO" in relaxed.stdout and relaxed.stdout.rstrip().endswith("ray-rdt doctor: ok")


def test_a_missing_plugin_fails():
    proc = doctor("--json", RAY_RDT_LIB="/nonexistent/libray_rdt.so")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["reports"][0]["plugin"]["library"] is None
    assert any("the plugin cannot load: libray_rdt.so not found" in p for p in result["problems"])
