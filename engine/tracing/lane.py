"""Traces on their own lane: ingest (acks, WAL, inserts) never waits behind a trace.

Before this lane a trace ran on the drain's one store thread, through the store's one client and lock, and its
answer was encoded on the event loop: a year-long venue trace (40 s, 209 MB) held every insert, every readiness
probe and every request behind it. Now:

* **Own connections, own threads.** The lane opens its own store clients (one per concurrent trace, plus one for
  control: cancelling and readiness pings) and runs traces on its own threads. Measured with
  ``python bench/lane_probe.py`` (README, "Measured"): chdb runs a read from a second client while the first
  inserts (the inserts' latency beside a heavy read stayed the same order as alone), and a ClickHouse server
  does so by design, so the lane uses separate clients on both backends rather than scheduling traces between
  inserts.
* **Caps.** Every query of a trace carries ``max_execution_time`` (what remains of the trace's time budget) and
  ``max_rows_to_read``; the rows a trace brings back from the store in all, the rows of its answer and the bytes
  of its encoded answer are capped too. Past a cap the trace stops with :class:`TraceLimitError` (413) or
  :class:`TraceTooSlowError` (422), whose answer names the cap and the parameters that narrow the trace.
* **Off the event loop.** The answer is encoded (JSON or CSV) on the lane thread; the handler only streams the
  bytes out in chunks.
* **Cancelled when the client goes away.** The handler watches its connection while the trace runs; when the
  client disconnects (or the handler is cancelled), the lane marks the trace cancelled, kills its running
  ClickHouse query (``KILL QUERY`` on the control client, found by the marker comment every lane query carries),
  and no further query of that trace starts.
* **Per-tracer concurrency.** A tracer may run ``per_tracer`` traces at once; beyond that, and beyond the
  lane's ``concurrency``, a trace is refused at once with 429 and ``Retry-After`` (the hourly allowance stays
  :mod:`engine.tracing.quotas`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from engine.errors import RateLimitedError, StoreError, TraceLimitError, TraceTooSlowError
from engine.store.store import Store
from engine.threads import keeping_name, name_this_thread

log = logging.getLogger(__name__)
T = TypeVar("T")

#: ClickHouse error codes that mean "this query is too big", not "the store is down"
_TOO_SLOW = {159}  # TIMEOUT_EXCEEDED
_TOO_MANY = {158, 307, 396}  # TOO_MANY_ROWS, TOO_MANY_BYTES, TOO_MANY_ROWS_OR_BYTES
_CANCELLED = {394}  # QUERY_WAS_CANCELLED
_CODE = re.compile(r"Code: (\d+)")

#: what makes a trace smaller, said in every cap refusal
NARROW = [
    "a shorter period: from/to closer together, or a smaller days",
    "without include_unverified (only verified scans are read then)",
    "a person trace: a lower second_degree_limit or second_degree_cap, or no second_degree",
]


@dataclass(frozen=True)
class LaneLimits:
    """The lane's caps (``--trace-*`` flags; docs/operations.md, "Tracing lane")."""

    concurrency: int = 2
    per_tracer: int = 1
    timeout_s: float = 20.0
    max_rows_read: int = 50_000_000
    max_rows: int = 100_000
    max_bytes: int = 64 << 20


class TraceCancelled(Exception):
    """The client went away: the trace was stopped and nothing is answered (not an EngineError: nobody hears it)."""


@dataclass
class Ticket:
    """One trace on the lane: its id (in the marker comment of its queries), deadline and cancellation flag."""

    id: str
    tracer: str
    deadline: float
    cancelled: threading.Event
    rows: int = 0
    running: bool = False

    @property
    def marker(self) -> str:
        return f"/* trace-lane:{self.id} */"


@dataclass(frozen=True)
class Encoded(Generic[T]):
    """A trace's answer, encoded on the lane thread."""

    result: T
    body: bytes
    content_type: str
    rows: int


def _code(exc: BaseException) -> int | None:
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        code = getattr(seen, "code", None)
        if isinstance(code, int) and code:
            return code
        found = _CODE.search(str(seen))
        if found:
            return int(found.group(1))
        seen = seen.__cause__ or seen.__context__
    return None


