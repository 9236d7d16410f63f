"""Failed authentications: every one counted, the log told about them at a bounded rate.

An attacker guessing tracer or operator tokens should show up on the dashboard's metrics at once
(``engine_auth_failures_total{credential, reason}``) and in the log, but a flood of guesses must not become a
flood of log lines (disk, the log shipper, the operator's attention). So each credential kind logs its first
failure at once and then at most one summary line per interval, with how many were suppressed and the last
client address, escaped like every request-derived field (``engine.ops.logs``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from engine.ops.logs import quote
from engine.ops.metrics import Metrics

log = logging.getLogger("engine.auth")


class AuthFailures:
    """Counts failures by credential kind and reason; logs each kind at most once per ``interval_s``."""

    def __init__(self, metrics: Metrics, *, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.metrics = metrics
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def record(self, credential: str, reason: str, client: str) -> None:
        self.metrics.auth_failures.labels(credential=credential, reason=reason).inc()
        now = self._clock()
        last = self._last.get(credential)
        if last is not None and now - last < self.interval_s:
            self._suppressed[credential] = self._suppressed.get(credential, 0) + 1
            return
        suppressed = self._suppressed.pop(credential, 0)
        self._last[credential] = now
        log.warning(
            "authentication failed: credential=%s reason=%s client=%s (%d more suppressed since the last line)",
            credential,
            reason,
            quote(client),
            suppressed,
        )
