"""``serve --workers N`` (SO_REUSEPORT) against a real ClickHouse server: refused where it cannot work, every 202
stored once across the workers' WALs, and nothing stranded when the number of workers is lowered."""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.config import Config
from engine.devices.client import sign_request
from engine.errors import ConfigError
from engine.store.store import Store
from engine.testing.engines import DEVICE_ID, EngineProcess, admin_headers, device_registration, make_fixture

pytestmark = [pytest.mark.system]


def test_workers_are_refused_with_the_embedded_store_and_a_random_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a ClickHouse server"):
        Config(data_dir=tmp_path, workers=2).validate()
    with pytest.raises(ConfigError, match="fixed port"):
        Config(data_dir=tmp_path, workers=2, port=0, dsn="http://default:@127.0.0.1:8123").validate()
    cfg = Config(data_dir=tmp_path, workers=2, worker_index=1, dsn="http://default:@127.0.0.1:8123").validate()
    assert cfg.wal_path == tmp_path / "wal-1" and cfg.worker_wal_path(0) == tmp_path / "wal"
    for j in (1, 2, 3):
        (tmp_path / f"wal-{j}").mkdir()
    assert Config(data_dir=tmp_path, dsn="http://x:@h:1").orphan_wal_paths() == [
        tmp_path / f"wal-{j}" for j in (1, 2, 3)
    ]
    assert cfg.orphan_wal_paths() == [tmp_path / "wal-3"]  # wal-2 goes to worker 0, wal-3 to worker 1


def _all_serving(node: EngineProcess, starts: int, timeout: float = 120.0) -> None:
    """Until the supervisor logged its ``starts``-th "2 workers serving" (``/healthz`` may be worker 0 alone)."""
    deadline = time.monotonic() + timeout
    while node.log_path.read_text().count("2 workers serving") < starts:
        assert time.monotonic() < deadline, node.log_path.read_text()[-3000:]
        time.sleep(0.1)


def _post(port: int, fx: Any, acked: set[str]) -> int:
    items = [
        {"scan_id": str(uuid.uuid4()), "qr": fx.code(i), "venue_id": "v", "direction": "in", "scanned_at": 0}
        for i in range(20)
    ]
    for item in items:
        item["scanned_at"] = int(time.time() * 1000)
    body = orjson.dumps({"device_id": DEVICE_ID, "scans": items})
    headers = {**sign_request(fx.device, DEVICE_ID, "POST", "/v1/scans", body), "Content-Type": "application/json"}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/scans", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # a new connection each time: spread by the kernel
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    if status == 202:
        acked.update(i["scan_id"] for i in items)
    return status


@pytest.mark.slow
def test_two_workers_share_the_port_and_lowering_them_strands_nothing(
    tmp_path: Path, clickhouse_server: Any, clickhouse_database: str
) -> None:
    fx = make_fixture(tmp_path / "node")
    env = {
        "ENGINE_DSN": clickhouse_server.dsn,
        "ENGINE_DATABASE": clickhouse_database,
        "ENGINE_WORKERS": "2",
        "ENGINE_VERIFY_THREADS": "1",
        "ENGINE_INSERT_INTERVAL_MS": "100",
        "ENGINE_SHUTDOWN_TIMEOUT_S": "3",
        "ENGINE_GC_FREEZE": "0",
    }
    node = EngineProcess(fx.data_dir, **env).start()
    acked: set[str] = set()
    try:
        _all_serving(node, 1)
        # the supervisor's workers each read the registry at start: register in the store, then restart them
        node.post_json("/v1/admin/devices", device_registration(fx), admin_headers(fx.data_dir))
        assert node.terminate() == 0
        node.start()
        _all_serving(node, 2)
        statuses = [_post(node.port, fx, acked) for _ in range(30)]
        assert statuses == [202] * 30
        clickhouse_server.stop()  # acknowledged now, held in both workers' WALs
        threads = [threading.Thread(target=lambda: [_post(node.port, fx, acked) for _ in range(10)]) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert node.terminate() == 0
    finally:
        if not clickhouse_server.running:
            clickhouse_server.start()
        if node.proc is not None and node.proc.poll() is None:
            node.terminate()
    held = [p.name for p in sorted(fx.data_dir.glob("wal*")) if any(p.glob("*.wal"))]
    assert held == ["wal", "wal-1"], held  # both workers took connections and kept their own WAL
    one = EngineProcess(fx.data_dir, **{**env, "ENGINE_WORKERS": "1"}).start()  # wal-1 is adopted by worker 0
    try:
        deadline = time.monotonic() + 60
        store = Store.connect(clickhouse_server.dsn, database=clickhouse_database)
        try:
            while True:
                count, unique = store.query("SELECT count(), uniqExact(scan_id) FROM scans")[0]
                if count >= len(acked) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            stored = {r[0] for r in store.query("SELECT toString(scan_id) FROM scans")}
        finally:
            store.close()
    finally:
        one.terminate()
    assert (count, unique) == (len(acked), len(acked)) and stored == acked
