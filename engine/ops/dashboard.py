"""The operators' live dashboard: per-second figures derived from the Prometheus metrics, served as JSON and SSE.

Rates and latency quantiles are computed here, on the server, from the same counters and histograms that
``/metrics`` exports, so the page and a Grafana board built on ``rate()``/``histogram_quantile()`` agree
(see docs/metrics.md). A background task started from a ``cleanup_ctx`` samples the registry once per second
into a small ring buffer, so a freshly opened page draws the last few minutes at once instead of a blank chart.

No authentication: everything shown is an aggregate (counts, rates, latencies, backlog sizes) — no person,
code, device id or venue ever appears — which is the same exposure as ``/metrics``. The engine listens on
127.0.0.1 by default; put both behind the same network policy when it does not.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from engine.codes.verdicts import VERDICTS
from engine.ops.metrics import Metrics

log = logging.getLogger(__name__)

#: Counters turned into per-second rates (summed over all label values unless split below).
_RATE_COUNTERS = (
    "scans_received", "scans_rejected", "scans_duplicate", "scans_stored", "store_errors", "overload",
    "device_throttled",
)  # fmt: skip
#: Histograms reported as quantiles over the window, with the scale that gives the unit the page shows.
_QUANTILE_HISTOGRAMS = {"verify_seconds": 1000.0, "insert_seconds": 1000.0, "ack_seconds": 1000.0}
_GAUGES = (
    "queue_depth", "wal_backlog_records", "wal_backlog_bytes", "active_devices", "store_up", "device_quarantined",
)  # fmt: skip


@dataclass(frozen=True)
class HistogramState:
    """Cumulative bucket counts of one histogram at one instant (``le`` bounds ascending, last is +Inf)."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    total: float

    @property
    def count(self) -> float:
        return self.cumulative[-1] if self.cumulative else 0.0

    def minus(self, older: HistogramState) -> HistogramState:
        """What was observed between ``older`` and this state (both from the same histogram)."""
        if older.bounds != self.bounds:
            return self
        return HistogramState(
            self.bounds,
            tuple(a - b for a, b in zip(self.cumulative, older.cumulative, strict=True)),
            self.total - older.total,
        )

    def quantile(self, q: float) -> float | None:
        """Prometheus' ``histogram_quantile``: linear inside the bucket, the highest finite bound for +Inf.

        Done the same way as the server so a number on the page and one on a Grafana panel can be compared.
        """
        count = self.count
        if count <= 0:
            return None
        rank = q * count
        lower, below = 0.0, 0.0
        for bound, cum in zip(self.bounds, self.cumulative, strict=True):
            if cum >= rank and cum > below:
                if math.isinf(bound):
                    return lower
                return lower + (bound - lower) * (rank - below) / (cum - below)
            lower, below = bound, cum
        return lower


@dataclass(frozen=True)
class RawSample:
    """Everything read from the registry at one tick; rates come from the difference of two of these."""

    mono: float
    wall: float
    counters: dict[str, float]
    histograms: dict[str, HistogramState]
    gauges: dict[str, float]


def _counter_values(counter: Counter) -> Iterable[tuple[dict[str, str], float]]:
    for family in counter.collect():
        for s in family.samples:
            if s.name.endswith("_total"):
                yield s.labels, s.value


def _histogram_state(histogram: Histogram) -> HistogramState:
    bounds: list[float] = []
    cumulative: list[float] = []
    total = 0.0
    for family in histogram.collect():
        for s in family.samples:
            if s.name.endswith("_bucket"):
                bounds.append(float(s.labels["le"]))
                cumulative.append(s.value)
            elif s.name.endswith("_sum"):
                total = s.value
    return HistogramState(tuple(bounds), tuple(cumulative), total)


def _gauge_value(gauge: Gauge) -> float:
    return next(s.value for family in gauge.collect() for s in family.samples)


