"""The ingestion server end to end: real HTTP on loopback, real chdb, real signatures."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import orjson

from engine.devices.client import ScannerClient, make_scan, sign_request
from engine.testing.engines import (
    DEVICE_ID,
    admin_headers,
    wait_until,
)


async def test_round_trip_verdicts_are_persisted(engine: Any) -> None:
    e = await engine()
    good = [e.fx.code(i) for i in range(3)]
    forged = good[0][:-3] + ("AAA" if not good[0].endswith("AAA") else "BBB")
    expired = e.fx.code(9, iat=int(time.time()) - 3 * 86400, exp=int(time.time()) - 86400)
    scans = [make_scan(c, "venue-1") for c in good]
    scans += [
        make_scan(forged, "venue-1"),
        make_scan(expired, "venue-2", direction="out"),
        make_scan("not a code", "venue-2"),
        make_scan("******123456|LE VAN C|1970-05-20|0|LEGACY01|", "venue-2"),
    ]
    status, body = await e.client.post_scans(scans)
    assert status == 202, body
    verdicts = [r["verdict"] for r in body["results"]]
    assert verdicts == ["ok", "ok", "ok", "bad_signature", "expired", "malformed", "unsigned_code"]
    assert body["results"][5]["reason"] == "field_count"
    assert body["stored"] == 7 and body["rejected"] == 0
    await e.drained()
    rows = await e.query(
        "SELECT toString(scan_id), verdict, reason, venue_id, direction, qr_id, key_id, issuer "
        "FROM scans FINAL ORDER BY scanned_at"
    )
    by_id = {r[0]: r for r in rows}
    assert len(rows) == 7
    for scan, result in zip(scans, body["results"], strict=True):
        row = by_id[scan["scan_id"]]
        assert row[1] == result["verdict"]
        assert row[3] == scan["venue_id"] and row[4] == scan["direction"]
    ok_row = by_id[scans[0]["scan_id"]]
    assert ok_row[5] == "QID0000000000" and ok_row[7] == "pc-covid" and len(ok_row[6]) == 11
    # names and birth dates are never stored (Regulation 733): no column anywhere holds the name
    names = await e.query("SELECT count() FROM scans WHERE positionCaseInsensitive(toString(tuple(*)), 'NGUYEN') > 0")
    assert names[0][0] == 0


async def test_partial_rejects_keep_the_good_items(engine: Any) -> None:
    e = await engine()
    good = make_scan(e.fx.code(1), "venue-1")
    bad_id = {**make_scan(e.fx.code(2), "venue-1"), "scan_id": "nope"}
    bad_dir = {**make_scan(e.fx.code(3), "venue-1"), "direction": {}}  # unhashable: once a 500 (schemathesis)
    too_old = make_scan(e.fx.code(4), "venue-1", scanned_at_ms=int(time.time() * 1000) - 40 * 86_400_000)
    status, body = await e.client.post_scans([bad_id, good, bad_dir, too_old])
    assert status == 202
    assert [r["status"] for r in body["results"]] == ["rejected", "stored", "rejected", "rejected"]
    assert "scan_id" in body["results"][0]["error"]
    assert "direction" in body["results"][2]["error"]
    assert "scanned_at" in body["results"][3]["error"]
    await e.drained()
    rows = await e.query("SELECT toString(scan_id) FROM scans")
    assert rows == [(good["scan_id"],)]


async def test_retried_batch_is_stored_once(engine: Any) -> None:
    e = await engine()
    scans = [make_scan(e.fx.code(i), "venue-7") for i in range(20)]
    scans.append(dict(scans[0]))  # the same scan twice inside one request
    first = await e.client.post_scans(scans)
    again = await e.client.post_scans(scans)
    assert first[0] == again[0] == 202
    assert first[1]["stored"] == 20 and first[1]["duplicates"] == 1
    assert again[1]["stored"] == 0 and again[1]["duplicates"] == 21
    assert [r["verdict"] for r in again[1]["results"]] == [r["verdict"] for r in first[1]["results"]]
    await e.drained()
    rows = await e.query("SELECT count(), uniqExact(scan_id) FROM scans")
    assert rows[0] == (20, 20)


async def test_recent_id_memory_is_bounded_and_forgets_oldest_first(engine: Any) -> None:
    e = await engine(recent_ids=50)
    batches = [[make_scan(e.fx.code(10 * b + i), f"venue-{b}") for i in range(20)] for b in range(4)]
    for batch in batches:
        status, body = await e.client.post_scans(batch)
        assert status == 202 and body["stored"] == 20
    batcher = e.rt.batcher
    assert len(batcher._recent) <= 50 and len(batcher._recent._order) <= 100
    newest = await e.client.post_scans(batches[-1])  # remembered: answered from memory with its verdict
    assert newest[1]["duplicates"] == 20 and {r["verdict"] for r in newest[1]["results"]} == {"ok"}
    oldest = await e.client.post_scans(batches[0])  # forgotten: accepted again, and the store collapses it
    assert oldest[1]["stored"] == 20
    assert len(batcher._recent) <= 50
    await e.drained()
    rows = await e.query("SELECT count(), uniqExact(scan_id) FROM scans FINAL")
    assert rows[0] == (80, 80)


async def test_envelope_errors_and_limits(engine: Any) -> None:
    e = await engine(max_scans_per_request=5, max_body_bytes=64 * 1024)
    status, body = await e.client.request("POST", "/v1/scans", b"{not json", headers_override={})
    assert status == 400 and "JSON" in body["message"]
    many = [make_scan(e.fx.code(i), "v") for i in range(6)]
    status, body = await e.client.post_scans(many)
    assert status == 400 and "limit is 5" in body["message"]
    status, body = await e.client.post_scans([], device_id=DEVICE_ID)
    assert status == 400 and "empty" in body["message"]
    huge = orjson.dumps({"device_id": DEVICE_ID, "scans": [make_scan("x" * 2000, "v")] * 40})
    status, body = await e.client.request("POST", "/v1/scans", huge)
    assert status == 413


async def test_authentication_is_required(engine: Any) -> None:
    e = await engine()
    body = orjson.dumps({"device_id": DEVICE_ID, "scans": [make_scan(e.fx.code(), "v")]})
    status, _ = await e.client.request("POST", "/v1/scans", body, headers_override={"X-Device-Id": ""})
    assert status == 401
    from nacl.signing import SigningKey

    stranger = ScannerClient(e.url, "unknown-device", SigningKey.generate())
    try:
        status, _answer = await stranger.post_scans([make_scan(e.fx.code(), "v")])
        assert status == 401  # unknown: one answer with a bad signature (which ids exist is not revealed)
    finally:
        await stranger.close()
    # a signature made for another body does not authorise this one
    headers = sign_request(e.fx.device, DEVICE_ID, "POST", "/v1/scans", b"{}")
    status, _ = await e.client.request("POST", "/v1/scans", body, headers_override=headers)
    assert status == 401
    # admin endpoints refuse scanner credentials
    status, _ = await e.client.request("GET", "/v1/admin/devices")
    assert status == 401


async def test_revoked_device_is_refused_at_once(engine: Any) -> None:
    e = await engine()
    assert (await e.client.post_scans([make_scan(e.fx.code(), "v")]))[0] == 202
    status, _ = await e.client.request(
        "POST", f"/v1/admin/devices/{DEVICE_ID}/revoke", headers_override=admin_headers(e.fx.data_dir)
    )
    assert status == 200
    status, body = await e.client.post_scans([make_scan(e.fx.code(1), "v")])
    assert status == 403, body


async def test_overload_answers_503_with_retry_after(engine: Any) -> None:
    import asyncio

    e = await engine(queue_scans=10, max_scans_per_request=10, batch_size=100_000, batch_age_ms=1500)
    first = asyncio.create_task(e.client.post_scans([make_scan(e.fx.code(i), "v") for i in range(10)]))
    await wait_until(lambda: e.rt.batcher.queued_scans == 10, timeout=10)
    import aiohttp

    body = orjson.dumps({"device_id": DEVICE_ID, "scans": [make_scan(e.fx.code(99), "v")]})
    headers = sign_request(e.fx.device, DEVICE_ID, "POST", "/v1/scans", body)
    async with (
        aiohttp.ClientSession() as s,
        s.post(e.url + "/v1/scans", data=body, headers={**headers, "Content-Type": "application/json"}) as resp,
    ):
        answer = await resp.json()
        assert resp.status == 503 and answer["error"] == "overloaded"
        assert int(resp.headers["Retry-After"]) >= 1
    assert (await first)[0] == 202  # the queued request still completes


async def test_health_readiness_metrics_openapi(engine: Any) -> None:
    e = await engine()
    codes = [e.fx.code(i) for i in range(5)]  # minted once: a code minted a second later has another iat
    await e.client.post_scans([make_scan(c, "v") for c in codes])
    await e.drained()
    status, body = await e.client.request("GET", "/healthz")
    assert status == 200
    status, body = await e.client.request("GET", "/readyz")
    assert status == 200 and body == {"ready": True, "cause": "ok"}  # nothing else for an anonymous probe
    status, body = await e.client.request("GET", "/metrics")
    assert status == 404 and "operations listener" in body["message"]  # not on the device/tracer listener
    status, text = await e.ops.request("GET", "/metrics")
    assert status == 200
    assert 'engine_scans_acked_total{verdict="ok"} 5.0' in text
    assert "engine_scans_stored_total 5.0" in text
    assert "# TYPE engine_cache_hits_total counter" in text  # counters, so rate() survives a restart
    assert "engine_cache_lookups_total 5.0" in text and "engine_cache_hits_total 0.0" in text
    await e.client.post_scans([make_scan(c, "w") for c in codes])  # the same codes, new scans
    status, text = await e.ops.request("GET", "/metrics")
    assert "engine_cache_lookups_total 10.0" in text and "engine_cache_hits_total 5.0" in text
    assert "engine_cache_hit_ratio 0.5" in text
    status, spec = await e.client.request("GET", "/openapi.json")
    assert status == 200 and "/v1/scans" in spec["paths"]


async def test_scan_ids_are_uuids_in_store(engine: Any) -> None:
    e = await engine()
    sid = str(uuid.uuid4())
    await e.client.post_scans([make_scan(e.fx.code(), "v", scan_id=sid)])
    await e.drained()
    rows = await e.query("SELECT count() FROM scans WHERE scan_id = {sid:UUID}", {"sid": sid})
    assert rows == [(1,)]


async def test_a_scan_id_claimed_by_another_device_does_not_steal_the_genuine_scan(engine: Any) -> None:
    """Issue 12: scan identity is (device_id, scan_id). Device A sends a forged code under a scan id first; device
    B's genuine scan with the same id is stored with its own verdict, and B never sees A's verdict."""
    from nacl.signing import SigningKey

    from engine.codes.payload import b64url_encode
    from engine.devices.client import ScannerClient

    e = await engine()
    b_key = SigningKey.generate()
    reg = orjson.dumps({"device_id": "scanner-test-2", "public_key": b64url_encode(bytes(b_key.verify_key))})
    status, body = await e.client.request(
        "POST", "/v1/admin/devices", reg, headers_override=admin_headers(e.fx.data_dir)
    )
    assert status == 201, body
    b = ScannerClient(e.url, "scanner-test-2", b_key, ssl_context=e.client_tls())
    try:
        genuine = e.fx.code(1)
        forged = genuine[:-3] + ("AAA" if not genuine.endswith("AAA") else "BBB")
        ids = [str(uuid.uuid4()) for _ in range(3)]
        a_scans = [make_scan(forged, "venue-1", scan_id=sid) for sid in ids]
        b_scans = [make_scan(genuine, "venue-1", scan_id=sid) for sid in ids]
        status, a_first = await e.client.post_scans(a_scans)
        assert status == 202 and a_first["stored"] == 3
        assert {r["verdict"] for r in a_first["results"]} == {"bad_signature"}
        status, b_first = await b.post_scans(b_scans)
        assert status == 202, b_first
        assert b_first["stored"] == 3 and b_first["duplicates"] == 0
        assert [(r["status"], r["verdict"]) for r in b_first["results"]] == [("stored", "ok")] * 3
        # a retry from the same device is still a duplicate, answered with that device's own first verdict
        status, a_again = await e.client.post_scans(a_scans)
        status, b_again = await b.post_scans(b_scans)
        assert a_again["duplicates"] == 3 and {r["verdict"] for r in a_again["results"]} == {"bad_signature"}
        assert b_again["duplicates"] == 3 and {r["verdict"] for r in b_again["results"]} == {"ok"}
        await e.drained()
        for table in ("scans", "scans_by_person"):
            rows = await e.query(f"SELECT device_id, verdict, count() FROM {table} FINAL GROUP BY 1, 2 ORDER BY 1")
            assert rows == [(DEVICE_ID, "bad_signature", 3), ("scanner-test-2", "ok", 3)], table
    finally:
        await b.close()


async def test_back_dated_scans_are_refused_past_the_offline_window(engine: Any) -> None:
    """Issue 12: scanned_at is accepted back to the offline window (7 days by default), not the whole retention
    (28 days): a screenshot and any device key no longer fabricate visits weeks back. The answer says which bound
    was crossed and by how much, and names epoch seconds for what they are."""
    e = await engine()
    now_ms = int(time.time() * 1000)
    day = 86_400_000
    scans = [
        make_scan(e.fx.code(1), "venue-1", scanned_at_ms=now_ms - 6 * day),  # offline for 6 days: fine
        make_scan(e.fx.code(2), "venue-1", scanned_at_ms=now_ms - 8 * day),  # 8 days: refused
        make_scan(e.fx.code(3), "venue-1", scanned_at_ms=now_ms // 1000),  # epoch seconds
        make_scan(e.fx.code(4), "venue-1", scanned_at_ms=now_ms + 3_600_000),  # an hour ahead
    ]
    status, body = await e.client.post_scans(scans)
    assert status == 202, body
    results = body["results"]
    assert [r["status"] for r in results] == ["stored", "rejected", "rejected", "rejected"]
    assert [r.get("reason") for r in results[1:]] == [
        "scanned_at_too_old",
        "scanned_at_not_milliseconds",
        "scanned_at_in_future",
    ]
    assert (
        "offline window" in results[1]["error"]
        and " is 1 d 0 h 0 min before the oldest accepted" in results[1]["error"]
    )
    assert f"{now_ms // 1000} read as epoch seconds is " in results[2]["error"]
    # an hour ahead, less the 5 minutes of skew (and the few ms between the two clocks' readings)
    assert re.search(r"is 5[45] min [0-9.]+ s after the latest accepted time", results[3]["error"]), results[3]
    await e.drained()
    assert await e.query("SELECT toString(scan_id) FROM scans") == [(scans[0]["scan_id"],)]


async def test_the_offline_window_is_the_operators(engine: Any) -> None:
    e = await engine(offline_window_days=2)
    now_ms, day = int(time.time() * 1000), 86_400_000
    status, body = await e.client.post_scans(
        [make_scan(e.fx.code(5), "v", scanned_at_ms=now_ms - 3 * day), make_scan(e.fx.code(6), "v")]
    )
    assert status == 202 and [r["status"] for r in body["results"]] == ["rejected", "stored"]
    assert body["results"][0]["reason"] == "scanned_at_too_old" and "1 d 0 h 0 min" in body["results"][0]["error"]


def test_the_offline_window_never_exceeds_the_retention(tmp_path: Any) -> None:
    import pytest

    from engine.config import Config
    from engine.errors import ConfigError

    assert Config(data_dir=tmp_path).validate().offline_days == 7
    assert Config(data_dir=tmp_path, retention_days=3).validate().offline_days == 3  # the default follows
    assert Config(data_dir=tmp_path, offline_window_days=14).validate().offline_days == 14
    with pytest.raises(ConfigError, match=r"offline_window_days must be 0\.\.retention_days"):
        Config(data_dir=tmp_path, retention_days=5, offline_window_days=6).validate()
