"""Soak benchmark: many transfers between one producer and one consumer actor,
and what each side's process holds before and after.

For each configuration, one producer actor returns a 1 MiB uint8 tensor per
task (``tensor_transport=<transport>``) and one consumer actor receives it as
an argument and checks its bytes; 16 consumer tasks are in flight at a time.
After a warm-up and after each part of the run, each actor reports from
``/proc/self``: resident memory (RSS), open file descriptors, threads, shared
memory segments (memfds: descriptors linking to ``/memfd:`` and distinct
``/memfd:`` files mapped), and the plugin's NIXL registrations
(``ray_rdt.nixl_stats()``). The
consumer's ``ray_rdt.stats()`` proves the plugin moved every byte over the
path the row names.

Configurations (``--configs``):

* ``gloo``, ``nixl``: the transport's own path (``RAY_RDT_SAME_HOST_PATH=0``);
* ``shm``: shared memory (its own path);
* ``nixl-default``: a nixl method with the plugin's defaults, where CPU tensors
  between processes of one host take the same-host path (shared memory).

Small objects inside records are off in every row (``RAY_RDT_INLINE_BYTES=0``;
1 MiB is above the default threshold anyway).

    python benches/soak.py [--transfers 10000] [--configs gloo,shm,nixl,nixl-default]
                           [--checkpoints 4] [--pooled] [--json FILE]

The producer returns a fresh tensor per task, or with ``--pooled`` one of its
``PRODUCER_POOL`` kept tensors once Ray freed it. glibc's heap in use and free
(``mallinfo2``) tells live memory from memory the allocator keeps. Ray's own
threads (gRPC's pools) and TCP connections (to the driver, raylet and GCS) are
also shown left out. ``tests/python/test_soak.py`` runs the pooled workload,
bounded, and asserts on it. Results: docs/soak.md.
"""

import argparse
import collections
import ctypes
import json
import os
import sys
import time

import ray
import torch

TENSOR_BYTES = 1 << 20
IN_FLIGHT = 16
# Tensors a pooled producer keeps and returns again (more than can be in flight).
PRODUCER_POOL = 64
WARMUP = 500
GROUP = "soak"

# Environment of each configuration's actors (runtime_env env_vars): which path
# the declared transport takes.
OWN_PATH = {"RAY_RDT_SAME_HOST_PATH": "0", "RAY_RDT_INLINE_BYTES": "0"}
DEFAULT_PATH = {"RAY_RDT_SAME_HOST_PATH": "1", "RAY_RDT_INLINE_BYTES": "0"}
CONFIGS = {
    # name: (transport, actor env, the path the consumer's counters must show)
    "gloo": ("gloo", OWN_PATH, "network"),
    "shm": ("shm", OWN_PATH, "same_host"),
    "nixl": ("nixl", OWN_PATH, "network"),
    "nixl-default": ("nixl", DEFAULT_PATH, "same_host"),
}


# Thread names of gRPC's own pools inside Ray's core worker (timers, pollers,
# executors, the synchronous server): they grow and shrink with Ray's RPC load.
# The plugin never starts gRPC (NIXL's bundled copy is not used: no etcd, no
# listener thread), so no plugin thread carries one of these names.
GRPC_THREAD_NAMES = (
    "grpc_global_tim",
    "event_engine",
    "client.poll",
    "server.poll",
    "resolver-execut",
    "default-executo",
    "grpcpp_sync_ser",
    "timer_manager",
)


def _fd_kinds():
    """Open descriptors by kind ("socket", "pipe", "anon_inode:[eventfd]",
    "/memfd:", or the file's path), the listing's own left out."""
    kinds = collections.Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor among them)
        kind = target.split(":[", 1)[0] if target.startswith(("socket:", "pipe:")) else target
        kinds["/memfd:" if target.startswith("/memfd:") else kind] += 1
    return kinds


_TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "0A": "LISTEN"}


def _socket_table():
    """{socket inode: description} from this network namespace's tables:
    ``unix <path or @abstract name>`` (empty: unnamed) or ``tcp :<local port>
    -> :<remote port> <state>``."""
    table = {}
    try:
        with open("/proc/self/net/unix") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) >= 7:
                    table[parts[6]] = "unix " + (parts[7] if len(parts) > 7 else "")
    except OSError:
        pass
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/self/net/{name}") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if len(parts) >= 10:
                        local, remote = (int(a.rsplit(":", 1)[1], 16) for a in parts[1:3])
                        state = _TCP_STATES.get(parts[3], parts[3])
                        table[parts[9]] = f"tcp :{local} -> :{remote} {state}"
        except OSError:
            pass
    return table


