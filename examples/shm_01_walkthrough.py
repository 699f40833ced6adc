# The guide's walkthrough on the plugin's `shm` transport: same-host CPU tensors
# through shared memory. Like NIXL, it is one-sided: no collective group, and
# ray.put / ray.get work with it.
import torch
import ray


@ray.remote
class MyActor:
    @ray.method(tensor_transport="shm")
    def random_tensor(self):
        return torch.randn(1000, 1000)

    def sum(self, tensor: torch.Tensor):
        return torch.sum(tensor)

    def produce(self, tensors):
        refs = []
        for t in tensors:
            refs.append(ray.put(t, _tensor_transport="shm"))
        return refs

    def consume_with_shm(self, refs):
        # ray.get will also use shm to retrieve the result.
        tensors = [ray.get(ref) for ref in refs]
        sum = 0
        for t in tensors:
            assert t.device.type == "cpu"
            sum += t.sum().item()
        return sum


# No collective group is needed.
sender, receiver = MyActor.remote(), MyActor.remote()

# The tensor will be stored by the `sender` actor instead of in Ray's object
# store.
tensor = sender.random_tensor.remote()
result = receiver.sum.remote(tensor)
print(ray.get(result))

# ray.get will also use shm to retrieve the result.
print(ray.get(tensor))

tensor1 = torch.randn(1000, 1000)
tensor2 = torch.randn(1000, 1000)
refs = sender.produce.remote([tensor1, tensor2])
ref1 = receiver.consume_with_shm.remote(refs)
print(ray.get(ref1))
