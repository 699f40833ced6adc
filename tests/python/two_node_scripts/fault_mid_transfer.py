"""A large RDT transfer across the nodes, cut by a fault while it is in flight.

    fault_mid_transfer.py TRANSPORT NBYTES producer|node-b

``producer``: producer on node A, consumer on node B; the producer actor is
killed (``ray.kill``). ``node-b``: producer on node B, consumer on node A; the
harness kills the whole of node B (every process in its namespace, at once).

First a warm-up and a control transfer of the same tensor (they must arrive,
counted by the consumer's ``ray_rdt.stats()``). Then the same transfer again,
held in flight at one of the plugin's test-only hold points (src/hold.rs) while
the fault happens: gloo's producer at ``serve`` (the request accepted, no byte
sent), nixl's consumer at ``fetch`` (the read about to start; the producer takes
no part in a one-sided read). The producer and the consumer have the hold
directory in their environment; this driver releases every point it did not
arm (the warm-up and control transfers). Reports how the consumer's task ended
(error text, seconds after the fault), whether it hung past FETCH_TIMEOUT, and
whether the consumer still answers afterwards."""

import os
import sys
import tempfile

import torch

import ray
from ray.experimental.collective import create_collective_group

from holds import Holds
from rdt_driver import FETCH_TIMEOUT, ask_harness, connect, error_info, now, on, outcome, report, stats, where

HOLD_DIR = tempfile.mkdtemp(prefix="rdt-two-node-holds-")
HOLDS = {"env_vars": {"RAY_RDT_TEST_HOLD_DIR": HOLD_DIR, "RAY_RDT_TEST_HOLD_POINTS": "serve,fetch"}}

transport, nbytes, kill = sys.argv[1], int(sys.argv[2]), sys.argv[3]


@ray.remote(enable_tensor_transport=True)  # .options(tensor_transport=...) per call
class Producer:
    def make(self, nbytes):
        self.tensor = torch.ones(nbytes // 4, dtype=torch.float32)
        return self.tensor.numel() * self.tensor.element_size()

    def get(self):
        return self.tensor

    def pid(self):
        return os.getpid()


@ray.remote
class Consumer:
    def read(self, tensor):
        return float(tensor[0]), tensor.numel() * tensor.element_size()

    def ping(self):
        return "pong"

    def pid(self):
        return os.getpid()


def submit_transfer():
    """The producer's tensor as an RDT object (its task done), then the
    consumer's task on it; returns both refs and the consumer's submit time."""
    ref = producer.get.options(tensor_transport=transport).remote()
    ray.wait([ref], timeout=FETCH_TIMEOUT)
    return ref, consumer.read.remote(ref), now()


producer_node, consumer_node = ("a", "b") if kill == "producer" else ("b", "a")
connect()
producer = Producer.options(runtime_env=HOLDS, **on(producer_node)).remote()
consumer = Consumer.options(runtime_env=HOLDS, **on(consumer_node)).remote()
holds = Holds(HOLD_DIR)
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
point, held = ("serve", producer) if transport == "gloo" else ("fetch", consumer)
pid = ray.get(held.pid.remote(), timeout=FETCH_TIMEOUT)
holds.arm(point, pid)
try:
    ref, result, t0 = submit_transfer()
    holds.wait_reached(point, pid)
    t_kill = now()
    if kill == "producer":
        ray.kill(producer, no_restart=True)
    else:
        ask_harness("kill-node-b")
finally:
    holds.release(point, pid)
out["kill_after_s"] = t_kill - t0
out["held_at"] = f"{'producer' if held is producer else 'consumer'} at {point}"
out["fault"] = outcome(result, t_kill)
try:
    out["consumer_after"] = {"ping": ray.get(consumer.ping.remote(), timeout=FETCH_TIMEOUT),
                             "receiver_before": before, "receiver_after": stats(consumer, transport)}
except Exception as e:
    out["consumer_after"] = {"error": error_info(e)}
holds.stop()
report(out)
