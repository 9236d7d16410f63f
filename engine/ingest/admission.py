"""Per-device admission: budgets in scans and in verify cost, a bounded share of the queue, and quarantine.

Issue 13: the request bucket (``device_rate``) counts requests, and a request holds up to 1,000 scans, so one
device at a fifth of its allowed rate filled the global queue and honest devices got 503; forged codes under a
trusted key id each cost a full Ed25519 verify and were never cached. So beside the request bucket every device
has, here:

* a **scan bucket** (``device_scan_rate`` scans/s, ``device_scan_burst`` deep): a request whose items do not fit
  is refused whole with 429 and ``Retry-After`` before anything of it is queued, so nothing acknowledged is lost;
* a **cold-verify bucket** (``device_cold_rate`` per s, ``device_cold_burst`` deep): what a verify costs is known
  only after it ran (a code in the verified-code set costs ~1 µs, a forged or never-seen one ~55 µs), so each
  committed batch debits the device's cold verifies and a device in debt is refused until it has paid it back;
* a **queue share**: one device may hold at most ``device_queue_share`` of ``queue_scans`` (429 beyond), and once
  the queue is past :data:`PRESSURE` of its bound a device already holding more than an equal share of what the
  devices waiting hold is refused first (503), so the room left goes to the devices holding little;
* **quarantine**: a device whose recent scans (decayed over :data:`DECAY_S`) are mostly ``bad_signature`` /
  ``unknown_key`` has both buckets cut by ``quarantine_factor``, is flagged (``engine_device_quarantined``,
  ``device-list``, the dashboard) and logged once, until an operator clears it or it sends no such majority for
  ``quarantine_s``.

Everything runs on the event loop thread (the batcher calls back from its commit stage there): no locks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import OverloadedError, RateLimitedError
from engine.ops.metrics import Metrics
from engine.ops.notices import Notices

log = logging.getLogger(__name__)

#: past this share of ``queue_scans`` the queue is "under pressure": devices over their fair share are refused
PRESSURE = 0.5
#: the time constant of a device's recent-verdict counts (exponential decay): about the last minute of scans
DECAY_S = 60.0


@dataclass(frozen=True)
class Budgets:
    """The per-device limits, from the configuration (engine.config: ``device_scan_rate`` and the others)."""

    scan_rate: float = 1_000.0
    scan_burst: float = 20_000.0
    cold_rate: float = 200.0
    cold_burst: float = 20_000.0
    queue_scans: int = 50_000
    queue_share: float = 0.1
    max_request_scans: int = 1_000
    quarantine_share: float = 0.8
    quarantine_min_scans: int = 200
    quarantine_s: float = 600.0
    quarantine_factor: float = 20.0

    @property
    def device_queue_cap(self) -> int:
        """The most scans one device may hold in the queue: its share, never below one whole request."""
        return max(self.max_request_scans, int(self.queue_scans * self.queue_share))


class _Device:
    __slots__ = (
        "bad",
        "cold",
        "cold_at",
        "decayed_at",
        "quarantined_since",
        "queued",
        "scans",
        "scans_at",
        "total",
        "until",
        "wanted",
    )  # fmt: skip

    def __init__(self, b: Budgets, now: float) -> None:
        self.scans, self.scans_at = b.scan_burst, now
        self.cold, self.cold_at = b.cold_burst, now
        self.bad = self.total = 0.0
        self.decayed_at = now
        self.queued = 0
        self.quarantined_since = 0.0
        self.until = 0.0  # quarantined while now < until
        self.wanted = 0  # scans of its last request refused for want of them: its next is refused before its body


@dataclass(frozen=True)
class Quarantine:
    """One quarantined device as operators see it (``device-list``, the admin API, the dashboard)."""

    device_id: str
    since: float  # wall clock, epoch seconds
    until: float  # released then unless it misbehaves again or an operator clears it earlier
    bad_share: float  # of its recent scans


class Admission:
    """The per-device budgets of the module docstring; one instance per engine, owned by the batcher."""

    def __init__(self, budgets: Budgets, metrics: Metrics, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.budgets = budgets
        self._metrics = metrics
        self._clock = clock
        self._devices: dict[str, _Device] = {}
        self._queued = 0  # scans queued by all devices (the batcher's own count, kept here too for the share)
        self._holders = 0  # devices with scans queued
        self._notices = Notices(log)
        self._quarantined: set[str] = set()
        metrics.on_scrape(self._refresh)

    # -- state ----------------------------------------------------------------------------------------------
    def _get(self, device_id: str, now: float) -> _Device:
        d = self._devices.get(device_id)
        if d is None:
            if len(self._devices) > 200_000:  # bounded: drop devices with nothing queued and full buckets
                self._forget_idle(now)
            d = self._devices[device_id] = _Device(self.budgets, now)
        return d

    def _forget_idle(self, now: float) -> None:
        b = self.budgets
        for key, d in list(self._devices.items()):
            full = now - d.scans_at > b.scan_burst / b.scan_rate and now - d.cold_at > b.cold_burst / b.cold_rate
            if full and not d.queued and not d.until:
                del self._devices[key]

    def _factor(self, d: _Device, device_id: str, now: float) -> float:
        """1, or ``quarantine_factor`` while quarantined; releases a device whose quarantine ran out."""
        if not d.until:
            return 1.0
        if now < d.until:
            return self.budgets.quarantine_factor
        self._release(device_id, d, f"it sent no majority of bad scans for {self.budgets.quarantine_s:.0f} s")
        return 1.0

    def _refill(self, d: _Device, now: float, factor: float) -> None:
        b = self.budgets
        d.scans = min(b.scan_burst / factor, d.scans + max(0.0, now - d.scans_at) * b.scan_rate / factor)
        d.scans_at = max(d.scans_at, now)
        d.cold = min(b.cold_burst / factor, d.cold + max(0.0, now - d.cold_at) * b.cold_rate / factor)
        d.cold_at = max(d.cold_at, now)

    # -- before the body and before the queue ---------------------------------------------------------------
    def precheck(self, device_id: str) -> None:
        """Refuse (429) a known device that could not send a request now, before its body is read: no scan token,
        cold-verify debt, or fewer scans than the request it was last refused for (a device that keeps sending
        1,000-scan requests at a budget of 1,000 scans/s would otherwise have most of them read, hashed, verified
        and parsed, ~4 ms of event loop each, only to be refused after)."""
        self.charge(device_id, 0)

    def charge(self, device_id: str, n: int) -> None:
        """Spend ``n`` scans of the device's bucket, or refuse the whole request with 429 and ``Retry-After``.

        ``n == 0`` only checks: the device has a scan token and no cold-verify debt.
        """
        now = self._clock()
        d = self._get(device_id, now)
        factor = self._factor(d, device_id, now)
        self._refill(d, now, factor)
        b = self.budgets
        scan_rate, cold_rate = b.scan_rate / factor, b.cold_rate / factor
        why = "while it is quarantined (most of its recent scans were bad_signature or unknown_key)"
        quarantined = f" {why}" if factor > 1 else ""
        if d.cold < 0:
            self._refuse("quarantine" if factor > 1 else "cold_verify")
            raise RateLimitedError(
                f"device {device_id!r} exceeded {cold_rate:g} signature verifies/s of codes not verified before "
                f"(burst {b.cold_burst / factor:g}){quarantined}; resend later",
                retry_after=-d.cold / cold_rate,
            )
        # before the body (n == 0): the size it was last refused for, at most what its bucket can ever hold, so a
        # device told to split its batch can still be heard once its bucket is full
        need = max(1, n) if n else max(1, min(d.wanted, int(b.scan_burst / factor)))
        if need > b.scan_burst / factor:
            self._refuse("quarantine")
            raise RateLimitedError(
                f"device {device_id!r} may send at most {b.scan_burst / factor:g} scans per request{quarantined}; "
                "split the batch",
                retry_after=b.scan_burst / factor / scan_rate,
            )
        if d.scans < need:
            self._refuse("quarantine" if factor > 1 else "scans")
            d.wanted = need
            raise RateLimitedError(
                f"device {device_id!r} exceeded {scan_rate:g} scans/s (burst {b.scan_burst / factor:g}){quarantined}",
                retry_after=(need - d.scans) / scan_rate,
            )
        d.scans -= n
        if n:
            d.wanted = 0

    def refund(self, device_id: str, n: int) -> None:
        """Give back what :meth:`charge` took for a request refused later as a whole (queue full, shutdown)."""
        d = self._devices.get(device_id)
        if d is not None:
            d.scans += n

    def enqueue(self, device_id: str, n: int) -> None:
        """Admit ``n`` new scans of the device into the queue, or refuse: its share (429), or pressure (503)."""
        b = self.budgets
        d = self._get(device_id, self._clock())
        if d.queued + n > b.device_queue_cap:
            self._refuse("queue_share")
            raise RateLimitedError(
                f"device {device_id!r} has {d.queued} scans waiting for durability, its share of the ingest queue "
                f"is {b.device_queue_cap}; wait for its answers before sending more",
                retry_after=1.0,
            )
        if self._queued + n > PRESSURE * b.queue_scans and d.queued:
            fair = PRESSURE * b.queue_scans / max(1, self._holders)
            if d.queued + n > fair:
                self._refuse("queue_pressure")
                raise OverloadedError(
                    f"ingest queue under pressure ({self._queued} scans waiting) and device {device_id!r} holds "
                    f"{d.queued}, more than its fair share ({fair:.0f}); retry later",
                    1.0,
                )
        if not d.queued:
            self._holders += 1
        d.queued += n
        self._queued += n

    def settled(self, device_id: str, n: int) -> None:
        """``n`` scans of the device left the queue (durable, or failed)."""
        d = self._devices.get(device_id)
        if d is None:
            return
        d.queued -= n
        self._queued -= n
        if not d.queued:
            self._holders -= 1

    # -- after the verify -----------------------------------------------------------------------------------
    def judged(self, device_id: str, n: int, bad: int, cold: int) -> None:
        """A committed submission of the device: ``n`` scans, ``bad`` of them bad_signature/unknown_key, ``cold``
        signature verifies (not answered from the verified-code set). Debits the cold bucket; quarantines."""
        now = self._clock()
        d = self._get(device_id, now)
        factor = self._factor(d, device_id, now)
        self._refill(d, now, factor)
        d.cold -= cold
        decay = math.exp(-max(0.0, now - d.decayed_at) / DECAY_S)
        d.bad, d.total, d.decayed_at = d.bad * decay + bad, d.total * decay + n, max(d.decayed_at, now)
        b = self.budgets
        mostly_bad = n > 0 and bad >= b.quarantine_share * n
        if d.until and mostly_bad:
            d.until = now + b.quarantine_s  # still misbehaving: the clock starts again
        elif not d.until and d.total >= b.quarantine_min_scans and d.bad >= b.quarantine_share * d.total:
            self._quarantine(device_id, d, now)

    def _quarantine(self, device_id: str, d: _Device, now: float) -> None:
        b = self.budgets
        d.until = now + b.quarantine_s
        d.quarantined_since = time.time()
        d.scans = min(d.scans, b.scan_burst / b.quarantine_factor)
        d.cold = min(d.cold, b.cold_burst / b.quarantine_factor)
        self._quarantined.add(device_id)
        self._metrics.device_quarantines.inc()
        self._notices.emit(
            "quarantine",
            logging.WARNING,
            "device %s quarantined: %.0f %% of its last ~%.0f scans were bad_signature or unknown_key; its budgets are "
            "cut %g-fold until an operator clears it (device-clear) or it behaves for %.0f s",
            device_id,
            100 * d.bad / d.total,
            d.total,
            b.quarantine_factor,
            b.quarantine_s,
        )

    def _release(self, device_id: str, d: _Device, why: str) -> None:
        d.until = 0.0
        d.bad = d.total = 0.0
        self._quarantined.discard(device_id)
        self._notices.emit("release", logging.INFO, "device %s released from quarantine: %s", device_id, why)

    def clear(self, device_id: str) -> bool:
        """An operator's word: the device is released now, its recent counts forgotten and its budgets full again
        (the cause was fixed: its backlog should go up at once). False if it was not held."""
        d = self._devices.get(device_id)
        if d is None or not d.until:
            return False
        self._release(device_id, d, "cleared by an operator")
        d.scans, d.cold = self.budgets.scan_burst, self.budgets.cold_burst
        return True

    def quarantined(self) -> list[Quarantine]:
        """The devices held now (releasing those whose time ran out), by device id."""
        now = self._clock()
        out = []
        for device_id in sorted(self._quarantined):
            d = self._devices[device_id]
            if self._factor(d, device_id, now) > 1:
                wall = time.time()
                share = d.bad / d.total if d.total else 0.0
                out.append(Quarantine(device_id, d.quarantined_since, wall + (d.until - now), share))
        return out

    def queued_by(self, device_id: str) -> int:
        d = self._devices.get(device_id)
        return d.queued if d is not None else 0

    def _refuse(self, cause: str) -> None:
        self._metrics.device_throttled.labels(cause=cause).inc()

    def _refresh(self) -> None:
        self._metrics.device_quarantined.set(len(self.quarantined()))
