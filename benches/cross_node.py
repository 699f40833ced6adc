"""Cross-node benchmark: one actor on node A hands a float32 tensor to an actor
on node B, the two Ray nodes in two network namespaces joined by a veth pair
(tests/python/netns.py; needs root).

Method (as benches/ray_e2e.py, BASELINE.md; actors from benches/raybench.py):
the producer returns a tensor it already holds, the consumer reads one element;
a sample is the time from submitting the producer's task to ``ray.get`` of the
consumer's result; 3 warm-up rounds, then the median of ray_e2e's sample
count per size, the columns of a cluster interleaved (every round samples each
once, in a new random order; ``raybench.interleaved_samples``). Two clusters,
one after the other, each with its own namespaces:

* stock (``RAY_RDT_PLUGIN=0``): ``object_store`` (plain return through Ray's
  object store), ``stock_gloo``, ``stock_nixl`` (stock Ray 2.60 RDT);
* plugin: ``plugin_gloo``, ``plugin_nixl`` (RDT through libray_rdt), checked
  against the consumer's ``ray_rdt.stats()``.

The physical limit is the veth's line rate, measured in the same run: one TCP
stream (plain Python sockets) sending 256 MiB from namespace A to namespace B,
median of 5 after a warm-up. A configuration that fails is reported as
``fails: <reason>`` (the others still run).

    python benches/cross_node.py [--sizes 4KiB,4MiB,64MiB,256MiB] [--markdown FILE] [--json FILE]
                                 [--configs object_store,stock_gloo,...] [--env KEY=VALUE ...]
    ci/bench cross-node [same options]

Every Ray process runs with ``UCX_TLS=tcp,self`` (netns's default), which
keeps NIXL's UCX on the network path: the two namespaces share one kernel,
and UCX otherwise moves the bytes through a same-host transport (faster than
the veth; not what two real hosts do). After each size's samples, one more
transfer per configuration is counted at node A's veth: the table of bytes
that left node A shows what really crossed the link. ``--env`` sets (or
overrides) a variable for every Ray process and driver of both clusters.
"""

import argparse
import json
import os
import random
import re
import socket
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "python"))  # netns.py; ray_rdt comes from the venv

from raybench import (  # noqa: E402
    DEFAULT_SIZES,
    WARMUPS,
    child_result,
    fmt_ms,
    fmt_size,
    interleaved_samples,
    markdown_table,
    one_transfer,
    parse_size,
    producer_method,
    start_cluster,
)
from netns import NETWORK_ONLY_ENV, NamespaceCluster, veth_tx_bytes  # noqa: E402

STOCK = ["object_store", "stock_gloo", "stock_nixl"]
PLUGIN = ["plugin_gloo", "plugin_nixl"]
SAMPLE_TIMEOUT = 120.0
LINE_RATE_BYTES = 256 << 20
LINE_RATE_ROUNDS = 5
LINE_RATE_PORT = 5201
CHUNK = 4 << 20
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def short_error(e: BaseException) -> str:
    """The cause of a (Ray task) error: its last informative line."""
    lines = [l.strip() for l in ANSI.sub("", str(e)).splitlines() if l.strip()]
    return (lines[-1] if lines else type(e).__name__)[:400]


def reason(error: str) -> str:
    """An error's reason for a table cell: what follows the last "failed: ",
    without the call site in parentheses at its end."""
    text = error.rsplit("failed: ", 1)[-1]
    return re.sub(r"\s*\(RDT_ERR_\w+ from \w+\)$", "", text)[:160]


# ----------------------------------------------------------------- inside namespace A: the Ray driver


def bytes_out(method, consumer, nbytes):
    """Bytes that left node A during one more transfer of ``nbytes`` (the
    veth's counter: what really crossed the link, whatever the transport did)."""
    before = veth_tx_bytes()
    one_transfer(method, consumer, nbytes, SAMPLE_TIMEOUT)
    return veth_tx_bytes() - before


def bench_child(configs, sizes):
    """Runs ``configs`` on the two-node cluster at RAY_ADDRESS (producer on node
    A, consumer on node B); prints one ``RESULT`` line (medians in seconds, or
    the error of a configuration that failed) and the consumer's counters."""
    import ray

    producer, consumer = start_cluster(configs, sizes, producer_options={"resources": {"node_a": 1}},
                                       consumer_options={"resources": {"node_b": 1}},
                                       address=os.environ["RAY_ADDRESS"])
    assert ray.get(consumer.node_ip.remote()) == os.environ["RDT_NODE_B_IP"]

    methods = {config: producer_method(producer, config) for config in configs}
    rng = random.Random(0)
    results = {config: {} for config in configs}
    sent = {config: {} for config in configs}
    for n in sizes:
        samples, errors = interleaved_samples(methods, consumer, n, rng, SAMPLE_TIMEOUT, keep_going=True)
        for config, error in errors.items():
            results[config] = {"error": short_error(error)}
            del methods[config]  # a failed config leaves the larger sizes too
            print(f"  {config:<13} {fmt_size(n):>8}: fails: {results[config]['error']}", file=sys.stderr, flush=True)
        for config, seconds in samples.items():
            results[config][n] = statistics.median(seconds)
            sent[config][n] = bytes_out(methods[config], consumer, n)
            print(f"  {config:<13} {fmt_size(n):>8}: {results[config][n] * 1e3:9.2f} ms, "
                  f"{sent[config][n] / n:.2f}x the object left node A", file=sys.stderr, flush=True)
    counters = None
    if os.environ.get("RAY_RDT_PLUGIN", "1") != "0":
        counters = ray.get(consumer.__ray_call__.remote(lambda self: __import__("ray_rdt").stats()))
    child_result({"medians": results, "bytes_out": sent, "consumer_stats": counters})


