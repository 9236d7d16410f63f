# The payload parser of docs/payload.md section 3, in C: the twin of engine/codes/payload.py, rule for rule and in
# the same order (the first failing rule decides the reason, so the order is part of the contract).
#
# Everything here is `noexcept nogil` on raw pointers: one call per code, no allocation, no Python objects.
# Included into _verify.pyx rather than compiled on its own because the verifier is its only user and
# keeping it in the same translation unit lets the C compiler inline it into the batch loop.

cdef enum:
    MAX_CODE_BYTES = 512
    KID_BYTES = 8
    SIG_BYTES = 64
    SIG_CHARS = 86
    MAX_TIME_DIGITS = 11
    MAX_FIELDS = 7

cdef enum:
    C_DIGIT = 1
    C_DOC = 2      # 0-9 A-Z *
    C_NAME = 4     # A-Z space
    C_QID = 8      # A-Z a-z 0-9 _ -
    C_CONTROL = 16  # < 0x20 or 0x7F

cdef uint8_t _CLASS[256]
cdef int8_t _B64[256]  # base64url value of a character, -1 outside the alphabet


cdef void _init_tables():
    cdef int c
    cdef bytes alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for c in range(256):
        _CLASS[c] = 0
        _B64[c] = -1
    for c in range(64):
        _B64[alphabet[c]] = <int8_t>c
    for c in range(256):
        if c < 0x20 or c == 0x7F:
            _CLASS[c] |= C_CONTROL
        if 0x30 <= c <= 0x39:
            _CLASS[c] |= C_DIGIT | C_DOC | C_QID
        if 0x41 <= c <= 0x5A:
            _CLASS[c] |= C_DOC | C_NAME | C_QID
        if 0x61 <= c <= 0x7A or c == 0x5F or c == 0x2D:
            _CLASS[c] |= C_QID
    _CLASS[0x2A] |= C_DOC
    _CLASS[0x20] |= C_NAME


_init_tables()


cdef struct Parsed:
    uint8_t kind
    uint8_t reason
    int32_t doc_start      # relative to the code; the person-key input
    int32_t doc_len
    int32_t qid_start      # relative; start == end for ID cards
    int32_t qid_end
    int32_t signed_len     # bytes of the code covered by the signature (after the domain prefix)
    int64_t iat
    int64_t exp
    uint8_t kid[KID_BYTES]
    uint8_t sig[SIG_BYTES]


cdef inline bint _all(const uint8_t* s, Py_ssize_t n, uint8_t cls) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n):
        if not (_CLASS[s[k]] & cls):
            return False
    return True


cdef inline int _two_digits(const uint8_t* s) noexcept nogil:
    """Value of two ASCII digits, or -1."""
    if (_CLASS[s[0]] & C_DIGIT) and (_CLASS[s[1]] & C_DIGIT):
        return (s[0] - 48) * 10 + (s[1] - 48)
    return -1


cdef inline bint _in_range(int v, int lo, int hi) noexcept nogil:
    return lo <= v <= hi


cdef bint _iso_birth_date_ok(const uint8_t* f, Py_ssize_t n) noexcept nogil:
    """YYYY-MM-DD where MM and DD may each be ``**``."""
    if n != 10 or f[4] != 0x2D or f[7] != 0x2D or not _all(f, 4, C_DIGIT):
        return False
    cdef bint month_ok = (f[5] == 0x2A and f[6] == 0x2A) or _in_range(_two_digits(f + 5), 1, 12)
    cdef bint day_ok = (f[8] == 0x2A and f[9] == 0x2A) or _in_range(_two_digits(f + 8), 1, 31)
    return month_ok and day_ok


cdef bint _card_date_ok(const uint8_t* f, Py_ssize_t n) noexcept nogil:
    """DDMMYYYY, all digits."""
    return (
        n == 8
        and _all(f, 8, C_DIGIT)
        and _in_range(_two_digits(f), 1, 31)
        and _in_range(_two_digits(f + 2), 1, 12)
    )


