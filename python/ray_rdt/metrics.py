"""The plugin's counters as Ray metrics (``ray.util.metrics``).

:class:`Exporter` turns successive snapshots of :func:`ray_rdt.stats` into metric
updates: counters grow by the difference between two snapshots, so the cost is
per flush, never per transfer. What a snapshot holds is exported generically, so
keys the plugin adds later are exported without a change here:

- an integer under ``stats()[transport]`` is a counter ``rdt_<key>`` tagged
  ``transport`` (``rdt_bytes_sent``, ``rdt_bytes_received``, ``rdt_transfers``,
  ``rdt_errors``);
- ``stats()[transport]["paths"][path]`` (e.g. ``same_host``, ``network``) holds
  the same kinds of values, exported as ``rdt_path_<key>`` tagged ``transport``
  and ``path`` (separate names, so summing a metric never counts a byte twice);
- a dict with ``bounds`` (ascending upper bounds) and ``counts`` (one per bound
  plus one for values above the last, not cumulative) is a histogram
  ``rdt_<key>`` with those boundaries. Each new count is observed at its
  bucket's upper bound (above the last: twice the last bound), so the buckets are
  exact and the histogram's sum is an upper estimate.

Ray prefixes the names with ``ray_`` on the node's Prometheus endpoint (and
counters get Prometheus' ``_total``) and adds its own tags (``NodeAddress``,
``WorkerId``, ``SessionName``, ...); the reporter adds ``ActorId``.
"""

from typing import Callable, Dict, Iterator, Optional, Tuple

_DESCRIPTIONS = {
    "bytes_sent": "Bytes of RDT tensors the ray-rdt plugin sent from this process",
    "bytes_received": "Bytes of RDT tensors the ray-rdt plugin received in this process",
    "transfers": "RDT transfers completed by the ray-rdt plugin",
    "errors": "RDT transfers of the ray-rdt plugin that failed",
}

# (kind, name, tags, value): kind "counter" with an int value, "histogram" with a
# (bounds, counts) pair.
Sample = Tuple[str, str, Tuple[Tuple[str, str], ...], object]


def _is_histogram(value) -> bool:
    return isinstance(value, dict) and isinstance(value.get("bounds"), list) and isinstance(value.get("counts"), list)


def _samples(values: dict, prefix: str, tags: Tuple[Tuple[str, str], ...]) -> Iterator[Sample]:
    for key, value in values.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            yield "counter", prefix + key, tags, value
        elif _is_histogram(value):
            yield "histogram", prefix + key, tags, (tuple(value["bounds"]), tuple(value["counts"]))


def flatten(snapshot: Dict[str, dict]) -> Iterator[Sample]:
    """Every exported value of a :func:`ray_rdt.stats` snapshot (see the module docstring)."""
    for transport, values in snapshot.items():
        tags = (("transport", transport),)
        yield from _samples(values, "rdt_", tags)
        for path, path_values in (values.get("paths") or {}).items():
            if isinstance(path_values, dict):
                yield from _samples(path_values, "rdt_path_", tags + (("path", path),))


def _ray_metric(kind: str, name: str, tag_keys: Tuple[str, ...], bounds: Optional[Tuple[float, ...]]):
    from ray.util import metrics

    key = name[len("rdt_path_") :] if name.startswith("rdt_path_") else name[len("rdt_") :]
    description = _DESCRIPTIONS.get(key, f"ray-rdt plugin counter {key}")
    if kind == "histogram":
        return metrics.Histogram(name, description, boundaries=list(bounds), tag_keys=tag_keys)
    return metrics.Counter(name, description, tag_keys=tag_keys)


class Exporter:
    """Exports the growth between successive snapshots as Ray metrics.

    ``make_metric(kind, name, tag_keys, bounds)`` creates the metric objects
    (default: :mod:`ray.util.metrics`); the first snapshot counts from zero, so a
    process's whole history is exported.
    """

    def __init__(self, make_metric: Callable = _ray_metric):
        self._make_metric = make_metric
        self._metrics: Dict[str, object] = {}
        self._last: Dict[Tuple[str, tuple], object] = {}

    def _metric(self, kind, name, tags, bounds=None):
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._make_metric(kind, name, tuple(k for k, _ in tags), bounds)
            self._metrics[name] = metric
        return metric

    def update(self, snapshot: Dict[str, dict], tags: Dict[str, str] = None):
        """Adds what grew since the previous snapshot; ``tags`` go on every sample."""
        common = tuple(sorted((tags or {}).items()))
        for kind, name, own, value in flatten(snapshot):
            tags = common + own
            key = (name, tags)
            previous = self._last.get(key)
            self._last[key] = value
            if kind == "counter":
                grown = value - (previous or 0)
                if grown > 0:
                    self._metric(kind, name, tags).inc(grown, tags=dict(tags))
                continue
            bounds, counts = value
            before = previous[1] if previous is not None and previous[0] == bounds else (0,) * len(counts)
            metric = None
            for i, (now, then) in enumerate(zip(counts, before)):
                if now <= then:
                    continue
                metric = metric or self._metric(kind, name, tags, bounds)
                at = bounds[i] if i < len(bounds) else 2 * bounds[-1]
                for _ in range(now - then):
                    metric.observe(at, tags=dict(tags))
