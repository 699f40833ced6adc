"""Pipelined throughput through Ray: many transfers with a fixed number in flight.

Method: one producer actor and one consumer actor (``raybench.start_cluster``,
``ray.init(num_cpus=8)``). The driver submits ``producer.get(n)`` (the producer
returns a float32 tensor of n bytes it already holds) and passes the ref straight
to ``consumer.read`` (which reads one element), dropping its own ref at once; it
keeps ``--in-flight`` (16) consumer tasks outstanding, waiting for the oldest
before it submits the next pair. A workload of COUNT transfers is timed in
``--rounds`` (10) equal rounds, each from its first submit to the ``ray.get`` of
its last result, after a warm-up of 2 x in-flight transfers; the number given is
the median of the rounds' transfers per second (min-max in brackets in the log).
Frees are part of the load: refs go out of scope while later transfers run.

Default workloads: 10,000 x 4 KiB and 1,000 x 1 MiB (``--workloads 4KiB:10000,1MiB:1000``;
``--scale 0.1`` divides every count by 10 for a quick run). Columns, all from one
run: ``object_store`` (no RDT), ``stock_gloo`` and ``stock_nixl`` (stock Ray 2.60,
a subprocess with ``RAY_RDT_PLUGIN=0``), ``plugin_gloo``, ``plugin_shm``,
``plugin_nixl`` (a second subprocess, plugin on, with object_store; in each
cluster every round runs each column once, in a new random order). Printed: the
table of transfers per second, the paths the plugin columns took (consumer's
per-path counters) and throughput ratios (higher is better; above 1x the plugin
column moves more transfers per second): every plugin column / the object store,
and / its stock counterpart (stock gloo for shm).

    python benches/pipelined.py [--workloads 4KiB:10000,1MiB:1000] [--scale S] [--in-flight 16]
                                [--rounds 10] [--configs ...] [--env KEY=VALUE ...] [--json FILE]
                                [--markdown FILE]
    ci/bench pipelined [same options]
"""

import argparse
import collections
import json
import random
import statistics
import sys
import time

import raybench as rb

CONFIGS = ["object_store", "stock_gloo", "stock_nixl", "plugin_gloo", "plugin_shm", "plugin_nixl"]
DEFAULT_WORKLOADS = "4KiB:10000,1MiB:1000"


def parse_workloads(text, scale=1.0):
    """``"4KiB:10000,1MiB:1000"`` -> ``[(4096, 10000), (1048576, 1000)]`` (counts x scale)."""
    out = []
    for item in text.split(","):
        size, count = item.split(":")
        out.append((rb.parse_size(size), max(1, int(int(count) * scale))))
    return out


def pipeline(method, consumer, nbytes, count, in_flight):
    """Seconds for ``count`` transfers with at most ``in_flight`` outstanding."""
    import ray

    outstanding = collections.deque()
    t0 = time.perf_counter()
    for _ in range(count):
        if len(outstanding) >= in_flight:
            assert ray.get(outstanding.popleft()) == 1.0
        outstanding.append(consumer.read.remote(method.remote(nbytes)))
    for r in ray.get(list(outstanding)):
        assert r == 1.0
    return time.perf_counter() - t0