# ----------------------------------------------------------------- the veth's line rate


def tcp_sink(host, port, nbytes, rounds):
    """In namespace B: accepts ``rounds`` connections, reads ``nbytes`` from
    each, then answers one byte (so the sender's clock stops at delivery)."""
    srv = socket.create_server((host, port))
    buf = bytearray(CHUNK)
    for _ in range(rounds):
        conn, _ = srv.accept()
        with conn:
            left = nbytes
            while left:
                got = conn.recv_into(buf, min(left, CHUNK))
                if not got:
                    raise ConnectionError("sender closed early")
                left -= got
            conn.sendall(b"k")


def tcp_source(host, port, nbytes, rounds):
    """In namespace A: sends ``nbytes`` per connection to the sink; prints the
    seconds of each round (first byte out to the sink's answer)."""
    data = memoryview(bytearray(b"\x01" * CHUNK))
    samples = []
    for _ in range(rounds):
        deadline = time.monotonic() + 15
        while True:
            try:
                conn = socket.create_connection((host, port), timeout=30)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with conn:
            t0 = time.perf_counter()
            left = nbytes
            while left:
                k = min(left, CHUNK)
                conn.sendall(data[:k])
                left -= k
            if conn.recv(1) != b"k":
                raise ConnectionError("no answer from the sink")
            samples.append(time.perf_counter() - t0)
    print("RESULT " + json.dumps(samples), flush=True)


def measure_line_rate(cluster):
    """Bytes per second of one TCP stream from namespace A to namespace B."""
    rounds = LINE_RATE_ROUNDS + 1
    args = [cluster.b.ip, str(LINE_RATE_PORT), str(LINE_RATE_BYTES), str(rounds)]
    sink = cluster.popen_in(cluster.b, [sys.executable, os.path.abspath(__file__), "--tcp-sink", *args])
    try:
        out = cluster.run_driver(os.path.abspath(__file__), "--tcp-source", *args, timeout=300)
        if out.returncode != 0 or out.result is None:
            raise RuntimeError(f"line-rate measurement failed: {out.describe()}")
        sink.wait(timeout=30)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    return LINE_RATE_BYTES / statistics.median(out.result[1:])


# ----------------------------------------------------------------- the two clusters and the table


def run_on_nodes(plugin, env, script, args, label, nodes=2, line_rate=False, timeout=1800):
    """Starts a cluster of ``nodes`` namespaces (``plugin``: ``RAY_RDT_PLUGIN``
    on or off; ``env`` for every Ray process and driver), measures the line
    rate from A to B first when ``line_rate``, then runs ``python script
    args`` as the driver in namespace A and passes its progress lines (stderr
    lines that start with two spaces) through. Returns ``(the driver's
    RESULT, line rate in bytes per second or None)``; the cluster is torn
    down either way."""
    print(f"{label}: starting a {nodes}-node cluster", file=sys.stderr, flush=True)
    with NamespaceCluster(plugin=plugin, nodes=nodes, extra_env=env) as cluster:
        rate = measure_line_rate(cluster) if line_rate else None
        if rate:
            print(f"  veth line rate (1 TCP stream, {fmt_size(LINE_RATE_BYTES)}): {rate / 1e9:.2f} GB/s",
                  file=sys.stderr, flush=True)
        out = cluster.run_driver(os.path.abspath(script), *args, timeout=timeout)
        sys.stderr.write(out.stderr if out.result is None else "".join(
            l + "\n" for l in out.stderr.splitlines() if l.startswith("  ")))
        if out.result is None:
            raise RuntimeError(f"the {label} benchmark driver failed: {out.describe()}")
    return out.result, rate


def run_cluster(plugin, configs, sizes, env, line_rate=False):
    """This benchmark's ``configs`` on a two-node cluster: ``(medians, bytes
    out of node A per transfer, the consumer's plugin counters, line rate or
    None)``."""
    label = "plugin" if plugin else "stock Ray 2.60 (RAY_RDT_PLUGIN=0)"
    result, rate = run_on_nodes(plugin, env, __file__, ["--child", "--configs", ",".join(configs),
                                                        "--sizes", ",".join(str(n) for n in sizes)],
                                label, line_rate=line_rate)
    medians = {c: (r if "error" in r else {int(k): v for k, v in r.items()}) for c, r in result["medians"].items()}
    sent = {c: {int(k): v for k, v in r.items()} for c, r in result["bytes_out"].items()}
    return medians, sent, result["consumer_stats"], rate


