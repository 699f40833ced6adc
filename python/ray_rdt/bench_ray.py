"""End-to-end benchmark through Ray: one actor hands a float32 tensor to another.

Method (BASELINE.md): the producer actor returns a tensor it already holds, the
consumer actor reads one element; a sample is the time from submitting the
producer's task to ``ray.get`` of the consumer's result. Two actors,
``ray.init(num_cpus=8)``. Medians per size for:

* ``object_store``  - no RDT (plain return through Ray's object store)
* ``stock_gloo``    - stock Ray 2.60 RDT gloo, in a subprocess with RAY_RDT_PLUGIN=0
* ``plugin_gloo``   - RDT gloo through libray_rdt
* ``plugin_shm``    - RDT shm through libray_rdt
* ``stock_nixl``    - stock Ray 2.60 RDT nixl (NIXL's Python API), same subprocess
* ``plugin_nixl``   - RDT nixl through libray_rdt
* ``memcpy``        - one single-threaded copy of the same bytes (numpy)

    python python/ray_rdt/bench_ray.py [--sizes 4KiB,4MiB,64MiB,256MiB] [--json FILE]

The last line of the output gives the ratios.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "B": 1}
DEFAULT_SIZES = "4KiB,4MiB,64MiB,256MiB"
CONFIGS = ["object_store", "stock_gloo", "plugin_gloo", "plugin_shm", "stock_nixl", "plugin_nixl", "memcpy"]
EXTRA_CONFIGS = []
STOCK_CONFIGS = ("stock_gloo", "stock_nixl")
PLUGIN_CONFIGS = ("object_store", "plugin_gloo", "plugin_shm", "plugin_nixl")


def parse_size(text: str) -> int:
    for unit in ("KiB", "MiB", "GiB", "B"):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * UNITS[unit])
    return int(text)


def fmt_size(n: int) -> str:
    for unit in ("GiB", "MiB", "KiB"):
        if n >= UNITS[unit] and n % UNITS[unit] == 0:
            return f"{n // UNITS[unit]} {unit}"
    return f"{n} B"


def iterations(nbytes: int) -> int:
    if nbytes <= 1 << 20:
        return 50
    if nbytes <= 16 << 20:
        return 20
    if nbytes <= 64 << 20:
        return 10
    return 6


def bench_memcpy(sizes):
    import numpy as np

    out = {}
    for n in sizes:
        src = np.ones(n // 4, dtype=np.float32)
        dst = np.empty_like(src)
        np.copyto(dst, src)
        samples = []
        for _ in range(max(5, iterations(n))):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            samples.append(time.perf_counter() - t0)
        out[n] = statistics.median(samples)
    return out


def bench_ray(configs, sizes):
    """Runs ``configs`` (names above, minus memcpy) on one fresh local cluster."""
    import ray
    import torch

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)

    @ray.remote(enable_tensor_transport=True)
    class Producer:
        def __init__(self):
            self.tensors = {}

        def make(self, nbytes):
            self.tensors[nbytes] = torch.ones(nbytes // 4, dtype=torch.float32)

        def get(self, nbytes):
            return self.tensors[nbytes]

    @ray.remote(enable_tensor_transport=True)
    class Consumer:
        def read(self, tensor):
            return float(tensor[0])

    producer, consumer = Producer.remote(), Consumer.remote()
    ray.get([producer.make.remote(n) for n in sizes])
    ray.get(consumer.read.remote(torch.ones(1)))
    if any(c.endswith("gloo") for c in configs):
        from ray.experimental.collective import create_collective_group

        create_collective_group([producer, consumer], backend="torch_gloo")

    transports = {
        "object_store": None,
        "stock_gloo": "gloo",
        "stock_nixl": "nixl",
        "plugin_gloo": "gloo",
        "plugin_shm": "shm",
        "plugin_nixl": "nixl",
    }
    results = {}
    for config in configs:
        transport = transports[config]
        method = producer.get if transport is None else producer.get.options(tensor_transport=transport)
        results[config] = {}
        for n in sizes:

            def once():
                t0 = time.perf_counter()
                ref = method.remote(n)
                value = ray.get(consumer.read.remote(ref))
                dt = time.perf_counter() - t0
                assert value == 1.0
                del ref
                return dt

            for _ in range(3):
                once()
            samples = [once() for _ in range(iterations(n))]
            results[config][n] = statistics.median(samples)
            print(f"  {config:<13} {fmt_size(n):>8}: {results[config][n] * 1e3:9.2f} ms", file=sys.stderr, flush=True)
    counters = None
    if any(c.startswith("plugin") for c in configs):
        import ray_rdt

        counters = ray.get(consumer.__ray_call__.remote(lambda self: ray_rdt.stats()))
    ray.shutdown()
    return results, counters


def run_stock_child(configs, sizes):
    """Stock configs in a subprocess with the plugin off (its own Ray cluster)."""
    env = dict(os.environ, RAY_RDT_PLUGIN="0")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--configs", ",".join(configs)]
    cmd += ["--sizes", ",".join(str(n) for n in sizes)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return {c: {int(k): v for k, v in r.items()} for c, r in json.loads(line[len("RESULT ") :]).items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=DEFAULT_SIZES)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--json", help="also write the medians (seconds) to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]

    configs = args.configs.split(",")
    unknown = set(configs) - set(CONFIGS) - set(EXTRA_CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}")
    if args.child:
        results, _ = bench_ray(configs, sizes)
        print("RESULT " + json.dumps(results), flush=True)
        # Stock NIXL's Python wheels crash the process at exit here (SIGSEGV in
        # their bundled libnl-route-3's destructor when the system's libnl is
        # loaded too; see tests/python/stock_mode_check.py): skip exit handlers.
        sys.stderr.flush()
        os._exit(0)

    medians = {}
    stock = [c for c in configs if c in STOCK_CONFIGS]
    if stock:
        print(f"stock Ray 2.60 {stock} (RAY_RDT_PLUGIN=0, subprocess):", file=sys.stderr, flush=True)
        medians.update(run_stock_child(stock, sizes))
    ray_configs = [c for c in configs if c in PLUGIN_CONFIGS]
    counters = None
    if ray_configs:
        print("patched Ray with the plugin:", file=sys.stderr, flush=True)
        results, counters = bench_ray(ray_configs, sizes)
        medians.update(results)
    if "memcpy" in configs:
        medians["memcpy"] = bench_memcpy(sizes)

    shown = [c for c in CONFIGS + EXTRA_CONFIGS if c in medians]
    print(f"{'bytes':>8}  " + "  ".join(f"{c:>19}" for c in shown))
    for n in sizes:
        cells = []
        for c in shown:
            t = medians[c][n]
            gbps = n / t / 1e9 if t > 0 else float("inf")
            cells.append(f"{t * 1e3:9.2f} ms {gbps:5.2f}GB/s")
        print(f"{fmt_size(n):>8}  " + "  ".join(f"{x:>19}" for x in cells))
    if counters is not None:
        moved = {t: c["bytes_received"] for t, c in counters.items() if c["bytes_received"]}
        print(f"consumer's ray_rdt.stats() bytes_received: {moved}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({c: {str(n): v for n, v in medians[c].items()} for c in shown}, fh, indent=1)
    ratios = []
    for base, others in (("stock_gloo", ("plugin_gloo", "plugin_shm")), ("stock_nixl", ("plugin_nixl",))):
        for c in others:
            if base in medians and c in medians:
                parts = " ".join(f"{fmt_size(n).replace(' ', '')}={medians[base][n] / medians[c][n]:.2f}x" for n in sizes)
                ratios.append(f"{c} vs {base}: {parts}")
    if "object_store" in medians and "plugin_shm" in medians:
        parts = " ".join(f"{fmt_size(n).replace(' ', '')}={medians['object_store'][n] / medians['plugin_shm'][n]:.2f}x" for n in sizes)
        ratios.append(f"plugin_shm vs object_store: {parts}")
    print("ratios (speedup, higher is better): " + " | ".join(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
