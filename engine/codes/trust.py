"""The trust list: which issuing platforms' keys may sign personal codes, and what has been revoked.

It is a JSON file that operators edit (or generate with ``python -m engine keys``) and the engine reloads
without a restart. Everything that could make a verifier accept a forgery is refused at load time, not at
scan time: a key id that does not match its key, a public key that is not a canonical point of the curve's
prime-order subgroup (small-order keys let one signature verify for many messages), duplicate key ids, empty
validity windows. A bad file raises :class:`TrustListError` and the engine keeps the list it had.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from nacl.bindings import crypto_core_ed25519_is_valid_point

from engine.clock import iso_utc, parse_iso
from engine.codes.payload import KID_BYTES, b64url_decode_canonical, b64url_encode, key_id
from engine.durable import replace_file
from engine.errors import TrustListError

FORMAT_VERSION = 1
_QID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass(frozen=True)
class TrustedKey:
    kid: bytes
    issuer: str
    public_key: bytes
    valid_from: int
    valid_until: int
    revoked: bool = False

    @property
    def kid_text(self) -> str:
        return b64url_encode(self.kid)


@dataclass(frozen=True)
class TrustTable:
    """The compiled-friendly snapshot both verifiers consume: flat bytes and numpy arrays, sorted by kid.

    Sorting by kid lets the C loop binary-search without building any structure of its own.
    """

    kids: bytes
    public_keys: bytes
    valid_from: np.ndarray
    valid_until: np.ndarray
    revoked: np.ndarray
    revoked_qids: tuple[bytes, ...]
    issuers: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.issuers)

    def kid_text(self, index: int) -> str:
        return b64url_encode(self.kids[index * KID_BYTES : (index + 1) * KID_BYTES])


def _time(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise TrustListError(f"{what}: expected an ISO-8601 time or Unix seconds")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(parse_iso(value).timestamp())
        except ValueError as exc:
            raise TrustListError(f"{what}: {exc}") from None
    raise TrustListError(f"{what}: expected an ISO-8601 time or Unix seconds")


def check_public_key(public_key: bytes, what: str = "public key") -> None:
    """Refuse keys that are the wrong length, non-canonical, off the curve or of small order."""
    if len(public_key) != 32:
        raise TrustListError(f"{what}: must be 32 bytes, got {len(public_key)}")
    if not crypto_core_ed25519_is_valid_point(public_key):
        raise TrustListError(f"{what}: not a valid Ed25519 public key (small order, off curve or non-canonical)")


@dataclass(frozen=True)
class TrustList:
    keys: tuple[TrustedKey, ...] = ()
    revoked_codes: frozenset[str] = field(default_factory=frozenset)

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, raw: bytes, source: str = "trust list") -> TrustList:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise TrustListError(f"{source}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            raise TrustListError(f'{source}: expected an object with "version": {FORMAT_VERSION}')
        entries = doc.get("keys", [])
        if not isinstance(entries, list):
            raise TrustListError(f'{source}: "keys" must be a list')
        keys = [cls._key_from_entry(e, f"{source} key #{i}") for i, e in enumerate(entries)]
        revoked = doc.get("revoked_codes", [])
        if not isinstance(revoked, list) or not all(isinstance(q, str) for q in revoked):
            raise TrustListError(f'{source}: "revoked_codes" must be a list of QR ids')
        return cls.build(keys, revoked)

    @staticmethod
    def _key_from_entry(entry: Any, what: str) -> TrustedKey:
        if not isinstance(entry, dict):
            raise TrustListError(f"{what}: must be an object")
        try:
            kid_text, issuer, pk_text = entry["kid"], entry["issuer"], entry["public_key"]
            valid_from = _time(entry["valid_from"], f"{what} valid_from")
            valid_until = _time(entry["valid_until"], f"{what} valid_until")
        except KeyError as exc:
            raise TrustListError(f"{what}: missing {exc.args[0]!r}") from None
        if not isinstance(issuer, str) or not issuer:
            raise TrustListError(f"{what}: issuer must be a non-empty string")
        if not isinstance(kid_text, str) or not isinstance(pk_text, str):
            raise TrustListError(f"{what}: kid and public_key must be base64url strings")
        public_key = b64url_decode_canonical(pk_text.encode(), 32)
        if public_key is None:
            raise TrustListError(f"{what}: public_key is not 32 bytes of canonical base64url")
        return TrustedKey(
            kid=b64url_decode_canonical(kid_text.encode(), KID_BYTES) or b"",
            issuer=issuer,
            public_key=public_key,
            valid_from=valid_from,
            valid_until=valid_until,
            revoked=bool(entry.get("revoked", False)),
        )

    @classmethod
    def build(cls, keys: Iterable[TrustedKey], revoked_codes: Iterable[str] = ()) -> TrustList:
        """Validate and assemble; every rule that protects the verifier lives here."""
        seen: set[bytes] = set()
        checked = []
        for k in keys:
            what = f"key {k.kid_text or '?'} ({k.issuer})"
            check_public_key(k.public_key, what)
            if k.kid != key_id(k.public_key):
                raise TrustListError(f"{what}: kid does not match SHA-256 of the public key")
            if k.kid in seen:
                raise TrustListError(f"{what}: duplicate kid")
            if k.valid_until <= k.valid_from:
                raise TrustListError(f"{what}: valid_until must be after valid_from")
            seen.add(k.kid)
            checked.append(k)
        codes = frozenset(revoked_codes)
        for q in codes:
            if not 1 <= len(q) <= 32 or any(c not in _QID_CHARS for c in q):
                raise TrustListError(f"revoked code {q!r} is not a valid QR id")
        return cls(tuple(sorted(checked, key=lambda k: k.kid)), codes)

    @classmethod
    def load(cls, path: str | Path) -> TrustList:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise TrustListError(f"cannot read trust list {path}: {exc.strerror}") from None
        return cls.from_json(raw, str(path))

    # -- edits (return new lists: a loaded list is an immutable snapshot) ------------------------------------
    def with_key(self, key: TrustedKey) -> TrustList:
        return TrustList.build([*self.keys, key], self.revoked_codes)

    def with_key_revoked(self, kid_text: str) -> TrustList:
        target = self.key(kid_text)
        keys = [replace(k, revoked=True) if k.kid == target.kid else k for k in self.keys]
        return TrustList.build(keys, self.revoked_codes)

    def key(self, kid_text: str) -> TrustedKey:
        """The key with this id; never by position (the list is kept sorted by kid, not by age)."""
        for k in self.keys:
            if k.kid_text == kid_text:
                return k
        raise TrustListError(f"no key {kid_text} in the trust list (keys list shows the ids)")

    def with_key_retired(self, kid_text: str, at: int) -> TrustList:
        """End a key's issuing window at ``at``: codes it signed before keep verifying until their own expiry,
        codes it signs after are refused (``key_window``). The rotation step; revocation is for compromise."""
        old = self.key(kid_text)
        if old.revoked:
            raise TrustListError(f"key {kid_text} is revoked already: nothing it signed verifies")
        if at <= old.valid_from:
            raise TrustListError(f"key {kid_text} only becomes valid at {iso_utc(old.valid_from)}: revoke it instead")
        if at >= old.valid_until:
            raise TrustListError(f"key {kid_text}'s window already ends at {iso_utc(old.valid_until)}")
        keys = [replace(k, valid_until=at) if k.kid == old.kid else k for k in self.keys]
        return TrustList.build(keys, self.revoked_codes)

    def with_code_revoked(self, qr_id: str) -> TrustList:
        return TrustList.build(self.keys, self.revoked_codes | {qr_id})

    # -- output ---------------------------------------------------------------------------------------------
    def to_json(self) -> bytes:
        doc = {
            "version": FORMAT_VERSION,
            "keys": [
                {
                    "kid": k.kid_text,
                    "issuer": k.issuer,
                    "public_key": b64url_encode(k.public_key),
                    "valid_from": iso_utc(k.valid_from),
                    "valid_until": iso_utc(k.valid_until),
                    "revoked": k.revoked,
                }
                for k in self.keys
            ],
            "revoked_codes": sorted(self.revoked_codes),
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename) so a reloading engine never reads half a list."""
        replace_file(Path(path), self.to_json())

    def table(self) -> TrustTable:
        return TrustTable(
            kids=b"".join(k.kid for k in self.keys),
            public_keys=b"".join(k.public_key for k in self.keys),
            valid_from=np.array([k.valid_from for k in self.keys], dtype=np.int64),
            valid_until=np.array([k.valid_until for k in self.keys], dtype=np.int64),
            revoked=np.array([k.revoked for k in self.keys], dtype=np.uint8),
            revoked_qids=tuple(sorted(q.encode("ascii") for q in self.revoked_codes)),
            issuers=tuple(k.issuer for k in self.keys),
        )
