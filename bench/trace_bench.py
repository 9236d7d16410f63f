"""Tracing latency on the embedded store: p50/p95 over index cases, beside the previous implementation.

    python bench/trace_bench.py --rows 20000 --cases 5 --naive-cases 2              # smoke run, seconds
    python bench/trace_bench.py --rows 10000000,100000000 --cases 30 --data-dir DIR   # both sizes side by side

For each size it fills a store with ``bench.synth`` (time-ordered 100k-row inserts, as a live engine writes;
rows built with ``World.row_chunks``, vectorised), pairs the stays as the engine's background job does
(``engine.tracing.stays``: a full rebuild, timed), then times, for index cases drawn by how much people go
out: the person trace by person key and by QR id, the bounded second degree, the venue view, each beside
the previous implementation ("before": every group paired from scans at query time, ``use_stays=False``) on
the same cases, checking both give the same answer; then the naive self-join of ``scans`` with itself. With
several sizes it ends with one table of p50 / p95 per size. Targets at 100M rows: person trace p50 <= 50 ms and
p95 <= 150 ms, second degree p50 <= 500 ms.

A store kept with ``--data-dir`` keeps merging when reopened only if ClickHouse decides to; copy the directory
(``cp -a``) while no bench runs to keep an unmerged state for later comparisons.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.synth import World, fill_rows
from engine.store.store import Store
from engine.tracing.model import DAY_MS, PersonTrace, TraceOptions
from engine.tracing.queries import TraceQueries
from engine.tracing.stays import StaysJob

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


#: p50 and p95 by label: wall ms, then this process's CPU ms (chdb's threads included: on a machine other jobs
#: share, CPU time is what a query costs, wall time also what it waited for)
Figures = dict[str, tuple[float, float, float, float]]


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any, float]:
    """Best of ``repeat``: wall ms, the result, and the CPU ms of the same run."""
    best, out, cpu = float("inf"), None, 0.0
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        ms = (time.perf_counter() - t0) * 1000
        if ms < best:
            best, cpu = ms, (time.process_time() - c0) * 1000
    return best, out, cpu


def _p95(ms: list[float]) -> float:
    return statistics.quantiles(ms, n=20)[18] if len(ms) >= 2 else ms[0]


def summary(
    name: str, ms: list[float], extra: str = "", figures: Figures | None = None, cpu: list[float] | None = None
) -> None:
    cpu = cpu or ms
    print(
        f"  {name:38} n={len(ms):3}  p50 {statistics.median(ms):8.1f} ms  p95 {_p95(ms):8.1f} ms  "
        f"cpu p50 {statistics.median(cpu):7.1f} p95 {_p95(cpu):7.1f} ms  {extra}"
    )
    if figures is not None:
        figures[name] = (statistics.median(ms), _p95(ms), statistics.median(cpu), _p95(cpu))


def _unlinked(result: Any) -> Any:
    """A trace without the ``link`` marks, which say how each visit was reached: by QR id ``qr_id``, by person
    key none, so the two answers are the same trace only once those marks are set aside."""
    if not isinstance(result, PersonTrace):
        return result
    contacts = [
        dataclasses.replace(c, encounters=[dataclasses.replace(e, index_link="") for e in c.encounters])
        for c in result.contacts
    ]
    visits = [dataclasses.replace(v, link="") for v in result.visits]
    return dataclasses.replace(result, visits=visits, contacts=contacts)


def side_by_side(
    title: str,
    cases: list[int],
    variants: dict[str, Callable[[int], Any]],
    figures: Figures,
    unequal: tuple[str, ...] = (),
) -> None:
    """Time each variant on each case (best of 3), interleaved so drifts in machine speed hit all alike; the
    variants must return equal results (but those in ``unequal``: another question, timed for comparison).
    Lines starting "before" get their p50 as a multiple of the first's."""
    times: dict[str, list[float]] = {label: [] for label in variants}
    cpus: dict[str, list[float]] = {label: [] for label in variants}
    sizes: list[tuple[int, int]] = []
    for case in cases:
        results = []
        for label, fn in variants.items():
            ms, result, cpu = timed(lambda fn=fn, case=case: fn(case), 3)
            times[label].append(ms)
            cpus[label].append(cpu)
            if label not in unequal:
                results.append(_unlinked(result))
        if any(r != results[0] for r in results[1:]):  # or their timings would mean nothing
            raise SystemExit(f"{title}: the variants disagree for case {case}")
        if isinstance(results[0], PersonTrace):
            sizes.append((len(results[0].visits), len(results[0].contacts)))
    size = ""
    if sizes:
        visits, contacts = statistics.median(v for v, _ in sizes), statistics.median(c for _, c in sizes)
        size = f" (median {visits:.0f} visits, {contacts:.0f} contacts)"
    print(f"{title}{size}:")
    first = statistics.median(next(iter(cpus.values())))
    for label, ms in times.items():
        ratio = f"{statistics.median(cpus[label]) / first:.2f}x the first's cpu" if label.startswith("before") else ""
        summary(label, ms, ratio, figures, cpus[label])


