"""Tracing latency on the embedded store: p50/p95 over index cases, beside a naive self-join.

    python bench/trace_bench.py --rows 1000000
    python bench/trace_bench.py --rows 10000000 --data-dir /tmp/trace10m   # keeps the store for re-runs

It fills a fresh store with ``bench.synth`` (time-ordered 100k-row inserts, as a live engine writes), then
times, for ~50 index cases drawn by how much people go out: the person trace by person key and by QR id
(``engine.tracing.queries``, person-ordered table), the venue view, and the naive approach of joining the
venue-ordered ``scans`` with itself. It also times the two ways of reading around unmerged duplicates
(``FINAL`` and ``LIMIT 1 BY scan_id``), and every query beside the previous implementation ("before": the
others' scans paired in SQL with window functions), on the same cases, checking that both give the same
answer. Target: person trace p50 < 50 ms at 10M rows.

A store kept with ``--data-dir`` keeps merging when reopened only if ClickHouse decides to; copy the directory
(``cp -a``) while no bench runs to keep an unmerged state for later comparisons.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.synth import World, fill
from engine.store.store import Store
from engine.tracing import queries as tracing
from engine.tracing.model import DAY_MS, PersonTrace, Stay, TraceOptions
from engine.tracing.queries import TraceQueries

NAIVE_SQL = """
SELECT hex(b.person_key) AS who, count() AS n
FROM (SELECT venue_id, scanned_at FROM scans FINAL
      WHERE person_key = toFixedString(unhex({pk:String}), 16)
        AND scanned_at >= fromUnixTimestamp64Milli({lo:Int64}) AND scanned_at < fromUnixTimestamp64Milli({hi:Int64})
        AND verdict = 'ok') AS a
INNER JOIN (SELECT venue_id, scanned_at, person_key FROM scans FINAL
      WHERE scanned_at >= fromUnixTimestamp64Milli({lo:Int64}) AND scanned_at < fromUnixTimestamp64Milli({hi:Int64})
        AND verdict = 'ok') AS b
ON a.venue_id = b.venue_id
WHERE abs(toUnixTimestamp64Milli(b.scanned_at) - toUnixTimestamp64Milli(a.scanned_at)) <= 75 * 60000
  AND b.person_key != toFixedString(unhex({pk:String}), 16)
GROUP BY who ORDER BY n DESC
"""

# The person trace as it was before the others' scans were paired in Python (engine/tracing.py up to 0.x):
# pairing inside ClickHouse with window functions. Kept to time the two side by side on the same store.
_LEGACY_PAIR_SQL = """
SELECT person, if(paired AND next_qr != '', next_qr, qr_id), venue_id,
       if(direction = 'in', t, t - {{dwell:Int64}}) AS start_ms,
       if(direction = 'in', if(paired, next_t, least(t + {{dwell:Int64}}, next_t)), t) AS end_ms,
       multiIf(direction = 'out', 'exit_without_entry', paired, '', 'inferred_exit'),
       if(paired AND {trusted}, next_verdict, verdict)
