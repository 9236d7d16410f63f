"""The deployment-wide verified-code set at national size: memory per entry and the warm load of a node's start.

It fills a fresh embedded store's ``verified_codes`` (migration 0011) with ``--entries`` rows as nodes publish
them (random 16-byte tags, the bench issuer's key id, exps spread over 30 days, each row's MAC under a
deployment secret), then starts a node's side of the set the way the engine does (``SharedCodeSet.warm_load``
into a compiled verifier sized for those entries) and reports

* the warm load: the store read (Arrow columns, no Python object per row) and the MAC check plus insert of every
  row, separately and in total, in wall time and in this process's CPU time (which a busy machine inflates
  less);
* memory: the set's table (``CVerifier.set_bytes``) per entry, and how much the process's resident memory grew
  during the load itself (the table's pages become resident as entries land in them), per entry;
* a lookup check: every loaded tag is in the set (``load_set`` added them all), with no row refused.

    python bench/codeset_bench.py --entries 10000000        # the issue's figures (10M entries)
    python bench/codeset_bench.py --quick                   # 20,000 entries: a smoke run

The rows are random, not minted codes: a row's cost does not depend on which code it stands for, and minting
10M signed codes would take longer than everything measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.city_load import bench_trusted_key
from engine.codes.trust import TrustList
from engine.ingest.codeset import SharedCodeSet, row_macs
from engine.ops.metrics import Metrics
from engine.store.store import Store
from engine.verify import make_verifier
from engine.verify.contract import set_key

SECRET = hashlib.sha256(b"codeset_bench:deployment").digest()
CHUNK = 1_000_000


def rss_bytes() -> int:
    """This process's resident memory (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fill(store: Store, entries: int, kid: bytes, now: int, seed: int = 1) -> float:
    """Publish ``entries`` rows in inserts of a million, as nodes would; returns the seconds it took."""
    rng = np.random.default_rng(seed)
    key = set_key(SECRET)
    t0 = time.perf_counter()
    for lo in range(0, entries, CHUNK):
        n = min(CHUNK, entries - lo)
        tags = rng.bytes(16 * n)
        exps = now + rng.integers(3600, 30 * 86_400, n)
        kids = kid * n
        store.insert_verified_codes(tags, kids, exps, row_macs(key, tags, kids, exps), f"bench-node-{lo // CHUNK}")
    return time.perf_counter() - t0


def run(entries: int, data_dir: Path) -> dict[str, Any]:
    now = int(time.time())
    trusted = bench_trusted_key(now)
    trust = TrustList.build([trusted]).table()
    store = Store.connect(f"chdb://{data_dir / 'store'}")
    store.migrate()
    fill_s = fill(store, entries, trusted.kid, now)
    verifier = make_verifier(trust, SECRET, cache_size=entries, threads=1)
    codeset = SharedCodeSet(store, Metrics(), SECRET, "bench-reader")
    t0, c0 = time.perf_counter(), time.process_time()
    rows = codeset.read(since_last=False)
    read_s, read_cpu = time.perf_counter() - t0, time.process_time() - c0
    rss0 = rss_bytes()  # the rows are in memory, the set's table is allocated but untouched
    t1, c1 = time.perf_counter(), time.process_time()
    added, refused = codeset.load(verifier, trust, rows)
    load_s, load_cpu = time.perf_counter() - t1, time.process_time() - c1
    rss1 = rss_bytes()  # what the load made resident: the table's pages
    rows_bytes = len(rows.tags) + len(rows.kids) + rows.exps.nbytes + len(rows.macs)
    del rows
    # the engine's own path, timed end to end, into a second verifier
    again = make_verifier(trust, SECRET, cache_size=entries, threads=1)
    total = asyncio.run(SharedCodeSet(store, Metrics(), SECRET, "bench-reader-2").warm_load(again, trust))
    store.close()
    return {
        "entries": entries,
        "implementation": verifier.implementation,
        "fill_s": round(fill_s, 2),
        "read_s": round(read_s, 2),
        "load_s": round(load_s, 2),
        "read_cpu_s": round(read_cpu, 2),
        "load_cpu_s": round(load_cpu, 2),
        "warm_load_s": round(total[2], 2),
        "added": added,
        "refused": refused,
        "set_size": verifier.set_size,
        "table_bytes_per_entry": round(getattr(verifier, "set_bytes", 0) / max(entries, 1), 1),
        "rss_bytes_per_entry": round((rss1 - rss0) / max(entries, 1), 1),
        "rows_read_bytes": rows_bytes,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=10_000_000)
    ap.add_argument("--quick", action="store_true", help="20,000 entries: a smoke run")
    ap.add_argument("--data-dir", type=Path, default=None, help="where the store goes (default: a temporary dir)")
    args = ap.parse_args(argv)
    entries = 20_000 if args.quick else args.entries
    if entries < 1:
        ap.error("--entries must be >= 1")
    with tempfile.TemporaryDirectory(prefix="codeset-bench-", dir=args.data_dir) as tmp:
        r = run(entries, Path(tmp))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average {load}, {os.cpu_count()} cores")
    print(f"verifier {r['implementation']}; {r['entries']:,} rows published in {r['fill_s']} s")
    print(
        f"warm load: read {r['read_s']} s + MAC check and insert {r['load_s']} s (CPU of this process, chdb's "
        f"threads included: {r['read_cpu_s']} + {r['load_cpu_s']} s); engine path end to end {r['warm_load_s']} s; "
        f"added {r['added']:,}, refused {r['refused']:,}, set size {r['set_size']:,}"
    )
    print(
        f"memory: table {r['table_bytes_per_entry']} B/entry, resident growth during the load "
        f"{r['rss_bytes_per_entry']} B/entry (the rows read, {r['rows_read_bytes'] / 1e6:.0f} MB, are transient)"
    )
    if (r["added"], r["refused"], r["set_size"]) != (entries, 0, entries):
        raise SystemExit("not every published row was loaded")


if __name__ == "__main__":
    main()
