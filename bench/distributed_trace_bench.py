"""A person trace through ``Distributed`` on 2 shards against one ClickHouse server with the same data (issue 15).

Starts, on loopback, a 2-shard cluster (engine/testing/clickhouse.py, the sharded schema of the engine's own
migrations, sharded by person key) and one more server, inserts the same synthetic morning of stays into both
(``--people`` people at ``--venues`` venues, 2–4 visits each, 85 % scanned out; venue popularity 1/rank^``--zipf``,
so some venues are crowded), then runs the same person traces by QR id on both, interleaved (sharded, single,
sharded, ...), checks every pair of answers is equal, and prints wall-time p50 / p95 per store and the ratio.

All three servers and this process share the machine's cores: on 2 cores a shard's work does not run in parallel
with the other shard's as it would on two hosts, so read the ratio as the cost of the fan-out and merge, not as
what two hosts would give.

    python bench/distributed_trace_bench.py                          # 100,000 people, 20,000 venues, 40 traces
    python bench/distributed_trace_bench.py --people 2000 --cases 5  # a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from engine.store.store import Store
from engine.testing.clickhouse import ClickHouseCluster, ClickHouseServer, chdb_versions
from engine.tracing.model import MINUTE_MS, TraceOptions
from engine.tracing.queries import TraceQueries

HOUR = 60 * MINUTE_MS


def world(people: int, venues: int, seed: int, zipf: float = 0.5) -> dict[str, Any]:
    """The columns of a morning's scans: every person 2–4 visits of 10–90 min, in and (85 %) out."""
    rng = np.random.default_rng(seed)
    t0 = (int(time.time() * 1000) // 86_400_000 - 2) * 86_400_000 + 8 * HOUR
    visits = rng.integers(2, 5, people)
    person = np.repeat(np.arange(people), visits)
    n = len(person)
    popularity = 1.0 / np.arange(1, venues + 1) ** zipf  # Zipf-like: a few crowded venues
    venue = rng.choice(venues, n, p=popularity / popularity.sum())
    stay = rng.integers(10, 91, n)
    gap = rng.integers(5, 61, n)
    first = np.r_[0, np.cumsum(visits)[:-1]]
    offsets = rng.integers(0, 120, people)
    step = stay + gap
    cum = np.cumsum(step) - step  # minutes before each visit, reset per person below
    start = offsets[person] + cum - np.repeat(cum[first], visits)
    out = rng.random(n) < 0.85
    p = np.r_[person, person[out]]
    v = np.r_[venue, venue[out]]
    at_min = np.r_[start, (start + stay)[out]]
    direction = ["in"] * n + ["out"] * int(out.sum())
    at = (t0 + at_min * MINUTE_MS).astype("datetime64[ms]")
    m = len(p)
    keys = [uuid.uuid5(uuid.NAMESPACE_DNS, f"p{i}").bytes for i in range(people)]
    return {
        "t0": t0,
        "columns": {
            "scan_id": [uuid.uuid4() for _ in range(m)],
            "device_id": [f"dev-{x}" for x in v],
            "venue_id": [f"venue-{x}" for x in v],
            "direction": direction,
            "scanned_at": at,
            "received_at": at,
            "verdict": ["ok"] * m,
            "reason": ["none"] * m,
            "code_kind": ["signed"] * m,
            "person_key": [keys[i] for i in p],
            "qr_id": [f"QR{i:07d}" for i in p],
            "key_id": [""] * m,
            "issuer": [""] * m,
            "code_iat": np.zeros(m, dtype="datetime64[s]"),
            "code_exp": np.zeros(m, dtype="datetime64[s]"),
        },
    }


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=100_000)
    ap.add_argument("--venues", type=int, default=20_000)
    ap.add_argument("--zipf", type=float, default=0.5, help="venue popularity exponent (1/rank**zipf)")
    ap.add_argument("--cases", type=int, default=40, help="person traces by QR id, each on both stores")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    print(
        f"machine: python={platform.python_version()}, cores={os.cpu_count()}, chdb={chdb_versions()}, "
        f"people={args.people:,}, venues={args.venues:,}, zipf={args.zipf}"
    )
    data = world(args.people, args.venues, args.seed, args.zipf)
    cols, t0 = data["columns"], data["t0"]
    rows = len(cols["scan_id"])
    root = Path(tempfile.mkdtemp(prefix="vnqr-dist-bench-"))
    database = f"b_{secrets.token_hex(4)}"
    with ClickHouseCluster(2, root / "cluster") as cluster, ClickHouseServer(root / "single") as server:
        sharded = Store.connect(cluster[0].dsn, database=database, cluster=cluster.name, shard_dsns=cluster.dsns)
        single = Store.connect(server.dsn, database=database)
        try:
            for name, store in (("2 shards", sharded), ("one server", single)):
                store.migrate()
                t = time.perf_counter()
                chunk = 200_000
                for i in range(0, rows, chunk):
                    part = {k: v[i : i + chunk] for k, v in cols.items()}
                    store.insert_scans(part, dedup_token=f"bench-{i}")
                print(f"filled {name}: {rows:,} scans in {time.perf_counter() - t:.1f} s")
            opt = TraceOptions(days=14)
            lo, hi = t0 - HOUR, t0 + 14 * HOUR
            rng = np.random.default_rng(args.seed + 1)
            cases = [f"QR{int(i):07d}" for i in rng.choice(args.people, args.cases, replace=False)]
            times: dict[str, list[float]] = {"2 shards": [], "one server": []}
            contacts: list[int] = []
            for qr in [cases[0], *cases]:  # the first once more, unmeasured: connections and caches warm
                answers = []
                for name, store in (("2 shards", sharded), ("one server", single)):
                    t = time.perf_counter()
                    answers.append(TraceQueries(store.query).person(qr_id=qr, from_ms=lo, to_ms=hi, options=opt))
                    times[name].append((time.perf_counter() - t) * 1000)
                if answers[0] != answers[1]:
                    raise SystemExit(f"the answers differ for {qr}: Distributed is not the same as one server")
                contacts.append(len(answers[0].contacts))
            for name in times:
                times[name] = times[name][1:]
            contacts = contacts[1:]
            print(
                f"\n{args.cases} person traces by QR id, identical answers on both "
                f"(contacts per trace: median {statistics.median(contacts):.0f}, max {max(contacts)})"
            )
            print(f"{'store':<12} {'p50 ms':>8} {'p95 ms':>8}")
            for name, ts in times.items():
                print(f"{name:<12} {pct(ts, 0.5):8.1f} {pct(ts, 0.95):8.1f}")
            ratio = pct(times["2 shards"], 0.5) / pct(times["one server"], 0.5)
            print(f"Distributed ÷ one server, p50: {ratio:.2f}×")
        finally:
            sharded.close()
            single.close()


if __name__ == "__main__":
    main()
