"""The whole benchmark suite in one command: every figure the capacity plan rests on, with the machine beside it.

    python bench/suite.py [--quick | --full] [--out reports/bench-<timestamp>]

Runs, in this order: verify throughput by path against the libsodium C loop (``verify_bench.py``); end-to-end
scans/s, ack latency and server CPU per scan versus the engine's batch size and the share of repeated codes,
with the naive reference server (``e2e_bench.run``); WAL group commits (``wal_bench.py``); store insert rows/s
(``store_bench.py``); tracing latency versus table size (``trace_bench.py``); then the capacity plan
(``capacity.py``) from the CPU per scan just measured. It writes ``report.md``, ``results.json`` and PNG plots
(``bench/report.py``) into the output folder.

Benches that open chdb or print their own tables run as child processes: chdb holds one data directory per
process, and a bench's own output stays its single source of truth (it is kept beside the report as
``<step>.txt``). A failed step is recorded in the report and makes the exit status 1, so the smoke test in
``tests/test_bench_smoke.py`` notices a bench that has rotted. Machines here are shared and noisy: steps are
repeated (>= 3 rounds where cheap), medians reported, and paths compared as ratios measured in the same run.

``--quick`` is a smoke run (tens of seconds, figures meaningless); the default takes ~10 minutes on 2 cores;
``--full`` adds the whole batch-size x repeat-share grid and tracing on 10M rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import capacity, e2e_bench  # noqa: E402
from bench.report import write_report  # noqa: E402
from engine.cli.info import collect  # noqa: E402

#: the assumptions capacity.py defaults to; the suite plans with the same ones (override by flags there)
PLAN = {"people": 70e6, "scans_per_person": 2.5, "peak_hour_share": 0.12, "burst": 4.0, "utilisation": 0.6}
NUM = r"[\d,]+(?:\.\d+)?|nan"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine() -> dict[str, Any]:
    """``engine info`` plus what only a benchmark needs: chdb, the commit, the kernel."""
    import platform

    import chdb

    info = collect()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "bench", "engine", "ext"], cwd=ROOT, capture_output=True, text=True
    )
    info.update(
        chdb=getattr(chdb, "__version__", "?"),
        kernel=f"{platform.system()} {platform.release()}",
        commit=(commit.stdout.strip() or "?") + (" (+ local changes)" if dirty.stdout.strip() else ""),
    )
    return info


def child(out: Path, name: str, argv: list[str], timeout: float) -> str:
    """Run a bench script, keep its output as ``<name>.txt``, return it; a failure raises with its tail."""
    done = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    (out / f"{name}.txt").write_text(f"$ python {shlex.join(argv)}\n\n{done.stdout}\n{done.stderr}")
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-600:]}")
    return done.stdout


def number(text: str) -> float:
    return float(text.replace(",", ""))


# -- steps ---------------------------------------------------------------------------------------------------
def step_verify(args: argparse.Namespace) -> dict[str, Any]:
    argv = ["bench/verify_bench.py", *(["--quick"] if args.quick else ["--repeats", "7"])]
    text = child(args.out, "verify", argv, 600)
    row = re.compile(
        rf"^(?P<path>\S.*?)\s+(?P<rate>{NUM})\s+(?P<x>{NUM})\s+(?P<cpu>{NUM})\s+(?P<cx>{NUM})\s*(?P<note>.*)$"
    )
    rows, in_table = [], False
    for line in text.splitlines():
        if line.startswith("---"):
            in_table = True
        elif in_table and not line.strip():
            break
        elif in_table and (m := row.match(line)):
            rows.append(
                {
                    "path": m["path"],
                    "verifies_per_s": number(m["rate"]),
                    "x_c_loop": number(m["x"]),
                    "cpu_us_per_op": number(m["cpu"]),
                    "cpu_x_c_loop": number(m["cx"]),
                    "note": m["note"].strip(),
                }
            )
    if not rows:
        raise RuntimeError("no rows parsed from verify_bench.py output (has its table format changed?)")
    parse = {
        m[1]: {"wall_us": number(m[2]), "cpu_us": number(m[3])}
        for m in re.finditer(rf"parse \+ lookup per code, (\S+) .*?: ({NUM}) us wall, ({NUM}) us CPU", text)
    }
    baseline = re.search(r"^baseline\s*:\s*(.*)$", text, re.M)
    return {"rows": rows, "parse_lookup": parse, "baseline": baseline[1] if baseline else "?"}


def step_e2e(args: argparse.Namespace) -> dict[str, Any]:
    """Engine scenarios over the batch-size sweep and the repeat-share sweep, then the naive server; medians.

    The two sweeps cross at (middle batch size, 0 % repeats); ``--full`` runs the whole grid. Rounds are
    interleaved (every scenario once per round) so a burst of load from elsewhere hits all of them alike.
    """
    sizes = [256, 1024] if args.quick else [256, 1024, 4096]
    shares = [0.0, 0.8] if args.quick else [0.0, 0.5, 0.8, 0.95]
    mid = 1024
    grid = {(b, 0.0) for b in sizes} | {(mid, s) for s in shares}
    if args.full:
        grid = {(b, s) for b in sizes for s in shares}
    naive_shares = [0.8] if args.quick else [0.0, 0.8]
    rounds = 1 if args.quick else args.e2e_rounds
    base = e2e_bench.parser().parse_args([])
    base.requests, base.concurrency = (40, 8) if args.quick else (base.requests, base.concurrency)
    base.quick, base.no_naive = args.quick, True
    cells: dict[tuple[str, int | None, float], list[dict[str, Any]]] = {}
    verify_us: list[float] = []
    for _ in range(rounds):
        for b in sorted(sizes):
            todo = sorted(s for bb, s in grid if bb == b)
            doc = e2e_bench.run(argparse.Namespace(**{**vars(base), "batch_size": b, "repeat_shares": todo}))
            verify_us.append(doc["verify_us"])
            for r in doc["results"]:
                cells.setdefault(("engine", b, r["repeat_share"]), []).append(r)
        for s in naive_shares:
            r = e2e_bench.run_scenario("naive", s, argparse.Namespace(**{**vars(base), "batch_size": None}))
            cells.setdefault(("naive", None, s), []).append(dataclasses.asdict(r))
    results = []
    for (target, batch, share), runs in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0, kv[0][2])):
        med = {k: statistics.median(r[k] for r in runs) for k in ("scans_per_s", "p50_ms", "p99_ms", "cpu_us_per_scan")}
        statuses: dict[str, int] = {}
        for r in runs:
            for code, n in r["statuses"].items():
                statuses[code] = statuses.get(code, 0) + n
        results.append(
            {
                "target": target,
                "batch_size": batch,
                "repeat_share": share,
                "rounds": len(runs),
                "scans": runs[0]["scans"],
                **med,
                "cpu_us_per_scan_rounds": [r["cpu_us_per_scan"] for r in runs],
                "statuses": statuses,
            }
        )
    warnings = [
        f"{r['target']}{f' at batch {b}' if (b := r['batch_size']) else ''}, {r['repeat_share']:.0%} repeats "
        f"answered {r['statuses']}: "
        "its figures are of failing requests (see the server's log)"
        for r in results
        if set(r["statuses"]) != {"202"}
    ]
    return {
        "warnings": warnings,
        "verify_us": statistics.median(verify_us),
        "mid_batch": mid,
        "requests": base.requests,
        "scans_per_request": base.scans,
        "concurrency": base.concurrency,
        "results": results,
    }


def step_wal(args: argparse.Namespace) -> dict[str, Any]:
    seconds = "0.3" if args.quick else "2"
    text = child(args.out, "wal", ["bench/wal_bench.py", "--dir", str(args.out), "--seconds", seconds], 300)
    keys = ("group", "appends_s", "fsyncs_s", "records_s", "mb_s", "p50_ms", "p99_ms")
    rows = [
        dict(zip(keys, map(number, line.split()), strict=True))
        for line in text.splitlines()
        if re.fullmatch(r"\s*\d+(\s+[\d.]+){6}\s*", line)
    ]
    fs = re.search(r"^wal dir .*?: (.*)$", text, re.M)
    if not rows:
        raise RuntimeError("no rows parsed from wal_bench.py output")
    return {"rows": rows, "filesystem": fs[1] if fs else "?"}


def step_store(args: argparse.Namespace) -> dict[str, Any]:
    path = args.out / "store.json"
    child(args.out, "store", ["bench/store_bench.py", *(["--quick"] if args.quick else []), "--json", str(path)], 900)
    doc: dict[str, Any] = orjson.loads(path.read_bytes())
    path.unlink()
    return doc


def step_trace(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [20_000] if args.quick else [100_000, 1_000_000] + ([10_000_000] if args.full else [])
    cases, naive = (5, 2) if args.quick else (50, 10) if args.full else (25, 5)
    summary = re.compile(
        rf"^\s+(?P<q>\S.*?)\s+n=\s*(?P<n>\d+)\s+p50\s+(?P<p50>{NUM}) ms\s+p95\s+(?P<p95>{NUM}) ms\s*(?P<x>.*)$"
    )
    out = []
    for rows in sizes:
        argv = ["bench/trace_bench.py", "--rows", str(rows), "--cases", str(cases), "--naive-cases", str(naive)]
        text = child(args.out, f"trace-{rows}", argv, 3600)
        queries = [
            {
                "query": m["q"],
                "n": int(m["n"]),
                "p50_ms": number(m["p50"]),
                "p95_ms": number(m["p95"]),
                "note": m["x"].strip(),
            }
            for line in text.splitlines()
            if (m := summary.match(line))
        ]
        fill = re.search(rf"generated\+inserted ({NUM}) rows in ({NUM}) s \(({NUM}) rows/s", text)
        if not queries:
            raise RuntimeError(f"no timings parsed from trace_bench.py --rows {rows}")
        out.append(
            {"rows": rows, "cases": cases, "fill_rows_per_s": number(fill[3]) if fill else None, "queries": queries}
        )
    return {"sizes": out}


def capacity_plan(e2e: dict[str, Any], cores_per_node: int) -> dict[str, Any]:
    """Cores and nodes for the derived peak and the design point, from the engine's measured CPU per scan.

    Planned on the middle batch size at 80 % repeats (capacity.py's default scenario) and at 0 % (every code
    new: the worst case). Headroom is what the planned nodes could take at 100 % CPU over the peak.
    """
    derived = capacity.peak_scans_per_s(
        PLAN["people"], PLAN["scans_per_person"], PLAN["peak_hour_share"], PLAN["burst"]
    )
    rows = []
    for r in e2e["results"]:
        if r["target"] != "engine" or r["batch_size"] != e2e["mid_batch"] or r["repeat_share"] not in (0.0, 0.8):
            continue
        for name, peak in (("derived peak", derived), ("design point", float(capacity.DESIGN_POINT))):
            cores, nodes = capacity.plan(peak, r["cpu_us_per_scan"], PLAN["utilisation"], cores_per_node)
            at_full = nodes * cores_per_node * 1e6 / r["cpu_us_per_scan"]
            rows.append(
                {
                    "scenario": name,
                    "peak": peak,
                    "repeat_share": r["repeat_share"],
                    "cpu_us_per_scan": r["cpu_us_per_scan"],
                    "cores": cores,
                    "nodes": nodes,
                    "scans_per_s_at_100pct": at_full,
                    "headroom_x": at_full / peak,
                }
            )
    return {
        "assumptions": {**PLAN, "cores_per_node": cores_per_node},
        "derived_peak": derived,
        "design_point": capacity.DESIGN_POINT,
        "rows": rows,
    }


STEPS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "verify": step_verify,
    "e2e": step_e2e,
    "wal": step_wal,
    "store": step_store,
    "trace": step_trace,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smoke run: every bench, tiny sizes, one round")
    mode.add_argument("--full", action="store_true", help="whole e2e grid, tracing on 10M rows too")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default reports/bench-<timestamp>)")
    ap.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps (default {','.join(STEPS)})")
    ap.add_argument("--e2e-rounds", type=int, default=3, help="rounds of every e2e scenario (median reported)")
    ap.add_argument("--cores-per-node", type=int, default=2, help="for the capacity plan")
    args = ap.parse_args(argv)
    args.out = (args.out or ROOT / "reports" / time.strftime("bench-%Y%m%d-%H%M%S")).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python bench/suite.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    doc: dict[str, Any] = {
        "command": command.strip(),
        "mode": "quick" if args.quick else "full" if args.full else "default",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine(),
        "load_before": load_average(),
        "steps": {},
        "errors": {},
    }
    t_start = time.perf_counter()
    for name in [s for s in args.only.split(",") if s]:
        t0, load0 = time.perf_counter(), load_average()
        print(f"[suite] {name} ... (load {load0})", flush=True)
        try:
            result = STEPS[name](args)
        except Exception as exc:  # one broken bench must not lose the others' figures
            doc["errors"][name] = f"{type(exc).__name__}: {exc}"
            (args.out / f"{name}.error.txt").write_text(traceback.format_exc())
            print(f"[suite] {name} FAILED: {exc}", flush=True)
            continue
        result.update(seconds=round(time.perf_counter() - t0, 1), load_before=load0, load_after=load_average())
        doc["steps"][name] = result
    if "e2e" in doc["steps"]:
        doc["capacity"] = capacity_plan(doc["steps"]["e2e"], args.cores_per_node)
    doc["load_after"] = load_average()
    doc["seconds"] = round(time.perf_counter() - t_start, 1)
    (args.out / "results.json").write_text(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    for path in write_report(doc, args.out):
        print(f"[suite] wrote {path}")
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