def parts(store: Store) -> str:
    rows = store.query(
        "SELECT table, count(), sum(rows) FROM system.parts WHERE active AND database = currentDatabase() "
        "AND table IN ('scans', 'scans_by_person', 'stays') GROUP BY table ORDER BY table",
        {},
    )
    return ", ".join(f"{t}: {int(n)} parts / {int(r):,} rows" for t, n, r in rows)


def one_size(args: argparse.Namespace, rows: int, data_dir: Path) -> Figures:
    """Fill (or reuse) one store of ``rows`` scans, pair its stays, time every query; the p50/p95 by label."""
    print(f"\n== {rows:,} rows, store in {data_dir}")
    store = Store.connect(f"chdb://{(data_dir / 'store').resolve()}", database="vnqr", retention_days=3650)
    store.migrate()
    marker = data_dir / "synth.json"
    end_ms = int(marker.read_text()) if marker.exists() else int(time.time() * 1000)
    world = World.for_rows(rows, end_ms=end_ms)
    have = int(store.query("SELECT count() FROM scans", {})[0][0])
    if have < rows:
        print(f"generating {rows:,} scans: {world.people:,} people, {world.venues:,} venues, {world.days} days")
        stats = fill_rows(store, world, rows, progress=True)
        marker.write_text(str(end_ms))
        print(
            f"  generated+inserted {stats.rows:,} rows in {stats.seconds:.1f} s ({stats.rows_per_s:,.0f} rows/s; "
            f"{stats.generate_seconds:.1f} s of it generating)"
        )
    else:
        print(f"reusing {have:,} stored scans in {data_dir}")
    job = StaysJob(store)
    ms, horizon, _ = timed(job.run)
    print(f"  pairing stays up to block {horizon}: {ms / 1000:.1f} s ({rows / max(ms, 1) * 1000:,.0f} scans/s)")
    if args.optimize:
        tables = ("scans", "scans_by_person", "stays")
        ms, _, _ = timed(lambda: [store.query(f"OPTIMIZE TABLE {t} FINAL", {}) for t in tables])
        print(f"  OPTIMIZE FINAL took {ms / 1000:.1f} s")
    print(f"  {parts(store)}")

    rng = np.random.default_rng(7)
    cases = rng.choice(world.people, args.cases, replace=False, p=world.activity / world.activity.sum())
    to_ms = world.start_ms + world.days * DAY_MS
    from_ms = to_ms - 14 * DAY_MS
    q, old = TraceQueries(store.query), TraceQueries(store.query, use_stays=False)
    opt = TraceOptions()
    q.person(person_key=world.person_key(int(cases[0])).hex(), from_ms=from_ms, to_ms=to_ms, options=opt)  # warm
    figures: Figures = {}

    def by_key(impl: TraceQueries, options: TraceOptions) -> Callable[[int], Any]:
        return lambda c: impl.person(
            person_key=world.person_key(c).hex(), from_ms=from_ms, to_ms=to_ms, options=options
        )

    def by_qr(impl: TraceQueries) -> Callable[[int], Any]:
        return lambda c: impl.person(qr_id=world.qr_id(c), from_ms=from_ms, to_ms=to_ms, options=opt)

    print(f"\n{args.cases} index cases, last 14 days; best of 3 each, variants interleaved case by case:")
    people = [int(c) for c in cases]
    side_by_side(
        "person trace",
        people,
        {
            "by person key": by_key(q, opt),
            "by QR id": by_qr(q),
            "before: by person key": by_key(old, opt),
            "before: by QR id": by_qr(old),
        },
        figures,
    )
    with_unverified = TraceOptions(include_unverified=True)
    side_by_side(
        "--include-unverified",
        people,
        {"include-unverified": by_key(q, with_unverified), "before: include-unverified": by_key(old, with_unverified)},
        figures,
    )
    second = TraceOptions(second_degree=True, second_degree_limit=10)
    unbounded = TraceOptions(
        second_degree=True, second_degree_limit=10, second_degree_min_overlap_min=0, second_degree_cap=100_000
    )
    side_by_side(
        f"second degree (top 10 contacts, >= {second.second_degree_min_overlap_min:g} min, cap "
        f"{second.second_degree_cap})",
        people[: args.second_cases],
        {
            "second degree": by_key(q, second),
            "before: second degree": by_key(old, second),
            "before: unbounded (as it was)": by_key(old, unbounded),
        },
        figures,
        unequal=("before: unbounded (as it was)",),
    )
    venues = rng.choice(world.venues, args.cases, replace=False)
    t1 = to_ms - DAY_MS

    def venue(impl: TraceQueries) -> Callable[[int], Any]:
        return lambda v: impl.venue(world.venue_id(v), t1 - 2 * 3_600_000, t1, opt)

    side_by_side(
        "venue view, 2 h window",
        [int(v) for v in venues],
        {"venue view": venue(q), "before: venue view": venue(old)},
        figures,
    )
    naive, naive_cpu = [], []
    for c in cases[: args.naive_cases]:
        params = {"pk": world.person_key(int(c)).hex(), "lo": from_ms, "hi": to_ms}
        ms, _, cpu = timed(lambda params=params: store.query(NAIVE_SQL, params))
        naive.append(ms)
        naive_cpu.append(cpu)
    summary("naive self-join over `scans` (no pairing)", naive, figures=figures, cpu=naive_cpu)
    store.close()
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1000000", help="scans per store; several sizes comma-separated")
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--second-cases", type=int, default=10, help="index cases for the second degree")
    ap.add_argument("--data-dir", type=Path, help="keeps the stores (one per size) for re-runs")
    ap.add_argument("--optimize", action="store_true", help="OPTIMIZE ... FINAL before timing (fully merged)")
    ap.add_argument("--naive-cases", type=int, default=10, help="index cases for the (slow) naive self-join")
    args = ap.parse_args()
    sizes = [int(float(r)) for r in args.rows.split(",")]
    print(machine())
    root = args.data_dir or Path(tempfile.mkdtemp(prefix="trace-bench-"))
    by_size: dict[int, Figures] = {}
    for rows in sizes:
        data_dir = root if len(sizes) == 1 and args.data_dir else root / f"rows-{rows}"
        data_dir.mkdir(parents=True, exist_ok=True)
        by_size[rows] = one_size(args, rows, data_dir)
    if len(sizes) > 1:
        print("\np50 / p95 ms by size (wall; cpu):")
        print(f"  {'query':42}" + "".join(f"{f'{r:,} rows':>34}" for r in sizes))
        for label in by_size[sizes[0]]:
            cells = "".join(f"{'{:.1f} / {:.1f}; {:.1f} / {:.1f}'.format(*by_size[r][label]):>34}" for r in sizes)
            print(f"  {label:42}{cells}")
    print(f"\nstores kept in {root}" if args.data_dir else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
