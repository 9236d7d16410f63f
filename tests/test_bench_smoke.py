"""The benchmark suite in its quickest mode, so the benches never rot: a broken bench fails here, not on the day
someone needs the figures. It runs the real thing (engine subprocesses, chdb, the C loop) on tiny sizes and checks
what the report is made of; the figures themselves are meaningless at these sizes and nothing here times anything.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = (
    "## Machine",
    "## Verify throughput by path",
    "## End-to-end: scans/s, ack latency, server CPU per scan",
    "## WAL group commit",
    "## Store inserts",
    "## Tracing latency vs table size",
    "## Capacity plan",
)
PLOTS = ("verify.png", "e2e_batch.png", "cpu_per_scan.png", "trace.png")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("bench") / "report"
    done = subprocess.run(
        [sys.executable, "bench/suite.py", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    return out, done


@pytest.mark.slow
def test_quick_suite_succeeds(report: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, done = report
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not (list(out.glob("*.error.txt"))), [p.read_text()[-2000:] for p in out.glob("*.error.txt")]


@pytest.mark.slow
def test_report_has_every_section(report: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = report
    md = (out / "report.md").read_text()
    for section in SECTIONS:
        assert section in md, section
    assert "Not measured" not in md and "## Errors" not in md, md
    assert "python bench/suite.py --quick --out" in md, "the exact command is in the report"
    assert "load average" in md and "| verifier |" in md
    for plot in PLOTS:
        assert f"]({plot})" in md, f"{plot} is linked from the report"


@pytest.mark.slow
def test_plots_are_pngs(report: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = report
    for plot in PLOTS:
        data = (out / plot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", plot
        assert len(data) > 5_000, f"{plot} looks empty"


@pytest.mark.slow
def test_results_json_holds_every_figure(report: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = report
    doc = orjson.loads((out / "results.json").read_bytes())
    assert doc["errors"] == {}
    assert set(doc["steps"]) == {"verify", "e2e", "wal", "store", "trace"}
    assert {"cpu", "cores", "python", "verifier"} <= set(doc["machine"])
    verify_paths = {r["path"] for r in doc["steps"]["verify"]["rows"]}
    assert any(p.startswith("C loop") for p in verify_paths) and any("PyNaCl" in p for p in verify_paths)
    e2e = doc["steps"]["e2e"]["results"]
    assert {r["target"] for r in e2e} == {"engine", "naive"}
    assert {r["batch_size"] for r in e2e if r["target"] == "engine"} == {256, 1024}
    for r in e2e:
        if r["target"] == "engine":
            assert r["statuses"] == {"202": r["rounds"] * doc["steps"]["e2e"]["requests"]}, r
        assert r["scans_per_s"] > 0 and r["cpu_us_per_scan"] > 0
    assert all(r["rows_per_s"] > 0 for r in doc["steps"]["store"]["results"])
    assert doc["steps"]["store"]["rows_stored"] > 0
    assert [s["rows"] for s in doc["steps"]["trace"]["sizes"]] == [20_000]
    assert any(q["query"].startswith("by person key") for q in doc["steps"]["trace"]["sizes"][0]["queries"])
    plan = doc["capacity"]
    assert {r["scenario"] for r in plan["rows"]} == {"derived peak", "design point"}
    assert all(r["nodes"] >= 1 and r["headroom_x"] >= 1 for r in plan["rows"])


@pytest.mark.slow
def test_floor_bench_measures_every_part_of_the_stack(tmp_path: Path) -> None:
    """bench/floor_bench.py (the mandated stack's own cost beside verify-only) runs, and its floor is the sum
    of the parts it names; a floor server that answered anything but 202 would have failed the run."""
    out = tmp_path / "floor.json"
    done = subprocess.run(
        [sys.executable, "bench/floor_bench.py", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = orjson.loads(out.read_bytes())
    med = doc["median_us"]
    assert set(med) == {"verify", "http", "auth", "intake", "store"}
    assert med["verify"] > 0 and med["store"] > 0  # the server stages can round to 0 clock ticks on 4k scans
    assert doc["floor_us"] == pytest.approx(med["intake"] + med["store"], abs=0.02)
    assert doc["floor_vs_verify"] == pytest.approx(doc["floor_us"] / med["verify"], rel=0.01)
    assert "floor = intake + store" in done.stdout


@pytest.mark.slow
def test_e2e_bench_tls_runs_beside_plain(tmp_path: Path) -> None:
    """``e2e_bench.py --tls`` makes its own certificate, drives the engine over HTTPS beside the plain run, and
    prints the side-by-side line; every request got its 202 over both."""
    out = tmp_path / "e2e.json"
    cmd = [sys.executable, "bench/e2e_bench.py", "--quick", "--tls", "--no-naive", "--repeat-shares", "0"]
    done = subprocess.run(
        [*cmd, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = orjson.loads(out.read_bytes())
    assert [r["target"] for r in doc["results"]] == ["engine", "engine-tls"]
    for r in doc["results"]:
        assert r["statuses"] == {"202": 40} and r["cpu_us_per_scan"] > 0, r
    assert "TLS on vs off" in done.stdout


@pytest.mark.slow
def test_trace_bench_two_sizes_side_by_side(tmp_path: Path) -> None:
    """bench/trace_bench.py fills two tiny stores, pairs their stays, and every query it times beside the
    previous path agreed with it (it exits non-zero otherwise); the closing table has a column per size."""
    done = subprocess.run(
        [sys.executable, "bench/trace_bench.py", "--rows", "8000,16000", "--cases", "3", "--second-cases", "2",
         "--naive-cases", "1", "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert out.count("pairing stays up to block") == 2
    table = out[out.index("p50 / p95 ms by size") :]
    assert "8,000 rows" in table and "16,000 rows" in table
    for label in ("by person key", "before: by person key", "second degree", "venue view"):
        assert f"\n  {label} " in table, label


@pytest.mark.slow
def test_e2e_bench_runs_the_server_store_beside_the_embedded_one_with_workers(tmp_path: Path) -> None:
    """``e2e_bench.py --store both --workers 1,2``: the embedded engine, the engine on a ClickHouse server (whose
    own CPU per scan is reported), and two SO_REUSEPORT workers, in one run; every request answered 202."""
    out = tmp_path / "e2e.json"
    done = subprocess.run(
        [
            *(sys.executable, "bench/e2e_bench.py", "--quick", "--no-naive", "--repeat-shares", "0.8"),
            *("--store", "both", "--workers", "1,2", "--json", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = orjson.loads(out.read_bytes())["results"]
    assert [(r["store"], r["workers"]) for r in results] == [("embedded", 1), ("server", 1), ("server", 2)]
    for r in results:
        assert r["statuses"] == {"202": r["requests"]} and r["cpu_us_per_scan"] > 0, r
        assert (r["store_server_cpu_us_per_scan"] is not None) == (r["store"] == "server"), r
    assert "ClickHouse server" in done.stdout


@pytest.mark.slow
def test_codeset_bench_quick_loads_every_row() -> None:
    """bench/codeset_bench.py end to end on 20,000 rows: published, warm-loaded, none refused, memory reported."""
    done = subprocess.run(
        [sys.executable, "bench/codeset_bench.py", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "added 20,000, refused 0, set size 20,000" in done.stdout and "B/entry" in done.stdout


@pytest.mark.slow
def test_registry_bench_quick_reads_only_what_changed() -> None:
    """bench/registry_bench.py on 2,000 devices and a real server: the incremental read holds the 10 revoked only."""
    done = subprocess.run(
        [sys.executable, "bench/registry_bench.py", "--devices", "2000", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.split()[:1] == ["2000"]]
    assert [(r[1], r[2]) for r in rows] == [("full", "2000"), ("changed", "10")], done.stdout


def test_isolation_bench_runs_its_scenarios_side_by_side() -> None:
    """``isolation_bench.py`` measures the honest device alone and beside the forged-code flood in one run, and
    prints both rows with what the flooder got (429s once its budgets and quarantine hold it)."""
    cmd = [sys.executable, "bench/isolation_bench.py", "--scenarios", "alone,flood", "--rounds", "1"]
    cmd += ["--seconds", "2", "--rows", "1000", "--rate", "5", "--scans", "5", "--flood-connections", "4"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith(("alone ", "flood "))}
    assert set(rows) == {"alone", "flood"} and "p99 ÷ alone" in done.stdout, done.stdout
    assert "flood 202" in rows["flood"] or "flood 429" in rows["flood"], rows["flood"]


@pytest.mark.slow
def test_distributed_trace_bench_compares_equal_answers_side_by_side() -> None:
    """bench/distributed_trace_bench.py on a small world: a 2-shard cluster and one server, equal answers, a ratio."""
    done = subprocess.run(
        [sys.executable, "bench/distributed_trace_bench.py", "--people", "2000", "--venues", "200", "--cases", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "identical answers on both" in done.stdout and "Distributed ÷ one server, p50:" in done.stdout
    rows = [line.split()[:2] for line in done.stdout.splitlines() if line.startswith(("2 shards", "one server"))]
    assert len(rows) == 2, done.stdout
