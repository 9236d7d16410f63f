"""Capacity planner: cores, nodes (plus failover) and disk for the national design point, from a model of the cache.

A node's CPU per scan is not a constant: it is what its verified-code cache saves. So the planner takes the
cache's hit rate from the model (``bench/cache_model.py`` on a ``bench/population.py`` city of
``--population-per-node`` people over ``--days`` days, with ``--cache-entries`` entries or the unbounded ``set``;
the last day's busiest hour by default, since the peak is what is planned for) and three measured costs, each
printed with what measured it:

    CPU per scan   = outside verify + hit rate × cache hit + (1 − hit rate) × cold verify
    peak scans/s   = people × scans per person per day × peak-hour share / 3600 × burst
    cores          = peak × CPU per scan / target utilisation
    nodes          = ceil(cores / cores per node) + failover nodes (1: a node may fail at peak)
    disk           = people × scans per person per day × retention days × bytes per row × replicas

The costs, by default the README's "Measured" figures (labelled so), or from ``--from-json`` (``e2e_bench.py
--json``: its verify-only samples for the cold verify, its engine runs' CPU outside the verify thread for the
rest), or given by flag (labelled "given"). Bytes per row come from a store directory (``--store-dir``: the
active parts of every table the scans land in, from ``system.parts``, divided by the rows of ``scans``) or
``--bytes-per-row``. A small store overstates it (fixed per-part overhead, less to compress): measure a big one.

Defaults for the demand side: ``--people 70e6`` (adults with a smartphone or a chip ID card, of ~98M, 2021);
``--scans-per-person 2.5`` a day (the city model gives ~2.5 too); ``--peak-hour-share 0.12``; ``--burst 4``
(shift starts at the same minute, offline scanners uploading at once); ``--utilisation 0.6`` (headroom for merges
and tracing queries). The design point of the engine is 50,000 scans/s; the planner plans it and the derived
peak. What it does not model: the memory of the cache or set, a store cluster's own nodes (only the bytes it
keeps), and a load balancer that spreads one city over several nodes (see ``cache_model.py``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DESIGN_POINT = 50_000
SCAN_TABLES = ("scans", "scans_by_person", "person_by_qr")
#: README "Measured" (this 2-core machine): what the defaults are, and where they were measured
README_COLD_US = 61.5
README_HIT_US = 1.1
README_OUTSIDE_US = round(52.5 - 52.5 / 1.184, 1)


@dataclass(frozen=True)
class Input:
    """A figure the plan rests on, with what measured (or assumed) it."""

    value: float
    source: str


def peak_scans_per_s(people: float, scans_per_person: float, peak_hour_share: float, burst: float) -> float:
    return people * scans_per_person * peak_hour_share / 3600 * burst


def plan(peak: float, cpu_us_per_scan: float, utilisation: float, cores_per_node: int) -> tuple[float, int]:
    """(cores, nodes) the CPU alone needs, before any failover node."""
    cores = peak * cpu_us_per_scan / 1e6 / utilisation
    return cores, max(1, math.ceil(cores / cores_per_node))


def cpu_per_scan(hit_rate: float, cold_us: float, hit_us: float, outside_us: float) -> float:
    return outside_us + hit_rate * hit_us + (1 - hit_rate) * cold_us


def disk_bytes(
    people: float, scans_per_person: float, retention_days: int, bytes_per_row: float, replicas: int
) -> float:
    return people * scans_per_person * retention_days * bytes_per_row * replicas


def modelled_hit_rate(population: int, days: int, entries: int, basis: str, seed: int = 1) -> Input:
    """The cache model's hit rate on the last day (its busiest hour, or the whole day) for a city of that size."""
    from bench.cache_model import SET, model
    from bench.population import City, CityParams

    city = City(CityParams(people=population, days=days, seed=seed))
    doc = model(city, [entries])
    c = doc["caches"][0]
    rate = c["peak_hour"][-1] if basis == "peak-hour" else c["day"][-1]
    cache = "every code remembered (set)" if entries == SET else f"LRU of {entries:,}"
    when = f"busiest hour ({int(c['peak_hour_of_day'][-1]):02d} h)" if basis == "peak-hour" else "whole day"
    return Input(
        rate, f"cache model: {cache} on a city of {population:,} people, day {days} of {days}, {when} (seed {seed})"
    )


