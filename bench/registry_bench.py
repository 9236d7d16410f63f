"""What keeping the device registry equal to the store's costs a node (issue 15, "Nodes that agree").

Every node of a deployment on a ClickHouse server re-reads devices (and tracers, admin tokens) every
``--registry-poll-s`` (1 s) so a revocation through any node holds on all of them. This bench fills a fresh
database on a real ClickHouse server on loopback (engine/testing/clickhouse.py) with ``--devices`` registered
scanners and measures, per refresh,

* the store read on the store thread (wall): every device (the full refresh, every 5 minutes) and only the devices
  changed lately (every other refresh; ``--changes`` devices revoked just before);
* the swap on the event loop (``DeviceRegistry.refresh``, CPU time of this thread): what the loop pays, full and
  incremental, in total and in its longest turn (a full read is applied ``REFRESH_CHUNK`` devices per turn);
* the ClickHouse server process's CPU per read (from /proc), what the poll costs the store.

    python bench/registry_bench.py                       # 1,000 / 10,000 / 100,000 devices
    python bench/registry_bench.py --devices 2000 --rounds 3   # a smoke run
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nacl.signing import SigningKey

from engine.cli.info import collect
from engine.deployment.registries import CHANGE_OVERLAP_MS, REFRESH_CHUNK, stored_devices
from engine.devices.auth import DeviceRegistry
from engine.store.store import Store
from engine.testing.clickhouse import ClickHouseServer

TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def fill(store: Store, n: int) -> None:
    """``n`` devices, as registrations would leave them (one row each), in inserts of 50,000."""
    key = bytes(SigningKey.generate().verify_key)  # one valid key for all: parsing cost is per refresh, not per key
    now = datetime.now(UTC) - timedelta(days=1)  # registered yesterday: outside a refresh's overlap
    for lo in range(0, n, 50_000):
        ids = [f"bench-{i:07d}" for i in range(lo, min(n, lo + 50_000))]
        m = len(ids)
        store.insert_rows(
            "devices",
            ["device_id", "public_key", "label", "revoked", "registered_at", "updated_at", "venues"],
            ["String", "String", "String", "UInt8", "DateTime64(3, 'UTC')", "DateTime64(3, 'UTC')", "Array(String)"],
            [ids, [key] * m, ["bench"] * m, [0] * m, [now] * m, [now] * m, [["venue-1"]] * m],
        )


def measure(server: ClickHouseServer, n: int, changes: int, rounds: int) -> dict[str, Any]:
    store = Store.connect(server.dsn, database=f"registry_{n}")
    try:
        store.migrate()
        fill(store, n)
        devices, _ = stored_devices(store)
        registry = DeviceRegistry(devices)
        for i in range(changes):
            d = devices[i]
            store.upsert_device(d.device_id, d.public_key, revoked=True, label=d.label)
        newest = stored_devices(store)[1]  # what the previous refresh saw last: the revocations
        out: dict[str, Any] = {"devices": n}
        for kind, since in (("full", None), ("changed", newest - CHANGE_OVERLAP_MS)):
            reads, swaps, turns, server_cpu = [], [], [], []
            for _ in range(rounds):
                c0, t0 = proc_cpu(server.pid), time.perf_counter()
                snapshot, _ = stored_devices(store, since)
                reads.append(time.perf_counter() - t0)
                server_cpu.append(proc_cpu(server.pid) - c0)
                t1 = time.thread_time()
                longest = 0.0
                for lo in range(0, len(snapshot), REFRESH_CHUNK):  # as RegistryRefresher applies it
                    t2 = time.thread_time()
                    registry.refresh(snapshot[lo : lo + REFRESH_CHUNK], registry.generation, complete=False)
                    longest = max(longest, time.thread_time() - t2)
                if since is None:
                    registry.drop_absent({d.device_id for d in snapshot}, registry.generation)
                swaps.append(time.thread_time() - t1)
                turns.append(longest)
            out[kind] = {
                "rows": len(snapshot),
                "read_ms": 1000 * sorted(reads)[len(reads) // 2],
                "loop_ms": 1000 * sorted(swaps)[len(swaps) // 2],
                "turn_ms": 1000 * sorted(turns)[len(turns) // 2],
                "server_cpu_ms": 1000 * sum(server_cpu) / rounds,
            }
        assert all(registry.get(devices[i].device_id).revoked for i in range(changes))  # type: ignore[union-attr]
        return out
    finally:
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, action="append", help="registered devices (repeatable)")
    ap.add_argument("--changes", type=int, default=10, help="devices revoked before the incremental reads")
    ap.add_argument("--rounds", type=int, default=7, help="reads per measurement (the median is shown)")
    args = ap.parse_args()
    sizes = args.devices or [1_000, 10_000, 100_000]
    logging.getLogger("engine").setLevel(logging.ERROR)  # "device … revoked" once per device and round
    env = collect()
    print(f"# registry refresh cost; python {env['python']}, {env['cpu']} ({env['cores']} cores)")
    print(f"# python bench/registry_bench.py {' '.join(sys.argv[1:])}".rstrip())
    with ClickHouseServer() as server:
        print(
            f"{'devices':>8} {'refresh':>8} {'rows':>7} {'read ms':>8} {'loop ms':>8} {'longest turn ms':>16} "
            f"{'server CPU ms':>14}"
        )
        for n in sizes:
            doc = measure(server, n, args.changes, args.rounds)
            for kind in ("full", "changed"):
                r = doc[kind]
                print(
                    f"{n:>8} {kind:>8} {r['rows']:>7} {r['read_ms']:>8.1f} {r['loop_ms']:>8.2f} "
                    f"{r['turn_ms']:>16.2f} {r['server_cpu_ms']:>14.1f}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
