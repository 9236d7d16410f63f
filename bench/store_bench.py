"""Store insert throughput: rows/s through ``Store.insert_scans`` on embedded chdb, for a few batch sizes.

    python bench/store_bench.py [--quick] [--batch-sizes 1000,10000,100000] [--rows N] [--repeats R]
                                [--versus SETTING=VALUE] [--json FILE]

The drain writes the WAL into ClickHouse in batches of up to ``ENGINE_INSERT_BATCH_ROWS``; how rows/s grows with
the batch size says how large those batches must be for the store to keep up with ingestion. Every figure goes
through the real path (the Arrow insert, the ``scans_by_person`` and ``person_by_qr`` materialized views, insert
deduplication on, fsync'd parts), into a fresh chdb directory. Rows come from ``bench.synth`` and are built into
the drain's column buffers before the clock starts, so only the store is timed. Rounds are interleaved over the
batch sizes (one pass of each per round) so load from other processes spreads over all of them; the median round
is reported, with the CPU time of this process (chdb runs inside it) beside the wall time.

``--versus optimize_on_insert=1`` runs every pass twice, with the engine's insert settings and with that one
ClickHouse setting changed, interleaved in the same store: the side-by-side comparison behind a settings choice.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.synth import World
from engine.cli.info import collect
from engine.store.columns import rows_from_columns
from engine.store.store import Store

DEFAULT_BATCHES = (1_000, 10_000, 100_000)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run(batch_sizes: list[int], rows: int, repeats: int, versus: dict[str, Any] | None = None) -> dict[str, Any]:
    """Median insert rate per batch size, ``rows`` rows per round and size (at least one batch).

    One store for all rounds: a growing table is what the drain writes into, and merges triggered by earlier
    rounds are part of what a later insert competes with, as in production.
    """
    world = World.for_rows(max(rows, max(batch_sizes)))
    # the same pre-built batches go in every round; ClickHouse would drop a repeated block as a duplicate, so
    # each insert carries a token unique to its round (the drain sends tokens too, so the path is the same)
    batches = {b: [rows_from_columns(c) for c in world.chunks(max(rows, b), chunk=b)] for b in batch_sizes}
    variants: list[tuple[str, dict[str, Any]]] = [("engine", {})]
    if versus:
        variants.append((",".join(f"{k}={v}" for k, v in versus.items()), versus))
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {(v, b): [] for v, _ in variants for b in batch_sizes}
    before = load_average()
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        store = Store.connect(f"chdb://{Path(tmp) / 'store'}", database="vnqr", retention_days=3650)
        try:
            store.migrate()
            store.insert_scans(batches[batch_sizes[0]][0], dedup_token="warm-up")  # first part, cached types
            for rnd in range(repeats):
                for b in batch_sizes:
                    for name, settings in variants:
                        t0, c0 = time.perf_counter(), time.process_time()
                        for i, cols in enumerate(batches[b]):
                            store.insert_scans(cols, dedup_token=f"{name}-r{rnd}-b{b}-{i}", settings=settings)
                        samples[(name, b)].append((time.perf_counter() - t0, time.process_time() - c0))
            stored = int(store.query("SELECT count() FROM scans", {})[0][0])
        finally:
            store.close()
    results = []
    for (name, b), runs in samples.items():
        n = sum(len(c) for c in batches[b])
        wall = statistics.median(s[0] for s in runs)
        cpu = statistics.median(s[1] for s in runs)
        results.append(
            {
                "settings": name,
                "batch_rows": b,
                "rows_per_round": n,
                "inserts_per_round": len(batches[b]),
                "rows_per_s": round(n / wall, 1),
                "cpu_us_per_row": round(cpu / n * 1e6, 3),
                "wall_s_rounds": [round(s[0], 4) for s in runs],
                "cpu_us_per_row_rounds": [round(s[1] / n * 1e6, 3) for s in runs],
            }
        )
    return {
        "machine": collect(),
        "load_before": before,
        "load_after": load_average(),
        "repeats": repeats,
        "rows_stored": stored,
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small batches and few rows: a smoke run")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated rows per insert (default 1000,10000,100000)")
    ap.add_argument("--rows", type=int, default=None, help="rows per round and batch size (default 200000)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds, the median is reported (default 3)")
    ap.add_argument(
        "--versus", default=None, help="SETTING=VALUE: also run every pass with this ClickHouse insert setting"
    )
    ap.add_argument("--json", type=Path, help="also write the results as JSON")
    args = ap.parse_args(argv)
    versus = None
    if args.versus:
        key, _, value = args.versus.partition("=")
        if not key or not value:
            ap.error("--versus takes SETTING=VALUE")
        versus = {key: value}
    default_sizes = (500, 5_000) if args.quick else DEFAULT_BATCHES
    sizes = [int(x) for x in args.batch_sizes.split(",")] if args.batch_sizes else list(default_sizes)
    rows = args.rows or (10_000 if args.quick else 200_000)
    doc = run(sizes, rows, args.repeats or 3, versus)
    m = doc["machine"]
    print(f"machine  : {m['cpu']}, {m['cores']} cores, Python {m['python']}, verifier {m['verifier']}")
    print(f"load avg : {doc['load_before']} (before), {doc['load_after']} (after); median of {doc['repeats']} rounds")
    head = f"{'settings':>24} {'rows/insert':>11} {'inserts':>8} {'rows':>9} {'rows/s':>10} {'CPU µs/row':>11}"
    print(f"\n{head}  rounds")
    for r in doc["results"]:
        print(
            f"{r['settings']:>24} {r['batch_rows']:>11,} {r['inserts_per_round']:>8} {r['rows_per_round']:>9,} "
            f"{r['rows_per_s']:>10,.0f} {r['cpu_us_per_row']:>11.2f}  {r['cpu_us_per_row_rounds']}"
        )
    if args.json:
        args.json.write_text(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
