"""One trace, query by query: what each statement costs, how many rows and parts it reads, what it returns.

    python bench/trace_profile.py --data-dir DIR/rows-10000000 [--cases 5] [--rows 10000000]

On a store ``bench/trace_bench.py --data-dir`` left (its stays already paired), it runs the person trace of a
few index cases of the same draw, with the stays path and with the previous one ("before": every group paired
from scans), and prints every statement the trace sends: its median time over ``--repeat`` runs, the rows it
returns, wall and CPU time (this process's, chdb's threads included: on a shared machine CPU time is what a
statement costs), and ClickHouse's estimate of the parts, rows and marks it selects (``EXPLAIN ESTIMATE``; chdb keeps no
``system.query_log``). What is not a statement's time is Python's (pairing, overlaps, ranking).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.synth import World
from engine.store.store import Store
from engine.tracing.model import DAY_MS, TraceOptions
from engine.tracing.queries import TraceQueries


class Recorder:
    """A query function that times and keeps every statement it passes on."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: list[tuple[str, dict[str, Any], float, float, int]] = []

    def __call__(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        c0, t0 = time.process_time(), time.perf_counter()
        rows = self.store.query(sql, params)
        wall, cpu = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
        self.calls.append((sql, params, wall, cpu, len(rows)))
        return rows


def label(sql: str) -> str:
    """A short name for a statement: the tables it reads."""
    tables = re.findall(r"FROM (scans_by_person|scans|stays_horizon|stays|system\.parts|person_by_qr)", sql)
    return "+".join(sorted(set(tables))) or sql[:30]


def estimate(store: Store, sql: str, params: dict[str, Any]) -> str:
    try:
        rows = store.query(f"EXPLAIN ESTIMATE {sql}", params)
    except Exception as exc:  # an estimate is a hint: a statement it cannot explain is still timed
        return f"(no estimate: {str(exc)[:60]})"
    return "; ".join(f"{t}: {int(p)} parts {int(r):,} rows {int(m)} marks" for _db, t, p, r, m in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True, help="a store bench/trace_bench.py kept (one size)")
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--second-degree", action="store_true")
    args = ap.parse_args()
    store = Store.connect(f"chdb://{(args.data_dir / 'store').resolve()}", database="vnqr", retention_days=3650)
    rows = int(store.query("SELECT count() FROM scans", {})[0][0])
    world = World.for_rows(rows, end_ms=int((args.data_dir / "synth.json").read_text()))
    rng = np.random.default_rng(7)
    cases = rng.choice(world.people, 30, replace=False, p=world.activity / world.activity.sum())[: args.cases]
    to_ms = world.start_ms + world.days * DAY_MS
    opt = TraceOptions(second_degree=args.second_degree, second_degree_limit=10)
    for case in cases:
        pk = world.person_key(int(case)).hex()
        for use_stays in (True, False):
            rec = Recorder(store)
            q = TraceQueries(rec, use_stays=use_stays)
            totals, cpus, per_call = [], [], []
            for _ in range(args.repeat):
                rec.calls.clear()
                c0, t0 = time.process_time(), time.perf_counter()
                trace = q.person(person_key=pk, from_ms=to_ms - 14 * DAY_MS, to_ms=to_ms, options=opt)
                totals.append((time.perf_counter() - t0) * 1000)
                cpus.append((time.process_time() - c0) * 1000)
                per_call.append([(c[2], c[3]) for c in rec.calls])
            name = "stays" if use_stays else "before"
            print(f"\ncase {int(case)} {name}: {len(trace.visits)} visits, {len(trace.contacts)} contacts, "
                  f"total {statistics.median(totals):.1f} ms wall, {statistics.median(cpus):.1f} ms cpu "
                  f"(medians of {args.repeat})")  # fmt: skip
            cpu_sum = 0.0
            for i, (sql, params, _ms, _cpu, n) in enumerate(rec.calls):
                ms, cpu = (statistics.median(c[i][k] for c in per_call) for k in (0, 1))
                cpu_sum += cpu
                print(f"  {ms:7.1f} ms {cpu:7.1f} cpu  {n:6} rows out  {label(sql):28} {estimate(store, sql, params)}")
            print(f"  {'':10} {statistics.median(cpus) - cpu_sum:7.1f} cpu  Python")
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
