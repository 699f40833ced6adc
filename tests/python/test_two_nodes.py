"""RDT across two Ray nodes through the plugin (issue 8).

The cluster is two Ray nodes, each in its own network namespace joined by a
veth pair (tests/python/netns.py): own loopback, own abstract Unix sockets, own
IP, i.e. two hosts as far as the plugin can tell. The producer runs on one node
and the consumer on the other; every driver runs inside namespace A
(tests/python/two_node_scripts/), reports what it observed as JSON, and the
tests here assert on that.

Every transfer is checked against the receiver's ``ray_rdt.stats()``, read in
the receiver's own process: ``bytes_received`` must grow by exactly the tensor
bytes, which proves the plugin moved them (stock Ray does not count).

Without root or network namespaces the whole module is skipped, with the reason.
"""

import contextlib
import re

import pytest

import netns

TENSOR_BYTES = 1000 * 1000 * 4  # the guide's torch.randn(1000, 1000), float32
FAULT_BYTES = 512 << 20  # large enough that a fault lands while the bytes move
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# What a clear error says, per fault.
OTHER_NODE = re.compile(r"another (host|node)", re.I)
_DEATH = r"(gone|died|dead|exited|killed|terminated)"
PRODUCER_GONE = re.compile(rf"(producer|actor)\b.{{0,160}}\b{_DEATH}|\b{_DEATH}\b.{{0,160}}\bproducer", re.I | re.S)
_NODE_DOWN = r"(unreachable|refused|timed out|gone|died|dead|lost|killed)"
PRODUCER_NODE_DOWN = re.compile(
    rf"(producer|node)\b.{{0,160}}\b{_NODE_DOWN}|\b{_NODE_DOWN}\b.{{0,160}}\b(producer|node)", re.I | re.S
)


@contextlib.contextmanager
def namespace_cluster(**kwargs):
    """A :class:`netns.NamespaceCluster` (``kwargs`` for it; two nodes by
    default); where namespaces cannot be made, a skip with the harness's
    reason (reported at the test, not inside pytest)."""
    try:
        cluster = netns.NamespaceCluster(**kwargs).__enter__()
    except netns.NamespacesUnavailable as e:
        pytest.skip(str(e))
    with contextlib.closing(cluster):
        yield cluster


@pytest.fixture(scope="module")
def two_nodes():
    """One two-node cluster for the module (Ray is slow to start on 2 cores);
    ``RAY_RDT_PLUGIN`` comes from the caller. Its exit raises if anything of it
    (namespace, veth, Ray process) is left behind."""
    with namespace_cluster() as c:
        yield c


def both_nodes_up(cluster):
    """``cluster`` with node B started again if a test killed it (on demand, so
    not at the module's end, where nothing needs it)."""
    if cluster.b.killed:
        cluster.restart_node(cluster.b)
    return cluster


@pytest.fixture
def cluster(two_nodes):
    return both_nodes_up(two_nodes)


# ----------------------------------------------------------------- helpers


def run(cluster, script, *args, timeout=150, **kwargs) -> dict:
    """Runs a driver script in namespace A; its ``RESULT`` (it must exit 0)."""
    out = cluster.run_driver(script, *args, timeout=timeout, **kwargs)
    assert out.returncode == 0 and out.result is not None, f"{script} failed: {out.describe()}"
    return out.result


def message(error: dict, tail: int = 0) -> str:
    """A driver-reported error as text; ``tail``: only its last characters (Ray's
    task errors carry the worker's traceback, the cause is at the end)."""
    text = ANSI.sub("", error["message"])
    if tail and len(text) > tail:
        text = "..." + text[-tail:]
    return f"{error['type']}: {text}"


def assert_on_nodes(cluster, result, producer, consumer, producer_node="a"):
    """The producer really runs on ``producer_node`` and the consumer on the other."""
    nodes = {"a": cluster.a.ip, "b": cluster.b.ip}
    consumer_node = "b" if producer_node == "a" else "a"
    assert result[producer]["ip"] == nodes[producer_node], result[producer]
    assert result[consumer]["ip"] == nodes[consumer_node], result[consumer]
    assert result[producer]["node_id"] != result[consumer]["node_id"]


def ok(case: dict) -> dict:
    """A driver case that must have run without error (else: its error text)."""
    if not case["ok"]:
        pytest.fail(message(case["error"], tail=1200))
    return case


def counted(before: dict, after: dict, field="bytes_received") -> int:
    return after[field] - before[field]


