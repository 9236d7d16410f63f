"""Hostile and malformed input: Ed25519 edge cases, fuzzed request envelopes, oversized and slow requests.

Ed25519 libraries disagree on what a valid signature is (non-canonical S, small-order or non-canonical public
keys and R values). The engine's rule is libsodium's ``crypto_sign_verify_detached`` (docs/reliability.md):
both verifier paths call libsodium, and the tests below build each dangerous case *themselves* (a few lines of
pure-Python Edwards arithmetic, no downloaded lists), prove that a permissive verifier would accept it, and
assert that both of ours say ``bad_signature``. Payload-parser fuzzing and Python/Cython agreement live in
``tests/test_verify_parity.py``; here the fuzzing targets the HTTP envelope of a real engine.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import socket
import time
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from engine.codes.payload import DOMAIN, Person, b64url_encode, key_id, key_id_text, mint
from engine.codes.trust import TrustList, TrustTable
from engine.codes.verdicts import Verdict
from engine.devices.client import make_scan, sign_request
from engine.errors import TrustListError
from engine.testing.engines import DEVICE_ID, EngineProcess, Fixture, admin_headers, device_registration, make_fixture
from engine.verify import verifier_class
from engine.verify.contract import CodeBatch
from engine.verify.reference import PyVerifier

_CVerifier = verifier_class() if verifier_class() is not PyVerifier else None

# -- a minimal Edwards25519, only to *construct* hostile inputs and to model a permissive verifier ------------
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1, 1, 0)


def _add(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, int, int, int]:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa, bb = (y1 - x1) * (y2 - x2) % P, (y1 + x1) * (y2 + x2) % P
    c, dd = 2 * D * t1 * t2 % P, 2 * z1 * z2 % P
    e, f, g, h = bb - aa, dd - c, dd + c, bb + aa
    return e * f % P, g * h % P, f * g % P, e * h % P


def _mul(k: int, pt: tuple[int, ...]) -> tuple[int, ...]:
    out: tuple[int, ...] = IDENTITY
    while k:
        if k & 1:
            out = _add(out, pt)
        pt = _add(pt, pt)
        k >>= 1
    return out


def _xy(pt: tuple[int, ...]) -> tuple[int, int]:
    zi = pow(pt[2], P - 2, P)
    return pt[0] * zi % P, pt[1] * zi % P


def _encode(pt: tuple[int, ...]) -> bytes:
    x, y = _xy(pt)
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _decode_lax(s: bytes) -> tuple[int, int, int, int] | None:
    """Decode the way permissive verifiers do: y reduced mod p, no canonicity or subgroup check."""
    n = int.from_bytes(s, "little")
    y, sign = (n & ((1 << 255) - 1)) % P, n >> 255
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    if x & 1 != sign:
        x = -x % P
    return x, y, 1, x * y % P


BASE = _decode_lax((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))
assert BASE is not None


def lax_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """RFC 8032's equation [S]B = R + [k]A with none of the extra checks (no S < L, no small-order refusal)."""
    a, r = _decode_lax(public), _decode_lax(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    k = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % L
    return _xy(_mul(s, BASE)) == _xy(_add(r, _mul(k, a)))


def small_order_encodings() -> list[bytes]:
    """All 14 encodings of the 8 small-order points, built from a torsion point of order 8 found by [L]P."""
    y = 2
    while True:
        pt = _decode_lax(y.to_bytes(32, "little"))
        if pt is not None:
            t = _mul(L, pt)
            if _xy(_mul(4, t)) != (0, 1):  # order exactly 8
                break
        y += 1
    points = [_mul(i, t) for i in range(8)]
    out = {_encode(p) for p in points}
    for p in points:  # the other sign bit (for x = 0 that is "negative zero"), and y + p where it fits in 255 bits
        x, yy = _xy(p)
        out.add((yy | ((1 - (x & 1)) << 255)).to_bytes(32, "little"))
        if yy + P < 2**255:
            out.add((yy + P).to_bytes(32, "little"))
            out.add((yy + P + (1 << 255)).to_bytes(32, "little"))
    return sorted(out)


SMALL_ORDER = small_order_encodings()
VERIFIERS = [PyVerifier] + ([_CVerifier] if _CVerifier is not None else [])
VERIFIER_IDS = ["py-verifier"] + (["c-verifier"] if _CVerifier is not None else [])


def _table(public_keys: list[bytes], now: int) -> TrustTable:
    """A trust table built directly, bypassing TrustList.build: the verifiers must hold even if a bad key got in."""
    keys = sorted(public_keys, key=key_id)
    n = len(keys)
    return TrustTable(
        kids=b"".join(key_id(k) for k in keys),
        public_keys=b"".join(keys),
        valid_from=np.full(n, now - 86_400, np.int64),
        valid_until=np.full(n, now + 86_400, np.int64),
        revoked=np.zeros(n, np.uint8),
        revoked_qids=(),
        issuers=tuple("hostile" for _ in keys),
    )


def _code(public: bytes, signature: bytes, now: int) -> bytes:
    head = f"{Person('******000001', 'TRAN THI B', '1985-**-**', 'QIDHOSTILE1').fields()}|VS1."
    head += f"{key_id_text(public)}.{now - 60}.{now + 86_400}."
    return head.encode() + b64url_encode(signature).encode()


def _verdicts(verifier_cls: Any, table: TrustTable, codes: list[bytes], now: int) -> list[Verdict]:
    v = verifier_cls(table, b"s" * 32, cache_size=0, threads=1, skew=300)
    return [Verdict(x) for x in v.verify_batch(CodeBatch.from_codes(codes), now).verdict.tolist()]


def test_small_order_points_are_the_fourteen_libsodium_refuses() -> None:
    assert len(SMALL_ORDER) == 14
    for enc in SMALL_ORDER:
        pt = _decode_lax(enc)
        assert pt is not None and _xy(_mul(8, pt)) == (0, 1)
    print(f"\n[hostile] small-order encodings constructed: {len(SMALL_ORDER)}")


@pytest.mark.parametrize("verifier_cls", VERIFIERS, ids=VERIFIER_IDS)
def test_non_canonical_s_is_refused(verifier_cls: Any) -> None:
    now = int(time.time())
    issuer = SigningKey(hashlib.sha256(b"hostile:issuer").digest())
    public = bytes(issuer.verify_key)
    good = mint(
        Person("******000001", "TRAN THI B", "1985-**-**", "QIDHOSTILE1"), issuer, iat=now - 60, exp=now + 86_400
    )
    sig = base64.urlsafe_b64decode(good.rsplit(".", 1)[1] + "==")
    s = int.from_bytes(sig[32:], "little")
    message = DOMAIN + good.encode()[: len(good) - 86]
    variants = [sig[:32] + (s + k * L).to_bytes(32, "little") for k in (1, 2, 15) if s + k * L < 2**256]
    for v in variants:  # the malleated signatures are "valid" to a verifier that skips the S < L check
        assert lax_verify(public, message, v)
    codes = [good.encode()] + [_code(public, v, now) for v in variants]
    verdicts = _verdicts(verifier_cls, _table([public], now), codes, now)
    assert verdicts[0] is Verdict.OK  # the control: the genuine code passes on this path
    assert verdicts[1:] == [Verdict.BAD_SIGNATURE] * len(variants)
    print(f"\n[hostile] {verifier_cls.__name__}: {len(variants)} S+kL signatures refused")


@pytest.mark.parametrize("verifier_cls", VERIFIERS, ids=VERIFIER_IDS)
def test_small_order_and_non_canonical_public_keys_never_verify(verifier_cls: Any) -> None:
    """A = small-order point, R = identity, S = 0 satisfies the bare equation for *every* message."""
    now = int(time.time())
    identity = (1).to_bytes(32, "little")
    codes, lax_accepted = [], 0
    for a in SMALL_ORDER:
        forged = identity + bytes(32)
        code = _code(a, forged, now)
        lax_accepted += lax_verify(a, DOMAIN + code[: len(code) - 86], forged)
        codes.append(code)
    assert lax_accepted >= 4  # identity, the order-2 point, y = p+1 ...: "valid" for any message without checks
    try:
        verdicts = _verdicts(verifier_cls, _table(SMALL_ORDER, now), codes, now)
    except (ValueError, Exception) as exc:  # refusing such a table outright is an acceptable, stricter answer
        pytest.skip(f"{verifier_cls.__name__} refuses a table holding small-order keys: {exc}")
    assert verdicts == [Verdict.BAD_SIGNATURE] * len(codes)
    for a in SMALL_ORDER:  # and they never get that far: the trust list refuses them (tests/test_trust.py too)
        with pytest.raises(TrustListError, match=r"small order|not a valid"):
            TrustList.build([_trusted(a, now)])
    print(
        f"\n[hostile] {verifier_cls.__name__}: {len(codes)} small-order-key forgeries refused "
        f"({lax_accepted} accepted by a permissive verifier)"
    )


@pytest.mark.parametrize("verifier_cls", VERIFIERS, ids=VERIFIER_IDS)
def test_small_order_r_is_refused(verifier_cls: Any) -> None:
    now = int(time.time())
    issuer = SigningKey(hashlib.sha256(b"hostile:issuer-r").digest())
    public = bytes(issuer.verify_key)
    codes = []
    for r in SMALL_ORDER:
        for s in (0, 1, L - 1):
            codes.append(_code(public, r + s.to_bytes(32, "little"), now))
    verdicts = _verdicts(verifier_cls, _table([public], now), codes, now)
    assert verdicts == [Verdict.BAD_SIGNATURE] * len(codes)
    print(f"\n[hostile] {verifier_cls.__name__}: {len(codes)} small-order-R signatures refused")


@pytest.mark.parametrize("verifier_cls", VERIFIERS, ids=VERIFIER_IDS)
def test_wrong_signature_lengths_are_malformed(verifier_cls: Any) -> None:
    now = int(time.time())
    issuer = SigningKey(hashlib.sha256(b"hostile:issuer-len").digest())
    good = mint(Person("******000001", "TRAN THI B", "1985-**-**", "QIDHOSTILE1"), issuer, iat=now - 60, exp=now + 9999)
    head, sig = good.rsplit(".", 1)
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(sig[-1])
    bad_last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last | 1]
    variants = [sig[:-1], sig + "A", sig[:-2], sig + "AA", sig + "==", sig[:-1] + bad_last, "", sig[:43]]
    codes = [f"{head}.{v}".encode() for v in variants if v != sig]
    verdicts = _verdicts(verifier_cls, _table([bytes(issuer.verify_key)], now), codes, now)
    assert verdicts == [Verdict.MALFORMED] * len(codes)


