"""One object to four consumers on two nodes (issue 21): across nodes, the
bytes cross the producer's link once per consumer node, not once per
consumer. A three-node :class:`netns.NamespaceCluster` (hosts A, B, C on one
switch, ``UCX_TLS=tcp,self``); the producer on A returns a 32 MiB tensor,
two consumers on B and two on C fetch it at once (driver
two_node_scripts/fanout.py). Node A's veth counts what left A.

Without root or network namespaces the module is skipped, with the reason."""

import pytest

from test_node_share import NBYTES, completed, path_delta
from test_two_nodes import namespace_cluster

# Ray's own traffic during the fetch (task submissions, replies, heartbeats)
# rides the same link: a few hundred KiB against 2 x 32 MiB.
OVERHEAD = 0.05


@pytest.fixture(scope="module")
def cluster():
    with namespace_cluster(nodes=3) as c:
        yield c


def run(cluster, transport, sharing) -> dict:
    out = cluster.run_driver("fanout.py", transport, str(NBYTES), "1" if sharing else "0", timeout=240)
    assert out.returncode == 0 and out.result is not None, f"fanout.py failed: {out.describe()}"
    result = out.result
    ips = {"producer": cluster.a.ip, "b1": cluster.b.ip, "b2": cluster.b.ip,
           "c1": cluster.nodes[2].ip, "c2": cluster.nodes[2].ip}
    assert result["where"] == ips, result["where"]
    for name in ("b1", "b2", "c1", "c2"):
        completed(result, name)
    return result


def network_and_node_copy(result, name):
    before, after = result["before"][name], result["after"][name]
    return path_delta(before, after, "network"), path_delta(before, after, "node_copy")


@pytest.mark.parametrize("transport", ["gloo", "nixl"])
def test_four_consumers_on_two_nodes_cross_the_link_once_per_node(cluster, transport):
    """Sharing on: per node, one consumer's bytes crossed the network and
    the other's came from that node's copy; the bytes that left node A are
    two objects (plus Ray's own traffic), not four."""
    result = run(cluster, transport, sharing=True)
    for node in ("b", "c"):
        paths = sorted(network_and_node_copy(result, f"{node}{i}") for i in (1, 2))
        assert paths == [(0, NBYTES), (NBYTES, 0)], (node, paths)
    out = result["bytes_out_of_a"]
    assert 2 * NBYTES <= out <= 2 * NBYTES * (1 + OVERHEAD), out / NBYTES


def test_sharing_off_crosses_the_link_once_per_consumer(cluster):
    """``RAY_RDT_NODE_SHARING=0``: every consumer reads over the network,
    and four objects leave node A."""
    result = run(cluster, "gloo", sharing=False)
    for name in ("b1", "b2", "c1", "c2"):
        assert network_and_node_copy(result, name) == (NBYTES, 0), name
    out = result["bytes_out_of_a"]
    assert 4 * NBYTES <= out <= 4 * NBYTES * (1 + OVERHEAD), out / NBYTES
