"""Background threads that do not fight training for the cores.

The callback's background threads (the analysis worker, :mod:`.background`; the reporter,
:mod:`.reporting`) run torch operations while the training thread runs its own. Left alone,
each would run them with torch's default intra-op parallelism, an OpenMP team as wide as the
machine per thread, and at the training threads' priority: on a 2-core machine, teams spinning
for the same cores cost a fit 25-60 %. So each background thread

* runs its torch operations on **one** intra-op thread (its own setting; the training thread
  keeps its own), and
* yields: on Linux it takes the lowest CPU priority of its own (nice 19), so that where every
  core is busy training runs first and the background work fills the gaps (a run that is not
  finished by the next one is then waited for, as before).

``torch.set_num_threads`` is not simply per thread: it sets the calling thread's OpenMP team size
*and* the process-wide count that a thread reads the first time it runs a parallel operation.
So a background thread (1) initialises its own count first, (2) sets its count to one, and then
(3) the thread that started it sets the process-wide count back to its own value: later threads
(a user's, PyTorch's own) start with torch's usual count, and the training thread is untouched.
No Lightning import."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = [
    "BACKGROUND_THREADS",
    "limit_this_thread",
    "quiet_pool",
    "quiet_thread",
    "yield_to_training",
]

#: Intra-op threads of each background thread's torch operations.
BACKGROUND_THREADS = 1


def limit_this_thread(threads: int = BACKGROUND_THREADS) -> None:
    """Run this thread's torch operations on ``threads`` intra-op threads (this thread only,
    once the caller's :func:`_restore` has run; see the module docstring), at the lowest CPU
    priority where the system has one per thread (:func:`yield_to_training`)."""
    torch.get_num_threads()  # this thread's lazy initialisation, which would undo the limit
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    yield_to_training()


def yield_to_training() -> bool:
    """Give the calling thread the lowest CPU priority (Linux: its own nice value, 19), so that
    where every core is busy the training threads run first and this one takes the gaps (data
    loading, Python between kernels, the optimizer step). Linux only: elsewhere a nice value is
    the whole process's, and the thread is left as it is. Returns whether it was lowered."""
    if not sys.platform.startswith("linux") or not hasattr(os, "setpriority"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError:  # a sandbox may refuse it: the thread keeps its priority
        return False
    return True


def _restore(threads: int) -> None:
    """The process-wide count back to the calling thread's own (which it keeps)."""
    if threads >= 1:
        torch.set_num_threads(threads)


def quiet_pool(name: str) -> ThreadPoolExecutor:
    """A one-thread executor whose thread runs torch on :data:`BACKGROUND_THREADS` threads;
    its thread is started now (a no-op job), so that the caller's count is restored after it."""
    own = torch.get_num_threads()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=limit_this_thread)
    try:
        pool.submit(lambda: None).result()
    finally:
        _restore(own)
    return pool


def quiet_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """Start a daemon thread that runs ``target`` with torch on :data:`BACKGROUND_THREADS`
    threads; returns once the thread has set its limit (and the caller's count is restored)."""
    own = torch.get_num_threads()
    ready = threading.Event()

    def run() -> None:
        try:
            limit_this_thread()
        finally:
            ready.set()
        target()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    ready.wait()
    _restore(own)
    return thread
