"""Would a chain help? The links alone, without Ray: one node sending a model
to two others directly (fan-out, two TCP streams out of the sender) against a
chain (the sender streams to B, which forwards every chunk to C as it
arrives: one stream out of the sender). Issue 21, item 4: a node that already
holds the object serving another node is worth building only if the
producer's link is the bottleneck.

Method: three network namespaces on one bridge (tests/python/netns.py,
``NamespaceCluster(nodes=3, ray=False)``; needs root), plain Python sockets,
4 MiB chunks. A sample is the time from the sender's start to the moment
the last receiver has every byte (one clock: the namespaces share one
kernel). Per shape, a warm-up, then the median of ``--rounds``; the shapes
interleaved per round:

* ``one``: A to B (the line rate);
* ``fanout``: A to B and A to C at once;
* ``chain``: A to B, B forwarding to C.

Then the same again with node A's veth shaped to ``--limit`` (a token bucket,
``tc qdisc ... tbf``): a sender whose link is slower than the rest of the
path, as a trainer's NIC shared by many generator nodes is. Printed: per
shape, the median time, GB/s per receiver, and the time over ``one``'s.

    python benches/relay_limit.py [--size 256MiB] [--limited-size 64MiB]
                                  [--limit 2gbit] [--rounds 5] [--json FILE]
    ci/bench relay [same options]
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "python"))  # netns.py

from raybench import fmt_ms, fmt_size, markdown_table, parse_size  # noqa: E402

CHUNK = 4 << 20
PORT = 5301
CONNECT_TIMEOUT_S = 10.0
SAMPLE_TIMEOUT_S = 300.0
SHAPES = ("one", "fanout", "chain")


# ----------------------------------------------------------------- roles (run inside a namespace)


def connect(host, port):
    """A connection to ``host:port``, retried until its listener is up."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            return socket.create_connection((host, port), timeout=SAMPLE_TIMEOUT_S)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def accept_one(port):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1)
    conn, _ = srv.accept()
    srv.close()
    conn.settimeout(SAMPLE_TIMEOUT_S)
    return conn


def receive(port, forward=None):
    """Receives one stream on ``port`` to its end (forwarding every chunk to
    ``forward``, ``host:port``, as it arrives); prints ``END <monotonic>
    <bytes>``."""
    out = connect(*forward.split(":")) if forward else None
    conn = accept_one(port)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    got = 0
    while True:
        n = conn.recv_into(view)
        if n == 0:
            break
        got += n
        if out is not None:
            out.sendall(view[:n])
    end = time.monotonic()
    if out is not None:
        out.close()
    print(f"END {end} {got}", flush=True)


def send(nbytes, targets):
    """Sends ``nbytes`` to every ``host:port`` in ``targets`` at once (a
    thread each); prints ``START <monotonic>`` just before the first byte."""
    conns = [connect(*t.split(":")) for t in targets]
    data = memoryview(bytearray(os.urandom(1 << 20)) * (CHUNK >> 20))

    def stream(conn):
        left = nbytes
        while left:
            n = min(left, CHUNK)
            conn.sendall(data[:n])
            left -= n
        conn.close()

    threads = [threading.Thread(target=stream, args=(c,)) for c in conns]
    print(f"START {time.monotonic()}", flush=True)
    [t.start() for t in threads]
    [t.join() for t in threads]


# ----------------------------------------------------------------- the harness (root namespace)


def role(cluster, node, *args):
    return cluster.popen_in(node, [sys.executable, os.path.abspath(__file__), *args], stdout=subprocess.PIPE,
                            text=True)


def stamp(proc, word):
    out, _ = proc.communicate(timeout=SAMPLE_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"a {word.lower()} side failed ({proc.returncode}): {out}")
    return float(next(l for l in out.splitlines() if l.startswith(word)).split()[1])


def sample(cluster, shape, nbytes):
    """Seconds from the sender's start until every receiver of ``shape`` has
    ``nbytes``."""
    a, b, c = cluster.nodes
    if shape == "one":
        sinks = [role(cluster, b, "--receive", str(PORT))]
        targets = [f"{b.ip}:{PORT}"]
    elif shape == "fanout":
        sinks = [role(cluster, b, "--receive", str(PORT)), role(cluster, c, "--receive", str(PORT))]
        targets = [f"{b.ip}:{PORT}", f"{c.ip}:{PORT}"]
    else:
        sinks = [role(cluster, c, "--receive", str(PORT))]
        sinks.append(role(cluster, b, "--receive", str(PORT), "--forward", f"{c.ip}:{PORT}"))
        targets = [f"{b.ip}:{PORT}"]
    source = role(cluster, a, "--send", str(nbytes), *targets)
    try:
        start = stamp(source, "START")
        return max(stamp(s, "END") for s in sinks) - start
    finally:
        for p in [source, *sinks]:
            if p.poll() is None:
                p.kill()
                p.wait()


def measure(cluster, nbytes, rounds):
    """Median seconds per shape (a warm-up round first, shapes interleaved)."""
    samples = {s: [] for s in SHAPES}
    for r in range(rounds + 1):
        for shape in SHAPES:
            t = sample(cluster, shape, nbytes)
            if r:
                samples[shape].append(t)
    return {s: statistics.median(v) for s, v in samples.items()}


def table(medians, nbytes):
    rows = [[s, fmt_ms(medians[s]), f"{nbytes / medians[s] / 1e9:.2f}", f"{medians[s] / medians['one']:.2f}x"]
            for s in SHAPES]
    return markdown_table(["shape", "time", "GB/s per receiver", "time / one"], rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="256MiB")
    p.add_argument("--limited-size", default="64MiB")
    p.add_argument("--limit", default="2gbit", help="tc rate of node A's veth in the second run")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json")
    p.add_argument("--receive", type=int, help=argparse.SUPPRESS)
    p.add_argument("--forward", help=argparse.SUPPRESS)
    p.add_argument("--send", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.receive:
        return receive(args.receive, args.forward)
    if args.send:
        return send(int(args.send[0]), args.send[1:])

    from netns import NamespaceCluster

    size, limited = parse_size(args.size), parse_size(args.limited_size)
    started = time.strftime("%Y-%m-%d %H:%M")
    with NamespaceCluster(nodes=3, ray=False) as cluster:
        plain = measure(cluster, size, args.rounds)
        a = cluster.a
        subprocess.run(["tc", "-n", a.ns, "qdisc", "add", "dev", a.veth, "root", "tbf", "rate", args.limit,
                        "burst", "1mb", "latency", "100ms"], check=True)
        shaped = measure(cluster, limited, args.rounds)
    text = (f"Fan-out vs chain, the links alone ({started}; medians of {args.rounds}; three namespaces on one "
            f"bridge)\n\n### {fmt_size(size)}, veths as they are\n\n{table(plain, size)}\n\n"
            f"### {fmt_size(limited)}, node A's veth limited to {args.limit}\n\n{table(shaped, limited)}\n")
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"started": started, "plain": plain, "shaped": shaped, "size": size, "limited_size": limited,
                       "limit": args.limit}, fh, indent=1)


if __name__ == "__main__":
    main()
