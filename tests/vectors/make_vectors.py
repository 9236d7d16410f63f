"""Write ``tests/vectors/codes.json``: fixed inputs and the verdict the contract says each one gets.

Everything is deterministic (keys from fixed seeds, a fixed ``now``, Ed25519 signatures are deterministic),
so re-running this script reproduces the committed file byte for byte; ``tests/test_payload.py`` checks that.
The expected verdicts are written here by hand from docs/payload.md, then cross-checked against the reference
verifier when the file is built: a vector whose hand-written expectation disagrees with ``PyVerifier`` makes
the script fail instead of silently committing whatever the code happens to do.

Loading the file (for any implementation): ``doc = json.loads(path.read_text())``;
``TrustList.from_json(json.dumps(doc["trust_list"]).encode())``; ``bytes.fromhex(doc["person_secret_hex"])``;
each vector's ``code`` is text, to be verified as its UTF-8 bytes at time ``doc["now"]`` with ``doc["skew"]``.
Verdict/reason/kind are labels (``Verdict[label.upper()]``); ``person_key`` (the tracing identity) and
``link_key`` (the document a genuine code links it to) are hex, 32 zeros when none. ``identity_relations``
lists pairs of vectors whose identities or links must be equal or must differ (docs/payload.md section 5): the
rules themselves, checked against the reference here and against both verifiers by the tests.

Run: ``python tests/vectors/make_vectors.py`` (``--check`` exits 1 if the committed file differs).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import orjson
from nacl.signing import SigningKey

if __package__ in (None, ""):  # run as a script from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.codes.payload import DOMAIN, Person, b64url_encode, key_id_text, mint
from engine.codes.trust import TrustedKey, TrustList
from engine.codes.verdicts import CodeKind, Reason, Verdict
from engine.verify.contract import CodeBatch
from engine.verify.reference import PyVerifier

OUT = Path(__file__).with_name("codes.json")
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 86_400
SKEW = 300
LONGEST_NAME = "TON NU HOANG PHUONG THANH NGUYEN KHANH LINH"


def seeded_key(label: str) -> SigningKey:
    return SigningKey(hashlib.sha256(b"vnqr-test-vectors:" + label.encode()).digest())


# Four issuers: two active, one revoked, one whose key window closed ten days ago. ``stranger`` is not listed.
ACTIVE = seeded_key("issuer-active")
SECOND = seeded_key("issuer-second")
REVOKED = seeded_key("issuer-revoked")
RETIRED = seeded_key("issuer-retired")
STRANGER = seeded_key("issuer-not-in-trust-list")
PERSON_SECRET = hashlib.sha256(b"vnqr-test-vectors:person-secret").digest()
REVOKED_QID = "PCCREVOKED0001"


def trusted(key: SigningKey, issuer: str, valid_from: int, valid_until: int, revoked: bool = False) -> TrustedKey:
    public = bytes(key.verify_key)
    return TrustedKey(
        kid=hashlib.sha256(public).digest()[:8],
        issuer=issuer,
        public_key=public,
        valid_from=valid_from,
        valid_until=valid_until,
        revoked=revoked,
    )


def trust_list() -> TrustList:
    return TrustList.build(
        [
            trusted(ACTIVE, "platform-active", NOW - 400 * DAY, NOW + 700 * DAY),
            trusted(SECOND, "platform-second", NOW - 30 * DAY, NOW + 700 * DAY),
            trusted(REVOKED, "platform-revoked", NOW - 400 * DAY, NOW + 700 * DAY, revoked=True),
            trusted(RETIRED, "platform-retired", NOW - 400 * DAY, NOW - 10 * DAY),
        ],
        [REVOKED_QID],
    )


AN = Person("******012345", "NGUYEN VAN AN", "1990-01-**", "PCC7F3A9D2E1B4")
LINH = Person("******678901", LONGEST_NAME, "2001-11-23", "PCCLONGNAME0042")
BINH = Person("079090012345", "TRAN THI BINH", "1985-**-**", "Q-binh_2026", id_type="1")
REVOKED_PERSON = Person("******555555", "LE VAN CUONG", "1970-05-05", REVOKED_QID)
# Issue 12: a stranger whose code prints the same masked number as AN's, and a hand-made unsigned code that
# names AN's QR id with a third person's number.
AN_LOOKALIKE = Person("******012345", "PHAM THI MAI", "1992-**-**", "PCCOTHERPERSON7")
AN_HANDMADE = f"******444004|X|2000-01-01|0|{AN.qr_id}|"


def signed(person: Person, key: SigningKey = ACTIVE, *, iat: int = NOW - DAY, exp: int = NOW + 364 * DAY) -> str:
    return mint(person, key, iat=iat, exp=exp)


def forged_block(person: Person, kid: str, iat: str, exp: str, sig: str) -> str:
    """A signed-looking code built by hand, for the malformed cases ``mint`` rightly refuses to produce."""
    return f"{person.fields()}|VS1.{kid}.{iat}.{exp}.{sig}"


def replace_at(text: str, index: int, char: str) -> str:
    assert text[index] != char
    return text[:index] + char + text[index + 1 :]


def vector_inputs() -> list[tuple[str, str, Verdict, Reason, CodeKind]]:
    """(name, code, expected verdict, reason, kind), in a stable order."""
    ok_an = signed(AN)
    kid = key_id_text(bytes(ACTIVE.verify_key))
    good_sig = ok_an.rsplit(".", 1)[1]
    # A non-canonical spelling of the same signature: the last character carries 2 unused low bits.
    last = good_sig[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    noncanon_sig = good_sig[:-1] + alphabet[alphabet.index(last) | 1]
    noncanon_kid = kid[:-1] + alphabet[alphabet.index(kid[-1]) | 1]
    ts = (str(NOW - DAY), str(NOW + DAY))
    legacy = f"{AN.fields()}|"
    S, U, C, X = CodeKind.SIGNED, CodeKind.UNSIGNED, CodeKind.ID_CARD, CodeKind.UNKNOWN
    V, R, M = Verdict, Reason, Verdict.MALFORMED
    name_start = ok_an.index("NGUYEN VAN AN")
    binh_name = signed(BINH).index("TRAN THI BINH")
    sig_start = len(ok_an) - 86
    ok_exp_tampered = ok_an.replace(f".{NOW + 364 * DAY}.", f".{NOW + 3640 * DAY}.")
    cards = "079090012345|123456789|Nguyễn Văn An|01011990|Nam|Số 1 Lê Lợi, Phường Bến Nghé, Quận 1, TP.HCM|15062021"
    return [
        # -- genuine and accepted
        ("ok", ok_an, V.OK, R.NONE, S),
        ("ok_longest_realistic_name", signed(LINH), V.OK, R.NONE, S),
        ("ok_unmasked_doc_masked_birth_date_type_1", signed(BINH), V.OK, R.NONE, S),
        ("ok_second_issuer", signed(AN, SECOND), V.OK, R.NONE, S),
        ("ok_iat_within_skew", signed(AN, iat=NOW + SKEW, exp=NOW + DAY), V.OK, R.NONE, S),
        ("ok_one_second_before_exp", signed(AN, iat=NOW - DAY, exp=NOW + 1), V.OK, R.NONE, S),
        ("ok_retired_key_code_issued_in_window", signed(AN, RETIRED, iat=NOW - 50 * DAY), V.OK, R.NONE, S),
        ("ok_iat_equals_key_valid_until", signed(AN, RETIRED, iat=NOW - 10 * DAY), V.OK, R.NONE, S),
        ("ok_iat_equals_key_valid_from", signed(AN, SECOND, iat=NOW - 30 * DAY), V.OK, R.NONE, S),
        # -- genuine format, wrong signature
        ("bad_signature_name_byte_flipped", replace_at(ok_an, name_start + 12, "M"), V.BAD_SIGNATURE, R.NONE, S),
        (
            "bad_signature_sig_byte_flipped",
            replace_at(ok_an, sig_start + 10, "A" if ok_an[sig_start + 10] != "A" else "B"),
            V.BAD_SIGNATURE,
            R.NONE,
            S,
        ),
        ("bad_signature_exp_extended", ok_exp_tampered, V.BAD_SIGNATURE, R.NONE, S),
        ("bad_signature_qid_changed", ok_an.replace("PCC7F3A9D2E1B4", "PCC7F3A9D2E1B5"), V.BAD_SIGNATURE, R.NONE, S),
        (
            "bad_signature_checked_before_expiry",
            replace_at(signed(AN, iat=NOW - 400 * DAY, exp=NOW - DAY), name_start, "M"),
            V.BAD_SIGNATURE,
            R.NONE,
            S,
        ),
        (
            "bad_signature_other_key_same_kid",
            forged_block(
                AN, kid, *ts, b64url_encode(STRANGER.sign(DOMAIN + forged_block(AN, kid, *ts, "").encode()).signature)
            ),
            V.BAD_SIGNATURE,
            R.NONE,
            S,
        ),
        # -- key and code status
        ("unknown_key", signed(AN, STRANGER), V.UNKNOWN_KEY, R.NONE, S),
        ("revoked_key", signed(AN, REVOKED), V.REVOKED_KEY, R.NONE, S),
        (
            "revoked_key_wins_over_bad_signature",
            replace_at(signed(AN, REVOKED), name_start, "M"),
            V.REVOKED_KEY,
            R.NONE,
            S,
        ),
        ("revoked_code", signed(REVOKED_PERSON), V.REVOKED_CODE, R.NONE, S),
        (
            "revoked_code_wins_over_expiry",
            signed(REVOKED_PERSON, iat=NOW - 400 * DAY, exp=NOW - DAY),
            V.REVOKED_CODE,
            R.NONE,
            S,
        ),
        # -- time
        ("expired", signed(AN, iat=NOW - 366 * DAY, exp=NOW - 1), V.EXPIRED, R.NONE, S),
        ("expired_exactly_at_exp", signed(AN, iat=NOW - DAY, exp=NOW), V.EXPIRED, R.NONE, S),
        ("not_yet_valid", signed(AN, iat=NOW + SKEW + 1, exp=NOW + 365 * DAY), V.NOT_YET_VALID, R.NONE, S),
        ("key_window_issued_after_key_retired", signed(AN, RETIRED, iat=NOW - 5 * DAY), V.EXPIRED, R.KEY_WINDOW, S),
        (
            "key_window_issued_before_key_valid",
            signed(AN, SECOND, iat=NOW - 31 * DAY),
            V.NOT_YET_VALID,
            R.KEY_WINDOW,
            S,
        ),
        # -- codes that are never trusted
        ("unsigned_legacy_empty_ext", legacy, V.UNSIGNED_CODE, R.NONE, U),
        ("unsigned_legacy_with_ext", f"{AN.fields()}|lang=vi;v=2", V.UNSIGNED_CODE, R.NONE, U),
        ("unsigned_legacy_ext_128_bytes", legacy + "x" * 128, V.UNSIGNED_CODE, R.NONE, U),
        ("unsigned_vs2_is_not_a_signed_block", f"{AN.fields()}|VS2.{kid}.1.2.{good_sig}", V.UNSIGNED_CODE, R.NONE, U),
        ("id_card_7_fields", cards, V.ID_CARD, R.NONE, C),
        (
            "id_card_7_fields_no_old_number",
            "001203004567||NGUYEN THI HOA|29022000|Nữ|Hà Nội|01012022",
            V.ID_CARD,
            R.NONE,
            C,
        ),
        ("id_card_6_fields", "001203004567|NGUYEN THI HOA|29022000|Nu|Ha Noi|01012022", V.ID_CARD, R.NONE, C),
        # -- malformed: every reason at least once
        ("malformed_empty", "", M, R.EMPTY, X),
        ("malformed_too_long", "A" * 513, M, R.TOO_LONG, X),
        ("malformed_control_char_newline", ok_an + "\n", M, R.CONTROL_CHAR, X),
        ("malformed_control_char_del", legacy + "\x7f", M, R.CONTROL_CHAR, X),
        ("malformed_field_count_1", "https://example.vn/qr?id=1", M, R.FIELD_COUNT, X),
        ("malformed_field_count_5", AN.fields(), M, R.FIELD_COUNT, X),
        ("malformed_field_count_8", cards + "|x", M, R.FIELD_COUNT, X),
        ("malformed_doc_number_short", "12345|NGUYEN VAN AN|1990-01-01|0|PCC1|", M, R.DOC_NUMBER, U),
        ("malformed_doc_number_lowercase", "abc012345|NGUYEN VAN AN|1990-01-01|0|PCC1|", M, R.DOC_NUMBER, U),
        ("malformed_name_lowercase", ok_an.replace("NGUYEN VAN AN", "Nguyen Van An"), M, R.NAME, S),
        ("malformed_name_diacritics", ok_an.replace("NGUYEN VAN AN", "NGUYỄN VĂN AN"), M, R.NAME, S),
        ("malformed_name_trailing_space", "******012345|NGUYEN VAN AN |1990-01-01|0|PCC1|", M, R.NAME, U),
        ("malformed_name_empty", "******012345||1990-01-01|0|PCC1|", M, R.NAME, U),
        ("malformed_birth_date_month_13", "******012345|NGUYEN VAN AN|1990-13-01|0|PCC1|", M, R.BIRTH_DATE, U),
        ("malformed_birth_date_card_style", "******012345|NGUYEN VAN AN|01011990|0|PCC1|", M, R.BIRTH_DATE, U),
        ("malformed_qr_id_empty", "******012345|NGUYEN VAN AN|1990-01-01|0||", M, R.QR_ID, U),
        ("malformed_qr_id_bad_char", "******012345|NGUYEN VAN AN|1990-01-01|0|PCC.1|", M, R.QR_ID, U),
        ("malformed_ext_129_bytes", legacy + "x" * 129, M, R.EXT, U),
        ("malformed_signed_block_4_parts", f"{legacy}VS1.{kid}.{ts[0]}.{ts[1]}", M, R.SIGNED_BLOCK, S),
        ("malformed_signed_block_6_parts", f"{legacy}VS1.{kid}.{ts[0]}.{ts[1]}.{good_sig}.", M, R.SIGNED_BLOCK, S),
        ("malformed_key_id_short", forged_block(AN, kid[:-1], *ts, good_sig), M, R.KEY_ID, S),
        ("malformed_key_id_non_canonical", forged_block(AN, noncanon_kid, *ts, good_sig), M, R.KEY_ID, S),
        ("malformed_timestamp_leading_zero", forged_block(AN, kid, "0" + ts[0], ts[1], good_sig), M, R.TIMESTAMP, S),
        ("malformed_timestamp_12_digits", forged_block(AN, kid, ts[0], "100000000000", good_sig), M, R.TIMESTAMP, S),
        ("malformed_timestamp_empty", forged_block(AN, kid, "", ts[1], good_sig), M, R.TIMESTAMP, S),
        ("malformed_timestamp_negative", forged_block(AN, kid, "-1", ts[1], good_sig), M, R.TIMESTAMP, S),
        ("malformed_validity_exp_equals_iat", forged_block(AN, kid, ts[0], ts[0], good_sig), M, R.VALIDITY, S),
        ("malformed_validity_exp_before_iat", forged_block(AN, kid, ts[1], ts[0], good_sig), M, R.VALIDITY, S),
        ("malformed_signature_85_chars", ok_an[:-1], M, R.SIGNATURE_ENCODING, S),
        ("malformed_signature_non_canonical", ok_an[:-1] + noncanon_sig[-1], M, R.SIGNATURE_ENCODING, S),
        ("malformed_signature_std_base64_char", replace_at(ok_an, sig_start + 5, "+"), M, R.SIGNATURE_ENCODING, S),
        ("malformed_signature_padded", ok_an + "==", M, R.SIGNATURE_ENCODING, S),
        ("malformed_type_2_read_as_card", "******012345|NGUYEN VAN AN|1990-01-01|2|PCC1|", M, R.ID_NUMBER, C),
        ("malformed_id_number_11_digits", "07909001234|NGUYEN THI HOA|29022000|Nu|Ha Noi|01012022", M, R.ID_NUMBER, C),
        (
            "malformed_old_id_number_8_digits",
            "001203004567|12345678|NGUYEN THI HOA|29022000|Nu|Ha Noi|01012022",
            M,
            R.OLD_ID_NUMBER,
            C,
        ),
        ("malformed_card_name_empty", "001203004567||29022000|Nu|Ha Noi|01012022", M, R.CARD_NAME, C),
        ("malformed_card_name_121_bytes", f"001203004567|{'N' * 121}|29022000|Nu|Ha Noi|01012022", M, R.CARD_NAME, C),
        (
            "malformed_card_birth_date_day_32",
            "001203004567|NGUYEN THI HOA|32012000|Nu|Ha Noi|01012022",
            M,
            R.CARD_BIRTH_DATE,
            C,
        ),
        (
            "malformed_card_birth_date_iso",
            "001203004567|NGUYEN THI HOA|2000-01-29|Nu|Ha Noi|01012022",
            M,
            R.CARD_BIRTH_DATE,
            C,
        ),
        ("malformed_gender_empty", "001203004567|NGUYEN THI HOA|29022000||Ha Noi|01012022", M, R.GENDER, C),
        (
            "malformed_gender_17_bytes",
            f"001203004567|NGUYEN THI HOA|29022000|{'g' * 17}|Ha Noi|01012022",
            M,
            R.GENDER,
            C,
        ),
        ("malformed_address_empty", "001203004567|NGUYEN THI HOA|29022000|Nu||01012022", M, R.ADDRESS, C),
        (
            "malformed_address_301_bytes",
            f"001203004567|NGUYEN THI HOA|29022000|Nu|{'a' * 301}|01012022",
            M,
            R.ADDRESS,
            C,
        ),
        # -- identity (docs/payload.md section 5; IDENTITY_RELATIONS says what must equal what)
        ("identity_same_masked_number_other_person", signed(AN_LOOKALIKE), V.OK, R.NONE, S),
        ("identity_same_person_reissued", signed(AN, iat=NOW - 2 * DAY, exp=NOW + 100 * DAY), V.OK, R.NONE, S),
        ("identity_unsigned_names_signed_qid", AN_HANDMADE, V.UNSIGNED_CODE, R.NONE, U),
        ("identity_unsigned_masked_number", f"{AN_LOOKALIKE.fields()}|", V.UNSIGNED_CODE, R.NONE, U),
        ("identity_unsigned_complete_number", f"{BINH.fields()}|", V.UNSIGNED_CODE, R.NONE, U),
        (
            "identity_card_of_complete_number",
            f"{BINH.doc_number}||TRAN THI BINH|01011985|Nu|Ha Noi|01012020",
            V.ID_CARD,
            R.NONE,
            C,
        ),
        ("link_expired_complete_number", signed(BINH, iat=NOW - 366 * DAY, exp=NOW - 1), V.EXPIRED, R.NONE, S),
        ("link_none_bad_signature", replace_at(signed(BINH), binh_name, "M"), V.BAD_SIGNATURE, R.NONE, S),
        ("link_none_unknown_key", signed(BINH, STRANGER), V.UNKNOWN_KEY, R.NONE, S),
        ("link_none_revoked_key", signed(BINH, REVOKED), V.REVOKED_KEY, R.NONE, S),
        ("link_none_key_window", signed(BINH, RETIRED, iat=NOW - 5 * DAY), V.EXPIRED, R.KEY_WINDOW, S),
        (
            "link_none_not_yet_valid",
            signed(BINH, iat=NOW + SKEW + 1, exp=NOW + 365 * DAY),
            V.NOT_YET_VALID,
            R.NONE,
            S,
        ),
        ("link_other_issuer_same_number", signed(BINH, SECOND), V.OK, R.NONE, S),
        (
            "malformed_issue_date_month_13",
            "001203004567|NGUYEN THI HOA|29022000|Nu|Ha Noi|01132022",
            M,
            R.ISSUE_DATE,
            C,
        ),
    ]


# (vector, vector, rule, key): the identity rules of docs/payload.md section 5 as cases. "same"/"differ" compare
# that key of both; "link=person" means the first's link_key is the second's person_key (and not zeros).
IDENTITY_RELATIONS: list[tuple[str, str, str, str]] = [
    # one person's code, re-issued by the same issuer: one identity
    ("ok", "identity_same_person_reissued", "same", "person_key"),
    # same masked number, another person: never the same identity (issue 12, defect 1)
    ("ok", "identity_same_masked_number_other_person", "differ", "person_key"),
    # the same QID signed by another issuer, or claimed under an unknown key: not what this issuer vouched for
    ("ok", "ok_second_issuer", "differ", "person_key"),
    ("ok", "unknown_key", "differ", "person_key"),
    # a forged copy claims the genuine identity (its verdict keeps it out of trusted traces) but links nothing
    ("ok", "bad_signature_name_byte_flipped", "same", "person_key"),
    # an unsigned code naming a signed code's QID is an identity of its own (issue 12, defect 2)
    ("ok", "identity_unsigned_names_signed_qid", "differ", "person_key"),
    ("ok", "unsigned_legacy_empty_ext", "differ", "person_key"),
    ("unsigned_legacy_empty_ext", "identity_unsigned_names_signed_qid", "differ", "person_key"),
    ("unsigned_legacy_empty_ext", "identity_unsigned_masked_number", "differ", "person_key"),
    # a complete number printed in an unsigned code is not the document's identity
    ("identity_unsigned_complete_number", "identity_card_of_complete_number", "differ", "person_key"),
    ("ok_unmasked_doc_masked_birth_date_type_1", "identity_card_of_complete_number", "differ", "person_key"),
    # a genuine code printing the number whole links to that document's identity (the CCCD's), also when expired
    ("ok_unmasked_doc_masked_birth_date_type_1", "identity_card_of_complete_number", "link=person", "link_key"),
    ("link_expired_complete_number", "identity_card_of_complete_number", "link=person", "link_key"),
    ("link_other_issuer_same_number", "identity_card_of_complete_number", "link=person", "link_key"),
    ("ok_unmasked_doc_masked_birth_date_type_1", "link_other_issuer_same_number", "differ", "person_key"),
]
#: vectors that must carry no link: masked numbers, and codes not proven genuine and issued in their key's window
NO_LINK = [
    "ok",
    "identity_same_masked_number_other_person",
    "identity_unsigned_complete_number",
    "identity_card_of_complete_number",
    "link_none_bad_signature",
    "link_none_unknown_key",
    "link_none_revoked_key",
    "link_none_key_window",
    "link_none_not_yet_valid",
]


def check_relations(vectors: list[dict[str, Any]]) -> list[str]:
    """The identity relations that ``vectors`` break (empty: all hold)."""
    by = {v["name"]: v for v in vectors}
    zero = "0" * 32
    bad = []
    for a, b, rule, field in IDENTITY_RELATIONS:
        if rule == "same" and by[a][field] != by[b][field]:
            bad.append(f"{a} and {b} must share {field}")
        elif rule == "differ" and by[a][field] == by[b][field]:
            bad.append(f"{a} and {b} must not share {field}")
        elif rule == "link=person" and (by[a]["link_key"] == zero or by[a]["link_key"] != by[b]["person_key"]):
            bad.append(f"{a} must link to {b}'s identity")
    bad += [f"{name} must carry no link" for name in NO_LINK if by[name]["link_key"] != zero]
    return bad


def build() -> bytes:
    """The file's exact bytes; fails loudly if the reference verifier disagrees with a written expectation."""
    trust = trust_list()
    inputs = vector_inputs()
    names = [name for name, *_ in inputs]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate vector names")
    verifier = PyVerifier(trust.table(), PERSON_SECRET, skew=SKEW)
    batch = CodeBatch.from_codes([code.encode() for _, code, *_ in inputs])
    result = verifier.verify_batch(batch, NOW)
    vectors: list[dict[str, Any]] = []
    problems = []
    for i, (name, code, verdict, reason, kind) in enumerate(inputs):
        got = (Verdict(result.verdict[i]), Reason(result.reason[i]), CodeKind(result.kind[i]))
        if got != (verdict, reason, kind):
            problems.append(
                f"{name}: expected {verdict.label}/{reason.label}/{kind.label}, reference gives "
                f"{got[0].label}/{got[1].label}/{got[2].label}"
            )
        vectors.append(
            {
                "name": name,
                "code": code,
                "verdict": verdict.label,
                "reason": reason.label,
                "kind": kind.label,
                "qr_id": result.qr_id(batch.buf, i) if result.qid_end[i] > result.qid_start[i] else "",
                "kid": trust.table().kid_text(int(result.key_index[i])) if result.key_index[i] >= 0 else "",
                "iat": int(result.iat[i]),
                "exp": int(result.exp[i]),
                "person_key": bytes(result.person_key[i]).hex(),
                "link_key": bytes(result.link_key[i]).hex(),
            }
        )
    if problems:
        raise SystemExit("reference verifier disagrees with the written expectations:\n  " + "\n  ".join(problems))
    problems += check_relations(vectors)
    if problems:
        raise SystemExit("the reference verifier breaks the identity rules:\n  " + "\n  ".join(problems))
    missing = set(Reason) - {Reason[v["reason"].upper()] for v in vectors}
    if missing:
        raise SystemExit(f"no vector for reasons: {sorted(r.label for r in missing)}")
    doc = {
        "comment": "Generated by tests/vectors/make_vectors.py; do not edit by hand. See docs/payload.md.",
        "now": NOW,
        "skew": SKEW,
        "trust_list": orjson.loads(trust.to_json()),
        "person_secret_hex": PERSON_SECRET.hex(),
        "vectors": vectors,
        "identity_relations": [list(r) for r in IDENTITY_RELATIONS],
        "no_link": NO_LINK,
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def main(argv: list[str]) -> int:
    data = build()
    if "--check" in argv:
        same = OUT.exists() and OUT.read_bytes() == data
        print(f"{OUT}: {'up to date' if same else 'DIFFERS from the generator'}")
        return 0 if same else 1
    OUT.write_bytes(data)
    print(f"wrote {OUT} ({len(vector_inputs())} vectors)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
