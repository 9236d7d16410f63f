"""Batch verification of scanned codes: the contract, the pure-Python reference, and the one switch.

Contract (docs/payload.md section 4): ``verify_batch(batch, now)`` returns, for every code in the batch, a
verdict, a reason, the code kind, the trust-table index of the signing key, ``iat``/``exp``, the span of the QR
id inside the batch buffer and the 16-byte person key. Both implementations obey it to the byte:

* :class:`PyVerifier` (here): one PyNaCl call per code. It is the reference the tests hold the compiled path
  to, and the fallback when the extension is not built.
* ``engine._verify.CVerifier`` (``ext/_verify.pyx``): parses the packed batch without Python objects, verifies
  cache misses across threads with the GIL released, and calls libsodium directly.

Which one runs is decided here and nowhere else (``VerifierImpl``); ``ENGINE_NO_EXTENSIONS=1`` forces the
reference, and ``python -m engine info`` reports the choice.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from engine.payload import KID_BYTES, parse
from engine.trust import TrustTable
from engine.verdicts import CodeKind, Reason, Verdict

PERSON_KEY_BYTES = 16
PERSON_KEY_PREFIX = b"pk1:"


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
    person_key: np.ndarray
    cache_hit: np.ndarray

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
            cache_hit=np.zeros(n, np.bool_),
        )

    def __len__(self) -> int:
        return len(self.verdict)

    def qr_id(self, buf: bytes, i: int) -> str:
        return buf[self.qid_start[i] : self.qid_end[i]].decode("ascii")


def person_key(secret: bytes, doc_number: bytes) -> bytes:
    """Keyed hash of the document number: links one person's scans without storing who they are."""
    return hmac.new(secret, PERSON_KEY_PREFIX + doc_number, hashlib.sha256).digest()[:PERSON_KEY_BYTES]


class Verifier(Protocol):
    threads: int

    def set_trust(self, trust: TrustTable) -> None: ...
    def verify_batch(self, batch: CodeBatch, now: int) -> BatchResult: ...
    @property
    def cache_hits(self) -> int: ...
    @property
    def cache_lookups(self) -> int: ...


class PyVerifier:
    """The reference: simple, one code at a time, and the definition of correct for the compiled path."""

    implementation = "python"

    def __init__(
        self,
        trust: TrustTable,
        person_secret: bytes,
        *,
        cache_size: int = 65536,
        threads: int = 1,
        skew: int = 300,
    ) -> None:
        self._secret = person_secret
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._hits = 0
        self._lookups = 0
        self.threads = threads  # accepted for interface parity; the reference runs on one thread
        self.skew = skew
        self.set_trust(trust)

    def set_trust(self, trust: TrustTable) -> None:
        n = len(trust)
        kids = [trust.kids[i * KID_BYTES : (i + 1) * KID_BYTES] for i in range(n)]
        self._trust = trust
        self._index = {kid: i for i, kid in enumerate(kids)}
        self._verify_keys = [VerifyKey(trust.public_keys[i * 32 : (i + 1) * 32]) for i in range(n)]
        self._revoked_qids = frozenset(trust.revoked_qids)

    @property
    def cache_hits(self) -> int:
        return self._hits

    @property
    def cache_lookups(self) -> int:
        return self._lookups

    def verify_batch(self, batch: CodeBatch, now: int) -> BatchResult:
        n = len(batch)
        out = BatchResult.empty(n)
        offsets = batch.offsets.tolist()
        for i in range(n):
            self._verify_one(batch.buf, offsets[i], offsets[i + 1], now, out, i)
        return out

    def _verify_one(self, buf: bytes, start: int, end: int, now: int, out: BatchResult, i: int) -> None:
        code = buf[start:end]
        p = parse(code)
        out.kind[i] = p.kind
        if not p.ok:
            out.verdict[i], out.reason[i] = Verdict.MALFORMED, p.reason
            return
        out.person_key[i] = np.frombuffer(person_key(self._secret, p.doc_number), np.uint8)
        if p.qid_end > p.qid_start:
            out.qid_start[i], out.qid_end[i] = start + p.qid_start, start + p.qid_end
        if p.kind is CodeKind.UNSIGNED:
            out.verdict[i] = Verdict.UNSIGNED_CODE
            return
        if p.kind is CodeKind.ID_CARD:
            out.verdict[i] = Verdict.ID_CARD
            return
        out.iat[i], out.exp[i] = p.iat, p.exp
        verdict, reason = self._judge_signed(code, p, out, i, now)
        out.verdict[i], out.reason[i] = verdict, reason

    def _judge_signed(self, code: bytes, p: Any, out: BatchResult, i: int, now: int) -> tuple[Verdict, Reason]:
        idx = self._index.get(p.kid, -1)
        out.key_index[i] = idx
        if idx < 0:
            return Verdict.UNKNOWN_KEY, Reason.NONE
        t = self._trust
        if t.revoked[idx]:
            return Verdict.REVOKED_KEY, Reason.NONE
        if not self._signature_ok(code, p, idx, out, i):
            return Verdict.BAD_SIGNATURE, Reason.NONE
        if code[p.qid_start : p.qid_end] in self._revoked_qids:
            return Verdict.REVOKED_CODE, Reason.NONE
        if p.iat < t.valid_from[idx]:
            return Verdict.NOT_YET_VALID, Reason.KEY_WINDOW
        if p.iat > t.valid_until[idx]:
            return Verdict.EXPIRED, Reason.KEY_WINDOW
        if now + self.skew < p.iat:
            return Verdict.NOT_YET_VALID, Reason.NONE
        if now >= p.exp:
            return Verdict.EXPIRED, Reason.NONE
        return Verdict.OK, Reason.NONE

    def _signature_ok(self, code: bytes, p: Any, idx: int, out: BatchResult, i: int) -> bool:
        self._lookups += 1
        if code in self._cache:
            self._cache.move_to_end(code)
            self._hits += 1
            out.cache_hit[i] = True
            return True
        try:
            self._verify_keys[idx].verify(p.message(code), p.signature)
        except BadSignatureError:
            return False
        if self._cache_size > 0:
            self._cache[code] = None
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return True


# -- the one switch ----------------------------------------------------------------------------------------
NO_EXTENSIONS = os.environ.get("ENGINE_NO_EXTENSIONS", "") not in ("", "0")

VerifierImpl: type
CVerifier: type | None
EXTENSION_ERROR: str | None
# libgomp reads this when the extension loads it. Between two batches its idle threads would otherwise spin,
# burning a core on a 2-core machine for nothing: the server's CPU per scan is the capacity figure, so sleep.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
try:
    from engine._verify import CVerifier as _CVerifier
except ImportError as _exc:  # not built: the reference is complete, only slower
    CVerifier, EXTENSION_ERROR = None, str(_exc)
else:
    CVerifier, EXTENSION_ERROR = _CVerifier, None

if CVerifier is not None and not NO_EXTENSIONS:
    VerifierImpl = CVerifier
    IMPLEMENTATION = "cython"
else:
    VerifierImpl = PyVerifier
    IMPLEMENTATION = "python"


def make_verifier(
    trust: TrustTable, person_secret: bytes, *, cache_size: int = 65536, threads: int = 1, skew: int = 300
) -> Verifier:
    """Build the active implementation (compiled unless unavailable or disabled)."""
    verifier: Verifier = VerifierImpl(trust, person_secret, cache_size=cache_size, threads=threads, skew=skew)
    return verifier