def socket_descriptions():
    """This process's open sockets, each described as in :func:`_socket_table`
    (for diagnostics: which peer a descriptor that appeared belongs to)."""
    table = _socket_table()
    out = collections.Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out[table.get(target[8:-1], "other")] += 1
    return dict(out)


def _count_mapped_memfds():
    """Distinct memfd files mapped into this process."""
    mapped = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/memfd:"):
                mapped.add((parts[3], parts[4]))  # (device, inode)
    return len(mapped)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


def _heap():
    """(bytes in use, bytes free) in glibc's heap (``mallinfo2``; mapped
    chunks count as in use): whether RSS is live memory or memory the
    allocator keeps."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    m = libc.mallinfo2()
    return m.uordblks + m.hblkhd, m.fordblks


def _rdt_objects():
    """RDT objects this process's store holds (Ray's and the plugin's)."""
    return ray._private.worker.global_worker.rdt_manager.rdt_store.get_num_objects()


def process_probe():
    """What this process holds now: RDT objects, RSS (bytes), fds (and by kind), threads
    (all of them, those not of gRPC's pools, and by name), memfds open and
    mapped, NIXL registrations (``None`` where the binding cannot report them)."""
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.split()
    fds = _fd_kinds()
    sockets = socket_descriptions()
    names = collections.Counter()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names[f.read().strip()] += 1
        except OSError:
            pass  # ended meanwhile
    grpc = sum(n for name, n in names.items() if name.startswith(GRPC_THREAD_NAMES))
    heap_in_use, heap_free = _heap()
    return {
        "rdt_objects": _rdt_objects(),
        "heap_in_use": heap_in_use,
        "heap_free": heap_free,
        "thread_names": dict(names),
        "threads_not_grpc": sum(names.values()) - grpc,
        "rss": int(status["VmRSS"][0]) * 1024,
        "fds": sum(fds.values()),
        "fd_kinds": dict(fds),
        "sockets": sockets,
        "tcp": sorted(
            tuple(int(port[1:]) for port in d.split()[1:4:2]) for d, n in sockets.items() for _ in range(n)
            if d.startswith("tcp ") and d.endswith(" ESTABLISHED")
        ),
        "threads": int(status["Threads"][0]),
        "memfd_fds": fds["/memfd:"],
        "memfd_maps": _count_mapped_memfds(),
        "nixl": nixl_registrations(),
    }


def nixl_registrations():
    """The plugin's NIXL registrations in this process, or ``None`` when the
    binding has no way to read them."""
    import ray_rdt

    reader = getattr(ray_rdt, "nixl_stats", None)
    return None if reader is None else reader()


def contents(i, nbytes, out=None):
    """Transfer ``i``'s bytes: a position-dependent pattern (so a lost,
    duplicated or misplaced chunk shows), shifted by ``i`` (so a stale one
    shows). Written into ``out`` when given: a soak allocates nothing per
    transfer that the allocator could keep and show as growth."""
    return torch.add(_pattern(nbytes), i % 256, out=out)


_patterns = {}


def _pattern(nbytes):
    """``nbytes`` bytes that differ from their neighbours and repeat only every
    251 bytes (a prime: no chunk size lines up with it)."""
    if nbytes not in _patterns:
        _patterns[nbytes] = (torch.arange(nbytes, dtype=torch.int64) % 251).to(torch.uint8)
    return _patterns[nbytes]


