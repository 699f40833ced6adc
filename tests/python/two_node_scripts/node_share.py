"""Node-local sharing across the nodes: a producer on node A, two consumers on
node B fetching one object (issue 21).

    node_share.py MODE TRANSPORT NBYTES

MODE:

``share``: the leader (the first consumer) is held at hold point ``fetch`` in
its network read; the second consumer's task is submitted, and its request
waits at the leader's node copy (the leader's hold point ``share_wait``
reached); then both go on. Reports both consumers' results (every element
checked), their ``ray_rdt.stats()`` and the producer's stats and
``endpoint_stats()`` before and after.

``off``: the consumers run with ``RAY_RDT_NODE_SHARING=0`` and fetch one after
the other; the same reports.

``leader-killed``: as ``share``, but the leader is killed (``ray.kill``) while
held in its read and the other waits at its node copy; reports how the other
consumer's task ended and what it holds (plugin threads, memfds, Unix
sockets, sockets named ``@ray-rdt-share-`` on node B) after a warm-up
transfer, before the fault, and after it.

``producer-killed``: as ``share``, but the producer is killed while the leader
is held in its read; reports how both consumers' tasks ended.

Consumers linger node copies for 500 ms (``RAY_RDT_NODE_SHARE_LINGER_MS``), so
a warm-up's node copy is gone before the fault."""

import os
import sys
import tempfile

import ray
from ray.experimental.collective import create_collective_group

from holds import Holds, wait_for
from rdt_driver import FETCH_TIMEOUT, connect, now, on, outcome, report, stats, where
from sharing_actors import Consumer, Producer

HOLD_DIR = tempfile.mkdtemp(prefix="rdt-node-share-holds-")
LINGER = {"RAY_RDT_NODE_SHARE_LINGER_MS": "500"}

mode, transport, nbytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
SHARING = {"RAY_RDT_NODE_SHARING": "0" if mode == "off" else "1"}
CONSUMER_ENV = {"env_vars": dict(LINGER, **SHARING)}
LEADER_ENV = {"env_vars": dict(LINGER, **SHARING, RAY_RDT_TEST_HOLD_DIR=HOLD_DIR,
                               RAY_RDT_TEST_HOLD_POINTS="fetch,share_wait")}




def probe(actor):
    """What ``actor``'s process holds of the plugin, and the node's share sockets."""

    def _probe(self):
        import os

        import ray_rdt

        links = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        with open("/proc/net/unix") as f:
            rows = [line.split() for line in f.readlines()[1:]]
        unix_inodes = {row[6] for row in rows if len(row) > 6}
        with open("/proc/self/maps") as f:
            memfd_maps = {tuple(line.split()[3:5]) for line in f if "/memfd:" in line}
        threads = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/comm") as f:
                    threads += f.read().startswith("rdt-")
            except OSError:
                pass
        return {
            "pid": os.getpid(),
            "memfd_fds": sum(link.startswith("/memfd:") for link in links),
            "memfd_maps": len(memfd_maps),
            "unix_fds": sum(link[8:-1] in unix_inodes for link in links if link.startswith("socket:[")),
            "rdt_threads": threads,
            "share_sockets": sorted(row[7] for row in rows if len(row) > 7 and row[7].startswith("@ray-rdt-share-")),
            "endpoint": ray_rdt.endpoint_stats(),
        }

    return ray.get(actor.__ray_call__.remote(_probe), timeout=FETCH_TIMEOUT)


def put(seed):
    ray.get(producer.make.remote(seed, nbytes), timeout=FETCH_TIMEOUT)
    ref = producer.get.options(tensor_transport=transport).remote()
    ray.wait([ref], timeout=FETCH_TIMEOUT)
    return ref


def snapshot():
    return {"producer": stats(producer, transport), "producer_probe": probe(producer),
            "leader": stats(leader, transport), "follower": stats(follower, transport)}


def settled(actor):
    """``actor``'s probe once no share socket is left on its node (at most 15 s)."""
    wait_for(lambda: not probe(actor)["share_sockets"], timeout=15)
    return probe(actor)


connect()
holds = Holds(HOLD_DIR)
producer = Producer.options(**on("a")).remote()
leader = Consumer.options(runtime_env=LEADER_ENV, **on("b")).remote()
follower = Consumer.options(runtime_env=CONSUMER_ENV, **on("b")).remote()
out = {"mode": mode, "transport": transport, "nbytes": nbytes,
       "where": {"producer": where(producer), "leader": where(leader), "follower": where(follower)}}
if transport == "gloo":
    create_collective_group([producer, leader, follower], backend="torch_gloo")
leader_pid = probe(leader)["pid"]

if mode == "leader-killed":
    warm = put(1)
    out["warm_up"] = outcome(follower.read.remote(warm, 1), now())
    del warm
    out["follower_base"] = settled(follower)

ref = put(2)
out["before"] = snapshot()
if mode == "off":
    t0 = now()
    out["leader_result"] = outcome(leader.read.remote(ref, 2), t0)
    out["follower_result"] = outcome(follower.read.remote(ref, 2), t0)
else:
    holds.arm("fetch", leader_pid)
    holds.arm("share_wait", leader_pid)
    try:
        first = leader.read.remote(ref, 2)
        holds.wait_reached("fetch", leader_pid)
        second = follower.read.remote(ref, 2)
        holds.wait_reached("share_wait", leader_pid)
        t0 = now()
        if mode == "leader-killed":
            ray.kill(leader, no_restart=True)
        elif mode == "producer-killed":
            ray.kill(producer, no_restart=True)
    finally:
        holds.release("fetch", leader_pid)
        holds.release("share_wait", leader_pid)
    out["leader_result"] = outcome(first, t0)
    out["follower_result"] = outcome(second, t0)

if mode == "leader-killed":
    out["follower_after"] = settled(follower)
    out["follower_stats"] = {"before": out["before"]["follower"], "after": stats(follower, transport)}
elif mode != "producer-killed":
    out["after"] = snapshot()
holds.stop()
report(out)
