"""Signed, versioned trust lists: what a deployment root key vouches for, and the checks a node makes.

With one node the trust list is a file the operator edits. With several, each node must run the *same* list, and
whoever can write to the store (where the nodes pick new versions up) must not be able to add an issuer key or roll
the list back to a version from before a key was revoked. So a deployment has one **root key** (Ed25519): ``trust
publish`` signs each new version with its private half, offline from the nodes, and every node holds only the
public half (``--trust-root-key``). A node accepts a list only when

* the document is well formed and its signature verifies under the root key (``bad_signature``);
* its version is above the one the node holds (``rollback``; the same version with another list is
  ``version_reused``);
* the list inside passes every rule of :meth:`engine.codes.trust.TrustList.from_json`.

The signed message is ``DOMAIN || version (8 bytes, big-endian) || published_at ms (8 bytes) || list bytes``: the
version and time are inside the signature, so neither can be edited without the root key. The document is JSON
(``{"format": ..., "version": N, "published_at": ISO, "root_kid": ..., "list": base64url(list JSON),
"signature": base64url}``), the list carried as the exact bytes that were signed.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from engine.clock import iso_utc
from engine.codes.payload import b64url_decode_canonical, b64url_encode, key_id
from engine.codes.trust import TrustList, check_public_key
from engine.errors import TrustListError

FORMAT = "vnqr-signed-trust-list-v1"
DOMAIN = b"VNQR-TRUST-LIST-V1\x00"
MAX_DOCUMENT_BYTES = 16 << 20


class TrustListRefused(TrustListError):
    """A signed trust list a node will not use; ``reason`` is the metric label (``engine_trust_list_refused``)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def signed_message(version: int, published_at_ms: int, list_bytes: bytes) -> bytes:
    return DOMAIN + version.to_bytes(8, "big") + published_at_ms.to_bytes(8, "big") + list_bytes


@dataclass(frozen=True)
class SignedTrustList:
    """One verified version: the list, its version and publication time, and the document as published."""

    version: int
    published_at_ms: int
    trust: TrustList
    document: bytes

    @property
    def published_at(self) -> float:
        return self.published_at_ms / 1000


def sign(trust: TrustList, root: SigningKey, version: int, published_at_ms: int | None = None) -> bytes:
    """The signed document for ``trust`` as ``version`` (what ``trust publish`` stores)."""
    if not 1 <= version < 1 << 63:
        raise TrustListError(f"a trust list version is an integer from 1, not {version}")
    at = int(time.time() * 1000) if published_at_ms is None else published_at_ms
    body = trust.to_json()
    doc = {
        "format": FORMAT,
        "version": version,
        "published_at": iso_utc(at / 1000),
        "published_at_ms": at,
        "root_kid": b64url_encode(key_id(bytes(root.verify_key))),
        "list": b64url_encode(body),
        "signature": b64url_encode(root.sign(signed_message(version, at, body)).signature),
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def is_signed(raw: bytes) -> bool:
    """Whether a file holds a signed document (else it is a plain list, as a single node uses)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def verify(raw: bytes, root_public_key: bytes, source: str = "signed trust list") -> SignedTrustList:
    """Check a signed document under the root key; raise :class:`TrustListRefused` saying what is wrong."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise TrustListRefused(f"{source}: larger than {MAX_DOCUMENT_BYTES} bytes", "malformed")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise TrustListRefused(f"{source}: not valid JSON ({exc})", "malformed") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TrustListRefused(
            f'{source}: not a signed trust list (expected "format": "{FORMAT}"; sign one with trust publish)',
            "unsigned",
        )
    version, at = doc.get("version"), doc.get("published_at_ms")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 1 << 63:
        raise TrustListRefused(f'{source}: "version" must be an integer from 1', "malformed")
    if not isinstance(at, int) or isinstance(at, bool) or not 0 <= at < 1 << 63:
        raise TrustListRefused(f'{source}: "published_at_ms" must be Unix milliseconds', "malformed")
    body_text, sig_text = doc.get("list"), doc.get("signature")
    body = _b64url_any(body_text) if isinstance(body_text, str) else None
    signature = b64url_decode_canonical(sig_text.encode(), 64) if isinstance(sig_text, str) else None
    if body is None or signature is None:
        raise TrustListRefused(f'{source}: "list" and "signature" must be canonical base64url', "malformed")
    try:
        VerifyKey(root_public_key).verify(signed_message(version, at, body), signature)
    except BadSignatureError:
        raise TrustListRefused(
            f"{source}: version {version} is not signed by this deployment's root key "
            f"({b64url_encode(key_id(root_public_key))}): refused, the list in use is kept",
            "bad_signature",
        ) from None
    trust = TrustList.from_json(body, f"{source} version {version}")
    return SignedTrustList(version, at, trust, raw)


def check_newer(candidate: SignedTrustList, current: SignedTrustList | None, source: str) -> None:
    """Refuse a version that is not above the one held (no rollback), or the held version with another list."""
    if current is None:
        return
    if candidate.version < current.version:
        raise TrustListRefused(
            f"{source}: version {candidate.version} is older than version {current.version} in use: a rollback, "
            "refused (publish a new version to undo a change)",
            "rollback",
        )
    if candidate.version == current.version and candidate.trust != current.trust:
        raise TrustListRefused(
            f"{source}: version {candidate.version} is in use with another list: a version is published once",
            "version_reused",
        )


def read_root_key(path: Path) -> bytes:
    """The root public key from its file: 43 characters of base64url (``trust root-key`` writes it)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TrustListError(f"cannot read the trust root key {path}: {exc}") from None
    key = b64url_decode_canonical(text.encode(), 32)
    if key is None:
        raise TrustListError(f"trust root key {path}: expected an Ed25519 public key, 43 characters of base64url")
    check_public_key(key, f"trust root key {path}")
    return key


def _b64url_any(text: str) -> bytes | None:
    """Unpadded base64url of any length, canonical spelling only (None otherwise)."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        return None
    return raw if b64url_encode(raw) == text else None


__all__ = [
    "FORMAT",
    "SignedTrustList",
    "TrustListRefused",
    "check_newer",
    "is_signed",
    "read_root_key",
    "sign",
    "verify",
]
