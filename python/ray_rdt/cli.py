"""The ``ray-rdt`` command (also ``python -m ray_rdt``).

- ``ray-rdt patch [--check | --revert] [--python PATH]``: the Ray 2.60.0 patch set
  on the Ray of this (or PATH's) environment (:mod:`ray_rdt.patching`);
- ``ray-rdt doctor [--address ADDR] [--require ITEM ...] [--json]``: what can run
  here, or on every node of a cluster (:mod:`ray_rdt.doctor`); exits 1 when the
  plugin or a required item cannot work;
- ``ray-rdt stats [--address ADDR] [--json]``: the counters of every process of a
  running cluster that loaded the plugin (:mod:`ray_rdt.registry`).
"""

import argparse
import json
import sys
from typing import List, Optional, Sequence

from ray_rdt import cluster, doctor, patching, registry

TRANSPORT_FIELDS = ("bytes_sent", "bytes_received", "transfers", "errors")


def _say(prefix: str, lines: Sequence[str], stream=sys.stdout):
    for line in lines:
        print(f"{prefix}: {line}", file=stream)


def cmd_patch(args) -> int:
    """``ray-rdt patch``."""
    try:
        env = patching.Environment.of(args.python)
        patches = patching.load_patches()
        if args.check:
            outcome = patching.check(env, patches)
        elif args.revert:
            outcome = patching.revert(env, patches)
        else:
            outcome = patching.apply(env, patches)
        _say("ray-rdt patch", outcome.lines)
        if not args.check:
            warning = patching.verify_import(env, patched=not args.revert)
            if warning:
                _say("ray-rdt patch: warning", [warning], sys.stderr)
    except patching.PatchError as e:
        _say("ray-rdt patch", [str(e)], sys.stderr)
        return 1
    return 0 if outcome.ok else 1


def _node_report() -> dict:
    """:func:`ray_rdt.doctor.report` in a task on one node."""
    return doctor.report()


def cmd_doctor(args) -> int:
    """``ray-rdt doctor``."""
    if args.address:
        with cluster.connected(args.address):
            results = cluster.on_each_node(_node_report)
        reports = [r.value for r in results if r.error is None]
        failed = [f"node {r.node_id} ({r.address}): {r.error}" for r in results if r.error is not None]
    else:
        reports, failed = [doctor.report()], []
    found = failed + [p for rep in reports for p in doctor.problems(rep, args.require)]
    if args.json:
        print(json.dumps({"reports": reports, "problems": found}, indent=2))
    else:
        print("\n".join(doctor.format_report(rep) for rep in reports))
        if found:
            _say("ray-rdt doctor: problem", found, sys.stderr)
        else:
            print("ray-rdt doctor: ok")
    return 1 if found else 0


def _node_snapshots() -> List[dict]:
    """This node's plugin processes (:func:`ray_rdt.registry.read_all`), in a task."""
    return registry.read_all()


def _rows(snapshots: List[dict]) -> List[dict]:
    """One row per process and transport that moved anything (a process with no
    activity yet: one row with transport ``-``)."""
    rows = []
    for snap in sorted(snapshots, key=lambda s: (s.get("node_id", ""), s.get("pid", 0))):
        who = {
            "node": (snap.get("node_id") or "")[:8],
            "pid": snap.get("pid"),
            "actor": snap.get("actor_class") or snap.get("mode") or "-",
            "age_s": round(snap.get("age_s", 0.0), 1),
        }
        active = [(t, c) for t, c in snap.get("stats", {}).items() if any(c.get(f) for f in TRANSPORT_FIELDS)]
        for transport, counters in active or [("-", {})]:
            rows.append(dict(who, transport=transport, **{f: counters.get(f, 0) for f in TRANSPORT_FIELDS}))
    return rows


def format_table(rows: List[dict], columns: Sequence[str]) -> str:
    """``rows`` as a plain text table with right-aligned numbers."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [bool(rows) and all(isinstance(r.get(c), (int, float)) for r in rows) for c in columns]

    def line(values):
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(list(columns))] + [line(row) for row in cells])


def cmd_stats(args) -> int:
    """``ray-rdt stats``."""
    with cluster.connected(args.address):
        results = cluster.on_each_node(_node_snapshots)
    snapshots = [s for r in results if r.error is None for s in r.value]
    errors = [f"node {r.node_id} ({r.address}): {r.error}" for r in results if r.error is not None]
    if args.json:
        print(json.dumps({"processes": snapshots, "errors": errors}, indent=2))
    else:
        rows = _rows(snapshots)
        if rows:
            print(format_table(rows, ("node", "pid", "actor", "transport") + TRANSPORT_FIELDS + ("age_s",)))
        else:
            print("ray-rdt stats: no process of this cluster has loaded the plugin yet")
        _say("ray-rdt stats: error", errors, sys.stderr)
    return 1 if errors else 0


def parser() -> argparse.ArgumentParser:
    """The command line."""
    top = argparse.ArgumentParser(prog="ray-rdt", description="Ray Direct Transport plugin: setup and inspection")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("patch", help="apply, check or revert the Ray 2.60.0 patch set")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only report; exit 1 unless every patch is applied")
    mode.add_argument("--revert", action="store_true", help="restore Ray's files byte for byte")
    p.add_argument("--python", metavar="PATH", help="the interpreter whose environment to patch (default: this one)")
    p.set_defaults(run=cmd_patch)

    d = sub.add_parser("doctor", help="what can run here, or on every node of a cluster")
    d.add_argument("--address", help="a running cluster (e.g. auto, or HOST:PORT): check every alive node")
    d.add_argument(
        "--require", nargs="+", default=[], choices=doctor.REQUIREMENTS, metavar="ITEM",
        help=f"exit 1 unless these can work ({', '.join(doctor.REQUIREMENTS)})",
    )
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(run=cmd_doctor)

    s = sub.add_parser("stats", help="the counters of every plugin process of a running cluster")
    s.add_argument("--address", default="auto", help="the cluster (default: auto)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(run=cmd_stats)
    return top


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command; returns its exit status."""
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
