"""Where the fixed cost of one small transfer through Ray goes: a timeline probe.

A diagnostic, not a benchmark of record (docs/performance.md quotes it). One
cluster (plugin on, ``ray.init(num_cpus=8)``) with producer / consumer pairs
(``raybench.start_pair``), each pair's two actors with their own environment
(``--pair NAME:KEY=VALUE,...``; default: ``inline`` with the defaults, small
objects inside their record, and ``fetch`` with ``RAY_RDT_INLINE_BYTES=0``, every
object fetched from the producer over the same-host path). A variant is
``KIND@PAIR``; variants are sampled in turn (one transfer at a time, ``--samples``
each after warm-ups, in a new random order each round), so drift hits them alike. Kinds:

* ``ray_plain``: the producer returns a Python int, the consumer takes it - Ray's
  own floor for two chained actor tasks (no tensor, no RDT);
* ``object_store``: a 4 KiB float32 tensor through Ray's object store;
* ``shm``, ``gloo``, ``nixl``: the tensor through the plugin with that transport.

``KIND@PAIR+keep`` keeps the variant's refs alive until the end of the run, so
no object is freed while transfers are timed (the difference to ``KIND@PAIR`` is
what freeing costs a transfer).

A pair's environment can also point its actors at another copy of the binding
(``--pair proto:PYTHONPATH=/tmp/copy/python``), to measure a change to it
against the current code in one run (the driver keeps this process's binding).

Probes: in the driver and in every actor, Ray's and the binding's Python entry
points are wrapped with ``time.perf_counter_ns`` timers (CLOCK_MONOTONIC, one
clock for all processes of the host): ``Worker.deserialize_objects`` (argument
resolution in actors, ``ray.get`` in the driver), ``SerializationContext``'s
``serialize``, ``serialize_rdt_objects``, ``store_rdt_objects`` and
``_serialize_to_msgpack`` (every serialization pass), the owner's RDT manager
(``add_rdt_ref``, ``queue_or_trigger_out_of_band_tensor_transfer``,
``set_tensor_transport_metadata_and_trigger_queued_operations``,
``free_object_primary_copy``), and ``ray_rdt``'s ``serialize_with_record``
(as the patch calls it, ``ray_hooks``), ``consumer.fetch``, ``Context.put`` and
``Context.fetch``. Each sample's events are those
that start inside its window (submit to ``ray.get`` return).

Printed per variant, medians over samples (microseconds):

* the critical path, end to end = the sum of: submit to the producer's argument
  resolution; the producer's argument resolution; the producer's method; the
  producer's return serialization (all passes, the record, the transport
  metadata); producer reply -> owner -> consumer dispatch (to the consumer's
  argument resolution); the consumer's argument resolution (the fetch or the
  inline unpack inside it); the consumer's method; its return serialization;
  its reply to ``ray.get`` returning in the driver;
* pieces (durations, also off the critical path): the driver's two
  ``.remote()`` calls, the owner's RDT bookkeeping, serialization passes, the
  plugin put and fetch.

``--cpu N`` also runs N more transfers of each variant (one at a time, in 10
interleaved chunks) and prints the CPU time per transfer of each process (driver, producer, consumer, raylet,
gcs_server, other) and of their busiest threads, from the schedstat counters of
every thread below the driver.

``--profile KIND@PAIR`` also runs cProfile in the driver, the producer and the
consumer over that variant's samples and prints each process's top functions by
own time, in microseconds per transfer (Python-level only: Ray's Cython and C++
do not show, except as the time of the Python they call).

    python benches/fixed_cost.py [--samples 300] [--size 4KiB] [--pair NAME:KEY=VALUE,... ...]
                                 [--variants KIND@PAIR,...] [--profile KIND@PAIR]
"""

import argparse
import random
import statistics
import sys
import time

import raybench as rb

