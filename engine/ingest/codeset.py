"""The verified-code set shared by every node of a deployment through the store (docs/payload.md section 6).

A code's signature needs checking once per deployment, not once per node: a person's code is static for months
and every node sees the same population. So each node

* **publishes** the entries its verifier added (``BatchResult.newly_verified``: tag, the issuer's kid, exp) into
  ``verified_codes`` (migration 0011), each row with a MAC under the deployment secret, batched with the drain's
  scan inserts (one small insert after each scans insert, on the store thread; never on the ack path);
* **warm-loads** the set from the store at start, before it serves (the newest ``cache_size`` rows when the
  deployment holds more than the node's set can);
* **polls** for the other nodes' additions every ``set_poll_s`` seconds, reading rows the store added since the
  last poll (with an overlap, because a row's ``added_at`` is taken when its insert starts, not when it shows).

Only rows whose MAC the verifier reproduces are used (``Verifier.load_set`` checks each one): whoever can write
to the store but lacks the secret cannot add an entry that lets a forged code skip its signature check; such rows
are counted (``engine_codeset_refused_total``) and the code is verified as if the row were not there. Rows of a
revoked or unknown key are not loaded, and a revoked key's entries already in memory are masked, because the
verifier checks revocation before it looks in the set. Losing an unpublished entry (a crash) costs one more
verify somewhere, never a wrong verdict, so entries are not made durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np

from engine.codes.trust import TrustTable
from engine.errors import EngineError
from engine.ops.metrics import Metrics
from engine.store.store import SetRows, Store
from engine.verify.contract import ROW_MAC_PREFIX, BatchResult, Verifier, set_key

log = logging.getLogger(__name__)
T = TypeVar("T")

#: A poll re-reads the rows added this long before the newest one it saw: an insert's ``added_at`` is taken when
#: it starts, so a slow insert can show up after a poll that already read later rows.
POLL_OVERLAP_MS = 10_000
#: Unpublished entries kept while the store refuses them; beyond this the oldest are dropped (counted): they
#: only cost another node a verify.
MAX_PENDING = 1_000_000


def row_macs(key: bytes, tags: bytes, kids: bytes, exps: np.ndarray) -> bytes:
    """The MACs of packed rows, as ``engine.verify.contract.row_mac`` computes one (held to it by the tests)."""
    out = bytearray()
    for i, exp in enumerate(np.asarray(exps, np.int64).tolist()):
        msg = ROW_MAC_PREFIX + tags[16 * i : 16 * i + 16] + kids[8 * i : 8 * i + 8] + max(0, exp).to_bytes(8, "big")
        out += hashlib.blake2b(msg, digest_size=16, key=key).digest()
    return bytes(out)


def usable_rows(rows: SetRows, trust: TrustTable) -> SetRows:
    """The rows whose key is in the trust list and not revoked: a revoked key's entries are never loaded."""
    n = len(rows)
    if n == 0:
        return rows
    live = [trust.kids[8 * i : 8 * i + 8] for i in range(len(trust.revoked)) if not trust.revoked[i]]
    kids = np.frombuffer(rows.kids, "V8")
    keep = np.isin(kids, np.array(live, "V8")) if live else np.zeros(n, np.bool_)
    if keep.all():
        return rows
    idx = np.flatnonzero(keep)
    tags = np.frombuffer(rows.tags, "V16")[idx].tobytes()
    macs = np.frombuffer(rows.macs, "V16")[idx].tobytes()
    return SetRows(tags, kids[idx].tobytes(), rows.exps[idx], macs, rows.newest_ms)


