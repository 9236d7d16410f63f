"""OS-visible names for the engine's threads, so per-thread CPU says which stage spends it.

Python 3.11 does not name OS threads, so ``top -H``, ``/proc/<pid>/task/*/comm`` and the end-to-end benchmark
would see every stage as ``python``; the capacity figures need to tell the event loop from the verify, WAL and
store threads. chdb renames the thread that calls into it, so the store thread puts its name back after each
call. Linux only (``prctl``); elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_PR_SET_NAME = 15
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform.startswith("linux") else None


def name_this_thread(name: str) -> None:
    """Set the calling thread's OS name (at most 15 bytes are kept)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def keeping_name(name: str, fn: Callable[[], T]) -> Callable[[], T]:
    """``fn`` wrapped to restore the thread's name after it ran (chdb renames the threads that call it)."""

    def run() -> T:
        try:
            return fn()
        finally:
            name_this_thread(name)

    return run


def single_thread_pool(name: str) -> ThreadPoolExecutor:
    """One named worker thread: the engine's stages (verify, WAL, store) each own one."""
    return ThreadPoolExecutor(1, thread_name_prefix=name, initializer=name_this_thread, initargs=(name,))
