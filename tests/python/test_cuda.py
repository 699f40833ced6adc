"""CUDA tensors through the plugin, the parts that run without a GPU: what the
plugin finds of CUDA and NCCL, the errors where they are missing (the process
lives on), and the refusals (a CPU tensor with ``nccl``/``cuda_ipc``).

With a GPU: test_cuda_gpu.py (``ci/gpu-nightly``)."""

import os
import subprocess
import sys

import pytest
import torch

import ray
import ray_rdt
from ray_rdt import _ffi
from ray_rdt.context import Context

from conftest import REPO, cluster_with_env

NO_GPU = not torch.cuda.is_available()
PLUGIN_TRANSPORTS = "gloo,shm,nixl,nccl,cuda_ipc"


def test_cuda_libraries_report_names_all_three():
    report = ray_rdt.cuda_libraries()
    assert set(report) == {"driver", "runtime", "nccl"}
    for name, entry in report.items():
        assert "path" in entry or "error" in entry, (name, entry)
    if NO_GPU and "error" in report["driver"]:
        assert "libcuda.so.1" in report["driver"]["error"]
        assert "RAY_RDT_CUDA_DRIVER_LIB" in report["driver"]["error"]


def test_nccl_is_found_in_this_pythons_wheels():
    # torch's CUDA wheels bring nvidia-nccl-cu13; the binding gives the plugin
    # sys.prefix, so NCCL is found even outside a virtualenv's VIRTUAL_ENV.
    report = ray_rdt.cuda_libraries()["nccl"]
    if "error" in report:
        pytest.skip(f"this Python has no NCCL wheel: {report['error']}")
    assert report["path"].endswith("libnccl.so.2"), report
    assert report["version"] >= 21400, report


@pytest.mark.skipif(not NO_GPU, reason="checks the errors of a machine without a GPU")
def test_nccl_group_without_a_gpu_is_unavailable_and_the_process_lives():
    ctx = Context()
    try:
        address = ctx.rendezvous_serve("127.0.0.1")
        with pytest.raises(_ffi.RdtError) as info:
            ctx.group_create("no-gpu", _ffi.TRANSPORT_NCCL, 0, 1, address, 5.0)
        assert info.value.status == _ffi.ERR_UNAVAILABLE, info.value
        assert "libcuda.so.1" in str(info.value)
        # The plugin still works for CPU tensors.
        key = os.urandom(28)
        record = ctx.put(key, _ffi.TRANSPORT_SHM, [torch.arange(4)])
        assert _ffi.record_device(record) == (_ffi.DEVICE_CPU, 0)
    finally:
        ctx.close()


def test_cpu_tensors_are_refused_by_nccl_and_cuda_ipc():
    ctx = Context()
    try:
        for code, name in ((_ffi.TRANSPORT_NCCL, "nccl"), (_ffi.TRANSPORT_CUDA_IPC, "cuda_ipc")):
            t = torch.arange(8)
            with pytest.raises(_ffi.RdtError) as info:
                ctx.put(os.urandom(28), code, [t], "g")
            assert info.value.status == _ffi.ERR_UNSUPPORTED
            assert f"is a cpu tensor, which the {name} transport does not move" in str(info.value)
            assert torch.equal(t, torch.arange(8)), "the tensor stays the caller's"
        assert ctx.counts() == (0, 0)
    finally:
        ctx.close()


def test_missing_nccl_and_driver_are_clear_errors():
    # A fresh process with every CUDA library pointed at nothing.
    env = dict(
        os.environ,
        RAY_RDT_CUDA_DRIVER_LIB="/nonexistent/libcuda.so.1",
        RAY_RDT_CUDA_LIB="/nonexistent/libcudart.so.13",
        RAY_RDT_NCCL_LIB="/nonexistent/libnccl.so.2",
        RAY_RDT_CUDA_NO_SEARCH="1",
        PYTHONPATH=os.path.join(REPO, "python"),
    )
    code = (
        "import json, ray_rdt; r = ray_rdt.cuda_libraries(); print(json.dumps(r)); "
        "assert all('error' in v for v in r.values()); "
        "assert 'RAY_RDT_NCCL_LIB' in r['nccl']['error']; print('alive')"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("alive")


@pytest.fixture(scope="module")
def cuda_plugin_cluster():
    """A cluster whose processes route NCCL and CUDA_IPC through the plugin."""
    with cluster_with_env({"RAY_RDT_PLUGIN_TRANSPORTS": PLUGIN_TRANSPORTS}, num_cpus=4) as r:
        yield r


@ray.remote
class CpuActor:
    @ray.method(tensor_transport="cuda_ipc")
    def cpu_over_cuda_ipc(self):
        return torch.ones(4)

    @ray.method(tensor_transport="nccl")
    def cpu_over_nccl(self):
        return torch.ones(4)

    def transports(self):
        from ray.experimental.rdt import util

        util._ensure_default_transports_registered()
        return {n: util.transport_manager_info[n].transport_manager_class.__name__ for n in ("NCCL", "CUDA_IPC")}


def test_opt_in_routes_nccl_and_cuda_ipc_through_the_plugin(cuda_plugin_cluster):
    actor = CpuActor.remote()
    assert ray.get(actor.transports.remote()) == {
        "NCCL": "PluginNcclTransport",
        "CUDA_IPC": "PluginCudaIpcTransport",
    }


def test_cpu_tensor_returned_over_cuda_ipc_is_refused(cuda_plugin_cluster):
    actor = CpuActor.remote()
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(actor.cpu_over_cuda_ipc.remote())
    assert "is a cpu tensor, which the cuda_ipc transport does not move" in str(info.value)


def test_nccl_without_a_group_is_refused(cuda_plugin_cluster):
    # As stock: Ray refuses the call before submitting it.
    actor = CpuActor.remote()
    with pytest.raises(ValueError, match="does not have tensor transport NCCL available"):
        actor.cpu_over_nccl.remote()
