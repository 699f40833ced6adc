"""What the through-Ray benchmarks share (``ray_e2e.py``, ``pipelined.py``,
``inline_crossover.py``, ``fixed_cost.py``, ``cross_node.py``).

* sizes: :func:`parse_size`, :func:`fmt_size`, :func:`iterations` (samples per size);
* configurations: :data:`TRANSPORTS` maps each column name to the
  ``tensor_transport`` its producer method uses (``None``: Ray's object store);
  ``stock_*`` columns run with the plugin off (``RAY_RDT_PLUGIN=0``), ``plugin_*``
  and ``object_store`` with it on;
* the actors: :func:`actor_classes` (a producer that returns a float32 tensor it
  already holds, a consumer that reads one element), :func:`start_pair` (both
  actors, the tensors made, a gloo collective group when a config needs one)
  and :func:`start_cluster` (a fresh local cluster, ``ray.init(num_cpus=8)``,
  and a pair);
* one sample: :func:`one_transfer` (submit of the producer's task to
  ``ray.get`` of the consumer's result); many, interleaved across configs:
  :func:`interleaved` (any sample), :func:`interleaved_samples` (one
  transfer each); the physical reference: :func:`memcpy_medians`;
* the consumer's plugin counters: :func:`consumer_stats`, and :func:`path_taken`,
  which names the path (``same_host``, ``network``, ``inline``) that the
  transfers between two snapshots took;
* the stock side: :func:`run_child` runs a benchmark script again with
  ``--child`` in a subprocess with its own environment (``RAY_RDT_PLUGIN=0`` for
  stock Ray) and its own cluster; the child ends with :func:`child_result`,
  and :func:`merged` joins the children's results;
* output: :func:`markdown_table`, :func:`ratio_lines`, :func:`fmt_ms`.

Every benchmark measures and prints; none asserts anything about time.
"""

import json
import os
import statistics
import subprocess
import sys
import time

UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "B": 1}
DEFAULT_SIZES = "4KiB,4MiB,64MiB,256MiB"
WARMUPS = 3

# Column name -> the producer method's tensor_transport (None: Ray's object store).
TRANSPORTS = {
    "object_store": None,
    "stock_gloo": "gloo",
    "stock_nixl": "nixl",
    "plugin_gloo": "gloo",
    "plugin_shm": "shm",
    "plugin_nixl": "nixl",
}
STOCK = ("stock_gloo", "stock_nixl")
# Plugin columns in the order they run on one cluster: nixl last, because NIXL
# keeps a progress thread in every actor that has produced a NIXL object.
PLUGIN = ("plugin_gloo", "plugin_shm", "plugin_nixl")
# What each plugin column is compared with: stock Ray has no shm transport, so
# plugin shm is measured against stock gloo (the transport it replaces on one host).
STOCK_COUNTERPART = {"plugin_gloo": "stock_gloo", "plugin_shm": "stock_gloo", "plugin_nixl": "stock_nixl"}
STOCK_ENV = {"RAY_RDT_PLUGIN": "0"}


# ----------------------------------------------------------------- sizes


def parse_size(text: str) -> int:
    """``"4KiB"`` -> 4096 (also ``MiB``, ``GiB``, ``B`` and plain integers)."""
    text = text.strip()
    for unit in ("KiB", "MiB", "GiB", "B"):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * UNITS[unit])
    return int(text)


def parse_sizes(text: str):
    return [parse_size(s) for s in text.split(",") if s.strip()]


def fmt_size(n: int, sep: str = " ") -> str:
    for unit in ("GiB", "MiB", "KiB"):
        if n >= UNITS[unit] and n % UNITS[unit] == 0:
            return f"{n // UNITS[unit]}{sep}{unit}"
    return f"{n}{sep}B"


def iterations(nbytes: int) -> int:
    """Samples per size (after :data:`WARMUPS` warm-up rounds)."""
    if nbytes <= 1 << 20:
        return 50
    if nbytes <= 16 << 20:
        return 20
    if nbytes <= 64 << 20:
        return 10
    return 6


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms" if ms >= 0.1 else f"{ms:.2g} ms"


# ----------------------------------------------------------------- the cluster and the actors


