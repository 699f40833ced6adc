"""Where small objects stop gaining from travelling inside their record.

Method: one cluster (plugin on, ``ray.init(num_cpus=8)``) with two producer /
consumer pairs (``raybench.start_pair``): in one pair both actors run with
``RAY_RDT_INLINE_BYTES=0`` (every object is fetched from the producer: the
same-host path on one host), in the other with ``RAY_RDT_INLINE_BYTES`` = the
largest size (every object up to it travels inside its record). The threshold
is read by the producer when it stores an object, so both settings live in one
cluster and their samples alternate (fetch, inline, fetch, ...), which keeps the
machine's drift out of the ratios. A sample is ``raybench.one_transfer``
(submit of the producer's task to ``ray.get`` of the consumer's result, one
transfer at a time). Per size, 3 warm-ups of each cell, then 50 rounds, each
sampling every transport in both settings and the object store (no RDT, on the
first pair: the reference the plugin aims to beat) once; medians.

Printed: medians per size and transport for both settings, the ratio inline /
fetch (below 1x inlining is faster), the path each cell's transfers took
(from the consumer's counters; ``inline`` and ``same_host`` expected), and each
cell's time / the object store's.

    python benches/inline_crossover.py [--sizes 4KiB,16KiB,64KiB,256KiB,1MiB] [--configs plugin_shm,...]
                                       [--samples 50] [--json FILE]
    ci/bench inline [same options]
"""

import argparse
import json
import statistics
import sys
import time

import raybench as rb

DEFAULT_SIZES = "4KiB,16KiB,64KiB,256KiB,1MiB"
CONFIGS = ["plugin_shm", "plugin_gloo", "plugin_nixl"]


def env_options(inline_bytes):
    return {"runtime_env": {"env_vars": {"RAY_RDT_INLINE_BYTES": str(inline_bytes)}}}


def run(configs, sizes, samples):
    """``{setting: {config: {n: seconds}}}`` and ``{setting: {config: {n: path}}}``
    for the settings ``fetch`` (inline off) and ``inline`` (threshold = largest
    size); the object store appears once, under ``fetch``. Per size, every
    round samples each (setting, config) and the object store once."""
    rb.init_ray()
    pairs = {}
    for setting, threshold in (("fetch", 0), ("inline", max(sizes))):
        opts = env_options(threshold)
        pairs[setting] = rb.start_pair(configs, sizes, opts, opts)
    cells = [("fetch", "object_store")] + [(s, c) for c in configs for s in pairs]
    medians = {s: {c: {} for c in ["object_store"] + configs} for s in pairs}
    paths = {s: {c: {} for c in configs} for s in pairs}
    del medians["inline"]["object_store"]
    for n in sizes:
        methods = {(s, c): (rb.producer_method(pairs[s][0], c), pairs[s][1]) for s, c in cells}
        before = {s: rb.consumer_stats(c) for s, (_, c) in pairs.items()}
        for m, c in methods.values():
            for _ in range(rb.WARMUPS):
                rb.one_transfer(m, c, n)
        taken = {cell: [] for cell in cells}
        for _ in range(samples):
            for cell, (m, c) in methods.items():
                taken[cell].append(rb.one_transfer(m, c, n))
        after = {s: rb.consumer_stats(c) for s, (_, c) in pairs.items()}
        for (s, c), times in taken.items():
            medians[s][c][n] = statistics.median(times)
            if c != "object_store":
                paths[s][c][n] = rb.path_taken(before[s], after[s], c)
        line = "  ".join(f"{c.replace('plugin_', '')} {s} {medians[s][c][n] * 1e3:.2f} ms" for s, c in cells)
        print(f"  {rb.fmt_size(n):>8}: {line}", file=sys.stderr, flush=True)
    return medians, paths


def report(medians, paths, configs, sizes):
    header = ["bytes", "object store"]
    for c in configs:
        t = c.replace("plugin_", "")
        header += [f"{t} fetch", f"{t} inline", f"{t} inline/fetch"]
    rows = []
    for n in sizes:
        row = [rb.fmt_size(n), rb.fmt_ms(medians["fetch"]["object_store"][n])]
        for c in configs:
            f, i = medians["fetch"][c][n], medians["inline"][c][n]
            row += [rb.fmt_ms(f), rb.fmt_ms(i), rb.fmt_ratio(i / f)]
        rows.append(row)
    lines = [rb.markdown_table(header, rows), "", "paths taken (consumer's per-path counters):"]
    for s in ("fetch", "inline"):
        for c in configs:
            lines.append(f"  {c} {s}: " + " ".join(f"{rb.fmt_size(n, '')}={paths[s][c][n]}" for n in sizes))
    pairs = [(f"{c} {s} / object_store", f"{c} {s}", "object_store") for c in configs for s in ("fetch", "inline")]
    flat = {"object_store": medians["fetch"]["object_store"]}
    flat.update({f"{c} {s}": medians[s][c] for c in configs for s in ("fetch", "inline")})
    lines.append("time ratios vs the object store (lower is better):")
    lines += rb.ratio_lines(flat, pairs, sizes)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=DEFAULT_SIZES)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="a subset of the default")
    parser.add_argument("--samples", type=int, default=50, help="rounds per size (one sample of each cell)")
    parser.add_argument("--json", help="also write the medians (seconds) and paths to this file")
    args = parser.parse_args(argv)
    sizes = rb.parse_sizes(args.sizes)
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}")
    started = time.strftime("%Y-%m-%d %H:%M")
    medians, paths = run(configs, sizes, args.samples)
    print(f"run {started}; medians of {args.samples} interleaved rounds; fetch = RAY_RDT_INLINE_BYTES=0, "
          f"inline = RAY_RDT_INLINE_BYTES={max(sizes)}")
    print(report(medians, paths, configs, sizes))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"started": started, "paths": paths,
                       "medians": {s: {c: {str(n): v for n, v in r.items()} for c, r in m.items()}
                                   for s, m in medians.items()}}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