def bench_cluster(configs, workloads, in_flight, rounds):
    """In a child: ``{"rates": {config: {n: transfers/s}}, "spread": {config: {n: [min, max]}},
    "paths": {config: {n: path}}}`` for ``configs`` on one fresh cluster. Per
    workload the configs' rounds are interleaved: every round runs each config
    once, in a new random order."""
    sizes = [n for n, _ in workloads]
    producer, consumer = rb.start_cluster(configs, sizes)
    methods = {config: rb.producer_method(producer, config) for config in configs}
    order = random.Random(0)
    rates, spread, paths = {c: {} for c in configs}, {c: {} for c in configs}, {c: {} for c in configs}
    for n, count in workloads:
        before = rb.consumer_stats(consumer)
        for config in configs:
            pipeline(methods[config], consumer, n, min(count, 2 * in_flight), in_flight)
        per_round = max(1, count // rounds)
        samples, _ = rb.interleaved(
            configs, lambda config: per_round / pipeline(methods[config], consumer, n, per_round, in_flight),
            rounds, order)
        after = rb.consumer_stats(consumer)
        for config in configs:
            rates[config][n] = statistics.median(samples[config])
            spread[config][n] = [min(samples[config]), max(samples[config])]
            if config in rb.PLUGIN:
                paths[config][n] = rb.path_taken(before, after, config)
            via = f"  ({paths[config][n]})" if paths[config].get(n) else ""
            print(f"  {config:<13} {per_round * rounds:>6} x {rb.fmt_size(n):>7}: {rates[config][n]:8.0f} /s "
                  f"[{spread[config][n][0]:.0f}-{spread[config][n][1]:.0f}]{via}", file=sys.stderr, flush=True)
    return {"rates": rates, "spread": spread, "paths": paths}


def report(rates, paths, workloads, in_flight):
    shown = [c for c in CONFIGS if c in rates]
    sizes = [n for n, _ in workloads]
    rows = [[f"{count:,} x {rb.fmt_size(n)}"] + [f"{rates[c][n]:,.0f}" for c in shown] for n, count in workloads]
    lines = [rb.markdown_table(["transfers/s"] + [c.replace("_", " ") for c in shown], rows), ""]
    plugin = [c for c in rb.PLUGIN if c in paths]
    if plugin:
        lines.append("paths taken (consumer's per-path counters):")
        lines += [f"  {c}: " + " ".join(f"{rb.fmt_size(n, '')}={paths[c].get(n)}" for n in sizes) for c in plugin]
    pairs = [(f"{c} / object_store", c, "object_store") for c in rb.PLUGIN]
    pairs += [(f"{c} / {rb.STOCK_COUNTERPART[c]}", c, rb.STOCK_COUNTERPART[c]) for c in rb.PLUGIN]
    ratios = rb.ratio_lines(rates, pairs, sizes)
    if ratios:
        lines.append(f"throughput ratios ({in_flight} in flight; higher is better, above 1x the plugin column "
                     "moves more per second):")
        lines += ratios
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=DEFAULT_WORKLOADS, help="SIZE:COUNT,...")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count (quick runs: 0.1)")
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="a subset of the default")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="set in the plugin cluster (repeatable)")
    parser.add_argument("--json", help="also write the rates to this file")
    parser.add_argument("--markdown", help="also write the table, paths and ratios to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workloads = parse_workloads(args.workloads, args.scale)
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}")
    if args.child:
        rb.child_result(bench_cluster(configs, workloads, args.in_flight, args.rounds))

    started = time.strftime("%Y-%m-%d %H:%M")
    child_args = ["--workloads", ",".join(f"{n}:{c}" for n, c in workloads), "--in-flight", str(args.in_flight),
                  "--rounds", str(args.rounds), "--configs"]
    env = dict(kv.split("=", 1) for kv in args.env)
    stock, plugin = rb.run_stock_and_plugin(__file__, child_args, [c for c in CONFIGS if c in configs], env)
    rates, paths = rb.merged((stock, plugin), "rates"), rb.merged((plugin,), "paths")

    header = (f"run {started}; transfers per second, median of {args.rounds} rounds, {args.in_flight} in flight, "
              "one producer and one consumer actor")
    if env:
        header += "; plugin cluster with " + " ".join(f"{k}={v}" for k, v in env.items())
    text = report(rates, paths, workloads, args.in_flight)
    print(header)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(header + "\n\n" + text + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"started": started, "env": env, "in_flight": args.in_flight, "paths": paths,
                       "rates": {c: {str(n): v for n, v in r.items()} for c, r in rates.items()}}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
