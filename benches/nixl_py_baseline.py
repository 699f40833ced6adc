#!/usr/bin/env python3
"""Baseline for benches/nixl_transport.rs: NIXL's own Python API moving one CPU
tensor between two processes (UCX backend), the way Ray's stock NIXL transport
does it on the receiving side.

Two modes per size, both timed per iteration and reported as medians:

- ``fresh``: what a fetch does: allocate the destination (``torch.empty``),
  register it, create a READ (``initialize_xfer``), post, busy-poll until DONE,
  release the request, deregister, free the tensor;
- ``prereg``: the transfer alone into a destination registered once (the upper
  bound; no allocation or registration in the loop).

Run: ``.venv/bin/python benches/nixl_py_baseline.py --sizes 4096,4194304 --iters 50,20
[--progress-thread 0|1] [--target-progress-thread 0|1]``: NIXL's progress thread
in the initiator (reading) and target process; Python's and Ray's default is on
in both. The target needs it (or a thread driving it): without it the reader's
connection handshake is never answered and the first transfer hangs. Prints one JSON object on the last line of stdout:
``{"fresh": {size: median_seconds}, "prereg": {...}}``. The script starts its own
target process (``--role target``) and reads the remote metadata from its stdout.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def make_agent(name, progress_thread):
    from nixl._api import nixl_agent, nixl_agent_config

    return nixl_agent(name, nixl_agent_config(enable_prog_thread=progress_thread, backends=["UCX"]))


def target(args):
    import torch

    agent = make_agent(f"py-target-{os.getpid()}", args.target_progress_thread)
    sizes = [int(s) for s in args.sizes.split(",")]
    tensors = []
    for i, size in enumerate(sizes):
        t = torch.empty(size, dtype=torch.uint8)
        t.fill_(i + 1)
        agent.register_memory(t)
        tensors.append(t)
    descs = [(t.data_ptr(), t.numel(), 0) for t in tensors]
    print(json.dumps({"md": agent.get_agent_metadata().hex(), "descs": descs}), flush=True)
    sys.stdin.readline()  # lives until the initiator is done


def initiator(args):
    import torch

    sizes = [int(s) for s in args.sizes.split(",")]
    iters = [int(s) for s in args.iters.split(",")]
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--role", "target", "--sizes", args.sizes, "--target-progress-thread", str(int(args.target_progress_thread))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        line = ""
        while not line.startswith("{"):
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the target process exited before printing its metadata")
        info = json.loads(line)
        agent = make_agent(f"py-initiator-{os.getpid()}", args.progress_thread)
        remote = agent.add_remote_agent(bytes.fromhex(info["md"]))
        results = {"fresh": {}, "prereg": {}}

        def read_into(dst, addr, size):
            local = agent.get_xfer_descs(dst)
            remote_descs = agent.get_xfer_descs([(addr, size, 0)], "DRAM")
            handle = agent.initialize_xfer("READ", local, remote_descs, remote)
            state = agent.transfer(handle)
            while state == "PROC":
                state = agent.check_xfer_state(handle)
            if state != "DONE":
                raise RuntimeError(f"transfer state {state}")
            agent.release_xfer_handle(handle)

        for i, (size, n) in enumerate(zip(sizes, iters)):
            addr = info["descs"][i][0]
            samples = []
            for it in range(n + max(2, n // 10)):
                start = time.perf_counter()
                dst = torch.empty(size, dtype=torch.uint8)
                reg = agent.register_memory(dst)
                read_into(dst, addr, size)
                agent.deregister_memory(reg)
                ok = it > 0 or int(dst[size - 1]) == i + 1
                del dst
                samples.append(time.perf_counter() - start)
                if not ok:
                    raise RuntimeError("wrong bytes received")
            results["fresh"][size] = statistics.median(samples[max(2, n // 10):])

            dst = torch.empty(size, dtype=torch.uint8)
            reg = agent.register_memory(dst)
            samples = []
            for it in range(n + max(2, n // 10)):
                start = time.perf_counter()
                read_into(dst, addr, size)
                samples.append(time.perf_counter() - start)
            agent.deregister_memory(reg)
            del dst
            results["prereg"][size] = statistics.median(samples[max(2, n // 10):])
        print(json.dumps(results), flush=True)
    finally:
        try:
            proc.stdin.write("done\n")
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        proc.wait(timeout=60)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", default="initiator", choices=["initiator", "target"])
    p.add_argument("--sizes", default="4096,4194304,67108864,268435456")
    p.add_argument("--iters", default="200,50,20,10")
    p.add_argument("--progress-thread", type=int, default=1)
    p.add_argument("--target-progress-thread", type=int, default=1)
    args = p.parse_args()
    args.progress_thread = bool(args.progress_thread)
    args.target_progress_thread = bool(args.target_progress_thread)
    if args.role == "target":
        target(args)
    else:
        initiator(args)


if __name__ == "__main__":
    main()