class SharedCodeSet:
    """One node's side of the deployment-wide set: what it verified goes out, what others verified comes in."""

    def __init__(self, store: Store, metrics: Metrics, secret: bytes, node: str, max_entries: int = 0) -> None:
        self._store = store
        self._max_entries = max_entries  # the set's bound: a warm load reads at most this many (0: no bound)
        self._metrics = metrics
        self._key = set_key(secret)
        self._node = node
        self._lock = threading.Lock()  # collect (verify thread) against publish (store thread)
        self._pending: list[tuple[bytes, bytes, np.ndarray, float]] = []
        self._pending_rows = 0
        self._newest_ms: int | None = None

    # -- out: what this node verified -------------------------------------------------------------------------
    def collect(self, result: BatchResult, trust: TrustTable) -> None:
        """Queue the entries one verify batch added (verify thread). Expired codes are not published."""
        new = result.newly_verified
        if not new.any():
            return
        idx = np.flatnonzero(new & (result.exp > int(time.time())) & (result.key_index >= 0))
        if len(idx) == 0:
            return
        tags = np.ascontiguousarray(result.set_tag[idx]).tobytes()
        kid_table = np.frombuffer(trust.kids, "V8")
        kids = kid_table[result.key_index[idx]].tobytes()
        exps = result.exp[idx].astype(np.int64)
        with self._lock:
            self._pending.append((tags, kids, exps, time.monotonic()))
            self._pending_rows += len(idx)
            while self._pending_rows > MAX_PENDING and len(self._pending) > 1:
                dropped = self._pending.pop(0)
                self._pending_rows -= len(dropped[2])
                self._metrics.codeset_publish_dropped.inc(len(dropped[2]))

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def publish(self) -> int:
        """Insert everything queued (store thread, after a scans insert); on failure keep it for the next try."""
        with self._lock:
            batches, self._pending, self._pending_rows = self._pending, [], 0
        if not batches:
            return 0
        tags = b"".join(b[0] for b in batches)
        kids = b"".join(b[1] for b in batches)
        exps = np.concatenate([b[2] for b in batches])
        try:
            n = self._store.insert_verified_codes(tags, kids, exps, row_macs(self._key, tags, kids, exps), self._node)
        except EngineError as exc:
            with self._lock:
                self._pending[:0] = batches
                self._pending_rows += len(exps)
            log.warning("publishing %d verified codes failed, kept for the next insert: %s", len(exps), exc)
            return 0
        self._metrics.codeset_published.inc(n)
        self._metrics.codeset_publish_lag.observe(time.monotonic() - batches[0][3])
        return n

    # -- in: what the deployment verified ----------------------------------------------------------------------
    def read(self, *, since_last: bool) -> SetRows:
        """Rows to load (store thread): all unexpired ones at start, else those added since the last read."""
        since = None
        if since_last and self._newest_ms is not None:
            since = self._newest_ms - POLL_OVERLAP_MS
        newest = self._max_entries if self._max_entries > 0 and not since_last else None
        rows = self._store.verified_codes(now=int(time.time()), since_ms=since, newest=newest)
        if len(rows):
            self._newest_ms = max(self._newest_ms or 0, rows.newest_ms)
        elif self._newest_ms is None:
            self._newest_ms = 0  # nothing yet: polls read the (empty) table whole until a first row shows
        return rows

    def load(self, verifier: Verifier, trust: TrustTable, rows: SetRows) -> tuple[int, int]:
        """Add authenticated rows of live keys to the verifier's set (verify thread, or before serving)."""
        live = usable_rows(rows, trust)
        added, refused = verifier.load_set(live.tags, live.kids, live.exps, live.macs, int(time.time()))
        self._metrics.codeset_loaded.inc(added)
        self._metrics.codeset_refused.inc(refused)
        if refused:
            log.warning(
                "refused %d verified_codes rows whose MAC this node cannot reproduce (written without the "
                "deployment secret, or by a node with another secret); their codes are verified",
                refused,
            )
        return added, refused

    async def warm_load(self, verifier: Verifier, trust: TrustTable) -> tuple[int, int, float]:
        """At start, before serving: the whole unexpired set; returns (added, refused, seconds)."""
        t0 = time.perf_counter()
        rows = await asyncio.to_thread(self.read, since_last=False)
        added, refused = await asyncio.to_thread(self.load, verifier, trust, rows)
        seconds = time.perf_counter() - t0
        self._metrics.codeset_warm_load_seconds.set(seconds)
        return added, refused, seconds

    async def keep_polling(
        self,
        in_store_thread: Callable[[Callable[[], SetRows]], Awaitable[SetRows]],
        load: Callable[[SetRows], Awaitable[object]],
        interval_s: float,
    ) -> None:
        """Every ``interval_s``: read the others' additions on the store thread, load them between two batches."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                rows = await in_store_thread(lambda: self.read(since_last=True))
                if len(rows):
                    await load(rows)
            except EngineError as exc:  # the store is down: the drain reports it; try again next time
                log.debug("verified-code poll failed: %s", exc)
            except Exception:
                log.exception("verified-code poll failed unexpectedly")


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel the poll task and wait for it."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
