"""Abuse: device authentication cannot be bypassed, rate limits hold, keys and secrets never leak.

Everything goes through real HTTP to a real engine (in-process for speed, a real ``python -m engine serve``
where logs or files of a separate process matter) with real Ed25519 signatures. The individual refusal paths
of ``DeviceRegistry`` are unit-tested in tests/test_devices.py; here they are attacked end to end.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from nacl.signing import SigningKey

from engine.codes.payload import b64url_encode
from engine.devices.client import make_scan, sign_request
from engine.testing.engines import (
    DEVICE_ID,
    EngineProcess,
    InProcessEngine,
    admin_headers,
    make_fixture,
    wait_until,
)
from engine.tracing.credentials import TracerRegistry
from engine.web.keys import RUNTIME

L = 2**252 + 27742317777372353535851937790883648493
REFUSED: dict[str, int] = {}


class Engine(InProcessEngine):
    async def raw(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, Any]:
        async with (
            aiohttp.ClientSession() as s,
            s.request(
                method, self.url + path, data=body or None, headers={"Content-Type": "application/json", **headers}
            ) as resp,
        ):
            return resp.status, await resp.json(content_type=None), resp.headers

    def scans_body(self, i: int = 0, device_id: str = DEVICE_ID) -> bytes:
        return orjson.dumps({"device_id": device_id, "scans": [make_scan(self.fx.code(i), "venue-1")]})


ENGINE_CLASS = Engine


def _refused(kind: str, status: int, expected: int) -> None:
    assert status == expected, (kind, status)
    REFUSED[kind] = REFUSED.get(kind, 0) + 1


async def test_forged_replayed_expired_and_cross_device_requests_are_refused(engine: Any) -> None:
    e = await engine()
    other = SigningKey.generate()
    reg = orjson.dumps({"device_id": "scanner-other", "public_key": b64url_encode(bytes(other.verify_key))})
    status, _ = await e.client.request("POST", "/v1/admin/devices", reg, headers_override=admin_headers(e.fx.data_dir))
    assert status == 201
    body = e.scans_body(1)
    path = "/v1/scans"

    # forged: signed by a key that is not the device's
    status, _, _ = await e.raw("POST", path, body, sign_request(SigningKey.generate(), DEVICE_ID, "POST", path, body))
    _refused("forged key", status, 401)
    # forged: a genuine signature malleated to S + L (valid to a verifier that skips the S < L check)
    h = sign_request(e.fx.device, DEVICE_ID, "POST", path, body)
    sig = base64.urlsafe_b64decode(h["X-Signature"] + "==")
    s = int.from_bytes(sig[32:], "little")
    h["X-Signature"] = b64url_encode(sig[:32] + (s + L).to_bytes(32, "little"))
    status, _, _ = await e.raw("POST", path, body, h)
    _refused("malleated S+L", status, 401)
    # tampered: body, path, method or nonce changed after signing
    h = sign_request(e.fx.device, DEVICE_ID, "POST", path, body)
    status, _, _ = await e.raw("POST", path, e.scans_body(2), h)
    _refused("body swapped", status, 401)
    status, _, _ = await e.raw("POST", path + "?x=1", body, h)
    _refused("path changed", status, 401)
    status, _, _ = await e.raw("POST", path, body, {**h, "X-Nonce": "A" * 24})
    _refused("nonce changed", status, 401)
    # replayed: the exact same request twice
    h = sign_request(e.fx.device, DEVICE_ID, "POST", path, body)
    assert (await e.raw("POST", path, body, h))[0] == 202
    status, answer, _ = await e.raw("POST", path, body, h)
    _refused("replayed", status, 401)
    assert "replay" in answer["message"]
    # expired / from the future beyond the allowed skew
    for offset in (-301, -3600, 301, 86_400):
        status, _, _ = await e.raw(
            "POST", path, body, sign_request(e.fx.device, DEVICE_ID, "POST", path, body, now=time.time() + offset)
        )
        _refused("stale or future timestamp", status, 401)
    # cross-device: another device's key under this id, this key under another id, another id in the body
    status, _, _ = await e.raw("POST", path, body, sign_request(other, DEVICE_ID, "POST", path, body))
    _refused("other device's key", status, 401)
    status, _, _ = await e.raw("POST", path, body, sign_request(e.fx.device, "scanner-other", "POST", path, body))
    _refused("key of another device", status, 401)
    foreign = e.scans_body(3, device_id="scanner-other")
    status, _, _ = await e.raw("POST", path, foreign, sign_request(e.fx.device, DEVICE_ID, "POST", path, foreign))
    _refused("body names another device", status, 400)
    # unknown device, missing or duplicated headers, wrong signature length
    status, _, _ = await e.raw("POST", path, body, sign_request(other, "scanner-nobody", "POST", path, body))
    _refused("unknown device", status, 401)
    status, _, _ = await e.raw("POST", path, body, {})
    _refused("no credentials", status, 401)
    h = sign_request(e.fx.device, DEVICE_ID, "POST", path, body)
    for bad in (h["X-Signature"][:-1], h["X-Signature"] + "A", h["X-Signature"][:-1] + "B", ""):
        status, _, _ = await e.raw("POST", path, body, {**h, "X-Signature": bad})
        _refused("malformed signature", status, 401)
    print(f"\n[abuse] refused through HTTP: {sum(REFUSED.values())} requests {REFUSED}")


async def test_rate_limit_answers_429_with_retry_after(engine: Any) -> None:
    e = await engine(device_rate=1.0, device_burst=3.0)
    statuses = []
    for i in range(6):
        body = e.scans_body(i)
        status, _, headers = await e.raw(
            "POST", "/v1/scans", body, sign_request(e.fx.device, DEVICE_ID, "POST", "/v1/scans", body)
        )
        statuses.append(status)
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
    assert statuses[:3] == [202, 202, 202] and 429 in statuses[3:], statuses
    print(f"\n[abuse] rate 1/s burst 3: statuses {statuses}")


async def test_revoked_device_is_refused_on_the_next_request(engine: Any) -> None:
    e = await engine()
    body = e.scans_body(1)
    signed_before = sign_request(e.fx.device, DEVICE_ID, "POST", "/v1/scans", body)  # captured before revocation
    status, _ = await e.client.request(
        "POST", f"/v1/admin/devices/{DEVICE_ID}/revoke", headers_override=admin_headers(e.fx.data_dir)
    )
    assert status == 200
    status, _, _ = await e.raw("POST", "/v1/scans", body, signed_before)
    assert status == 403
    status, _answer = await e.client.post_scans([make_scan(e.fx.code(2), "v")])
    assert status == 403


async def test_weak_device_keys_cannot_be_registered(engine: Any) -> None:
    e = await engine()
    identity = (1).to_bytes(32, "little")
    order8 = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
    non_canonical = bytes.fromhex("ee" + "ff" * 30 + "7f")  # y = p + 1, the identity spelled non-canonically
    for i, key in enumerate((identity, order8, non_canonical, bytes(32))):
        reg = orjson.dumps({"device_id": f"weak-{i}", "public_key": b64url_encode(key)})
        status, answer = await e.client.request(
            "POST", "/v1/admin/devices", reg, headers_override=admin_headers(e.fx.data_dir)
        )
        assert status == 400, answer


async def test_tracing_refuses_scanner_credentials_and_anonymous_callers(engine: Any) -> None:
    e = await engine()
    path = "/v1/trace/venue?venue_id=venue-1&case_id=HN-2026-001"
    status, _ = await e.client.request("GET", path)  # a validly signed scanner request
    assert status == 403
    status, _, _ = await e.raw("GET", path, b"", {})
    assert status == 401
    status, _, _ = await e.raw("GET", path, b"", {"Authorization": "Bearer not-a-token"})
    assert status == 401
    status, _, _ = await e.raw("GET", path, b"", admin_headers(e.fx.data_dir))  # the operator token is not one
    assert status == 403
    token = TracerRegistry.for_data_dir(e.fx.data_dir).add("epi-hanoi")
    status, _, _ = await e.raw("GET", path, b"", {"Authorization": f"Bearer {token}"})
    assert status == 200
    status, _, _ = await e.raw("GET", path, b"", {"Authorization": f"Bearer {token}", "X-Device-Id": DEVICE_ID})
    assert status == 403


async def test_person_key_secret_is_not_in_the_store(engine: Any) -> None:
    e = await engine()
    status, _ = await e.client.post_scans([make_scan(e.fx.code(i), "venue-1") for i in range(20)])
    assert status == 202
    rt = e.app[RUNTIME]
    secret_path = e.fx.data_dir / "person_key.secret"
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    secret = secret_path.read_bytes()
    await wait_until(lambda: rt.wal.backlog_records == 0)
    tables = await rt.in_store_thread(
        rt.store.query, "SELECT name FROM system.tables WHERE database = currentDatabase() AND NOT is_temporary"
    )
    spellings = [secret.hex(), secret.hex().upper(), b64url_encode(secret), base64.b64encode(secret).decode()]
    searched = 0
    for (table,) in tables:
        if table.endswith("_mv"):
            continue
        n = await rt.in_store_thread(
            rt.store.query,
            "SELECT countIf(position(toString(tuple(*)), {raw:String}) > 0"
            + "".join(f" OR position(toString(tuple(*)), '{s}') > 0" for s in spellings)
            + f"), count() FROM `{table}`",
            {"raw": secret.decode("latin-1")},
        )
        assert n[0][0] == 0, f"the person-key secret appears in {table}"
        searched += int(n[0][1])
    # and not in any file the engine wrote, other than the secret file itself (chdb parts, WAL, logs)
    files = 0
    for path in e.fx.data_dir.rglob("*"):
        if path.is_file() and path != secret_path:
            data = path.read_bytes()
            files += 1
            assert secret not in data and secret.hex().encode() not in data, path
    print(f"\n[abuse] person-key secret absent from {len(tables)} tables ({searched} rows) and {files} files")


def _engine_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_key_files_are_0600_and_private_keys_never_reach_logs(tmp_path: Path) -> None:
    issuer_file = tmp_path / "keys" / "issuer.key"
    out = _engine_cli(
        "keys",
        "create",
        "--issuer",
        "pc-covid",
        "--out",
        str(issuer_file),
        "--trust-list",
        str(tmp_path / "trust.json"),
    )
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(issuer_file.stat().st_mode) == 0o600
    fx = make_fixture(tmp_path / "data")
    proc = EngineProcess(fx.data_dir, ENGINE_LOG_LEVEL="DEBUG").start()
    device_file = tmp_path / "keys" / "scanner-9.key"
    try:
        out = _engine_cli(
            "device-register",
            "--device-id",
            "scanner-9",
            "--out",
            str(device_file),
            env={"ENGINE_DATA_DIR": str(fx.data_dir), "ENGINE_PORT": str(proc.port)},
        )
        assert out.returncode == 0, out.stderr
        assert stat.S_IMODE(device_file.stat().st_mode) == 0o600
        seed = base64.b64decode(orjson.loads(device_file.read_bytes())["seed"])
        device = SigningKey(seed)
        body = orjson.dumps({"device_id": "scanner-9", "scans": [make_scan(fx.code(1), "v")]})
        headers = {**sign_request(device, "scanner-9", "POST", "/v1/scans", body)}
        assert proc.post_json("/v1/scans", body, headers)["stored"] == 1
    finally:
        proc.terminate()
    log = proc.log_path.read_text()
    issuer_seed = base64.b64decode(orjson.loads(issuer_file.read_bytes())["seed"])
    secret = (fx.data_dir / "person_key.secret").read_bytes()
    token = (fx.data_dir / "admin.token").read_text().strip()
    assert stat.S_IMODE((fx.data_dir / "admin.token").stat().st_mode) == 0o600
    for name, raw in (
        ("device seed", seed),
        ("issuer seed", issuer_seed),
        ("person-key secret", secret),
        ("fixture device seed", bytes(fx.device)),
        ("fixture issuer seed", bytes(fx.issuer)),
    ):
        for spelling in (raw.hex(), base64.b64encode(raw).decode(), b64url_encode(raw)):
            assert spelling not in log, f"{name} appears in the engine log"
    assert token not in log, "the admin token appears in the engine log"
    print(f"\n[abuse] key files 0600; {len(log.splitlines())} log lines searched for 5 secrets x 3 spellings: none")
