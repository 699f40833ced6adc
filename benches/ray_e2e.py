"""End-to-end latency through Ray: one actor hands a float32 tensor to another.

Method (../shared/BASELINE.md): the producer actor returns a tensor it already
holds, the consumer actor reads one element; a sample is the time from
submitting the producer's task to ``ray.get`` of the consumer's result (one
transfer at a time). Two actors, ``ray.init(num_cpus=8)``; per size 3 warm-up
rounds, then the median of 50 samples up to 1 MiB, 20 up to 16 MiB, 10 up to
64 MiB, 6 above. Columns, all from one run:

* ``object_store`` - no RDT: a plain return through Ray's object store;
* ``stock_gloo``, ``stock_nixl`` - stock Ray 2.60 RDT (``__ray_send__`` /
  ``__ray_recv__`` tasks; NIXL's Python API), in a subprocess with
  ``RAY_RDT_PLUGIN=0`` and its own cluster;
* ``plugin_gloo``, ``plugin_shm``, ``plugin_nixl`` - RDT through libray_rdt,
  on one cluster (a second subprocess, plugin on), together with
  ``object_store``: per size, each round samples every column of that cluster
  once, in a new random order;
* ``memcpy`` - one single-threaded copy of the same bytes (numpy), the
  physical reference on one host.

Printed: the table of medians (GB/s from 1 MiB on), the path each plugin
column's transfers took at each size (from the consumer's per-path counters:
``inline`` = inside the record, ``same_host`` = shared memory, ``network`` =
the declared transport's own path), and time ratios (lower is better; below
1 the plugin column is faster): every plugin column / its stock counterpart
(stock gloo for shm: stock Ray has no shm), / the object store, / memcpy.

    python benches/ray_e2e.py [--sizes 4KiB,4MiB,64MiB,256MiB] [--configs object_store,...]
                              [--env KEY=VALUE ...] [--json FILE] [--markdown FILE]
    ci/bench ray [same options]

``--env`` sets a variable in the plugin cluster only (e.g.
``RAY_RDT_SAME_HOST_PATH=0``, ``RAY_RDT_INLINE_BYTES=0``).
"""

import argparse
import json
import random
import statistics
import sys
import time

import raybench as rb

CONFIGS = ["object_store", "stock_gloo", "plugin_gloo", "plugin_shm", "stock_nixl", "plugin_nixl", "memcpy"]
TITLES = {
    "object_store": "object store",
    "stock_gloo": "stock gloo",
    "plugin_gloo": "plugin gloo",
    "plugin_shm": "plugin shm",
    "stock_nixl": "stock nixl",
    "plugin_nixl": "plugin nixl",
    "memcpy": "memcpy",
}


def bench_cluster(configs, sizes):
    """In a child: runs ``configs`` on one fresh cluster, interleaved: per size,
    every round samples each config once, in a new random order (so drift and
    other load hit all columns alike). Returns ``{"medians": {config: {n:
    seconds}}, "paths": {config: {n: path}}, "bytes_received": {transport:
    bytes}}``."""
    producer, consumer = rb.start_cluster(configs, sizes)
    methods = {config: rb.producer_method(producer, config) for config in configs}
    rng = random.Random(0)
    medians, paths = {c: {} for c in configs}, {c: {} for c in configs}
    for n in sizes:
        before = rb.consumer_stats(consumer)
        samples, _ = rb.interleaved_samples(methods, consumer, n, rng)
        after = rb.consumer_stats(consumer)
        for config in configs:
            medians[config][n] = statistics.median(samples[config])
            if config in rb.PLUGIN:
                paths[config][n] = rb.path_taken(before, after, config)
            via = f"  ({paths[config][n]})" if paths[config].get(n) else ""
            print(f"  {config:<13} {rb.fmt_size(n):>8}: {medians[config][n] * 1e3:9.2f} ms{via}", file=sys.stderr,
                  flush=True)
    stats = rb.consumer_stats(consumer)
    moved = {t: c["bytes_received"] for t, c in (stats or {}).items() if c["bytes_received"]}
    return {"medians": medians, "paths": paths, "bytes_received": moved}


def cell(medians, config, n):
    t = medians[config][n]
    if config != "memcpy" and n >= 1 << 20:
        return f"{rb.fmt_ms(t)} ({n / t / 1e9:.2f} GB/s)"
    return rb.fmt_ms(t)


def report(medians, paths, sizes, moved):
    """The table, the paths and the ratios, as printed (and written with --markdown)."""
    shown = [c for c in CONFIGS if c in medians]
    rows = [[rb.fmt_size(n)] + [cell(medians, c, n) for c in shown] for n in sizes]
    lines = [rb.markdown_table(["bytes"] + [TITLES[c] for c in shown], rows), ""]
    plugin = [c for c in rb.PLUGIN if c in paths]
    if plugin:
        lines.append("paths taken (consumer's per-path counters):")
        for c in plugin:
            lines.append(f"  {c}: " + " ".join(f"{rb.fmt_size(n, '')}={paths[c].get(n)}" for n in sizes))
        lines.append(f"consumer's ray_rdt.stats() bytes_received: {moved}")
    pairs = [(f"{c} / {rb.STOCK_COUNTERPART[c]}", c, rb.STOCK_COUNTERPART[c]) for c in rb.PLUGIN]
    pairs += [(f"{c} / object_store", c, "object_store") for c in rb.PLUGIN]
    pairs += [(f"{c} / memcpy", c, "memcpy") for c in rb.PLUGIN]
    ratios = rb.ratio_lines(medians, pairs, sizes)
    if ratios:
        lines.append("time ratios (median / median; lower is better, below 1x the plugin column is faster):")
        lines += ratios
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=rb.DEFAULT_SIZES)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="a subset of the default")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="set in the plugin cluster (repeatable)")
    parser.add_argument("--json", help="also write medians (seconds) and paths to this file")
    parser.add_argument("--markdown", help="also write the table, paths and ratios to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = rb.parse_sizes(args.sizes)
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}")
    if args.child:
        rb.child_result(bench_cluster(configs, sizes))

    started = time.strftime("%Y-%m-%d %H:%M")
    child_args = ["--sizes", ",".join(str(n) for n in sizes), "--configs"]
    env = dict(kv.split("=", 1) for kv in args.env)
    stock, plugin = rb.run_stock_and_plugin(__file__, child_args, [c for c in CONFIGS if c in configs], env)
    medians, paths = rb.merged((stock, plugin), "medians"), rb.merged((plugin,), "paths")
    moved = plugin["bytes_received"] if plugin else {}
    if "memcpy" in configs:
        medians["memcpy"] = rb.memcpy_medians(sizes)

    text = report(medians, paths, sizes, moved)
    header = f"run {started}; medians; through Ray, one transfer at a time"
    if env:
        header += "; plugin cluster with " + " ".join(f"{k}={v}" for k, v in env.items())
    print(header)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(header + "\n\n" + text + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"started": started, "env": env, "paths": paths,
                       "medians": {c: {str(n): v for n, v in r.items()} for c, r in medians.items()}}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
