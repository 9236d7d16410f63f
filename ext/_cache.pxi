# The verified-code cache of docs/payload.md section 6, included into _verify.pyx.
#
# Set-associative: a bucket is 4 ways whose metadata fills one 64-byte cache line, so a lookup touches one
# line of metadata and, only when the 64-bit SipHash tag and the length match, one slot of payload bytes for
# the memcmp that makes a crafted hash collision cost a miss instead of a wrong answer. Eviction is LRU within
# the bucket (a 32-bit clock; ages are computed with unsigned wrap-around). Only the serial phases touch it,
# so it needs no lock of its own: CVerifier serialises batches.

cdef enum:
    WAYS = 4
    # The longest code that can parse as signed: 20 + 80 + 10 + 1 + 32 + 126 (block) + 5 separators = 274
    # bytes; only such codes reach the cache, so a slot never needs the full 512.
    SLOT_BYTES = 280


cdef struct Bucket:  # 64 bytes: one cache line of metadata for 4 ways
    uint64_t tag[WAYS]     # SipHash-2-4 of the payload
    uint32_t stamp[WAYS]   # last use, from the cache clock (LRU within the bucket)
    uint16_t length[WAYS]  # payload length; 0 = empty way
    uint8_t pad[8]


cdef struct Cache:
    Bucket* buckets
    uint8_t* data          # nbuckets * WAYS * SLOT_BYTES payload bytes
    uint64_t nbuckets
    uint32_t clock
    uint8_t key[16]


cdef inline uint64_t _bucket_of(const Cache* c, uint64_t h) noexcept nogil:
    # Lemire's multiply-shift range reduction: any bucket count, no modulo.
    return ((h >> 32) * c.nbuckets) >> 32


cdef bint _cache_find(Cache* c, const uint8_t* code, Py_ssize_t n, uint64_t h) noexcept nogil:
    cdef uint64_t b = _bucket_of(c, h)
    cdef Bucket* bk = &c.buckets[b]
    cdef int w
    for w in range(WAYS):
        if bk.length[w] == n and bk.tag[w] == h and memcmp(c.data + (b * WAYS + w) * SLOT_BYTES, code, n) == 0:
            c.clock += 1
            bk.stamp[w] = c.clock
            return True
    return False


cdef void _cache_insert(Cache* c, const uint8_t* code, Py_ssize_t n, uint64_t h) noexcept nogil:
    cdef uint64_t b = _bucket_of(c, h)
    cdef Bucket* bk = &c.buckets[b]
    cdef int w, victim = 0
    cdef uint32_t age, oldest = 0
    if n > SLOT_BYTES:  # cannot happen for a code that parsed as signed; never cache a truncated copy
        return
    for w in range(WAYS):
        if bk.length[w] == 0:
            victim = w
            break
        age = c.clock - bk.stamp[w]  # unsigned: correct across clock wrap-around
        if age >= oldest:
            oldest = age
            victim = w
    c.clock += 1
    bk.tag[victim] = h
    bk.length[victim] = <uint16_t>n
    bk.stamp[victim] = c.clock
    memcpy(c.data + (b * WAYS + victim) * SLOT_BYTES, code, n)
