"""The personal QR code: parsing (the reference for the compiled path) and minting of signed codes.

The rules are written down once, in ``docs/payload.md``; this module is their executable form and the
reference that ``ext/_verify.pyx`` must match byte for byte. It deliberately works on ``bytes`` and slices
with explicit loops rather than regular expressions: every check here has a one-to-one twin in the C loop,
which keeps the two implementations easy to compare rule by rule.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from nacl.signing import SigningKey

from engine.codes.verdicts import CodeKind, Reason
from engine.errors import MintError

DOMAIN = b"VNPQR-ED25519-V1\x00"
"""Domain-separation prefix of every signed message: a signature made for anything else never validates."""

MAX_CODE_BYTES = 512
SIGNED_PREFIX = b"VS1."
KID_BYTES = 8
KID_CHARS = 11
SIG_CHARS = 86
MAX_TIME_DIGITS = 11

_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_DIGITS = frozenset(b"0123456789")
_DOC_CHARS = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ*")
_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ ")
_QID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass(frozen=True, slots=True)
class ParsedCode:
    """What the parser learnt from one code; ``reason`` is ``Reason.NONE`` when it parsed cleanly.

    ``kind`` is known as soon as the field count tells personal code from ID card (a personal code whose
    sixth field starts with ``VS1.`` is ``SIGNED``), so a malformed signed code is still counted as an attempt
    at a signed code in the store.
    """

    kind: CodeKind
    reason: Reason = Reason.NONE
    doc_number: bytes = b""
    qid_start: int = 0
    qid_end: int = 0
    kid: bytes = b""
    iat: int = 0
    exp: int = 0
    signature: bytes = b""
    signed_len: int = 0

    @property
    def ok(self) -> bool:
        return self.reason is Reason.NONE

    def message(self, code: bytes) -> bytes:
        """The exact bytes the issuer signed (see docs/payload.md section 2)."""
        return DOMAIN + code[: self.signed_len]


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode_canonical(text: bytes, nbytes: int) -> bytes | None:
    """Decode unpadded base64url of exactly ``nbytes`` bytes, refusing any non-canonical spelling.

    Non-canonical encodings (unused low bits set) would let one signature have several spellings: a cache keyed
    by payload bytes would then see "new" codes that are the same code, and two parsers could disagree.
    """
    # translate() deleting the alphabet leaves whatever is not base64url, in C (a generator over the 86
    # characters of every device request signature showed in the event loop's profile)
    if len(text) != (nbytes * 8 + 5) // 6 or text.translate(None, _B64URL):
        return None
    raw = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    if len(raw) != nbytes or b64url_encode(raw).encode("ascii") != text:
        return None
    return raw


def key_id(public_key: bytes) -> bytes:
    """The 8-byte key id: a truncated SHA-256 of the public key, as the EU certificate scheme does."""
    return hashlib.sha256(public_key).digest()[:KID_BYTES]


def key_id_text(public_key: bytes) -> str:
    return b64url_encode(key_id(public_key))


def _is_ddmm(day: bytes, month: bytes) -> bool:
    return (
        len(day) == 2
        and len(month) == 2
        and all(c in _DIGITS for c in day + month)
        and 1 <= int(day) <= 31
        and 1 <= int(month) <= 12
    )


def _iso_birth_date_ok(f: bytes) -> bool:
    if len(f) != 10 or f[4:5] != b"-" or f[7:8] != b"-":
        return False
    if any(c not in _DIGITS for c in f[:4]):
        return False
    month, day = f[5:7], f[8:10]
    month_ok = month == b"**" or (all(c in _DIGITS for c in month) and 1 <= int(month) <= 12)
    day_ok = day == b"**" or (all(c in _DIGITS for c in day) and 1 <= int(day) <= 31)
    return month_ok and day_ok


def _card_date_ok(f: bytes) -> bool:
    return len(f) == 8 and all(c in _DIGITS for c in f) and _is_ddmm(f[0:2], f[2:4])


def _time_value(f: bytes) -> int | None:
    if not 1 <= len(f) <= MAX_TIME_DIGITS or any(c not in _DIGITS for c in f):
        return None
    if len(f) > 1 and f[0:1] == b"0":
        return None
    return int(f)


def parse(code: bytes) -> ParsedCode:
    """Parse one scanned code per docs/payload.md section 3; never raises."""
    if not code:
        return ParsedCode(CodeKind.UNKNOWN, Reason.EMPTY)
    if len(code) > MAX_CODE_BYTES:
        return ParsedCode(CodeKind.UNKNOWN, Reason.TOO_LONG)
    if any(c < 0x20 or c == 0x7F for c in code):
        return ParsedCode(CodeKind.UNKNOWN, Reason.CONTROL_CHAR)
    fields = code.split(b"|")
    if len(fields) == 6 and fields[3] in (b"0", b"1"):
        return _parse_personal(code, fields)
    if len(fields) in (6, 7):
        return _parse_card(fields)
    return ParsedCode(CodeKind.UNKNOWN, Reason.FIELD_COUNT)


def _parse_personal(code: bytes, fields: list[bytes]) -> ParsedCode:
    doc, name, dob, _type, qid, ext = fields
    kind = CodeKind.SIGNED if ext.startswith(SIGNED_PREFIX) else CodeKind.UNSIGNED
    if not 6 <= len(doc) <= 20 or any(c not in _DOC_CHARS for c in doc):
        return ParsedCode(kind, Reason.DOC_NUMBER)
    if not 1 <= len(name) <= 80 or any(c not in _NAME_CHARS for c in name) or name[:1] == b" " or name[-1:] == b" ":
        return ParsedCode(kind, Reason.NAME)
    if not _iso_birth_date_ok(dob):
        return ParsedCode(kind, Reason.BIRTH_DATE)
    if not 1 <= len(qid) <= 32 or any(c not in _QID_CHARS for c in qid):
        return ParsedCode(kind, Reason.QR_ID)
    qid_end = len(code) - len(ext) - 1
    qid_start = qid_end - len(qid)
    if kind is CodeKind.UNSIGNED:
        if len(ext) > 128:
            return ParsedCode(kind, Reason.EXT)
        return ParsedCode(kind, doc_number=doc, qid_start=qid_start, qid_end=qid_end)
    parts = ext.split(b".")
    if len(parts) != 5:
        return ParsedCode(kind, Reason.SIGNED_BLOCK)
    _version, kid_text, iat_text, exp_text, sig_text = parts
    kid = b64url_decode_canonical(kid_text, KID_BYTES)
    if kid is None:
        return ParsedCode(kind, Reason.KEY_ID)
    iat, exp = _time_value(iat_text), _time_value(exp_text)
    if iat is None or exp is None:
        return ParsedCode(kind, Reason.TIMESTAMP)
    if exp <= iat:
        return ParsedCode(kind, Reason.VALIDITY)
    signature = b64url_decode_canonical(sig_text, 64)
    if signature is None:
        return ParsedCode(kind, Reason.SIGNATURE_ENCODING)
    return ParsedCode(
        kind,
        doc_number=doc,
        qid_start=qid_start,
        qid_end=qid_end,
        kid=kid,
        iat=iat,
        exp=exp,
        signature=signature,
        signed_len=len(code) - SIG_CHARS,
    )


def _parse_card(fields: list[bytes]) -> ParsedCode:
    kind = CodeKind.ID_CARD
    if len(fields) == 7:
        number, old_number, name, dob, gender, address, issued = fields
        if old_number and (len(old_number) != 9 or any(c not in _DIGITS for c in old_number)):
            return ParsedCode(kind, Reason.OLD_ID_NUMBER)
    else:
        number, name, dob, gender, address, issued = fields
    if len(number) != 12 or any(c not in _DIGITS for c in number):
        return ParsedCode(kind, Reason.ID_NUMBER)
    if not 1 <= len(name) <= 120:
        return ParsedCode(kind, Reason.CARD_NAME)
    if not _card_date_ok(dob):
        return ParsedCode(kind, Reason.CARD_BIRTH_DATE)
    if not 1 <= len(gender) <= 16:
        return ParsedCode(kind, Reason.GENDER)
    if not 1 <= len(address) <= 300:
        return ParsedCode(kind, Reason.ADDRESS)
    if not _card_date_ok(issued):
        return ParsedCode(kind, Reason.ISSUE_DATE)
    return ParsedCode(kind, doc_number=number)


@dataclass(frozen=True, slots=True)
class Person:
    """The identity printed in a personal code; only ``doc_number`` and ``qr_id`` survive into the store."""

    doc_number: str
    name: str
    birth_date: str
    qr_id: str
    id_type: str = "0"

    def fields(self) -> str:
        return f"{self.doc_number}|{self.name}|{self.birth_date}|{self.id_type}|{self.qr_id}"


def mint(person: Person, signing_key: SigningKey, *, iat: int, exp: int) -> str:
    """Issue a signed code: the platform side of the format, used by the CLI, tests and load generators.

    It parses its own output before returning, so a platform can never hand out a code our verifier would
    call malformed.
    """
    kid = key_id_text(bytes(signing_key.verify_key))
    head = f"{person.fields()}|VS1.{kid}.{iat}.{exp}.".encode()
    signature = signing_key.sign(DOMAIN + head).signature
    code = head + b64url_encode(signature).encode("ascii")
    parsed = parse(code)
    if not parsed.ok:
        raise MintError(f"minted code does not parse ({parsed.reason.label}): check the person fields")
    return code.decode("ascii")
