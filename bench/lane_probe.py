"""Can the store run a trace's read while the drain inserts? The measurement the tracing lane is built on.

For each backend (embedded chdb, a ClickHouse server), two ``Store`` clients on the same DSN, as the engine
opens them (the drain's, and one of the tracing lane's): small scan inserts on the first, timed alone, then
while the second runs the worst-case venue trace (a year, every verdict, the busiest venue) in a loop on
another thread. If the read serialised the insert, the insert latency beside it would jump to the read's
duration; the trace's own duration alone and beside is printed too.

    python bench/lane_probe.py                       # both backends, 300k rows at the hot venue
    python bench/lane_probe.py --stores embedded --rows 1000000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.store.store import Store
from engine.testing.clickhouse import ClickHouseServer
from engine.testing.hot_venue import HOT_VENUE, hot_venue_insert
from engine.tracing.model import TraceOptions
from engine.tracing.queries import TraceQueries

HOT = HOT_VENUE


def fill(store: Store, rows: int) -> None:
    store.command(hot_venue_insert(rows, HOT))


def batch(n: int) -> dict[str, object]:
    at = np.full(n, int(time.time() * 1000), dtype="datetime64[ms]")
    return {
        "scan_id": [uuid.uuid4() for _ in range(n)], "device_id": ["dev-probe"] * n, "venue_id": ["v-probe"] * n,
        "direction": ["in"] * n, "scanned_at": at, "received_at": at, "verdict": ["ok"] * n, "reason": ["none"] * n,
        "code_kind": ["signed"] * n, "person_key": [uuid.uuid4().bytes for _ in range(n)], "qr_id": ["Q"] * n,
        "key_id": [""] * n, "issuer": [""] * n, "code_iat": np.zeros(n, dtype="datetime64[s]"),
        "code_exp": np.zeros(n, dtype="datetime64[s]"),
    }  # fmt: skip


def inserts(store: Store, count: int, rows: int) -> list[float]:
    out = []
    for _ in range(count):
        cols = batch(rows)
        t0 = time.perf_counter()
        store.insert_scans(cols)
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.05)
    return out


def trace(reader: Store) -> float:
    t0 = time.perf_counter()
    TraceQueries(reader.query).venue(HOT, None, None, TraceOptions(days=366, include_unverified=True))
    return time.perf_counter() - t0


def probe(kind: str, dsn: str, database: str, rows: int, count: int) -> None:
    writer = Store.connect(dsn, database=database)
    writer.migrate()
    reader = Store.connect(dsn, database=database)  # the lane's own client, as engine.tracing.lane opens it
    fill(writer, rows)
    inserts(writer, 3, 500)  # warm-up
    alone = inserts(writer, count, 500)
    trace_alone = trace(reader)
    stop = threading.Event()
    beside_traces: list[float] = []

    def loop() -> None:
        while not stop.is_set():
            beside_traces.append(trace(reader))

    t = threading.Thread(target=loop)
    t.start()
    time.sleep(0.3)
    beside = inserts(writer, count, 500)
    stop.set()
    t.join()
    q = statistics.quantiles
    print(
        f"{kind:9s} insert of 500 scans, ms: alone p50 {statistics.median(alone):.0f} / max {max(alone):.0f}; "
        f"beside a looping worst-case trace p50 {statistics.median(beside):.0f} / max {max(beside):.0f} "
        f"(p90 {q(beside, n=10)[-1]:.0f}); the trace alone {trace_alone:.2f} s, beside the inserts "
        f"{statistics.median(beside_traces):.2f} s ({len(beside_traces)} runs)"
    )
    reader.close()
    writer.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stores", default="embedded,server")
    ap.add_argument("--rows", type=int, default=300_000, help="scans at the hot venue")
    ap.add_argument("--inserts", type=int, default=30, help="inserts timed alone and beside")
    args = ap.parse_args()
    for kind in args.stores.split(","):
        if kind == "embedded":
            with tempfile.TemporaryDirectory() as d:
                probe(kind, f"chdb://{d}/store", "vnqr", args.rows, args.inserts)
        else:
            with ClickHouseServer() as server:
                probe(kind, server.dsn, "vnqr", args.rows, args.inserts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
