"""Python thread states of the threads Ray's core worker (C++) started.

Ray calls the owner's RDT callbacks (an object's transport metadata arrived,
an object went out of scope) on its core-worker thread through Cython's
``with gil``. On a thread Python did not start, every such call builds a new
Python thread state and tears it down on return: allocations, and a fresh
frame stack mapped and unmapped, page faults included. That was a measurable
share of the owner's CPU per transfer (``docs/performance.md``).
:func:`keep_thread_state` takes one extra hold on the calling thread's state
(``PyGILState_Ensure`` without a matching release), so later callbacks on
that thread reuse it; the owner's free (``owner.free_primary_copy``) calls it
on that thread, so the metadata callbacks after the first free reuse it too. It keeps one thread state per such thread, for the
life of the process, which is what a Python-started thread has anyway.
"""

import ctypes
import threading

_kept = set()
_lock = threading.Lock()


def keep_thread_state() -> None:
    """Keeps the calling thread's Python thread state alive across callbacks,
    if Python did not start the thread (a no-op on Python's own threads, and
    after the first call on a thread)."""
    ident = threading.get_ident()
    if ident in _kept or not isinstance(threading.current_thread(), threading._DummyThread):
        return
    with _lock:
        if ident in _kept:
            return
        _kept.add(ident)
    # The GIL is held, so this only counts one more hold on this thread's
    # state (ctypes.pythonapi keeps the GIL across the call).
    ctypes.pythonapi.PyGILState_Ensure()
