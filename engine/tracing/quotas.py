"""Per-tracer trace allowances: a person trace is one case's answer, a venue or second-degree trace reads
everyone at a place, so the second kind has a stricter allowance.

A token bucket per (tracer, kind): ``per_hour`` traces refill evenly over the hour, and a tracer may spend up to
``burst`` of them at once (a sixth of the hourly allowance, at least one), which covers a case worked through in
one sitting but not a script walking the population. A refusal is a 429 with ``Retry-After`` and is counted;
nothing is queried and nothing is audited for it (there is no answer). The buckets live in the engine process:
the CLI opening the store itself makes one trace per invocation, audited the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from engine.errors import RateLimitedError

#: kinds of trace, by how much of the population one answer shows
PERSON, WIDE = "person", "wide"


class TracerQuotas:
    def __init__(
        self, person_per_hour: float, wide_per_hour: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rates = {PERSON: person_per_hour / 3600.0, WIDE: wide_per_hour / 3600.0}
        self.bursts = {PERSON: max(1.0, person_per_hour / 6), WIDE: max(1.0, wide_per_hour / 6)}
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def take(self, tracer: str, kind: str) -> None:
        """Spend one trace of ``kind`` for ``tracer`` or raise :class:`RateLimitedError` with the wait."""
        rate, burst = self.rates[kind], self.bursts[kind]
        now = self._clock()
        tokens, then = self._buckets.get((tracer, kind), (burst, now))
        tokens = min(burst, tokens + (now - then) * rate)
        if tokens < 1.0:
            self._buckets[(tracer, kind)] = (tokens, now)
            wait = (1.0 - tokens) / rate
            what = "person traces" if kind == PERSON else "venue and second-degree traces"
            raise RateLimitedError(f"tracer allowance for {what} is used up; retry in {wait:.0f} s", wait)
        self._buckets[(tracer, kind)] = (tokens - 1.0, now)