KINDS = ("ray_plain", "object_store", "shm", "gloo", "nixl")
DEFAULT_PAIRS = ["inline", "fetch:RAY_RDT_INLINE_BYTES=0"]
DEFAULT_VARIANTS = ["ray_plain@inline", "object_store@inline"] + [
    f"{t}@{p}" for t in ("shm", "gloo", "nixl") for p in ("inline", "fetch")]


def parse_pair(text):
    """``"NAME:K=V,K=V"`` -> ``(NAME, {K: V})``; a part without ``=`` continues
    the previous value (``RDT_X=a,b``)."""
    name, _, spec = text.partition(":")
    env, last = {}, None
    for part in filter(None, spec.split(",")):
        if "=" in part:
            last, value = part.split("=", 1)
            env[last] = value
        else:
            env[last] += "," + part
    return name, env


def install_probes():
    """Runs in each process: wraps the entry points listed in the docstring;
    events go to ``sys.modules["_rdt_probe"].events`` as ``(label, start_ns, end_ns)``."""
    import sys
    import time
    import types

    if "_rdt_probe" in sys.modules:
        return
    mod = types.ModuleType("_rdt_probe")
    mod.events = []
    sys.modules["_rdt_probe"] = mod
    events, ns = mod.events, time.perf_counter_ns

    def wrap(owner, name, label):
        orig = getattr(owner, name)

        def probe(*args, **kwargs):
            t0 = ns()
            try:
                return orig(*args, **kwargs)
            finally:
                events.append((label, t0, ns()))

        setattr(owner, name, probe)

    import ray_rdt

    if ray_rdt.enabled():
        from ray_rdt import context, ray_hooks  # first: importing it may patch Ray too

    from ray._private.serialization import SerializationContext
    from ray._private.worker import Worker
    from ray.experimental.rdt.rdt_manager import RDTManager

    wrap(Worker, "deserialize_objects", "deserialize")
    for name in ("serialize", "serialize_rdt_objects", "store_rdt_objects", "_serialize_to_msgpack"):
        wrap(SerializationContext, name, name)
    for name in ("add_rdt_ref", "queue_or_trigger_out_of_band_tensor_transfer",
                 "set_tensor_transport_metadata_and_trigger_queued_operations", "free_object_primary_copy"):
        wrap(RDTManager, name, name)
    if ray_rdt.enabled():
        from ray_rdt import consumer

        wrap(ray_hooks, "serialize_with_record", "serialize_with_record")  # the patch calls it there
        wrap(consumer, "fetch", "fetch")
        wrap(context.Context, "put", "Context.put")
        wrap(context.Context, "fetch", "Context.fetch")


def take_events():
    import sys

    events = list(sys.modules["_rdt_probe"].events)
    sys.modules["_rdt_probe"].events.clear()
    return events


def profile(on):
    """Starts (``on``) or stops cProfile in this process; stopping returns the
    ``pstats`` table as ``{(file, line, function): (calls, own_seconds, cumulative_seconds)}``."""
    import cProfile
    import pstats
    import sys

    if on:
        prof = cProfile.Profile()
        sys.modules["_rdt_probe"].profiler = prof
        prof.enable()
        return None
    prof = sys.modules["_rdt_probe"].profiler
    prof.disable()
    st = pstats.Stats(prof)
    return {k: (v[1], v[2], v[3]) for k, v in st.stats.items()}


def descendants(root):
    """``root`` and every process below it (from /proc)."""
    import os

    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(d))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack += children.get(pid, [])
    return out


def thread_cpu(pids):
    """``{(pid, thread name): CPU ns}`` of every thread of ``pids`` (/proc/*/task/*/schedstat)."""
    import os

    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                    ns = int(fh.read().split()[0])
                with open(f"/proc/{pid}/task/{tid}/comm") as fh:
                    name = fh.read().strip()
            except OSError:
                continue
            out[(pid, name)] = out.get((pid, name), 0) + ns
    return out