def assert_plugin_moved(case: dict, nbytes: int):
    """The receiver's plugin counted exactly ``nbytes`` in and no error, all of
    it over the network path (the producer is on another host: not the
    same-host path)."""
    before, after = case["receiver_before"], case["receiver_after"]
    assert counted(before, after) == nbytes, (before, after)
    assert counted(before, after, "errors") == 0, (before, after)
    assert counted(before["paths"]["network"], after["paths"]["network"]) == nbytes, (before, after)


def assert_same_sum(a: float, b: float):
    # Same float32 data summed by the same torch kernel: equal up to float noise.
    assert a == pytest.approx(b, rel=1e-5, abs=1e-2)


# ----------------------------------------------------------------- the harness


def test_teardown_after_a_failure_leaves_nothing():
    """The harness tears a running two-node cluster down when the code using it
    fails: no namespace, no process in either namespace, none naming its temp
    dirs. (Runs before the module's cluster exists.)"""
    with pytest.raises(RuntimeError, match="the body failed"):
        with namespace_cluster() as c:
            assert netns.namespace_pids(c.a.ns) and netns.namespace_pids(c.b.ns)
            raise RuntimeError("the body failed")
    assert c.leftovers() == []
    assert not {c.a.ns, c.b.ns} & set(netns.namespaces())
    assert netns.pids_matching(c.root) == []
    assert c.a.proc.poll() is not None and c.b.proc.poll() is not None


# ----------------------------------------------------------------- gloo (the guide)


@pytest.fixture(scope="module")
def gloo_guide(two_nodes):
    """The guide's gloo examples, run once across the nodes (gloo_guide.py)."""
    cluster = both_nodes_up(two_nodes)
    result = run(cluster, "gloo_guide.py")
    assert_on_nodes(cluster, result, "sender", "receiver")
    return result


def test_gloo_basic_across_nodes(gloo_guide):
    """``random_tensor`` on node A -> ``sum`` on node B: the right value, and the
    receiver's plugin received the tensor's 4 MB."""
    case = ok(gloo_guide["basic"])
    assert_same_sum(case["result"], case["expected"])
    assert_plugin_moved(case, case["nbytes"])


def test_gloo_dict_of_tensors_across_nodes(gloo_guide):
    """A dict of two tensors crosses the nodes as one object: both arrive."""
    case = ok(gloo_guide["nested_dict"])
    assert_same_sum(case["result"], case["expected"])
    assert_plugin_moved(case, case["nbytes"])


def test_gloo_pass_back_and_to_other_node(gloo_guide):
    """The same ref to the producer (its own tensor, no copy, no bytes in) and to
    node B (one transfer): equal sums."""
    case = ok(gloo_guide["pass_back"])
    assert case["ptr_on_producer"] == case["ptr_stored"]
    assert counted(case["sender_before"], case["sender_after"]) == 0
    assert_same_sum(case["sum_on_producer"], case["sum_on_other_node"])
    assert_plugin_moved(case, case["nbytes"])


def test_gloo_wait_tensor_freed_across_nodes(gloo_guide):
    """The guide's fixed mutability example: the producer's ``wait_tensor_freed``
    returns once node B's task has used the tensor and the driver dropped its
    ref (no deadlock across nodes), so node B saw the original values."""
    case = ok(gloo_guide["wait_tensor_freed"])
    assert_same_sum(case["sum_on_producer"], case["sum_on_other_node"])
    assert_plugin_moved(case, case["nbytes"])


# ----------------------------------------------------------------- nixl (the guide, CPU form)


@pytest.fixture(scope="module")
def nixl_walkthrough(two_nodes):
    """The guide's NIXL walkthrough (CPU form), run once across the nodes."""
    cluster = both_nodes_up(two_nodes)
    result = run(cluster, "nixl_walkthrough.py")
    assert_on_nodes(cluster, result, "sender", "receiver")
    return result


def test_nixl_method_return_across_nodes(nixl_walkthrough):
    """``tensor_transport="nixl"`` (no group): node B's task gets node A's tensor
    through the plugin's nixl transport."""
    case = ok(nixl_walkthrough["method_return"])
    assert_same_sum(case["result"], case["expected"])
    assert_plugin_moved(case, case["nbytes"])


