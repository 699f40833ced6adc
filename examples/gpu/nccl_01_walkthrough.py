# The guide's NCCL example ("Usage with NCCL (NVIDIA GPUs only)"), verbatim: two
# actors on two GPUs, a collective group with the NCCL backend. Needs a machine
# with two GPUs (NCCL cannot form a two-rank communicator on one device) and the
# plugin's NCCL transport turned on (RAY_RDT_PLUGIN_TRANSPORTS=...,nccl); see
# ci/gpu-nightly.
import torch
import ray
from ray.experimental.collective import create_collective_group


@ray.remote(num_gpus=1)
class MyActor:
    @ray.method(tensor_transport="nccl")
    def random_tensor(self):
        return torch.randn(1000, 1000).cuda()

    def sum(self, tensor: torch.Tensor):
        return torch.sum(tensor)


sender, receiver = MyActor.remote(), MyActor.remote()
group = create_collective_group([sender, receiver], backend="nccl")

# The tensor will be stored by the `sender` actor instead of in Ray's object
# store.
tensor = sender.random_tensor.remote()
result = receiver.sum.remote(tensor)
ray.get(result)
