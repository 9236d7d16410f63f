"""The recent-scan map: answers a device's retry with the verdict it was first given, without a second verify.

A scan is identified by its device *and* its scan id (:func:`scan_key`), never by the scan id alone: keyed by
scan id only, a device that sent an id first made another device's genuine scan with the same id answer
``duplicate`` with the first device's verdict, and never be stored (issue 12). Idempotence belongs to the
producer, as Kafka keys it by (producer id, sequence). Scanners retry whole batches after a timeout or a lost
answer; the map keeps the keys of the last ``capacity`` accepted scans, each pointing at the :class:`Submission`
that carried it (whose future holds the verdict once durable), or at a :class:`Verdicted` pair for scans loaded
from the store or the WAL at start-up. Beyond that window the store's ReplacingMergeTree, keyed by (scan id,
device) too, collapses what slips through. First-in first-out is enough: a key is remembered when accepted and
answered from its submission after.

There is no compiled twin: the map is a dict of ``bytes`` keys, already C-speed; what costs per scan is building
the keys, done with array operations once per request (:func:`scan_keys`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import NamedTuple

import numpy as np

from engine.ingest.intake import Intake


def scan_keys(device_id: str, scan_ids: bytes) -> list[bytes]:
    """The map keys of one device's scans: each 16-byte scan id followed by the device id's UTF-8 bytes.

    The scan id comes first and has a fixed length, so two (device, scan id) pairs give equal keys only if both
    parts are equal. Built with array operations, one call per request (every scan of a request is one device's).
    """
    n = len(scan_ids) // 16
    dev = device_id.encode("utf-8")
    if not dev:
        return np.frombuffer(scan_ids, "V16").tolist()  # "S16" would strip trailing NULs
    out = np.empty((n, 16 + len(dev)), np.uint8)
    out[:, :16] = np.frombuffer(scan_ids, np.uint8).reshape(n, 16)
    out[:, 16:] = np.frombuffer(dev, np.uint8)
    return out.view(f"V{16 + len(dev)}").ravel().tolist()


def scan_key(device_id: str, scan_id: bytes) -> bytes:
    """One scan's map key (see :func:`scan_keys`)."""
    return bytes(scan_id) + device_id.encode("utf-8")


class Verdicted(NamedTuple):
    """A scan answered before this process started (read back from the store)."""

    verdict: int
    reason: int


class Submission:
    """One request's new scans waiting for a verdict and durability.

    The map points every id at its submission and keeps pointing there after the answer: a retried id finds its
    verdict in ``future``'s result (``keys.index`` gives its place). Writing each verdict back into the map
    instead cost a second pass of random lookups per request into a dict of up to ``capacity`` entries.
    """

    __slots__ = ("device_id", "future", "intake", "keys", "received_ms", "t0")

    def __init__(self, intake: Intake, keys: list[bytes], received_ms: int) -> None:
        self.intake: Intake | None = intake  # only the scans that are new; dropped once answered (memory)
        self.device_id = intake.device_id  # kept after the intake is dropped: its queue share is settled by it
        self.keys = keys  # their (scan id, device) keys, the map's keys
        self.received_ms = received_ms
        self.t0 = time.perf_counter()
        self.future: asyncio.Future[tuple[np.ndarray, np.ndarray]] = asyncio.get_running_loop().create_future()

    def __len__(self) -> int:
        return len(self.keys)

    async def verdict_of(self, key: bytes) -> tuple[int, int]:
        """The verdict of one of its scans, waiting for it while the submission is still in flight."""
        verdicts, reasons = await asyncio.shield(self.future)
        k = self.keys.index(key)
        return int(verdicts[k]), int(reasons[k])


Earlier = Submission | Verdicted


class RecentScans:
    """Bounded map of recently accepted scan keys to what answers them (see the module docstring)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # plain dict + FIFO of keys: about half the cost per scan of an OrderedDict's node bookkeeping
        self._map: dict[bytes, Earlier] = {}
        self._order: deque[bytes] = deque()

    def __len__(self) -> int:
        return len(self._map)

    def all_new(self, keys: list[bytes]) -> bool:
        """True for the common request: no key seen before and none twice (checked in C, no Python loop)."""
        return self._map.keys().isdisjoint(keys) and len(set(keys)) == len(keys)

    def get(self, key: bytes) -> Earlier | None:
        return self._map.get(key)

    def seed(self, keys: list[bytes], codes: list[int]) -> None:
        """Remember scans answered before a restart; ``codes`` are ``verdict << 8 | reason``."""
        if self.capacity <= 0:
            return
        for key, code in zip(keys, codes, strict=True):
            if key not in self._map:
                self._order.append(key)
            self._map[key] = Verdicted(code >> 8, code & 0xFF)
        self._trim()

    def remember(self, sub: Submission) -> None:
        """Map the submission's keys to it, in C calls; the entries stay until the FIFO forgets them."""
        if self.capacity > 0:
            self._map.update(dict.fromkeys(sub.keys, sub))
            self._order.extend(sub.keys)
            self._trim()

    def forget(self, sub: Submission) -> None:
        """A submission that failed: let the device's retry of its scans be accepted as new."""
        for key in sub.keys:
            if self._map.get(key) is sub:
                del self._map[key]

    def _trim(self) -> None:
        # A key dropped early (a failed request) may sit in the FIFO twice once retried; popping it then only
        # forgets it a little sooner.
        m, order = self._map, self._order
        while len(m) > self.capacity or len(order) > 2 * self.capacity:
            m.pop(order.popleft(), None)
