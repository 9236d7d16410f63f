"""Two implementations of tracing side by side in one run: a checkout before a change and one after it.

    python bench/trace_ab.py --before ../old-checkout --after . --stores DIR_A,DIR_B --cases 20 --kinds pk,qr,unv

``trace_bench.py --data-dir DIR`` fills a store; copy it (``cp -a DIR DIR_B``) so each implementation reads its
own copy of the same data (an embedded store opens in one process only). One worker process per checkout
imports *that* checkout's ``engine`` (the two cannot share a process) and answers trace requests; the driver sends
each index case to both in turn, so drifts in machine load hit both alike, checks they found the same visits and
contacts, and prints wall and CPU p50 (best of 3 per case; CPU is the worker's, chdb's threads included) with the
CPU split by statement (index case's read, stays read, scans read). Run it twice with ``--stores`` swapped: a
copy freshly made is colder than one already read.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROWS = 10_000_000


def _world(store_dir: Path, rows: int) -> Any:
    from bench.synth import World

    return World.for_rows(rows, end_ms=int((store_dir / "synth.json").read_text()))


def worker(code: Path, store_dir: Path, rows: int) -> None:
    """Answer ``KIND CASE`` lines with ``wall cpu visits contacts parts`` (``parts``: ``name=cpu;...``), tracing
    with the ``engine`` of checkout ``code`` (put first on the path before anything imports it)."""
    sys.path.insert(0, str(code.resolve()))
    from engine.store.store import Store
    from engine.tracing.model import DAY_MS, TraceOptions
    from engine.tracing.queries import TraceQueries

    store = Store.connect(f"chdb://{(store_dir / 'store').resolve()}", database="vnqr", retention_days=3650)
    store.migrate()
    world = _world(store_dir, rows)
    to_ms = world.start_ms + world.days * DAY_MS
    from_ms = to_ms - 14 * DAY_MS
    spent: dict[str, float] = {}

    def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        c0 = time.process_time()
        out = store.query(sql, params)
        kind = "index" if "FROM scans_by_person" in sql else "stays" if "FROM stays FINAL" in sql else "other"
        spent[kind] = spent.get(kind, 0.0) + (time.process_time() - c0) * 1000
        return out

    tq = TraceQueries(query)
    options = {"pk": TraceOptions(), "qr": TraceOptions(), "unv": TraceOptions(include_unverified=True)}
    print("ready", flush=True)
    for line in sys.stdin:
        kind, case = line.split()
        c = int(case)
        best: tuple[float, float, dict[str, float], Any] | None = None
        for _ in range(3):
            spent.clear()
            c0, t0 = time.process_time(), time.perf_counter()
            if kind == "qr":
                trace = tq.person(qr_id=world.qr_id(c), from_ms=from_ms, to_ms=to_ms, options=options[kind])
            else:
                pk = world.person_key(c).hex()
                trace = tq.person(person_key=pk, from_ms=from_ms, to_ms=to_ms, options=options[kind])
            wall, cpu = (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000
            if best is None or wall < best[0]:
                best = (wall, cpu, dict(spent), trace)
        assert best is not None
        parts = ";".join(f"{k}={v:.3f}" for k, v in sorted(best[2].items())) or "-"
        print(f"{best[0]:.3f} {best[1]:.3f} {len(best[3].visits)} {len(best[3].contacts)} {parts}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="checkout of the previous implementation (built)")
    ap.add_argument("--after", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--stores", required=True, help="two copies of one trace_bench store: before's,after's")
    ap.add_argument("--rows", type=int, default=ROWS, help="the rows the stores were filled with")
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--kinds", default="pk,qr,unv", help="pk (by person key), qr (by QR id), unv (unverified)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        worker(args.before, args.worker, args.rows)
        return 0
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    stores = [Path(s) for s in args.stores.split(",")]
    world = _world(stores[0], args.rows)
    rng = np.random.default_rng(7)  # trace_bench's cases
    weights = world.activity / world.activity.sum()
    cases = [int(c) for c in rng.choice(world.people, args.cases, replace=False, p=weights)]
    procs: dict[str, subprocess.Popen[str]] = {}
    for label, code, store in (("before", args.before, stores[0]), ("after", args.after, stores[1])):
        # this file, run by path, so the previous checkout needs no copy of it; --before names the code to load
        cmd = [sys.executable, str(Path(__file__).resolve()), "--before", str(code), "--stores", ",", "--rows",
               str(args.rows), "--worker", str(store)]  # fmt: skip
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", label
        procs[label] = p
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for kind in args.kinds.split(","):
        for c in cases:
            answers = set()
            for label, p in procs.items():
                assert p.stdin is not None and p.stdout is not None
                p.stdin.write(f"{kind} {c}\n")
                p.stdin.flush()
                wall, cpu, visits, contacts, parts = p.stdout.readline().split()
                answers.add((visits, contacts))
                figures.setdefault((kind, label), []).append((float(wall), float(cpu)))
                for part in parts.split(";") if parts != "-" else []:
                    name, ms = part.split("=")
                    figures.setdefault((kind, f"{label}: {name}"), []).append((0.0, float(ms)))
            if len(answers) != 1:
                raise SystemExit(f"{kind} case {c}: the implementations disagree ({answers})")
    print(f"{args.cases} cases, best of 3 each, interleaved; before {args.before}, after {args.after}")
    for (kind, label), values in figures.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(f"  {kind:4} {label:16} n={len(values):3}  wall p50 {wall:7.1f} ms  cpu p50 {cpu:7.1f} ms")
    for p in procs.values():
        assert p.stdin is not None
        p.stdin.close()
        p.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
