"""``PyVerifier``: the pure-Python reference verifier, one PyNaCl call per code.

It is the definition of correct the tests hold the compiled ``engine._verify.CVerifier`` to, and the fallback
when the extension is not built. Simple on purpose: one code at a time, the checks in the order of
docs/payload.md section 4, and the verified-code set (section 6): a code whose exact bytes verified once (here,
or on any node of the deployment, loaded with :meth:`PyVerifier.load_set`) skips only the signature; key and
code revocation, the key window and expiry are checked on every scan. The set is
:class:`engine.verify.verified_set.VerifiedSet`, the compiled table's twin slot for slot, and a batch uses it as
the compiled path does: every lookup sees the set as it was when the batch began, the batch's new entries go in
afterwards in batch order, and a repeat within the batch of a code it missed is a hit exactly when that code's
entry went in. So both verifiers agree on every hit, every eviction and the whole table, not only on verdicts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from engine.codes.payload import KID_BYTES, parse
from engine.codes.trust import TrustTable
from engine.codes.verdicts import CodeKind, Reason, Verdict
from engine.verify.contract import (
    IDENTITY_CLAIMED_KEY,
    IDENTITY_ISSUER,
    IDENTITY_UNSIGNED,
    BatchResult,
    CodeBatch,
    code_tag,
    complete,
    identity_key,
    issuer_tag,
    person_key,
    row_mac,
    set_key,
)
from engine.verify.verified_set import VerifiedSet


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
        self._set_key = set_key(person_secret)
        self._set = VerifiedSet(cache_size)
        # one batch's misses with a good signature, in order: (code index, tag, exp); its repeats of misses
        self._new: list[tuple[int, bytes, int]] = []
        self._missed: dict[bytes, bool] = {}  # tag of a miss in this batch -> its signature's result
        self._repeats: list[tuple[int, bytes]] = []
        self._refused = 0
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
        self._issuer_tags = [issuer_tag(name) for name in trust.issuers]

    @property
    def cache_hits(self) -> int:
        return self._hits

    @property
    def cache_lookups(self) -> int:
        return self._lookups

    @property
    def set_size(self) -> int:
        return self._set.count

    @property
    def set_evictions(self) -> int:
        return self._set.evictions

    @property
    def set_refused(self) -> int:
        return self._refused

    def load_set(self, tags: bytes, kids: bytes, exps: np.ndarray, macs: bytes, now: int) -> tuple[int, int]:
        n = len(exps)
        if len(tags) != 16 * n or len(kids) != 8 * n or len(macs) != 16 * n:
            raise ValueError("load_set: tags, kids and macs must hold 16, 8 and 16 bytes per entry")
        added = refused = 0
        for i, exp in enumerate(np.asarray(exps, np.int64).tolist()):
            tag = tags[16 * i : 16 * i + 16]
            if row_mac(self._set_key, tag, kids[8 * i : 8 * i + 8], exp) != macs[16 * i : 16 * i + 16]:
                refused += 1
            elif exp > now and self._set.insert(tag, exp, now):
                added += 1
        self._refused += refused
        return added, refused

    def set_table(self) -> bytes:
        """The set's slots, byte for byte as ``CVerifier.set_table`` gives the compiled ones (for the tests)."""
        return self._set.table()

    def verify_batch(self, batch: CodeBatch, now: int) -> BatchResult:
        n = len(batch)
        out = BatchResult.empty(n)
        offsets = batch.offsets.tolist()
        self._new, self._missed, self._repeats = [], {}, []
        for i in range(n):
            self._verify_one(batch.buf, offsets[i], offsets[i + 1], now, out, i)
        inserted: set[bytes] = set()
        for i, tag, exp in self._new:
            # expired codes too: a replayed genuine-but-expired code must not cost a verify every time (their
            # slots are the first reused); the publisher skips them
            if self._set.insert(tag, exp, now):
                out.newly_verified[i] = True
                inserted.add(tag)
        for i, tag in self._repeats:
            if tag in inserted:
                out.cache_hit[i] = True
                self._hits += 1
        return out

    def _verify_one(self, buf: bytes, start: int, end: int, now: int, out: BatchResult, i: int) -> None:
        code = buf[start:end]
        p = parse(code)
        out.kind[i] = p.kind
        if not p.ok:
            out.verdict[i], out.reason[i] = Verdict.MALFORMED, p.reason
            return
        if p.qid_end > p.qid_start:
            out.qid_start[i], out.qid_end[i] = start + p.qid_start, start + p.qid_end
        qid = code[p.qid_start : p.qid_end]
        if p.kind is CodeKind.UNSIGNED:
            self._identity(out, i, IDENTITY_UNSIGNED + p.doc_number + b"|" + qid)
            out.verdict[i] = Verdict.UNSIGNED_CODE
            return
        if p.kind is CodeKind.ID_CARD:
            out.person_key[i] = np.frombuffer(person_key(self._secret, p.doc_number), np.uint8)
            out.verdict[i] = Verdict.ID_CARD
            return
        out.iat[i], out.exp[i] = p.iat, p.exp
        verdict, reason = self._judge_signed(code, p, out, i, now)
        out.verdict[i], out.reason[i] = verdict, reason
        # What the issuer vouches for is (issuer, QID); a key we do not know vouches for nothing, so its codes
        # get an identity of their own under the kid they claim, which no genuine code can share.
        idx = int(out.key_index[i])
        if idx >= 0:
            self._identity(out, i, IDENTITY_ISSUER + self._issuer_tags[idx] + qid)
        else:
            self._identity(out, i, IDENTITY_CLAIMED_KEY + p.kid + qid)
        genuine = verdict is Verdict.OK or (verdict is Verdict.EXPIRED and reason is Reason.NONE)
        if genuine and complete(p.doc_number):
            out.link_key[i] = np.frombuffer(person_key(self._secret, p.doc_number), np.uint8)

    def _identity(self, out: BatchResult, i: int, label: bytes) -> None:
        out.person_key[i] = np.frombuffer(identity_key(self._secret, label), np.uint8)

    def _judge_signed(self, code: bytes, p: Any, out: BatchResult, i: int, now: int) -> tuple[Verdict, Reason]:
        idx = self._index.get(p.kid, -1)
        out.key_index[i] = idx
        if idx < 0:
            return Verdict.UNKNOWN_KEY, Reason.NONE
        t = self._trust
        if t.revoked[idx]:
            return Verdict.REVOKED_KEY, Reason.NONE
        if not self._signature_ok(code, p, idx, out, i, now):
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

    def _signature_ok(self, code: bytes, p: Any, idx: int, out: BatchResult, i: int, now: int) -> bool:
        self._lookups += 1
        tag = code_tag(self._set_key, code)
        out.set_tag[i] = np.frombuffer(tag, np.uint8)
        if tag in self._set:
            self._hits += 1
            out.cache_hit[i] = True
            return True
        if tag in self._missed:  # a repeat of this batch's miss: its verdict, a hit if that entry goes in
            self._repeats.append((i, tag))
            return self._missed[tag]
        try:
            self._verify_keys[idx].verify(p.message(code), p.signature)
            ok = True
        except BadSignatureError:
            ok = False
        if self._set.enabled:
            self._missed[tag] = ok
            if ok:
                self._new.append((i, tag, p.exp))
        return ok
