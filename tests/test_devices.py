"""Device authentication: real Ed25519 keys, an injected clock, and one round trip over real loopback HTTP."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web
from nacl.signing import SigningKey

from engine.codes.payload import b64url_decode_canonical, b64url_encode
from engine.devices.auth import UNAUTHENTICATED, Device, DeviceRegistry, signed_message
from engine.devices.client import ScannerClient, make_scan, sign_request
from engine.errors import AuthError, ForbiddenError, NotFoundError, OverloadedError, PayloadError, RateLimitedError

T0 = 1_800_000_000.0
PATH = "/v1/scans"
BODY = b'{"device_id":"dev-a","scans":[]}'

# An Ed25519 point of order 8 (from the libsodium blocklist): a signature "verifies" for many messages under it.
SMALL_ORDER_KEY = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
IDENTITY_KEY = bytes([1] + [0] * 31)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys() -> dict[str, SigningKey]:
    return {"dev-a": SigningKey.generate(), "dev-b": SigningKey.generate()}


@pytest.fixture
def clock() -> Clock:
    return Clock()


def registry(keys: dict[str, SigningKey], clock: Clock, **kw: Any) -> DeviceRegistry:
    devices = [Device(d, bytes(k.verify_key), False, f"gate {d}") for d, k in keys.items()]
    return DeviceRegistry(devices, clock=clock, **kw)


def signed(keys: dict[str, SigningKey], clock: Clock, device: str = "dev-a", **kw: Any) -> dict[str, str]:
    return sign_request(keys[device], device, "POST", PATH, BODY, now=clock.now, **kw)


def test_valid_request_passes_and_counts_as_active(keys: dict[str, SigningKey], clock: Clock) -> None:
    reg = registry(keys, clock)
    assert reg.active_devices() == 0
    device = reg.authenticate("POST", PATH, signed(keys, clock), BODY)
    assert device.device_id == "dev-a" and device.label == "gate dev-a"
    assert reg.active_devices() == 1
    clock.now += 61
    assert reg.active_devices() == 0
    assert len(reg) == 2 and reg.get("dev-b") is not None and reg.get("nope") is None


def test_message_layout_matches_the_contract(keys: dict[str, SigningKey], clock: Clock) -> None:
    """The docstring is the contract for scanner firmware: build the message independently and check it."""
    import hashlib

    h = sign_request(keys["dev-a"], "dev-a", "post", PATH + "?x=1", b"abc", now=T0, nonce="n" * 16)
    expected = b"VNQR-DEVICE-REQ-V1\x00" + b"\n".join(
        [b"POST", b"/v1/scans?x=1", b"dev-a", b"1800000000", b"n" * 16, hashlib.sha256(b"abc").hexdigest().encode()]
    )
    assert signed_message("POST", PATH + "?x=1", "dev-a", "1800000000", "n" * 16, b"abc") == expected
    sig = b64url_decode_canonical(h["X-Signature"].encode(), 64)
    assert sig is not None and len(h["X-Signature"]) == 86
    keys["dev-a"].verify_key.verify(expected, sig)  # raises if the client signed anything else
    assert h["X-Timestamp"] == "1800000000" and h["X-Nonce"] == "n" * 16


@pytest.mark.parametrize("missing", ["X-Device-Id", "X-Timestamp", "X-Nonce", "X-Signature"])
def test_missing_header_is_401(keys: dict[str, SigningKey], clock: Clock, missing: str) -> None:
    reg = registry(keys, clock)
    headers = signed(keys, clock)
    del headers[missing]
    with pytest.raises(AuthError, match=f"missing {missing}"):
        reg.authenticate("POST", PATH, headers, BODY)


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("X-Signature", "not base64!" * 8, "X-Signature"),
        ("X-Signature", "A" * 85, "X-Signature"),
        ("X-Timestamp", "-5", "X-Timestamp"),
        ("X-Timestamp", "17e8", "X-Timestamp"),
        ("X-Nonce", "short", "X-Nonce"),
        ("X-Nonce", "bad nonce with spaces", "X-Nonce"),
        ("X-Device-Id", "dev/a", "X-Device-Id"),
    ],
)
def test_malformed_header_is_401(keys: dict[str, SigningKey], clock: Clock, name: str, value: str, match: str) -> None:
    reg = registry(keys, clock)
    headers = {**signed(keys, clock), name: value}
    with pytest.raises(AuthError, match=match):
        reg.authenticate("POST", PATH, headers, BODY)


def test_non_canonical_signature_spelling_is_401(keys: dict[str, SigningKey], clock: Clock) -> None:
    """Only one spelling of a signature is accepted: flipping the unused low bits of the last char is refused."""
    reg = registry(keys, clock)
    headers = signed(keys, clock)
    sig = headers["X-Signature"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    headers["X-Signature"] = sig[:-1] + alphabet[alphabet.index(sig[-1]) ^ 1]
    with pytest.raises(AuthError, match="canonical"):
        reg.authenticate("POST", PATH, headers, BODY)


def test_tampering_breaks_the_signature(keys: dict[str, SigningKey], clock: Clock) -> None:
    reg = registry(keys, clock)
    cases = [
        ("POST", PATH, signed(keys, clock), BODY + b" "),  # body
        ("POST", "/v1/scans?x=1", signed(keys, clock), BODY),  # path / query
        ("PUT", PATH, signed(keys, clock), BODY),  # method
        ("POST", PATH, {**signed(keys, clock), "X-Timestamp": str(int(T0) + 1)}, BODY),  # signed header
    ]
    sig = bytearray(b64url_decode_canonical(signed(keys, clock)["X-Signature"].encode(), 64) or b"")
    sig[10] ^= 1
    cases.append(("POST", PATH, {**signed(keys, clock), "X-Signature": b64url_encode(bytes(sig))}, BODY))
    for method, path, headers, body in cases:
        with pytest.raises(AuthError, match="does not verify"):
            reg.authenticate(method, path, headers, body)
    assert reg.remembered_nonces == 0  # nothing refused is remembered


def test_checks_run_in_the_documented_order(keys: dict[str, SigningKey], clock: Clock) -> None:
    """Header format, then timestamp, then device known (one answer with a bad signature), then the signature,
    then revocation: the cheapest refusal wins, and nothing before the signature depends on the device's key."""
    reg = registry(keys, clock)
    reg.revoke("dev-b")
    stale_forged = sign_request(keys["dev-b"], "dev-a", "POST", PATH, BODY, now=clock.now - 999)
    with pytest.raises(AuthError, match="X-Nonce"):
        reg.authenticate("POST", PATH, {**stale_forged, "X-Nonce": "x", "X-Device-Id": "ghost"}, BODY)
    with pytest.raises(AuthError, match="X-Timestamp is 999"):  # also for an unknown id: it reveals nothing
        reg.authenticate("POST", PATH, {**stale_forged, "X-Device-Id": "ghost"}, BODY)
    with pytest.raises(AuthError, match="X-Timestamp is 999"):
        reg.authenticate("POST", PATH, stale_forged, BODY)
    with pytest.raises(AuthError) as wrong_key:  # the revoked device, signed with another key: not 403
        reg.authenticate("POST", PATH, sign_request(keys["dev-a"], "dev-b", "POST", PATH, BODY, now=clock.now), BODY)
    assert str(wrong_key.value) == UNAUTHENTICATED
    with pytest.raises(ForbiddenError, match="revoked"):  # 403 only after its own valid signature
        reg.authenticate("POST", PATH, signed(keys, clock, "dev-b"), BODY)