def cell(medians, config, n):
    r = medians.get(config)
    if r is None:
        return "not run"
    if "error" in r:
        return f"fails: {reason(r['error'])}"
    return fmt_ms(r[n])


def speedup(medians, stock, plugin, n):
    s, p = medians.get(stock, {}), medians.get(plugin, {})
    if n not in s or n not in p:
        return "-"
    return f"{s[n] / p[n]:.2f}x"


def table(medians, sizes, rate):
    header = ["bytes", "object store", "stock gloo", "plugin gloo", "gloo speedup", "stock nixl", "plugin nixl",
              "nixl speedup", "veth line rate"]
    rows = []
    for n in sizes:
        rows.append([fmt_size(n), cell(medians, "object_store", n), cell(medians, "stock_gloo", n),
                     cell(medians, "plugin_gloo", n), speedup(medians, "stock_gloo", "plugin_gloo", n),
                     cell(medians, "stock_nixl", n), cell(medians, "plugin_nixl", n),
                     speedup(medians, "stock_nixl", "plugin_nixl", n), fmt_ms(n / rate)])
    return markdown_table(header, rows)


def bytes_out_table(sent, sizes, configs):
    """Bytes that left node A in one transfer, over the object's size."""
    header = ["bytes"] + [c.replace("_", " ") for c in configs]
    rows = [[fmt_size(n)] + [f"{sent[c][n] / n:.2f}x" if n in sent.get(c, {}) else "-" for c in configs]
            for n in sizes]
    return markdown_table(header, rows)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["cross-node"]:  # ci/bench passes its own case name through
        argv = argv[1:]
    if argv[:1] == ["--tcp-sink"]:
        host, port, nbytes, rounds = argv[1:5]
        return tcp_sink(host, int(port), int(nbytes), int(rounds))
    if argv[:1] == ["--tcp-source"]:
        host, port, nbytes, rounds = argv[1:5]
        return tcp_source(host, int(port), int(nbytes), int(rounds))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=DEFAULT_SIZES)
    parser.add_argument("--markdown", help="also write the table (markdown) to this file")
    parser.add_argument("--json", help="also write the medians (seconds) and the line rate to this file")
    parser.add_argument("--configs", default=",".join(STOCK + PLUGIN), help="a subset of the default")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="set for every Ray process and driver of both clusters (repeatable)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    configs = [c for c in args.configs.split(",") if c]
    if args.child:
        return bench_child(configs, sizes)
    unknown = set(configs) - set(STOCK + PLUGIN)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}")
    env = dict(kv.split("=", 1) for kv in args.env)

    started = time.strftime("%Y-%m-%d %H:%M")
    medians, sent = {}, {}
    stock = [c for c in STOCK if c in configs]
    if stock:
        stock_medians, stock_sent, _, _ = run_cluster(False, stock, sizes, env)
        medians.update(stock_medians)
        sent.update(stock_sent)
    plugin_medians, plugin_sent, counters, rate = run_cluster(True, [c for c in PLUGIN if c in configs], sizes,
                                                              env, line_rate=True)
    medians.update(plugin_medians)
    sent.update(plugin_sent)

    text = table(medians, sizes, rate)
    text += "\n\nBytes that left node A (its veth's transmit counter) in one more transfer, over the object's size:\n\n"
    text += bytes_out_table(sent, sizes, [c for c in STOCK + PLUGIN if c in configs])
    moved = {t: c["bytes_received"] for t, c in (counters or {}).items() if c["bytes_received"]}
    notes = [
        f"run {started}; producer on node A, consumer on node B; medians of ray_e2e's sample counts "
        f"after {WARMUPS} warm-ups",
        f"veth line rate: {rate / 1e9:.2f} GB/s (one TCP stream, {fmt_size(LINE_RATE_BYTES)}, median of "
        f"{LINE_RATE_ROUNDS}); its column is the time for the bytes at that rate",
        f"consumer's ray_rdt.stats() bytes_received (plugin cluster): {moved}",
    ]
    notes.append("environment of both clusters: " + " ".join(f"{k}={v}" for k, v in {**NETWORK_ONLY_ENV, **env}.items()))
    notes += [f"{c} fails: {r['error']}" for c, r in medians.items() if "error" in r]
    print(text)
    print("\n".join(notes))
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"line_rate_bytes_per_s": rate, "consumer_stats": counters,
                       "medians": {c: (r if "error" in r else {str(n): v for n, v in r.items()})
                                   for c, r in medians.items()},
                       "bytes_out": {c: {str(n): v for n, v in r.items()} for c, r in sent.items()}}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
