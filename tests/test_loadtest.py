"""The load-test path, kept from rotting: its scan mix, its safety rail, its checker, and short real runs.

The short runs start a real engine (``python -m engine serve`` on 127.0.0.1, embedded chdb, WAL fsync on),
drive it with real Locust processes for a few seconds and check the stopped engine's store scan by scan.
Nothing here asserts a speed: only that every acknowledged scan was stored once with the expected verdict
and that Locust's reports were written.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.codes.verdicts import VERDICTS
from engine.verify import make_verifier
from engine.verify.contract import CodeBatch
from engine.verify.reference import PyVerifier
from loadtest.checker import Sent, check, load_results
from loadtest.scenario import DEFAULT_MIX, MAX_DURATION_S, REJECTED, Keyring, ScanMix, require_loopback, users_at

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def keys() -> Keyring:
    return Keyring.create(2, revoked_codes=5)


@pytest.mark.parametrize("impl", ["python", "active"])
def test_generator_knows_every_verdict(keys: Keyring, impl: str) -> None:
    """The expectation the checker holds the engine to must be what the reference verifier says."""
    now = int(time.time())
    mix = ScanMix(keys, now=now, rng=random.Random(5), population=500)
    items, expected = mix.batch(4000, "venue-1")
    table = keys.trust_list(now).table()
    secret = b"k" * 32
    verifier = PyVerifier(table, secret) if impl == "python" else make_verifier(table, secret, threads=2)
    judged = [(it["qr"].encode(), e) for it, e in zip(items, expected, strict=True) if e != REJECTED]
    result = verifier.verify_batch(CodeBatch.from_codes([c for c, _ in judged]), now)
    got = [VERDICTS[v] for v in result.verdict]
    assert [e for _, e in judged] == got
    assert set(expected) == set(DEFAULT_MIX)  # every kind of the mix actually occurs in 4000 scans


def test_genuine_codes_repeat_like_a_zipf_law(keys: Keyring) -> None:
    mix = ScanMix(keys, rng=random.Random(9), population=2000)
    codes = Counter(mix.code("ok") for _ in range(5000))
    top = codes.most_common(10)
    assert top[0][1] > 300  # the most scanned person appears hundreds of times...
    assert sum(1 for n in codes.values() if n == 1) > 200  # ...while many are scanned once


def test_backlog_scans_are_hours_old_and_in_order(keys: Keyring) -> None:
    mix = ScanMix(keys, rng=random.Random(3), mix={"ok": 1.0})
    items, _ = mix.batch(300, "venue-2", backlog_s=6 * 3600)
    times = [it["scanned_at"] for it in items]
    now_ms = time.time() * 1000
    assert times == sorted(times)
    assert now_ms - times[0] > 3 * 3600 * 1000
    assert len({it["scan_id"] for it in items}) == 300


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:8080", "http://127.9.9.9"]
)
def test_loopback_targets_are_accepted(url: str) -> None:
    require_loopback(url)


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1:8080", "https://example.com", "http://0.0.0.0:8080", "http://192.168.1.5", "http://"]
)
def test_other_targets_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="only targets"):
        require_loopback(url)


def test_morning_shape_ramps_bursts_and_ends() -> None:
    duration, peak = 100.0, 40
    users = [users_at(t, duration, peak) for t in range(100)]
    assert users[0] == 1 and users[10] == 10 and users[30] == 20  # ramp to half the peak, then plateau
    assert max(u for u in users if u is not None) == peak and users[60] == peak  # the burst
    assert users[99] is not None and users[99] < 10  # decline
    assert users_at(duration, duration, peak) is None  # Locust stops the run
    assert MAX_DURATION_S <= 3600


def test_checker_counts_every_kind_of_fault() -> None:
    def k(sid: str, device: str = "dev-1") -> tuple[str, str]:
        return (device, sid)

    sent = Sent()
    sent.acked = {k("a"): "ok", k("b"): "ok", k("c"): "expired", k("d"): "malformed"}
    sent.unacked = {k("u")}
    sent.refused = {k("r")}
    sent.statuses = Counter({202: 3, 503: 1})
    stored = {
        k("a"): ["ok"],
        k("b"): ["ok", "ok"],
        k("c"): ["ok"],
        k("u"): ["ok"],
        k("r"): ["ok"],
        k("z"): ["malformed"],
        k("a", "dev-2"): ["ok"],  # dev-1's scan id from another device: nobody acknowledged that scan
    }
    report = check(sent, stored)
    assert report.lost == [k("d")]
    assert report.duplicates == [k("b")]
    assert report.mismatched == [k("c")]
    assert sorted(report.phantoms) == [k("r"), k("z"), k("a", "dev-2")]
    assert report.unacked_stored == 1
    assert report.confusion[("expired", "ok")] == 1 and report.confusion[("malformed", "(lost)")] == 1
    assert report.as_dict()["examples"]["lost"] == ["dev-1/d"]
    assert not report.ok
    clean = check(sent, {k("a"): ["ok"], k("b"): ["ok"], k("c"): ["expired"], k("d"): ["malformed"]})
    assert clean.ok and clean.as_dict()["lost"] == 0


def test_checker_counts_the_same_scan_id_from_two_devices_as_two_scans(tmp_path: Path) -> None:
    """Issue 12: (device, scan id) is the identity; a shared scan id is neither a conflict nor a duplicate."""
    lines = [
        {"t": 1.0, "device": "dev-1", "task": "batch", "status": 202, "scans": [["s1", "ok", "stored", "ok"]]},
        {
            "t": 2.0,
            "device": "dev-2",
            "task": "batch",
            "status": 202,
            "scans": [["s1", "expired", "stored", "expired"]],
        },
    ]
    (tmp_path / "scans-h-1.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    sent = load_results(tmp_path)
    assert sent.conflicts == 0 and sent.answer_mismatches == 0
    assert sent.acked == {("dev-1", "s1"): "ok", ("dev-2", "s1"): "expired"}
    report = check(sent, {("dev-1", "s1"): ["ok"], ("dev-2", "s1"): ["expired"]})
    assert report.ok and not report.duplicates and report.stored_ids == 2
    lost_one = check(sent, {("dev-1", "s1"): ["ok"]})  # keyed by scan id alone this would pass
    assert lost_one.lost == [("dev-2", "s1")]


def _run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "loadtest" / "run.py"), "--out", str(tmp_path), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    runs = sorted(tmp_path.iterdir())
    assert len(runs) == 1, proc.stdout + proc.stderr
    run_dir = runs[0]
    assert (run_dir / "summary.json").exists(), proc.stdout + proc.stderr
    return proc, orjson.loads((run_dir / "summary.json").read_bytes()), run_dir


def _assert_clean(proc: subprocess.CompletedProcess[str], summary: dict[str, Any], run_dir: Path) -> None:
    detail = proc.stdout[-4000:] + proc.stderr[-4000:]
    ck = summary["check"]
    assert proc.returncode == 0, detail
    assert summary["ok"] and summary["engine_exit"] == 0, detail
    assert ck["scans_acknowledged"] > 0 and ck["requests"] > 0, detail
    assert ck["lost"] == ck["duplicates"] == ck["mismatched"] == ck["phantoms"] == 0, detail
    assert ck["answer_mismatches"] == 0 and ck["wal_records_not_drained"] == 0, detail
    assert ck["stored_scans"] >= ck["scans_acknowledged"], detail
    for report in ("locust_stats.csv", "locust_failures.csv", "report.html"):
        assert (run_dir / report).stat().st_size > 0, report
    assert "LOST 0" in proc.stdout and "RESULT: PASS" in proc.stdout


def test_short_load_run_loses_nothing(tmp_path: Path) -> None:
    proc, summary, run_dir = _run(tmp_path, "--users", "3", "--spawn-rate", "3", "--run-time", "3")
    _assert_clean(proc, summary, run_dir)
    assert len(list((run_dir / "results").glob("*.jsonl"))) == 1


def test_distributed_run_merges_every_workers_results(tmp_path: Path) -> None:
    proc, summary, run_dir = _run(tmp_path, "--users", "4", "--spawn-rate", "4", "--run-time", "3", "--workers", "2")
    _assert_clean(proc, summary, run_dir)
    files = list((run_dir / "results").glob("*.jsonl"))
    assert len(files) == 2
    devices = [{orjson.loads(line)["device"] for line in f.read_bytes().splitlines()} for f in files]
    assert devices[0] and devices[1] and not devices[0] & devices[1]  # workers drive disjoint devices
