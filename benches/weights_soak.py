"""Weight-sync soak: the RL loop for many steps, and what each process holds
before and after.

A trainer and ``--generators`` generators (the actors of
``benches/weights.py``) sync a model of ``--size`` bytes held as ``--count``
row views of one matrix, step after step, for each column of ``--configs``:
every step the trainer changes its weights, and each generator lands them in
its own weights and checks them (one-sided columns: the trainer's
``ray.put``, each generator's ``set_target_for_ref`` and ``ray.get``; gloo:
the trainer's method returns the list, each generator copies it in;
``targets_gloo``: each generator names its weights as the targets of the
borrowed ref, then receives it as a task argument straight into them;
``shared_shm``: the trainer's model in ``ray_rdt.share_memory_``). Each column
runs on actors of its own, after ``--warmup`` steps.

After the warm-up and after each of ``--checkpoints`` parts of ``--steps``
steps, once the frees of the last step have arrived, every process reports
what it holds (``benches/soak.py``'s probe, from ``/proc/self``): resident
memory, glibc's heap in use and free, descriptors, threads (less gRPC's own
pools), memfds open and mapped, the plugin's NIXL registrations, and the RDT
objects its store holds. Each generator's ``ray_rdt.stats()`` shows the
bytes it received through the plugin, which must be the model's bytes every
step.

Across two nodes (``--cross-node``; needs root): the same loop on a Ray
cluster of two network namespaces joined by a veth (``benches/cross_node.py``),
the trainer on node A and the generators on node B, every Ray process with
``UCX_TLS=tcp,self`` so that NIXL crosses the veth; the generators of node B
share one read of each step (node-local sharing, the plugin's default).
Columns ``plugin_nixl``, ``plugin_gloo`` and ``targets_gloo``.

    python benches/weights_soak.py [--size 64MiB] [--count 10000] [--generators 2]
                                   [--steps 2000] [--checkpoints 4] [--warmup 50]
                                   [--configs plugin_nixl,plugin_shm,shared_shm,plugin_gloo,targets_gloo]
                                   [--cross-node] [--json FILE] [--markdown FILE]
    ci/bench weights-soak [same options]

Results: docs/soak.md.
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Ray's workers import this directory's modules by name (the actors' helpers).
os.environ["PYTHONPATH"] = os.pathsep.join(
    [HERE, os.path.join(HERE, "..", "tests", "python")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)
sys.path.insert(0, HERE)

import cross_node  # noqa: E402
import raybench as rb  # noqa: E402
import soak  # noqa: E402
import weights  # noqa: E402
from netns import NETWORK_ONLY_ENV  # noqa: E402

CONFIGS = ["plugin_nixl", "plugin_shm", "shared_shm", "plugin_gloo", "targets_gloo"]
# The columns that cross nodes (plugin shm has only the same-host path).
CROSS_NODE_CONFIGS = ["plugin_nixl", "plugin_gloo", "targets_gloo"]
# The transport whose counters show each column's bytes in a generator.
TRANSPORT = {"plugin_nixl": "nixl", "plugin_shm": "shm", "shared_shm": "shm", "plugin_gloo": "gloo", "targets_gloo": "gloo"}
SETTLE_TIMEOUT_S = 30.0


def _probe(actor_self):
    """What this actor's process holds (run through ``__ray_call__``)."""
    return soak.process_probe()


def _collect(actor_self):
    """Runs Python's garbage collector; the RDT objects this actor's process
    still holds (run through ``__ray_call__``)."""
    import gc

    gc.collect()
    return soak._rdt_objects()


def _received(actor_self, transport):
    """The bytes this actor's plugin received over ``transport`` (all paths)."""
    import ray_rdt

    return ray_rdt.stats()[transport]["bytes_received"]


def settle(actors):
    """Every actor's probe once no actor holds an RDT object (the frees of the
    last step arrive asynchronously), or after ``SETTLE_TIMEOUT_S``."""
    import ray

    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while sum(ray.get([a.__ray_call__.remote(_collect) for a in actors])) and time.monotonic() < deadline:
        time.sleep(0.05)
    return ray.get([a.__ray_call__.remote(_probe) for a in actors])


