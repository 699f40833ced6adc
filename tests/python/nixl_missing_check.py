"""Run by test_nixl.py: a cluster whose workers have no NIXL (RAY_RDT_NIXL_LIB
points nowhere, RAY_RDT_NIXL_NO_SEARCH=1, through the job's runtime_env); the
driver has it. Every NIXL use must fail with an error that names what to
install, and no process may abort."""

import os

import pytest
import torch

import ray
import ray_rdt

INSTALL = "pip install nixl"
MISSING = {"RAY_RDT_NIXL_LIB": "/nonexistent/libnixl_capi.so", "RAY_RDT_NIXL_NO_SEARCH": "1"}

assert "RAY_RDT_NIXL_LIB" not in os.environ
ray.init(num_cpus=8, include_dashboard=False, runtime_env={"env_vars": MISSING})


@ray.remote
class MyActor:
    @ray.method(tensor_transport="nixl")
    def random_tensor(self):
        return torch.randn(1000, 1000)

    @ray.method(tensor_transport="nixl")
    def empty(self):
        return torch.empty(0, 3)

    @ray.method(tensor_transport="shm")
    def via_shm(self):
        return torch.ones(10)

    def sum(self, tensor):
        return torch.sum(tensor)

    def produce(self, tensors):
        return [ray.put(t, _tensor_transport="nixl") for t in tensors]

    def pid_and_env(self):
        return os.getpid(), os.environ.get("RAY_RDT_NIXL_LIB")

    def errors(self):
        return ray_rdt.stats()["nixl"]["errors"]


def expect_install_hint(fn, *types):
    with pytest.raises(types) as info:
        fn()
    text = str(info.value)
    assert INSTALL in text and "libnixl_capi.so" in text, text
    return text


sender, receiver = MyActor.remote(), MyActor.remote()
pids = {a: ray.get(a.pid_and_env.remote()) for a in (sender, receiver)}
assert all(env == MISSING["RAY_RDT_NIXL_LIB"] for _, env in pids.values()), pids

# Producer side: a method returning tensors over nixl, and ray.put in an actor.
tensor = sender.random_tensor.remote()
expect_install_hint(lambda: ray.get(receiver.sum.remote(tensor), timeout=60), ray.exceptions.RayTaskError)
expect_install_hint(lambda: ray.get(tensor, timeout=60), ray.exceptions.RayTaskError)
expect_install_hint(lambda: ray.get(sender.produce.remote([torch.ones(3)]), timeout=60), ray.exceptions.RayTaskError)

# Consumer side: the driver (which has NIXL) puts; a worker without NIXL reads.
t = torch.arange(100, dtype=torch.float32)
ref = ray.put(t, _tensor_transport="nixl")
text = expect_install_hint(lambda: ray.get(receiver.sum.remote(ref), timeout=60), ray.exceptions.RayTaskError)
assert "RDT transfer of a ray.put object (plugin key " in text, text
assert ray.get(receiver.errors.remote()) >= 1

# Nobody aborted: same processes, and what needs no NIXL still works.
assert {a: ray.get(a.pid_and_env.remote()) for a in (sender, receiver)} == pids
assert ray.get(receiver.sum.remote(sender.empty.remote())).item() == 0  # empty objects never touch NIXL
assert ray.get(receiver.sum.remote(sender.via_shm.remote())).item() == 10
assert torch.equal(ray.get(ref), t)  # the driver's own put
print("NIXL-MISSING-OK")
