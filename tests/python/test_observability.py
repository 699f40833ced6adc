"""The plugin's counters where Ray users look, on a real local cluster: the node's
Prometheus endpoint (through ``ray.util.metrics``), ``ray-rdt stats`` (every
plugin process of the cluster) and ``ray-rdt doctor --address`` (every node).

The cluster exports metrics on a chosen port, and its processes report every
second (``RAY_RDT_REPORT_INTERVAL_S=1``, inherited by the workers)."""

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request

import pytest
import torch

import ray

from conftest import REPO, actor_stats, wait_for
from ray_rdt import _ffi

NBYTES = 1_234_567  # uint8: one byte per element, a size no other test moves


@ray.remote
class ShmActor:
    @ray.method(tensor_transport="shm")
    def make(self, n):
        return torch.ones(n, dtype=torch.uint8)

    def size(self, tensor):
        return tensor.numel()

    def ids(self):
        return os.getpid(), ray.get_runtime_context().get_actor_id()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    saved = os.environ.get("RAY_RDT_REPORT_INTERVAL_S")
    os.environ["RAY_RDT_REPORT_INTERVAL_S"] = "1"
    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, _metrics_export_port=port)
    try:
        yield port, ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_RDT_REPORT_INTERVAL_S", None)
        else:
            os.environ["RAY_RDT_REPORT_INTERVAL_S"] = saved


@pytest.fixture(scope="module")
def transfer(cluster):
    """One shm transfer of NBYTES from a sender actor to a receiver actor:
    {name: (pid, actor id, shm counters, handle)} (the handles keep them alive)."""
    sender, receiver = ShmActor.remote(), ShmActor.remote()
    assert ray.get(receiver.size.remote(sender.make.remote(NBYTES))) == NBYTES
    assert actor_stats(receiver, "shm")["bytes_received"] == NBYTES  # the plugin moved them
    actors = (("sender", sender), ("receiver", receiver))
    return {name: ray.get(a.ids.remote()) + (actor_stats(a, "shm"), a) for name, a in actors}


def ray_rdt(*args):
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "python"))
    return subprocess.run([sys.executable, "-m", "ray_rdt", *args], capture_output=True, text=True, timeout=300, env=env)


def samples(port, name):
    """{labels dict as a frozenset of items: value} of metric ``name`` on the node's endpoint."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for m in re.finditer(rf"^{name}\{{(.*)\}} (\S+)$", body, re.M):
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        out[labels] = float(m.group(2))
    return out


def value(port, name, actor_id, transport):
    """The sample of ``name`` for one actor and transport, summed over its other
    labels (paths); None when there is none."""
    found = [
        v
        for labels, v in samples(port, name).items()
        if dict(labels).get("ActorId") == actor_id and dict(labels).get("transport") == transport
    ]
    return sum(found) if found else None


def test_transfer_counters_reach_the_nodes_prometheus_endpoint(cluster, transfer):
    port, _ = cluster
    _, receiver_id, received, _ = transfer["receiver"]
    _, sender_id, sent, _ = transfer["sender"]
    assert wait_for(lambda: value(port, "ray_rdt_bytes_received_total", receiver_id, "shm") == NBYTES, timeout=60)
    assert value(port, "ray_rdt_transfers_total", receiver_id, "shm") == received["transfers"] == 1
    assert wait_for(lambda: value(port, "ray_rdt_bytes_sent_total", sender_id, "shm") == sent["bytes_sent"], timeout=60)
    assert sent["bytes_sent"] >= NBYTES
    # Ray's own tags come with them.
    labels = dict(next(k for k in samples(port, "ray_rdt_bytes_received_total") if ("ActorId", receiver_id) in k))
    assert {"NodeAddress", "WorkerId", "SessionName"} <= labels.keys()
    assert value(port, "ray_rdt_bytes_received_total", receiver_id, "gloo") is None  # nothing moved over gloo
    # Per path, and the receiver's fetch-latency histogram: one fetch.
    assert value(port, "ray_rdt_path_bytes_received_total", receiver_id, "shm") == NBYTES
    assert value(port, "ray_rdt_path_latency_us_count", receiver_id, "shm") == 1


def test_stats_lists_every_plugin_process(cluster, transfer):
    _, address = cluster
    pids = {transfer[n][0]: transfer[n][2] for n in ("sender", "receiver")}

    by_pid = {}

    def listed():
        proc = ray_rdt("stats", "--address", address, "--json")
        assert proc.returncode == 0, proc.stderr
        by_pid.clear()
        by_pid.update((p["pid"], p) for p in json.loads(proc.stdout)["processes"])
        return all(pid in by_pid and by_pid[pid]["stats"]["shm"] == s for pid, s in pids.items())

    assert wait_for(listed, timeout=60), by_pid
    assert {by_pid[pid]["actor_class"] for pid in pids} == {"ShmActor"}
    table = ray_rdt("stats", "--address", address)
    assert table.returncode == 0
    header, *rows = table.stdout.splitlines()
    assert header.split()[:5] == ["node", "pid", "actor", "transport", "bytes_sent"]
    receiver_pid = transfer["receiver"][0]
    (row,) = [r.split() for r in rows if r.split()[1] == str(receiver_pid)]
    assert row[2:7] == ["ShmActor", "shm", "0", str(NBYTES), "1"]


def test_doctor_checks_every_node(cluster):
    _, address = cluster
    proc = ray_rdt("doctor", "--address", address, "--json", "--require", "shm", "gloo")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(result["reports"]) == len(nodes) and result["problems"] == []
    (rep,) = result["reports"]
    assert rep["pid"] != os.getpid()  # a task on the node, not this driver
    assert rep["plugin"]["library"].endswith("libray_rdt.so") and rep["plugin"]["abi"].startswith(f"{_ffi.ABI_MAJOR}.")
    assert rep["ray"] == {"version": "2.60.0", "patches": "applied", "error": None, "files": rep["ray"]["files"]}
    assert rep["transports"]["shm"]["ok"] and rep["transports"]["gloo"]["ok"]
    assert rep["endpoint"]["unix"].startswith("unix:") and rep["endpoint"]["tcp"]
    assert rep["endpoint"]["authenticated"] is True  # Ray's token authentication is on
    assert ray_rdt("doctor", "--address", address, "--require", "authenticated").returncode == 0
