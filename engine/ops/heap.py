"""The garbage collector's policy in a serving process, and the pauses it causes, measured.

Why the engine does not run with CPython's default collector thresholds (700, 10, 10): a large trace builds
millions of container objects that stay alive while it is paired and encoded (rows, stays, encoded slices).
With the defaults, every 70,000 net new objects the collector considers a full collection, and runs one each time
the long-lived heap has grown by a quarter; a full collection walks every live object with the GIL held. During a
300k-row venue trace that was several full collections of 0.1–1 s each on a loaded 2-core machine (each collected
nothing), and every thread waited: the event loop answering ``/readyz`` and the devices, the WAL group commit. So
one tracer stalled ingest through the collector even with the trace on its own lane (tests/test_tracing_lane.py).

The policy (``--gc-young``, default 50,000; 0 keeps CPython's defaults):

* the youngest generation is collected every ``gc_young`` net allocations instead of 700: a young collection
  walks only young objects (about a millisecond for 50,000), and the engine's hot paths make few reference cycles,
  so the young generations still free what cycles there are;
* the middle generation keeps CPython's 10 young collections (a middle collection walks everything that survived
  them: 500,000 objects at the default, ~0.1–0.2 s on a loaded machine; 20 doubled that);
* the oldest generation is considered only every ``gc_young × 10 × 100`` net allocations (50M at the default),
  so a trace's live answer does not trigger full collections while it is being built;
* what is alive once the engine serves (modules, the trust list, the app, warm-loaded sets) is frozen out of
  every collection (``gc.freeze``): a full collection, when one runs, walks only what came after.

Every collection's pause is measured into ``engine_gc_pause_seconds`` (by generation), so an operator sees what
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

    def __init__(self, young: int, pauses: Histogram | None = None) -> None:
        if young < 0:
            raise ValueError("gc_young must be >= 0")
        self.young = young
        self.pauses = pauses
        self._saved: tuple[int, int, int] | None = None
        self._callback: Callable[[str, dict[str, Any]], None] | None = None

    def start(self) -> None:
        if self.pauses is not None:
            self._callback = self._timer(self.pauses)
            gc.callbacks.append(self._callback)
        if self.young:
            self._saved = gc.get_threshold()
            gc.set_threshold(self.young, MIDDLE_EVERY, OLDEST_EVERY)
            gc.collect()  # what start-up left as garbage goes now, not into the frozen generation
            gc.freeze()

    def stop(self) -> None:
        if self._saved is not None:
            gc.unfreeze()
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
