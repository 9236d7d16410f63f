"""The nationwide peak, derived, and the cores and nodes it takes: every assumption is a flag.

    peak scans/s = people × scans per person per day × peak-hour share / 3600 × burst factor
    cores        = peak × server CPU per scan / target utilisation
    nodes        = ceil(cores / cores per node)

Defaults and where they come from (override any of them):

* ``--people 70e6``: adults with a smartphone or a chip ID card, of ~98M people (2021).
* ``--scans-per-person 2.5``: check-ins per adult per day when scanning is required at every entry, exits
  partly scanned. For comparison: New South Wales logged ~2.1M check-ins a day for ~8M people in Jan 2021
  (0.26 per person, light restrictions); Hanoi ~305k scans a day in Oct 2021 while only partly reopened.
* ``--peak-hour-share 0.12``: share of a day's scans in the busiest hour (morning shift start).
* ``--burst 4``: short-burst factor over the peak-hour mean (shift starts at the same minute, offline
  scanners uploading at once).
* ``--cpu-us-per-scan``: measured server CPU per scan from ``bench/e2e_bench.py`` (or pass ``--from-json``
  with its ``--json`` output); ``--repeat-share`` picks the scenario.
* ``--utilisation 0.6``: the CPU share we plan to use at peak, leaving headroom for merges, tracing queries,
  failover of a node.

The default design point of the engine is 50,000 scans/s; the planner prints how it compares.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import orjson

DESIGN_POINT = 50_000


def peak_scans_per_s(people: float, scans_per_person: float, peak_hour_share: float, burst: float) -> float:
    return people * scans_per_person * peak_hour_share / 3600 * burst


def plan(peak: float, cpu_us_per_scan: float, utilisation: float, cores_per_node: int) -> tuple[float, int]:
    cores = peak * cpu_us_per_scan / 1e6 / utilisation
    return cores, max(1, math.ceil(cores / cores_per_node))


def measured_cpu(path: Path, repeat_share: float) -> float:
    doc = orjson.loads(path.read_bytes())
    for r in doc["results"]:
        if r["target"] == "engine" and abs(r["repeat_share"] - repeat_share) < 1e-9:
            return float(r["cpu_us_per_scan"])
    raise SystemExit(f"no engine result at {repeat_share:.0%} repeats in {path}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=float, default=70e6)
    ap.add_argument("--scans-per-person", type=float, default=2.5)
    ap.add_argument("--peak-hour-share", type=float, default=0.12)
    ap.add_argument("--burst", type=float, default=4.0)
    ap.add_argument("--peak", type=float, help="use this peak (scans/s) instead of deriving it")
    ap.add_argument("--cpu-us-per-scan", type=float, default=None)
    ap.add_argument("--from-json", type=Path, help="e2e_bench.py --json output to read the CPU per scan from")
    ap.add_argument("--repeat-share", type=float, default=0.8)
    ap.add_argument("--utilisation", type=float, default=0.6)
    ap.add_argument("--cores-per-node", type=int, default=2)
    args = ap.parse_args(argv)
    derived = peak_scans_per_s(args.people, args.scans_per_person, args.peak_hour_share, args.burst)
    print(
        f"derived peak: {args.people:,.0f} people × {args.scans_per_person} scans/day × "
        f"{args.peak_hour_share:.0%} in the peak hour / 3600 × burst {args.burst} = {derived:,.0f} scans/s"
    )
    print(f"design point: {DESIGN_POINT:,} scans/s ({DESIGN_POINT / derived:.1f}× the derived peak)")
    cpu = args.cpu_us_per_scan
    if cpu is None and args.from_json:
        cpu = measured_cpu(args.from_json, args.repeat_share)
    if cpu is None:
        print("pass --cpu-us-per-scan or --from-json (bench/e2e_bench.py --json FILE) for the core count")
        return
    print(
        f"server CPU per scan: {cpu:.1f} µs ({args.repeat_share:.0%} repeat codes); "
        f"planned utilisation {args.utilisation:.0%}; {args.cores_per_node} cores per node"
    )
    peaks = [("derived peak", derived), ("design point", DESIGN_POINT)]
    if args.peak:
        peaks.append(("given peak", args.peak))
    print(f"{'':14} {'scans/s':>10} {'cores':>8} {'nodes':>6}")
    for name, peak in peaks:
        cores, nodes = plan(peak, cpu, args.utilisation, args.cores_per_node)
        print(f"{name:14} {peak:>10,.0f} {cores:>8.1f} {nodes:>6}")


if __name__ == "__main__":
    main()
