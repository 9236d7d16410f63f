"""Moving acknowledged scans from the WAL into ClickHouse, exactly once, whatever fails in between.

The drain reads WAL records after the checkpoint, inserts them as one column-wise insert, and only then moves
the checkpoint. Exactly-once across crashes rests on two things:

1. an *intent* file, fsynced before each insert, naming the LSN range and the insert's deduplication token.
   After a crash the drain first redoes exactly that range with exactly that token, so ClickHouse's block
   deduplication (``insert_deduplication_token`` + ``non_replicated_deduplication_window``) turns the redo
   into a no-op if the insert had landed before the crash;
2. the checkpoint, written durably after the insert returns.

While the store is down the drain retries with capped exponential backoff; the WAL keeps absorbing scans
up to its budget and readiness reports the backlog. All store calls run on one thread: chdb serialises
calls anyway, and it keeps inserts to at most one in flight, as the store prefers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from engine.durable import replace_file
from engine.errors import EngineError, WALError
from engine.ingest import record
from engine.ingest.wal import WALRecord, WriteAheadLog
from engine.ops.metrics import Metrics
from engine.store.store import Store
from engine.threads import keeping_name, single_thread_pool

log = logging.getLogger(__name__)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Wait for ``event`` at most ``timeout`` s. Not ``wait_for``: on 3.11 it can swallow a cancellation that
    races the event being set, and the drain task would then never stop at shutdown (seen in the tests)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class Drain:
    def __init__(
        self,
        wal: WriteAheadLog,
        store: Store,
        metrics: Metrics,
        *,
        max_records: int = 1024,
        max_bytes: int = 12 << 20,
        interval_s: float = 1.0,
        idle_wait_s: float = 0.05,
        after_insert: Callable[[], object] = lambda: None,
    ) -> None:
        self._wal = wal
        self._store = store
        self._metrics = metrics
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._interval_s = interval_s
        self._idle_wait_s = idle_wait_s
        self._after_insert = after_insert
        self._closing = asyncio.Event()
        self._intent_path = Path(wal.directory) / "drain.intent"
        self._pool = single_thread_pool("store")
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.store_ok = True
        self.last_error: str = ""

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The store thread: anything else that must call the embedded store goes through it too."""
        return self._pool

    def notify(self) -> None:
        """New records are durable: wake the drain now instead of at its next poll."""
        self._kick.set()

    def start(self) -> None:
        self._metrics.store_up.set(1)  # the store was just opened and migrated; the drain reports failures
        self._task = asyncio.create_task(self._run(), name="drain")

    async def close(self, timeout: float) -> None:
        """Drain what is in the WAL if the store lets us within ``timeout``; the rest waits for next start."""
        deadline = time.monotonic() + timeout
        self._closing.set()  # no more pacing: flush as fast as the store takes it
        while self._wal.backlog_records and self.store_ok and time.monotonic() < deadline:
            self._kick.set()
            await asyncio.sleep(0.02)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._pool.shutdown(wait=True)
        if self._wal.backlog_records:
            log.warning(
                "%d acknowledged WAL records are not in the store yet (%s); they are replayed at the next start",
                self._wal.backlog_records,
                self.last_error or "drain did not finish in time",
            )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.1
        while True:
            try:
                moved = await loop.run_in_executor(self._pool, keeping_name("store", self.step))
            except Exception as exc:  # the drain must never die silently: retry whatever failed
                self.store_ok = False
                self.last_error = str(exc) or type(exc).__name__
                self._metrics.store_up.set(0)
                self._metrics.store_errors.inc()
                if isinstance(exc, EngineError):
                    log.warning("store insert failed, retrying in %.1fs: %s", backoff, exc)
                else:
                    log.exception("drain step failed unexpectedly, retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if not self.store_ok:
                log.info("store is back; draining the WAL backlog")
            self.store_ok = True
            self._metrics.store_up.set(1)
            if not moved:
                self._kick.clear()
                await _wait(self._kick, self._idle_wait_s * 10)
            elif self._wal.backlog_bytes < self._max_bytes:
                # Pace inserts: chdb pays a fixed CPU cost per insert into our three tables whatever its size
                # (parts created), so one insert per interval with everything that accumulated is far cheaper
                # than one per WAL batch (bench/store_bench.py; README). A longer interval measured no better end
                # to end. Acks do not wait for this.
                await _wait(self._closing, self._interval_s)

    def step(self) -> int:
        """One insert (blocking; store thread). Returns the rows moved; raises StoreError to be retried."""
        first, last, token = self._next_range()
        if first == 0:
            self._after_insert()  # what a failed publish left (the scans it came with are stored)
            return 0
        records = self._read_range(first, last)
        batch = record.decode_many([r.payload for r in records])
        t0 = time.perf_counter()
        rows = self._store.insert_scans(batch, dedup_token=token)
        self._metrics.insert_seconds.observe(time.perf_counter() - t0)
        self._metrics.insert_rows.observe(rows)
        self._metrics.scans_stored.inc(rows)
        self._wal.checkpoint(last)
        self._after_insert()  # the verified-code set entries of these scans' batches, as one small insert
        return max(rows, 1)

    def _next_range(self) -> tuple[int, int, str]:
        done = self._wal.checkpoint_lsn
        intent = self._read_intent()
        if intent is not None and intent[1] > done:
            return intent  # redo exactly what may have been half-done before a crash
        chosen = self._wal.read(done, max_records=self._max_records, max_bytes=self._max_bytes)
        if not chosen:
            return 0, 0, ""
        first, last = chosen[0].lsn, chosen[-1].lsn
        # The random part keeps tokens unique even if a WAL directory is wiped and LSNs start again at 1:
        # a reused token would make ClickHouse silently drop new rows as "duplicates".
        token = f"wal-{first}-{last}-{uuid.uuid4().hex[:8]}"
        self._write_intent(first, last, token)
        return first, last, token

    def _read_range(self, first: int, last: int) -> list[WALRecord]:
        out: list[WALRecord] = []
        after = first - 1
        while after < last:
            got = self._wal.read(after, max_records=last - after)
            if not got:
                raise WALError(f"WAL records {after + 1}..{last} named by the drain intent are missing")
            out.extend(r for r in got if r.lsn <= last)
            after = got[-1].lsn
        return out

    def _read_intent(self) -> tuple[int, int, str] | None:
        try:
            doc = orjson.loads(self._intent_path.read_bytes())
            return int(doc["first"]), int(doc["last"]), str(doc["token"])
        except FileNotFoundError:
            return None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignoring unreadable drain intent %s", self._intent_path)
            return None

    def _write_intent(self, first: int, last: int, token: str) -> None:
        replace_file(self._intent_path, orjson.dumps({"first": first, "last": last, "token": token}))
