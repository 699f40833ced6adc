"""The plugin's NIXL pool (``register_nixl_memory_pool``) without Ray: an
object's tensors are copied into the pool blocks Ray 2.60's manager places
them in, as views shaped like them (runs of rows in one ``unbind``, a run of
a matrix's consecutive rows copied as one block), every byte where 2.60's
packing puts it. (The pool through Ray: test_weights.py.)"""

import torch

from ray_rdt import nixl_pool


def test_mixed_tensors_land_packed_in_the_pool():
    rows = torch.arange(24, dtype=torch.float32).view(6, 4)
    tensors = [
        rows[0],
        rows[1],
        rows[2],
        torch.arange(6, dtype=torch.int64).view(2, 3).t(),  # not contiguous
        torch.tensor(7, dtype=torch.int16),  # 0-d
        torch.zeros(0, 5),  # no bytes
        rows[3],
        rows[4],
        torch.arange(8.0).view(2, 4)[1],  # packs after rows[4], lives elsewhere
        rows[5],
        rows[4],  # back to back in the pool, not in the matrix
        torch.ones(3, dtype=torch.float16),
    ]
    pool = nixl_pool.Pool(1 << 20, torch.device("cpu"))
    views = pool.copy("ab" * 14, tensors)
    assert len(views) == len(tensors)
    for view, t in zip(views, tensors):
        assert view.dtype == t.dtype and view.shape == t.shape and torch.equal(view, t)
    # 2.60's packing: the bytes in the pool are each tensor's own, in order,
    # each aligned to its element size.
    pool_bytes = pool.manager.get_pool_tensor()
    start = views[0].data_ptr() - pool_bytes.data_ptr()
    at = start
    for view, t in zip(views, tensors):
        size = t.element_size()
        at = (at + size - 1) // size * size
        if t.numel():
            assert view.data_ptr() - pool_bytes.data_ptr() == at
        at += t.numel() * size
    # The rows of one run are views of one block (made by one unbind), and a
    # run of a matrix's consecutive rows is copied as one block.
    assert views[1].data_ptr() - views[0].data_ptr() == 16
    _, dsts, _ = nixl_pool._placed_copies(pool_bytes, tensors[:3], [0, 16, 32])
    assert len(dsts) == 1 and dsts[0].numel() == 12
