"""One object, four consumers on two other nodes (issue 21): a producer on
node A, two consumers on node B and two on node C (a three-node
:class:`netns.NamespaceCluster`), all four fetch one object at once.

    fanout.py TRANSPORT NBYTES SHARING

``SHARING`` is ``1`` or ``0`` (``RAY_RDT_NODE_SHARING`` of the consumers).
Consumers keep a node copy for 5 s (``RAY_RDT_NODE_SHARE_LINGER_MS``), so a
consumer that asks after its node's first read finished still takes the node
copy: how many reads cross the network does not depend on timing.

Reports each consumer's node and result (every element checked), every
consumer's and the producer's ``ray_rdt.stats()[TRANSPORT]`` before and
after, and the bytes that left node A (its veth's transmit counter) while the
four fetched."""

import sys

import ray
from ray.experimental.collective import create_collective_group

from netns import veth_tx_bytes
from rdt_driver import FETCH_TIMEOUT, connect, now, on, outcome, report, stats, where
from sharing_actors import Consumer, Producer

transport, nbytes, sharing = sys.argv[1], int(sys.argv[2]), sys.argv[3]
CONSUMER_ENV = {"env_vars": {"RAY_RDT_NODE_SHARING": sharing, "RAY_RDT_NODE_SHARE_LINGER_MS": "5000"}}


connect()
producer = Producer.options(**on("a")).remote()
consumers = {f"{node}{i}": Consumer.options(runtime_env=CONSUMER_ENV, **on(node)).remote()
             for node in ("b", "c") for i in (1, 2)}
out = {"where": {name: where(c)["ip"] for name, c in consumers.items()}}
out["where"]["producer"] = where(producer)["ip"]
if transport == "gloo":
    create_collective_group([producer, *consumers.values()], backend="torch_gloo")
ray.get(producer.make.remote(7, nbytes), timeout=FETCH_TIMEOUT)
ref = producer.get.options(tensor_transport=transport).remote()
ray.wait([ref], timeout=FETCH_TIMEOUT)
before = {name: stats(c, transport) for name, c in consumers.items()}
before["producer"] = stats(producer, transport)
sent = veth_tx_bytes()
t0 = now()
reads = {name: c.read.remote(ref, 7) for name, c in consumers.items()}
out.update({f"{name}_result": outcome(r, t0) for name, r in reads.items()})
out["bytes_out_of_a"] = veth_tx_bytes() - sent
out["before"] = before
out["after"] = {name: stats(c, transport) for name, c in consumers.items()}
out["after"]["producer"] = stats(producer, transport)
report(out)
