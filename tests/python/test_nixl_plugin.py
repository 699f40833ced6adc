"""NIXL through the plugin (opt-in: RAY_RDT_PLUGIN_TRANSPORTS), CPU tensors, in a
subprocess with its own cluster (the transport registry is per process)."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_guide_nixl_walkthrough_on_cpu_through_the_plugin():
    env = dict(os.environ, RAY_RDT_PLUGIN_TRANSPORTS="gloo,shm,nixl")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "nixl_plugin_check.py")],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "NIXL-PLUGIN-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-6000:]
