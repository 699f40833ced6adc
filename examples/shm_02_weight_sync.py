# Weight sync, the job RDT exists for in RL post-training: every step a
# trainer pushes its whole model to its generators, which receive it straight
# into the weights they already hold (set_target_for_ref, then ray.get).
#
# On one host the plugin's `shm` transport moves it. The trainer keeps its
# model in the plugin's shared memory (ray_rdt.share_memory_, like torch's
# share_memory_()): each generator copies straight from the trainer's
# weights into its own, and the trainer copies nothing.
import torch
import ray
from ray.experimental import set_target_for_ref

import ray_rdt


def make_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)])


def checksum(model):
    return sum(p.double().sum().item() for p in model.parameters())


@ray.remote
class Trainer:
    def __init__(self):
        self.model = make_model(0)
        ray_rdt.share_memory_(self.model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)

    def train_step(self):
        loss = self.model(torch.randn(32, 256)).pow(2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        # Inside a list, so that each generator gets the ref itself.
        return [ray.put(list(self.model.parameters()), _tensor_transport="shm")], checksum(self.model)


@ray.remote
class Generator:
    def __init__(self, seed):
        self.model = make_model(seed)

    def sync(self, refs):
        weights = list(self.model.parameters())
        set_target_for_ref(refs[0], weights)
        received = ray.get(refs[0])
        # The weights themselves received the bytes: no new tensors.
        assert all(r is w for r, w in zip(received, weights))
        return checksum(self.model)


trainer = Trainer.remote()
generator_a, generator_b = Generator.remote(1), Generator.remote(2)
generators = [generator_a, generator_b]
for step in range(3):
    refs, expected = ray.get(trainer.train_step.remote())
    synced = ray.get([g.sync.remote(refs) for g in generators])
    print(f"step {step}: generators in sync with the trainer: {synced == [expected] * len(generators)}")
