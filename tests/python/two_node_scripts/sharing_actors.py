"""The actors of the node-sharing drivers (node_share.py, fanout.py): a
producer that returns an int32 tensor whose every element is known, and a
consumer that checks every element it received."""

import torch

import ray


@ray.remote(enable_tensor_transport=True)  # .options(tensor_transport=...) per call
class Producer:
    def make(self, seed, nbytes):
        self.tensor = torch.arange(nbytes // 4, dtype=torch.int32) + seed
        return nbytes

    def get(self):
        return self.tensor


@ray.remote
class Consumer:
    def read(self, tensor, seed):
        """Whether every element is the producer's; then changes its own
        tensor (which no other consumer may see)."""
        ok = bool(torch.equal(tensor, torch.arange(tensor.numel(), dtype=torch.int32) + seed))
        tensor.add_(1)
        return {"ok": ok, "nbytes": tensor.numel() * tensor.element_size()}
