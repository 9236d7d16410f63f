"""Registries read from the store while the engine runs, so a change through one node reaches every node.

Devices, tracers and admin tokens live in the store (one registry per deployment). A node used to read devices
once at start, so a device revoked through node A kept working on node B until B restarted. Now each node re-reads
them every ``--registry-poll-s`` seconds (1 s by default: a revocation through any node is refused by every node
within about two polls, well inside the 5 s the deployment promises) and swaps them in on the event loop. A change
made through this node since the read began is never undone by it (``DeviceRegistry.refresh``). A refresh reads
only the devices changed lately (``updated_at`` within ``CHANGE_OVERLAP_MS`` of the newest change seen, which
covers writers whose clocks lag) and every device once a minute, so a fleet of 100 000 scanners costs the event
loop what changed, not the fleet. Tracers and admin tokens are few and read whole.

An embedded store has one writer, this process, so there is nothing to poll: its registries change only through it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from engine.devices.auth import Device, DeviceRegistry
from engine.errors import EngineError
from engine.ops.metrics import Metrics
from engine.store.store import Store

log = logging.getLogger(__name__)
#: ``Runtime.in_store_thread``: run a blocking store call on the store thread
InStoreThread = Callable[[Callable[[], Any]], Awaitable[Any]]


class Refreshable(Protocol):
    """A registry held in memory and re-read from the store: ``read`` on the store thread, ``apply`` on the loop."""

    def read(self, store: Store) -> Any: ...

    def apply(self, snapshot: Any) -> None: ...


#: A refresh re-reads devices updated this long before the newest change it saw: ``updated_at`` is the writing
#: node's clock, which may lag the others' (device requests themselves allow ``--skew-s``, 300 s by default).
CHANGE_OVERLAP_MS = 300_000
#: Every this many seconds a refresh reads every device, whatever the overlap may have missed.
FULL_REFRESH_S = 60.0


def stored_devices(store: Store, changed_since_ms: int | None = None) -> tuple[list[Device], int]:
    """Devices (all, or those changed since) and the newest ``updated_at`` among them, in ms (0: none)."""
    records = store.devices(changed_since_ms=changed_since_ms)
    newest = max((int(r.updated_at.timestamp() * 1000) for r in records), default=0)
    return [Device(r.device_id, r.public_key, r.revoked, r.label, r.venues) for r in records], newest


class RegistryRefresher:
    """Keeps the devices (and any other :class:`Refreshable`) of this node equal to the store's."""

    def __init__(
        self, store: Store, devices: DeviceRegistry, metrics: Metrics, others: Sequence[Refreshable] = ()
    ) -> None:
        self._store = store
        self._devices = devices
        self._metrics = metrics
        self._others = list(others)
        self._last_ok = time.time()
        self._failing = False
        self._newest_ms: int | None = None  # the newest device change read; None: read every device next
        self._full_at = 0.0
        metrics.on_scrape(lambda: metrics.registry_refresh_age.set(max(0.0, time.time() - self._last_ok)))

    def add(self, other: Refreshable) -> None:
        """Refresh one more registry with the devices (read on the same store thread call)."""
        self._others.append(other)

    def _read(self, since_ms: int | None) -> tuple[list[Device], int, list[Any]]:
        devices, newest = stored_devices(self._store, since_ms)
        return devices, newest, [o.read(self._store) for o in self._others]

    async def refresh_once(self, in_store_thread: InStoreThread) -> int:
        """One read and swap; returns how many devices changed. Reads the devices changed lately (every device
        each ``FULL_REFRESH_S``): a refresh of a large fleet costs the event loop what changed, not the fleet."""
        generation = self._devices.generation
        complete = self._newest_ms is None or time.monotonic() - self._full_at >= FULL_REFRESH_S
        since = None if complete or self._newest_ms is None else self._newest_ms - CHANGE_OVERLAP_MS
        devices, newest, snapshots = await in_store_thread(lambda: self._read(since))
        changed = self._devices.refresh(devices, generation, complete=complete)
        if complete:
            self._full_at = time.monotonic()
        self._newest_ms = max(self._newest_ms or 0, newest)
        for other, snapshot in zip(self._others, snapshots, strict=True):
            other.apply(snapshot)
        self._last_ok = time.time()
        if changed:
            log.info("registry refreshed from the store: %d device(s) changed", changed)
        return changed

    async def keep_refreshing(self, in_store_thread: InStoreThread, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh_once(in_store_thread)
                if self._failing:
                    log.info("registry refresh from the store works again")
                self._failing = False
            except EngineError as exc:  # the store is down: keep what we have, say so once
                if not self._failing:
                    log.warning("registry refresh from the store failed, keeping the registries in memory: %s", exc)
                self._failing = True
            except Exception:
                log.exception("registry refresh failed unexpectedly")
