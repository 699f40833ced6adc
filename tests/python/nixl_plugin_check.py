"""Run with RAY_RDT_PLUGIN_TRANSPORTS=gloo,shm,nixl (by test_nixl_plugin.py): the
guide's NIXL walkthrough on CPU tensors, with NIXL routed through the plugin."""

import torch

import ray
import ray_rdt

ray.init(num_cpus=8, include_dashboard=False)

from ray.experimental.rdt import util  # noqa: E402
from ray_rdt.transports import PluginNixlTransport  # noqa: E402

util._ensure_default_transports_registered()
assert util.transport_manager_info["NIXL"].transport_manager_class is PluginNixlTransport


@ray.remote
class MyActor:
    @ray.method(tensor_transport="nixl")
    def random_tensor(self):
        self.kept = torch.randn(1000, 1000)
        ray.experimental.register_nixl_memory(self.kept)  # 2.60 API: accepted
        return self.kept

    def sum(self, tensor: torch.Tensor):
        return torch.sum(tensor)

    def produce(self, tensors):
        refs = []
        for t in tensors:
            refs.append(ray.put(t, _tensor_transport="nixl"))
        return refs

    def consume_with_nixl(self, refs):
        tensors = [ray.get(ref) for ref in refs]
        total = 0
        for t in tensors:
            assert t.device.type == "cpu"
            total += t.sum().item()
        return total

    def stats(self):
        return ray_rdt.stats()["nixl"]


sender, receiver = MyActor.remote(), MyActor.remote()
tensor = sender.random_tensor.remote()
expected = ray.get(tensor)  # one-sided: the driver reads over NIXL too
assert torch.allclose(ray.get(receiver.sum.remote(tensor)), expected.sum())
assert ray.get(tensor, _tensor_transport="nixl").shape == (1000, 1000)

tensor1, tensor2 = torch.randn(1000, 1000), torch.randn(1000, 1000)
refs = sender.produce.remote([tensor1, tensor2])
total = ray.get(receiver.consume_with_nixl.remote(refs))
assert abs(total - (tensor1.sum() + tensor2.sum()).item()) < 1e-2, total

received = ray.get(receiver.stats.remote())["bytes_received"]
assert received == 3 * 4_000_000, received
assert ray_rdt.stats()["nixl"]["bytes_received"] >= 2 * 4_000_000
print("NIXL-PLUGIN-OK")
