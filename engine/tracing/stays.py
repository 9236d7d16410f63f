"""Stays paired once: the job that keeps the ``stays`` table (migration 0012) in step with ``scans``.

Why: pairing at query time reads every scan at the venues an index case visited, half a day either side, and
at a hot venue that is thousands of people a trace then throws away. The pairing rule (:mod:`engine.tracing.pairing`,
the one reference) is local: the stay a scan anchors depends only on the scan itself and its neighbour in its
(person, venue) group, within ``max_stay``. So stays can be paired once, kept in a table ordered by venue and
anchor time, and re-paired only around scans that arrive: a trace then reads the stays that touch its windows,
with the overlap condition applied inside ClickHouse (:mod:`engine.tracing.presence`).

How new scans are found: by ``_block_number`` of ``scans`` (ClickHouse numbers every insert's block, in commit
order, and migration 0012 keeps the number per row through merges). The job pairs everything up to a block
horizon and records it in ``stays_horizon``; a scan that arrives late or out of order (a device offline for a
day) is in a newer block whatever its ``scanned_at``, so it is found like any other. A reader treats the groups
with scans past the horizon as fresh and pairs them from scans, so an answer never depends on how far the job
has got.

Each run is one ``INSERT ... SELECT`` per unit of work, inside ClickHouse: window functions give every scan its
neighbours in both scopes (trusted scans only, and every scan), and the rule becomes a few ``multiIf``. The first
run (or one that finds a great many new scans) rebuilds everything, a chunk of venues per call, so an engine's
inserts interleave with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from engine.codes.verdicts import TRUSTED, Verdict
from engine.errors import StoreError
from engine.store.store import Store
from engine.tracing.model import MINUTE_MS, TraceOptions

log = logging.getLogger(__name__)

TRUSTED_SQL = "verdict IN (" + ", ".join(f"'{v.label}'" for v in sorted(TRUSTED)) + ")"
ANCHORS_SQL = f"verdict != '{Verdict.MALFORMED.label}'"  # a malformed code names nobody: it anchors nothing
#: Rows per rebuild chunk: one ``INSERT ... SELECT`` sorts this many rows for its windows (memory, and the
#: longest the store thread is held).
REBUILD_CHUNK_ROWS = 1_000_000
#: More new scans than this in one run and re-pairing everything by venue chunks costs less than the
#: group-by-group path (whose set of (person, venue) pairs grows with them).
REBUILD_ABOVE_ROWS = 2_000_000


@dataclass(frozen=True)
class PairingParams:
    """The pairing parameters the stays are paired with: the defaults of :class:`TraceOptions`."""

    dwell_ms: int
    max_stay_ms: int

    @classmethod
    def of(cls, opt: TraceOptions) -> PairingParams:
        return cls(round(opt.default_dwell_min * MINUTE_MS), round(opt.max_stay_min * MINUTE_MS))


DEFAULT_PARAMS = PairingParams.of(TraceOptions())


def _scope(s: str, trusted_only: bool) -> str:
    """The pairing rule over one scope's neighbours (``s``: ``t`` trusted scans only, ``a`` every scan)."""
    excluded = "NOT trusted, 'none', " if trusted_only else ""
    paired = f"(direction = 'in' AND {s}_has_next AND {s}_next_dir = 'out' AND {s}_next_t - t <= {{max_stay:Int64}})"
    absorbed = f"(direction = 'out' AND {s}_has_prev AND {s}_prev_dir = 'in' AND t - {s}_prev_t <= {{max_stay:Int64}})"
    return (
        f"multiIf({excluded}{paired}, 'paired', direction = 'in', 'inferred_exit', {absorbed}, 'none', "
        f"'exit_without_entry') AS {s}_kind, "
        f"if(direction = 'in', t, t - {{dwell:Int64}}) AS {s}_start, "
        f"multiIf({paired}, {s}_next_t, direction = 'in', "
        f"if({s}_has_next, least(t + {{dwell:Int64}}, {s}_next_t), t + {{dwell:Int64}}), t) AS {s}_end, "
        f"if({paired}, {s}_next_scan, scan_id) AS {s}_last_scan_id, "
        f"if({paired}, {s}_next_device, device_id) AS {s}_last_device_id, "
        f"if({paired}, {s}_next_qr, qr_id) AS {s}_last_qr_id, "
        f"if({paired}, {s}_next_verdict, verdict) AS {s}_last_verdict"
    )