FROM (
    SELECT *, direction = 'in' AND next_dir = 'out' AND next_t - t <= {{max_stay:Int64}} AS paired
    FROM (
        SELECT person, venue_id, direction, t, verdict, qr_id,
               lagInFrame(direction) OVER w AS prev_dir, lagInFrame(t) OVER w AS prev_t,
               leadInFrame(direction) OVER w AS next_dir,
               leadInFrame(t, 1, toInt64(9000000000000000000)) OVER w AS next_t,
               leadInFrame(verdict) OVER w AS next_verdict, leadInFrame(qr_id) OVER w AS next_qr
        FROM (
            SELECT hex(person_key) AS person, venue_id, toString(direction) AS direction,
                   toUnixTimestamp64Milli(scanned_at) AS t, toString(verdict) AS verdict, qr_id,
                   toString(scan_id) AS sid
            FROM scans {final} WHERE ({ranges}) AND {verdicts} {dedup}
        )
        WINDOW w AS (PARTITION BY person, venue_id ORDER BY t, direction, sid
                     ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
    )
)
WHERE (direction = 'in' OR NOT (prev_dir = 'in' AND t - prev_t <= {{max_stay:Int64}}))
  AND arrayExists((wv_, wa_, wb_) -> wv_ = venue_id AND end_ms >= wa_ AND start_ms <= wb_,
                  {{wv:Array(String)}}, {{wa:Array(Int64)}}, {{wb:Array(Int64)}})
"""


class SqlPairing(TraceQueries):
    """``TraceQueries`` with the previous ``stays_at``: the same rule, in SQL (window functions)."""

    def stays_at(self, windows: Sequence[tuple[str, int, int]], opt: TraceOptions) -> list[Stay]:
        slack = round(opt.max_stay_min * tracing.MINUTE_MS)
        ranges = tracing._merge((v, lo - slack, hi + slack) for v, lo, hi in windows)
        verdicts = tracing._UNVERIFIED_SQL if opt.include_unverified else tracing._TRUSTED_SQL
        stays: list[Stay] = []
        for start in range(0, len(ranges), tracing._RANGES_PER_QUERY):
            chunk = ranges[start : start + tracing._RANGES_PER_QUERY]
            venues = {v for v, _lo, _hi in chunk}
            mine = [w for w in windows if w[0] in venues]
            params: dict[str, Any] = {
                "dwell": round(opt.default_dwell_min * tracing.MINUTE_MS),
                "max_stay": slack,
                "wv": [w[0] for w in mine],
                "wa": [w[1] for w in mine],
                "wb": [w[2] for w in mine],
            }
            terms = []
            for i, (venue, lo, hi) in enumerate(chunk):
                params[f"v{i}"], params[f"a{i}"], params[f"b{i}"] = venue, lo, hi
                terms.append(f"(venue_id = {{v{i}:String}} AND {tracing._TIME % (f'a{i}', f'b{i}')})")
            sql = _LEGACY_PAIR_SQL.format(
                final=tracing._FINAL,
                ranges=" OR ".join(terms),
                verdicts=verdicts,
                dedup=tracing._DEDUP,
                trusted=tracing._TRUSTED_SQL,
            )
            for person, qr, venue, t0, t1, flag, verdict in self._query(sql, params):
                stays.append(Stay(person, qr, venue, int(t0), int(t1), (flag,) if flag else (), verdict))
        stays.sort(key=lambda st: (st.start_ms, st.venue_id, st.person_key))
        return stays


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import chdb

    return (
        f"cpu: {cpu}, {os.cpu_count()} cores; python {platform.python_version()}; "
        f"chdb {getattr(chdb, '__version__', '?')}; {platform.system()} {platform.release()}"
    )


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000, out


def summary(name: str, ms: list[float], extra: str = "") -> None:
    q = statistics.quantiles(ms, n=20) if len(ms) >= 2 else ms * 19
    print(f"  {name:38} n={len(ms):3}  p50 {statistics.median(ms):8.1f} ms  p95 {q[18]:8.1f} ms  {extra}")


def side_by_side(
    title: str, cases: list[int], variants: dict[str, tuple[Callable[[int], Any], tuple[str, str]]]
) -> None:
    """Time each variant on each case (best of 3), interleaved so drifts in machine speed hit all alike; the
    variants must return equal results. Lines starting "before" get their p50 as a multiple of the first's."""
    times: dict[str, list[float]] = {label: [] for label in variants}
    sizes: list[tuple[int, int]] = []
    for case in cases:
        results = []
        for label, (fn, (final, dedup)) in variants.items():
            tracing._FINAL, tracing._DEDUP = final, dedup
            ms, result = timed(lambda fn=fn, case=case: fn(case), 3)
            times[label].append(ms)
            results.append(result)
        if any(r != results[0] for r in results[1:]):  # or their timings would mean nothing
            raise SystemExit(f"{title}: the variants disagree for case {case}")
        if isinstance(results[0], PersonTrace):
            sizes.append((len(results[0].visits), len(results[0].contacts)))
    tracing._FINAL, tracing._DEDUP = "", "LIMIT 1 BY scan_id"
    size = ""
    if sizes:
        visits, contacts = statistics.median(v for v, _ in sizes), statistics.median(c for _, c in sizes)
        size = f" (median {visits:.0f} visits, {contacts:.0f} contacts)"
    print(f"{title}{size}:")
    first = statistics.median(next(iter(times.values())))
    for label, ms in times.items():
        ratio = f"{statistics.median(ms) / first:.2f}x the first p50" if label.startswith("before") else ""
        summary(label, ms, ratio)


def parts(store: Store) -> str:
    rows = store.query(
        "SELECT table, count(), sum(rows) FROM system.parts WHERE active AND database = currentDatabase() "
        "AND table IN ('scans', 'scans_by_person') GROUP BY table ORDER BY table",
        {},
    )
    return ", ".join(f"{t}: {int(n)} parts / {int(r):,} rows" for t, n, r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--data-dir", type=Path, help="store location; reused if it already holds the rows")
    ap.add_argument("--optimize", action="store_true", help="OPTIMIZE ... FINAL before timing (fully merged)")
    ap.add_argument("--naive-cases", type=int, default=10, help="index cases for the (slow) naive self-join")
    args = ap.parse_args()

    print(machine())
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="trace-bench-"))
    store = Store.connect(f"chdb://{(data_dir / 'store').resolve()}", database="vnqr", retention_days=3650)
    store.migrate()
    marker = data_dir / "synth.json"
    end_ms = int(marker.read_text()) if marker.exists() else int(time.time() * 1000)
    world = World.for_rows(args.rows, end_ms=end_ms)
    have = int(store.query("SELECT count() FROM scans", {})[0][0])
    if have < args.rows:
        print(f"generating {args.rows:,} scans: {world.people:,} people, {world.venues:,} venues, {world.days} days")
        stats = fill(store, world, args.rows, progress=True)
        marker.write_text(str(end_ms))
        print(
            f"  generated+inserted {stats.rows:,} rows in {stats.seconds:.1f} s ({stats.rows_per_s:,.0f} rows/s; "
            f"{stats.generate_seconds:.1f} s of it generating)"
        )
    else:
        print(f"reusing {have:,} stored scans in {data_dir}")
    if args.optimize:
        ms, _ = timed(lambda: [store.query(f"OPTIMIZE TABLE {t} FINAL", {}) for t in ("scans", "scans_by_person")])
        print(f"  OPTIMIZE FINAL took {ms / 1000:.1f} s")
    print(f"  {parts(store)}")

    rng = np.random.default_rng(7)
    cases = rng.choice(world.people, args.cases, replace=False, p=world.activity / world.activity.sum())
    to_ms = world.start_ms + world.days * DAY_MS
    from_ms = to_ms - 14 * DAY_MS
    q = TraceQueries(store.query)
    opt = TraceOptions()
    q.person(person_key=world.person_key(int(cases[0])).hex(), from_ms=from_ms, to_ms=to_ms, options=opt)  # warm

    old = SqlPairing(store.query)
    limit_by, final = ("", "LIMIT 1 BY scan_id"), ("FINAL", "")

    def by_key(impl: TraceQueries, options: TraceOptions) -> Callable[[int], Any]:
        return lambda c: impl.person(
            person_key=world.person_key(c).hex(), from_ms=from_ms, to_ms=to_ms, options=options
        )

    def by_qr(impl: TraceQueries) -> Callable[[int], Any]:
        return lambda c: impl.person(qr_id=world.qr_id(c), from_ms=from_ms, to_ms=to_ms, options=opt)

    print(f"\n{args.cases} index cases, last 14 days; best of 3 each, variants interleaved case by case:")
    side_by_side(
        "person trace",
        [int(c) for c in cases],
        {
            "by person key (LIMIT 1 BY scan_id)": (by_key(q, opt), limit_by),
            "by QR id": (by_qr(q), limit_by),
            "by person key (FINAL)": (by_key(q, opt), final),
            "before: by person key": (by_key(old, opt), limit_by),
            "before: by QR id": (by_qr(old), limit_by),
        },
    )
    with_unverified = TraceOptions(include_unverified=True)
    side_by_side(
        "--include-unverified",
        [int(c) for c in cases],
        {"by person key": (by_key(q, with_unverified), limit_by), "before": (by_key(old, with_unverified), limit_by)},
    )
    second = TraceOptions(second_degree=True, second_degree_limit=10)
    side_by_side(
        "second degree (top 10 contacts)",
        [int(c) for c in cases[:10]],
        {"by person key": (by_key(q, second), limit_by), "before": (by_key(old, second), limit_by)},
    )
    venues = rng.choice(world.venues, args.cases, replace=False)
    t1 = to_ms - DAY_MS

    def venue(impl: TraceQueries) -> Callable[[int], Any]:
        return lambda v: impl.venue(world.venue_id(v), t1 - 2 * 3_600_000, t1, opt)

    side_by_side(
        "venue view, 2 h window",
        [int(v) for v in venues],
        {"venue": (venue(q), limit_by), "before": (venue(old), limit_by)},
    )
    naive = []
    for c in cases[: args.naive_cases]:
        params = {"pk": world.person_key(int(c)).hex(), "lo": from_ms, "hi": to_ms}
        naive.append(timed(lambda params=params: store.query(NAIVE_SQL, params))[0])
    summary("naive self-join over `scans` (no pairing)", naive)
    store.close()
    print(f"\nstore kept in {data_dir}" if args.data_dir else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
