"""The verification contract both implementations obey to the byte (docs/payload.md section 4).

``verify_batch(batch, now)`` takes codes packed into one buffer (:class:`CodeBatch`) and returns, for every code,
a verdict, a reason, the code kind, the trust-table index of the signing key, ``iat``/``exp``, the span of the QR
id inside the batch buffer, the 16-byte person key (the tracing identity of docs/payload.md section 5) and the
16-byte link key (the complete document number a genuine code vouches for, or zeros) (:class:`BatchResult`,
numpy columns). The compiled
``engine._verify.CVerifier`` imports these types from here, so there is one definition of the result.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from engine.codes.trust import TrustTable

PERSON_KEY_BYTES = 16
PERSON_KEY_PREFIX = b"pk1:"
#: Identity labels (docs/payload.md section 5): the HMAC input of a person key starts with one of these, so
#: identities of different kinds can never be equal (a CCCD's is ``PERSON_KEY_PREFIX`` + its ID number).
IDENTITY_ISSUER = b"id1:iss:"  # signed code, key in the trust list: issuer tag (16 bytes) + QID
IDENTITY_CLAIMED_KEY = b"id1:kid:"  # signed code, key not in the trust list: claimed kid (8 bytes) + QID
IDENTITY_UNSIGNED = b"id1:uns:"  # unsigned personal code: document number as printed + "|" + QID
ISSUER_TAG_BYTES = 16
#: A verified-code set entry's tag: BLAKE2b-128 keyed with the deployment's set key, over the exact code bytes
#: (the 64-byte signature included, so the tag of a forged code is unrelated to the genuine one's).
TAG_BYTES = 16
SET_KEY_LABEL = b"vnqr verified-code set v1"
ROW_MAC_PREFIX = b"vcs1"


class CodeBatch(NamedTuple):
    """Codes packed into one buffer: what the compiled loop walks without creating Python objects."""

    buf: bytes
    offsets: np.ndarray  # int64, n + 1

    @classmethod
    def from_codes(cls, codes: Sequence[bytes]) -> CodeBatch:
        offsets = np.zeros(len(codes) + 1, dtype=np.int64)
        if codes:
            np.cumsum([len(c) for c in codes], out=offsets[1:])
        return cls(b"".join(codes), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def code(self, i: int) -> bytes:
        return self.buf[self.offsets[i] : self.offsets[i + 1]]


@dataclass
class BatchResult:
    verdict: np.ndarray
    reason: np.ndarray
    kind: np.ndarray
    key_index: np.ndarray
    iat: np.ndarray
    exp: np.ndarray
    qid_start: np.ndarray
    qid_end: np.ndarray
    #: the tracing identity (docs/payload.md section 5); zeros for malformed codes
    person_key: np.ndarray
    #: ``person_key(secret, document number)`` when a genuine code (verdict ok, or expired without key_window)
    #: prints its document number complete: the link between its identity and that document's; zeros otherwise
    link_key: np.ndarray
    cache_hit: np.ndarray
    #: the code's verified-code set tag (codes that reached the signature step; zeros for the others)
    set_tag: np.ndarray
    #: signature verified in this batch and added to the set: what the node publishes to the deployment
    newly_verified: np.ndarray

    @classmethod
    def empty(cls, n: int) -> BatchResult:
        return cls(
            verdict=np.zeros(n, np.uint8),
            reason=np.zeros(n, np.uint8),
            kind=np.zeros(n, np.uint8),
            key_index=np.full(n, -1, np.int32),
            iat=np.zeros(n, np.int64),
            exp=np.zeros(n, np.int64),
            qid_start=np.zeros(n, np.int32),
            qid_end=np.zeros(n, np.int32),
            person_key=np.zeros((n, PERSON_KEY_BYTES), np.uint8),
            link_key=np.zeros((n, PERSON_KEY_BYTES), np.uint8),
            cache_hit=np.zeros(n, np.bool_),
            set_tag=np.zeros((n, TAG_BYTES), np.uint8),
            newly_verified=np.zeros(n, np.bool_),
        )

    def __len__(self) -> int:
        return len(self.verdict)

    def qr_id(self, buf: bytes, i: int) -> str:
        return buf[self.qid_start[i] : self.qid_end[i]].decode("ascii")


def person_key(secret: bytes, doc_number: bytes) -> bytes:
    """Keyed hash of a document number: a CCCD's identity, and the link key of a genuine code printing it whole.

    Never the identity of a personal code: its number is usually masked (``******777001``), and a masked
    number is shared by about a hundred strangers (docs/payload.md section 5).
    """
    return identity_key(secret, PERSON_KEY_PREFIX + doc_number)


def identity_key(secret: bytes, label: bytes) -> bytes:
    """The first 16 bytes of HMAC-SHA256(secret, label): every identity and link, keyed by the deployment."""
    return hmac.new(secret, label, hashlib.sha256).digest()[:PERSON_KEY_BYTES]


def issuer_tag(issuer: str) -> bytes:
    """A fixed-size stand-in for an issuer's name inside an identity label (SHA-256, first 16 bytes).

    Fixed size keeps the label unambiguous whatever the name holds, and lets the compiled path copy it.
    """
    return hashlib.sha256(issuer.encode("utf-8")).digest()[:ISSUER_TAG_BYTES]


def complete(doc_number: bytes) -> bool:
    """A document number with no mask character: the only kind that may link codes."""
    return b"*" not in doc_number


def set_key(secret: bytes) -> bytes:
    """The 32-byte key of the verified-code set, derived from the deployment's person-key secret.

    Every node of one deployment holds the same secret, so they compute the same tags and can share the set
    through the store; whoever can write to the store without the secret cannot make a tag for a code.
    """
    return hmac.new(secret, SET_KEY_LABEL, hashlib.sha256).digest()


def code_tag(key: bytes, code: bytes) -> bytes:
    """The set tag of one exact code: keyed BLAKE2b-128 (128-bit second-preimage resistance, not invertible
    from a list of document numbers because it covers the signature and needs the key)."""
    return hashlib.blake2b(code, digest_size=TAG_BYTES, key=key).digest()


def row_mac(key: bytes, tag: bytes, kid: bytes, exp: int) -> bytes:
    """The MAC a published set row carries: a node refuses rows whose MAC it cannot reproduce."""
    return hashlib.blake2b(
        ROW_MAC_PREFIX + tag + kid + max(0, exp).to_bytes(8, "big"), digest_size=TAG_BYTES, key=key
    ).digest()


class Verifier(Protocol):
    threads: int

    def set_trust(self, trust: TrustTable) -> None: ...
    def verify_batch(self, batch: CodeBatch, now: int) -> BatchResult: ...
    def load_set(self, tags: bytes, kids: bytes, exps: np.ndarray, macs: bytes, now: int) -> tuple[int, int]:
        """Add published entries (16-byte tags, 8-byte kids, exp seconds, 16-byte row MACs) to the set:
        returns (added, refused); rows with a wrong MAC are refused, expired ones skipped."""
        ...

    @property
    def cache_hits(self) -> int: ...
    @property
    def cache_lookups(self) -> int: ...
    @property
    def set_size(self) -> int: ...
    @property
    def set_evictions(self) -> int: ...
    @property
    def set_refused(self) -> int: ...
