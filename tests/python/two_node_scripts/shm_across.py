"""``tensor_transport="shm"`` with the producer on node A and the consumer on
node B: reports how the consumer's task ended (it must raise, saying why)."""

import torch

import ray

from rdt_driver import FETCH_TIMEOUT, connect, error_info, on, report, stats, where


@ray.remote
class ShmActor:
    @ray.method(tensor_transport="shm")
    def random_tensor(self):
        return torch.randn(1000, 1000)

    def sum(self, tensor: torch.Tensor):
        return float(torch.sum(tensor))


connect()
sender, receiver = ShmActor.options(**on("a")).remote(), ShmActor.options(**on("b")).remote()
out = {"sender": where(sender), "receiver": where(receiver), "receiver_before": stats(receiver, "shm")}
try:
    out["outcome"] = {"value": ray.get(receiver.sum.remote(sender.random_tensor.remote()), timeout=FETCH_TIMEOUT)}
except ray.exceptions.GetTimeoutError as e:
    out["outcome"] = {"hang": error_info(e)}
except Exception as e:
    out["outcome"] = {"error": error_info(e)}
out["receiver_after"] = stats(receiver, "shm")
report(out)
