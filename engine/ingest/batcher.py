"""Micro-batching: requests → one verify call per batch → one WAL group commit → acknowledgements.

Why this shape (measured facts in the README): an Ed25519 verify costs ~30× everything else a scan needs, so
the event loop must never verify; it only parses, queues and answers. Batches are cut by size *or* age and
verified in one call to the active verifier on a dedicated thread (the compiled one releases the GIL and
fans out over OpenMP threads, so both cores verify while the loop keeps serving). Verified batches then go
to a second stage that appends everything waiting to the WAL with a single fsync (group commit), and only
then are the requests answered: a 202 means "durable on this node's disk", never "in memory".

The two stages overlap: batch *k+1* verifies while batch *k* is being fsynced. Backpressure is explicit:
when the scans waiting for durability exceed ``queue_scans``, or the WAL is over its disk budget, ``submit``
raises :class:`OverloadedError` (503 + Retry-After) instead of letting memory grow.

Device retries are answered from a bounded map of recent scan ids (with the verdict first given), so a
retried batch is neither re-verified nor re-stored; beyond that window, ClickHouse's ReplacingMergeTree
keyed by scan id collapses what slips through.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from engine.codes.trust import TrustTable
from engine.codes.verdicts import VERDICTS
from engine.errors import EngineError, InternalError, OverloadedError
from engine.ingest import record
from engine.ingest.codeset import SharedCodeSet
from engine.ingest.commit import GroupCommit, Verified
from engine.ingest.intake import Intake
from engine.ingest.recent import Earlier, RecentScans, Submission, Verdicted, scan_keys
from engine.ingest.record import batch_rows
from engine.ingest.wal import WriteAheadLog
from engine.ops.metrics import Metrics
from engine.store.columns import Strings, concat_offsets, dictionary_codes
from engine.store.store import SetRows
from engine.threads import single_thread_pool
from engine.verify.contract import BatchResult, CodeBatch, Verifier

log = logging.getLogger(__name__)


class SubmitResult(NamedTuple):
    """The answer for every accepted item of one request, column-wise (aligned with ``Intake.index``)."""

    stored: np.ndarray  # bool: True "stored" (durable now), False "duplicate" (durable earlier)
    verdict: np.ndarray  # uint8
    reason: np.ndarray  # uint8


def encode_batch(subs: list[Submission], trust: TrustTable, verifier: Verifier, now: int) -> tuple[BatchResult, bytes]:
    """Verify the submissions' codes as one batch and encode the WAL record: whole columns, no per-scan loop."""
    its = [s.intake for s in subs if s.intake is not None]
    if len(its) != len(subs):
        raise EngineError("a submission was encoded after it was answered")
    if len(its) == 1:
        batch = CodeBatch(its[0].codes, its[0].code_offsets)
    else:
        offsets = concat_offsets([i.code_offsets for i in its], [len(i.codes) for i in its])
        batch = CodeBatch(b"".join(i.codes for i in its), offsets)
    result = verifier.verify_batch(batch, now)
    per_sub, devices = dictionary_codes([i.device_id for i in its])
    lengths = [len(s) for s in subs]
    rows = batch_rows(
        scan_id=b"".join(i.scan_ids for i in its),
        device_code=np.repeat(per_sub, lengths),
        devices=[d[0] for d in devices],
        venue_id=Strings.concat([Strings(i.venues, i.venue_offsets) for i in its]),
        direction=np.concatenate([i.directions for i in its]),
        scanned_ms=np.concatenate([i.scanned_ms for i in its]),
        received_ms=np.repeat(np.array([s.received_ms for s in subs], np.int64), lengths),
        batch=batch,
        result=result,
        trust=trust,
    )
    return result, record.encode(rows)