@ray.remote
class SoakActor:
    """One side of the soak: produces tensors over each transport, consumes
    them, and reports what its process holds."""

    def _make(self, i, nbytes, pooled):
        """Transfer ``i``'s tensor: a fresh one, or (``pooled``) one of
        ``PRODUCER_POOL`` kept tensors, reused once Ray freed its last object."""
        if not pooled:
            return contents(i, nbytes)
        pool = self.__dict__.setdefault("_pool", {})
        key = (nbytes, i % PRODUCER_POOL)
        tensor = pool.get(key)
        if tensor is None:
            tensor = pool[key] = torch.empty(nbytes, dtype=torch.uint8)
        else:
            ray.experimental.wait_tensor_freed(tensor, timeout=120)
        return contents(i, nbytes, out=tensor)

    @ray.method(tensor_transport="gloo")
    def make_gloo(self, i, nbytes=TENSOR_BYTES, pooled=False):
        return self._make(i, nbytes, pooled)

    @ray.method(tensor_transport="shm")
    def make_shm(self, i, nbytes=TENSOR_BYTES, pooled=False):
        return self._make(i, nbytes, pooled)

    @ray.method(tensor_transport="nixl")
    def make_nixl(self, i, nbytes=TENSOR_BYTES, pooled=False):
        return self._make(i, nbytes, pooled)

    def take(self, tensor, i, nbytes=TENSOR_BYTES):
        """Checks every received byte against transfer ``i``'s contents."""
        if tensor.numel() != nbytes:
            return False
        scratch = self.__dict__.setdefault("_expected", {})
        if nbytes not in scratch:
            scratch[nbytes] = torch.empty(nbytes, dtype=torch.uint8)
        return bool(torch.equal(tensor, contents(i, nbytes, out=scratch[nbytes])))

    def pid(self):
        return os.getpid()

    def probe(self):
        return process_probe()

    def stats(self, transport):
        import ray_rdt

        return ray_rdt.stats()[transport]

    def collect(self):
        """Runs Python's garbage collector (tensors in reference cycles);
        returns the RDT objects this process still holds."""
        import gc

        gc.collect()
        return _rdt_objects()


def make_pair(config):
    """A producer and a consumer for ``config`` (a key of CONFIGS); gloo pairs
    get a collective group."""
    transport, env, _ = CONFIGS[config]
    options = {"runtime_env": {"env_vars": dict(env)}, "num_cpus": 0}
    producer = SoakActor.options(**options).remote()
    consumer = SoakActor.options(**options).remote()
    ray.get([producer.probe.remote(), consumer.probe.remote()])
    if transport == "gloo":
        from ray.experimental.collective import create_collective_group

        create_collective_group([producer, consumer], backend="torch_gloo", name=GROUP)
    return producer, consumer


def drop_pair(config, producer, consumer):
    """Ends the pair's actors (and group)."""
    if CONFIGS[config][0] == "gloo":
        from ray.experimental.collective import destroy_collective_group

        destroy_collective_group(GROUP)
    ray.kill(producer)
    ray.kill(consumer)


def transfers(producer, consumer, transport, n, start=0, timeout=120.0, pooled=False):
    """Moves ``n`` tensors from ``producer`` to ``consumer``, ``IN_FLIGHT`` at a
    time (fresh tensors, or the producer's pool of kept ones); raises if a
    tensor arrives wrong. Returns the seconds it took."""
    make = getattr(producer, f"make_{transport}")
    pending = collections.deque()
    t0 = time.perf_counter()
    for i in range(start, start + n):
        pending.append(consumer.take.remote(make.remote(i, TENSOR_BYTES, pooled), i))
        if len(pending) >= IN_FLIGHT:
            _check(ray.get(pending.popleft(), timeout=timeout))
    for ok in ray.get(list(pending), timeout=timeout):
        _check(ok)
    return time.perf_counter() - t0


def _check(ok):
    if not ok:
        raise AssertionError("a consumer received a tensor with the wrong bytes")


def annotate_pair(first, second):
    """Adds ``fds_not_ray_tcp`` to two probes of a pair of actors: their
    descriptors less the TCP connections that do not lead to the other actor
    (Ray's own gRPC connections to the driver, the raylet and the GCS, which a
    channel may reopen under load). Every TCP connection of the plugin on one
    host is between the pair (gloo, UCX); its other channels are Unix sockets."""
    for probe, other in ((first, second), (second, first)):
        mirrored = {(remote, local) for local, remote in other["tcp"]}
        ray_tcp = sum(1 for conn in probe["tcp"] if tuple(conn) not in mirrored)
        probe["fds_not_ray_tcp"] = probe["fds"] - ray_tcp


