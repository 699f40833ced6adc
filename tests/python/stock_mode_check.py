"""Run with RAY_RDT_PLUGIN=0 (by test_stock_mode.py): the patched Ray must behave
exactly like stock 2.60.0, and the plugin must move nothing."""

import warnings

import pytest
import torch

import ray
from ray.experimental.collective import create_collective_group

ray.init(num_cpus=8, include_dashboard=False)

from ray.experimental.rdt import util  # noqa: E402
from ray.experimental.rdt.collective_tensor_transport import GLOOTensorTransport  # noqa: E402
from ray.experimental.rdt.rdt_store import RDTStore  # noqa: E402

assert util.rdt_plugin() is None
util._ensure_default_transports_registered()
assert util.transport_manager_info["GLOO"].transport_manager_class is GLOOTensorTransport
assert "SHM" not in util.transport_manager_info


@ray.remote
class MyActor:
    @ray.method(tensor_transport="gloo")
    def random_tensor(self):
        return torch.randn(1000, 1000)

    def sum(self, tensor):
        return torch.sum(tensor)

    def plugin_state(self):
        import ray_rdt
        import ray_rdt.context

        store = ray._private.worker.global_worker.rdt_manager.rdt_store
        return ray_rdt.stats(), ray_rdt.context.peek_context() is None, type(store) is RDTStore


sender, receiver = MyActor.remote(), MyActor.remote()
create_collective_group([sender, receiver], backend="torch_gloo")

tensor = sender.random_tensor.remote()
expected = torch.sum(ray.get(tensor, _use_object_store=True))
assert torch.allclose(ray.get(receiver.sum.remote(tensor)), expected)

with pytest.raises(ValueError, match="ray.get is not allowed on RDT objects using the two-sided transport GLOO"):
    ray.get(tensor)
with pytest.raises(TypeError, match="unexpected keyword argument '_tensor_transport'"):
    ray.get(tensor, _tensor_transport="object_store")
with pytest.raises(ValueError, match="Invalid tensor transport: SHM"):

    @ray.remote
    class ShmActor:
        @ray.method(tensor_transport="shm")
        def f(self):
            return torch.ones(1)


with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    t = sender.random_tensor.remote()
    ray.get([sender.sum.remote(t), receiver.sum.remote(t)])
messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
assert any(m.startswith("RDT ObjectRef(") and "Note that RDT objects are mutable" in m for m in messages), messages

for actor in (sender, receiver):
    stats, no_context, stock_store = ray.get(actor.plugin_state.remote())
    assert no_context and stock_store
    for transport, counters in stats.items():
        assert all(v == 0 for v in counters.values()), (transport, counters)

import ray_rdt  # noqa: E402

assert all(v == 0 for c in ray_rdt.stats().values() for v in c.values())
print("STOCK-OK")