class Batcher:
    def __init__(
        self,
        *,
        verifier: Verifier,
        trust: TrustTable,
        wal: WriteAheadLog,
        metrics: Metrics,
        batch_size: int,
        batch_age_s: float,
        queue_scans: int,
        wal_budget_bytes: int,
        recent_ids: int,
        on_durable: Callable[[], None] = lambda: None,
        codeset: SharedCodeSet | None = None,
        wal_append_timeout_s: float = 10.0,
    ) -> None:
        self._verifier = verifier
        self._codeset = codeset
        self._trust = trust
        self._wal = wal
        self._metrics = metrics
        self._batch_size = batch_size
        self._batch_age_s = batch_age_s
        self._queue_scans = queue_scans
        self._wal_budget = wal_budget_bytes
        self._recent = RecentScans(recent_ids)
        self._queue: deque[Submission] = deque()
        self._queued_scans = 0  # queued, verifying or in the WAL stage: everything not yet answered
        self._waiting_scans = 0  # in self._queue only
        self._wake = asyncio.Event()
        self._commit = GroupCommit(
            wal, metrics, on_committed=self._committed, on_failed=self._fail, on_durable=on_durable,
            timeout_s=wal_append_timeout_s,
        )  # fmt: skip
        self._verify_pool = single_thread_pool("verify")
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        metrics.on_scrape(self._refresh_metrics)
        metrics.set_cache_source(lambda: (self._verifier.cache_hits, self._verifier.cache_lookups))

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._batch_loop(), name="batcher"),
            asyncio.create_task(self._commit.run(), name="wal-commit"),
        ]

    async def close(self, timeout: float) -> None:
        """Refuse new scans, finish what was accepted (verify + WAL), then stop the stages."""
        self._closing = True
        self._wake.set()
        deadline = time.monotonic() + timeout
        while self._queued_scans and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._verify_pool.shutdown(wait=True)
        self._commit.close()

    def remember(self, keys: list[bytes], codes: list[int]) -> None:
        """Seed the recent-id map (at start-up, from what the store already holds); ``keys`` from ``scan_key``."""
        self._recent.seed(keys, codes)

    async def set_trust(self, trust: TrustTable) -> None:
        """Swap the trust list between two batches (the verify thread serialises it with verify calls)."""

        def swap() -> None:
            self._verifier.set_trust(trust)
            self._trust = trust

        await asyncio.get_running_loop().run_in_executor(self._verify_pool, swap)

    async def load_shared(self, rows: SetRows) -> None:
        """Add the deployment's new set entries between two batches (on the verify thread, like ``set_trust``)."""
        if self._codeset is not None:
            codeset = self._codeset
            await asyncio.get_running_loop().run_in_executor(
                self._verify_pool, lambda: codeset.load(self._verifier, self._trust, rows)
            )

    @property
    def wal_stalled(self) -> bool:
        """A WAL append has been running past its timeout (``/readyz``: the node cannot make scans durable)."""
        return bool(self._commit.stalled_since)

    @property
    def queued_scans(self) -> int:
        return self._queued_scans

    @property
    def verifier(self) -> Verifier:
        return self._verifier

    # -- intake ---------------------------------------------------------------------------------------------
    async def submit(self, intake: Intake, received_ms: int) -> SubmitResult:
        """Queue the request's new scans; answer every accepted item once its scan is durable (now or before)."""
        n = len(intake)
        keys = scan_keys(intake.device_id, intake.scan_ids)  # (scan id, device): one device can't claim another's
        recent = self._recent
        fresh: list[int] | None = None  # None: every scan new and distinct (the common request, no Python loop)
        earlier: dict[int, Earlier] = {}  # position -> what answers it, for scans accepted before
        repeated: dict[int, int] = {}  # position -> earlier position in this same request (stored once)
        if not recent.all_new(keys):
            fresh = []
            seen_here: dict[bytes, int] = {}
            for pos, sid in enumerate(keys):
                prev = recent.get(sid)
                if prev is not None:
                    earlier[pos] = prev
                elif sid in seen_here:
                    repeated[pos] = seen_here[sid]
                else:
                    seen_here[sid] = pos
                    fresh.append(pos)
        verdict = np.zeros(n, np.uint8)
        reason = np.zeros(n, np.uint8)
        if fresh is None or fresh:
            fresh_keys = keys if fresh is None else [keys[p] for p in fresh]
            self._admit(len(fresh_keys))
            sub = Submission(intake if fresh is None else intake.take(fresh), fresh_keys, received_ms)
            recent.remember(sub)
            self._queue.append(sub)
            self._queued_scans += len(sub)
            self._waiting_scans += len(sub)
            self._wake.set()
            try:
                vs, rs = await asyncio.shield(sub.future)
            except BaseException:
                recent.forget(sub)
                raise
            if fresh is None:
                return SubmitResult(np.ones(n, np.bool_), vs, rs)
            verdict[fresh] = vs
            reason[fresh] = rs
        stored = np.zeros(n, np.bool_)
        if fresh:
            stored[fresh] = True
        for pos, prev in earlier.items():
            verdict[pos], reason[pos] = prev if isinstance(prev, Verdicted) else await prev.verdict_of(keys[pos])
        for pos, first in repeated.items():
            verdict[pos], reason[pos] = verdict[first], reason[first]
        self._metrics.scans_duplicate.inc(len(earlier) + len(repeated))
        return SubmitResult(stored, verdict, reason)

    def _admit(self, n: int) -> None:
        if self._closing:
            self._metrics.overload.labels(cause="shutdown").inc()
            raise OverloadedError("the engine is shutting down; retry against another node or later", 5.0)
        if self._queued_scans + n > self._queue_scans:
            self._metrics.overload.labels(cause="queue").inc()
            raise OverloadedError(f"ingest queue is full ({self._queued_scans} scans waiting); retry later", 1.0)
        if self._wal.backlog_bytes > self._wal_budget:
            self._metrics.overload.labels(cause="wal_budget").inc()
            raise OverloadedError("store backlog exceeds the WAL disk budget; retry later", 5.0)

    # -- stage 1: cut and verify ----------------------------------------------------------------------------
    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._queue:
                continue
            if self._waiting_scans < self._batch_size and not self._closing:
                await asyncio.sleep(self._batch_age_s)  # let a batch fill up; bounded added latency
            while self._queue:
                subs = self._take_batch()
                try:
                    verified = await loop.run_in_executor(self._verify_pool, self._verify, subs)
                except Exception:  # a bug in a verifier must fail these requests, not the engine
                    # a 500 with the id of this log line, not a 503 "overloaded": a retry would hit the same bug
                    error_id = secrets.token_hex(6)
                    log.exception(
                        "verification failed (error %s) for a batch of %d scans", error_id, sum(map(len, subs))
                    )
                    self._fail(subs, InternalError(f"internal error {error_id} while verifying; it has been logged"))
                    continue
                await self._commit.put(verified)

    def _take_batch(self) -> list[Submission]:
        subs = [self._queue.popleft()]
        n = len(subs[0])
        while self._queue and n + len(self._queue[0]) <= self._batch_size:
            s = self._queue.popleft()
            subs.append(s)
            n += len(s)
        self._waiting_scans -= n
        self._metrics.batch_size.observe(n)
        return subs

    def _verify(self, subs: list[Submission]) -> Verified:
        """Runs on the verify thread: verify (GIL released inside) and encode the WAL record."""
        t0 = time.perf_counter()
        result, rec = encode_batch(subs, self._trust, self._verifier, int(time.time()))
        self._metrics.verify_seconds.observe(time.perf_counter() - t0)
        if self._codeset is not None:
            self._codeset.collect(result, self._trust)
        return Verified(subs, result, rec)

    # -- stage 2: group commit (engine.ingest.commit) ------------------------------------------------------
    def _committed(self, v: Verified) -> None:
        start = 0
        verdicts, reasons = v.result.verdict, v.result.reason
        counts = np.bincount(verdicts, minlength=len(VERDICTS))
        for label, c in zip(VERDICTS, counts.tolist(), strict=True):
            if c:
                self._metrics.scans_acked.labels(verdict=label).inc(c)
        now = time.perf_counter()
        for s in v.subs:
            end = start + len(s)
            vs, rs = verdicts[start:end], reasons[start:end]
            s.intake = None  # the map keeps the submission for its ids: only their verdicts are needed now
            self._queued_scans -= len(s)
            self._metrics.ack_seconds.observe(now - s.t0)
            if not s.future.done():
                s.future.set_result((vs, rs))
            start = end

    def _fail(self, subs: list[Submission], exc: BaseException) -> None:
        for s in subs:
            self._queued_scans -= len(s)
            if not s.future.done():
                overloaded = isinstance(exc, OverloadedError | InternalError)
                s.future.set_exception(exc if overloaded else OverloadedError(str(exc), 2.0))

    def _refresh_metrics(self) -> None:
        m = self._metrics
        m.queue_depth.set(self._queued_scans)
        hits, lookups = m.cache_counts()
        m.cache_hit_ratio.set(hits / lookups if lookups else 0.0)
