"""The floor under the pipeline's overhead: what the mandated stack costs per scan before any engine code.

The ingestion target sets the pipeline's CPU per scan against the Cython verify alone (cold codes: at most
1.10×). This bench measures, side by side in one run, the parts of that pipeline no engine design can skip,
each with the e2e load generator (signed requests of ``--scans`` scans, ``--concurrency`` in flight):

* ``http``: aiohttp on uvloop reading each 30 KB body and writing a 12 KB answer (``bench/floor_server.py``);
* ``auth``: + the device-request check the API requires (SHA-256 of the body and one Ed25519 per request);
* ``intake``: + orjson and the per-item check, and rendering the per-scan answer;
* ``store``: ClickHouse's insert of the same scans with the engine's schema (``Store.insert_scans`` on chdb, in
  batches of ``--insert-rows`` as the drain sends them), CPU per row of this process (chdb runs inside it);

beside verify-only (the compiled verifier, one thread, cold codes), measured between the others. Rounds are
interleaved and medians reported, because CPU time per operation drifts on a shared VM by more than the
differences measured here. ``floor = intake + store``: the engine's own work (batching, verify hand-off, WAL,
recent-id map, metrics) comes on top of it.

Usage: python bench/floor_bench.py [--quick] [--requests N] [--scans N] [--rounds R] [--insert-rows N] [--json F]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import e2e_bench
from bench.synth import World
from engine.cli.info import collect
from engine.store.columns import Rows, rows_from_columns
from engine.store.store import Store

SERVER_STAGES = ("http", "auth", "intake")


def process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def store_us_per_row(batches: list[Rows], token: str) -> float:
    """ClickHouse CPU per row inserting ``batches`` into a fresh chdb store with the engine's schema."""
    with tempfile.TemporaryDirectory(prefix="floor-store-") as tmp:
        store = Store.connect(f"chdb://{Path(tmp) / 'store'}", database="vnqr", retention_days=3650)
        try:
            store.migrate()
            store.insert_scans(batches[0], dedup_token=f"{token}-warm")  # first part, cached types
            cpu0 = process_cpu()
            for i, b in enumerate(batches):
                store.insert_scans(b, dedup_token=f"{token}-{i}")
            cpu = process_cpu() - cpu0
        finally:
            store.close()
    return cpu / sum(len(b) for b in batches) * 1e6


def run(args: argparse.Namespace) -> dict[str, Any]:
    world = World.for_rows(args.insert_rows * args.inserts)
    batches = [rows_from_columns(c) for c in world.chunks(args.insert_rows * args.inserts, chunk=args.insert_rows)]
    load = argparse.Namespace(**{**vars(e2e_bench.parser().parse_args([])), **vars(args)})
    n_codes = 300 if args.quick else 2000
    samples: dict[str, list[float]] = {"verify": [e2e_bench.verify_only_us(n_codes)]}
    for rnd in range(args.rounds):
        for stage in SERVER_STAGES:
            r = e2e_bench.run_scenario(f"floor-{stage}", 0.0, load)
            if r.statuses != {"202": args.requests}:
                raise RuntimeError(f"floor server ({stage}) answered {r.statuses}")
            samples.setdefault(stage, []).append(r.cpu_us_per_scan)
        samples.setdefault("store", []).append(store_us_per_row(batches, f"round{rnd}"))
        samples["verify"].append(e2e_bench.verify_only_us(n_codes))
    med = {k: statistics.median(v) for k, v in samples.items()}
    floor = med["intake"] + med["store"]
    return {
        "machine": collect(),
        "scans_per_request": args.scans,
        "insert_rows": args.insert_rows,
        "samples_us": {k: [round(x, 2) for x in v] for k, v in samples.items()},
        "median_us": {k: round(v, 2) for k, v in med.items()},
        "floor_us": round(floor, 2),
        "floor_vs_verify": round(floor / med["verify"], 3),
        "budget_us": round(0.10 * med["verify"], 2),
    }


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--scans", type=int, default=100, help="scans per request")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--insert-rows", type=int, default=60_000, help="rows per store insert (~3 s of the drain)")
    ap.add_argument("--inserts", type=int, default=5, help="store inserts per round")
    ap.add_argument("--quick", action="store_true", help="small run (for smoke tests)")
    ap.add_argument("--json", type=Path, help="also write results as JSON")
    return ap


def main() -> None:
    args = parser().parse_args()
    if args.quick:
        args.requests, args.concurrency, args.rounds, args.insert_rows, args.inserts = 40, 8, 1, 2000, 2
    info = collect()
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items() if k != "extension_error"))
    doc = run(args)
    med, s = doc["median_us"], doc["samples_us"]
    print(f"{args.scans} scans per request, {args.rounds} interleaved rounds; CPU µs per scan (median, then rounds)")
    labels = {
        "verify": "verify-only (compiled, 1 thread, cold)",
        "http": "aiohttp+uvloop: read body, write answer",
        "auth": "  + device auth (SHA-256 + Ed25519)",
        "intake": "  + orjson, item check, answer render",
        "store": "ClickHouse insert (engine schema, chdb)",
    }
    for key, label in labels.items():
        print(f"  {label:42s} {med[key]:7.2f}   {s[key]}")
    print(
        f"floor = intake + store = {doc['floor_us']:.2f} µs/scan = {doc['floor_vs_verify']:.3f}× verify-only "
        f"(the 1.10× target leaves {doc['budget_us']:.2f} µs for everything outside the verify)"
    )
    if args.json:
        args.json.write_text(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