def run_config(config, placement, size, count, n_generators, steps, checkpoints, warmup):
    """One column on actors of its own, placed by ``placement`` (the
    trainer's options, generator ``i``'s options as a function of ``i``:
    :func:`weights.placement`): the warm-up, then ``steps`` steps in
    ``checkpoints`` parts, probing every process after each. Returns a dict
    for the report."""
    import ray
    from ray.experimental.collective import create_collective_group, destroy_collective_group

    trainer_options, generator_options = placement
    Trainer, Generator = weights.actor_classes()
    trainer = Trainer.options(**trainer_options).remote()
    generators = [Generator.options(**generator_options(i)).remote() for i in range(n_generators)]
    actors = [trainer] + generators
    group = None
    try:
        ray.get(trainer.make.remote(size, count, "views", config in weights.SHARED))
        ray.get([g.make.remote(size, count, "views") for g in generators])
        if config.endswith("gloo"):
            group = create_collective_group(actors, backend="torch_gloo")
        for _ in range(warmup):
            weights.one_step(config, trainer, generators)
        probes = [settle(actors)]
        transport = TRANSPORT[config]
        received = [ray.get([g.__ray_call__.remote(_received, transport) for g in generators])]
        seconds = 0.0
        for k in range(checkpoints):
            part = steps // checkpoints + (1 if k < steps % checkpoints else 0)
            t0 = time.perf_counter()
            for _ in range(part):
                weights.one_step(config, trainer, generators)
            seconds += time.perf_counter() - t0
            probes.append(settle(actors))
            received.append(ray.get([g.__ray_call__.remote(_received, transport) for g in generators]))
            print(f"  {config}: {part} steps, {seconds:.1f} s so far", file=sys.stderr, flush=True)
        return {
            "config": config,
            "steps": steps,
            "seconds": seconds,
            "model_bytes": count * max(1, size // count // 4) * 4,
            "received": received,
            "probes": probes,
        }
    finally:
        if group is not None:
            destroy_collective_group(group)
        for a in actors:
            ray.kill(a)


def _change(first, last, cell):
    return f"{cell(first)} -> {cell(last)}"


HEADER = [
    "| config | process | RSS MiB (after warm-up -> checkpoints) | heap MiB in use/free | fds | threads less gRPC's "
    "| memfds open/mapped | NIXL regs exported/received/loaded | RDT objects |",
    "|---|---|---|---|---|---|---|---|---|",
]


def format_rows(result):
    """Table rows (markdown) for one column: one per process."""
    rows = []
    names = ["trainer"] + [f"generator {i}" for i in range(len(result["probes"][0]) - 1)]
    for i, name in enumerate(names):
        probes = [checkpoint[i] for checkpoint in result["probes"]]
        first, last = probes[0], probes[-1]
        rows.append(
            f"| {result['config']} | {name} | {' -> '.join(soak._mib(p['rss']) for p in probes)} "
            f"| {_change(first, last, lambda p: soak._mib(p['heap_in_use']) + '/' + soak._mib(p['heap_free']))} "
            f"| {_change(first, last, lambda p: p['fds'])} | {_change(first, last, lambda p: p['threads_not_grpc'])} "
            f"| {_change(first, last, lambda p: str(p['memfd_fds']) + '/' + str(p['memfd_maps']))} "
            f"| {_change(first, last, soak._nixl_cell)} | {_change(first, last, lambda p: p['rdt_objects'])} |"
        )
    return rows


def summary(result):
    """One line: the steps' rate, and whether every generator received the
    model's bytes through the plugin every step."""
    first, last = result["received"][0], result["received"][-1]
    per_step = [(b - a) / result["steps"] for a, b in zip(first, last)]
    exact = all(p == result["model_bytes"] for p in per_step)
    ratios = ", ".join(f"{p / result['model_bytes']:.3f}" for p in per_step)
    return (
        f"- {result['config']}: {result['steps']} steps in {result['seconds']:.1f} s "
        f"({result['steps'] / result['seconds']:.1f} steps/s); each generator received "
        f"{ratios} x the model per step through the plugin" + ("" if exact else " (NOT the model's bytes)")
    )


def run_all(args, nodes):
    """Every column of ``args`` on the cluster :func:`weights.placement`
    connects to for ``nodes``: the results, in order."""
    trainer_options, generator_options, _ = weights.placement(nodes)
    results = []
    for config in args.configs:
        print(f"  {config}: {args.warmup} warm-up steps, then {args.steps}", file=sys.stderr, flush=True)
        results.append(run_config(config, (trainer_options, generator_options), rb.parse_size(args.size), args.count,
                                  args.generators, args.steps, args.checkpoints, args.warmup))
    return results


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="64MiB")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--generators", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--configs", default=None, help=f"default {','.join(CONFIGS)}; --cross-node: "
                                                        f"{','.join(CROSS_NODE_CONFIGS)}")
    parser.add_argument("--cross-node", action="store_true", help="trainer on node A, generators on node B (root)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # the driver inside node A
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    known = CROSS_NODE_CONFIGS if args.cross_node else CONFIGS
    args.configs = [c for c in (args.configs or ",".join(known)).split(",") if c]
    unknown = set(args.configs) - set(known)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}; known here: {known}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        rb.child_result(run_all(args, nodes=2))
    started = time.strftime("%Y-%m-%d %H:%M")
    if args.cross_node:
        forwarded = argv if argv is not None else sys.argv[1:]
        results, _ = cross_node.run_on_nodes(True, dict(NETWORK_ONLY_ENV), __file__, ["--child", *forwarded],
                                             "the plugin", nodes=2, timeout=6 * 3600)
        where = "across two nodes (trainer on node A, generators on node B; UCX_TLS=tcp,self)"
    else:
        results = run_all(args, nodes=1)
        where = "on one host"
    size = rb.parse_size(args.size)
    lines = [
        f"Weight-sync soak {where} ({started}): {rb.fmt_size(size)} as {args.count:,} row views, "
        f"{args.generators} generators, {args.steps:,} steps after {args.warmup} warm-up steps, "
        f"probed {args.checkpoints} times",
        "",
        *HEADER,
        *[row for r in results for row in format_rows(r)],
        "",
        *[summary(r) for r in results],
    ]
    print("\n".join(lines))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
