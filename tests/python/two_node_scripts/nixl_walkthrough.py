"""The guide's NIXL walkthrough in CPU form across two nodes: sender on node A,
receiver on node B, no collective group. Reports what each part observed,
with the receiver's nixl counters before and after."""

import torch

import ray

from rdt_driver import FETCH_TIMEOUT, connect, measured, on, report, run_case, where

N = 1000


@ray.remote
class MyActor:
    @ray.method(tensor_transport="nixl")
    def random_tensor(self):
        return torch.randn(N, N)  # CPU form: no .cuda()

    def sum(self, tensor: torch.Tensor):
        return float(torch.sum(tensor))

    def produce(self, tensors):
        return [ray.put(t, _tensor_transport="nixl") for t in tensors]

    def consume_with_nixl(self, refs):
        tensors = [ray.get(ref, timeout=FETCH_TIMEOUT) for ref in refs]
        assert all(t.device.type == "cpu" for t in tensors)  # CPU form: the guide asserts "cuda"
        return sum(t.sum().item() for t in tensors)


def get(ref):
    return ray.get(ref, timeout=FETCH_TIMEOUT)


def method_return():
    tensor = sender.random_tensor.remote()
    result = receiver.sum.remote(tensor)
    expected = sender.sum.remote(tensor)  # the producer's own sum of the tensor it holds
    return {"result": get(result), "expected": get(expected), "nbytes": N * N * 4}


def put_get():
    tensor1, tensor2 = torch.randn(N, N), torch.randn(N, N)
    refs = sender.produce.remote([tensor1, tensor2])
    result = receiver.consume_with_nixl.remote(refs)
    expected = tensor1.sum().item() + tensor2.sum().item()
    return {"result": get(result), "expected": expected, "nbytes": 2 * N * N * 4}


connect()
sender, receiver = MyActor.options(**on("a")).remote(), MyActor.options(**on("b")).remote()
out = {"sender": where(sender), "receiver": where(receiver)}
for name, case in [("method_return", method_return), ("put_get", put_get)]:
    out[name] = run_case(measured, receiver, "nixl", case)
report(out)
