"""One command for a whole load test: engine up, devices registered, Locust, engine down, store checked.

    python loadtest/run.py --users 20 --run-time 60
    python loadtest/run.py --shape morning --peak-factor 2 --peak-duration 300
    python loadtest/run.py --workers 2 --users 40 --run-time 120      # one Locust master, two workers
    python loadtest/run.py --workload city --people 50000 --days 3    # genuine codes follow a city's routines

Each run gets a fresh folder ``<out>/<timestamp>/`` (``--out`` defaults to ``reports/loadtest``) holding the
engine's data directory (``data/``, kept for inspection), its log, the keys file, the generators' per-process
results (``results/*.jsonl``), Locust's CSV and HTML reports, and ``summary.json``. The engine is a real
``python -m engine serve`` child on 127.0.0.1 (nothing else is ever targeted), stopped with SIGTERM so it
drains its WAL into the store, which is then opened directly and compared scan by scan with what the
generators were acknowledged (``checker.py``).

Exit status: 0 when nothing was lost, duplicated or judged differently than expected; 1 otherwise; 2 when the
run itself could not be carried out (engine did not start, Locust did not finish in time).
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import city_load  # noqa: E402
from bench.population import CityParams  # noqa: E402
from engine.codes.payload import b64url_encode  # noqa: E402
from loadtest.checker import check, format_confusion, load_results, stored_scans, wal_backlog  # noqa: E402
from loadtest.scenario import BASE_PEAK_USERS, Keyring  # noqa: E402

HOST = "127.0.0.1"
LOCUST_FILE = ROOT / "loadtest" / "locustfile.py"
SHAPE_FILE = ROOT / "loadtest" / "shapes.py"
MAX_RUN_S = 3600


class RunError(Exception):
    """The load test could not be carried out (as opposed to: it ran and found a fault)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Engine:
    """The engine under test, as a child process on loopback."""

    def __init__(self, data_dir: Path, log_path: Path, extra_env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.port, self.ops_port = free_port(), free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.ops_url = f"http://{HOST}:{self.ops_port}"  # /metrics lives on the operations listener
        self.log_path = log_path
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "ENGINE_HOST": HOST,
            "ENGINE_PORT": str(self.port),
            "ENGINE_OPS_PORT": str(self.ops_port),  # the operations listener, off the shared default port
            "ENGINE_DATA_DIR": str(data_dir),
            "ENGINE_LOG_LEVEL": "WARNING",
            **extra_env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine", "serve"], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RunError(f"engine exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RunError(f"engine did not answer /healthz within {timeout:.0f}s; see {self.log_path}")

    def register(self, keys: Keyring) -> None:
        token = (self.data_dir / "admin.token").read_text().strip()
        for i in range(len(keys.devices)):
            device_id, key = keys.device_key(i)
            body = orjson.dumps({"device_id": device_id, "public_key": b64url_encode(bytes(key.verify_key))})
            req = urllib.request.Request(
                self.url + "/v1/admin/devices",
                data=body,
                method="POST",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                if r.status != 201:
                    raise RunError(f"registering {device_id}: HTTP {r.status}")

    def cache_counts(self) -> dict[str, Any]:
        """The cache hit rate the run produced, from the engine's /metrics counters (read just before the stop)."""
        try:
            now = city_load.counters(self.ops_url)
        except OSError as exc:
            raise RunError(f"cannot read {self.ops_url}/metrics: {exc}") from None
        rate, lookups = city_load.hit_rate(dict.fromkeys(city_load.COUNTERS, 0.0), now)
        return {"hits": int(now["engine_cache_hits_total"]), "lookups": lookups, "hit_rate": rate}

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM: the engine answers what it accepted, drains the WAL into the store, then exits."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RunError(f"engine did not stop within {timeout:.0f}s of SIGTERM (killed)") from None


def locust_commands(args: argparse.Namespace, url: str, run_dir: Path) -> list[list[str]]:
    """The Locust processes to start: one local runner, or a master and ``--workers`` workers."""
    files = f"{LOCUST_FILE},{SHAPE_FILE}" if args.shape == "morning" else str(LOCUST_FILE)
    common = [sys.executable, "-m", "locust", "-f", files, "--host", url, "--loglevel", "WARNING"]
    common += ["--keys-file", str(run_dir / "keys.json"), "--results-dir", str(run_dir / "results")]
    common += ["--device-stride", str(max(1, args.workers)), "--max-wait", str(args.max_wait)]
    if args.workload == "city":
        common += ["--workload-file", str(run_dir / "workload.json")]
    driver = ["--headless", "--csv", str(run_dir / "locust"), "--html", str(run_dir / "report.html")]
    driver += ["--stop-timeout", "15", "--only-summary"]
    if args.shape == "morning":
        driver += ["--peak-factor", str(args.peak_factor), "--peak-duration", str(args.peak_duration)]
    else:
        driver += ["-u", str(args.users), "-r", str(args.spawn_rate), "--run-time", f"{args.run_time}s"]
    if args.workers <= 0:
        return [common + driver]
    port = free_port()
    master = [*common, *driver, "--master", "--master-bind-host", HOST, "--master-bind-port", str(port)]
    master += ["--expect-workers", str(args.workers), "--expect-workers-max-wait", "60"]
    workers = [[*common, "--worker", "--master-host", HOST, "--master-port", str(port)] for _ in range(args.workers)]
    return [master, *workers]


def run_locust(commands: list[list[str]], run_dir: Path, budget_s: float) -> int:
    """Start every Locust process, wait for the driver (local runner or master) within the time budget."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for i, cmd in enumerate(commands):
            log = (run_dir / f"locust-{i}.log").open("wb")
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT
                )
            )
        try:
            code = procs[0].wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            raise RunError(f"Locust did not finish within {budget_s:.0f}s") from None
        for p in procs[1:]:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.terminate()
        return code
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


def locust_totals(run_dir: Path) -> dict[str, Any]:
    """The 'Aggregated' row of Locust's stats CSV: requests/s and latency percentiles as Locust measured them."""
    path = run_dir / "locust_stats.csv"
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    agg = rows.get("Aggregated", {})
    pick = {"Request Count": "requests", "Failure Count": "failures", "Requests/s": "requests_per_s"}
    pick |= {"50%": "p50_ms", "95%": "p95_ms", "99%": "p99_ms", "Max Response Time": "max_ms"}
    out: dict[str, Any] = {v: float(agg[k]) for k, v in pick.items() if agg.get(k) not in (None, "", "N/A")}
    out["by_name"] = {
        name: {"requests": int(r["Request Count"]), "p50_ms": r["50%"], "p99_ms": r["99%"]}
        for name, r in rows.items()
        if name != "Aggregated"
    }
    return out


def print_summary(summary: dict[str, Any], confusion: str) -> None:
    lc, ck = summary["locust"], summary["check"]
    print(f"run folder          {summary['run_dir']}")
    print(f"engine exit code    {summary['engine_exit']}   locust exit code {summary['locust_exit']}")
    print(
        f"requests            {ck['requests']}  by status {ck['requests_by_status']}  by task {ck['requests_by_task']}"
    )
    if lc:
        print(
            f"locust              {lc.get('requests_per_s', 0):.1f} req/s, p50 {lc.get('p50_ms', 0):.0f} ms, "
            f"p95 {lc.get('p95_ms', 0):.0f} ms, p99 {lc.get('p99_ms', 0):.0f} ms, failures {lc.get('failures', 0):.0f}"
        )
    print(
        f"scans               sent {ck['scan_items_sent']} (retries incl.), acknowledged {ck['scans_acknowledged']}, "
        f"refused {ck['scans_refused_by_engine']}, unacknowledged {ck['scans_unacknowledged']} "
        f"(of which stored {ck['unacknowledged_but_stored']})"
    )
    print(f"store               {ck['stored_rows']} rows, {ck['stored_scans']} scans (device, scan id)")
    print(f"throughput          {ck['acknowledged_scans_per_s']} acknowledged scans/s over {ck['span_s']} s")
    print(
        f"LOST {ck['lost']}   DUPLICATES {ck['duplicates']}   MISMATCHED {ck['mismatched']}   "
        f"PHANTOMS {ck['phantoms']}   ANSWER MISMATCHES {ck['answer_mismatches']}   "
        f"(WAL records not drained at exit: {ck['wal_records_not_drained']})"
    )
    c = summary["cache"]
    rate = "n/a" if c["hit_rate"] is None else f"{c['hit_rate']:.1%}"
    print(f"verified-code cache hit rate {rate} ({c['hits']} hits of {c['lookups']} lookups, from /metrics)")
    print(confusion)
    print("RESULT: " + ("PASS" if summary["ok"] else "FAIL"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "loadtest", help="parent of the run folder")
    ap.add_argument("--users", type=int, default=10, help="simulated scanners (flat shape)")
    ap.add_argument("--spawn-rate", type=float, default=5.0)
    ap.add_argument("--run-time", type=int, default=30, help="seconds of load (flat shape)")
    ap.add_argument("--max-wait", type=float, default=1.0, help="seconds a device waits between uploads, at most")
    ap.add_argument("--devices", type=int, default=0, help="devices to register; default: enough for every user")
    ap.add_argument("--shape", choices=("flat", "morning"), default="flat")
    ap.add_argument("--peak-factor", type=float, default=1.0, help="morning shape: peak = 20 users x factor")
    ap.add_argument("--peak-duration", type=float, default=120.0, help="morning shape: total seconds")
    ap.add_argument("--workers", type=int, default=0, help="0: one local Locust; N: a master and N workers")
    ap.add_argument("--engine-env", action="append", default=[], metavar="KEY=VALUE", help="extra ENGINE_* setting")
    ap.add_argument("--workload", choices=("mix", "city"), default="mix", help="genuine codes: Zipf mix or a city")
    ap.add_argument("--people", type=int, default=50_000, help="city workload: population")
    ap.add_argument("--days", type=int, default=3, help="city workload: days of routines")
    ap.add_argument("--code-cache", type=Path, default=None, help="city workload: where minted codes are cached")
    args = ap.parse_args(argv)
    if args.workload == "city":
        try:
            args.city = CityParams(people=args.people, days=args.days).validate()
        except ValueError as exc:
            ap.error(str(exc))
    duration = args.peak_duration if args.shape == "morning" else args.run_time
    if not 1 <= duration <= MAX_RUN_S:
        ap.error(f"the run must last 1..{MAX_RUN_S} seconds")
    if args.users < 1 or args.workers < 0 or args.peak_factor <= 0:
        ap.error("--users >= 1, --workers >= 0 and --peak-factor > 0 please")
    peak_users = round(BASE_PEAK_USERS * args.peak_factor) if args.shape == "morning" else args.users
    args.devices = args.devices or max(1, peak_users)
    args.duration = duration
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = args.out / time.strftime("%Y%m%d-%H%M%S")
    while run_dir.exists():
        run_dir = run_dir.with_name(run_dir.name + "x")
    data_dir = run_dir / "data"
    data_dir.mkdir(mode=0o700, parents=True)  # the engine refuses a data directory others can read
    keys = Keyring.create(args.devices)
    if args.workload == "city":  # the city's codes are signed by the bench issuer: make it the trusted issuer
        from dataclasses import replace

        from loadtest.city import issuer_seed_hex, write_workload

        keys = replace(keys, issuer=issuer_seed_hex())
        write_workload(run_dir / "workload.json", args.city, args.code_cache)
    keys.save(run_dir / "keys.json")
    keys.trust_list(int(time.time())).save(data_dir / "trust.json")
    extra_env = dict(kv.split("=", 1) for kv in args.engine_env)
    engine = Engine(data_dir, run_dir / "engine.log", extra_env)
    try:
        engine.start()
        engine.register(keys)
        print(f"engine on {engine.url}, {args.devices} devices registered; load for {args.duration:.0f} s ...")
        locust_exit = run_locust(locust_commands(args, engine.url, run_dir), run_dir, args.duration + 180)
        cache = engine.cache_counts()
    except RunError as exc:
        engine.stop()
        print(f"load test not carried out: {exc}", file=sys.stderr)
        return 2
    engine_exit = engine.stop()
    report = check(load_results(run_dir / "results"), stored_scans(data_dir), wal_backlog(data_dir))
    summary = {
        "run_dir": str(run_dir),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "engine_exit": engine_exit,
        "locust_exit": locust_exit,
        "locust": locust_totals(run_dir),
        "check": report.as_dict(),
        "cache": cache,
    }
    summary["ok"] = report.ok and engine_exit == 0 and set(report.sent.statuses) <= {202, 429, 503}
    (run_dir / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print_summary(summary, format_confusion(report.confusion))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
