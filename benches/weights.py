"""Weight sync through Ray: a trainer pushes its whole model to N generators,
which pull it straight into their own weights, every step.

Method: a trainer actor holds a model of ``--sizes`` bytes (float32) as
``--counts`` tensors, either the rows of one matrix (``views``) or separate
allocations (``separate``); ``--generators`` generator actors each hold a model
of the same shapes. One step: the trainer changes its weights and hands them
over; every generator lands them in its own weights; the step ends when the
last generator is done. Per column:

* one-sided transports (``plugin_nixl``, ``plugin_shm``, ``stock_nixl``): the
  trainer ``ray.put``s the list of tensors; each generator gets the ref inside
  a list (a borrower), calls ``set_target_for_ref(ref, its weights)`` and
  ``ray.get(ref)``; its get time is measured inside it;
* ``shared_shm``: as ``plugin_shm``, from a trainer of its own whose model
  lives in the plugin's shared memory (``ray_rdt.share_memory_``): each
  generator copies straight from it, the trainer copies nothing;
* two-sided transports (``plugin_gloo``, ``stock_gloo``; one group of the
  trainer and all generators) and ``object_store`` (no RDT): the trainer's
  method returns the list, each generator receives it as a task argument and
  copies it into its weights (``torch._foreach_copy_``); only the step time is
  measured. For the object store the trainer returns copies of its tensors:
  pickling a view pickles the whole storage it views;
* ``targets_gloo``: plugin gloo straight into the generators' weights. Each
  generator first gets the ref inside a list (a borrower) and calls
  ``set_target_for_ref(ref, its weights)``; then the ref, as a task
  argument, lands in those targets and the argument is the targets
  themselves (nothing to copy). ``ray.get`` of a gloo object stays refused
  (the guide), so targets reach a collective object this way only
  (docs/design.md, "Targets of a collective object").

Stock columns run in a child process with ``RAY_RDT_PLUGIN=0`` and its own
cluster, the others in a second child with the plugin on; within a child, per
model and generator count, each round runs every column once in a new random
order. The physical limits are measured in the same run, before the
clusters: one single-threaded copy of the model (numpy), and N processes each
copying a model at once (memory bandwidth shared by N streams).

Printed per model (size, tensors, layout): the median step time and slowest
generator's get time per column and generator count, aggregate GB/s, and the
ratios the targets are stated in: plugin / stock nixl, get / one copy (one
generator), aggregate / the parallel-copy limit (N generators), and the
trainer's ``ray.put`` time.

    python benches/weights.py [--sizes 256MiB,1GiB] [--counts 1,1000,10000,100000]
                              [--layouts views,separate] [--generators 1,2,4]
                              [--configs ...] [--rounds 3] [--json FILE] [--markdown FILE]
    ci/bench weights [same options]

Cross-node mode (``--cross-node``; needs root): the same steps across two Ray
nodes in two network namespaces joined by a veth (``benches/cross_node.py``,
``tests/python/netns.py``), the trainer on node A and every generator on node
B. Each stock column runs on a two-node cluster of its own with the plugin
off, the others on one with the plugin on, where the veth's line rate (one
TCP stream) is measured first. Every Ray process of both clusters gets
``UCX_TLS=tcp,self`` (``--env KEY=VALUE`` adds or overrides): the namespaces
share one kernel, and UCX would otherwise move NIXL's bytes through shared
memory instead of the veth. Each step also reads the veth's transmit counter
in namespace A before and after, so the table shows the bytes that really
left node A per step (about N times the model for N generators). Defaults:
``--sizes 256MiB --counts 1,10000 --layouts views --generators 1,2 --configs
object_store,stock_nixl,stock_gloo,plugin_nixl,plugin_gloo`` (plugin shm
cannot cross hosts). Printed per model: per generator count and column, the
median step, the slowest get, aggregate GB/s, the step over the time the
line rate needs for N models, and the bytes out of node A per step over the
model's size.

    python benches/weights.py --cross-node [--sizes ...] [--counts ...] [--layouts ...]
                              [--generators ...] [--configs ...] [--rounds 3]
                              [--env KEY=VALUE ...] [--json FILE] [--markdown FILE]
    ci/bench weights --cross-node [same options]

Fan-out mode (``--fanout``; needs root; issue 21): as ``--cross-node``, on
three nodes (namespaces A, B, C on one bridge, one veth each): the trainer on
A, generator ``i`` on B for even ``i`` and on C for odd ``i``, so one
generator is one generator on one remote node and four are two on each of
two nodes. The columns ``unshared_nixl`` and ``unshared_gloo`` are the plugin
with node-local sharing off (``RAY_RDT_NODE_SHARING=0`` on a cluster of their
own: every generator reads from the trainer); ``plugin_*`` share one read per
node. Printed as in cross-node mode, plus each step over the same column's
step with one generator (issue 21's target: four generators on two nodes
within 1.3x). Defaults: ``--sizes 256MiB --counts 1,10000 --layouts views
--generators 1,4 --configs stock_nixl,stock_gloo,plugin_nixl,unshared_nixl,
plugin_gloo,unshared_gloo``.

    python benches/weights.py --fanout [same options as --cross-node]
    ci/bench weights --fanout [same options]
"""