def process_name(pid):
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return "?"


def cpu_per_transfer(variants, pairs, nbytes, count, chunks=10):
    """CPU time per transfer of each process and of the busiest threads:
    ``count`` transfers per variant, one at a time, in ``chunks`` rounds that
    visit the variants in a new random order (schedstat deltas around each
    chunk), so drift hits all variants alike."""
    import os

    import ray

    actor_pid = {}
    for name, (producer, consumer) in pairs.items():
        p, c = ray.get([a.__ray_call__.remote(lambda self: __import__("os").getpid()) for a in (producer, consumer)])
        actor_pid[p], actor_pid[c] = ("producer", name), ("consumer", name)
    roles = {v: {} for v in variants}
    threads = {v: {} for v in variants}
    wall = {v: 0.0 for v in variants}
    order = random.Random(1)
    per_chunk = max(1, count // chunks)
    for _ in range(chunks):
        for v in order.sample(variants, len(variants)):
            pair = parse_variant(v)[1]
            pids = descendants(os.getpid())
            before = thread_cpu(pids)
            t0 = time.perf_counter()
            for _ in range(per_chunk):
                sample(v, pairs, nbytes)
            wall[v] += time.perf_counter() - t0
            after = thread_cpu(pids)
            for key, ns in after.items():
                delta = ns - before.get(key, 0)
                if delta <= 0:
                    continue
                pid, thread = key
                if pid == os.getpid():
                    role = "driver"
                elif pid in actor_pid:
                    role = actor_pid[pid][0] if actor_pid[pid][1] == pair else "other actors"
                else:
                    name = process_name(pid)
                    role = name if name in ("raylet", "gcs_server") else "other"
                roles[v][role] = roles[v].get(role, 0) + delta
                if role in ("driver", "producer", "consumer"):
                    threads[v][f"{role}/{thread}"] = threads[v].get(f"{role}/{thread}", 0) + delta
    n = per_chunk * chunks
    print(f"\nCPU time per transfer ({n} transfers per variant in {chunks} interleaved chunks; microseconds; "
          "schedstat):")
    for v in variants:
        total = sum(roles[v].values())
        print(f"  {v}: wall {wall[v] / n * 1e6:.0f} us, CPU {total / n / 1e3:.0f} us per transfer: "
              + ", ".join(f"{r} {ns / n / 1e3:.0f}" for r, ns in sorted(roles[v].items(), key=lambda kv: -kv[1])))
        top = sorted(threads[v].items(), key=lambda kv: -kv[1])[:8]
        print("    threads: " + ", ".join(f"{t} {ns / n / 1e3:.0f}" for t, ns in top))


KEPT = []


def parse_variant(text):
    """``"KIND@PAIR[+keep]"`` -> ``(kind, pair, keep)``."""
    spec, _, flag = text.partition("+")
    kind, _, pair = spec.partition("@")
    return kind, pair, flag == "keep"


def sample(variant, pairs, nbytes):
    """One transfer of ``variant``; returns the driver's four timestamps (ns):
    before the producer's ``.remote()``, after it, after the consumer's, after ``ray.get``."""
    import ray

    kind, pair, keep = parse_variant(variant)
    producer, consumer = pairs[pair]
    ns = time.perf_counter_ns
    if kind == "ray_plain":
        t0 = ns()
        ref = producer.plain.remote(nbytes)
        t1 = ns()
        out = consumer.accept.remote(ref)
        t2 = ns()
        ray.get(out)
        t3 = ns()
    else:
        method = producer.get if kind == "object_store" else producer.get.options(tensor_transport=kind)
        t0 = ns()
        ref = method.remote(nbytes)
        t1 = ns()
        out = consumer.read.remote(ref)
        t2 = ns()
        assert ray.get(out) == 1.0
        t3 = ns()
    if keep:
        KEPT.append((ref, out))
    return t0, t1, t2, t3


def within(events, t0, t3, label=None):
    return [e for e in events if t0 <= e[1] < t3 and (label is None or e[0] == label)]


SERIALIZE = ("serialize", "serialize_rdt_objects", "store_rdt_objects")


def breakdown(window, d_events, p_events, c_events):
    """Critical path and pieces (ns) of one sample, or None when a probe is missing."""
    t0, t1, t2, t3 = window
    p_de = within(p_events, t0, t3, "deserialize")
    p_se = [e for e in within(p_events, t0, t3) if e[0] in SERIALIZE]
    c_de = within(c_events, t0, t3, "deserialize")
    c_se = [e for e in within(c_events, t0, t3) if e[0] in SERIALIZE]
    if not (p_de and p_se and c_de and c_se):
        return None
    p_ser0, p_ser1 = min(e[1] for e in p_se), max(e[2] for e in p_se)
    path = {
        "submit -> producer resolves args": p_de[0][1] - t0,
        "producer: resolve args": p_de[0][2] - p_de[0][1],
        "producer: method": p_ser0 - p_de[0][2],
        "producer: serialize return": p_ser1 - p_ser0,
        "producer reply -> owner -> consumer resolves args": c_de[0][1] - p_ser1,
        "consumer: resolve args": c_de[0][2] - c_de[0][1],
        "consumer: method": c_se[0][1] - c_de[0][2],
        "consumer: serialize return": c_se[-1][2] - c_se[0][1],
        "consumer reply -> ray.get returns": t3 - c_se[-1][2],
    }
    pieces = {
        "driver: producer .remote()": t1 - t0,
        "driver: consumer .remote()": t2 - t1,
    }

    def total(events, label):
        return sum(e[2] - e[1] for e in events if e[0] == label)

    window_d = within(d_events, t0, t3)
    for label in ("add_rdt_ref", "queue_or_trigger_out_of_band_tensor_transfer",
                  "set_tensor_transport_metadata_and_trigger_queued_operations", "free_object_primary_copy",
                  "deserialize"):
        if any(e[0] == label for e in window_d):
            pieces[f"driver: {label}"] = total(window_d, label)
    window_p = within(p_events, t0, t3)
    window_c = within(c_events, t0, t3)
    passes = [e for e in window_p if e[0] == "_serialize_to_msgpack"]
    pieces["producer: msgpack passes (count)"] = len(passes)
    for i, e in enumerate(passes):
        pieces[f"producer: msgpack pass {i + 1}"] = e[2] - e[1]
    for label in ("serialize_with_record", "Context.put", "store_rdt_objects"):
        if any(e[0] == label for e in window_p):
            pieces[f"producer: {label}"] = total(window_p, label)
    for label in ("fetch", "Context.fetch"):
        if any(e[0] == label for e in window_c):
            pieces[f"consumer: {label}"] = total(window_c, label)
    return path, pieces, t3 - t0


def medians_of(dicts):
    keys = []
    for d in dicts:
        keys += [k for k in d if k not in keys]
    return {k: statistics.median(d.get(k, 0) for d in dicts) for k in keys}


def top_functions(table, n_transfers, limit=18):
    rows = sorted(table.items(), key=lambda kv: -kv[1][1])[:limit]
    out = []
    for (path, line, fn), (calls, own, cum) in rows:
        where = "/".join(path.split("/")[-2:])
        out.append(f"    {own / n_transfers * 1e6:8.1f} us own {cum / n_transfers * 1e6:8.1f} us cum "
                   f"{calls / n_transfers:6.1f} calls  {fn} ({where}:{line})")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300, help="per variant")
    parser.add_argument("--size", default="4KiB")
    parser.add_argument("--pair", action="append", metavar="NAME:KEY=VALUE,...",
                        help=f"a producer / consumer pair and its environment (repeatable; default {DEFAULT_PAIRS})")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="KIND@PAIR,...")
    parser.add_argument("--profile", metavar="KIND@PAIR", help="also run cProfile over this variant's samples")
    parser.add_argument("--cpu", type=int, default=0, metavar="N",
                        help="also measure CPU time per transfer over N transfers per variant")
    args = parser.parse_args(argv)
    nbytes = rb.parse_size(args.size)
    pair_env = dict(parse_pair(p) for p in (args.pair or DEFAULT_PAIRS))
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants + ([args.profile] if args.profile else [])
           if parse_variant(v)[0] not in KINDS or parse_variant(v)[1] not in pair_env
           or v.partition("+")[2] not in ("", "keep")]
    if bad:
        parser.error(f"unknown variants {bad} (kinds {KINDS}, pairs {sorted(pair_env)})")

    import ray

    rb.init_ray()
    configs = ["plugin_gloo"] if any(v.startswith("gloo@") for v in variants) else []
    pairs = {}
    for name, env in pair_env.items():
        opts = {"runtime_env": {"env_vars": env}} if env else {}
        pairs[name] = rb.start_pair(configs, [nbytes], opts, opts)
    actors = [a for pair in pairs.values() for a in pair]
    install_probes()
    ray.get([a.__ray_call__.remote(lambda self: install_probes()) for a in actors])

    windows = {v: [] for v in variants}
    for _ in range(rb.WARMUPS * 5):
        for v in variants:
            sample(v, pairs, nbytes)
    take_events()
    ray.get([a.__ray_call__.remote(lambda self: take_events()) for a in actors])
    order = random.Random(0)
    for _ in range(args.samples):
        for v in order.sample(variants, len(variants)):
            windows[v].append(sample(v, pairs, nbytes))
    d_events = take_events()
    a_events = dict(zip(actors, ray.get([a.__ray_call__.remote(lambda self: take_events()) for a in actors])))

    print(f"run {time.strftime('%Y-%m-%d %H:%M')}; {rb.fmt_size(nbytes)}; medians of {args.samples} samples per "
          "variant, variants in turn (random order); microseconds")
    for v in variants:
        producer, consumer = pairs[parse_variant(v)[1]]
        rows = [breakdown(w, d_events, a_events[producer], a_events[consumer]) for w in windows[v]]
        rows = [r for r in rows if r is not None]
        if not rows:
            print(f"{v}: no complete sample (a probe did not fire)")
            continue
        path, pieces = medians_of([r[0] for r in rows]), medians_of([r[1] for r in rows])
        e2e = statistics.median(r[2] for r in rows)
        print(f"\n{v}: end to end {e2e / 1e3:.0f} us (median; {len(rows)} complete samples); "
              f"sum of the path medians {sum(path.values()) / 1e3:.0f} us")
        for k, val in path.items():
            print(f"  {k:<52} {val / 1e3:8.0f}")
        print("  pieces:")
        for k, val in pieces.items():
            print(f"    {k:<62} {val if 'count' in k else val / 1e3:8.0f}")

    if args.cpu:
        cpu_per_transfer(variants, pairs, nbytes, args.cpu)
    if args.profile:
        v = args.profile
        producer, consumer = pairs[parse_variant(v)[1]]
        procs = {"driver": None, "producer": producer, "consumer": consumer}
        profile(True)
        ray.get([a.__ray_call__.remote(lambda self: profile(True)) for a in procs.values() if a is not None])
        for _ in range(args.samples):
            sample(v, pairs, nbytes)
        tables = {"driver": profile(False)}
        for name, a in procs.items():
            if a is not None:
                tables[name] = ray.get(a.__ray_call__.remote(lambda self: profile(False)))
        print(f"\ncProfile, {v}, {args.samples} transfers: top functions by own time, per transfer")
        for name, table in tables.items():
            total = sum(t[1] for t in table.values())
            print(f"  {name} (Python total {total / args.samples * 1e6:.0f} us per transfer):")
            print("\n".join(top_functions(table, args.samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