def _neighbours(s: str, window: str) -> str:
    return (
        f"lagInFrame(toUInt8(1)) OVER {window} AS {s}_has_prev, lagInFrame(direction) OVER {window} AS {s}_prev_dir, "
        f"lagInFrame(t) OVER {window} AS {s}_prev_t, leadInFrame(toUInt8(1)) OVER {window} AS {s}_has_next, "
        f"leadInFrame(direction) OVER {window} AS {s}_next_dir, leadInFrame(t) OVER {window} AS {s}_next_t, "
        f"leadInFrame(scan_id) OVER {window} AS {s}_next_scan, "
        f"leadInFrame(device_id) OVER {window} AS {s}_next_device, "
        f"leadInFrame(qr_id) OVER {window} AS {s}_next_qr, leadInFrame(verdict) OVER {window} AS {s}_next_verdict"
    )


_COLUMNS = (
    "venue_id, scanned_at, person_key, scan_id, device_id, qr_id, verdict, version, is_deleted, "
    "t_kind, t_start, t_end, t_last_scan_id, t_last_device_id, t_last_qr_id, t_last_verdict, "
    "a_kind, a_start, a_end, a_last_scan_id, a_last_device_id, a_last_qr_id, a_last_verdict"
)
# The order of the pairing walk (engine.tracing.pairing._pairing_order): time, entries first, scan id as text,
# device last.
_ORDER = "ORDER BY t, direction, sid, device_id ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING"
#: Pair the scans selected by ``<source>`` (one row per scan, (device, scan id), as every read dedups) and write
#: one row per anchor whose time is in [{lo}, {hi}]: the caller reads ``max_stay`` more either side, all a scan's
#: stay depends on.
PAIR_SQL = (
    "INSERT INTO <table> (" + _COLUMNS + ") "
    "SELECT venue_id, fromUnixTimestamp64Milli(t), person_key, scan_id, device_id, qr_id, verdict, "
    "{version:UInt64}, t_kind = 'none' AND a_kind = 'none', "
    "t_kind, t_start, t_end, t_last_scan_id, t_last_device_id, t_last_qr_id, t_last_verdict, "
    "a_kind, a_start, a_end, a_last_scan_id, a_last_device_id, a_last_qr_id, a_last_verdict "
    "FROM (SELECT *, " + _scope("t", True) + ", " + _scope("a", False) + " "
    "FROM (SELECT *, " + _neighbours("t", "wt") + ", " + _neighbours("a", "wa") + " "
    "FROM (SELECT person_key, venue_id, scan_id, device_id, qr_id, verdict, direction, "
    f"toUnixTimestamp64Milli(scanned_at) AS t, toString(scan_id) AS sid, {TRUSTED_SQL} AS trusted "
    f"FROM <scans> WHERE <source> AND {ANCHORS_SQL} LIMIT 1 BY scan_id, device_id) "
    f"WINDOW wa AS (PARTITION BY person_key, venue_id {_ORDER}), "
    f"wt AS (PARTITION BY person_key, venue_id, trusted {_ORDER}))) "
    "WHERE t >= {lo:Int64} AND t <= {hi:Int64} "
    "SETTINGS max_threads = 1"
)
_NEW_SQL = "_block_number > {b0:UInt64} AND _block_number <= {b1:UInt64}"
_ALL_TIME = (-(2**62), 2**62)


@dataclass
class StepResult:
    """What one :meth:`StaysJob.step` did: ``mode`` is ``idle``, ``rebuild`` (one chunk) or ``incremental``."""

    mode: str
    horizon: int
    rows: int = 0
    done: bool = True


@dataclass
class _Rebuild:
    target: int
    chunks: list[tuple[str, str]] = field(default_factory=list)


