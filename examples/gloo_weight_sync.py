# Weight sync over gloo, straight into the generators' weights: every step a
# trainer pushes its whole model to its generators over a collective group.
#
# Ray 2.60 refuses ray.get of a gloo object, so a generator receives the model
# as a task argument. With the plugin, a generator that first names its
# weights as the targets of the ref (set_target_for_ref, on the ref it got
# inside a list) receives that argument straight into them: the argument is
# its own parameters, and there is nothing left to copy. Each generator runs
# expect() before load(): a sequential actor runs one caller's tasks in order
# (a threaded or async actor would need expect() awaited first).
import torch
import ray
from ray.experimental import set_target_for_ref
from ray.experimental.collective import create_collective_group


def make_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)])


def checksum(model):
    return sum(p.double().sum().item() for p in model.parameters())


@ray.remote
class Trainer:
    def __init__(self):
        self.model = make_model(0)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01)

    def train_step(self):
        loss = self.model(torch.randn(32, 256)).pow(2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return checksum(self.model)

    @ray.method(tensor_transport="gloo")
    def weights(self):
        return list(self.model.parameters())


@ray.remote
class Generator:
    def __init__(self, seed):
        self.model = make_model(seed)

    def expect(self, refs):
        # The ref inside a list is not resolved: name this model's weights as
        # the targets of the object it stands for.
        set_target_for_ref(refs[0], list(self.model.parameters()))

    def load(self, weights):
        # The weights themselves received the bytes: no new tensors, no copy.
        assert all(w is p for w, p in zip(weights, self.model.parameters()))
        return checksum(self.model)


trainer = Trainer.remote()
generator_a, generator_b = Generator.remote(1), Generator.remote(2)
generators = [generator_a, generator_b]
create_collective_group([trainer] + generators, backend="torch_gloo")
for step in range(3):
    expected = ray.get(trainer.train_step.remote())
    ref = trainer.weights.remote()
    [g.expect.remote([ref]) for g in generators]
    synced = ray.get([g.load.remote(ref) for g in generators])
    print(f"step {step}: generators in sync with the trainer: {synced == [expected] * len(generators)}")
