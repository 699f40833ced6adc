"""``ray_rdt.metrics.Exporter``: snapshots of ``ray_rdt.stats()`` become metric
increments (differences between snapshots), including the per-path counters and
the latency histogram the plugin's stats may carry. Metrics are recorded by a
stand-in for ``ray.util.metrics``; test_observability.py scrapes the real ones."""

from ray_rdt.metrics import Exporter


class Recorder:
    """Creates stand-in metrics and records every call made on them."""

    def __init__(self):
        self.created = {}
        self.calls = []

    def __call__(self, kind, name, tag_keys, bounds):
        self.created[name] = (kind, tag_keys, bounds)
        recorder = self

        class Metric:
            def inc(self, value, tags):
                recorder.calls.append(("inc", name, value, tags))

            def observe(self, value, tags):
                recorder.calls.append(("observe", name, value, tags))

        return Metric()


def counters(sent=0, received=0, transfers=0, errors=0):
    return {"bytes_sent": sent, "bytes_received": received, "transfers": transfers, "errors": errors}


def test_counters_grow_by_the_difference():
    rec = Recorder()
    exporter = Exporter(rec)
    exporter.update({"shm": counters(received=100, transfers=1), "gloo": counters()}, {"ActorId": "a1"})
    assert sorted(rec.calls) == [
        ("inc", "rdt_bytes_received", 100, {"ActorId": "a1", "transport": "shm"}),
        ("inc", "rdt_transfers", 1, {"ActorId": "a1", "transport": "shm"}),
    ]
    assert rec.created["rdt_bytes_received"] == ("counter", ("ActorId", "transport"), None)
    rec.calls.clear()
    exporter.update({"shm": counters(received=250, transfers=2), "gloo": counters()}, {"ActorId": "a1"})
    assert sorted(rec.calls) == [
        ("inc", "rdt_bytes_received", 150, {"ActorId": "a1", "transport": "shm"}),
        ("inc", "rdt_transfers", 1, {"ActorId": "a1", "transport": "shm"}),
    ]
    rec.calls.clear()
    exporter.update({"shm": counters(received=250, transfers=2)}, {"ActorId": "a1"})
    assert rec.calls == []  # nothing moved: nothing exported


def test_paths_and_histograms_are_exported_when_present():
    rec = Recorder()
    exporter = Exporter(rec)
    latency = {"bounds": [10, 100, 1000], "counts": [1, 0, 2, 0]}
    stats = {
        "nixl": dict(
            counters(received=64, transfers=3),
            paths={"same_host": counters(received=48, transfers=2), "network": counters(received=16, transfers=1)},
            latency_us=latency,
        )
    }
    exporter.update(stats)
    calls = set((c[0], c[1], c[2], tuple(sorted(c[3].items()))) for c in rec.calls)
    assert ("inc", "rdt_path_bytes_received", 48, (("path", "same_host"), ("transport", "nixl"))) in calls
    assert ("inc", "rdt_path_bytes_received", 16, (("path", "network"), ("transport", "nixl"))) in calls
    assert ("inc", "rdt_bytes_received", 64, (("transport", "nixl"),)) in calls
    observed = sorted(c[2] for c in rec.calls if c[0] == "observe")
    assert observed == [10, 1000, 1000]  # each count at its bucket's upper bound
    assert rec.created["rdt_latency_us"] == ("histogram", ("transport",), (10, 100, 1000))
    rec.calls.clear()
    stats["nixl"]["latency_us"] = {"bounds": [10, 100, 1000], "counts": [1, 0, 2, 3]}
    exporter.update(stats)
    assert [c[2] for c in rec.calls] == [2000, 2000, 2000]  # above the last bound: 2x it
