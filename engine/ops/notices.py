"""Log lines about one recurring condition at a bounded rate: the first at once, then one summary per interval.

A device flooding the engine (over its nonce quota, quarantined, throttled) or a full replay memory must show in
the log, but one line per refused request would turn an attack on the engine into an attack on its disk, its log
shipper and its operator's attention (issue 13: every refusal of a full replay memory was logged at ERROR). So
each condition, named by a key, logs its first occurrence and then at most one line per ``interval_s`` saying how
many were suppressed since the last line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Notices:
    """At most one line per key per ``interval_s``; what was held back is counted into the next line."""

    def __init__(
        self, logger: logging.Logger, *, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = logger
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def emit(self, key: str, level: int, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``key`` was logged within the interval; True when it was logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed and last is not None:
            self._log.log(level, message + " (%d more suppressed in the last %.0f s)", *args, suppressed, now - last)
        else:
            self._log.log(level, message, *args)
        if len(self._last) > 10_000:  # bounded: forget keys quiet for a whole interval
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s}
        return True
