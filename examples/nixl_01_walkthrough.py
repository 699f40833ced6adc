# The guide's NIXL walkthrough ("Usage with NIXL (CPUs or NVIDIA GPUs)") in CPU
# form: the guide's code verbatim except for its GPU specifics, each marked
# "CPU form" below:
#   - no `num_gpus=1` in @ray.remote (the guide: @ray.remote(num_gpus=1)),
#   - no `.cuda()` on the tensors,
#   - `assert t.device.type == "cpu"` (the guide: "cuda").
# The GPU original is examples/gpu/nixl_01_walkthrough_cuda.py (ci/gpu-nightly).
# NIXL moves the bytes through libray_rdt.so (UCX underneath; on one host it
# reads the producer's memory directly).
import torch
import ray


@ray.remote  # CPU form: the guide has @ray.remote(num_gpus=1)
class MyActor:
    @ray.method(tensor_transport="nixl")
    def random_tensor(self):
        return torch.randn(1000, 1000)  # CPU form: no .cuda()

    def sum(self, tensor: torch.Tensor):
        return torch.sum(tensor)

    def produce(self, tensors):
        refs = []
        for t in tensors:
            refs.append(ray.put(t, _tensor_transport="nixl"))
        return refs

    def consume_with_nixl(self, refs):
        # ray.get will also use NIXL to retrieve the
        # result.
        tensors = [ray.get(ref) for ref in refs]
        sum = 0
        for t in tensors:
            assert t.device.type == "cpu"  # CPU form: the guide asserts "cuda"
            sum += t.sum().item()
        return sum


# No collective group is needed. The two actors just need to have NIXL
# installed.
sender, receiver = MyActor.remote(), MyActor.remote()

# The tensor will be stored by the `sender` actor instead of in Ray's object
# store.
tensor = sender.random_tensor.remote()
result = receiver.sum.remote(tensor)
ray.get(result)

# ray.get will also use NIXL to retrieve the
# result.
print(ray.get(tensor))
# torch.Tensor(...)

tensor1 = torch.randn(1000, 1000)  # CPU form: no .cuda()
tensor2 = torch.randn(1000, 1000)  # CPU form: no .cuda()
refs = sender.produce.remote([tensor1, tensor2])
ref1 = receiver.consume_with_nixl.remote(refs)
print(ray.get(ref1))
