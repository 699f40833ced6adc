"""``ci/bench gpu``: CUDA tensors between two Ray actors, plugin vs stock Ray 2.60.

    python benches/gpu_bench.py [--rounds N] [--sizes 4K,1M,...] [--out FILE]

For each size (default 4 KiB to 1 GiB), one object of one float32 CUDA tensor:
the producer actor returns its (already made) tensor with
``tensor_transport=X``, the consumer actor receives it, synchronizes its
device and returns; the driver times the whole step (``ray.get``), median of
``--rounds``. Measured in one run, on one cluster configuration after the other:

- limit: a device-to-device ``cudaMemcpy`` (``dst.copy_(src)``) of the same
  size in one process, timed with CUDA events;
- stock Ray (``RAY_RDT_PLUGIN=0``): cuda_ipc, nixl, and nccl where the machine
  has two GPUs;
- the plugin: cuda_ipc, nixl, and nccl where the machine has two GPUs.

Ratios are stock time / plugin time per transport (above 1: the plugin is
faster). cuda_ipc and nixl run between two actors sharing GPU 0; nccl needs
two GPUs (NCCL cannot put two ranks on one device) and is not measured on a
machine with one. Without a GPU it says so and exits 0.
"""

import argparse
import datetime
import os
import statistics
import sys
import time

SIZES = {"4K": 4 << 10, "64K": 64 << 10, "1M": 1 << 20, "16M": 16 << 20, "256M": 256 << 20, "1G": 1 << 30}
PLUGIN_TRANSPORTS = "gloo,shm,nixl,nccl,cuda_ipc"


def no_gpu_reason():
    try:
        import torch
    except ImportError as e:
        return f"torch is not importable ({e})"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    return None


def human(n):
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n // size} {unit}"
    return f"{n} B"


def memcpy_limit(nbytes, rounds):
    """Median seconds of a device-to-device copy of ``nbytes`` on device 0."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    dst.copy_(src)
    times = []
    for _ in range(rounds):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    del src, dst
    torch.cuda.empty_cache()
    return statistics.median(times)


def actor_classes():
    import ray
    import torch

    @ray.remote
    class Producer:
        def make(self, nbytes):
            self.t = torch.randn(nbytes // 4, device="cuda")
            torch.cuda.synchronize()

        @ray.method(tensor_transport="cuda_ipc")
        def send_cuda_ipc(self):
            return self.t

        @ray.method(tensor_transport="nixl")
        def send_nixl(self):
            return self.t

        @ray.method(tensor_transport="nccl")
        def send_nccl(self):
            return self.t

    @ray.remote
    class Consumer:
        def recv(self, t):
            torch.cuda.synchronize()
            return t.numel()

    return Producer, Consumer


def measure_cluster(plugin, transports, sizes, rounds, gpus):
    """{(transport, size): median seconds} on a fresh cluster: cuda_ipc and
    nixl between two actors sharing GPU 0 (half a GPU each, as Ray's own
    cuda_ipc requires), nccl between two actors with a GPU each."""
    import ray
    from ray.experimental.collective import create_collective_group

    os.environ["RAY_RDT_PLUGIN"] = "1" if plugin else "0"
    os.environ["RAY_RDT_PLUGIN_TRANSPORTS"] = PLUGIN_TRANSPORTS
    os.environ["RAY_RDT_NIXL_DEVICES"] = "cpu,cuda"  # the plugin's own CUDA path
    ray.init(num_cpus=4, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    results = {}
    try:
        Producer, Consumer = actor_classes()
        pairs = {}
        shared = (Producer.options(num_gpus=0.5).remote(), Consumer.options(num_gpus=0.5).remote())
        for t in transports:
            if t != "nccl":
                pairs[t] = shared
        if "nccl" in transports:
            pairs["nccl"] = (Producer.options(num_gpus=1).remote(), Consumer.options(num_gpus=1).remote())
            create_collective_group(list(pairs["nccl"]), backend="nccl")
        for size in sizes:
            for producer, _ in set(pairs.values()):
                ray.get(producer.make.remote(size))
            for transport in transports:
                producer, consumer = pairs[transport]
                send = getattr(producer, f"send_{transport}")
                ray.get(consumer.recv.remote(send.remote()))  # warm-up (connections, registration)
                times = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    ray.get(consumer.recv.remote(send.remote()))
                    times.append(time.perf_counter() - t0)
                results[(transport, size)] = statistics.median(times)
                print(
                    f"  {'plugin' if plugin else 'stock '} {transport:<8} {human(size):>8}: "
                    f"{results[(transport, size)] * 1e3:9.3f} ms",
                    flush=True,
                )
    finally:
        ray.shutdown()
    return results


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    args = parser.parse_args(argv)
    reason = no_gpu_reason()
    if reason:
        print(f"ci/bench gpu: no GPU ({reason}); nothing measured.")
        return 0
    import torch

    sizes = [SIZES[s] for s in args.sizes.split(",")]
    gpus = torch.cuda.device_count()
    transports = ["cuda_ipc", "nixl"] + (["nccl"] if gpus >= 2 else [])
    name = torch.cuda.get_device_name(0)
    print(
        f"ci/bench gpu: {gpus} x {name}; sizes {', '.join(human(s) for s in sizes)}; {args.rounds} rounds"
        + ("" if gpus >= 2 else "; one GPU: no nccl (NCCL cannot put two ranks on one device)")
    )
    limit = {s: memcpy_limit(s, args.rounds) for s in sizes}
    stock = measure_cluster(False, transports, sizes, args.rounds, gpus)
    plugin = measure_cluster(True, transports, sizes, args.rounds, gpus)

    def gbps(nbytes, seconds):
        return nbytes / seconds / 1e9

    head = ["size", "memcpy D2D"] + [f"{who} {t}" for t in transports for who in ("stock", "plugin")]
    head += [f"ratio {t}" for t in transports] + [f"plugin {t} / memcpy" for t in transports]
    rows = []
    for s in sizes:
        row = [human(s), f"{limit[s] * 1e3:.3f} ms, {gbps(s, limit[s]):.0f} GB/s"]
        for t in transports:
            for res in (stock, plugin):
                row.append(f"{res[(t, s)] * 1e3:.3f} ms, {gbps(s, res[(t, s)]):.1f} GB/s")
        row += [f"{stock[(t, s)] / plugin[(t, s)]:.2f}" for t in transports]
        row += [f"{limit[s] / plugin[(t, s)]:.3f}" for t in transports]
        rows.append(row)
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    text = (
        f"GPU benchmark {datetime.date.today().isoformat()}: {gpus} x {name}, torch {torch.__version__}, "
        f"median of {args.rounds}; a step is producer task -> consumer task -> ray.get, end to end\n\n"
        + "\n".join(table)
        + "\n"
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
