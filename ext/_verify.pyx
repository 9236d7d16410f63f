# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled batch verifier: the same contract as ``engine.verify.PyVerifier`` (docs/payload.md), without Python
objects in the per-code loop and with the GIL released.

A batch runs in three phases:

1. serial: parse every code, compute its person key, look its kid up in the trust table, and look the
   payload up in the verified-code cache (duplicates inside the batch are found here too, so they are
   verified once, exactly as the sequential reference would see the second one as a cache hit);
2. parallel: Ed25519-verify the cache misses, split across ``threads`` OpenMP threads; this is ~98% of the
   work of a cold batch, and the only phase worth threads;
3. serial: insert the newly verified codes into the cache, then the code-revocation, key-window and time
   checks, in the order of docs/payload.md section 4.

Why libsodium through PyNaCl's own shared object: PyNaCl is already a dependency and ships libsodium
(``nacl/_sodium.abi3.so`` exports the whole public API), so we call ``crypto_sign_verify_detached`` on the
very code the reference path calls through PyNaCl: both verifiers accept exactly the same signatures
(libsodium's canonicity and small-order rules included) and no system libsodium or build-time linking is
needed. The function addresses are taken once at import through ``ctypes`` and called as plain C function
pointers, so there is no ctypes or cffi overhead per call. ``import nacl.bindings`` runs ``sodium_init``.
"""

from cpython.bytes cimport PyBytes_AS_STRING
from cython.parallel cimport prange
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

import ctypes
import os
import threading

import nacl._sodium
import nacl.bindings  # noqa: F401  (runs sodium_init before any function pointer is used)
import numpy as np

from engine.verdicts import CodeKind, Reason, Verdict

include "_parse.pxi"

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)

# -- libsodium, bound once ------------------------------------------------------------------------------------
ctypedef int (*sign_verify_fn)(const uint8_t* sig, const uint8_t* m, unsigned long long mlen,
                               const uint8_t* pk) noexcept nogil
ctypedef int (*shorthash_fn)(uint8_t* out, const uint8_t* m, unsigned long long mlen,
                             const uint8_t* k) noexcept nogil
ctypedef int (*hmac_init_fn)(void* state, const uint8_t* key, size_t keylen) noexcept nogil
ctypedef int (*hmac_update_fn)(void* state, const uint8_t* m, unsigned long long mlen) noexcept nogil
ctypedef int (*hmac_final_fn)(void* state, uint8_t* out) noexcept nogil
ctypedef size_t (*size_fn)() noexcept nogil

_sodium_lib = ctypes.CDLL(nacl._sodium.__file__)  # kept referenced: the handle must outlive the pointers


def _address(name: str) -> int:
    return ctypes.cast(getattr(_sodium_lib, name), ctypes.c_void_p).value


cdef sign_verify_fn _sign_verify = <sign_verify_fn><uintptr_t>_address("crypto_sign_verify_detached")
cdef shorthash_fn _siphash = <shorthash_fn><uintptr_t>_address("crypto_shorthash_siphash24")
cdef hmac_init_fn _hmac_init = <hmac_init_fn><uintptr_t>_address("crypto_auth_hmacsha256_init")
cdef hmac_update_fn _hmac_update = <hmac_update_fn><uintptr_t>_address("crypto_auth_hmacsha256_update")
cdef hmac_final_fn _hmac_final = <hmac_final_fn><uintptr_t>_address("crypto_auth_hmacsha256_final")
cdef size_t _HMAC_STATE_BYTES = (<size_fn><uintptr_t>_address("crypto_auth_hmacsha256_statebytes"))()

cdef enum:
    DOMAIN_LEN = 17
    PERSON_KEY_BYTES = 16

# Verdict numbers: engine/verdicts.py.
cdef enum:
    V_OK = 0
    V_BAD_SIGNATURE = 1
    V_UNKNOWN_KEY = 2
    V_REVOKED_KEY = 3
    V_REVOKED_CODE = 4
    V_EXPIRED = 5
    V_NOT_YET_VALID = 6
    V_UNSIGNED_CODE = 7
    V_ID_CARD = 8
    V_MALFORMED = 9

cdef const uint8_t* _DOMAIN = b"VNPQR-ED25519-V1\x00"

# The enums above are copies; a renumbering in engine/verdicts.py must fail loudly at import, not mislabel scans.
assert [int(v) for v in Verdict] == list(range(10)) and Verdict.MALFORMED == V_MALFORMED
assert int(Reason.KEY_WINDOW) == R_KEY_WINDOW and int(Reason.SIGNATURE_ENCODING) == R_SIGNATURE_ENCODING
assert int(CodeKind.ID_CARD) == K_ID_CARD and int(CodeKind.SIGNED) == K_SIGNED

_BatchResult = None  # engine.verify.BatchResult, imported on first use (engine.verify imports this module)


# -- primitives ------------------------------------------------------------------------------------------------
def ed25519_verify(signature: bytes, message: bytes, public_key: bytes) -> bool:
    """The raw primitive as the batch loop calls it, for the RFC 8032 vectors in the tests."""
    if len(signature) != 64 or len(public_key) != 32:
        raise ValueError("signature must be 64 bytes and public key 32 bytes")
    cdef const uint8_t[::1] m = message
    cdef const uint8_t* mp = &m[0] if len(message) else <const uint8_t*>b""
    return _sign_verify(<const uint8_t*>PyBytes_AS_STRING(signature), mp, len(message),
                        <const uint8_t*>PyBytes_AS_STRING(public_key)) == 0


def verify_loop(signature: bytes, message: bytes, public_key: bytes, long iterations) -> int:
    """``iterations`` calls of ``crypto_sign_verify_detached`` in a tight C loop (GIL released): the bench's
    baseline when no C compiler is available. Returns how many verified."""
    if len(signature) != 64 or len(public_key) != 32 or not message:
        raise ValueError("signature must be 64 bytes, public key 32 bytes, message non-empty")
    cdef const uint8_t* s = <const uint8_t*>PyBytes_AS_STRING(signature)
    cdef const uint8_t* mp = <const uint8_t*>PyBytes_AS_STRING(message)
    cdef const uint8_t* pk = <const uint8_t*>PyBytes_AS_STRING(public_key)
    cdef unsigned long long mlen = len(message)
    cdef long k, ok = 0
    with nogil:
        for k in range(iterations):
            ok += _sign_verify(s, mp, mlen, pk) == 0
    return ok


include "_cache.pxi"


# -- per-batch work --------------------------------------------------------------------------------------------
cdef struct Work:          # one signature to verify in phase 2
    int64_t start          # of the code in the batch buffer
    int32_t length
    int32_t signed_len
    int32_t key            # trust-table index
    int32_t ok
    uint64_t hash
    uint8_t sig[SIG_BYTES]


cdef struct Pending:       # a code that reached the signature step, in batch order
    int32_t code
    int32_t work           # index into works; -1 = cache hit
    int32_t dup            # 1 = same bytes as an earlier miss of this batch: shares its work


cdef void _verify_work(Work* wk, const uint8_t* buf, const uint8_t* public_keys) noexcept nogil:
    # The message is DOMAIN + code[:signed_len]; one contiguous copy on this thread's stack (<= 443 bytes).
    cdef uint8_t msg[DOMAIN_LEN + MAX_CODE_BYTES]
    memcpy(msg, _DOMAIN, DOMAIN_LEN)
    memcpy(msg + DOMAIN_LEN, buf + wk.start, wk.signed_len)
    wk.ok = _sign_verify(wk.sig, msg, DOMAIN_LEN + wk.signed_len, public_keys + 32 * <Py_ssize_t>wk.key) == 0


cdef int _qid_cmp(const uint8_t* a, Py_ssize_t na, const uint8_t* b, Py_ssize_t nb) noexcept nogil:
    """Python's bytes ordering: memcmp over the common prefix, then the shorter first."""
    cdef int r = memcmp(a, b, na if na < nb else nb)
    if r != 0:
        return r
    return (na > nb) - (na < nb)


cdef struct Out:           # the BatchResult columns as raw pointers
    uint8_t* verdict
    uint8_t* reason
    uint8_t* kind
    int32_t* key_index
    int64_t* iat
    int64_t* exp
    int32_t* qid_start
    int32_t* qid_end
    uint8_t* person_key    # n * 16
    uint8_t* cache_hit


cdef inline uint64_t _be64(const uint8_t* b) noexcept nogil:
    cdef uint64_t v = 0
    cdef int k
    for k in range(8):
        v = (v << 8) | b[k]
    return v


cdef class CVerifier:
    """Batch verifier with the GIL released; see the module docstring for the three phases.

    Memory: the cache holds ``ceil(cache_size / 4) * 4`` entries of 296 bytes each (280 payload bytes and 16
    of metadata), so the default 65536 entries take 19.4 MB, allocated once. Per-batch scratch grows to the
    largest batch seen (about 120 bytes per code).
    """

    implementation = "cython"

    cdef Cache _cache
    cdef bint _cache_on
    cdef uint64_t _hits, _lookups
    cdef int _threads
    cdef int64_t _skew
    cdef object _lock
    cdef void* _hmac_base      # HMAC state after key setup and the "pk1:" prefix
    cdef void* _hmac_scratch
    # trust snapshot: Python owners and the raw views the nogil code reads
    cdef object _trust, _kid_keys, _kid_order, _public_keys, _valid_from, _valid_until, _revoked, _rq_buf, _rq_off
    cdef const uint64_t* _kp
    cdef const int32_t* _op
    cdef const uint8_t* _pkp
    cdef const int64_t* _vfp
    cdef const int64_t* _vup
    cdef const uint8_t* _rvp
    cdef const uint8_t* _rqb
    cdef const int64_t* _rqo
    cdef Py_ssize_t _nkeys, _nrq
    # per-batch scratch, grown on demand
    cdef Work* _works
    cdef Pending* _pending
    cdef int32_t* _dedupe
    cdef Py_ssize_t _scratch_n, _dedupe_mask

    def __cinit__(self):
        self._cache.buckets = NULL
        self._cache.data = NULL
        self._hmac_base = NULL
        self._hmac_scratch = NULL
        self._works = NULL
        self._pending = NULL
        self._dedupe = NULL
        self._scratch_n = 0

    def __init__(self, trust, person_secret: bytes, *, cache_size: int = 65536, threads: int = 1,
                 skew: int = 300) -> None:
        cdef const uint8_t[::1] secret = bytes(person_secret)
        cdef uint64_t nbuckets
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self._lock = threading.Lock()
        self.threads = threads
        self.skew = skew
        self._hits = self._lookups = 0
        self._hmac_base = malloc(_HMAC_STATE_BYTES)
        self._hmac_scratch = malloc(_HMAC_STATE_BYTES)
        if self._hmac_base == NULL or self._hmac_scratch == NULL:
            raise MemoryError()
        _hmac_init(self._hmac_base, &secret[0] if len(secret) else <const uint8_t*>b"", len(secret))
        _hmac_update(self._hmac_base, <const uint8_t*>b"pk1:", 4)
        self._cache_on = cache_size > 0
        if self._cache_on:
            nbuckets = (cache_size + WAYS - 1) // WAYS
            # Line-aligned so each bucket's metadata is exactly one cache line.
            if posix_memalign(<void**>&self._cache.buckets, 64, nbuckets * sizeof(Bucket)) != 0:
                self._cache.buckets = NULL
            self._cache.data = <uint8_t*>malloc(nbuckets * WAYS * SLOT_BYTES)
            if self._cache.buckets == NULL or self._cache.data == NULL:
                raise MemoryError(f"verified-code cache of {cache_size} entries")
            memset(self._cache.buckets, 0, nbuckets * sizeof(Bucket))
            self._cache.nbuckets = nbuckets
            self._cache.clock = 0
            memcpy(self._cache.key, PyBytes_AS_STRING(os.urandom(16)), 16)
        self.set_trust(trust)

    def __dealloc__(self):
        free(self._cache.buckets)
        free(self._cache.data)
        free(self._hmac_base)
        free(self._hmac_scratch)
        free(self._works)
        free(self._pending)
        free(self._dedupe)

    # -- settings and counters ---------------------------------------------------------------------------------
    @property
    def threads(self) -> int:
        return self._threads

    @threads.setter
    def threads(self, value: int) -> None:
        if value < 1:
            raise ValueError("threads must be >= 1")
        self._threads = value

    @property
    def skew(self) -> int:
        return self._skew

    @skew.setter
    def skew(self, value: int) -> None:
        if not -(1 << 62) < value < (1 << 62):  # keeps now + skew inside int64 for any accepted now
            raise OverflowError("skew out of range")
        self._skew = value

    @property
    def cache_hits(self) -> int:
        return self._hits

    @property
    def cache_lookups(self) -> int:
        return self._lookups

    # -- trust list ----------------------------------------------------------------------------------------------
    def set_trust(self, trust) -> None:
        """Swap in a new trust snapshot; cached codes stay valid because a kid is a hash of its key."""
        n = len(trust.issuers)
        if len(trust.kids) != 8 * n or len(trust.public_keys) != 32 * n:
            raise ValueError("trust table: kids/public_keys lengths do not match the key count")
        keys = np.frombuffer(trust.kids, dtype=">u8").astype(np.uint64)
        order = np.argsort(keys, kind="stable").astype(np.int32)  # stable: the last duplicate wins, as a dict
        kid_keys = np.ascontiguousarray(keys[order])
        valid_from = np.ascontiguousarray(trust.valid_from, dtype=np.int64)
        valid_until = np.ascontiguousarray(trust.valid_until, dtype=np.int64)
        revoked = np.ascontiguousarray(trust.revoked, dtype=np.uint8)
        if not len(valid_from) == len(valid_until) == len(revoked) == n:
            raise ValueError("trust table: column lengths do not match the key count")
        qids = sorted(set(trust.revoked_qids))
        rq_off = np.zeros(len(qids) + 1, dtype=np.int64)
        if qids:
            np.cumsum([len(q) for q in qids], out=rq_off[1:])
        rq_buf = b"".join(qids) + b"\0"  # never empty, so its pointer is always valid
        public_keys = bytes(trust.public_keys) + b"\0"
        cdef const uint64_t[::1] kv = kid_keys if n else np.zeros(1, np.uint64)
        cdef const int32_t[::1] ov = order if n else np.zeros(1, np.int32)
        cdef const int64_t[::1] fv = valid_from if n else np.zeros(1, np.int64)
        cdef const int64_t[::1] uv = valid_until if n else np.zeros(1, np.int64)
        cdef const uint8_t[::1] rv = revoked if n else np.zeros(1, np.uint8)
        cdef const int64_t[::1] qo = rq_off
        with self._lock:  # never swap under a running batch
            self._trust = trust
            self._kid_keys, self._kid_order, self._valid_from, self._valid_until, self._revoked = kv, ov, fv, uv, rv
            self._public_keys, self._rq_buf, self._rq_off = public_keys, rq_buf, qo
            self._kp, self._op, self._vfp, self._vup, self._rvp = &kv[0], &ov[0], &fv[0], &uv[0], &rv[0]
            self._pkp = <const uint8_t*>PyBytes_AS_STRING(public_keys)
            self._rqb = <const uint8_t*>PyBytes_AS_STRING(rq_buf)
            self._rqo = &qo[0]
            self._nkeys, self._nrq = n, len(qids)

    cdef int32_t _key_index(self, const uint8_t* kid) noexcept nogil:
        cdef uint64_t x = _be64(kid)
        cdef Py_ssize_t lo = 0, hi = self._nkeys, mid
        while lo < hi:  # upper bound of x
            mid = (lo + hi) >> 1
            if self._kp[mid] <= x:
                lo = mid + 1
            else:
                hi = mid
        if lo > 0 and self._kp[lo - 1] == x:
            return self._op[lo - 1]
        return -1

    cdef bint _qid_revoked(self, const uint8_t* q, Py_ssize_t n) noexcept nogil:
        cdef Py_ssize_t lo = 0, hi = self._nrq, mid
        cdef int r
        while lo < hi:
            mid = (lo + hi) >> 1
            r = _qid_cmp(self._rqb + self._rqo[mid], self._rqo[mid + 1] - self._rqo[mid], q, n)
            if r == 0:
                return True
            if r < 0:
                lo = mid + 1
            else:
                hi = mid
        return False

    # -- batches -------------------------------------------------------------------------------------------------
    cdef int _reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t size = 16
        if n <= self._scratch_n:
            return 0
        free(self._works)
        free(self._pending)
        free(self._dedupe)
        self._scratch_n = 0
        while size < 2 * n:
            size <<= 1
        self._works = <Work*>malloc(n * sizeof(Work))
        self._pending = <Pending*>malloc(n * sizeof(Pending))
        self._dedupe = <int32_t*>malloc(size * sizeof(int32_t))
        if self._works == NULL or self._pending == NULL or self._dedupe == NULL:
            raise MemoryError(f"scratch for a batch of {n} codes")
        self._scratch_n = n
        self._dedupe_mask = size - 1
        return 0

    def verify_batch(self, batch, now: int):
        """Verify every code of ``batch`` at Unix time ``now``; returns an ``engine.verify.BatchResult``."""
        global _BatchResult
        if _BatchResult is None:
            from engine.verify import BatchResult as _BR
            _BatchResult = _BR
        if not -(1 << 62) < now < (1 << 62):
            raise OverflowError("now out of range")
        offsets = np.ascontiguousarray(batch.offsets, dtype=np.int64)
        cdef Py_ssize_t n = len(offsets) - 1
        if n < 0:
            raise ValueError("offsets must hold n + 1 entries")
        cdef const uint8_t[::1] bv = batch.buf if len(batch.buf) else b"\0"
        cdef const int64_t[::1] ov = offsets
        if n and (offsets[0] < 0 or offsets[n] > len(batch.buf) or np.any(np.diff(offsets) < 0)):
            raise ValueError("offsets must be non-decreasing and inside the buffer")
        if len(batch.buf) >= (1 << 31):
            raise ValueError("a batch buffer must stay under 2 GiB (QID offsets are int32)")
        res = _BatchResult.empty(n)
        if n == 0:
            return res
        cdef uint8_t[::1] verdict = res.verdict, reason = res.reason, kind = res.kind, hit = res.cache_hit.view(np.uint8)
        cdef int32_t[::1] key_index = res.key_index, qid_start = res.qid_start, qid_end = res.qid_end
        cdef int64_t[::1] iat = res.iat, exp = res.exp
        cdef uint8_t[:, ::1] pkey = res.person_key
        cdef Out out
        out.verdict, out.reason, out.kind, out.cache_hit = &verdict[0], &reason[0], &kind[0], &hit[0]
        out.key_index, out.qid_start, out.qid_end = &key_index[0], &qid_start[0], &qid_end[0]
        out.iat, out.exp, out.person_key = &iat[0], &exp[0], &pkey[0, 0]
        cdef int64_t t = now
        with self._lock:
            self._reserve(n)
            with nogil:
                self._run(&bv[0], &ov[0], n, t, &out)
        return res

    cdef void _run(self, const uint8_t* buf, const int64_t* off, Py_ssize_t n, int64_t now, Out* out) noexcept nogil:
        cdef Py_ssize_t npending = 0, nwork = 0, w
        cdef int threads = self._threads
        npending = self._phase1(buf, off, n, out, &nwork)
        if threads > 1 and nwork > 1:
            # guided, not static: every verify costs the same, but on a busy host one thread may be descheduled,
            # and then the other should take over its share instead of waiting for it at the barrier.
            for w in prange(nwork, num_threads=threads, schedule="guided"):
                _verify_work(&self._works[w], buf, self._pkp)
        else:
            for w in range(nwork):
                _verify_work(&self._works[w], buf, self._pkp)
        self._phase3(buf, off, npending, now, out)

    cdef Py_ssize_t _phase1(self, const uint8_t* buf, const int64_t* off, Py_ssize_t n, Out* out,
                            Py_ssize_t* nwork_out) noexcept nogil:
        """Parse, person key, key lookup, cache lookup; returns how many codes reached the signature step."""
        cdef Py_ssize_t i, npending = 0, nwork = 0, slot, length
        cdef Parsed p
        cdef const uint8_t* code
        cdef uint8_t digest[32]
        cdef uint8_t hbytes[8]
        cdef uint64_t h = 0
        cdef int32_t key, j
        cdef Pending* pd
        cdef Work* wk
        if self._cache_on:
            memset(self._dedupe, 0xFF, (self._dedupe_mask + 1) * sizeof(int32_t))
        for i in range(n):
            code = buf + off[i]
            length = off[i + 1] - off[i]
            parse_code(code, length, &p)
            out.kind[i] = p.kind
            if p.reason != R_NONE:
                out.verdict[i] = V_MALFORMED
                out.reason[i] = p.reason
                continue
            memcpy(self._hmac_scratch, self._hmac_base, _HMAC_STATE_BYTES)
            _hmac_update(self._hmac_scratch, code + p.doc_start, p.doc_len)
            _hmac_final(self._hmac_scratch, digest)
            memcpy(out.person_key + PERSON_KEY_BYTES * i, digest, PERSON_KEY_BYTES)
            if p.qid_end > p.qid_start:
                out.qid_start[i] = <int32_t>(off[i] + p.qid_start)
                out.qid_end[i] = <int32_t>(off[i] + p.qid_end)
            if p.kind == K_UNSIGNED:
                out.verdict[i] = V_UNSIGNED_CODE
                continue
            if p.kind == K_ID_CARD:
                out.verdict[i] = V_ID_CARD
                continue
            out.iat[i] = p.iat
            out.exp[i] = p.exp
            key = self._key_index(p.kid)
            out.key_index[i] = key
            if key < 0:
                out.verdict[i] = V_UNKNOWN_KEY
                continue
            if self._rvp[key]:
                out.verdict[i] = V_REVOKED_KEY
                continue
            pd = &self._pending[npending]
            npending += 1
            pd.code = <int32_t>i
            pd.work = -1
            pd.dup = 0
            if self._cache_on:
                _siphash(hbytes, code, length, self._cache.key)
                memcpy(&h, hbytes, 8)
                if _cache_find(&self._cache, code, length, h):
                    continue
                # A miss: is it a repeat of an earlier miss of this batch?
                slot = <Py_ssize_t>(h & <uint64_t>self._dedupe_mask)
                while True:
                    j = self._dedupe[slot]
                    if j < 0:
                        self._dedupe[slot] = <int32_t>nwork
                        break
                    wk = &self._works[j]
                    if wk.hash == h and wk.length == length and memcmp(buf + wk.start, code, length) == 0:
                        pd.work = j
                        pd.dup = 1
                        break
                    slot = (slot + 1) & self._dedupe_mask
                if pd.dup:
                    continue
            wk = &self._works[nwork]
            pd.work = <int32_t>nwork
            nwork += 1
            wk.start = off[i]
            wk.length = <int32_t>length
            wk.signed_len = p.signed_len
            wk.key = key
            wk.ok = 0
            wk.hash = h
            memcpy(wk.sig, p.sig, SIG_BYTES)
        nwork_out[0] = nwork
        return npending

    cdef void _phase3(self, const uint8_t* buf, const int64_t* off, Py_ssize_t npending, int64_t now,
                      Out* out) noexcept nogil:
        """Cache insert, then code revocation, key window and time, in the order of docs/payload.md §4."""
        cdef Py_ssize_t k, i
        cdef Pending* pd
        cdef Work* wk
        cdef bint ok
        cdef int32_t key
        cdef int64_t t_iat
        for k in range(npending):
            pd = &self._pending[k]
            i = pd.code
            self._lookups += 1
            if pd.work < 0:
                ok = True
                out.cache_hit[i] = 1
                self._hits += 1
            else:
                wk = &self._works[pd.work]
                ok = wk.ok
                if ok and pd.dup:  # the sequential reference finds the first copy in its cache by now
                    out.cache_hit[i] = 1
                    self._hits += 1
                elif ok and self._cache_on:
                    _cache_insert(&self._cache, buf + wk.start, wk.length, wk.hash)
            if not ok:
                out.verdict[i] = V_BAD_SIGNATURE
                continue
            if self._nrq and self._qid_revoked(buf + out.qid_start[i], out.qid_end[i] - out.qid_start[i]):
                out.verdict[i] = V_REVOKED_CODE
                continue
            key = out.key_index[i]
            t_iat = out.iat[i]
            if t_iat < self._vfp[key]:
                out.verdict[i] = V_NOT_YET_VALID
                out.reason[i] = R_KEY_WINDOW
            elif t_iat > self._vup[key]:
                out.verdict[i] = V_EXPIRED
                out.reason[i] = R_KEY_WINDOW
            elif now + self._skew < t_iat:
                out.verdict[i] = V_NOT_YET_VALID
            elif now >= out.exp[i]:
                out.verdict[i] = V_EXPIRED
            else:
                out.verdict[i] = V_OK