class StaysJob:
    """Keeps ``stays`` paired with everything ``scans`` holds, one bounded step per call (store thread)."""

    def __init__(self, store: Store, params: PairingParams = DEFAULT_PARAMS) -> None:
        self._store = store
        self.params = params
        self._rebuild: _Rebuild | None = None
        local = "_local" if store.cluster else ""
        self._scans, self._stays = f"scans{local}", f"stays{local}"
        # The job finds new scans by _block_number (monotonic in commit order whatever the scans' own times, so
        # late and out-of-order scans are found as surely as fresh ones). Without this setting a merge gives
        # every row of the merged part the part's first block number, and rows inserted after the horizon would
        # look paired. Set here, when a job is created, not in a migration: it persists a column in every row of
        # ``scans``, a cost on the ingest path that a deployment with the job off should not pay. Rows written
        # before it keep their part's number: all of them are before the first horizon.
        store.command(f"ALTER TABLE {self._scans} MODIFY SETTING enable_block_number_column = 1")

    # -- state ----------------------------------------------------------------------------------------------
    def horizon(self) -> int | None:
        """The block every scan up to which is paired, or None before the first complete pairing."""
        return read_horizon(self._store.query, self.params)

    def _latest_block(self) -> int:
        rows = self._store.query(
            "SELECT max(max_block_number) FROM system.parts WHERE database = currentDatabase() "
            "AND table = {t:String} AND active",
            {"t": self._scans},
        )
        return int(rows[0][0] or 0) if rows else 0

    def _set_horizon(self, block: int) -> None:
        self._store.command(
            "INSERT INTO stays_horizon (dwell_ms, max_stay_ms, block) VALUES ({d:Int64}, {m:Int64}, {b:UInt64})",
            {"d": self.params.dwell_ms, "m": self.params.max_stay_ms, "b": block},
        )

    # -- work -----------------------------------------------------------------------------------------------
    def step(self) -> StepResult:
        """One unit of work: a rebuild chunk, or re-pairing the groups of every scan past the horizon."""
        if self._rebuild is not None:
            return self._rebuild_step()
        current = self.horizon()
        target = self._latest_block()
        since = current or 0
        if current is not None and target <= since:
            return StepResult("idle", since)
        days = self._store.query(
            f"SELECT toStartOfDay(scanned_at) AS d, min(toUnixTimestamp64Milli(scanned_at)), "
            f"max(toUnixTimestamp64Milli(scanned_at)), count() FROM {self._scans} "
            f"PREWHERE {_NEW_SQL} WHERE {ANCHORS_SQL} GROUP BY d ORDER BY d",
            {"b0": since, "b1": target},
        )
        new = sum(int(r[3]) for r in days)
        if current is None or new > REBUILD_ABOVE_ROWS:
            self._rebuild = _Rebuild(target, self._venue_chunks())
            log.info("pairing stays: rebuilding up to block %d in %d chunks", target, len(self._rebuild.chunks))
            return self._rebuild_step()
        slack = self.params.max_stay_ms
        for _day, t_min, t_max, _n in days:
            self._pair(
                f"(person_key, venue_id) IN (SELECT person_key, venue_id FROM {self._scans} PREWHERE {_NEW_SQL} "
                "WHERE scanned_at >= fromUnixTimestamp64Milli({n0:Int64}) "
                "AND scanned_at <= fromUnixTimestamp64Milli({n1:Int64})) "
                "AND scanned_at >= fromUnixTimestamp64Milli({r0:Int64}) "
                "AND scanned_at <= fromUnixTimestamp64Milli({r1:Int64})",
                {"b0": since, "b1": target, "n0": int(t_min), "n1": int(t_max),
                 "r0": int(t_min) - 2 * slack, "r1": int(t_max) + 2 * slack},
                (int(t_min) - slack, int(t_max) + slack),
                target,
            )  # fmt: skip
        self._set_horizon(target)
        return StepResult("incremental", target, new)

    def run(self) -> int:
        """Step until every scan stored now is paired; return the horizon (benchmarks, tests, tools)."""
        while (result := self.step()).mode != "idle":
            pass
        return result.horizon

    def _rebuild_step(self) -> StepResult:
        assert self._rebuild is not None
        job = self._rebuild
        if job.chunks:
            v0, v1 = job.chunks.pop(0)
            self._pair(
                "venue_id >= {v0:String} AND venue_id <= {v1:String}", {"v0": v0, "v1": v1}, _ALL_TIME, job.target
            )
        if job.chunks:
            return StepResult("rebuild", job.target, done=False)
        self._set_horizon(job.target)
        self._rebuild = None
        log.info("pairing stays: rebuilt up to block %d", job.target)
        return StepResult("rebuild", job.target)

    def _venue_chunks(self) -> list[tuple[str, str]]:
        """Venue ranges of about ``REBUILD_CHUNK_ROWS`` scans each (a venue's whole history in one chunk)."""
        rows = self._store.query(f"SELECT venue_id, count() FROM {self._scans} GROUP BY venue_id ORDER BY venue_id")
        chunks: list[tuple[str, str]] = []
        first, size = None, 0
        for venue, n in rows:
            first = venue if first is None else first
            size += int(n)
            if size >= REBUILD_CHUNK_ROWS:
                chunks.append((first, venue))
                first, size = None, 0
        if first is not None:
            chunks.append((first, rows[-1][0]))
        return chunks

    def _pair(self, source: str, params: dict[str, Any], anchors: tuple[int, int], version: int) -> None:
        sql = PAIR_SQL.replace("<table>", self._stays).replace("<scans>", self._scans).replace("<source>", source)
        self._store.command(
            sql,
            {
                **params,
                "version": version,
                "lo": anchors[0],
                "hi": anchors[1],
                "dwell": self.params.dwell_ms,
                "max_stay": self.params.max_stay_ms,
            },
        )