def read_sample(metrics: Metrics, mono: float, wall: float) -> RawSample:
    """Copy live state into the gauges (as a scrape would) and read every figure the dashboard derives from."""
    metrics.refresh()
    counters: dict[str, float] = {}
    for name in _RATE_COUNTERS:
        counters[name] = sum(v for _, v in _counter_values(getattr(metrics, name)))
    for labels, value in _counter_values(metrics.scans_acked):
        counters["acked:" + labels["verdict"]] = value
    counters["cache_hits"], counters["cache_lookups"] = map(float, metrics.cache_counts())
    histograms = {name: _histogram_state(getattr(metrics, name)) for name in (*_QUANTILE_HISTOGRAMS, "batch_size")}
    gauges = {name: _gauge_value(getattr(metrics, name)) for name in _GAUGES}
    return RawSample(mono, wall, counters, histograms, gauges)


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def derive(older: RawSample, newer: RawSample) -> dict[str, Any]:
    """The figures of one dashboard point: rates and quantiles over ``older → newer``, gauges as of ``newer``.

    A counter that went down (an engine restarted under the same registry name) counts from zero, as
    Prometheus' ``rate()`` does, rather than producing a negative rate.
    """
    span = newer.mono - older.mono

    def increase(key: str) -> float:
        now, then = newer.counters.get(key, 0.0), older.counters.get(key, 0.0)
        return now - then if now >= then else now

    def rate(key: str) -> float:
        return round(increase(key) / span, 3) if span > 0 else 0.0

    by_verdict = {v: rate("acked:" + v) for v in VERDICTS}
    point: dict[str, Any] = {
        "t": round(newer.wall, 3),
        "window_s": round(span, 3),
        "scans_per_s": by_verdict,
        "accepted_per_s": round(sum(by_verdict.values()), 3),
        "rejected_per_s": rate("scans_rejected"),
        "duplicate_per_s": rate("scans_duplicate"),
        "received_per_s": rate("scans_received"),
        "stored_per_s": rate("scans_stored"),
        "store_errors_per_s": rate("store_errors"),
        "overload_per_s": rate("overload"),
        "throttled_per_s": rate("device_throttled"),
    }
    for name, scale in _QUANTILE_HISTOGRAMS.items():
        window = newer.histograms[name].minus(older.histograms[name])
        prefix = name.removesuffix("_seconds")
        for q in (50, 99):
            value = window.quantile(q / 100)
            point[f"{prefix}_p{q}_ms"] = _round(None if value is None else value * scale)
    batches = newer.histograms["batch_size"].minus(older.histograms["batch_size"])
    point["batches_per_s"] = round(batches.count / span, 3) if span > 0 else 0.0
    point["batch_size_mean"] = _round(batches.total / batches.count if batches.count else None, 1)
    point["batch_size_p50"] = _round(batches.quantile(0.5), 1)
    hits, lookups = increase("cache_hits"), increase("cache_lookups")
    point["cache_hit_rate"] = _round(hits / lookups if lookups > 0 else None, 4)
    point["queue_scans"] = int(newer.gauges["queue_depth"])
    point["wal_backlog_records"] = int(newer.gauges["wal_backlog_records"])
    point["wal_backlog_bytes"] = int(newer.gauges["wal_backlog_bytes"])
    point["active_devices"] = int(newer.gauges["active_devices"])
    point["store_up"] = bool(newer.gauges["store_up"])
    point["quarantined_devices"] = int(newer.gauges["device_quarantined"])  # a count: device ids stay off the page
    return point


class StatsRing:
    """Per-second dashboard points over the last few minutes, and the live subscribers waiting for the next one."""

    def __init__(self, metrics: Metrics, *, interval_s: float = 1.0, window_s: float = 5.0, history_s: float = 300.0):
        if interval_s <= 0 or window_s < interval_s or history_s < interval_s:
            raise ValueError("need 0 < interval_s <= window_s and interval_s <= history_s")
        self.metrics = metrics
        self.interval_s = interval_s
        self.window_s = window_s
        self._raw: deque[RawSample] = deque()
        self._points: deque[dict[str, Any]] = deque(maxlen=max(1, round(history_s / interval_s)))
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def tick(self, mono: float | None = None, wall: float | None = None) -> dict[str, Any] | None:
        """Sample now, derive against the oldest sample still inside the window, keep and publish the point.

        The very first sample only starts the window: a rate needs two readings, and a point of zeros would
        draw a false dip at the start of every chart.
        """
        sample = read_sample(
            self.metrics, time.monotonic() if mono is None else mono, time.time() if wall is None else wall
        )
        self._raw.append(sample)
        # the oldest sample kept is the one nearest ``window_s`` ago (half an interval of slack absorbs tick
        # jitter, which would otherwise flip the span between window and window + interval)
        while len(self._raw) > 2 and sample.mono - self._raw[1].mono >= self.window_s - self.interval_s / 2:
            self._raw.popleft()
        if len(self._raw) < 2:
            return None
        point = derive(self._raw[0], sample)
        self._points.append(point)
        for queue in self._subscribers:
            if queue.full():  # a client that stopped reading loses old points, never the engine's memory
                queue.get_nowait()
            queue.put_nowait(point)
        return point

    def history(self) -> list[dict[str, Any]]:
        return list(self._points)

    def latest(self) -> dict[str, Any] | None:
        return self._points[-1] if self._points else None

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=16)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.discard(queue)

    def close_streams(self) -> None:
        """Tell every open stream to finish, so graceful shutdown does not wait its full timeout on them."""
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    async def run(self) -> None:
        """Tick on a fixed schedule (not sleep-after-work), so points stay one interval apart under load."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                self.tick()
            except Exception:  # a broken figure must not stop the dashboard (or leak into the engine)
                log.exception("dashboard sample failed")
            next_at += self.interval_s
            delay = next_at - loop.time()
            if delay < 0:  # the loop was blocked for more than an interval: skip, do not burst
                next_at, delay = loop.time(), 0.0
            await asyncio.sleep(delay)