def _trusted(public: bytes, now: int) -> Any:
    from engine.codes.trust import TrustedKey

    return TrustedKey(key_id(public), "hostile", public, now - 86_400, now + 86_400)


# -- the HTTP envelope, through a real engine process ----------------------------------------------------------
class Live:
    """One real engine for the module (the fuzzers send thousands of requests; restarting per test is waste)."""

    def __init__(self, proc: EngineProcess, fx: Fixture) -> None:
        self.proc, self.fx = proc, fx

    def send(self, body: bytes, *, content_type: str = "application/json", sign: bool = True) -> tuple[int, Any]:
        headers = sign_request(self.fx.device, DEVICE_ID, "POST", "/v1/scans", body) if sign else {}
        if content_type:
            headers["Content-Type"] = content_type
        conn = http.client.HTTPConnection("127.0.0.1", self.proc.port, timeout=30)
        try:
            conn.request("POST", "/v1/scans", body, headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return resp.status, raw


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    fx = make_fixture(tmp_path_factory.mktemp("hostile"))
    env = {
        "ENGINE_DEVICE_RATE": "100000",
        "ENGINE_DEVICE_BURST": "100000",
        "ENGINE_DEVICE_SCAN_RATE": "1000000",  # one device stands for a fleet here (issue 13 budgets)
        "ENGINE_DEVICE_SCAN_BURST": "1000000",
        "ENGINE_DEVICE_COLD_RATE": "1000000",
        "ENGINE_DEVICE_COLD_BURST": "1000000",
        "ENGINE_DEVICE_QUEUE_SHARE": "1",
        "ENGINE_VERIFY_THREADS": "2",
        "ENGINE_BATCH_AGE_MS": "1",
        "ENGINE_MAX_SCANS_PER_REQUEST": "100",
        "ENGINE_MAX_BODY_BYTES": "262144",
        "ENGINE_BODY_TIMEOUT_S": "3",
    }
    proc = EngineProcess(fx.data_dir, **env).start()
    try:
        proc.post_json("/v1/admin/devices", device_registration(fx), admin_headers(fx.data_dir))
        yield Live(proc, fx)
    finally:
        proc.terminate()


COUNTS: dict[str, int] = {}
# Shrinking replays hundreds of HTTP requests; the failing example is printed either way, so skip it.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


def _check_answer(status: int, answer: Any, n_items: int | None) -> None:
    assert status in (202, 400, 413), (status, answer)
    assert isinstance(answer, dict), answer
    if status == 202:
        assert n_items is not None and len(answer["results"]) == n_items
        for i, r in enumerate(answer["results"]):
            assert r["index"] == i and r["status"] in ("stored", "duplicate", "rejected")
            assert ("error" in r) == (r["status"] == "rejected")
            assert r["status"] == "rejected" or r["verdict"]
    else:
        assert answer["error"] and answer["message"]
    COUNTS[str(status)] = COUNTS.get(str(status), 0) + 1


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_value = st.recursive(
    json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12
)
NOW_MS = int(time.time() * 1000)


def _mostly(valid: Any, hostile: Any) -> Any:
    """Valid three times out of four, so fuzzing gets past the first check of an item to the later ones."""
    return st.one_of(valid, valid, valid, hostile)


item = st.fixed_dictionaries(
    {
        "scan_id": _mostly(st.uuids().map(str), st.one_of(st.text(max_size=40), json_value)),
        "qr": _mostly(st.text(max_size=300), st.one_of(st.sampled_from(["", "x" * 2100]), json_value)),
        "venue_id": _mostly(st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True), json_value),
        "direction": _mostly(st.sampled_from(["in", "out"]), st.one_of(st.sampled_from(["IN", ""]), json_value)),
        "scanned_at": _mostly(
            st.integers(NOW_MS - 20 * 86_400_000, NOW_MS),
            st.one_of(st.integers(-(2**63), 2**63 - 1), st.datetimes().map(lambda d: d.isoformat()), json_value),
        ),
    },
    optional={"extra": json_value},
)
envelope = st.one_of(
    json_value,
    st.fixed_dictionaries(
        {"scans": st.one_of(st.lists(st.one_of(item, json_value), max_size=12), json_value)},
        optional={"device_id": _mostly(st.just(DEVICE_ID), st.one_of(st.text(max_size=10), json_leaf))},
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
@given(doc=envelope)
def test_fuzzed_envelopes_get_a_specific_answer(live: Live, doc: Any) -> None:
    status, answer = live.send(orjson.dumps(doc))
    scans = doc.get("scans") if isinstance(doc, dict) else None
    _check_answer(status, answer, len(scans) if isinstance(scans, list) else None)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
@given(raw=st.binary(max_size=400))
def test_fuzzed_raw_bodies_get_a_specific_answer(live: Live, raw: bytes) -> None:
    status, answer = live.send(raw)
    assert status in (202, 400), (status, answer)
    _check_answer(status, answer, len(orjson.loads(raw)["scans"]) if status == 202 else None)


def test_fuzz_counts_are_reported(live: Live) -> None:
    print(f"\n[hostile] envelope fuzzing: {sum(COUNTS.values())} requests, answers by status {COUNTS}; 5xx: 0")


def test_oversized_deep_and_huge_bodies(live: Live) -> None:
    big = orjson.dumps({"device_id": DEVICE_ID, "scans": [make_scan("x" * 2000, "v")] * 200})
    assert len(big) > 262_144
    status, answer = live.send(big)
    assert status == 413 and answer["error"], answer
    timings = {}
    for name, body in {
        "nested_list": b"[" * 100_000 + b"]" * 100_000,
        "nested_object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "nested_in_scans": b'{"device_id":"' + DEVICE_ID.encode() + b'","scans":[' + b"[" * 5000 + b"]" * 5001 + b"}",
        "huge_number": b'{"device_id":"' + DEVICE_ID.encode() + b'","scans":[{"scanned_at":' + b"9" * 100_000 + b"}]}",
        "many_items": orjson.dumps({"device_id": DEVICE_ID, "scans": [{}] * 101}),
        "long_strings": orjson.dumps({"device_id": DEVICE_ID, "scans": ["y" * 200_000]}),
    }.items():
        t0 = time.perf_counter()
        status, answer = live.send(body)
        timings[name] = round(time.perf_counter() - t0, 3)
        # a specific refusal of the envelope, or a 202 that rejects the item with its reason
        assert status in (400, 413) or (status == 202 and answer["rejected"] == 1), (name, status, answer)
        assert timings[name] < 5, timings  # bounded: a generous ceiling, not a benchmark
    print(f"\n[hostile] oversized/deep/huge bodies answered 400/413; seconds each: {timings}")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", ""],
)
def test_wrong_content_types_are_400(live: Live, content_type: str) -> None:
    body = orjson.dumps({"device_id": DEVICE_ID, "scans": [make_scan(live.fx.code(1), "v")]})
    status, answer = live.send(body, content_type=content_type)
    assert status == 400 and "Content-Type" in answer["message"], answer


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status").read().splitlines():  # noqa: SIM115
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_clients_cost_bounded_memory_and_do_not_block_others(live: Live) -> None:
    """Slowloris: 200 sockets trickling headers byte by byte; others are still served, memory stays flat."""
    assert live.proc.proc is not None
    pid = live.proc.proc.pid
    base = _rss_kib(pid)
    socks = []
    head = b"POST /v1/scans HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Pad: "
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", live.proc.port), timeout=5)
        socks.append(s)
    t_end = time.monotonic() + 3
    pos = 0
    served = 0
    while time.monotonic() < t_end:
        for s in socks:
            s.send(head[pos % len(head) : pos % len(head) + 1] if pos < len(head) else b"a")
        pos += 1
        body = orjson.dumps({"device_id": DEVICE_ID, "scans": [make_scan(live.fx.code(2), "v")]})
        status, _answer = live.send(body)  # an honest device is served while they trickle
        assert status == 202
        served += 1
        time.sleep(0.05)
    peak = _rss_kib(pid)
    for s in socks:
        s.close()
    assert peak - base < 64 * 1024, (base, peak)
    print(
        f"\n[hostile] slowloris: 200 trickling sockets x {pos} bytes; {served} honest requests served; "
        f"RSS {base // 1024} -> {peak // 1024} MiB"
    )