def test_unknown_device_and_bad_signature_get_one_answer(keys: dict[str, SigningKey], clock: Clock) -> None:
    """Issue 13: a 403 for an unknown id and a 401 for a known id with a bad signature told anyone which device ids
    are registered. Both are now the same 401 word for word; on main the unknown id was a 403 naming it."""
    reg = registry(keys, clock)
    stranger = SigningKey.generate()
    answers = []
    for device_id, key in (("ghost", stranger), ("dev-a", stranger)):
        with pytest.raises(AuthError) as info:
            reg.authenticate("POST", PATH, sign_request(key, device_id, "POST", PATH, BODY, now=clock.now), BODY)
        answers.append((info.value.http_status, str(info.value)))
    assert answers[0] == answers[1] == (401, UNAUTHENTICATED)


def test_unknown_device_is_refused_from_the_headers_alone(keys: dict[str, SigningKey], clock: Clock) -> None:
    """``precheck`` refuses an unknown id without a body (the server then never reads it); a known one passes."""
    reg = registry(keys, clock)
    with pytest.raises(AuthError, match="unknown device"):
        reg.precheck("POST", PATH, sign_request(SigningKey.generate(), "ghost", "POST", PATH, b"x", now=clock.now))
    pending = reg.precheck("POST", PATH, signed(keys, clock))
    assert reg.finish(pending, BODY).device_id == "dev-a"