cdef bint _time_value(const uint8_t* f, Py_ssize_t n, int64_t* out) noexcept nogil:
    """1-11 decimal digits, no leading zero except ``0`` itself; 11 digits always fit an int64."""
    cdef Py_ssize_t k
    cdef int64_t v = 0
    if n < 1 or n > MAX_TIME_DIGITS or not _all(f, n, C_DIGIT):
        return False
    if n > 1 and f[0] == 0x30:
        return False
    for k in range(n):
        v = v * 10 + (f[k] - 48)
    out[0] = v
    return True


cdef bint b64url_decode_canonical(const uint8_t* s, Py_ssize_t n, uint8_t* out, Py_ssize_t nbytes) noexcept nogil:
    """Unpadded base64url of exactly ``nbytes`` bytes whose unused trailing bits are zero.

    Zero trailing bits is what makes the spelling canonical (it is equivalent to the reference's
    decode-then-re-encode round trip): 2 unused bits for the 11-character kid, 4 for the 86-character sig.
    """
    cdef Py_ssize_t k, o = 0
    cdef uint32_t acc = 0
    cdef int bits = 0
    cdef int8_t v
    if n != (nbytes * 8 + 5) // 6:
        return False
    for k in range(n):
        v = _B64[s[k]]
        if v < 0:
            return False
        acc = ((acc << 6) | <uint32_t>v) & 0x3FFF  # at most 8 + 6 live bits
        bits += 6
        if bits >= 8:
            bits -= 8
            out[o] = <uint8_t>(acc >> bits)
            o += 1
    return (acc & ((1u << bits) - 1)) == 0


cdef inline void _fail(Parsed* p, uint8_t kind, uint8_t reason) noexcept nogil:
    p.kind = kind
    p.reason = reason


cdef void parse_code(const uint8_t* c, Py_ssize_t n, Parsed* p) noexcept nogil:
    """Fill ``p`` for the code ``c[0:n]``; ``p.reason`` is ``R_NONE`` when it parsed cleanly."""
    cdef Py_ssize_t k, nfields = 1
    cdef Py_ssize_t fs[MAX_FIELDS + 1]
    cdef Py_ssize_t fe[MAX_FIELDS + 1]
    p.kind = K_UNKNOWN
    p.reason = R_NONE
    p.doc_start = p.doc_len = p.qid_start = p.qid_end = p.signed_len = 0
    p.iat = p.exp = 0
    if n == 0:
        _fail(p, K_UNKNOWN, R_EMPTY)
        return
    if n > MAX_CODE_BYTES:
        _fail(p, K_UNKNOWN, R_TOO_LONG)
        return
    # One pass: control characters (checked over the whole code first, as the reference does) and the
    # field boundaries; more than 7 fields is a field-count failure, but only after the whole scan.
    fs[0] = 0
    for k in range(n):
        if _CLASS[c[k]] & C_CONTROL:
            _fail(p, K_UNKNOWN, R_CONTROL_CHAR)
            return
        if c[k] == 0x7C:
            if nfields <= MAX_FIELDS:
                fe[nfields - 1] = k
                fs[nfields] = k + 1
            nfields += 1
    if nfields <= MAX_FIELDS:
        fe[nfields - 1] = n
    if nfields == 6 and fe[3] - fs[3] == 1 and (c[fs[3]] == 0x30 or c[fs[3]] == 0x31):
        _parse_personal(c, n, fs, fe, p)
    elif nfields == 6 or nfields == 7:
        _parse_card(c, nfields, fs, fe, p)
    else:
        _fail(p, K_UNKNOWN, R_FIELD_COUNT)


