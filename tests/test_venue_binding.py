"""Devices bound to venues (issue 12): a real engine over loopback HTTP, real chdb, real device signatures.

A device registered for venue A that posts a scan for venue B gets that item rejected as ``venue_not_bound``
(the rest of its request is stored); devices registered before binding existed are unbound, keep working, are
listed as unbound, and are refused only once the operator sets ``--require-venue-binding``. ``device-bind``
moves them over without re-keying; the CLI works with and without a running engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from nacl.signing import SigningKey

from engine.codes.keys import read_key_file
from engine.codes.payload import b64url_encode
from engine.devices.client import ScannerClient, make_scan, sign_request
from engine.ingest.intake import parse_body
from engine.testing.engines import DEVICE_ID, EngineProcess, admin_headers, make_fixture


async def _admin(e: Any, method: str, path: str, doc: Any = None) -> tuple[int, Any]:
    body = b"" if doc is None else orjson.dumps(doc)
    status, answer = await e.client.request(method, path, body, headers_override=admin_headers(e.fx.data_dir))
    return int(status), answer


async def _register(e: Any, device_id: str, **extra: Any) -> ScannerClient:
    key = SigningKey.generate()
    doc = {"device_id": device_id, "public_key": b64url_encode(bytes(key.verify_key)), **extra}
    status, answer = await _admin(e, "POST", "/v1/admin/devices", doc)
    assert status == 201, answer
    return ScannerClient(e.url, device_id, key, ssl_context=e.client_tls())


async def test_a_device_bound_to_venue_a_cannot_post_for_venue_b(engine: Any) -> None:
    e = await engine()
    kiosk = await _register(e, "kiosk-a", venues=["venue-A", "venue-A2"], label="door A")
    try:
        scans = [make_scan(e.fx.code(1), "venue-A"), make_scan(e.fx.code(2), "venue-B")]
        scans.append(make_scan(e.fx.code(3), "venue-A2"))
        status, body = await kiosk.post_scans(scans)
        assert status == 202, body
        assert [r["status"] for r in body["results"]] == ["stored", "rejected", "stored"]
        refused = body["results"][1]
        assert refused["reason"] == "venue_not_bound" and refused["scan_id"] == scans[1]["scan_id"]
        assert "'venue-B' is not one of venue-A, venue-A2" in refused["error"]
        assert body["stored"] == 2 and body["rejected"] == 1
        await e.drained()
        rows = await e.query("SELECT venue_id FROM scans WHERE device_id = 'kiosk-a' ORDER BY venue_id")
        assert rows == [("venue-A",), ("venue-A2",)]
        # a request for the wrong venue only: every item refused, nothing stored, still 202
        status, body = await kiosk.post_scans([make_scan(e.fx.code(4), "venue-B")])
        assert status == 202 and body["rejected"] == 1 and body["results"][0]["reason"] == "venue_not_bound"
    finally:
        await kiosk.close()


async def test_unbound_devices_keep_working_are_listed_and_can_be_bound(engine: Any) -> None:
    e = await engine()
    # the fixture's device is registered without venues, as every device before binding existed
    status, body = await e.client.post_scans([make_scan(e.fx.code(1), "anywhere-1")])
    assert status == 202 and body["stored"] == 1
    status, listed = await _admin(e, "GET", "/v1/admin/devices")
    assert listed["devices"][0]["device_id"] == DEVICE_ID
    assert (listed["devices"][0]["venues"], listed["devices"][0]["bound"], listed["unbound"]) == ([], False, 1)

    status, bound = await _admin(e, "POST", f"/v1/admin/devices/{DEVICE_ID}/venues", {"venues": ["gate-1"]})
    assert status == 200 and bound["venues"] == ["gate-1"] and bound["bound"] is True
    status, body = await e.client.post_scans([make_scan(e.fx.code(2), "anywhere-1"), make_scan(e.fx.code(3), "gate-1")])
    assert [r["status"] for r in body["results"]] == ["rejected", "stored"]  # effective at the next request

    # re-keying without naming venues keeps the binding; so does a revoke (shown in the list)
    same = await _register(e, DEVICE_ID)
    await same.close()
    status, listed = await _admin(e, "GET", "/v1/admin/devices")
    assert listed["devices"][0]["venues"] == ["gate-1"] and listed["unbound"] == 0
    stored = {d.device_id: d for d in await e.rt.in_store_thread(e.rt.store.devices)}
    assert stored[DEVICE_ID].venues == ("gate-1",)

    # bad requests say what is wrong; an unknown device is 404
    status, answer = await _admin(e, "POST", f"/v1/admin/devices/{DEVICE_ID}/venues", {"venues": ["no spaces"]})
    assert status == 400 and "venue id 'no spaces' must be" in answer["message"]
    status, answer = await _admin(e, "POST", f"/v1/admin/devices/{DEVICE_ID}/venues", {})
    assert status == 400 and "venues" in answer["message"]
    status, answer = await _admin(e, "POST", "/v1/admin/devices/nobody/venues", {"venues": ["v"]})
    assert status == 404
    too_many = {"device_id": "x", "public_key": "A" * 43, "venues": [f"v{i}" for i in range(40)]}
    status, answer = await _admin(e, "POST", "/v1/admin/devices", too_many)
    assert status == 400 and "at most 32 venues" in answer["message"]

    status, revoked = await _admin(e, "POST", f"/v1/admin/devices/{DEVICE_ID}/revoke")
    assert status == 200 and revoked["venues"] == ["gate-1"] and revoked["revoked"] is True
    stored = {d.device_id: d for d in await e.rt.in_store_thread(e.rt.store.devices)}
    assert stored[DEVICE_ID].venues == ("gate-1",) and stored[DEVICE_ID].revoked


async def test_with_binding_required_an_unbound_device_is_refused_until_bound(engine: Any) -> None:
    e = await engine(require_venue_binding=True)
    scan = make_scan(e.fx.code(1), "gate-1")
    status, body = await e.client.post_scans([scan])
    assert status == 403 and body["error"] == "forbidden", body
    assert f"device {DEVICE_ID!r} is not bound to any venue" in body["message"] and "device-bind" in body["message"]
    status, _ = await _admin(e, "POST", f"/v1/admin/devices/{DEVICE_ID}/venues", {"venues": ["gate-1"]})
    assert status == 200
    status, body = await e.client.post_scans([scan])  # the same scan, kept by the device and sent again
    assert status == 202 and body["stored"] == 1


def test_for_venues_keeps_the_other_rejections_in_request_order() -> None:
    now = 1_764_000_000_000
    items = [
        make_scan("c0", "a", scanned_at_ms=now),
        make_scan("c1", "b", scanned_at_ms=now),
        {"scan_id": "nope", "qr": "c2", "venue_id": "a", "direction": "in", "scanned_at": now},
        make_scan("c3", "a", scanned_at_ms=now),
        make_scan("c4", "c", scanned_at_ms=now),
    ]
    body = orjson.dumps({"device_id": "d", "scans": items})
    intake = parse_body(body, header_device_id="d", max_items=10, now_ms=now, oldest_ms=now - 1, skew_ms=0)
    assert intake.for_venues(("a", "b", "c")) is intake  # all allowed: the very same object, no copy
    only_a = intake.for_venues(("a",))
    assert only_a.index.tolist() == [0, 3] and [only_a.code(i) for i in range(2)] == [b"c0", b"c3"]
    assert [only_a.venue(i) for i in range(2)] == ["a", "a"]
    assert [(i, r.code) for i, r, _ in only_a.rejected] == [
        (1, "venue_not_bound"),
        (2, "scan_id_invalid"),
        (4, "venue_not_bound"),
    ]
    assert only_a.rejected[0][2] == items[1]["scan_id"]


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True, timeout=60, env=clean
    )


def test_cli_registers_binds_and_lists_and_the_engine_enforces_it_after_a_restart(tmp_path: Path) -> None:
    """No engine running: the CLI writes the store itself; an engine started afterwards loads the bindings."""
    fx = make_fixture(tmp_path / "data")
    reg = _cli("device-register", "--data-dir", fx.data_dir, "--device-id", "kiosk-1", "--out", tmp_path / "k1",
               "--venue", "market-1", "--venue", "market-2", "--json")  # fmt: skip
    assert reg.returncode == 0, reg.stderr
    assert orjson.loads(reg.stdout)["venues"] == ["market-1", "market-2"]
    old = _cli("device-register", "--data-dir", fx.data_dir, "--device-id", "old-1", "--out", tmp_path / "k2")
    assert old.returncode == 0, old.stderr
    bad = _cli("device-register", "--data-dir", fx.data_dir, "--device-id", "k3", "--out", tmp_path / "k3",
               "--venue", "a b")  # fmt: skip
    assert bad.returncode != 0 and "venue id 'a b' must be" in bad.stderr and not (tmp_path / "k3").exists()
    listed = _cli("device-list", "--data-dir", fx.data_dir)
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert "market-1,market-2" in lines["kiosk-1"] and "UNBOUND (any venue)" in lines["old-1"]
    assert "1 active device(s) bound to no venue" in listed.stderr
    bind = _cli("device-bind", "--data-dir", fx.data_dir, "--device-id", "old-1", "--venue", "clinic-9", "--json")
    assert bind.returncode == 0 and orjson.loads(bind.stdout)["venues"] == ["clinic-9"], bind.stderr
    neither = _cli("device-bind", "--data-dir", fx.data_dir, "--device-id", "old-1")
    assert neither.returncode != 0 and "--venue V (repeatable) or --unbind" in neither.stderr

    key = read_key_file(tmp_path / "k2").signing_key
    proc = EngineProcess(fx.data_dir).start()
    try:
        body = orjson.dumps({"device_id": "old-1", "scans": [make_scan(fx.code(1), "clinic-9"),
                                                              make_scan(fx.code(2), "market-1")]})  # fmt: skip
        answer = proc.post_json("/v1/scans", body, sign_request(key, "old-1", "POST", "/v1/scans", body))
        assert [r["status"] for r in answer["results"]] == ["stored", "rejected"], answer
        assert answer["results"][1]["reason"] == "venue_not_bound"
        listed = _cli("device-list", "--data-dir", fx.data_dir, "--json")  # through the running engine
        doc = orjson.loads(listed.stdout)
        assert doc["unbound"] == 0 and {d["device_id"]: d["venues"] for d in doc["devices"]} == {
            "kiosk-1": ["market-1", "market-2"],
            "old-1": ["clinic-9"],
        }
    finally:
        proc.terminate()
