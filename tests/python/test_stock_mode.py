"""RAY_RDT_PLUGIN=0 gives stock Ray 2.60.0 (its own cluster, in a subprocess)."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_stock_behaviour_and_no_plugin_traffic():
    env = dict(os.environ, RAY_RDT_PLUGIN="0")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "stock_mode_check.py")],
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "STOCK-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-6000:]