def actor_classes():
    """The producer and consumer actor classes (defined here, inside a function,
    so Ray ships them by value: workers need not import this module)."""
    import ray
    import torch

    @ray.remote(enable_tensor_transport=True)
    class Producer:
        def __init__(self):
            self.tensors = {}

        def make(self, nbytes):
            self.tensors[nbytes] = torch.ones(nbytes // 4, dtype=torch.float32)

        def get(self, nbytes):
            return self.tensors[nbytes]

        def plain(self, value):
            return value  # no tensor: Ray's own path (fixed_cost.py)

    @ray.remote(enable_tensor_transport=True)
    class Consumer:
        def read(self, tensor):
            return float(tensor[0])

        def accept(self, value):
            return 1.0  # takes any value (fixed_cost.py)

        def node_ip(self):
            return ray.util.get_node_ip_address()

    return Producer, Consumer


def init_ray(**kwargs):
    """A fresh local cluster (``num_cpus=8``), or the one at ``address=``."""
    import ray

    if "address" not in kwargs:
        os.environ.pop("RAY_ADDRESS", None)
        kwargs.setdefault("num_cpus", 8)
        kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("log_to_driver", False)
    ray.init(**kwargs)


def start_pair(configs, sizes, producer_options=None, consumer_options=None):
    """One producer holding a tensor of each size and one consumer (both past
    their first task), in a torch_gloo collective group of their own when a
    config uses gloo. Returns ``(producer, consumer)``."""
    import ray
    import torch

    Producer, Consumer = actor_classes()
    producer = Producer.options(**(producer_options or {})).remote()
    consumer = Consumer.options(**(consumer_options or {})).remote()
    ray.get([producer.make.remote(n) for n in sizes])
    ray.get(consumer.read.remote(torch.ones(1)))
    if any(TRANSPORTS[c] == "gloo" for c in configs):
        from ray.experimental.collective import create_collective_group

        create_collective_group([producer, consumer], backend="torch_gloo")
    return producer, consumer


def start_cluster(configs, sizes, producer_options=None, consumer_options=None, **init_kwargs):
    """:func:`init_ray` and :func:`start_pair`: returns ``(producer, consumer)``."""
    init_ray(**init_kwargs)
    return start_pair(configs, sizes, producer_options, consumer_options)


def producer_method(producer, config):
    """The producer's ``get`` with the config's tensor transport."""
    transport = TRANSPORTS[config]
    return producer.get if transport is None else producer.get.options(tensor_transport=transport)


def one_transfer(method, consumer, nbytes, timeout=None):
    """One sample: seconds from submitting ``method`` (a producer method, see
    :func:`producer_method`) to ``ray.get`` of ``consumer.read`` of its ref."""
    import ray

    t0 = time.perf_counter()
    ref = method.remote(nbytes)
    value = ray.get(consumer.read.remote(ref), timeout=timeout)
    dt = time.perf_counter() - t0
    assert value == 1.0, value
    return dt


def interleaved(configs, sample, rounds, rng, warmups=0, keep_going=False):
    """``warmups`` then ``rounds`` rounds, each calling ``sample(config)`` once
    for every config, in a new random order from ``rng`` (a ``random.Random``),
    so drift and other load hit all configs alike; the warm-ups' values are
    dropped. An exception propagates, unless ``keep_going``: then the config
    leaves the later rounds. Returns ``({config: [value, ...]}, {config:
    exception})`` (the configs that failed only in the second)."""
    values = {config: [] for config in configs}
    errors = {}
    for round_no in range(warmups + rounds):
        for config in rng.sample(list(values), len(values)):
            if config in errors:
                continue
            try:
                value = sample(config)
            except Exception as e:
                if not keep_going:
                    raise
                errors[config] = e  # the caller reports it as the config's result
                continue
            if round_no >= warmups:
                values[config].append(value)
    return {c: v for c, v in values.items() if c not in errors}, errors


def interleaved_samples(methods, consumer, nbytes, rng, timeout=None, keep_going=False):
    """:func:`interleaved` :func:`one_transfer` samples of one size:
    :data:`WARMUPS` warm-up rounds, then :func:`iterations` rounds, of every
    config (``methods``: config -> producer method)."""
    return interleaved(list(methods), lambda config: one_transfer(methods[config], consumer, nbytes, timeout),
                       iterations(nbytes), rng, WARMUPS, keep_going)


def merged(results, key):
    """One field of several children's results (:func:`child_result`; ``None``
    for a child that did not run), merged: ``{config: {size: value}}`` with the
    sizes as ints, configs without values left out."""
    return {c: int_keys(r) for out in results if out for c, r in out[key].items() if r}


def plugin_on() -> bool:
    return os.environ.get("RAY_RDT_PLUGIN", "1").strip().lower() not in ("0", "false", "no", "off", "")


def consumer_stats(consumer):
    """The consumer's ``ray_rdt.stats()`` (None with the plugin off)."""
    import ray

    if not plugin_on():
        return None
    return ray.get(consumer.__ray_call__.remote(lambda self: __import__("ray_rdt").stats()))


def path_taken(before, after, config):
    """The path(s) the config's transfers took between two snapshots of the
    consumer's counters: e.g. ``"same_host"``, ``"inline"``, ``"network"``,
    ``"same_host+inline"`` when several, ``"none"`` when no transfer was counted."""
    transport = TRANSPORTS.get(config)
    if before is None or after is None or transport is None:
        return None
    b, a = before[transport]["paths"], after[transport]["paths"]
    taken = [p for p in a if a[p]["transfers"] > b[p]["transfers"]]
    return "+".join(taken) if taken else "none"


# ----------------------------------------------------------------- the stock side: a child process


def run_child(script, args, env=None, label=None):
    """Runs ``python SCRIPT --child ARGS`` with ``env`` added to this process's
    environment (without ``RAY_ADDRESS``: the child starts its own cluster);
    its stderr (progress) passes through. Returns the JSON of the child's
    ``RESULT`` line (:func:`child_result`)."""
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("RAY_ADDRESS", None)
    if label:
        print(f"{label}:", file=sys.stderr, flush=True)
    cmd = [sys.executable, os.path.abspath(script), "--child", *args]
    proc = subprocess.run(cmd, env=full_env, stdout=subprocess.PIPE, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode} and no RESULT line:\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def run_stock_and_plugin(script, child_args, configs, env):
    """Runs ``script``'s stock columns (``STOCK``) in a child with the plugin
    off, then the object store and the plugin columns (``PLUGIN``) in a child
    with ``env`` added; each child gets ``child_args`` and its columns (comma
    separated) last. Returns ``(stock, plugin)``: each child's result
    (:func:`run_child`), ``None`` where ``configs`` names none of its columns."""
    stock = [c for c in configs if c in STOCK]
    on = [c for c in ("object_store",) + PLUGIN if c in configs]
    results = []
    for columns, child_env, label in (
        (stock, STOCK_ENV, f"stock Ray 2.60 {stock} (RAY_RDT_PLUGIN=0)"),
        (on, env, f"patched Ray with the plugin {on}" + "".join(f" {k}={v}" for k, v in env.items())),
    ):
        results.append(run_child(script, child_args + [",".join(columns)], child_env, label) if columns else None)
    return tuple(results)


def child_result(result):
    """Ends a ``--child`` run: prints its ``RESULT`` line and exits at once.

    Stock NIXL's Python wheels crash the process at exit here (SIGSEGV in their
    bundled libnl-route-3's destructor when the system's libnl is loaded too;
    see tests/python/stock_mode_check.py): exit handlers are skipped."""
    print("RESULT " + json.dumps(result), flush=True)
    sys.stderr.flush()
    os._exit(0)


def int_keys(d):
    """JSON turned the sizes into strings: back to ints."""
    return {int(k): v for k, v in d.items()}


# ----------------------------------------------------------------- memcpy


def memcpy_medians(sizes):
    """Median seconds of one single-threaded copy of ``n`` bytes (numpy, into
    memory already faulted in), per size."""
    import numpy as np

    out = {}
    for n in sizes:
        src = np.ones(n // 4, dtype=np.float32)
        dst = np.empty_like(src)
        np.copyto(dst, src)
        samples = []
        for _ in range(max(5, iterations(n))):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            samples.append(time.perf_counter() - t0)
        out[n] = statistics.median(samples)
    return out


# ----------------------------------------------------------------- output


def markdown_table(header, rows):
    """A markdown table: the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}x" if r < 100 else f"{r:.0f}x"


def ratio_lines(values, pairs, keys, fmt_key=lambda k: fmt_size(k, "")):
    """One line per ``(label, numerator, denominator)`` in ``pairs`` whose
    columns both exist in ``values`` (``{column: {key: number}}``):
    ``label: key=ratio ...`` with ratio = numerator / denominator."""
    out = []
    for label, num, den in pairs:
        if num not in values or den not in values:
            continue
        parts = []
        for k in keys:
            a, b = values[num].get(k), values[den].get(k)
            parts.append(f"{fmt_key(k)}={fmt_ratio(a / b)}" if a is not None and b else f"{fmt_key(k)}=-")
        out.append(f"  {label}: " + " ".join(parts))
    return out