def read_horizon(query: Any, params: PairingParams) -> int | None:
    """``stays_horizon``'s block for ``params``, None if nothing was paired with them (or the table is empty)."""
    return horizon_and_latest(query, params)[0]


def pairing_state_sql(params: PairingParams) -> tuple[str, dict[str, Any]]:
    """Two scalar subqueries (and their parameters) giving the pairing state: ``(horizon block, rows)`` of
    ``stays_horizon`` for ``params``, and the newest block in ``scans``. A read appends them to a statement it
    sends anyway, so knowing whether the stays can be used costs no round trip of its own."""
    sql = (
        "(SELECT (max(block), count()) FROM stays_horizon "
        "WHERE dwell_ms = {hz_d:Int64} AND max_stay_ms = {hz_m:Int64}), "
        "(SELECT max(max_block_number) FROM system.parts WHERE database = currentDatabase() "
        "AND table = 'scans' AND active)"
    )
    return sql, {"hz_d": params.dwell_ms, "hz_m": params.max_stay_ms}


def pairing_state(row: tuple[Any, ...]) -> tuple[int | None, int]:
    """The horizon (None when nothing was paired with these parameters) and the newest block, from the two
    columns of :func:`pairing_state_sql`."""
    (block, count), latest = row
    return (int(block) if int(count) else None), int(latest or 0)


def horizon_and_latest(query: Any, params: PairingParams) -> tuple[int | None, int]:
    """The horizon (as :func:`read_horizon`) and the newest block in ``scans``, in one round trip: when they are
    equal a trace knows no scan is past the horizon without looking."""
    sql, p = pairing_state_sql(params)
    return pairing_state(query(f"SELECT {sql}", p)[0])


async def keep_paired(
    job: StaysJob, in_store_thread: Callable[[Callable[[], StepResult]], Awaitable[StepResult]], interval_s: float
) -> None:
    """The engine's pairing loop: a step every ``interval_s`` on the store thread, rebuild chunks back to back.

    Each step is one call on the store thread, queued behind whatever waits there, so the drain's inserts
    interleave with a long rebuild instead of waiting for all of it. A store error is logged and retried at
    the next interval: until then traces pair the groups past the horizon from scans, so answers stay right.
    """
    while True:
        try:
            result = await in_store_thread(job.step)
        except StoreError as exc:
            log.warning("pairing stays failed (retrying in %.0f s): %s", interval_s, exc)
            result = StepResult("failed", 0)
        if result.done:
            await asyncio.sleep(interval_s)