cdef void _parse_personal(const uint8_t* c, Py_ssize_t n, Py_ssize_t* fs, Py_ssize_t* fe, Parsed* p) noexcept nogil:
    cdef const uint8_t* ext = c + fs[5]
    cdef Py_ssize_t ext_len = fe[5] - fs[5]
    cdef Py_ssize_t doc_len = fe[0] - fs[0], name_len = fe[1] - fs[1], qid_len = fe[4] - fs[4]
    cdef const uint8_t* name = c + fs[1]
    cdef Py_ssize_t k, nparts = 1
    cdef Py_ssize_t ps[5]
    cdef Py_ssize_t pe[5]
    cdef uint8_t kind = K_UNSIGNED
    if ext_len >= 4 and ext[0] == 0x56 and ext[1] == 0x53 and ext[2] == 0x31 and ext[3] == 0x2E:  # "VS1."
        kind = K_SIGNED
    p.kind = kind
    if doc_len < 6 or doc_len > 20 or not _all(c + fs[0], doc_len, C_DOC):
        _fail(p, kind, R_DOC_NUMBER)
        return
    if name_len < 1 or name_len > 80 or not _all(name, name_len, C_NAME) or name[0] == 0x20 or name[name_len - 1] == 0x20:
        _fail(p, kind, R_NAME)
        return
    if not _iso_birth_date_ok(c + fs[2], fe[2] - fs[2]):
        _fail(p, kind, R_BIRTH_DATE)
        return
    if qid_len < 1 or qid_len > 32 or not _all(c + fs[4], qid_len, C_QID):
        _fail(p, kind, R_QR_ID)
        return
    if kind == K_UNSIGNED:
        if ext_len > 128:
            _fail(p, kind, R_EXT)
            return
    else:
        # Split the block on '.'; "VS1." guarantees the first part, so only the count can be wrong.
        ps[0] = 0
        for k in range(ext_len):
            if ext[k] == 0x2E:
                if nparts < 5:
                    pe[nparts - 1] = k
                    ps[nparts] = k + 1
                nparts += 1
        if nparts != 5:
            _fail(p, kind, R_SIGNED_BLOCK)
            return
        pe[4] = ext_len
        if not b64url_decode_canonical(ext + ps[1], pe[1] - ps[1], p.kid, KID_BYTES):
            _fail(p, kind, R_KEY_ID)
            return
        if not _time_value(ext + ps[2], pe[2] - ps[2], &p.iat) or not _time_value(ext + ps[3], pe[3] - ps[3], &p.exp):
            p.iat = p.exp = 0
            _fail(p, kind, R_TIMESTAMP)
            return
        if p.exp <= p.iat:
            p.iat = p.exp = 0
            _fail(p, kind, R_VALIDITY)
            return
        if not b64url_decode_canonical(ext + ps[4], pe[4] - ps[4], p.sig, SIG_BYTES):
            p.iat = p.exp = 0
            _fail(p, kind, R_SIGNATURE_ENCODING)
            return
        p.signed_len = <int32_t>(n - SIG_CHARS)
    p.doc_start = <int32_t>fs[0]
    p.doc_len = <int32_t>doc_len
    p.qid_start = <int32_t>fs[4]
    p.qid_end = <int32_t>fe[4]


cdef void _parse_card(const uint8_t* c, Py_ssize_t nfields, Py_ssize_t* fs, Py_ssize_t* fe, Parsed* p) noexcept nogil:
    # Field positions of the 7-field form; the 6-field form has no old ID number (shift by one).
    cdef int shift = 0 if nfields == 7 else -1
    cdef Py_ssize_t old_len
    p.kind = K_ID_CARD
    if nfields == 7:
        old_len = fe[1] - fs[1]
        if old_len != 0 and (old_len != 9 or not _all(c + fs[1], 9, C_DIGIT)):
            _fail(p, K_ID_CARD, R_OLD_ID_NUMBER)
            return
    if fe[0] - fs[0] != 12 or not _all(c + fs[0], 12, C_DIGIT):
        _fail(p, K_ID_CARD, R_ID_NUMBER)
        return
    if not 1 <= fe[2 + shift] - fs[2 + shift] <= 120:
        _fail(p, K_ID_CARD, R_CARD_NAME)
        return
    if not _card_date_ok(c + fs[3 + shift], fe[3 + shift] - fs[3 + shift]):
        _fail(p, K_ID_CARD, R_CARD_BIRTH_DATE)
        return
    if not 1 <= fe[4 + shift] - fs[4 + shift] <= 16:
        _fail(p, K_ID_CARD, R_GENDER)
        return
    if not 1 <= fe[5 + shift] - fs[5 + shift] <= 300:
        _fail(p, K_ID_CARD, R_ADDRESS)
        return
    if not _card_date_ok(c + fs[6 + shift], fe[6 + shift] - fs[6 + shift]):
        _fail(p, K_ID_CARD, R_ISSUE_DATE)
        return
    p.doc_start = <int32_t>fs[0]
    p.doc_len = 12
