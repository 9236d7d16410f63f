"""The garbage collector's policy in a serving process, and the pauses it causes, measured.

A large trace builds millions of container objects that stay alive while it is paired and encoded (rows, stays,
encoded slices), and every collection holds the GIL: every thread waits, the event loop answering ``/readyz``
and the devices included. With CPython's default thresholds (700, 10, 10) gc callbacks during the lane test's
300k-row trace (tests/test_tracing_lane.py) showed full collections of 0.1–1 s each on a loaded 2-core machine,
collecting nothing.

What the engine does:

* ``--gc-freeze`` (on; ``ENGINE_GC_FREEZE=0`` turns it off): what is alive once the engine serves (modules,
  chdb, pyarrow, aiohttp, the trust list, warm-loaded sets: ~65k objects and more) is frozen out of every
  collection (``gc.freeze``), so a full collection walks only what came after;
* ``--gc-young`` (0: CPython's thresholds): when set, the youngest generation is collected every ``gc_young``
  net allocations, the middle one after 10 of those, the oldest only after 100 middle ones (``gc_young × 1,000``
  net allocations): no full collection while a trace's answer is built. It is off by default because
  ``bench/isolation_bench.py`` (alone vs a loop of full 300k-row traces, idle machine) measured no gain from it:
  honest p99 313 ms with 50,000 against 253 ms with CPython's thresholds, in one run each (README);
* every collection's pause is measured into ``engine_gc_pause_seconds`` (by generation), so an operator sees what
  the collector costs instead of guessing.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Histogram

#: generation 1 is collected after this many generation-0 collections, generation 2 after this many of generation 1
MIDDLE_EVERY = 10
OLDEST_EVERY = 100


class HeapPolicy:
    """Applies the thresholds and the freeze on :meth:`start`, undoes both on :meth:`stop` (an engine built in a
    test process leaves the process as it found it)."""

    def __init__(self, young: int, pauses: Histogram | None = None, *, freeze: bool = True) -> None:
        if young < 0:
            raise ValueError("gc_young must be >= 0")
        self.young = young
        self.freeze = freeze
        self.pauses = pauses
        self._saved: tuple[int, int, int] | None = None
        self._frozen = False
        self._callback: Callable[[str, dict[str, Any]], None] | None = None

    def start(self) -> None:
        if self.pauses is not None:
            self._callback = self._timer(self.pauses)
            gc.callbacks.append(self._callback)
        if self.young:
            self._saved = gc.get_threshold()
            gc.set_threshold(self.young, MIDDLE_EVERY, OLDEST_EVERY)
        if self.freeze:
            gc.collect()  # what start-up left as garbage goes now, not into the frozen generation
            gc.freeze()
            self._frozen = True

    def stop(self) -> None:
        if self._frozen:
            gc.unfreeze()
            self._frozen = False
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None
        if self._callback is not None and self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        self._callback = None

    @staticmethod
    def _timer(pauses: Histogram) -> Callable[[str, dict[str, Any]], None]:
        started = [0.0]

        def on_collection(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                pauses.labels(str(info["generation"])).observe(time.perf_counter() - started[0])

        return on_collection