class TraceLane:
    """The tracing lane of one engine: readers, threads, caps, cancellation and per-tracer concurrency."""

    def __init__(self, open_reader: Callable[[], Store], limits: LaneLimits | None = None) -> None:
        self.limits = limits or LaneLimits()
        self._open_reader = open_reader
        self._readers: queue.SimpleQueue[Store] = queue.SimpleQueue()
        self._all: list[Store] = []
        self._control: Store | None = None
        self._pool = ThreadPoolExecutor(
            self.limits.concurrency, thread_name_prefix="trace", initializer=name_this_thread, initargs=("trace",)
        )
        self._running: dict[str, int] = {}
        self._in_flight = 0
        self._tickets: dict[str, Ticket] = {}
        self._pinged = (True, time.monotonic())  # (answered, when): the store was just opened and migrated
        self.cancelled = 0  # traces stopped because their client went away
        self.killed = 0  # of which a running ClickHouse query was killed

    # -- lifecycle ------------------------------------------------------------------------------------------
    def open(self) -> TraceLane:
        """Open the lane's clients (blocking: call it in a thread)."""
        for _ in range(self.limits.concurrency):
            reader = self._open_reader()
            self._all.append(reader)
            self._readers.put(reader)
        self._control = self._open_reader()
        return self

    def close(self) -> None:
        for t in list(self._tickets.values()):
            t.cancelled.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for s in [*self._all, *([self._control] if self._control else [])]:
            s.close()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def ping(self) -> bool:
        """The store answers, asked on the lane's control client: never queued behind an insert or a trace."""
        return self._control is not None and self._control.ping()

    async def keep_pinging(self, interval_s: float = 1.0, on_result: Callable[[bool], object] = bool) -> None:
        """Ping the store every ``interval_s`` on the control client, so that ``/readyz`` answers from the last
        result at once: a probe never waits on the store (a load balancer's timeout would eject a node that only
        has a slow moment), and a store that stops answering is seen within ``stale_s``."""
        while True:
            ok = await asyncio.to_thread(self.ping)
            self._pinged = (ok, time.monotonic())
            on_result(ok)
            await asyncio.sleep(interval_s)

    def store_answers(self, stale_s: float = 10.0) -> bool:
        """The last background ping succeeded, and no longer ago than ``stale_s`` (a hung ping counts as down)."""
        ok, at = self._pinged
        return ok and time.monotonic() - at <= stale_s

    # -- running a trace ------------------------------------------------------------------------------------
    async def run(
        self,
        tracer: str,
        compute: Callable[[Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]], T],
        size: Callable[[T], int],
        encode: Callable[[T], tuple[bytes, str]],
        *,
        gone: Callable[[], bool] = lambda: False,
    ) -> Encoded[T]:
        """Run ``compute(query)`` then ``encode`` on a lane thread with this lane's caps; refuse at once (429) if the
        tracer or the lane is at its concurrency. ``gone()`` is polled while it runs: True cancels the trace."""
        lim = self.limits
        if self._running.get(tracer, 0) >= lim.per_tracer:
            raise RateLimitedError(
                f"tracer {tracer!r} already runs {lim.per_tracer} trace(s) at once (--trace-per-tracer); wait for "
                "it to finish",
                2.0,
            )
        if self._in_flight >= lim.concurrency:
            raise RateLimitedError(
                f"the tracing lane runs {lim.concurrency} traces at once (--trace-concurrency); retry shortly", 2.0
            )
        ticket = Ticket(secrets.token_hex(8), tracer, time.monotonic() + lim.timeout_s, threading.Event())
        self._running[tracer] = self._running.get(tracer, 0) + 1
        self._in_flight += 1
        self._tickets[ticket.id] = ticket
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._pool, keeping_name("trace", lambda: self._work(ticket, compute, size, encode)))
        # released when the thread is done, not when the handler is: a cancelled trace holds its slot (and its
        # reader) until its query has been killed and its thread has stopped
        job.add_done_callback(lambda f: self._release(ticket, f))
        return await self._watch(job, ticket, gone)

    def _release(self, ticket: Ticket, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled():
            fut.exception()  # retrieved: a cancelled trace's TraceCancelled is nobody's to hear
        self._tickets.pop(ticket.id, None)
        self._in_flight -= 1
        left = self._running[ticket.tracer] - 1
        if left:
            self._running[ticket.tracer] = left
        else:
            del self._running[ticket.tracer]

    async def _watch(self, fut: asyncio.Future[Encoded[T]], ticket: Ticket, gone: Callable[[], bool]) -> Encoded[T]:
        try:
            while True:
                done, _ = await asyncio.wait({fut}, timeout=0.2)
                if done:
                    return fut.result()
                if gone():
                    log.info("trace %s of tracer %s cancelled: the client went away", ticket.id, ticket.tracer)
                    await self.cancel(ticket)
                    raise TraceCancelled(ticket.id)
        except asyncio.CancelledError:
            await asyncio.shield(self.cancel(ticket))
            raise

    async def cancel(self, ticket: Ticket) -> None:
        """Stop a trace: no further query of it starts, and its running one is killed in ClickHouse."""
        ticket.cancelled.set()
        self.cancelled += 1
        if ticket.running and self._control is not None:
            with contextlib.suppress(StoreError):
                await asyncio.to_thread(self._kill, ticket)
                self.killed += 1

    def _kill(self, ticket: Ticket) -> None:
        assert self._control is not None
        self._control.command(
            "KILL QUERY WHERE query LIKE {m:String} AND query NOT LIKE '%KILL QUERY%' ASYNC",
            {"m": f"%{ticket.marker}%"},
        )

    def _work(
        self,
        ticket: Ticket,
        compute: Callable[[Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]], T],
        size: Callable[[T], int],
        encode: Callable[[T], tuple[bytes, str]],
    ) -> Encoded[T]:
        reader = self._readers.get()

        def query(sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
            return self._query(reader, ticket, sql, params)

        try:
            result = compute(query)
        finally:
            self._readers.put(reader)
        self._check(ticket)
        rows = size(result)
        if rows > self.limits.max_rows:
            raise TraceLimitError(
                f"the trace's answer has {rows} rows, more than the {self.limits.max_rows} a trace may answer "
                "(--trace-max-rows): narrow it",
                cap="max_rows",
                limit=self.limits.max_rows,
                narrow=NARROW,
            )
        body, content_type = encode(result)
        if len(body) > self.limits.max_bytes:
            raise TraceLimitError(
                f"the trace's answer is {len(body)} bytes, more than the {self.limits.max_bytes} a trace may answer "
                "(--trace-max-mb): narrow it",
                cap="max_bytes",
                limit=self.limits.max_bytes,
                narrow=NARROW,
            )
        return Encoded(result, body, content_type, rows)

    def _check(self, ticket: Ticket) -> float:
        if ticket.cancelled.is_set():
            raise TraceCancelled(ticket.id)
        left = ticket.deadline - time.monotonic()
        if left <= 0:
            raise self._too_slow()
        return left

    def _too_slow(self) -> TraceTooSlowError:
        return TraceTooSlowError(
            f"the trace ran past its {self.limits.timeout_s:g} s (--trace-timeout-s) and was stopped: narrow it",
            cap="timeout_s",
            limit=self.limits.timeout_s,
            narrow=NARROW,
        )

    def _query(self, reader: Store, ticket: Ticket, sql: str, params: dict[str, Any] | None) -> list[tuple[Any, ...]]:
        left = self._check(ticket)
        lim = self.limits
        settings = {
            "max_execution_time": max(0.1, math.floor(left * 10) / 10),
            "timeout_overflow_mode": "throw",
            "max_rows_to_read": lim.max_rows_read,
            "read_overflow_mode": "throw",
            "max_result_rows": max(1, lim.max_rows - ticket.rows),
            "result_overflow_mode": "throw",
            # small blocks: the driver turns each block into Python rows in one call holding the GIL, and the
            # event loop waits for the whole call; a block of 8,192 rows is a short wait, 65,536 a long one
            "max_block_size": 8192,
        }
        ticket.running = True
        try:
            rows = reader.query(f"{sql} {ticket.marker}", params, settings=settings)
        except StoreError as exc:
            if ticket.cancelled.is_set():
                raise TraceCancelled(ticket.id) from exc
            code = _code(exc)
            if code in _TOO_SLOW:
                raise self._too_slow() from exc
            if code in _TOO_MANY:
                raise TraceLimitError(
                    f"the trace reads more than the store allows one trace (--trace-max-rows-read "
                    f"{lim.max_rows_read} rows read per query, --trace-max-rows {lim.max_rows} rows back): narrow it",
                    cap="max_rows_read",
                    limit=lim.max_rows_read,
                    narrow=NARROW,
                ) from exc
            if code in _CANCELLED:
                raise TraceCancelled(ticket.id) from exc
            raise
        finally:
            ticket.running = False
        ticket.rows += len(rows)
        if ticket.rows > lim.max_rows:
            raise TraceLimitError(
                f"the trace brought back more than {lim.max_rows} rows from the store (--trace-max-rows): narrow it",
                cap="max_rows",
                limit=lim.max_rows,
                narrow=NARROW,
            )
        return rows
