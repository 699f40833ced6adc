"""Runs the guide's walkthrough scripts (this directory: gloo verbatim, NIXL in CPU
form, plus the shm variant and weight sync) on one local Ray cluster and shows, from each
script's actors and from the driver, that the plugin moved the bytes.

    python examples/run_walkthrough.py [--num-gpus N] [SCRIPT ...]

``--num-gpus N`` starts the cluster with N GPUs (ci/gpu-nightly, for the CUDA
examples in gpu/; default: none declared, so ``num_gpus=1`` actors cannot start).

Each script runs as ``__main__`` in this process (``runpy``), so the actors it
creates are still alive afterwards: their ``ray_rdt.stats()`` is read through
``__ray_call__`` before they are dropped.
"""

import glob
import os
import runpy
import sys
import time

import ray

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCRIPTS = [
    path
    for pattern in ("gloo_*.py", "nixl_*.py", "shm_*.py")
    for path in sorted(glob.glob(os.path.join(HERE, pattern)))
]
DRIVER = "(driver)"
FIELDS = ("bytes_sent", "bytes_received", "transfers", "errors")


def _driver_stats():
    import ray_rdt

    return ray_rdt.stats()


def run_example(path):
    """Runs one script; returns {actor name in the script: (pid, stats)}, plus
    ``DRIVER``: (pid, what the driver's counters grew by while the script ran)."""

    def _actor_stats(self):  # runs in the actor (a local function: pickled by value)
        import os

        import ray_rdt

        return os.getpid(), ray_rdt.stats()

    before = _driver_stats()
    namespace = runpy.run_path(path, run_name="__main__")
    after = _driver_stats()
    driver = {t: {f: after[t][f] - before[t][f] for f in FIELDS} for t in after}
    actors = {
        name: value
        for name, value in namespace.items()
        if isinstance(value, ray.actor.ActorHandle)
    }
    stats = {name: ray.get(a.__ray_call__.remote(_actor_stats)) for name, a in actors.items()}
    namespace.clear()
    stats[DRIVER] = (os.getpid(), driver)
    return stats


def format_stats(stats):
    lines = []
    for name, (pid, per_transport) in sorted(stats.items()):
        for transport, counters in per_transport.items():
            if any(counters[f] for f in FIELDS):
                values = " ".join(f"{f}={counters[f]}" for f in FIELDS)
                lines.append(f"    {name:<9} (pid {pid}) {transport:<5} {values}")
    return lines


def main(argv):
    num_gpus = None
    if argv[:1] == ["--num-gpus"]:
        num_gpus, argv = int(argv[1]), argv[2:]
    scripts = [os.path.abspath(p) for p in argv] or DEFAULT_SCRIPTS
    if not ray.is_initialized():
        ray.init(num_cpus=8, num_gpus=num_gpus, include_dashboard=False)
    totals = {}
    for path in scripts:
        print(f"=== {os.path.basename(path)}", flush=True)
        start = time.monotonic()
        stats = run_example(path)
        print(f"--- ray_rdt.stats() from the script's actors and the driver ({time.monotonic() - start:.1f}s):")
        print("\n".join(format_stats(stats)) or "    (no plugin traffic)", flush=True)
        for _, per_transport in stats.values():
            for transport, counters in per_transport.items():
                t = totals.setdefault(transport, dict.fromkeys(FIELDS, 0))
                for f in FIELDS:
                    t[f] += counters[f]
    print("=== ray_rdt.stats() summed over all actors and the driver:")
    for transport, counters in totals.items():
        if any(counters.values()):
            print(f"    {transport:<5} " + " ".join(f"{f}={counters[f]}" for f in FIELDS))
    moved = sum(c["bytes_received"] for c in totals.values())
    print(f"=== the plugin moved {moved} bytes between processes ({moved / 2**20:.1f} MiB)")
    return totals


if __name__ == "__main__":
    main(sys.argv[1:])
