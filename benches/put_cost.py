"""What a producer's ``ray.put(tensors, _tensor_transport=T)`` of a model costs
inside the actor, part by part (issue 18: at most 100 ms for 100,000 tensors).

Method: a local cluster (``ray.init(num_cpus=8)``, as the other benches) and
one actor with ``enable_tensor_transport=True`` that makes a float32 model of
``--size`` bytes as ``--counts`` tensors, either the rows of one matrix
(``views``) or separate allocations (``separate``), the way
``benches/weights.py`` does. The actor times ``ray.put(tensors,
_tensor_transport=T)`` for each transport (``nixl``, ``shm``; ``gloo`` is not
measured: Ray 2.60's ``ray.put`` refuses two-sided transports, which only a
task return in a collective group can use), round after round, in a new random
order each round, and reports medians. Inside the put, the parts of the put
path are timed by wrapping them with ``time.perf_counter`` (each part runs once
per put, so the wrapping costs microseconds):

* ``shape``: ``producer._shape_of`` (finding the tensors in the value);
* ``export``: ``dlpack._capsules`` (one DLPack capsule per tensor and the C
  array of their ``DLManagedTensor*``);
* ``plugin``: the C call ``rdt_context_put`` (the Rust store, layout,
  transport export and metadata record);
* ``commit``: ``dlpack.Exported.commit`` (the capsules give up their tensors);
* ``serialize``: the msgpack serialization of the value's stand-in;
* ``claim``: ``producer.claim_pending_put`` (binding the put to its ref);
* ``gc``: time Python's cyclic garbage collector ran during the put (from
  ``gc.callbacks``; it overlaps the parts above), and ``gc_runs``;
* ``other``: the total less the parts (Ray's own put: ``put_object`` in the
  core worker, the RDT manager's bookkeeping).

Scenarios, per model and transport:

* ``freed``: the previous put's ref is dropped and its object freed (the
  actor waits until the plugin no longer holds it) before the next put;
* ``alive``: the previous put's ref is still alive during the next put and
  dropped right after it (its free may run while later code runs);
* ``step``: as ``benches/weights.py``'s step: the put returns ``[ref]`` to the
  driver, which keeps it until it asks for the next put and drops it just
  before (so the owner's free of the previous object races the next put).

    python benches/put_cost.py [--size 256MiB] [--counts 100000,10000]
                               [--layouts views,separate] [--transports nixl,shm]
                               [--scenarios freed,alive,step] [--rounds 7] [--json FILE]

Every benchmark measures and prints; none asserts anything about time.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import raybench as rb  # noqa: E402

# Part name -> (module, attribute path) of the function it times.
PARTS = {
    "shape": ("ray_rdt.producer", "_shape_of"),
    "export": ("ray_rdt.dlpack", "_capsules"),
    "commit": ("ray_rdt.dlpack", "Exported.commit"),
    "serialize": ("ray._private.serialization", "SerializationContext._serialize_to_msgpack"),
    "claim": ("ray_rdt.producer", "claim_pending_put"),
}
COLUMNS = ("total", "shape", "export", "plugin", "commit", "serialize", "claim", "other", "gc", "gc_runs")


def model(size, count, layout):
    """``count`` float32 tensors of ``size`` bytes in all: rows of one matrix
    (``views``) or separate allocations (``separate``)."""
    import torch

    per = max(1, size // count // 4)
    if layout == "views":
        w = torch.ones((count, per))
        return [w[i] for i in range(count)]
    return [torch.ones((per,)) for _ in range(count)]


def actor_class():
    import ray

    @ray.remote(enable_tensor_transport=True)
    class Putter:
        def __init__(self):
            self.tensors = []
            self.prev = None
            self.times = {}
            self._instrument()

        def _instrument(self):
            """Wraps each part's function and the plugin's C call with timers
            that add to ``self.times``."""
            import functools
            import gc
            import importlib

            times = self.times

            def timed(name, fn):
                @functools.wraps(fn)
                def wrapper(*args, **kwargs):
                    t0 = time.perf_counter()
                    try:
                        return fn(*args, **kwargs)
                    finally:
                        times[name] = times.get(name, 0.0) + time.perf_counter() - t0

                return wrapper

            for name, (module, path) in PARTS.items():
                owner = importlib.import_module(module)
                *outer, attr = path.split(".")
                for part in outer:
                    owner = getattr(owner, part)
                if hasattr(owner, attr):
                    setattr(owner, attr, timed(name, getattr(owner, attr)))

            from ray_rdt import process

            ctx = process.get_context()

            class Lib:
                """The plugin's library, its ``rdt_context_put`` timed."""

                def __init__(self, lib):
                    self._inner = lib
                    self.rdt_context_put = timed("plugin", lib.rdt_context_put)

                def __getattr__(self, name):
                    return getattr(self._inner, name)

            ctx._lib = Lib(ctx._lib)

            started = []

            def on_gc(phase, info):
                if phase == "start":
                    started.append(time.perf_counter())
                elif started:
                    times["gc"] = times.get("gc", 0.0) + time.perf_counter() - started.pop()
                    times["gc_runs"] = times.get("gc_runs", 0) + 1

            gc.callbacks.append(on_gc)

        def make(self, size, count, layout):
            self.prev = None
            self.tensors = model(size, count, layout)

        def drop(self):
            """Drops the previous put's ref and waits until its object is freed."""
            if self.prev is not None:
                ref_hex = self.prev.hex()
                self.prev = None
                self._wait_freed(ref_hex)

        def _wait_freed(self, ref_hex, timeout=30.0):
            """Waits until the plugin no longer holds the object put under ``ref_hex``."""
            store = ray._private.worker.global_worker.rdt_manager.rdt_store
            deadline = time.monotonic() + timeout
            while store.has_object(ref_hex) and time.monotonic() < deadline:
                time.sleep(0.005)

        def put(self, transport, scenario):
            """One timed put: ``({part: seconds}, [ref] for the step scenario)``."""
            if scenario == "freed":
                self.drop()
            self.times.clear()
            t0 = time.perf_counter()
            ref = ray.put(self.tensors, _tensor_transport=transport)
            total = time.perf_counter() - t0
            out = dict(self.times)
            out["total"] = total
            out["other"] = total - sum(out.get(p, 0.0) for p in list(PARTS) + ["plugin"])
            if scenario == "step":
                return out, [ref]
            self.prev = ref  # alive: dropped when the next put replaces it
            return out, None

    return Putter