def test_slow_body_is_cut_off_by_a_read_timeout(live: Live) -> None:
    """A client that sends headers, then the body one byte at a time, must not hold a handler forever.

    aiohttp has no body read timeout of its own (its keep-alive timer only closes *idle* connections), and
    ``request.read()`` in engine/web/scans.py waits as long as bytes keep coming: each such socket pins a handler
    and its buffer indefinitely. Expected: the engine answers 408 (or closes) within a bounded time.
    """
    body = orjson.dumps({"device_id": DEVICE_ID, "scans": [make_scan(live.fx.code(3), "v")]})
    headers = sign_request(live.fx.device, DEVICE_ID, "POST", "/v1/scans", body)
    head = "POST /v1/scans HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + f"Content-Length: {len(body)}\r\n\r\n"
    s = socket.create_connection(("127.0.0.1", live.proc.port), timeout=1)
    s.sendall(head.encode())
    cut_after = None
    t0 = time.monotonic()
    try:
        for b in body:
            if time.monotonic() - t0 > 10:
                break
            try:
                s.send(bytes([b]))
                s.settimeout(0.5)
                got = s.recv(4096)
                cut_after = time.monotonic() - t0
                assert got == b"" or got.startswith(b"HTTP/1.1 408") or got.startswith(b"HTTP/1.1 4"), got[:80]
                break
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                cut_after = time.monotonic() - t0
                break
    finally:
        s.close()
    assert cut_after is not None and cut_after < 10, "a byte-by-byte body held its handler for 10 s and more"
    print(f"\n[hostile] slow body cut after {cut_after:.1f} s")


@pytest.mark.parametrize("direction", [{}, [], {"in": 1}, ["in"]], ids=["empty-object", "empty-list", "object", "list"])
def test_unhashable_item_fields_are_item_errors_not_500(live: Live, direction: Any) -> None:
    """Found by schemathesis: ``"direction": {}`` reached ``DIRECTIONS.get(...)`` in engine/ingest/intake.py -> 500."""
    item = {**make_scan(live.fx.code(4), "v"), "direction": direction}
    status, answer = live.send(orjson.dumps({"device_id": DEVICE_ID, "scans": [item]}))
    assert status == 202, (status, answer)
    assert answer["results"][0]["status"] == "rejected" and "direction" in answer["results"][0]["error"]
