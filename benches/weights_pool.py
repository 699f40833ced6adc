"""Weight sync in the configuration of Ray's own weight-transfer script
(``python/ray/tests/rdt/test_weights_transfer.py`` in ray-project/ray,
``--device cpu``), stock Ray 2.60 against the plugin.

Method: a trainer actor holds a float16 ``nn.Linear`` of ``--size`` bytes
whose weight is split row-wise into ``--views`` views; it registers a NIXL
memory pool of twice the model (``register_nixl_memory_pool``), so every
``ray.put(views, _tensor_transport="nixl")`` copies the views into the pool.
A generator actor holds the same model, registers its weights
(``register_nixl_memory``) and lands each transfer in them
(``set_target_for_ref`` on the row views, then ``ray.get``), checking one
row's value. Per step the trainer adds one to its weights, puts, and waits
for the generator's sync. Stock runs in a child with ``RAY_RDT_PLUGIN=0``,
the plugin in another, each on its own cluster.

Printed per view count: the medians of the trainer's ``ray.put`` and of the
generator's ``set_target_for_ref`` + ``ray.get`` over ``--iters`` steps (the
first two left out), the ratio plugin / stock, and each against one
single-threaded copy of the model measured in the same run (the put copies
the model into the pool; the get moves it once).

    python benches/weights_pool.py [--size 512MiB] [--views 1000,10000] [--iters 12]
    ci/bench weights-pool [same options]
"""

import argparse
import statistics
import sys
import time

import raybench as rb

WARMUP_STEPS = 2


def actor_classes(size, views):
    import ray
    import torch

    def model():
        layer = torch.nn.Linear(size // views // 2, views, dtype=torch.float16)
        layer.requires_grad_(False)
        layer.weight.zero_()
        return layer

    @ray.remote(enable_tensor_transport=True)
    class Generator:
        def __init__(self):
            from ray.experimental import register_nixl_memory

            self.layer = model()
            for p in self.layer.parameters():
                register_nixl_memory(p)

        def sync(self, version, refs):
            from ray.experimental import set_target_for_ref

            (ref,) = refs
            targets = [self.layer.weight[i] for i in range(views)]
            t0 = time.perf_counter()
            set_target_for_ref(ref, targets)
            ray.get(ref)
            took = time.perf_counter() - t0
            assert float(self.layer.weight[-1][0]) == version, (float(self.layer.weight[-1][0]), version)
            return took

    @ray.remote(enable_tensor_transport=True)
    class Trainer:
        def __init__(self):
            from ray.experimental import register_nixl_memory_pool

            self.layer = model()
            register_nixl_memory_pool(2 * size, torch.device("cpu"))

        def steps(self, generator, n):
            puts, gets = [], []
            for version in range(1, n + 1):
                self.layer.weight += 1
                rows = [self.layer.weight[i] for i in range(views)]
                t0 = time.perf_counter()
                refs = [ray.put(rows, _tensor_transport="nixl")]
                puts.append(time.perf_counter() - t0)
                task = generator.sync.remote(version, refs)
                del refs
                gets.append(ray.get(task))
            return puts, gets

    return Trainer, Generator


def child(size, views_list, iters):
    """In a child: every view count on one cluster; medians in seconds."""
    import ray

    rb.init_ray()
    out = {}
    for views in views_list:
        Trainer, Generator = actor_classes(size, views)
        trainer, generator = Trainer.remote(), Generator.remote()
        puts, gets = ray.get(trainer.steps.remote(generator, iters))
        out[views] = {"put": statistics.median(puts[WARMUP_STEPS:]), "get": statistics.median(gets[WARMUP_STEPS:])}
        print(f"  {views} views: put {out[views]['put'] * 1e3:.1f} ms, get {out[views]['get'] * 1e3:.1f} ms",
              file=sys.stderr, flush=True)
        for actor in (trainer, generator):
            ray.kill(actor)
    rb.child_result(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="512MiB")
    p.add_argument("--views", default="1000,10000")
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    size = rb.parse_size(args.size)
    views_list = [int(v) for v in args.views.split(",")]
    if args.child:
        return child(size, views_list, args.iters)
    started = time.strftime("%Y-%m-%d %H:%M")
    copy = rb.memcpy_medians([size])[size]
    argv = ["--size", args.size, "--views", args.views, "--iters", str(args.iters)]
    stock = rb.int_keys(rb.run_child(__file__, argv, {"RAY_RDT_PLUGIN": "0"}, "stock Ray 2.60 (RAY_RDT_PLUGIN=0)"))
    plugin = rb.int_keys(rb.run_child(__file__, argv, {}, "patched Ray with the plugin"))
    rows = []
    for views in views_list:
        s, q = stock[views], plugin[views]
        rows.append([f"{views:,}", rb.fmt_ms(s["put"]), rb.fmt_ms(q["put"]), rb.fmt_ratio(q["put"] / s["put"]),
                     rb.fmt_ratio(q["put"] / copy), rb.fmt_ms(s["get"]), rb.fmt_ms(q["get"]),
                     rb.fmt_ratio(q["get"] / s["get"]), rb.fmt_ratio(q["get"] / copy)])
    print(f"Ray's weight-transfer configuration ({started}; {rb.fmt_size(size)} float16, medians of "
          f"{args.iters - WARMUP_STEPS} steps; one copy of the model {rb.fmt_ms(copy)})\n")
    print(rb.markdown_table(
        ["views", "stock put", "plugin put", "put plugin / stock", "plugin put / copy",
         "stock get", "plugin get", "get plugin / stock", "plugin get / copy"], rows))


if __name__ == "__main__":
    main()