def costs_from_json(path: Path) -> tuple[Input, Input, Input | None]:
    """(cold verify, outside verify, measured hit rate of a city run) from an ``e2e_bench.py --json`` file."""
    from bench.e2e_bench import by_stage

    try:
        doc = orjson.loads(path.read_bytes())
        samples, results = doc["verify_us_samples"], doc["results"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise SystemExit(f"--from-json {path}: not an e2e_bench.py --json file ({exc})") from None
    cold = Input(
        float(doc["verify_us"]),
        f"{path.name}: verify-only, compiled verifier, 1 thread, cold codes, median of {len(samples)} samples",
    )
    engine = [r for r in results if r["target"] == "engine"]
    if not engine:
        raise SystemExit(f"--from-json {path}: no engine result to take the CPU outside the verify thread from")
    city = [r for r in engine if r.get("workload") == "city"]
    runs = city or engine
    outside = statistics.median(r["cpu_us_per_scan"] - by_stage(r["cpu_us_by_thread"])["verify"] for r in runs)
    per_req = statistics.median(r["scans"] / max(1, r.get("requests") or 1) for r in runs)
    what = "city" if city else ", ".join(sorted({f"{r['repeat_share']:.0%} repeats" for r in runs}))
    out = Input(
        round(outside, 2),
        f"{path.name}: engine CPU per scan − its verify thread, median of {len(runs)} run(s) ({what}, "
        f"{per_req:.0f} scans per request)",
    )
    measured = None
    if city and city[0].get("hit_rate") is not None:
        r = city[0]
        measured = Input(float(r["hit_rate"]), f"{path.name}: engine /metrics over the city run's measured window")
    return cold, out, measured


def bytes_per_row_of(store_dir: Path, database: str = "vnqr") -> Input:
    """Bytes on disk per scan, from the active parts of the scan tables of a (stopped) engine's embedded store."""
    from engine.errors import StoreError
    from engine.store.store import Store

    directory = store_dir / "store" if (store_dir / "store").is_dir() else store_dir
    if not directory.is_dir():
        raise SystemExit(f"--store-dir {store_dir}: no such directory")
    try:
        store = Store.connect(f"chdb://{directory.resolve()}", database=database)
    except StoreError as exc:
        raise SystemExit(f"--store-dir {store_dir}: {exc}") from None
    try:
        rows = store.query(
            "SELECT table, sum(rows), sum(bytes_on_disk) FROM system.parts "
            "WHERE active AND database = {db:String} AND has({tables:Array(String)}, table) GROUP BY table",
            {"db": database, "tables": list(SCAN_TABLES)},
        )
    finally:
        store.close()
    by_table = {r[0]: (int(r[1]), int(r[2])) for r in rows}
    scans = by_table.get("scans", (0, 0))[0]
    if not scans:
        raise SystemExit(f"--store-dir {store_dir}: the store holds no scans to measure bytes per row from")
    total = sum(b for _r, b in by_table.values())
    parts = ", ".join(f"{t} {b / scans:.1f}" for t, (_r, b) in sorted(by_table.items()))
    return Input(total / scans, f"system.parts of {directory}: {total:,} bytes over {scans:,} scans ({parts} B/scan)")


def build_plan(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure of the plan, each input with its source; ``main`` prints it, ``--json`` writes it."""
    cold = Input(README_COLD_US, "README 'Measured': bench/verify_bench.py, CVerifier 1 thread, cold codes")
    hit = Input(README_HIT_US, "README 'Measured': bench/verify_bench.py, CVerifier cache hits")
    outside = Input(
        README_OUTSIDE_US, "README 'Measured': e2e_bench engine at 0 % repeats: 52.5 µs total − 52.5 ÷ 1.184 (verify)"
    )
    measured_rate = None
    if args.from_json:
        cold, outside, measured_rate = costs_from_json(args.from_json)
    if args.cold_verify_us is not None:
        cold = Input(args.cold_verify_us, "given (--cold-verify-us)")
    if args.cache_hit_us is not None:
        hit = Input(args.cache_hit_us, "given (--cache-hit-us)")
    if args.outside_verify_us is not None:
        outside = Input(args.outside_verify_us, "given (--outside-verify-us)")
    if args.hit_rate is not None:
        rate = Input(args.hit_rate, "given (--hit-rate)")
    else:
        rate = modelled_hit_rate(args.population_per_node, args.days, args.cache_entries, args.basis)
    cpu = cpu_per_scan(rate.value, cold.value, hit.value, outside.value)
    derived = peak_scans_per_s(args.people, args.scans_per_person, args.peak_hour_share, args.burst)
    rows = []
    peaks = [("derived peak", derived), ("design point", float(DESIGN_POINT))]
    if args.peak:
        peaks.append(("given peak", args.peak))
    for name, peak in peaks:
        cores, cpu_nodes = plan(peak, cpu, args.utilisation, args.cores_per_node)
        nodes = cpu_nodes + args.failover_nodes
        rows.append(
            {
                "scenario": name,
                "peak": peak,
                "cpu_us_per_scan": cpu,
                "cores": cores,
                "cpu_nodes": cpu_nodes,
                "failover_nodes": args.failover_nodes,
                "nodes": nodes,
                "people_per_node": args.people / cpu_nodes,
            }
        )
    bpr = None
    if args.bytes_per_row is not None:
        bpr = Input(args.bytes_per_row, "given (--bytes-per-row)")
    elif args.store_dir is not None:
        bpr = bytes_per_row_of(args.store_dir)
    disk = None
    if bpr is not None:
        rows_kept = args.people * args.scans_per_person * args.retention_days
        disk = {
            "rows": rows_kept,
            "bytes_per_row": asdict(bpr),
            "replicas": args.replicas,
            "bytes": disk_bytes(args.people, args.scans_per_person, args.retention_days, bpr.value, args.replicas),
        }
    return {
        "inputs": {
            "hit_rate": asdict(rate),
            "cold_verify_us": asdict(cold),
            "cache_hit_us": asdict(hit),
            "outside_verify_us": asdict(outside),
            "measured_hit_rate": asdict(measured_rate) if measured_rate else None,
        },
        "assumptions": {
            k: getattr(args, k)
            for k in (
                "people",
                "scans_per_person",
                "peak_hour_share",
                "burst",
                "utilisation",
                "cores_per_node",
                "failover_nodes",
                "population_per_node",
                "days",
                "retention_days",
            )
        },
        "cache_entries": args.cache_entries or "set",
        "cpu_us_per_scan": cpu,
        "derived_peak": derived,
        "design_point": DESIGN_POINT,
        "rows": rows,
        "disk": disk,
    }


def cache_entries(text: str) -> int:
    if text == "set":
        return 0
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"cache entries {text!r}: a positive number, or 'set' (every code remembered)")


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1]")
    return value


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demand = ap.add_argument_group("demand")
    demand.add_argument("--people", type=float, default=70e6)
    demand.add_argument("--scans-per-person", type=float, default=2.5)
    demand.add_argument("--peak-hour-share", type=fraction, default=0.12)
    demand.add_argument("--burst", type=float, default=4.0)
    demand.add_argument("--peak", type=float, help="also plan this peak (scans/s)")
    model = ap.add_argument_group("cache model")
    model.add_argument("--population-per-node", type=int, default=1_000_000, help="people a node's traffic covers")
    model.add_argument("--days", type=int, default=3, help="days modelled (the plan uses the last)")
    model.add_argument("--cache-entries", type=cache_entries, default=262_144, help="LRU entries, or 'set'")
    model.add_argument("--basis", choices=("peak-hour", "day"), default="peak-hour", help="which hit rate to plan on")
    model.add_argument("--hit-rate", type=fraction, help="plan on this hit rate instead of running the model")
    costs = ap.add_argument_group("measured costs (µs of CPU)")
    costs.add_argument("--from-json", type=Path, help="e2e_bench.py --json output: cold verify and outside-verify")
    costs.add_argument("--cold-verify-us", type=float, help="one signature verified")
    costs.add_argument("--cache-hit-us", type=float, help="one code found in the cache")
    costs.add_argument("--outside-verify-us", type=float, help="everything else a scan costs (HTTP to store)")
    nodes = ap.add_argument_group("nodes")
    nodes.add_argument("--utilisation", type=fraction, default=0.6)
    nodes.add_argument("--cores-per-node", type=int, default=2)
    nodes.add_argument("--failover-nodes", type=int, default=1)
    disk = ap.add_argument_group("disk")
    disk.add_argument("--retention-days", type=int, default=28)
    disk.add_argument("--store-dir", type=Path, help="a stopped engine's data or store directory to measure")
    disk.add_argument("--bytes-per-row", type=float, help="bytes on disk per scan, instead of --store-dir")
    disk.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the plan as JSON")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    problems = [
        (args.utilisation <= 0, "--utilisation must be > 0"),
        (args.cores_per_node < 1, "--cores-per-node must be >= 1"),
        (args.failover_nodes < 0, "--failover-nodes must be >= 0"),
        (args.replicas < 1, "--replicas must be >= 1"),
        (args.retention_days < 1, "--retention-days must be >= 1"),
        (
            args.people <= 0 or args.scans_per_person <= 0 or args.burst <= 0,
            "--people, --scans-per-person, --burst > 0",
        ),
        (args.population_per_node < 100, "--population-per-node must be >= 100"),
        (not 1 <= args.days <= 27, "--days must be 1..27"),
    ]
    for bad, message in problems:
        if bad:
            ap.error(message)
    doc = build_plan(args)
    inp = doc["inputs"]
    width = max(len(k) for k in inp)
    print("inputs (each with what measured it):")
    for name, item in inp.items():
        if item is not None:
            value = f"{item['value']:.1%}" if "rate" in name else f"{item['value']:.2f} µs"
            print(f"  {name:{width}}  {value:>9}  {item['source']}")
    print(
        f"CPU per scan = {inp['outside_verify_us']['value']:.2f} + {inp['hit_rate']['value']:.3f} × "
        f"{inp['cache_hit_us']['value']:.2f} + {1 - inp['hit_rate']['value']:.3f} × "
        f"{inp['cold_verify_us']['value']:.2f} = {doc['cpu_us_per_scan']:.2f} µs"
    )
    print(
        f"derived peak: {args.people:,.0f} people × {args.scans_per_person} scans/day × {args.peak_hour_share:.0%} "
        f"in the peak hour / 3600 × burst {args.burst} = {doc['derived_peak']:,.0f} scans/s; design point "
        f"{DESIGN_POINT:,} scans/s"
    )
    print(
        f"planned utilisation {args.utilisation:.0%}, {args.cores_per_node} cores per node, "
        f"+{args.failover_nodes} failover node(s)"
    )
    print(f"{'':14} {'scans/s':>10} {'cores':>8} {'CPU nodes':>10} {'+failover':>10} {'nodes':>6}")
    for r in doc["rows"]:
        print(
            f"{r['scenario']:14} {r['peak']:>10,.0f} {r['cores']:>8.1f} {r['cpu_nodes']:>10} "
            f"{r['failover_nodes']:>10} {r['nodes']:>6}"
        )
    if args.hit_rate is None and args.cache_entries:
        design = next(r for r in doc["rows"] if r["scenario"] == "design point")
        if design["people_per_node"] > args.population_per_node:
            print(
                f"note: {design['cpu_nodes']} node(s) each carry ~{design['people_per_node']:,.0f} people's scans, "
                f"more than the {args.population_per_node:,} modelled: their LRU would hit less. Either rerun with "
                f"--population-per-node {int(design['people_per_node'])}, or route venues by region to "
                f"{math.ceil(args.people / args.population_per_node)} + {args.failover_nodes} nodes."
            )
    if doc["disk"]:
        d = doc["disk"]
        print(
            f"disk for {args.retention_days} days: {d['rows']:,.0f} scans × {d['bytes_per_row']['value']:.1f} B "
            f"({d['bytes_per_row']['source']}) × {d['replicas']} replica(s) = {d['bytes'] / 1e12:,.2f} TB"
        )
    else:
        print("disk: pass --store-dir DIR (a stopped engine's data directory) or --bytes-per-row B")
    if args.json:
        args.json.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
