"""Stage 2 of the scan path: WAL group commit, after which requests are answered.

Verified batches queue here (at most two ahead: the verify thread works on the next batch while this one is
being fsynced). Everything waiting is appended to the WAL with a single fsync, so one fsync covers many
requests, and only then are the requests answered: a 202 means "durable on this node's disk".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import EngineError, WALError
from engine.ingest.recent import Submission
from engine.ingest.wal import WriteAheadLog
from engine.ops.metrics import Metrics
from engine.threads import single_thread_pool
from engine.verify.contract import BatchResult

log = logging.getLogger(__name__)


@dataclass
class Verified:
    """One verified batch: its submissions in order, their verdict columns and its encoded WAL record."""

    subs: list[Submission]
    result: BatchResult
    record: bytes


class GroupCommit:
    def __init__(
        self,
        wal: WriteAheadLog,
        metrics: Metrics,
        *,
        on_committed: Callable[[Verified], None],
        on_failed: Callable[[list[Submission], BaseException], None],
        on_durable: Callable[[], None] = lambda: None,
        timeout_s: float = 10.0,
    ) -> None:
        self._wal = wal
        self._metrics = metrics
        self._on_committed = on_committed
        self._on_failed = on_failed
        self._on_durable = on_durable
        self._verified: asyncio.Queue[Verified] = asyncio.Queue(maxsize=2)
        self._pool = single_thread_pool("wal")
        self._timeout_s = timeout_s
        #: when an append past its timeout began, while it has not finished (``/readyz``: ``wal_stalled``)
        self.stalled_since = 0.0

    def _unstall(self, _: object) -> None:
        self.stalled_since = 0.0

    async def put(self, verified: Verified) -> None:
        """Queue a verified batch; waits while two are already waiting (backpressure onto the verify stage)."""
        await self._verified.put(verified)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = [await self._verified.get()]
            while not self._verified.empty():
                group.append(self._verified.get_nowait())
            t0 = time.perf_counter()
            append = loop.run_in_executor(self._pool, self._wal.append, [v.record for v in group])
            try:
                # shielded: a timed-out append still finishes on the WAL thread (it cannot be stopped mid-fsync);
                # its devices got a 503 and resend, and their retry is answered as a duplicate or collapsed
                await asyncio.wait_for(asyncio.shield(append), self._timeout_s)
            except TimeoutError:
                self.stalled_since = self.stalled_since or time.monotonic()
                append.add_done_callback(self._unstall)
                stalled = WALError(
                    f"the WAL append did not finish within {self._timeout_s:g} s (--wal-append-timeout-s): the disk "
                    "is stalled; retry later"
                )
                log.error("WAL append stalled: %d batches failed with 503 after %.1f s", len(group), self._timeout_s)
                for v in group:
                    self._on_failed(v.subs, stalled)
                continue
            except EngineError as exc:
                log.error("WAL append failed: %s", exc)
                for v in group:
                    self._on_failed(v.subs, exc)
                continue
            self._metrics.wal_append_seconds.observe(time.perf_counter() - t0)
            for v in group:
                self._on_committed(v)
            self._on_durable()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