def settle(*actors, timeout=30.0, pause=0.2):
    """Waits (at most ``timeout`` seconds) until the actors hold no RDT object
    (frees of the last transfers arrive asynchronously), lets Ray's own
    background work run a moment, then returns each actor's probe (for a pair,
    annotated by :func:`annotate_pair`)."""
    deadline = time.monotonic() + timeout
    while sum(ray.get([a.collect.remote() for a in actors])) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(pause)
    probes = ray.get([a.probe.remote() for a in actors])
    if len(probes) == 2:
        annotate_pair(*probes)
    return probes


def run_config(config, n, checkpoints=1, warmup=WARMUP, pooled=False):
    """One configuration: warm up, then ``n`` transfers in ``checkpoints``
    parts, probing both sides after each (``pooled``: the producer returns
    its kept tensors again). Returns a dict for the table."""
    transport, _, path = CONFIGS[config]
    producer, consumer = make_pair(config)
    try:
        transfers(producer, consumer, transport, warmup, pooled=pooled)
        probes = [settle(producer, consumer)]
        before = ray.get(consumer.stats.remote(transport))
        seconds = 0.0
        done = warmup
        for k in range(checkpoints):
            part = n // checkpoints + (1 if k < n % checkpoints else 0)
            seconds += transfers(producer, consumer, transport, part, start=done, pooled=pooled)
            done += part
            probes.append(settle(producer, consumer))
        after = ray.get(consumer.stats.remote(transport))
        moved = after["paths"][path]["bytes_received"] - before["paths"][path]["bytes_received"]
        return {
            "config": config,
            "transfers": n,
            "seconds": seconds,
            "bytes_on_path": moved,
            "path": path,
            "producer": [p[0] for p in probes],
            "consumer": [p[1] for p in probes],
        }
    finally:
        drop_pair(config, producer, consumer)


def _mib(n):
    return f"{n / (1 << 20):.0f}"


def _nixl_cell(probe):
    regs = probe["nixl"]
    if regs is None:
        return "n/a"
    return "/".join(str(regs[k]) for k in ("exported_ranges", "received", "loaded_ranges"))


def _pair(first, last, key):
    return f"{first[key]} -> {last[key]}"


def format_rows(result):
    """Table rows (markdown) for one configuration's result."""
    rows = []
    for side in ("producer", "consumer"):
        probes = result[side]
        first, last = probes[0], probes[-1]
        rss = " -> ".join(_mib(p["rss"]) for p in probes)
        memfds = f"{first['memfd_fds']}/{first['memfd_maps']} -> {last['memfd_fds']}/{last['memfd_maps']}"
        heap = f"{_mib(first['heap_in_use'])}/{_mib(first['heap_free'])} -> {_mib(last['heap_in_use'])}/{_mib(last['heap_free'])}"
        rows.append(
            f"| {result['config']} | {side} | {rss} | {heap} | {_pair(first, last, 'fds')} "
            f"| {_pair(first, last, 'fds_not_ray_tcp')} | {_pair(first, last, 'threads')} "
            f"| {_pair(first, last, 'threads_not_grpc')} | {memfds} "
            f"| {_nixl_cell(first)} -> {_nixl_cell(last)} |"
        )
    return rows


HEADER = [
    "| config | side | RSS MiB (after warm-up -> checkpoints) | heap MiB in use/free | fds | fds less Ray's TCP "
    "| threads | threads less gRPC's | memfds open/mapped | NIXL regs exported/received/loaded |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transfers", type=int, default=10_000)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--pooled",
        action="store_true",
        help="the producer returns its kept tensors again once freed (as tests/python/test_soak.py does)",
    )
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    here = os.path.dirname(os.path.abspath(__file__))
    # Workers import this module (the actor class) by name.
    os.environ["PYTHONPATH"] = os.pathsep.join([here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    sys.path.insert(0, here)
    ray.init(num_cpus=8, include_dashboard=False)
    results = []
    try:
        import soak  # the module by its importable name, so workers find the actor class

        for config in configs:
            r = soak.run_config(config, args.transfers, checkpoints=args.checkpoints, pooled=args.pooled)
            results.append(r)
            print(
                f"{config}: {r['transfers']} transfers in {r['seconds']:.1f} s, "
                f"{r['bytes_on_path']} bytes on the {r['path']} path",
                flush=True,
            )
    finally:
        ray.shutdown()
    print()
    print("\n".join(HEADER))
    for r in results:
        print("\n".join(format_rows(r)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
