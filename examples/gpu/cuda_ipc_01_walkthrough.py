# The guide's walkthrough on the `cuda_ipc` transport: CUDA tensors between
# actors of one host, copied through CUDA IPC handles. Like NIXL it is
# one-sided: no collective group, and ray.put / ray.get work with it. The two
# actors may share one GPU. Needs the plugin's CUDA_IPC transport turned on
# (RAY_RDT_PLUGIN_TRANSPORTS=...,cuda_ipc); see ci/gpu-nightly.
import torch
import ray


@ray.remote(num_gpus=1)
class MyActor:
    @ray.method(tensor_transport="cuda_ipc")
    def random_tensor(self):
        return torch.randn(1000, 1000).cuda()

    def sum(self, tensor: torch.Tensor):
        return torch.sum(tensor)

    def produce(self, tensors):
        refs = []
        for t in tensors:
            refs.append(ray.put(t, _tensor_transport="cuda_ipc"))
        return refs

    def consume_with_cuda_ipc(self, refs):
        # ray.get will also use CUDA IPC to retrieve the result.
        tensors = [ray.get(ref) for ref in refs]
        sum = 0
        for t in tensors:
            assert t.device.type == "cuda"
            sum += t.sum().item()
        return sum


# No collective group is needed.
sender, receiver = MyActor.remote(), MyActor.remote()

# The tensor will be stored by the `sender` actor instead of in Ray's object
# store.
tensor = sender.random_tensor.remote()
result = receiver.sum.remote(tensor)
ray.get(result)

# ray.get will also use CUDA IPC to retrieve the result.
print(ray.get(tensor))
# torch.Tensor(...)

tensor1 = torch.randn(1000, 1000).cuda()
tensor2 = torch.randn(1000, 1000).cuda()
refs = sender.produce.remote([tensor1, tensor2])
ref1 = receiver.consume_with_cuda_ipc.remote(refs)
print(ray.get(ref1))
