"""A large RDT transfer across the nodes, cut by a fault while it is in flight.

    fault_mid_transfer.py TRANSPORT NBYTES producer|node-b

``producer``: producer on node A, consumer on node B; the producer actor is
killed (``ray.kill``). ``node-b``: producer on node B, consumer on node A; the
harness kills the whole of node B (every process in its namespace, at once).

First a warm-up and a control transfer of the same tensor (they must arrive,
counted by the consumer's ``ray_rdt.stats()``; the control times a warm
transfer: the first one also sets up connections and registrations). Then the same
transfer again, and the fault at KILL_AT of the control's time after the
consumer's task was submitted. Reports how the consumer's task ended (error
text, seconds after the fault), whether it hung past FETCH_TIMEOUT, and whether
the consumer still answers afterwards. Until the plugin has a test-only hold
point, "in flight" is this timing: the report says when the kill came."""

import sys
import time

import torch

import ray
from ray.experimental.collective import create_collective_group

from rdt_driver import FETCH_TIMEOUT, ask_harness, connect, error_info, now, on, report, stats, where

KILL_AT = 0.3  # fraction of the control transfer's time

transport, nbytes, kill = sys.argv[1], int(sys.argv[2]), sys.argv[3]


@ray.remote(enable_tensor_transport=True)  # .options(tensor_transport=...) per call
class Producer:
    def make(self, nbytes):
        self.tensor = torch.ones(nbytes // 4, dtype=torch.float32)
        return self.tensor.numel() * self.tensor.element_size()

    def get(self):
        return self.tensor


@ray.remote
class Consumer:
    def read(self, tensor):
        return float(tensor[0]), tensor.numel() * tensor.element_size()

    def ping(self):
        return "pong"


def submit_transfer():
    """The producer's tensor as an RDT object (its task done), then the
    consumer's task on it; returns both refs and the consumer's submit time."""
    ref = producer.get.options(tensor_transport=transport).remote()
    ray.wait([ref], timeout=FETCH_TIMEOUT)
    return ref, consumer.read.remote(ref), now()


def outcome(result, since):
    try:
        value = ray.get(result, timeout=FETCH_TIMEOUT)
        return {"completed": value, "seconds": now() - since}
    except ray.exceptions.GetTimeoutError as e:
        return {"hang": error_info(e), "seconds": now() - since}
    except Exception as e:
        return {"error": error_info(e), "seconds": now() - since}


producer_node, consumer_node = ("a", "b") if kill == "producer" else ("b", "a")
connect()
producer = Producer.options(**on(producer_node)).remote()
consumer = Consumer.options(**on(consumer_node)).remote()
out = {"producer": where(producer), "consumer": where(consumer), "nbytes": nbytes, "transport": transport}
if transport == "gloo":
    create_collective_group([producer, consumer], backend="torch_gloo")
ray.get(producer.make.remote(nbytes), timeout=FETCH_TIMEOUT)

for name in ("warm_up", "control"):
    before = stats(consumer, transport)
    ref, result, t0 = submit_transfer()
    out[name] = outcome(result, t0)
    out[name].update(receiver_before=before, receiver_after=stats(consumer, transport))
    del ref, result
    if "completed" not in out[name]:
        out["control"] = out[name]
        report(out)
        sys.exit(0)

before = stats(consumer, transport)
ref, result, t0 = submit_transfer()
time.sleep(KILL_AT * out["control"]["seconds"])
t_kill = now()
if kill == "producer":
    ray.kill(producer, no_restart=True)
else:
    ask_harness("kill-node-b")
out["kill_after_s"] = t_kill - t0
out["fault"] = outcome(result, t_kill)
try:
    out["consumer_after"] = {"ping": ray.get(consumer.ping.remote(), timeout=FETCH_TIMEOUT),
                             "receiver_before": before, "receiver_after": stats(consumer, transport)}
except Exception as e:
    out["consumer_after"] = {"error": error_info(e)}
report(out)