def test_nixl_put_in_producer_get_in_consumer(nixl_walkthrough):
    """``ray.put(t, _tensor_transport="nixl")`` on node A, ``ray.get`` of both
    refs on node B: both tensors' bytes arrive through the plugin."""
    case = ok(nixl_walkthrough["put_get"])
    assert_same_sum(case["result"], case["expected"])
    assert_plugin_moved(case, case["nbytes"])


# ----------------------------------------------------------------- shm


def test_shm_across_nodes_is_a_clear_error(cluster):
    """shm needs one host: a consumer on another node gets an error saying the
    producer is on another host/node (at once, not a hang, not stock Ray's)."""
    result = run(cluster, "shm_across.py")
    assert_on_nodes(cluster, result, "sender", "receiver")
    outcome = result["outcome"]
    assert "error" in outcome, f"the consumer's task did not raise: {outcome}"
    assert OTHER_NODE.search(message(outcome["error"])), message(outcome["error"])
    assert counted(result["receiver_before"], result["receiver_after"]) == 0


# ----------------------------------------------------------------- faults


def check_fault(result, cause: re.Pattern, cause_name: str):
    """The common checks of fault_mid_transfer.py's report: the control transfer
    arrived through the plugin, the faulted one raised within the driver's fetch
    timeout (not a hang, not a success) naming ``cause``, and the consumer still
    answers. Returns a line saying when the kill came, for the test's output."""
    control = result["control"]
    if "completed" not in control:
        kind, err = next((k, v) for k, v in control.items() if k in ("error", "hang"))
        pytest.fail(f"the control transfer (no fault) did not arrive ({kind}): {message(err, tail=1200)}")
    assert control["completed"] == [1.0, result["nbytes"]]
    assert_plugin_moved(control, result["nbytes"])
    when = (f"kill {result['kill_after_s']:.3f} s after the consumer's task was submitted, the "
            f"{result['held_at']} (a hold point); the control transfer took {control['seconds']:.3f} s")
    fault = result["fault"]
    assert "completed" not in fault, f"the transfer finished before the fault ({when}): cannot test it"
    assert "hang" not in fault, f"the consumer's task hung ({when}): {message(fault['hang'])}"
    text = message(fault["error"])
    assert cause.search(text), f"the error does not say {cause_name} ({when}): {text}"
    after = result["consumer_after"]
    assert after.get("ping") == "pong", f"the consumer no longer answers: {after}"
    assert counted(after["receiver_before"], after["receiver_after"]) < result["nbytes"]
    return f"{when}; error {fault['seconds']:.2f} s after the kill: {message(fault['error'], tail=400)}"


@pytest.mark.parametrize("transport", ["gloo", "nixl"])
def test_killing_the_producer_mid_transfer_is_a_clear_error(cluster, transport, capsys):
    """512 MiB from node A to node B; the producer actor is killed (``ray.kill``)
    while the transfer is in flight. The consumer's task raises within 30 s
    (the driver's bounded ``ray.get``), saying the producer is gone, and the
    consumer actor survives. The transfer is held in flight at a hold point
    while the kill comes (fault_mid_transfer.py)."""
    result = run(cluster, "fault_mid_transfer.py", transport, str(FAULT_BYTES), "producer", timeout=200)
    assert_on_nodes(cluster, result, "producer", "consumer", producer_node="a")
    line = check_fault(result, PRODUCER_GONE, "that the producer process is gone (issue 8, item 6)")
    with capsys.disabled():
        print(f"\n  [{transport}, producer killed] {line}")


@pytest.mark.parametrize("transport", ["nixl", "gloo"])
def test_killing_the_producers_node_mid_transfer_is_a_clear_error(cluster, transport, capsys):
    """512 MiB from node B to node A; the whole of node B (raylet, workers,
    everything in its namespace, at once) is killed while the transfer is in
    flight. The consumer on node A gets an error within 30 s naming the
    producer's node or host (unreachable, refused, gone), and survives. (The
    ``cluster`` fixture starts node B again for the next test that needs it.)"""
    result = run(cluster, "fault_mid_transfer.py", transport, str(FAULT_BYTES), "node-b", timeout=200,
                 handlers={"kill-node-b": lambda: cluster.kill_node(cluster.b)})
    assert_on_nodes(cluster, result, "producer", "consumer", producer_node="b")
    line = check_fault(result, PRODUCER_NODE_DOWN,
                       "that the producer's host is unreachable, refuses, timed out, or is gone (issue 8, item 6)")
    with capsys.disabled():
        print(f"\n  [{transport}, node B killed] {line}")
