"""Running a function once on every alive node of a Ray cluster, for ``ray-rdt
doctor --address`` and ``ray-rdt stats --address``.

One zero-CPU task per node, pinned with ``NodeAffinitySchedulingStrategy``
(``soft=False``), so a busy node still runs it and no node answers twice. The
tasks run in ordinary Ray workers of the cluster's own environment, so they see
what an actor there would see.
"""

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional


@dataclass
class NodeResult:
    """What one node answered (``value``), or why it did not (``error``)."""

    node_id: str
    address: str
    value: Any = None
    error: Optional[str] = None


@contextlib.contextmanager
def connected(address: str) -> Iterator[None]:
    """Connects this process to the running cluster at ``address`` for the block."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def alive_nodes() -> List[dict]:
    """The cluster's alive nodes, as ``ray.nodes()`` describes them."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def on_each_node(fn: Callable[[], Any], timeout_s: float = 120.0) -> List[NodeResult]:
    """``fn()`` run in one task on each alive node; failures are reported per node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    pending = []
    for node in alive_nodes():
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        ref = task.options(scheduling_strategy=strategy, name=f"ray-rdt:{fn.__name__}").remote()
        pending.append((NodeResult(node["NodeID"], node.get("NodeManagerAddress", "?")), ref))
    results = []
    for result, ref in pending:
        try:
            result.value = ray.get(ref, timeout=timeout_s)
        except Exception as e:
            result.error = f"{type(e).__name__}: {e}"
        results.append(result)
    return results