def test_a_device_over_its_nonce_quota_is_refused_alone(keys: dict[str, SigningKey], clock: Clock) -> None:
    """Issue 13: the replay memory was one global pool, so one device (200 + 50 x 601 nonces allowed) and 33 like
    it filled it and every device got 503. Now each device's nonces are bounded by its own quota: over it that
    device gets 429, the others keep authenticating; on main the quota did not exist and it was accepted."""
    reg = registry(keys, clock, rate=1000.0, burst=1000.0, max_nonces=100, nonce_quota=10)
    for _ in range(10):
        reg.authenticate("POST", PATH, signed(keys, clock), BODY)
    with pytest.raises(RateLimitedError, match="quota") as info:
        reg.authenticate("POST", PATH, signed(keys, clock), BODY)
    assert info.value.http_status == 429 and info.value.retry_after >= 1
    for _ in range(10):  # the other device has its own quota, untouched
        reg.authenticate("POST", PATH, signed(keys, clock, "dev-b"), BODY)
    assert reg.nonces_of("dev-a") == 10 and reg.nonces_of("dev-b") == 10
    clock.now += 2 * 300 + 2  # the window passed: the quota is free again
    reg.authenticate("POST", PATH, signed(keys, clock), BODY)
    assert reg.nonces_of("dev-a") == 1 and reg.nonces_of("dev-b") == 0


