"""This process's plugin context (one per driver or actor), tied to its Ray
connection: created on first use with the node's identity, IP and Ray's
cluster token, recreated when the driver joins another cluster, and the
reporter of its counters started with it."""

import os
import threading
import weakref
from typing import Optional

from ray_rdt import reporter
from ray_rdt.context import Context

_context: Optional[Context] = None
_context_lock = threading.Lock()


def _ray_ids():
    """(node_id, actor_id) of this process in Ray, as binary; empty when unknown."""
    try:
        import ray._private.worker as ray_worker

        worker = ray_worker.global_worker
        if not worker.connected:
            return b"", b""
        node = worker.current_node_id
        actor = worker.actor_id
        return node.binary(), (b"" if actor.is_nil() else actor.binary())
    except Exception:
        return b"", b""


def _ray_node_ip() -> Optional[str]:
    """The IP Ray uses for this process's node, or None outside a Ray cluster."""
    try:
        import ray._private.worker as ray_worker

        worker = ray_worker.global_worker
        return worker.node_ip_address if worker.connected else None
    except Exception:
        return None


def ray_auth_token() -> Optional[bytes]:
    """Ray's cluster token when Ray's token authentication is on, else None.

    Read through Ray's own loader (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``,
    ``~/.ray/auth_token``), so the plugin's peers prove exactly what Ray's do.
    """
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    if not is_token_auth_enabled():
        return None
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token():
        return None
    token = loader.get_raw_token()
    return token.encode("utf-8") if isinstance(token, str) else bytes(token)


def get_context() -> Context:
    """This process's plugin context, created on first use.

    A driver can leave one Ray cluster and join another (``ray.shutdown()`` then
    ``ray.init()``): the context is recreated when the Ray node changes, so the
    identity it gives to its records stays true.
    """
    global _context
    ctx = _context
    connection = _ray_connection()
    if ctx is not None and connection is not None and ctx._connection() is connection and ctx._pid == os.getpid():
        # The same Ray connection as when the context was checked last: the
        # same node (two attribute reads instead of asking Ray for its IDs).
        return ctx
    node_id, actor_id = _ray_ids()
    with _context_lock:
        ctx = _context
        if ctx is None or ctx._pid != os.getpid() or ctx.node_id != node_id:
            if ctx is not None and ctx._pid == os.getpid():
                ctx.close()
            _context = Context(node_id, actor_id, _ray_node_ip(), ray_auth_token() if node_id else None)
            reporter.start(_addresses)
        if connection is not None:
            _context._connection = weakref.ref(connection)
            reporter.resume()
        return _context


def _ray_connection():
    """What stands for this process's Ray connection: Ray's ``Node`` object of
    it (a new one for every ``ray.init``; None when not connected)."""
    import ray._private.worker as ray_worker

    worker = ray_worker.global_worker
    return getattr(worker, "node", None) if worker.connected else None


def peek_context() -> Optional[Context]:
    """The context if this process created one, else None (never creates)."""
    ctx = _context
    return ctx if ctx is not None and ctx._pid == os.getpid() else None


def _addresses():
    """(same-host, TCP) endpoint of this process's context, for the reporter."""
    ctx = peek_context()
    return (ctx.endpoint, ctx.tcp_endpoint) if ctx is not None else (None, None)


def on_ray_shutdown() -> None:
    """Ray's shutdown is starting (``ray.shutdown()``, or its ``atexit`` hook):
    stops this process's threads that call into Ray while Ray is still
    connected (the group-failure watcher ends; the reporter pauses until the
    process connects again). The context itself stays; the next ``ray.init``
    replaces it."""
    reporter.pause()
    ctx = peek_context()
    if ctx is not None:
        ctx.stop_group_watcher()
