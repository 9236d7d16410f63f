"""How fast the WAL acknowledges: group commits per second for group sizes 1, 10, 100 records of ~2 KB.

The number that bounds ingestion is fsyncs/s: each append() is one fsync, so throughput in records/s is roughly
fsyncs/s x group size until bandwidth takes over. That is why the batcher groups requests. Results depend on the
device far more than on the CPU, so the filesystem and device backing the directory are printed too; run it on the
disk the engine will use (``--dir``), not on a tmpfs where fsync costs nothing.

    python bench/wal_bench.py [--dir PATH] [--seconds 3] [--size 2048] [--no-fsync]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.cli.info import cpu_model
from engine.ingest.wal import WriteAheadLog


def filesystem_of(path: Path) -> str:
    """The mount (device, fs type) holding ``path``: the longest mount point that prefixes it."""
    best = ("?", "?", "")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype = line.split()[:3]
            if str(path.resolve()).startswith(mnt) and len(mnt) >= len(best[2]):
                best = (dev, fstype, mnt)
    except OSError:
        pass
    return f"{best[1]} on {best[0]} (mounted at {best[2]})"


def run(directory: Path, group: int, size: int, seconds: float, fsync: bool) -> dict[str, float]:
    shutil.rmtree(directory, ignore_errors=True)
    wal = WriteAheadLog(directory, budget_bytes=1 << 40, fsync=fsync)
    wal.open()
    fsyncs = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

    os.fsync = counting_fsync  # count every fsync the WAL issues, including rotation and directory syncs
    batch = [os.urandom(size) for _ in range(group)]
    latencies: list[float] = []
    appends = 0
    try:
        start = time.perf_counter()
        deadline = start + seconds
        while (t0 := time.perf_counter()) < deadline:
            wal.append(batch)
            latencies.append(time.perf_counter() - t0)
            appends += 1
            if wal.backlog_bytes > 256 << 20:
                wal.checkpoint(wal.last_lsn)  # keep disk use bounded, as the drain would
        elapsed = time.perf_counter() - start
    finally:
        os.fsync = real_fsync
        wal.close()
        shutil.rmtree(directory, ignore_errors=True)
    latencies.sort()
    return {
        "appends_s": appends / elapsed,
        "records_s": appends * group / elapsed,
        "mb_s": appends * group * size / elapsed / 1e6,
        "fsyncs_s": fsyncs / elapsed,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None, help="parent directory for the test WAL (default: cwd)")
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each case")
    ap.add_argument("--size", type=int, default=2048, help="payload bytes per record")
    ap.add_argument("--groups", default="1,10,100", help="comma-separated group sizes")
    ap.add_argument("--no-fsync", action="store_true", help="measure with fsync=False (page cache only)")
    args = ap.parse_args()

    parent = Path(tempfile.mkdtemp(prefix="wal-bench-", dir=args.dir or Path.cwd()))
    try:
        print(f"cpu      {cpu_model()} ({os.cpu_count()} logical)")
        print(f"python   {platform.python_implementation()} {platform.python_version()} on {platform.platform()}")
        print(f"wal dir  {parent}: {filesystem_of(parent)}")
        mode = "off (OS cache only)" if args.no_fsync else "on"
        print(f"fsync    {mode}; {args.size} B records, {args.seconds} s per group size")
        print()
        cols = [("group", 6), ("appends/s", 10), ("fsyncs/s", 9), ("records/s", 10), ("MB/s", 7), ("p50 ms", 7)]
        header = " ".join(f"{name:>{width}}" for name, width in [*cols, ("p99 ms", 7)])
        print(header)
        print("-" * len(header))
        for group in (int(g) for g in args.groups.split(",")):
            r = run(parent / "wal", group, args.size, args.seconds, not args.no_fsync)
            print(
                f"{group:>6} {r['appends_s']:>10.0f} {r['fsyncs_s']:>9.0f} {r['records_s']:>10.0f} "
                f"{r['mb_s']:>7.1f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f}"
            )
    finally:
        shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    main()