def test_a_full_replay_memory_is_logged_at_a_bounded_rate(
    keys: dict[str, SigningKey], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13: every refusal of a full replay memory was an ERROR line (a log flood); now one per minute."""
    reg = registry(keys, clock, max_nonces=2)
    for _ in range(2):
        reg.authenticate("POST", PATH, signed(keys, clock), BODY)
    with caplog.at_level("WARNING", logger="engine.devices.auth"):
        for _ in range(50):
            with pytest.raises(OverloadedError):
                reg.authenticate("POST", PATH, signed(keys, clock, "dev-b"), BODY)
    assert len([r for r in caplog.records if "replay memory full" in r.getMessage()]) == 1


def test_other_devices_signature_is_401(keys: dict[str, SigningKey], clock: Clock) -> None:
    reg = registry(keys, clock)
    forged = sign_request(keys["dev-b"], "dev-a", "POST", PATH, BODY, now=clock.now)  # dev-b claims to be dev-a
    with pytest.raises(AuthError, match="X-Signature does not verify"):
        reg.authenticate("POST", PATH, forged, BODY)


def test_qr_domain_signature_cannot_authenticate(keys: dict[str, SigningKey], clock: Clock) -> None:
    """A signature over the same bytes with the check-in-code prefix is useless as a request signature."""
    reg = registry(keys, clock)
    h = signed(keys, clock)
    msg = signed_message("POST", PATH, "dev-a", h["X-Timestamp"], h["X-Nonce"], BODY)
    qr_domain = b"VNPQR-ED25519-V1\x00" + msg[len(b"VNQR-DEVICE-REQ-V1\x00") :]
    h["X-Signature"] = b64url_encode(keys["dev-a"].sign(qr_domain).signature)
    with pytest.raises(AuthError, match="does not verify"):
        reg.authenticate("POST", PATH, h, BODY)


def test_unknown_is_401_and_revoked_is_403(keys: dict[str, SigningKey], clock: Clock) -> None:
    reg = registry(keys, clock)
    stranger = SigningKey.generate()
    with pytest.raises(AuthError, match="unknown device"):
        reg.authenticate("POST", PATH, sign_request(stranger, "ghost", "POST", PATH, BODY, now=clock.now), BODY)
    reg.authenticate("POST", PATH, signed(keys, clock), BODY)
    revoked = reg.revoke("dev-a")
    assert revoked.revoked and reg.get("dev-a") == revoked
    with pytest.raises(ForbiddenError, match="revoked"):
        reg.authenticate("POST", PATH, signed(keys, clock), BODY)  # the very next request
    reg.authenticate("POST", PATH, signed(keys, clock, "dev-b"), BODY)  # others unaffected
    with pytest.raises(NotFoundError, match="no registered device"):
        reg.revoke("ghost")


@pytest.mark.parametrize("offset", [-301, 301, 912, -86_400])
def test_stale_or_future_timestamp_is_401(keys: dict[str, SigningKey], clock: Clock, offset: int) -> None:
    reg = registry(keys, clock)
    headers = sign_request(keys["dev-a"], "dev-a", "POST", PATH, BODY, now=clock.now + offset)
    with pytest.raises(AuthError, match=rf"X-Timestamp is {abs(offset)}\.0 s .* \(allowed 300\)"):
        reg.authenticate("POST", PATH, headers, BODY)
    ok = sign_request(keys["dev-a"], "dev-a", "POST", PATH, BODY, now=clock.now + (300 if offset > 0 else -300))
    reg.authenticate("POST", PATH, ok, BODY)  # the edge of the window is inside


def test_replayed_nonce_is_401_until_the_timestamp_expires(keys: dict[str, SigningKey], clock: Clock) -> None:
    reg = registry(keys, clock)
    headers = signed(keys, clock)
    reg.authenticate("POST", PATH, headers, BODY)
    with pytest.raises(AuthError, match="replayed"):
        reg.authenticate("POST", PATH, headers, BODY)
    # Same nonce from another device is that device's own business: no cross-device collision.
    reg.authenticate("POST", PATH, signed(keys, clock, "dev-b", nonce=headers["X-Nonce"]), BODY)
    clock.now += 300
    with pytest.raises(AuthError, match="replayed"):  # still inside the timestamp window: still remembered
        reg.authenticate("POST", PATH, headers, BODY)
    clock.now += 1000
    reg.authenticate("POST", PATH, signed(keys, clock), BODY)  # prunes
    assert reg.remembered_nonces == 1
    with pytest.raises(AuthError, match="X-Timestamp"):  # forgotten, but the timestamp check refuses it now
        reg.authenticate("POST", PATH, headers, BODY)


def test_a_forged_request_cannot_burn_a_nonce(keys: dict[str, SigningKey], clock: Clock) -> None:
    reg = registry(keys, clock)
    genuine = signed(keys, clock, nonce="shared-nonce-0001")
    forged = sign_request(keys["dev-b"], "dev-a", "POST", PATH, BODY, now=clock.now, nonce="shared-nonce-0001")
    with pytest.raises(AuthError, match="does not verify"):
        reg.authenticate("POST", PATH, forged, BODY)
    reg.authenticate("POST", PATH, genuine, BODY)


def test_rate_limit_is_429_then_recovers(keys: dict[str, SigningKey], clock: Clock) -> None:
    reg = registry(keys, clock, rate=2.0, burst=5)
    for _ in range(5):
        reg.authenticate("POST", PATH, signed(keys, clock), BODY)
    limited = signed(keys, clock)
    with pytest.raises(RateLimitedError) as info:
        reg.authenticate("POST", PATH, limited, BODY)
    assert info.value.http_status == 429 and info.value.retry_after == pytest.approx(0.5)
    reg.authenticate("POST", PATH, signed(keys, clock, "dev-b"), BODY)  # buckets are per device
    assert reg.remembered_nonces == 6  # the refused request's nonce was not remembered
    clock.now += 0.5
    reg.authenticate("POST", PATH, limited, BODY)  # delayed first delivery, accepted once a token is back
    with pytest.raises(RateLimitedError):
        reg.authenticate("POST", PATH, signed(keys, clock), BODY)
    clock.now += 10  # refills to the burst, not beyond
    for _ in range(5):
        reg.authenticate("POST", PATH, signed(keys, clock), BODY)
    with pytest.raises(RateLimitedError):
        reg.authenticate("POST", PATH, signed(keys, clock), BODY)


def test_full_nonce_memory_fails_closed_with_503(keys: dict[str, SigningKey], clock: Clock) -> None:
    reg = registry(keys, clock, max_nonces=3, skew_s=10)
    accepted = [signed(keys, clock) for _ in range(3)]
    for headers in accepted:
        reg.authenticate("POST", PATH, headers, BODY)
    with pytest.raises(OverloadedError) as info:
        reg.authenticate("POST", PATH, signed(keys, clock, "dev-b"), BODY)
    assert info.value.http_status == 503 and info.value.retry_after == pytest.approx(21)
    # nothing was forgotten to make room: the remembered requests are still refused as replays, not 503
    clock.now += 5
    with pytest.raises(AuthError, match="replayed"):
        reg.authenticate("POST", PATH, accepted[0], BODY)
    assert reg.remembered_nonces == 3
    clock.now += 16.5  # 2 * skew + 1 after they were recorded: they expire and there is room again
    reg.authenticate("POST", PATH, signed(keys, clock, "dev-b"), BODY)
    assert reg.remembered_nonces == 1


def test_put_refuses_weak_keys_and_bad_ids(keys: dict[str, SigningKey], clock: Clock) -> None:
    reg = registry(keys, clock)
    for bad in (SMALL_ORDER_KEY, IDENTITY_KEY, b"\x00" * 31, b"\xff" * 32):
        with pytest.raises(PayloadError, match="public key"):
            reg.put(Device("dev-c", bad))
    with pytest.raises(PayloadError, match="device_id"):
        reg.put(Device("has space", bytes(keys["dev-a"].verify_key)))
    with pytest.raises(PayloadError, match="label"):
        reg.put(Device("dev-c", bytes(keys["dev-a"].verify_key), label="x\n"))
    assert reg.get("dev-c") is None and len(reg) == 2


def test_put_rotates_keys_and_store_records_load_safely(keys: dict[str, SigningKey], clock: Clock) -> None:
    changes: list[Device] = []
    bad = Device("broken", SMALL_ORDER_KEY)
    reg = DeviceRegistry([Device("dev-a", bytes(keys["dev-a"].verify_key)), bad], clock=clock, on_change=changes.append)
    assert reg.get("broken") is None and len(reg) == 1  # a bad stored row is skipped, not fatal
    new_key = SigningKey.generate()
    reg.put(Device("dev-a", bytes(new_key.verify_key), label="rotated"))
    with pytest.raises(AuthError, match="does not verify"):
        reg.authenticate("POST", PATH, signed(keys, clock), BODY)  # old key no longer works (no stale cache)
    reg.authenticate("POST", PATH, sign_request(new_key, "dev-a", "POST", PATH, BODY, now=clock.now), BODY)
    reg.revoke("dev-a")
    assert [(d.label, d.revoked) for d in changes] == [("rotated", False), ("rotated", True)]
    reg.replace_all([Device("dev-b", bytes(keys["dev-b"].verify_key))])
    assert [d.device_id for d in reg.all()] == ["dev-b"] and reg.remembered_nonces == 1  # replay memory kept


def test_repeated_header_is_refused(keys: dict[str, SigningKey], clock: Clock) -> None:
    from multidict import CIMultiDict

    reg = registry(keys, clock)
    headers = CIMultiDict(signed(keys, clock))
    reg.authenticate("POST", PATH, CIMultiDict(signed(keys, clock)), BODY)  # case-insensitive multidict works
    headers.add("X-Nonce", "another-nonce-0000001")
    with pytest.raises(AuthError, match="appears 2 times"):
        reg.authenticate("POST", PATH, headers, BODY)


def test_make_scan_shape() -> None:
    scan = make_scan("CODE", "venue-1", direction="out", scanned_at_ms=123)
    assert set(scan) == {"scan_id", "qr", "venue_id", "direction", "scanned_at"}
    assert scan["qr"] == "CODE" and scan["direction"] == "out" and scan["scanned_at"] == 123
    assert len(scan["scan_id"]) == 36 and make_scan("C", "v")["scan_id"] != scan["scan_id"]


async def test_round_trip_over_real_http(aiohttp_server: Any, keys: dict[str, SigningKey]) -> None:
    """The client's headers and the server's view of method, path and body agree over a real socket."""
    reg = DeviceRegistry([Device("dev-a", bytes(keys["dev-a"].verify_key))], rate=0.01, burst=3)

    async def handler(request: web.Request) -> web.Response:
        try:
            device = reg.authenticate(request.method, request.path_qs, request.headers, await request.read())
        except (AuthError, ForbiddenError, RateLimitedError) as exc:
            return web.json_response({"error": exc.code, "message": str(exc)}, status=exc.http_status)
        return web.json_response({"device": device.device_id, "path": request.path_qs})

    app = web.Application()
    app.router.add_post("/v1/scans", handler)
    app.router.add_get("/v1/echo", handler)
    server = await aiohttp_server(app, host="127.0.0.1")
    url = str(server.make_url("")).rstrip("/")
    client = ScannerClient(url, "dev-a", keys["dev-a"])
    stranger = ScannerClient(url, "ghost", SigningKey.generate())
    try:
        status, body = await client.post_scans([make_scan("CODE", "venue-1")])
        assert (status, body["device"]) == (200, "dev-a")
        # a percent-encoded query is signed and checked exactly as it travels
        status, body = await client.request("GET", "/v1/echo?venue=a%20b&x=%2F")
        assert (status, body["path"]) == (200, "/v1/echo?venue=a%20b&x=%2F")
        status, body = await client.request("POST", "/v1/scans", b"{}", headers_override={"X-Nonce": "x" * 16})
        assert status == 401 and "does not verify" in body["message"]
        replay = sign_request(keys["dev-a"], "dev-a", "POST", "/v1/scans", b"{}")
        assert (await client.request("POST", "/v1/scans", b"{}", headers_override=replay))[0] == 200
        status, body = await client.request("POST", "/v1/scans", b"{}", headers_override=replay)
        assert status == 401 and "replayed" in body["message"]
        assert (await stranger.post_scans([]))[0] == 401  # unknown: the same answer as a bad signature
        status, body = await client.post_scans([])  # the burst of 3 is spent
        assert status == 429 and body["error"] == "rate_limited"
        assert orjson.loads(orjson.dumps(body))["message"].startswith("device 'dev-a' exceeded")
    finally:
        await client.close()
        await stranger.close()