import argparse
import json
import multiprocessing
import os
import random
import statistics
import sys
import time

import cross_node
import raybench as rb
from netns import NETWORK_ONLY_ENV, NODE_NAMES, veth_tx_bytes  # importable once cross_node has put tests/python on the path

CONFIGS = ["object_store", "stock_gloo", "stock_nixl", "plugin_gloo", "targets_gloo", "plugin_shm", "plugin_nixl",
           "shared_shm"]
# Columns whose trainer keeps its model in the plugin's shared memory
# (ray_rdt.share_memory_): a trainer of their own.
SHARED = {"shared_shm"}
# The plugin with node-local sharing off (across nodes only).
UNSHARED = {"unshared_nixl", "unshared_gloo"}
UNSHARED_ENV = {"RAY_RDT_NODE_SHARING": "0"}
ONE_SIDED = {"stock_nixl": "nixl", "plugin_nixl": "nixl", "plugin_shm": "shm", "unshared_nixl": "nixl",
             "shared_shm": "shm"}
STEP_TIMEOUT_S = 900
# The options' defaults on one host and across two nodes.
DEFAULTS = {"sizes": "256MiB,1GiB", "counts": "1,1000,10000,100000", "layouts": "views,separate",
            "generators": "1,2,4", "configs": ",".join(CONFIGS)}
CROSS_NODE_DEFAULTS = {"sizes": "256MiB", "counts": "1,10000", "layouts": "views", "generators": "1,2",
                       "configs": "object_store,stock_nixl,stock_gloo,plugin_nixl,plugin_gloo"}
FANOUT_DEFAULTS = dict(CROSS_NODE_DEFAULTS, generators="1,4",
                       configs="stock_nixl,stock_gloo,plugin_nixl,unshared_nixl,plugin_gloo,unshared_gloo")
# Ray nodes per mode: one host, --cross-node, --fanout.
MODES = {1: ("on one host", DEFAULTS), 2: ("across two nodes", CROSS_NODE_DEFAULTS),
         3: ("from one node to two", FANOUT_DEFAULTS)}
FIELDS = ("step", "get", "put", "tx")
# The driver of one two-node cluster: every step of every column it runs.
CROSS_NODE_DRIVER_TIMEOUT_S = 6 * 3600


def model_key(size, count, layout):
    """A model's key in the results: ``"bytes/tensors/layout"``."""
    return f"{size}/{count}/{layout}"


