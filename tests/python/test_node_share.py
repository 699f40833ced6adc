"""Node-local sharing across two Ray nodes (issue 21): a producer on node A,
two consumers on node B fetch one 32 MiB object; one read crosses the network
and the other consumer takes the bytes from that read's copy on node B
(src/engine/node_share.rs). The cluster is tests/python/netns.py's two
namespaces (see test_two_nodes.py), with NIXL's UCX kept on the network
(``UCX_TLS=tcp,self``, netns's default); the driver script is two_node_scripts/node_share.py,
which holds the first consumer in its network read (hold point ``fetch``)
until the second consumer's request waits at its node copy (``share_wait``),
so both fetch at once by construction.

Without root or network namespaces the module is skipped, with the reason."""

import pytest

from test_two_nodes import ANSI, PRODUCER_GONE, counted, message, namespace_cluster

NBYTES = 32 << 20


@pytest.fixture(scope="module")
def cluster():
    with namespace_cluster() as c:
        yield c


def run(cluster, mode, transport) -> dict:
    out = cluster.run_driver("node_share.py", mode, transport, str(NBYTES), timeout=240)
    assert out.returncode == 0 and out.result is not None, f"node_share.py failed: {out.describe()}"
    result = out.result
    ips = {name: w["ip"] for name, w in result["where"].items()}
    assert ips == {"producer": cluster.a.ip, "leader": cluster.b.ip, "follower": cluster.b.ip}, ips
    return result


def completed(result: dict, who: str) -> dict:
    """``who``'s task result; it must have completed with every element right."""
    case = result[f"{who}_result"]
    if "completed" not in case:
        kind, err = next((k, v) for k, v in case.items() if k in ("error", "hang"))
        pytest.fail(f"the {who}'s task did not complete ({kind}): {message(err, tail=1200)}")
    assert case["completed"] == {"ok": True, "nbytes": NBYTES}, case
    return case


def path_delta(before: dict, after: dict, path: str, field="bytes_received") -> int:
    return counted(before["paths"][path], after["paths"][path], field)


@pytest.mark.parametrize("transport", ["gloo", "nixl"])
def test_two_consumers_of_one_node_share_one_read(cluster, transport):
    """The producer served the object once (gloo: its network counters and
    ``endpoint_stats``; nixl's one-sided reads never reach it, so it counts
    nothing either way), both consumers have every element, the leader's
    bytes crossed the network and the other consumer's came from the node
    copy (``node_copy`` counts exactly the object's bytes)."""
    result = run(cluster, "share", transport)
    completed(result, "leader")
    completed(result, "follower")
    before, after = result["before"], result["after"]
    leader = (path_delta(before["leader"], after["leader"], "network"),
              path_delta(before["leader"], after["leader"], "node_copy"),
              path_delta(before["leader"], after["leader"], "node_copy", "bytes_sent"))
    assert leader == (NBYTES, 0, NBYTES), (before["leader"], after["leader"])
    follower = (path_delta(before["follower"], after["follower"], "network"),
                path_delta(before["follower"], after["follower"], "node_copy"))
    assert follower == (0, NBYTES), (before["follower"], after["follower"])
    for who in ("leader", "follower"):
        assert counted(before[who], after[who], "errors") == 0, who
    served = counted(before["producer_probe"]["endpoint"], after["producer_probe"]["endpoint"], "fetches_served")
    sent = path_delta(before["producer"], after["producer"], "network", "bytes_sent")
    assert (served, sent) == ((1, NBYTES) if transport == "gloo" else (0, 0))


def test_sharing_off_reads_once_per_consumer(cluster):
    """``RAY_RDT_NODE_SHARING=0``: each consumer reads from the producer."""
    result = run(cluster, "off", "gloo")
    completed(result, "leader")
    completed(result, "follower")
    before, after = result["before"], result["after"]
    for who in ("leader", "follower"):
        got = (path_delta(before[who], after[who], "network"), path_delta(before[who], after[who], "node_copy"))
        assert got == (NBYTES, 0), who
    sent = path_delta(before["producer"], after["producer"], "network", "bytes_sent")
    assert sent == 2 * NBYTES


def test_leader_killed_mid_read_the_other_consumer_reads_from_the_producer(cluster, capsys):
    """The leader is killed while held in its network read (nixl) and the
    other consumer waits at its node copy: that consumer's task still gets
    every element, from the producer itself, within the driver's fetch
    timeout; it counts one failed node-copy fetch and the object's bytes on
    the network path; and it holds no more plugin threads, memfds or Unix
    sockets than after its warm-up, with no share socket left on node B."""
    result = run(cluster, "leader-killed", "nixl")
    assert "completed" not in result["leader_result"], "the leader's task survived its kill"
    case = completed(result, "follower")
    stats = result["follower_stats"]
    got = (path_delta(stats["before"], stats["after"], "network"),
           path_delta(stats["before"], stats["after"], "node_copy"),
           path_delta(stats["before"], stats["after"], "node_copy", "errors"))
    assert got == (NBYTES, 0, 1), stats
    base, after = result["follower_base"], result["follower_after"]
    keys = ("memfd_fds", "memfd_maps", "unix_fds", "rdt_threads", "share_sockets")
    assert {k: after[k] for k in keys} == {k: base[k] for k in keys}
    assert after["share_sockets"] == []
    with capsys.disabled():
        print(f"\n  [nixl, leader killed] the other consumer had the object {case['seconds']:.2f} s after the kill")


def test_producer_killed_while_consumers_share_is_actor_died_for_both(cluster):
    """The producer dies while the leader is held in its read and the other
    consumer waits at its node copy: both consumers' tasks fail with
    ``ActorDiedError`` saying the producer is gone (the follower read from
    the producer itself after the leader's read failed)."""
    result = run(cluster, "producer-killed", "nixl")
    for who in ("leader", "follower"):
        case = result[f"{who}_result"]
        assert "error" in case, f"the {who}'s task did not fail: {case}"
        text = ANSI.sub("", message(case["error"]))
        assert "ActorDiedError" in text, text[-1500:]
        assert PRODUCER_GONE.search(text), text[-1500:]
