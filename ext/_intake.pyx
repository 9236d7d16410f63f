# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled item check for ``POST /v1/scans``: the contract of ``engine.ingest.intake.take_items_py``, column for column.

Why compiled: every scan of every request passes here on the event loop, which is also what parses HTTP and
answers devices. The reference spends its time per scan on isinstance checks, a generator over the venue's
characters, ``bytes.fromhex`` and six list appends; here the same checks read orjson's objects through the
C API (an ASCII ``str`` is its own UTF-8, so nothing is encoded twice) and write straight into packed
buffers (README, "Measured"). The rejections (code and text) come from ``engine.ingest.items`` so both paths say
the same words, and the rare RFC 3339 ``scanned_at``, the scan id echo of a rejected item and its answer go back
to the same functions the reference uses (rejects are rare; the accepted path never calls Python).
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.long cimport PyLong_Check
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.stdlib cimport free, realloc
from libc.stdio cimport snprintf
from libc.string cimport memcpy

import numpy as np

import orjson

from engine.codes.verdicts import REASONS, VERDICTS
from engine.ingest.items import (
    DIRECTIONS,
    E_DIRECTION,
    E_NOT_OBJECT,
    E_QR_LONG,
    E_QR_TYPE,
    E_SCAN_ID,
    E_SCAN_ID_MISSING,
    E_TIME,
    E_UNICODE,
    E_VENUE,
    MAX_QR_CHARS,
    MAX_VENUE_CHARS,
    VENUE_CHARS,
    echo_scan_id,
    rejected_json,
    scan_time_ms,
    window_rejection,
)

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    bint PyUnicode_Check(object o)
    bint PyUnicode_CheckExact(object o)
    bint PyDict_Check(object o)
    bint PyBool_Check(object o)

cdef extern from *:
    """
    static inline const char* engine_ascii_data(PyObject* o) { return (const char*)PyUnicode_DATA(o); }
    """
    const char* engine_ascii_data(object o)

cdef uint8_t VENUE_OK[256]
cdef signed char HEX[256]


cdef void _init_tables():
    """The venue table from the reference's own character set (``items.VENUE_CHARS``), so they cannot differ."""
    cdef int c
    for c in range(256):
        VENUE_OK[c] = 0
        HEX[c] = -1
    for ch in VENUE_CHARS:
        VENUE_OK[ord(ch)] = 1
    for c in range(ord("0"), ord("9") + 1):
        HEX[c] = c - ord("0")
    for c in range(6):
        HEX[ord("a") + c] = 10 + c
        HEX[ord("A") + c] = 10 + c


_init_tables()

cdef object _DIRECTIONS = DIRECTIONS
cdef Py_ssize_t _MAX_QR = MAX_QR_CHARS
cdef Py_ssize_t _MAX_VENUE = MAX_VENUE_CHARS


cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef int _reserve(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap
    cdef char* p
    if b.size + extra <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 4096
    while cap < b.size + extra:
        cap *= 2
    p = <char*>realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data, b.cap = p, cap
    return 0


cdef inline int _append(Buf* b, const char* src, Py_ssize_t n) except -1:
    _reserve(b, n)
    memcpy(b.data + b.size, src, n)
    b.size += n
    return 0


cdef inline bint _uuid_into(object value, uint8_t* out):
    """The canonical 8-4-4-4-12 form (any case) into 16 bytes; False if it is anything else."""
    cdef const char* s
    cdef int i, j = 0, hi, lo
    if not PyUnicode_CheckExact(value) or PyUnicode_GET_LENGTH(value) != 36 or not PyUnicode_IS_ASCII(value):
        return False
    s = engine_ascii_data(value)
    if s[8] != b"-" or s[13] != b"-" or s[18] != b"-" or s[23] != b"-":
        return False
    i = 0
    while i < 36:
        if i == 8 or i == 13 or i == 18 or i == 23:
            i += 1
            continue
        hi = HEX[<uint8_t>s[i]]
        lo = HEX[<uint8_t>s[i + 1]]
        if hi < 0 or lo < 0:  # every group has an even length, so a pair never straddles a dash
            return False
        out[j] = <uint8_t>((hi << 4) | lo)
        j += 1
        i += 2
    return j == 16


cdef inline bint _venue_ok(object venue):
    cdef Py_ssize_t n, k
    cdef const char* s
    if not PyUnicode_Check(venue) or not PyUnicode_IS_ASCII(venue):
        return False
    n = PyUnicode_GET_LENGTH(venue)
    if n < 1 or n > _MAX_VENUE:
        return False
    s = engine_ascii_data(venue)
    for k in range(n):
        if not VENUE_OK[<uint8_t>s[k]]:
            return False
    return True


def take_items(list scans, int64_t oldest_ms, int64_t newest_ms):
    """Same contract and output as ``engine.ingest.intake.take_items_py``."""
    cdef Py_ssize_t n = len(scans), i, k = 0, qlen, vlen
    cdef Buf codes, venues
    cdef object item, value, qr, venue, scanned_obj, d
    cdef uint8_t uuid_raw[16]
    cdef int overflow
    cdef bint from_text
    cdef long long scanned
    cdef const char* utf8
    cdef int64_t[::1] code_off, venue_off, scanned_v
    cdef int32_t[::1] index_v
    cdef uint8_t[::1] dir_v
    cdef uint8_t direction
    codes.data = NULL
    codes.size = codes.cap = 0
    venues.data = NULL
    venues.size = venues.cap = 0
    index = np.empty(n, np.int32)
    code_offsets = np.zeros(n + 1, np.int64)
    venue_offsets = np.zeros(n + 1, np.int64)
    directions = np.empty(n, np.uint8)
    scanned_ms = np.empty(n, np.int64)
    index_v, code_off, venue_off, dir_v, scanned_v = index, code_offsets, venue_offsets, directions, scanned_ms
    ids = bytearray(16 * n)
    cdef unsigned char[::1] ids_v = ids
    texts = []
    rejected = []
    try:
        for i in range(n):
            item = scans[i]
            if not PyDict_Check(item):
                rejected.append((i, E_NOT_OBJECT, echo_scan_id(item)))
                continue
            value = (<dict>item).get("scan_id")
            if not _uuid_into(value, uuid_raw):
                rejected.append((i, E_SCAN_ID if "scan_id" in <dict>item else E_SCAN_ID_MISSING, echo_scan_id(item)))
                continue
            qr = (<dict>item).get("qr")
            if not PyUnicode_Check(qr):
                rejected.append((i, E_QR_TYPE, echo_scan_id(item)))
                continue
            if PyUnicode_GET_LENGTH(qr) > _MAX_QR:
                rejected.append((i, E_QR_LONG, echo_scan_id(item)))
                continue
            venue = (<dict>item).get("venue_id")
            if not _venue_ok(venue):
                rejected.append((i, E_VENUE, echo_scan_id(item)))
                continue
            d = (<dict>item).get("direction")
            d = _DIRECTIONS.get(d) if PyUnicode_Check(d) else None
            if d is None:
                rejected.append((i, E_DIRECTION, echo_scan_id(item)))
                continue
            direction = <uint8_t>(<long>d)
            scanned_obj = (<dict>item).get("scanned_at")
            from_text = False
            if PyBool_Check(scanned_obj):
                rejected.append((i, E_TIME, echo_scan_id(item)))
                continue
            if not PyLong_Check(scanned_obj):
                if not PyUnicode_Check(scanned_obj):
                    rejected.append((i, E_TIME, echo_scan_id(item)))
                    continue
                from_text = True
                scanned_obj = scan_time_ms(scanned_obj)  # RFC 3339: rare, so the reference parser
                if not PyLong_Check(scanned_obj):  # its Rejection (no zone, not a time)
                    rejected.append((i, scanned_obj, echo_scan_id(item)))
                    continue
            scanned = PyLong_AsLongLongAndOverflow(scanned_obj, &overflow)
            if overflow or scanned < oldest_ms or scanned > newest_ms:
                # rare: the reference words it (which bound, by how much, a unit mistake), on the Python int
                rejected.append(
                    (i, window_rejection(scanned_obj, oldest_ms, newest_ms, from_text=from_text), echo_scan_id(item))
                )
                continue
            try:
                utf8 = PyUnicode_AsUTF8AndSize(qr, &qlen)
            except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes
                rejected.append((i, E_UNICODE, echo_scan_id(item)))
                continue
            _append(&codes, utf8, qlen)
            vlen = PyUnicode_GET_LENGTH(venue)
            _append(&venues, engine_ascii_data(venue), vlen)
            memcpy(&ids_v[16 * k], uuid_raw, 16)
            texts.append(value)
            index_v[k] = <int32_t>i
            code_off[k + 1] = codes.size
            venue_off[k + 1] = venues.size
            dir_v[k] = direction
            scanned_v[k] = scanned
            k += 1
        code_bytes = PyBytes_FromStringAndSize(codes.data, codes.size) if codes.size else b""
        venue_bytes = PyBytes_FromStringAndSize(venues.data, venues.size) if venues.size else b""
    finally:
        free(codes.data)
        free(venues.data)
    return (
        index[:k].copy() if k < n else index,
        bytes(ids[: 16 * k]),
        texts,
        code_bytes,
        code_offsets[: k + 1].copy() if k < n else code_offsets,
        venue_bytes,
        venue_offsets[: k + 1].copy() if k < n else venue_offsets,
        directions[:k].copy() if k < n else directions,
        scanned_ms[:k].copy() if k < n else scanned_ms,
        rejected,
    )


# -- the 202 body ---------------------------------------------------------------------------------------------
cdef list _VERDICT_JSON = [('"verdict":"%s","reason":"' % v).encode() for v in VERDICTS]
cdef list _REASON_JSON = [('%s"}' % r).encode() for r in REASONS]


cdef inline int _append_obj(Buf* b, bytes s) except -1:
    return _append(b, s, len(s))


cdef inline int _append_int(Buf* b, long long v) except -1:
    cdef char tmp[24]
    cdef int k = snprintf(tmp, 24, "%lld", v)
    return _append(b, tmp, k)


def render_answer(Py_ssize_t count, index, list scan_texts, list rejected, stored, verdict, reason):
    """Same contract and bytes as ``engine.ingest.intake.render_answer_py`` (orjson's compact form).

    Why compiled: the reference builds a dict per scan and lets orjson walk it, on the event loop. Everything in an accepted item is known to need no JSON escaping (the scan id passed the UUID check,
    labels are identifiers), so it is written directly; rejected items carry free text (and the device's own scan id
text) and go through the reference's ``rejected_json`` and orjson.
    """
    cdef const int32_t[::1] idx = index
    cdef const uint8_t[::1] new = stored.view(np.uint8)
    cdef const uint8_t[::1] ver = verdict
    cdef const uint8_t[::1] rea = reason
    cdef Py_ssize_t n = idx.shape[0], k = 0, r = 0, i, nrej = len(rejected), n_stored = 0
    cdef Buf out
    cdef const char* text
    cdef Py_ssize_t tlen
    for i in range(n):
        n_stored += new[i]
    out.data = NULL
    out.size = out.cap = 0
    try:
        _reserve(&out, 64 + 128 * count)
        _append(&out, b'{"stored":', 10)
        _append_int(&out, n_stored)
        _append(&out, b',"duplicates":', 14)
        _append_int(&out, n - n_stored)
        _append(&out, b',"rejected":', 12)
        _append_int(&out, nrej)
        _append(&out, b',"results":[', 12)
        for i in range(count):
            if i:
                _append(&out, b",", 1)
            if k < n and idx[k] == i:
                _append(&out, b'{"index":', 9)
                _append_int(&out, i)
                _append(&out, b',"scan_id":"', 12)
                text = PyUnicode_AsUTF8AndSize(scan_texts[k], &tlen)
                _append(&out, text, tlen)
                if new[k]:
                    _append(&out, b'","status":"stored",', 20)
                else:
                    _append(&out, b'","status":"duplicate",', 23)
                _append_obj(&out, _VERDICT_JSON[ver[k]])
                _append_obj(&out, _REASON_JSON[rea[k]])
                k += 1
            elif r < nrej and rejected[r][0] == i:
                _append_obj(&out, orjson.dumps(rejected_json(i, rejected[r][1], rejected[r][2])))
                r += 1
            else:
                raise ValueError(f"item {i} has neither an answer nor a rejection")
        _append(&out, b"]}", 2)
        return PyBytes_FromStringAndSize(out.data, out.size)
    finally:
        free(out.data)
