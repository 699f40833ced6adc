"""A driver that exits while its group-failure watcher waits on a member (run
by test_gloo.py with the module cluster's address as its argument).

The driver owns a gloo group of three actors; the producer is killed, so the
consumer's transfer fails and the consumer reports it to the driver. The
driver's watcher thread then asks every member to leave the broken group and
waits for their answers; one member is stopped (SIGSTOP), so its answer never
comes. The driver exits at that moment: Ray's shutdown (its ``atexit`` hook)
must stop the watcher first. Before it did, the watcher was still inside Ray
when the core worker was destroyed, and the driver died of SIGSEGV at exit
(seen in CI with a node killed mid-transfer, where a dead node's member
answers only seconds later).

Prints ``STOPPED_PID <pid>`` (the test resumes and reaps it) and
``EXITING``; exit status 0 is the test's verdict."""

import os
import signal
import sys
import time

import torch

import ray
from ray.experimental.collective import create_collective_group
from ray.experimental.collective.collective import RemoteCommunicatorManager

from holds import pid_alive, wait_for

ray.init(address=sys.argv[1])


@ray.remote
class Member:
    @ray.method(tensor_transport="gloo")
    def make(self):
        return torch.ones(1000)

    def read(self, tensor):
        return float(tensor.sum())

    def pid(self):
        return os.getpid()


producer, stopped, consumer = Member.remote(), Member.remote(), Member.remote()
group = create_collective_group([producer, stopped, consumer], backend="torch_gloo")
ref = producer.make.remote()
ray.wait([ref])
producer_pid, stopped_pid = ray.get([producer.pid.remote(), stopped.pid.remote()])
print(f"STOPPED_PID {stopped_pid}", flush=True)
os.kill(stopped_pid, signal.SIGSTOP)
ray.kill(producer)
assert wait_for(lambda: not pid_alive(producer_pid), timeout=30), "the producer's process did not exit"
try:
    ray.get(consumer.read.remote(ref))
    raise AssertionError("the transfer from a dead producer succeeded")
except ray.exceptions.RayError:
    pass
# The consumer reported the failure before its task failed; the watcher takes
# the group out of the registry, then waits for the members' answers.
manager = RemoteCommunicatorManager.get()
assert wait_for(lambda: all(c.name != group.name for c in manager.get_collective_groups()), timeout=30), (
    "the driver's watcher did not take the failure"
)
time.sleep(0.5)
print("EXITING", flush=True)