def measure(args):
    import ray

    rb.init_ray()
    Putter = actor_class()
    rng = random.Random(0)
    results = {}
    for count in args.counts:
        for layout in args.layouts:
            putter = Putter.remote()
            ray.get(putter.make.remote(args.size, count, layout))
            results[f"{rb.fmt_size(args.size)}/{count}/{layout}"] = {
                f"{t}/{s}": {c: statistics.median(p.get(c, 0.0) for p in parts) for c in COLUMNS}
                for (t, s), parts in scenario_samples(putter, args, rng).items()
            }
            ray.kill(putter)
    return results


def scenario_samples(putter, args, rng):
    """``{(transport, scenario): [parts of each timed put]}``: per scenario, a
    warm-up round and ``args.rounds`` rounds, each putting once per
    transport in a new random order."""
    import ray

    samples = {}
    for scenario in args.scenarios:
        held = None  # step: the driver's ref to the previous put
        for round_no in range(args.rounds + 1):
            for transport in rng.sample(args.transports, len(args.transports)):
                held = None  # dropped just before the next put is asked for
                parts, held = ray.get(putter.put.remote(transport, scenario))
                if round_no:
                    samples.setdefault((transport, scenario), []).append(parts)
        del held
        ray.get(putter.drop.remote())
    return samples


def table(results):
    """Markdown table of the medians (ms; gc_runs as a count)."""
    lines = ["| model | transport/scenario | " + " | ".join(COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for model_key, cells in results.items():
        for cell, med in cells.items():
            vals = [f"{med[c]:.1f}" if c == "gc_runs" else f"{med[c] * 1e3:.1f}" for c in COLUMNS]
            lines.append(f"| {model_key} | {cell} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=rb.parse_size, default=rb.parse_size("256MiB"))
    p.add_argument("--counts", default="100000,10000")
    p.add_argument("--layouts", default="views,separate")
    p.add_argument("--transports", default="nixl,shm")
    p.add_argument("--scenarios", default="freed,alive,step")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", help="write the medians (seconds) here")
    args = p.parse_args()
    args.counts = [int(c) for c in args.counts.split(",")]
    args.layouts = args.layouts.split(",")
    args.transports = args.transports.split(",")
    args.scenarios = args.scenarios.split(",")
    results = measure(args)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
