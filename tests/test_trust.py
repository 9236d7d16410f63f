"""The trust list refuses, at load time, everything that could make a verifier accept a forgery."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from nacl.bindings import crypto_core_ed25519_add
from nacl.signing import SigningKey

from engine.codes.payload import b64url_encode, key_id
from engine.codes.trust import TrustedKey, TrustList
from engine.errors import TrustListError

# An order-8 point (from libsodium's blocklist of small-order encodings).
ORDER_8_POINT = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
P = 2**255 - 19


def entry_for(public: bytes, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kid": b64url_encode(key_id(public)),
        "issuer": "p",
        "public_key": b64url_encode(public),
        "valid_from": "2025-01-01T00:00:00Z",
        "valid_until": "2027-01-01T00:00:00Z",
    }
    entry.update(overrides)
    return entry


def doc_bytes(*entries: dict[str, Any], revoked: Any = (), **top: Any) -> bytes:
    doc: dict[str, Any] = {"version": 1, "keys": list(entries), "revoked_codes": list(revoked)}
    doc.update(top)
    return json.dumps(doc).encode()


@pytest.fixture
def public(issuer_key: SigningKey) -> bytes:
    return bytes(issuer_key.verify_key)


def test_a_good_list_loads(public: bytes) -> None:
    trust = TrustList.from_json(doc_bytes(entry_for(public), revoked=["PCC1"]))
    assert [k.public_key for k in trust.keys] == [public]
    assert trust.revoked_codes == {"PCC1"}
    assert trust.keys[0].valid_from == 1_735_689_600


@pytest.mark.parametrize(
    "bad_key",
    [
        pytest.param(bytes([1]) + bytes(31), id="identity"),
        pytest.param(bytes(32), id="order-4-y0"),
        pytest.param(ORDER_8_POINT, id="order-8"),
        pytest.param((P + 1).to_bytes(32, "little"), id="non-canonical-y"),
        pytest.param(bytes([1]) + bytes(30) + b"\x80", id="negative-zero-x"),
        pytest.param(b"\xff" * 32, id="off-curve"),
    ],
)
def test_small_order_non_canonical_and_off_curve_keys_are_refused(bad_key: bytes) -> None:
    with pytest.raises(TrustListError, match="not a valid Ed25519 public key"):
        TrustList.from_json(doc_bytes(entry_for(bad_key)))


def test_mixed_order_key_is_refused(public: bytes) -> None:
    """A genuine key plus a torsion component: signatures could verify for more than one message."""
    mixed = crypto_core_ed25519_add(public, ORDER_8_POINT)
    with pytest.raises(TrustListError, match="not a valid Ed25519 public key"):
        TrustList.from_json(doc_bytes(entry_for(mixed)))


def test_wrong_key_length_is_refused(public: bytes) -> None:
    with pytest.raises(TrustListError, match="32 bytes"):
        TrustList.from_json(doc_bytes(entry_for(public, public_key=b64url_encode(public[:31]))))
    with pytest.raises(TrustListError, match="must be 32 bytes"):
        TrustList.build([TrustedKey(key_id(public[:31]), "p", public[:31], 0, 1)])


def test_non_canonical_base64_spelling_of_a_key_is_refused(public: bytes) -> None:
    text = b64url_encode(public)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    sloppy = text[:-1] + alphabet[alphabet.index(text[-1]) | 1]  # same 32 bytes, unused bits set
    assert sloppy != text
    with pytest.raises(TrustListError, match="canonical base64url"):
        TrustList.from_json(doc_bytes(entry_for(public, public_key=sloppy)))
    with pytest.raises(TrustListError, match="canonical base64url"):
        TrustList.from_json(doc_bytes(entry_for(public, public_key=text + "=")))


def test_wrong_kid_is_refused(public: bytes) -> None:
    other = bytes(SigningKey(b"\x07" * 32).verify_key)
    with pytest.raises(TrustListError, match="kid does not match"):
        TrustList.from_json(doc_bytes(entry_for(public, kid=b64url_encode(key_id(other)))))
    with pytest.raises(TrustListError, match="kid does not match"):
        TrustList.from_json(doc_bytes(entry_for(public, kid="not-a-kid")))


def test_duplicate_kid_is_refused(public: bytes) -> None:
    with pytest.raises(TrustListError, match="duplicate kid"):
        TrustList.from_json(doc_bytes(entry_for(public), entry_for(public, issuer="q")))


def test_duplicate_added_with_with_key_is_refused(trust_list: TrustList, issuer_trusted_key: TrustedKey) -> None:
    with pytest.raises(TrustListError, match="duplicate kid"):
        trust_list.with_key(replace(issuer_trusted_key, issuer="again"))


@pytest.mark.parametrize(
    ("valid_from", "valid_until"),
    [("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"), ("2027-01-01T00:00:00Z", "2026-01-01T00:00:00Z")],
    ids=["empty", "reversed"],
)
def test_empty_or_reversed_window_is_refused(public: bytes, valid_from: str, valid_until: str) -> None:
    with pytest.raises(TrustListError, match="valid_until must be after valid_from"):
        TrustList.from_json(doc_bytes(entry_for(public, valid_from=valid_from, valid_until=valid_until)))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"{", id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[]", id="not-an-object"),
        pytest.param(b'{"keys": []}', id="no-version"),
        pytest.param(b'{"version": 2, "keys": []}', id="future-version"),
        pytest.param(b'{"version": 1, "keys": {}}', id="keys-not-list"),
        pytest.param(b'{"version": 1, "keys": [1]}', id="entry-not-object"),
        pytest.param(b'{"version": 1, "keys": [{"kid": "x"}]}', id="missing-fields"),
        pytest.param(b'{"version": 1, "revoked_codes": "PCC1"}', id="revoked-not-list"),
        pytest.param(b'{"version": 1, "revoked_codes": [1]}', id="revoked-not-strings"),
    ],
)
def test_bad_json_is_refused(raw: bytes) -> None:
    with pytest.raises(TrustListError):
        TrustList.from_json(raw)


@pytest.mark.parametrize("qid", ["", "PCC 1", "PCC|1", "PCC.1", "Q" * 33, "PCCĐ1"])
def test_bad_revoked_qid_is_refused(qid: str) -> None:
    with pytest.raises(TrustListError, match="not a valid QR id"):
        TrustList.from_json(doc_bytes(revoked=[qid]))
    with pytest.raises(TrustListError, match="not a valid QR id"):
        TrustList().with_code_revoked(qid)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("valid_from", "2025-01-01T00:00:00"),
        ("valid_until", "2027-01-01"),
        ("valid_from", "yesterday"),
        ("valid_from", True),
        ("valid_from", 1.5),
        ("issuer", ""),
        ("issuer", 7),
        ("kid", 5),
    ],
)
def test_bad_fields_are_refused(public: bytes, field: str, value: Any) -> None:
    with pytest.raises(TrustListError):
        TrustList.from_json(doc_bytes(entry_for(public, **{field: value})))


def test_naive_datetime_message_says_why(public: bytes) -> None:
    with pytest.raises(TrustListError, match="no time zone"):
        TrustList.from_json(doc_bytes(entry_for(public, valid_from="2025-01-01T00:00:00")))


def test_unix_seconds_and_offsets_are_accepted(public: bytes) -> None:
    trust = TrustList.from_json(
        doc_bytes(entry_for(public, valid_from=1_735_689_600, valid_until="2025-01-01T07:00:01+07:00"))
    )
    assert (trust.keys[0].valid_from, trust.keys[0].valid_until) == (1_735_689_600, 1_735_689_601)


def test_save_load_round_trip(tmp_path: Path, trust_list: TrustList) -> None:
    second = bytes(SigningKey(b"\x02" * 32).verify_key)
    edited = (
        trust_list.with_key(TrustedKey(key_id(second), "second", second, 1_700_000_000, 1_800_000_000))
        .with_key_revoked(b64url_encode(key_id(second)))
        .with_code_revoked("PCC-1_a")
    )
    path = tmp_path / "sub" / "trust.json"
    edited.save(path)
    loaded = TrustList.load(path)
    assert loaded == edited
    assert loaded.to_json() == path.read_bytes()
    assert [k.revoked for k in loaded.keys if k.issuer == "second"] == [True]
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temp file left behind
    assert not stat.S_IMODE(path.stat().st_mode) & 0o022


def test_edits_return_new_lists(trust_list: TrustList) -> None:
    kid = trust_list.keys[0].kid_text
    revoked = trust_list.with_key_revoked(kid)
    assert not trust_list.keys[0].revoked and revoked.keys[0].revoked
    with pytest.raises(TrustListError, match="no key"):
        trust_list.with_key_revoked("AAAAAAAAAAA")


def test_load_of_missing_file_is_a_trust_list_error(tmp_path: Path) -> None:
    with pytest.raises(TrustListError, match="cannot read"):
        TrustList.load(tmp_path / "absent.json")


def test_table_is_sorted_by_kid_and_flat() -> None:
    keys = [bytes(SigningKey(bytes([i]) * 32).verify_key) for i in range(1, 6)]
    trust = TrustList.build(
        [TrustedKey(key_id(k), f"p{i}", k, i, i + 10, revoked=i == 3) for i, k in enumerate(keys)], ["B", "A"]
    )
    table = trust.table()
    kids = [table.kids[i * 8 : (i + 1) * 8] for i in range(len(table))]
    assert kids == sorted(kids) and len(table) == 5
    for i, kid in enumerate(kids):
        k = next(k for k in trust.keys if k.kid == kid)
        assert table.public_keys[i * 32 : (i + 1) * 32] == k.public_key
        assert (table.valid_from[i], table.valid_until[i], bool(table.revoked[i])) == (
            k.valid_from,
            k.valid_until,
            k.revoked,
        )
        assert table.issuers[i] == k.issuer and table.kid_text(i) == k.kid_text
    assert table.revoked_qids == (b"A", b"B")
