"""``ray_rdt.share_memory_`` without Ray: tensors move into one region of
the plugin's shared memory in place, keeping identity, values, views and
autograd; the region goes with its last tensor. (Generators reading it in
place through Ray: test_weights.py.)"""

import gc

import pytest
import torch

import ray_rdt


def regions():
    """Address ranges of this process's shared regions."""
    with open("/proc/self/maps") as maps:
        return [
            tuple(int(x, 16) for x in line.split()[0].split("-"))
            for line in maps
            if "memfd:ray-rdt-shared" in line
        ]


def in_region(t):
    return any(start <= t.data_ptr() < end for start, end in regions())


def test_views_stay_views_of_one_storage_in_one_region():
    before = len(regions())
    w = torch.arange(40, dtype=torch.float32).view(10, 4)
    rows = [w[i] for i in range(10)]
    column = w[:, 1]
    shared = ray_rdt.share_memory_([w, column] + rows)
    assert shared[0] is w and len(regions()) == before + 1
    assert all(map(in_region, [w, column] + rows))
    assert torch.equal(w, torch.arange(40, dtype=torch.float32).view(10, 4))
    assert column.stride() == (4,) and torch.equal(column, w[:, 1])
    w[3, 1] = -1.0  # one storage: every view sees it
    assert rows[3][1] == -1.0 and column[3] == -1.0


def test_a_tensor_given_twice_and_separate_tensors_keep_their_values():
    a = torch.arange(5, dtype=torch.int64)
    b = torch.arange(7, dtype=torch.float64)[2:]  # a view at an offset
    c = torch.zeros(0)
    ray_rdt.share_memory_([a, b, a, c, b])
    assert torch.equal(a, torch.arange(5)) and torch.equal(b, torch.arange(7, dtype=torch.float64)[2:])
    assert in_region(a) and in_region(b)


def test_a_module_keeps_training_with_tied_weights():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model[1].weight = model[0].weight  # tied
    model.register_buffer("steps", torch.zeros(1))
    expected = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    ray_rdt.share_memory_(model)
    assert all(p is q for p, q in zip(model.parameters(), params))
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in params)
    assert all(torch.equal(p, e) for p, e in zip(model.parameters(), expected))
    assert all(map(in_region, list(model.parameters()) + [model.steps]))
    assert model[1].weight.data_ptr() == model[0].weight.data_ptr()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    assert not torch.equal(model[0].weight, expected[0]) and in_region(model[0].weight)


def test_the_region_goes_with_its_last_tensor():
    gc.collect()
    before = len(regions())
    t = torch.ones(1 << 16)
    view = t[10:20]
    ray_rdt.share_memory_([t, view])
    assert len(regions()) == before + 1
    del t
    gc.collect()
    assert len(regions()) == before + 1 and torch.equal(view, torch.ones(10))
    del view
    gc.collect()
    assert len(regions()) == before


def test_only_cpu_tensors_are_moved():
    with pytest.raises(ValueError, match="item 1 is list"):
        ray_rdt.share_memory_([torch.ones(2), [1, 2]])
    assert ray_rdt.share_memory_([]) == []


def test_tensors_an_rdt_object_holds_are_refused_until_it_is_freed():
    import os

    from ray_rdt import _ffi, process

    ctx = process.get_context()
    t = torch.arange(100.0)
    key = os.urandom(28)
    ctx.put(key, _ffi.TRANSPORT_SHM, [t])
    with pytest.raises(ValueError, match="tensor 1 is held by an RDT object"):
        ray_rdt.share_memory_([torch.ones(3), t])
    assert not in_region(t)
    ctx.free(key)
    ray_rdt.share_memory_([t])
    assert in_region(t) and torch.equal(t, torch.arange(100.0))
