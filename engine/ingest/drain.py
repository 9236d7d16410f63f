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
import random
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from engine.durable import replace_file
from engine.errors import EngineError, StoreError, WALError
from engine.ingest import record
from engine.ingest.wal import WALRecord, WriteAheadLog
from engine.ops.metrics import Metrics
from engine.store.store import Store
from engine.threads import keeping_name, single_thread_pool

log = logging.getLogger(__name__)

# ClickHouse error codes for data the store refuses whatever the retry (it answers, the rows are wrong): a record
# refused with one of these is quarantined. Anything else (no answer, timeouts, too many parts, memory, a missing
# table or an unknown error) is retried: a poison verdict must never empty a healthy WAL into the dead letters.
_REFUSED_FOR_GOOD = frozenset(
    {6, 26, 27, 32, 33, 38, 41, 53, 69, 70, 72, 117, 128, 131, 190, 691}
)  # fmt: skip
_CODE = re.compile(r"Code: (\d+)")


def refused_for_good(exc: BaseException) -> bool:
    """True if ``exc`` says the store refused an insert for its content, so retrying cannot help. A failure to build
    the insert from decoded rows (Arrow conversion: a device or key code out of range) counts too: it is a property
    of the record, and the same record fails the same way every time."""
    if isinstance(exc, IndexError | ValueError | TypeError | OverflowError) or type(exc).__module__.startswith(
        "pyarrow"
    ):
        return True
    if not isinstance(exc, StoreError):
        return False
    found = _CODE.search(str(exc))
    return found is not None and int(found.group(1)) in _REFUSED_FOR_GOOD


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
        self._suspect = 0  # the last LSN of a range the store refused: drained one record at a time up to it

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
                # engine_store_up means "the store answers", asked of the store itself, not "the last insert worked";
                # store_ok (readiness) is "the drain can store": a store that answers but keeps refusing inserts
                # (a table detached, too many parts) fills the WAL all the same
                answers = await loop.run_in_executor(self._pool, self._store.ping)
                self.store_ok = False
                self.last_error = str(exc) or type(exc).__name__
                self._metrics.store_up.set(1 if answers else 0)
                self._metrics.store_errors.inc()
                # jitter: several nodes whose shared store came back must not all retry in the same instant
                wait = backoff * random.uniform(0.5, 1.0)
                if isinstance(exc, EngineError):
                    log.warning("store insert failed, retrying in %.1fs: %s", wait, exc)
                else:
                    log.exception("drain step failed unexpectedly, retrying in %.1fs", wait)
                await asyncio.sleep(wait)
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
            elif self._wal.backlog_bytes < self._max_bytes and not self._suspect:
                # Pace inserts: chdb pays a fixed CPU cost per insert into our three tables whatever its size
                # (parts created), so one insert per interval with everything that accumulated is far cheaper
                # than one per WAL batch (bench/store_bench.py; README). A longer interval measured no better end
                # to end. Acks do not wait for this.
                await _wait(self._closing, self._interval_s)

    def step(self) -> int:
        """One insert (blocking; store thread). Returns the rows moved (or records set aside); raises StoreError to
        be retried.

        A record that can never be stored is quarantined (:meth:`_quarantine`) instead of holding the WAL: one that
        cannot be decoded, or that the store refuses for its content while it answers (:func:`refused_for_good`).
        When a range of several records is refused, the drain goes on one record at a time until past that range,
        so only the culprit is set aside and every other record reaches the store."""
        first, last, token = self._next_range()
        if first == 0:
            self._after_insert()  # what a failed publish left (the scans it came with are stored)
            return 0
        records = self._read_range(first, last)
        good: list[WALRecord] = []
        parts: list[record.Rows] = []
        undecodable: list[tuple[WALRecord, str]] = []  # set aside with the range's outcome, not before
        for r in records:
            try:
                parts.append(record.decode(r.payload))
                good.append(r)
            except WALError as exc:  # deterministic: no retry will ever decode it
                undecodable.append((r, f"cannot be decoded: {exc}"))
        if not parts:
            self._set_aside(undecodable)
            self._finish(last)
            return len(records)
        try:
            t0 = time.perf_counter()
            rows = self._store.insert_scans(record.Rows.concat(parts), dedup_token=token)
        except Exception as exc:
            if not refused_for_good(exc) or not self._store.ping():
                raise  # transient (the store does not answer, or may accept it later): retried with backoff
            if len(good) > 1:
                log.warning(
                    "the store refuses WAL records %d..%d (%s); retrying them one at a time to set the culprit aside",
                    first,
                    last,
                    exc,
                )
                self._suspect = max(self._suspect, last)
                self._clear_intent()  # nothing of it was stored: the next ranges are new inserts, one record each
                return 1
            self._set_aside([*undecodable, (good[0], f"cannot be stored (refused for good): {exc}")])
            self._finish(last)
            return 1
        self._set_aside(undecodable)
        self._metrics.insert_seconds.observe(time.perf_counter() - t0)
        self._metrics.insert_rows.observe(rows)
        self._metrics.scans_stored.inc(rows)
        self._finish(last)
        self._after_insert()  # the verified-code set entries of these scans' batches, as one small insert
        return max(rows, 1)

    def _finish(self, last: int) -> None:
        self._wal.checkpoint(last)
        if self._suspect and last >= self._suspect:
            self._suspect = 0

    def _set_aside(self, poison: list[tuple[WALRecord, str]]) -> None:
        for rec, why in poison:
            self._quarantine(rec, why)

    def _quarantine(self, rec: WALRecord, why: str) -> None:
        """Set a record that can never be stored aside, durably, with its LSN, then let the drain pass it."""
        directory = self.dead_letter_dir
        directory.mkdir(mode=0o700, exist_ok=True)
        stem = f"lsn-{rec.lsn}-{rec.lsn}"
        replace_file(directory / f"{stem}.rec", rec.payload)
        meta = {"first_lsn": rec.lsn, "last_lsn": rec.lsn, "bytes": len(rec.payload), "reason": why,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
        replace_file(directory / f"{stem}.json", orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        self._metrics.wal_quarantined.inc()
        log.error(
            'WAL record %d quarantined to %s (%d bytes): %s; the drain goes on (docs/reliability.md, "Poison records")',
            rec.lsn,
            directory / f"{stem}.rec",
            len(rec.payload),
            why,
        )

    @property
    def dead_letter_dir(self) -> Path:
        """Where quarantined WAL records go: one ``.rec`` (the record as it was) and one ``.json`` (LSN range,
        reason, time) per record, beside the WAL segments (which the WAL never mistakes them for)."""
        return Path(self._wal.directory) / "dead-letter"

    def _next_range(self) -> tuple[int, int, str]:
        done = self._wal.checkpoint_lsn
        intent = self._read_intent()
        if intent is not None and intent[1] > done:
            return intent  # redo exactly what may have been half-done before a crash
        one = bool(self._suspect)  # inside a refused range: one record per insert, to find the culprit
        chosen = self._wal.read(done, max_records=1 if one else self._max_records, max_bytes=self._max_bytes)
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

    def _clear_intent(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._intent_path.unlink()

    def _write_intent(self, first: int, last: int, token: str) -> None:
        replace_file(self._intent_path, orjson.dumps({"first": first, "last": last, "token": token}))
