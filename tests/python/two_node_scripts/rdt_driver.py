"""Helpers for the driver scripts that tests/python/netns.py runs inside
namespace A: connect to the cluster, place actors on a node, read an
actor's ``ray_rdt.stats()`` in its own process, report one ``RESULT {json}``
line, and ask the harness for things only it can do (``@@name`` on stdout)."""

import json
import os
import sys
import time
import traceback

import ray

FETCH_TIMEOUT = 30.0  # every ray.get in a driver is bounded (well under Ray's 60 s fetch timeout)


def connect():
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)


def on(node: str) -> dict:
    """Actor options that pin an actor to node ``"a"`` (the head), ``"b"``, ..."""
    return {"resources": {f"node_{node}": 1}}


def report(result) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def stats(actor, transport=None):
    """``ray_rdt.stats()`` read inside ``actor``'s process (all transports, or one)."""

    def _stats(self):
        import ray_rdt

        return ray_rdt.stats()

    all_stats = ray.get(actor.__ray_call__.remote(_stats), timeout=FETCH_TIMEOUT)
    return all_stats if transport is None else all_stats[transport]


def where(actor) -> dict:
    """The node (Ray node ID and IP) an actor runs on."""

    def _where(self):
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address()}

    return ray.get(actor.__ray_call__.remote(_where), timeout=FETCH_TIMEOUT)


def error_info(e: BaseException) -> dict:
    return {"type": type(e).__name__, "message": str(e)}


def outcome(result, since):
    """What ``ray.get(result)`` gave (bounded by FETCH_TIMEOUT): its value, a
    hang, or the error, with the seconds since ``since``."""
    try:
        value = ray.get(result, timeout=FETCH_TIMEOUT)
        return {"completed": value, "seconds": now() - since}
    except ray.exceptions.GetTimeoutError as e:
        return {"hang": error_info(e), "seconds": now() - since}
    except Exception as e:
        return {"error": error_info(e), "seconds": now() - since}


def run_case(fn, *args) -> dict:
    """``fn(*args)`` (a dict) with ``ok: True``, or ``ok: False`` and the error:
    one failing case does not hide the others."""
    try:
        out = fn(*args)
        return {"ok": True, **out}
    except Exception as e:
        return {"ok": False, "error": error_info(e), "traceback": traceback.format_exc()[-4000:]}


def measured(receiver, transport, fn) -> dict:
    """Runs ``fn()`` (a dict of observations) between two reads of the
    receiver's ``ray_rdt.stats()[transport]``; both reads go in the result."""
    before = stats(receiver, transport)
    out = fn()
    out.update(receiver_before=before, receiver_after=stats(receiver, transport))
    return out


def ask_harness(name: str) -> None:
    """Asks the harness to run its handler ``name`` and waits until it has."""
    print(f"@@{name}", flush=True)
    reply = sys.stdin.readline().strip()
    if reply != "ok":
        raise RuntimeError(f"the harness could not {name}: {reply or 'no reply'}")


def now() -> float:
    return time.monotonic()
