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
* two-sided transports (``plugin_gloo``, ``stock_gloo``; one group of the
  trainer and all generators) and ``object_store`` (no RDT): the trainer's
  method returns the list, each generator receives it as a task argument and
  copies it into its weights (``torch._foreach_copy_``); only the step time is
  measured. For the object store the trainer returns copies of its tensors:
  pickling a view pickles the whole storage it views.

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
"""

import argparse
import json
import multiprocessing
import random
import statistics
import sys
import time

import raybench as rb

CONFIGS = ["object_store", "stock_gloo", "stock_nixl", "plugin_gloo", "plugin_shm", "plugin_nixl"]
ONE_SIDED = {"stock_nixl": "nixl", "plugin_nixl": "nixl", "plugin_shm": "shm"}
STEP_TIMEOUT_S = 900


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
        def make(self, size, count, layout):
            self.tensors, self.allocations = model(size, count, layout)
            self.step_no = 0

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

    return Trainer, Generator


def one_step(config, trainer, generators):
    """One step of ``config`` to ``generators``: (step s, slowest get s or
    None, trainer put s or None)."""
    import ray

    expected = ray.get(trainer.advance.remote())
    t0 = time.perf_counter()
    if config in ONE_SIDED:
        refs, put_s = ray.get(trainer.put.remote(ONE_SIDED[config]), timeout=STEP_TIMEOUT_S)
        gets = ray.get([g.sync.remote(refs, expected) for g in generators], timeout=STEP_TIMEOUT_S)
        return time.perf_counter() - t0, max(gets), put_s
    ref = trainer.rows_gloo.remote() if config.endswith("gloo") else trainer.rows.remote()
    ray.get([g.take.remote(ref, expected) for g in generators], timeout=STEP_TIMEOUT_S)
    return time.perf_counter() - t0, None, None


def bench_cluster(configs, models, generator_counts, rounds):
    """In a child: every model, every generator count, every config, on one
    cluster. Returns ``{model key: {n: {config: {"step", "get", "put"}}}}`` of
    medians (seconds), and errors."""
    import ray
    from ray.experimental.collective import create_collective_group, destroy_collective_group

    rb.init_ray()
    Trainer, Generator = actor_classes()
    rng = random.Random(0)
    out, errors = {}, {}
    for size, count, layout in models:
        key = f"{size}/{count}/{layout}"
        trainer = Trainer.remote()
        generators = [Generator.remote() for _ in range(max(generator_counts))]
        ray.get([a.make.remote(size, count, layout) for a in [trainer] + generators])
        group = None
        if any(c.endswith("gloo") for c in configs):
            group = create_collective_group([trainer] + generators, backend="torch_gloo")
        print(f"  model {rb.fmt_size(size)} as {count} {layout}", file=sys.stderr, flush=True)
        out[key] = {}
        for n in generator_counts:
            values, failed = rb.interleaved(
                configs, lambda c: one_step(c, trainer, generators[:n]), rounds, rng, warmups=1, keep_going=True
            )
            out[key][n] = {
                c: {
                    field: (statistics.median(v[i] for v in vals) if vals[0][i] is not None else None)
                    for i, field in enumerate(("step", "get", "put"))
                }
                for c, vals in values.items()
            }
            errors.update({f"{key}/{n}/{c}": repr(e)[:300] for c, e in failed.items()})
        if group is not None:
            try:
                destroy_collective_group(group)
            except ValueError:
                pass  # destroyed by a failed transfer already
        for a in [trainer] + generators:
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
        samples.append(time.perf_counter() - t0)
    queue.put(samples)


def parallel_copy_medians(size, streams):
    """Median wall seconds for ``streams`` processes to copy ``size`` bytes
    each at once (every sample: all start together; the slowest ends it)."""
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(streams), ctx.Queue()
    procs = [ctx.Process(target=_copy_worker, args=(size, barrier, queue)) for _ in range(streams)]
    [p.start() for p in procs]
    per_proc = [queue.get() for _ in procs]
    [p.join() for p in procs]
    return statistics.median(max(s[i] for s in per_proc) for i in range(5))


def report(results, limits, models, generator_counts, configs):
    lines = []
    for size, count, layout in models:
        key = f"{size}/{count}/{layout}"
        by_n = results.get(key, {})
        lines.append(f"\n### {rb.fmt_size(size)} as {count:,} tensors ({layout})\n")
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
            for plugin, stock in (("plugin_nixl", "stock_nixl"), ("plugin_shm", "stock_nixl"), ("plugin_gloo", "stock_gloo")):
                if plugin in cells and stock in cells:
                    parts.append(f"{plugin} / {stock} step: {rb.fmt_ratio(cells[plugin]['step'] / cells[stock]['step'])}")
            lines.append("- " + "\n  - ".join(parts))
    return "\n".join(lines)


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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256MiB,1GiB")
    p.add_argument("--counts", default="1,1000,10000,100000")
    p.add_argument("--layouts", default="views,separate")
    p.add_argument("--generators", default="1,2,4")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json")
    p.add_argument("--markdown")
    p.add_argument("--child", nargs=5, metavar=("SIZES", "COUNTS", "LAYOUTS", "GENERATORS", "ROUNDS_CONFIGS"))
    args = p.parse_args()
    if args.child:
        sizes, counts, layouts, gens, rounds_configs = args.child
        rounds, configs = rounds_configs.split(":", 1)
        models = model_grid(sizes, counts, layouts)
        out, errors = bench_cluster(configs.split(","), models, [int(g) for g in gens.split(",")], int(rounds))
        rb.child_result({"results": out, "errors": errors})
    sizes = rb.parse_sizes(args.sizes)
    generator_counts = [int(g) for g in args.generators.split(",")]
    configs = [c for c in args.configs.split(",") if c]
    models = model_grid(args.sizes, args.counts, args.layouts)
    started = time.strftime("%Y-%m-%d %H:%M")
    print(f"weight sync, {started}: models {args.sizes} x {args.counts} x {args.layouts}, generators {args.generators}", file=sys.stderr)
    limits = {str(s): {str(n): parallel_copy_medians(s, n) for n in sorted(set([1] + generator_counts))} for s in sizes}
    results, errors = {}, {}
    # Each stock column in a cluster of its own: a stock transfer that times
    # out kills its actors (2.60), which must not take the other column down.
    children = [([c], rb.STOCK_ENV, f"stock Ray 2.60, {c} (RAY_RDT_PLUGIN=0)") for c in configs if c.startswith("stock")]
    children.append(([c for c in configs if not c.startswith("stock")], {}, "patched Ray with the plugin"))
    for columns, env, label in children:
        if not columns:
            continue
        child_args = [args.sizes, args.counts, args.layouts, args.generators, f"{args.rounds}:{','.join(columns)}"]
        out = rb.run_child(__file__, child_args, env, label)
        for key, by_n in out["results"].items():
            for n, cells in by_n.items():
                results.setdefault(key, {}).setdefault(int(n), {}).update(cells)
        errors.update(out["errors"])
    text = f"Weight sync ({started}; medians of {args.rounds} rounds; ms)\n" + report(
        results, limits, models, generator_counts, configs
    )
    if errors:
        text += "\n\nFailed cells:\n" + "\n".join(f"- {k}: {v}" for k, v in errors.items())
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"started": started, "results": results, "limits": limits, "errors": errors}, fh, indent=1)


if __name__ == "__main__":
    main()
