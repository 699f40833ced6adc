"""A driver that leaves one Ray cluster and joins another gets a new plugin
context, whose records name the new node: transfers work on the second
cluster as on the first."""

import torch

import ray

from conftest import ReceivingActor, actor_stats, cluster_with_env, delta


@ray.remote
class ShmActor(ReceivingActor):
    @ray.method(tensor_transport="shm")
    def make(self, n):
        return torch.ones(n)


def one_transfer():
    sender, receiver = ShmActor.remote(), ShmActor.remote()
    r0 = actor_stats(receiver, "shm")
    assert float(ray.get(receiver.sum.remote(sender.make.remote(1 << 20)))) == 1 << 20
    assert delta(actor_stats(receiver, "shm"), r0) == 4 << 20


def test_context_follows_the_ray_connection():
    from ray_rdt import process

    contexts = []
    for _ in range(2):
        with cluster_with_env({}, num_cpus=8):
            ctx = process.get_context()
            assert process.get_context() is ctx  # the same connection: the same context
            assert ctx.node_id == bytes.fromhex(ray.get_runtime_context().get_node_id())
            one_transfer()
            contexts.append(ctx)
    assert contexts[0] is not contexts[1]
    assert contexts[0].node_id != contexts[1].node_id
