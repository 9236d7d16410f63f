"""The payload contract on the reference path: committed vectors, person keys, the verified-code cache, parsing.

Every vector in tests/vectors/codes.json is run through ``PyVerifier`` (the reference) and through
``make_verifier`` (whichever implementation is active), one code at a time and all in one batch.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from engine.codes.payload import DOMAIN, SIG_CHARS, Person, b64url_decode_canonical, mint, parse
from engine.codes.trust import TrustList
from engine.codes.verdicts import CodeKind, Reason, Verdict
from engine.verify import make_verifier
from engine.verify.contract import CodeBatch, Verifier, identity_key, issuer_tag, person_key
from engine.verify.reference import PyVerifier

VECTORS_DIR = Path(__file__).parent / "vectors"
DAY = 86_400

VerifierFactory = Callable[..., Verifier]
FACTORIES: list[Any] = [
    pytest.param(PyVerifier, id="PyVerifier"),
    pytest.param(make_verifier, id="make_verifier"),
]


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS_DIR / "make_vectors.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _expected(v: dict[str, Any]) -> tuple[Verdict, Reason, CodeKind]:
    return Verdict[v["verdict"].upper()], Reason[v["reason"].upper()], CodeKind[v["kind"].upper()]


# -- the committed vectors -------------------------------------------------------------------------------
def test_generator_reproduces_committed_vectors_exactly() -> None:
    assert _load_generator().build() == (VECTORS_DIR / "codes.json").read_bytes()


def test_vectors_cover_every_verdict_reason_and_kind(code_vectors: dict[str, Any]) -> None:
    got = [_expected(v) for v in code_vectors["vectors"]]
    assert {v for v, _, _ in got} == set(Verdict)
    assert {r for _, r, _ in got} == set(Reason)
    assert {k for _, _, k in got} == set(CodeKind)
    assert len({v["name"] for v in code_vectors["vectors"]}) == len(code_vectors["vectors"])


@pytest.mark.parametrize("factory", FACTORIES)
def test_every_vector_one_at_a_time(
    factory: VerifierFactory, code_vectors: dict[str, Any], vectors_trust_list: TrustList
) -> None:
    secret = bytes.fromhex(code_vectors["person_secret_hex"])
    table = vectors_trust_list.table()
    verifier = factory(table, secret, skew=code_vectors["skew"])
    for v in code_vectors["vectors"]:
        batch = CodeBatch.from_codes([v["code"].encode()])
        r = verifier.verify_batch(batch, code_vectors["now"])
        got = (Verdict(r.verdict[0]), Reason(r.reason[0]), CodeKind(r.kind[0]))
        assert got == _expected(v), v["name"]
        assert (r.qr_id(batch.buf, 0) if r.qid_end[0] > r.qid_start[0] else "") == v["qr_id"], v["name"]
        assert (table.kid_text(int(r.key_index[0])) if r.key_index[0] >= 0 else "") == v["kid"], v["name"]
        assert (int(r.iat[0]), int(r.exp[0])) == (v["iat"], v["exp"]), v["name"]
        assert bytes(r.person_key[0]).hex() == v["person_key"], v["name"]
        assert bytes(r.link_key[0]).hex() == v["link_key"], v["name"]


@pytest.mark.parametrize("factory", FACTORIES)
def test_all_vectors_in_one_batch_twice(
    factory: VerifierFactory, code_vectors: dict[str, Any], vectors_trust_list: TrustList
) -> None:
    """The second pass is all cache hits for the genuine ones: same verdicts, byte for byte."""
    verifier = factory(vectors_trust_list.table(), bytes.fromhex(code_vectors["person_secret_hex"]))
    vectors = code_vectors["vectors"]
    batch = CodeBatch.from_codes([v["code"].encode() for v in vectors])
    first = verifier.verify_batch(batch, code_vectors["now"])
    second = verifier.verify_batch(batch, code_vectors["now"])
    for r in (first, second):
        assert [_expected(v) for v in vectors] == [
            (Verdict(a), Reason(b), CodeKind(c)) for a, b, c in zip(r.verdict, r.reason, r.kind, strict=True)
        ]
        assert [r.qr_id(batch.buf, i) if r.qid_end[i] > r.qid_start[i] else "" for i in range(len(r))] == [
            v["qr_id"] for v in vectors
        ]
    assert not first.cache_hit.any()
    assert np.array_equal(second.person_key, first.person_key)
    # Every code whose signature verified (whatever happened after) is a hit the second time, and only those.
    verified = {Verdict.OK, Verdict.REVOKED_CODE, Verdict.EXPIRED, Verdict.NOT_YET_VALID}
    assert [bool(h) for h in second.cache_hit] == [Verdict(x) in verified for x in first.verdict]


# -- person key ------------------------------------------------------------------------------------------
def test_identities_are_the_labels_of_docs_payload_section_5(code_vectors: dict[str, Any]) -> None:
    """Each identity recomputed from its written definition, so the rule is the document's, not the code's."""
    secret = bytes.fromhex(code_vectors["person_secret_hex"])
    by_name = {v["name"]: v for v in code_vectors["vectors"]}

    def mac(label: bytes) -> str:
        return hmac.new(secret, label, hashlib.sha256).digest()[:16].hex()

    def issuer(name: str) -> bytes:
        return hashlib.sha256(name.encode()).digest()[:16]

    assert person_key(secret, b"******012345").hex() == mac(b"pk1:******012345")
    # signed, key listed: issuer + QID, whatever number is printed (masked or whole)
    assert by_name["ok"]["person_key"] == mac(b"id1:iss:" + issuer("platform-active") + b"PCC7F3A9D2E1B4")
    assert by_name["ok_unmasked_doc_masked_birth_date_type_1"]["person_key"] == mac(
        b"id1:iss:" + issuer("platform-active") + b"Q-binh_2026"
    )
    assert by_name["ok_second_issuer"]["person_key"] == mac(b"id1:iss:" + issuer("platform-second") + b"PCC7F3A9D2E1B4")
    # signed, key unknown: the kid it claims + QID
    kid = b64url_decode_canonical(by_name["unknown_key"]["code"].split(".")[1].encode(), 8)
    assert kid is not None
    assert by_name["unknown_key"]["person_key"] == mac(b"id1:kid:" + kid + b"PCC7F3A9D2E1B4")
    # unsigned: the number as printed and the QID
    assert by_name["unsigned_legacy_empty_ext"]["person_key"] == mac(b"id1:uns:******012345|PCC7F3A9D2E1B4")
    # CCCD: the document number, as before issue 12 (old CCCD rows keep their identities)
    assert by_name["id_card_7_fields"]["person_key"] == mac(b"pk1:079090012345")
    # the link of a genuine code printing its number whole is that document's identity
    assert by_name["ok_unmasked_doc_masked_birth_date_type_1"]["link_key"] == mac(b"pk1:079090012345")
    assert by_name["ok"]["link_key"] == "00" * 16  # masked: never links
    for v in code_vectors["vectors"]:
        if v["verdict"] == "malformed":
            assert v["person_key"] == v["link_key"] == "00" * 16 and v["qr_id"] == "", v["name"]


@pytest.mark.parametrize("factory", FACTORIES)
def test_person_key_depends_on_the_secret(
    factory: VerifierFactory, trust_list: TrustList, issuer_key: SigningKey, person: Person, now: int
) -> None:
    code = mint(person, issuer_key, iat=now, exp=now + DAY).encode()
    keys = [
        bytes(factory(trust_list.table(), s).verify_batch(CodeBatch.from_codes([code]), now).person_key[0])
        for s in (b"a" * 32, b"b" * 32)
    ]
    assert keys[0] != keys[1]
    issuer = issuer_tag(trust_list.table().issuers[0])
    assert keys[0] == identity_key(b"a" * 32, b"id1:iss:" + issuer + person.qr_id.encode())


# -- verified-code cache never changes a verdict ---------------------------------------------------------
@pytest.mark.parametrize("factory", FACTORIES)
def test_cache_hit_still_sees_revocations_and_expiry(
    factory: VerifierFactory,
    trust_list: TrustList,
    issuer_key: SigningKey,
    person: Person,
    person_secret: bytes,
    now: int,
) -> None:
    code = mint(person, issuer_key, iat=now - DAY, exp=now + DAY).encode()
    batch = CodeBatch.from_codes([code])
    verifier = factory(trust_list.table(), person_secret)

    def scan(at: int = now) -> tuple[Verdict, bool]:
        r = verifier.verify_batch(batch, at)
        return Verdict(r.verdict[0]), bool(r.cache_hit[0])

    assert scan() == (Verdict.OK, False)
    assert scan() == (Verdict.OK, True)
    assert scan(now + DAY) == (Verdict.EXPIRED, True)
    verifier.set_trust(trust_list.with_code_revoked(person.qr_id).table())
    assert scan()[0] is Verdict.REVOKED_CODE
    kid = trust_list.keys[0].kid_text
    verifier.set_trust(trust_list.with_key_revoked(kid).table())
    assert scan()[0] is Verdict.REVOKED_KEY
    verifier.set_trust(TrustList().table())
    assert scan()[0] is Verdict.UNKNOWN_KEY
    verifier.set_trust(trust_list.table())
    assert scan()[0] is Verdict.OK


@pytest.mark.parametrize("factory", FACTORIES)
def test_forgeries_never_enter_the_cache(
    factory: VerifierFactory, trust_list: TrustList, issuer_key: SigningKey, person: Person, now: int
) -> None:
    code = mint(person, issuer_key, iat=now, exp=now + DAY)
    forged = code.replace("VAN AN|", "VAN AM|").encode()
    verifier = factory(trust_list.table(), b"s" * 32)
    for _ in range(3):
        r = verifier.verify_batch(CodeBatch.from_codes([forged, code.encode()]), now)
        assert Verdict(r.verdict[0]) is Verdict.BAD_SIGNATURE and not r.cache_hit[0]
        assert Verdict(r.verdict[1]) is Verdict.OK


def test_cache_size_zero_and_eviction(trust_list: TrustList, issuer_key: SigningKey, now: int) -> None:
    codes = [
        mint(Person("******000000", "A", "2000-01-01", f"Q{i}"), issuer_key, iat=now, exp=now + DAY).encode()
        for i in range(3)
    ]
    off = PyVerifier(trust_list.table(), b"s" * 32, cache_size=0)
    off.verify_batch(CodeBatch.from_codes(codes + codes), now)
    assert off.cache_hits == 0 and off.cache_lookups == 6
    small = PyVerifier(trust_list.table(), b"s" * 32, cache_size=2)
    r = small.verify_batch(CodeBatch.from_codes([*codes, codes[0], codes[2]]), now)
    assert all(Verdict(v) is Verdict.OK for v in r.verdict)
    # a full set makes way for a third code (or leaves it out): one eviction either way, never a third entry
    assert (small.set_size, small.set_evictions) == (2, 1) and not r.cache_hit[:3].any()
    # the batch's lookups saw the set as it began; a repeat is a hit exactly when its first copy's entry went in
    assert (r.cache_hit[3], r.cache_hit[4]) == (r.newly_verified[0], r.newly_verified[2])
    again = small.verify_batch(CodeBatch.from_codes(codes), now)
    assert int(again.cache_hit.sum()) == 2  # the two codes the set holds, and only those


# -- parsing and minting ---------------------------------------------------------------------------------
def test_signed_message_covers_everything_but_the_signature(issuer_key: SigningKey, person: Person) -> None:
    code = mint(person, issuer_key, iat=1, exp=2).encode()
    p = parse(code)
    assert p.ok and p.kind is CodeKind.SIGNED and (p.iat, p.exp) == (1, 2)
    assert p.message(code) == DOMAIN + code[:-SIG_CHARS]
    assert code[p.qid_start : p.qid_end] == person.qr_id.encode()
    issuer_key.verify_key.verify(p.message(code), p.signature)


def test_mint_refuses_fields_that_would_not_parse(issuer_key: SigningKey) -> None:
    from engine.errors import MintError

    for bad in (
        Person("******012345", "Nguyen Van An", "1990-01-01", "Q1"),
        Person("******012345", "NGUYEN VAN AN", "1990-13-01", "Q1"),
        Person("******012345", "NGUYEN VAN AN", "1990-01-01", "Q|1"),
    ):
        with pytest.raises(MintError):
            mint(bad, issuer_key, iat=1, exp=2)
    with pytest.raises(MintError):
        mint(Person("******012345", "NGUYEN VAN AN", "1990-01-01", "Q1"), issuer_key, iat=5, exp=5)


def _vector_codes() -> list[tuple[bytes, str]]:
    import json

    doc = json.loads((VECTORS_DIR / "codes.json").read_text(encoding="utf-8"))
    return [(v["code"].encode(), v["verdict"]) for v in doc["vectors"]]


_VECTOR_CODES = _vector_codes()
VALID_CODES = [code for code, verdict in _VECTOR_CODES if verdict != "malformed"]
#: The vectors that verify ``ok``: the only codes any edit may land on and still verify (an edit of a tampered
#: vector can undo its tampering, so "differs from the code it was made from" is not the property to check).
GENUINE_CODES = frozenset(code for code, verdict in _VECTOR_CODES if verdict == "ok")


@st.composite
def mutated_codes(draw: st.DrawFn) -> tuple[bytes, bytes]:
    original = draw(st.sampled_from(VALID_CODES))
    code = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(code) - 1, 0)))
        byte = draw(st.one_of(st.sampled_from(list(b"|.-_*0A9 az=")), st.integers(0, 255)))
        if op == "replace" and code:
            code[pos] = byte
        elif op == "insert":
            code.insert(pos, byte)
        elif code:
            del code[pos]
    return original, bytes(code)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_parse_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    p = parse(data)
    assert isinstance(p.reason, Reason) and isinstance(p.kind, CodeKind)
    assert p.ok or p.kind is not CodeKind.SIGNED or not p.signature


@settings(max_examples=400, deadline=None)
@given(pair=mutated_codes())
def test_mutations_never_raise_and_never_verify_as_ok(
    pair: tuple[bytes, bytes], code_vectors: dict[str, Any], vectors_trust_list: TrustList
) -> None:
    original, code = pair
    p = parse(code)
    assert isinstance(p.reason, Reason) and isinstance(p.kind, CodeKind)
    verifier = PyVerifier(vectors_trust_list.table(), b"s" * 32, cache_size=0)
    r = verifier.verify_batch(CodeBatch.from_codes([code]), code_vectors["now"])
    verdict = Verdict(r.verdict[0])
    assert (verdict is Verdict.MALFORMED) == (not p.ok)
    if verdict is Verdict.OK:  # only a genuine vector (untouched, or a mutation that undid itself) may verify
        assert code in GENUINE_CODES, (original, code)


SIGNED_OK_CODES = [c for c in VALID_CODES if parse(c).kind is CodeKind.SIGNED]
_CLASSES = [b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz", b"0123456789", b"-_"]


@st.composite
def same_class_edits(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """One character swapped for another of its class: the code stays well formed far more often than a random
    byte edit, so the signature check (not the parser) is what has to catch it."""
    original = draw(st.sampled_from(SIGNED_OK_CODES))
    pos = draw(st.sampled_from([i for i, c in enumerate(original) if any(c in k for k in _CLASSES)]))
    cls = next(k for k in _CLASSES if original[pos] in k)
    new = draw(st.sampled_from([c for c in cls if c != original[pos]]))
    return original, original[:pos] + bytes([new]) + original[pos + 1 :]


@settings(max_examples=300, deadline=None)
@given(pair=same_class_edits())
def test_well_formed_edits_of_genuine_codes_never_verify(
    pair: tuple[bytes, bytes], code_vectors: dict[str, Any], vectors_trust_list: TrustList
) -> None:
    original, code = pair
    verifier = PyVerifier(vectors_trust_list.table(), b"s" * 32, cache_size=0)
    verdict = Verdict(verifier.verify_batch(CodeBatch.from_codes([code]), code_vectors["now"]).verdict[0])
    assert verdict is not Verdict.OK or code in GENUINE_CODES, (original, code)
