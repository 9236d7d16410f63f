"""The operator's CLI against a real engine: found from ``--data-dir`` alone, stale and locked cases explained,
``scans list`` without personal data, per-command help, ``--version``, structured logs and the access log.

Every command runs as ``python -m engine`` in a subprocess, as an operator types it; the engine is a real
``serve`` process with the embedded store on a port the commands are never told.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.cli import address
from engine.devices.client import sign_request
from engine.testing.engines import DEVICE_ID, EngineProcess, Fixture, admin_headers, device_registration, make_fixture

pytestmark = pytest.mark.system


def cli(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}  # nothing but the flags given
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **(env or {})},
    )


def post_scans(proc: EngineProcess, fx: Fixture, scans: list[dict[str, Any]]) -> dict[str, Any]:
    body = orjson.dumps({"device_id": DEVICE_ID, "scans": scans})
    headers = {"Content-Type": "application/json", **sign_request(fx.device, DEVICE_ID, "POST", "/v1/scans", body)}
    req = urllib.request.Request(proc.url + "/v1/scans", data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return dict(orjson.loads(r.read()))


class Live:
    def __init__(self, proc: EngineProcess, fx: Fixture) -> None:
        self.proc, self.fx, self.data_dir = proc, fx, fx.data_dir


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    fx = make_fixture(tmp_path_factory.mktemp("cli_ops") / "data")
    env = {"ENGINE_BATCH_AGE_MS": "1", "ENGINE_INSERT_INTERVAL_MS": "50", "ENGINE_LOG_FORMAT": "json"}
    proc = EngineProcess(fx.data_dir, ENGINE_ACCESS_LOG="1", **env).start()
    try:
        proc.post_json("/v1/admin/devices", device_registration(fx), admin_headers(fx.data_dir))
        yield Live(proc, fx)
    finally:
        proc.terminate()


def test_the_engine_records_where_it_listens(live: Live) -> None:
    found = address.read(live.data_dir)
    assert found is not None and live.proc.proc is not None
    assert found.pid == live.proc.proc.pid and found.url == live.proc.url


def test_commands_find_the_engine_from_the_data_directory_alone(live: Live, tmp_path: Path) -> None:
    registered = cli("device-register", "--data-dir", live.data_dir, "--device-id", "kiosk-7", "--out", tmp_path / "k")
    assert registered.returncode == 0, registered.stderr
    assert "directly in the store" not in registered.stdout  # it went through the running engine
    listed = cli("device-list", "--data-dir", live.data_dir, "--json")
    assert listed.returncode == 0, listed.stderr
    assert {d["device_id"] for d in orjson.loads(listed.stdout)["devices"]} >= {"kiosk-7", DEVICE_ID}
    wal = cli("wal", "--data-dir", live.data_dir, "--json")
    assert wal.returncode == 0 and "store_ok" in orjson.loads(wal.stdout), wal.stderr


def test_scans_list_shows_who_sent_what_and_no_personal_data(live: Live) -> None:
    now = int(time.time() * 1000)
    good = live.fx.code(1)
    forged = live.fx.code(2)[:-3] + ("AAA" if not live.fx.code(2).endswith("AAA") else "BBB")
    scans = [
        {"scan_id": str(uuid.uuid4()), "qr": good, "venue_id": "venue-ops", "direction": "in", "scanned_at": now},
        {"scan_id": str(uuid.uuid4()), "qr": forged, "venue_id": "venue-ops", "direction": "in", "scanned_at": now},
    ]
    answer = post_scans(live.proc, live.fx, scans)
    assert answer["stored"] == 2, answer
    deadline = time.monotonic() + 30
    while True:
        out = cli("scans", "list", "--data-dir", live.data_dir, "--venue", "venue-ops", "--format", "json")
        assert out.returncode == 0, out.stderr
        rows = orjson.loads(out.stdout)["scans"]
        if len(rows) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert {r["scan_id"] for r in rows} == {s["scan_id"] for s in scans}
    assert all(r["device_id"] == DEVICE_ID and r["kind"] == "signed" for r in rows)
    bad = cli("scans", "list", "--data-dir", live.data_dir, "--verdict", "bad_signature", "--format", "csv")
    assert bad.returncode == 0, bad.stderr
    lines = bad.stdout.splitlines()
    assert lines[0].startswith("scan_id,device_id,venue_id") and len(lines) == 2
    assert scans[1]["scan_id"] in lines[1] and DEVICE_ID in lines[1]
    everything = out.stdout + bad.stdout
    for personal in ("NGUYEN", "QID", good.split("|")[0]):
        assert personal not in everything
    table = cli("scans", "list", "--data-dir", live.data_dir, "--venue", "venue-ops", "--tz", "Asia/Ho_Chi_Minh")
    assert table.returncode == 0 and "+07:00" in table.stdout and "2 scans" in table.stdout, table.stderr


def test_tracing_through_a_running_engine_says_it_needs_a_tracer_token(live: Live) -> None:
    case = ("--case-id", "HN-2026-0042")
    refused = cli("trace", "person", "--qr-id", "QID0000000001", "--data-dir", live.data_dir, *case)
    assert refused.returncode == 2 and "tracer-add" in refused.stderr and "Traceback" not in refused.stderr
    added = cli("tracer-add", "team-hn", "--data-dir", live.data_dir)
    assert added.returncode == 0, added.stderr
    token = {"ENGINE_TRACER_TOKEN": added.stdout.strip()}  # the environment, never argv
    traced = cli(
        "trace", "person", "--qr-id", "QID0000000001", "--data-dir", live.data_dir, *case,
        "--tz", "Asia/Ho_Chi_Minh", "--format", "json", env=token,
    )  # fmt: skip
    assert traced.returncode == 0, traced.stderr
    doc = orjson.loads(traced.stdout)
    assert doc["from"].endswith("+07:00") and doc["to"].endswith("+07:00")
    bad_zone = cli("trace", "person", "--qr-id", "Q", "--data-dir", live.data_dir, *case, "--tz", "Mars/X", env=token)
    assert bad_zone.returncode == 2 and "unknown time zone" in bad_zone.stderr


def test_json_logs_and_the_access_log_carry_request_facts_as_fields(live: Live) -> None:
    with urllib.request.urlopen(live.proc.url + "/healthz?qr_id=SECRET123", timeout=10) as r:
        assert r.status == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [orjson.loads(line) for line in live.proc.log_path.read_text().splitlines() if line.startswith("{")]
        access = [e for e in lines if e["logger"] == "engine.access" and e["http"]["path"] == "/healthz"]
        if access:
            break
        time.sleep(0.2)
    assert access and access[-1]["http"]["status"] == 200 and access[-1]["level"] == "INFO"
    assert "SECRET123" not in live.proc.log_path.read_text()  # query strings (QR ids) are never logged
    raw = [line for line in live.proc.log_path.read_text().splitlines() if line.strip()]
    assert all(line.startswith("{") for line in raw), [line for line in raw if not line.startswith("{")][:3]


def test_a_stale_address_is_detected_and_removed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    address.write(data, address.EngineAddress(gone.pid, "http://127.0.0.1:9", time.time(), "0"))
    (data / "admin.token").write_text("x\n")
    listed = cli("device-list", "--data-dir", data)
    assert listed.returncode == 0, listed.stderr
    assert "stale" in listed.stderr and not address.path_of(data).exists()


def test_a_locked_store_is_explained_not_dumped(tmp_path: Path) -> None:
    """An engine this command cannot reach holds the store: one clear line, no raw ClickHouse exception."""
    fx = make_fixture(tmp_path / "data")
    proc = EngineProcess(fx.data_dir).start()
    try:
        address.path_of(fx.data_dir).unlink()  # as if the engine predates engine.json, on another port
        out = cli("device-list", "--data-dir", fx.data_dir, "--port", "9")
        assert out.returncode == 2
        assert "in use by another process" in out.stderr and str(proc.proc.pid if proc.proc else "") in out.stderr
        assert "DB::Exception" not in out.stderr and "Code: 76" not in out.stderr and "Traceback" not in out.stderr
    finally:
        assert proc.terminate() == 0
    assert not address.path_of(fx.data_dir).exists()


def test_a_clean_exit_removes_the_address(tmp_path: Path) -> None:
    fx = make_fixture(tmp_path / "data")
    proc = EngineProcess(fx.data_dir).start()
    assert address.path_of(fx.data_dir).exists()
    assert proc.terminate() == 0
    assert not address.path_of(fx.data_dir).exists()


def test_each_command_shows_only_its_own_flags_with_defaults() -> None:
    for command in (["device-list"], ["stats"], ["trace", "person"], ["scans", "list"], ["tracer-add"]):
        shown = cli(*command, "--help")
        assert shown.returncode == 0 and "--data-dir" in shown.stdout, command
        for serve_only in ("--batch-size", "--wal-budget-mb", "--verify-threads", "--insert-interval-ms"):
            assert serve_only not in shown.stdout, (command, serve_only)
    serve = cli("serve", "--help").stdout
    assert "--batch-size" in serve and "(default: 2048)" in " ".join(serve.split())
    assert "--log-format" in serve and "--access-log" in serve
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("vnqr-engine ")