def model(size, count, layout, fill=0.0):
    """The model: ``(tensors, allocations)``, ``count`` float32 tensors of
    ``size`` bytes in all, and the allocations they are views of."""
    import torch

    per = max(1, size // count // 4)
    if layout == "views":
        w = torch.full((count, per), fill)
        return ([w[i] for i in range(count)] if count > 1 else [w.view(-1)]), [w]
    tensors = [torch.full((per,), fill) for _ in range(count)]
    return tensors, tensors


def actor_classes():
    import ray
    import torch

    @ray.remote(enable_tensor_transport=True)
    class Trainer:
        def make(self, size, count, layout, shared=False):
            self.tensors, self.allocations = model(size, count, layout)
            self.step_no = 0
            if shared:
                import ray_rdt

                ray_rdt.share_memory_(self.allocations + self.tensors)

        def advance(self):
            """A training step: new weights (outside the measured step)."""
            self.step_no += 1
            for a in self.allocations:
                a.fill_(float(self.step_no))
            return float(self.step_no)

        def put(self, transport):
            t0 = time.perf_counter()
            ref = ray.put(self.tensors, _tensor_transport=transport)
            return [ref], time.perf_counter() - t0

        def rows(self):
            # Cloned: pickling a view pickles its whole storage (1,000 views of
            # one matrix would be 1,000 copies of it in the object store).
            return [t.clone() for t in self.tensors]

        @ray.method(tensor_transport="gloo")
        def rows_gloo(self):
            return self.tensors

    @ray.remote(enable_tensor_transport=True)
    class Generator:
        def make(self, size, count, layout):
            self.tensors, _ = model(size, count, layout, -1.0)

        def _check(self, expected):
            for t in (self.tensors[0], self.tensors[-1]):
                assert float(t.view(-1)[0]) == expected, (float(t.view(-1)[0]), expected)

        def sync(self, refs, expected):
            from ray.experimental import set_target_for_ref

            (ref,) = refs
            set_target_for_ref(ref, self.tensors)
            t0 = time.perf_counter()
            ray.get(ref)
            dt = time.perf_counter() - t0
            self._check(expected)
            return dt

        def take(self, tensors, expected):
            torch._foreach_copy_(self.tensors, tensors)
            self._check(expected)
            return None

        def expect(self, refs):
            """Names this generator's weights as the targets of the collective
            object in ``refs`` (borrowed), which a later task receives."""
            from ray.experimental import set_target_for_ref

            set_target_for_ref(refs[0], self.tensors)

        def landed(self, tensors, expected):
            """The argument, received straight into this generator's weights."""
            assert all(a is b for a, b in zip(tensors, self.tensors)), "the argument is not the targets"
            self._check(expected)

    return Trainer, Generator


def one_step(config, trainer, generators, tx_bytes=None):
    """One step of ``config`` to ``generators``: (step s, slowest get s or
    None, trainer put s or None, bytes that ``tx_bytes()`` (a counter, see
    :func:`netns.veth_tx_bytes`) grew by during the step, or None without one)."""
    import ray

    expected = ray.get(trainer.advance.remote())
    sent = tx_bytes() if tx_bytes else None
    t0 = time.perf_counter()
    if config in ONE_SIDED:
        refs, put_s = ray.get(trainer.put.remote(ONE_SIDED[config]), timeout=STEP_TIMEOUT_S)
        gets = ray.get([g.sync.remote(refs, expected) for g in generators], timeout=STEP_TIMEOUT_S)
        step, get = time.perf_counter() - t0, max(gets)
    else:
        ref = trainer.rows_gloo.remote() if config.endswith("gloo") else trainer.rows.remote()
        into_weights = config == "targets_gloo"
        if into_weights:
            for g in generators:
                g.expect.remote([ref])  # runs before landed: one caller's tasks run in order
        receive = [(g.landed if into_weights else g.take).remote(ref, expected) for g in generators]
        ray.get(receive, timeout=STEP_TIMEOUT_S)
        step, get, put_s = time.perf_counter() - t0, None, None
    return step, get, put_s, (tx_bytes() - sent if tx_bytes else None)


def logged(config, n, sample):
    """``sample`` (a step's fields), after printing it as a progress line
    (the median hides a slow round; the log shows it)."""
    step, get, put, tx = sample
    print(f"    {config} x{n}: step {step * 1e3:.1f} ms" + (f", get {get * 1e3:.1f} ms" if get else "")
          + (f", out {tx / 2**20:.0f} MiB" if tx is not None else ""), file=sys.stderr, flush=True)
    return sample


def placement(nodes):
    """Connects to the cluster and says where the actors go: ``(trainer
    options, generator ``i``'s options as a function of ``i``, the bytes-out
    counter or None)``. On one host (``nodes`` 1) a fresh cluster, anywhere;
    else the one at ``RAY_ADDRESS``, the trainer on node A, the generators
    taking turns over the other nodes, counting A's veth."""
    if nodes == 1:
        rb.init_ray()
        return {}, lambda i: {}, None
    rb.init_ray(address=os.environ["RAY_ADDRESS"])
    others = NODE_NAMES[1:nodes]
    return ({"resources": {"node_a": 1}}, lambda i: {"resources": {f"node_{others[i % len(others)]}": 1}},
            veth_tx_bytes)


def bench_cluster(configs, models, generator_counts, rounds, nodes=1):
    """In a child: every model, every generator count, every config, on one
    cluster (:func:`placement`). Returns ``{model key: {n: {config: {"step",
    "get", "put", "tx"}}}}`` of medians (seconds; bytes for ``tx``), and
    errors."""
    import ray
    from ray.experimental.collective import create_collective_group, destroy_collective_group

    trainer_options, generator_options, tx_bytes = placement(nodes)
    Trainer, Generator = actor_classes()
    rng = random.Random(0)
    out, errors = {}, {}
    for size, count, layout in models:
        key = model_key(size, count, layout)
        trainer = Trainer.options(**trainer_options).remote()
        shared = Trainer.options(**trainer_options).remote() if SHARED & set(configs) else None
        trainer_of = {c: shared if c in SHARED else trainer for c in configs}
        generators = [Generator.options(**generator_options(i)).remote() for i in range(max(generator_counts))]
        print(f"  model {rb.fmt_size(size)} as {count} {layout}", file=sys.stderr, flush=True)
        out[key] = {}
        group = None
        try:
            ray.get([a.make.remote(size, count, layout) for a in [trainer] + generators])
            if shared is not None:
                ray.get(shared.make.remote(size, count, layout, True))
            if any(c.endswith("gloo") for c in configs):
                group = create_collective_group([trainer] + generators, backend="torch_gloo")
            for n in generator_counts:
                values, failed = rb.interleaved(
                    configs, lambda c: logged(c, n, one_step(c, trainer_of[c], generators[:n], tx_bytes)), rounds, rng,
                    warmups=1, keep_going=True
                )
                out[key][n] = {
                    c: {
                        field: (statistics.median(v[i] for v in vals) if vals[0][i] is not None else None)
                        for i, field in enumerate(FIELDS)
                    }
                    for c, vals in values.items()
                }
                errors.update({f"{key}/{n}/{c}": repr(e)[:300] for c, e in failed.items()})
        except Exception as e:  # noqa: BLE001 (the model's cells fail; the next model runs)
            errors[key] = repr(e)[:300]
            print(f"  model {key} failed: {errors[key]}", file=sys.stderr, flush=True)
        finally:
            if group is not None:
                try:
                    destroy_collective_group(group)
                except Exception:  # noqa: BLE001 (destroyed by a failed transfer or a dead member)
                    pass
            for a in [trainer] + generators + ([shared] if shared is not None else []):
                ray.kill(a)
    return out, errors


def _copy_worker(n, barrier, queue):
    import numpy as np

    src = np.ones(n // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    samples = []
    for _ in range(5):
        barrier.wait()
        t0 = time.perf_counter()
        np.copyto(dst, src)
        samples.append((t0, time.perf_counter()))
    queue.put(samples)


def parallel_copy_medians(size, streams):
    """Median wall seconds for ``streams`` processes to copy ``size`` bytes
    each at once: every sample runs from the first process's start (all leave
    one barrier together) to the last one's end, on one clock
    (``time.perf_counter``, Linux's monotonic clock, the same in every
    process). With more processes than cores they share the cores; the
    slowest process's own time gives the same figure within a few percent
    (checked 2026-12-06 19:36)."""
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(streams), ctx.Queue()
    procs = [ctx.Process(target=_copy_worker, args=(size, barrier, queue)) for _ in range(streams)]
    [p.start() for p in procs]
    per_proc = [queue.get() for _ in procs]
    [p.join() for p in procs]
    return statistics.median(
        max(s[i][1] for s in per_proc) - min(s[i][0] for s in per_proc) for i in range(5)
    )


def model_heading(size, count, layout):
    """A model's heading in the report."""
    return f"\n### {rb.fmt_size(size)} as {count:,} tensors ({layout})\n"


def report(results, limits, models, generator_counts, configs):
    """The one-host report: per model a table of step and get times per
    generator count, then GB/s and the ratios against the copy limits."""
    lines = []
    for size, count, layout in models:
        by_n = results.get(model_key(size, count, layout), {})
        lines.append(model_heading(size, count, layout))
        header = ["generators"] + [f"{c} step" for c in configs] + [f"{c} get" for c in configs if c in ONE_SIDED]
        rows = []
        for n in generator_counts:
            cells = by_n.get(n, {})
            row = [str(n)]
            row += [rb.fmt_ms(cells[c]["step"]) if c in cells else "-" for c in configs]
            row += [rb.fmt_ms(cells[c]["get"]) if c in cells else "-" for c in configs if c in ONE_SIDED]
            rows.append(row)
        lines.append(rb.markdown_table(header, rows))
        lines.append("")
        copy1 = limits[str(size)]["1"]
        for n in generator_counts:
            cells = by_n.get(n, {})
            par = limits[str(size)][str(n)]
            parts = [f"N={n}: one copy {rb.fmt_ms(copy1)}, {n} parallel copies {rb.fmt_ms(par)} ({n * size / par / 1e9:.1f} GB/s)"]
            for c in configs:
                if c not in cells:
                    continue
                step, get = cells[c]["step"], cells[c]["get"]
                gbps = n * size / step / 1e9
                text = f"{c}: step {gbps:.1f} GB/s = {rb.fmt_ratio(gbps / (n * size / par / 1e9))} of the parallel-copy limit"
                if get is not None:
                    text += f", slowest get {rb.fmt_ratio(get / copy1)} one copy"
                if cells[c]["put"] is not None:
                    text += f", put {rb.fmt_ms(cells[c]['put'])}"
                parts.append(text)
            for plugin, stock in (("plugin_nixl", "stock_nixl"), ("plugin_shm", "stock_nixl"), ("shared_shm", "stock_nixl"),
                                  ("plugin_gloo", "stock_gloo"), ("targets_gloo", "stock_gloo"),
                                  ("targets_gloo", "stock_nixl")):
                if plugin in cells and stock in cells:
                    parts.append(f"{plugin} / {stock} step: {rb.fmt_ratio(cells[plugin]['step'] / cells[stock]['step'])}")
            lines.append("- " + "\n  - ".join(parts))
    return "\n".join(lines)


def cross_node_report(results, rate, models, generator_counts, configs):
    """The cross-node report: per model a table, a row per generator count
    and column: median step and slowest get, aggregate GB/s, the step over
    the time the veth's line rate (``rate``, bytes/s) needs for N models, the
    step over the same column's with one generator, and the bytes that left
    node A per step over the model's size."""
    header = ["generators", "config", "step", "get", "GB/s", "step / line time", "step / 1 generator's",
              "out of A / model"]
    lines = []
    for size, count, layout in models:
        by_n = results.get(model_key(size, count, layout), {})
        rows = []
        for n in generator_counts:
            for c in configs:
                cell = by_n.get(n, {}).get(c)
                if cell is None:
                    rows.append([str(n), c] + ["-"] * (len(header) - 2))
                    continue
                step, get, tx = cell["step"], cell["get"], cell["tx"]
                one = by_n.get(1, {}).get(c)
                rows.append([str(n), c, rb.fmt_ms(step), rb.fmt_ms(get) if get is not None else "-",
                             f"{n * size / step / 1e9:.2f}", rb.fmt_ratio(step / (n * size / rate)),
                             rb.fmt_ratio(step / one["step"]) if one else "-", rb.fmt_ratio(tx / size)])
        lines += [model_heading(size, count, layout), rb.markdown_table(header, rows)]
    return "\n".join(lines)


def cross_node_notes(rate, env, rounds, nodes):
    """What the cross-node (``nodes`` 2) or fan-out (3) table's columns mean,
    and the run's line rate."""
    where = ("generators on node B (two network namespaces joined by a veth)" if nodes == 2 else
             "generator i on node B (even i) or C (odd i): three network namespaces, one veth each to one "
             "bridge; unshared_*: the plugin with RAY_RDT_NODE_SHARING=0 (a cluster of its own); issue 21's "
             "targets: out of A / model <= 1.05 x the generator nodes, and 4 generators on two nodes within "
             "1.3x of one generator on one node (step / 1 generator's <= 1.3)")
    return [
        f"trainer on node A, {where}; medians of {rounds} rounds after a warm-up, the columns interleaved",
        f"veth line rate: {rate / 1e9:.2f} GB/s (one TCP stream, {rb.fmt_size(cross_node.LINE_RATE_BYTES)}, "
        f"median of {cross_node.LINE_RATE_ROUNDS}); line time = N x model / line rate; issue 18's target, "
        "nixl and gloo at 0.8x the line rate or better, is step / line time <= 1.25",
        "out of A: the veth's tx_bytes in namespace A across a step (the model's bytes and Ray's own "
        "traffic), median per step; about N for N generators when each pulls the model once",
        "environment of every Ray process of both clusters: " + " ".join(f"{k}={v}" for k, v in env.items()),
    ]


def model_grid(sizes, counts, layouts):
    """The models to measure, from the comma-separated options: (bytes,
    tensors, layout); one tensor is measured once (its two layouts are the
    same model)."""
    return [
        (s, c, l)
        for s in rb.parse_sizes(sizes)
        for c in map(int, counts.split(","))
        for l in layouts.split(",")
        if not (c == 1 and l == "separate")
    ]


def clusters(configs):
    """The clusters the columns run on, in order: ``(columns, plugin on,
    label, environment)``. Each stock column on a cluster of its own: a
    stock transfer that times out kills its actors (2.60), which must not
    take another column down; the unshared columns on one with node-local
    sharing off; the other columns on one cluster with the plugin."""
    out = [([c], False, f"stock Ray 2.60, {c} (RAY_RDT_PLUGIN=0)", {}) for c in configs if c.startswith("stock")]
    unshared = [c for c in configs if c in UNSHARED]
    rest = [c for c in configs if not c.startswith("stock") and c not in UNSHARED]
    if unshared:
        out.append((unshared, True, "patched Ray with the plugin, node-local sharing off", UNSHARED_ENV))
    return out + ([(rest, True, "patched Ray with the plugin", {})] if rest else [])


def child_args(args, columns):
    """The ``--child`` arguments of a cluster running ``columns``."""
    return [args.sizes, args.counts, args.layouts, args.generators, f"{args.rounds}:{','.join(columns)}",
            "--nodes", str(args.nodes)]


def merge(results, errors, out):
    """Adds one child's ``RESULT`` (results and errors) to the run's."""
    for key, by_n in out["results"].items():
        for n, cells in by_n.items():
            results.setdefault(key, {}).setdefault(int(n), {}).update(cells)
    errors.update(out["errors"])


def measure_one_host(args, configs, checkpoint):
    """Every column on local clusters (:func:`clusters`), each in a child
    process: ``(results, errors)``. A child that fails is an error of its
    columns; ``checkpoint(results, errors)`` runs after each child."""
    results, errors = {}, {}
    for columns, plugin, label, _ in clusters(configs):
        env = {} if plugin else rb.STOCK_ENV
        try:
            merge(results, errors, rb.run_child(__file__, child_args(args, columns), env, label))
        except RuntimeError as e:
            errors[",".join(columns)] = str(e)[-600:]
        checkpoint(results, errors)
    return results, errors


def measure_cross_node(args, configs, env):
    """Every column on clusters of ``args.nodes`` namespaces
    (:func:`clusters`), ``env`` for all their processes, the veth's line
    rate measured on the last one: ``(results, errors, line rate in
    bytes/s)``."""
    results, errors, rate = {}, {}, None
    plan = clusters(configs)
    for i, (columns, plugin, label, cluster_env) in enumerate(plan):
        out, measured = cross_node.run_on_nodes(
            plugin, dict(env, **cluster_env), __file__, ["--child", *child_args(args, columns)], label,
            nodes=args.nodes, line_rate=i == len(plan) - 1, timeout=CROSS_NODE_DRIVER_TIMEOUT_S)
        merge(results, errors, out)
        rate = measured or rate
    return results, errors, rate


def parse_args():
    """The options, with the defaults of the mode (one host, ``--cross-node``
    or ``--fanout``); ``args.nodes`` is the mode's number of Ray nodes."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in DEFAULTS:
        p.add_argument(f"--{name}", help=f"default {DEFAULTS[name]}; --cross-node: {CROSS_NODE_DEFAULTS[name]}; "
                                         f"--fanout: {FANOUT_DEFAULTS[name]}")
    p.add_argument("--rounds", type=int, default=3)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--cross-node", dest="nodes", action="store_const", const=2,
                      help="trainer on node A, generators on node B (needs root)")
    mode.add_argument("--fanout", dest="nodes", action="store_const", const=3,
                      help="trainer on node A, generators on nodes B and C (needs root)")
    mode.add_argument("--nodes", type=int, choices=sorted(MODES), help=argparse.SUPPRESS)  # children
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help=f"--cross-node, --fanout: for every Ray process of every cluster (repeatable; "
                        f"default {NETWORK_ONLY_ENV})")
    p.add_argument("--json")
    p.add_argument("--markdown")
    p.add_argument("--child", nargs=5, metavar=("SIZES", "COUNTS", "LAYOUTS", "GENERATORS", "ROUNDS_CONFIGS"))
    args = p.parse_args()
    args.nodes = args.nodes or 1
    for name, default in MODES[args.nodes][1].items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    configs = set(args.configs.split(","))
    if args.nodes > 1 and configs & {"plugin_shm", "shared_shm"}:
        p.error("shm cannot cross hosts: leave plugin_shm and shared_shm out of --configs with --cross-node or --fanout")
    if args.nodes == 1 and configs & UNSHARED:
        p.error(f"{', '.join(sorted(configs & UNSHARED))}: node-local sharing is between nodes; "
                "use --cross-node or --fanout")
    return args


def main():
    args = parse_args()
    if args.child:
        sizes, counts, layouts, gens, rounds_configs = args.child
        rounds, configs = rounds_configs.split(":", 1)
        models = model_grid(sizes, counts, layouts)
        out, errors = bench_cluster(configs.split(","), models, [int(g) for g in gens.split(",")], int(rounds),
                                    args.nodes)
        rb.child_result({"results": out, "errors": errors})
    sizes = rb.parse_sizes(args.sizes)
    generator_counts = [int(g) for g in args.generators.split(",")]
    configs = [c for c in args.configs.split(",") if c]
    models = model_grid(args.sizes, args.counts, args.layouts)
    started = time.strftime("%Y-%m-%d %H:%M")
    where = MODES[args.nodes][0]
    print(f"weight sync {where}, {started}: models {args.sizes} x {args.counts} x {args.layouts}, "
          f"generators {args.generators}", file=sys.stderr)
    if args.nodes > 1:
        env = dict(NETWORK_ONLY_ENV, **dict(kv.split("=", 1) for kv in args.env))
        results, errors, rate = measure_cross_node(args, configs, env)
        body = cross_node_report(results, rate, models, generator_counts, configs)
        body += "\n\n" + "\n".join(f"- {n}" for n in cross_node_notes(rate, env, args.rounds, args.nodes))
        extra = {"line_rate_bytes_per_s": rate, "env": env}
    else:
        limits = {str(s): {str(n): parallel_copy_medians(s, n) for n in sorted(set([1] + generator_counts))}
                  for s in sizes}
        results, errors = measure_one_host(
            args, configs, lambda r, e: save_json(args.json, {"started": started, "results": r, "errors": e,
                                                             "limits": limits, "partial": True}))
        body = report(results, limits, models, generator_counts, configs)
        extra = {"limits": limits}
    text = f"Weight sync {where} ({started}; medians of {args.rounds} rounds; ms)\n" + body
    if errors:
        text += "\n\nFailed cells:\n" + "\n".join(f"- {k}: {v}" for k, v in errors.items())
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text + "\n")
    save_json(args.json, {"started": started, "results": results, "errors": errors, **extra})


def save_json(path, data):
    """Writes ``data`` to ``path`` as JSON (nothing when ``path`` is None)."""
    if path:
        with open(path, "w") as fh:
            json.dump(data, fh, indent=1)


if __name__ == "__main__":
    main()
