"""torch.distributed gloo send/recv between two processes: the reference the
plugin's gloo transport is measured against (same library, same run).

Usage: python torch_gloo.py SIZE_BYTES[,SIZE...] ITERS
Prints one JSON object: {size: [seconds per transfer, ...]} from rank 1 (receiver).
"""

import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run(rank, sizes, iters, port, queue):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {}
    for size in sizes:
        t = torch.empty(size // 4, dtype=torch.float32)
        if rank == 0:
            t.fill_(1.0)
        times = []
        for _ in range(iters + 1):
            dist.barrier()
            start = time.perf_counter()
            if rank == 0:
                dist.send(t, dst=1)
            else:
                # A fresh tensor per receive, as a receiving actor would get.
                out = torch.empty(size // 4, dtype=torch.float32)
                dist.recv(out, src=0)
            times.append(time.perf_counter() - start)
        results[size] = times[1:]
    if rank == 1:
        queue.put(results)
    dist.destroy_process_group()


def main():
    sizes = [int(s) for s in sys.argv[1].split(",")]
    iters = int(sys.argv[2])
    port = 29500 + os.getpid() % 1000
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=run, args=(r, sizes, iters, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = queue.get(timeout=600)
    for p in procs:
        p.join(timeout=60)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
