"""The WAL record of one verified batch: every column the store needs, binary and column-wise.

Layout (version 3)::

    b"VQR3" | u32 header length | header (JSON) | the column buffers, back to back

The header holds the row count, the small dictionaries (device ids; key ids with their issuers) and the byte
length of every buffer, in :data:`_BUFFERS` order; each buffer is a numpy array's raw little-endian bytes or
a packed string column. Encoding and decoding are a fixed number of array operations per batch, whatever its
size: the v1 record (JSON of per-row lists) cost a Python loop per row to write and read back, this one is
about half its size and a few array operations per batch. Names, birth dates and addresses never reach it:
the QR id is cut out of the code, the document number only survives as the keyed person hash.

A batch with link keys (docs/payload.md section 5, Rule 2) carries them as one more buffer after the others,
announced by ``"link_key": true`` in the header; a record without it links nothing. An engine from before that
addition splits the buffers by the header's sizes and reads the ones it knows, so it still drains such a
record (dropping only the links).

Version 3 (issue 12) has version 2's layout and says in its header which identity its scans were accepted
under: ``"scan_key": ["device_id", "scan_id"]``. An engine from before that change keyed scans by scan id alone
(its recent-id map and the store's sorting key); it refuses a version 3 record ("not a batch record this engine
understands") instead of replaying it under the old identity after a downgrade. Going up needs nothing: every
record of every version carries each row's device, so version 2 and version 1 records (JSON, the oldest
engines) are still read, and the scans in them are stored and remembered by (device, scan id) like new ones.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import orjson

from engine.codes.trust import TrustTable
from engine.codes.verdicts import KINDS, REASONS, VERDICTS, Verdict
from engine.errors import WALError
from engine.store.columns import Rows, Strings, dictionary_codes
from engine.verify.contract import BatchResult, CodeBatch

MAGIC = b"VQR3"
#: version 2: the same layout, written before scans were identified by (device, scan id); still read
MAGIC_V2 = b"VQR2"
#: the identity every scan in a version 3 record was accepted under (recent-id map, store sorting key)
SCAN_KEY = ["device_id", "scan_id"]
_HEADER_LEN = struct.Struct("<I")
# (field, dtype); "s" marks a packed string column (offsets buffer, then data buffer), "b16" 16 bytes a row
_BUFFERS: tuple[tuple[str, str], ...] = (
    ("scan_id", "b16"),
    ("device_code", "<i4"),
    ("venue_id", "s"),
    ("direction", "u1"),
    ("scanned_ms", "<i8"),
    ("received_ms", "<i8"),
    ("verdict", "u1"),
    ("reason", "u1"),
    ("kind", "u1"),
    ("person_key", "b16"),
    ("qr_id", "s"),
    ("key_code", "<i4"),
    ("iat_s", "<i8"),
    ("exp_s", "<i8"),
)


def claimed_kid(code: bytes) -> str:
    """The key id an unknown-key code claims, kept for forensics (which fake or retired key is in use)."""
    return code.rsplit(b"|", 1)[-1].split(b".")[1].decode("ascii")


def batch_rows(
    *,
    scan_id: bytes,
    device_code: np.ndarray,
    devices: list[str],
    venue_id: Strings,
    direction: np.ndarray,
    scanned_ms: np.ndarray,
    received_ms: np.ndarray,
    batch: CodeBatch,
    result: BatchResult,
    trust: TrustTable,
) -> Rows:
    """A verified batch as store rows: the verifier's columns plus the request columns, per batch not per row.

    Key dictionary: entry 0 is "no key" (unsigned, CCCD, malformed codes); entry ``k + 1`` is trust-table key
    ``k``; codes signed by a key we do not know get an entry for the key id they claim.
    """
    key_ids = ["", *(trust.kid_text(k) for k in range(len(trust)))]
    issuers = ["", *trust.issuers]
    key_code = result.key_index.astype(np.int32) + 1
    unknown = np.flatnonzero(result.verdict == Verdict.UNKNOWN_KEY)
    if unknown.size:
        extra: dict[str, int] = {}
        for i in unknown.tolist():
            kid = claimed_kid(batch.code(i))
            if kid not in extra:
                extra[kid] = len(key_ids)
                key_ids.append(kid)
                issuers.append("")
            key_code[i] = extra[kid]
    return Rows(
        scan_id=scan_id,
        device_code=device_code,
        devices=devices,
        venue_id=venue_id,
        direction=direction,
        scanned_ms=scanned_ms,
        received_ms=received_ms,
        verdict=result.verdict,
        reason=result.reason,
        kind=result.kind,
        person_key=result.person_key.tobytes(),
        qr_id=Strings.gather(batch.buf, result.qid_start, result.qid_end),
        key_code=key_code,
        key_ids=key_ids,
        issuers=issuers,
        iat_s=result.iat,
        exp_s=result.exp,
        # most codes mask their number and link nothing: a batch without a link key carries none
        link_key=result.link_key.tobytes() if result.link_key.any() else b"",
    )


def encode(rows: Rows) -> bytes:
    """One WAL record (version 3) holding ``rows``."""
    buffers: list[bytes] = []
    for name, kind in _BUFFERS:
        value = getattr(rows, name)
        if kind == "s":
            buffers += [value.offsets.astype("<i8").tobytes(), value.data]
        elif kind == "b16":
            buffers.append(value)
        else:
            buffers.append(np.ascontiguousarray(value, kind).tobytes())
    optional: dict[str, bool] = {}
    if rows.link_key:  # after the fixed buffers: an engine that does not know it reads the rest and ignores it
        buffers.append(rows.link_key)
        optional["link_key"] = True
    header = orjson.dumps(
        {
            "n": len(rows),
            "scan_key": SCAN_KEY,
            "devices": rows.devices,
            "key_ids": rows.key_ids,
            "issuers": rows.issuers,
            "sizes": [len(b) for b in buffers],
            **optional,
        }
    )
    return b"".join([MAGIC, _HEADER_LEN.pack(len(header)), header, *buffers])


def decode(payload: bytes) -> Rows:
    """Rows of one WAL record, version 3, 2 or 1; :class:`WALError` for anything else."""
    magic = payload[:4]
    if magic not in (MAGIC, MAGIC_V2):
        if payload[:1] == b"{":
            return _decode_v1(payload)
        raise WALError(f"WAL record starts with {magic!r}: not a batch record this engine understands")
    try:
        (hlen,) = _HEADER_LEN.unpack_from(payload, 4)
        header = orjson.loads(payload[8 : 8 + hlen])
        n, sizes = int(header["n"]), header["sizes"]
        if magic == MAGIC and header["scan_key"] != SCAN_KEY:
            raise WALError(f"WAL record v3 keys its scans by {header['scan_key']!r}, this engine by {SCAN_KEY!r}")
        pos = 8 + hlen
        chunks = []
        for size in sizes:
            chunks.append(payload[pos : pos + size])
            pos += size
        if pos != len(payload):
            raise ValueError(f"buffers end at byte {pos} of {len(payload)}")
        fields: dict[str, object] = {}
        it = iter(chunks)
        for name, kind in _BUFFERS:
            if kind == "s":
                offsets = np.frombuffer(next(it), "<i8")
                fields[name] = Strings(next(it), offsets)
            elif kind == "b16":
                fields[name] = next(it)
            else:
                fields[name] = np.frombuffer(next(it), kind)
        if header.get("link_key"):
            fields["link_key"] = next(it)
        rows = Rows(devices=header["devices"], key_ids=header["key_ids"], issuers=header["issuers"], **fields)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, StopIteration, struct.error, orjson.JSONDecodeError) as exc:
        raise WALError(f"damaged batch record: {exc}") from None
    if len(rows) != n or len(rows.scan_id) != 16 * n or len(rows.qr_id) != n or len(rows.link_key) not in (0, 16 * n):
        raise WALError(f"damaged batch record: columns do not hold {n} rows")
    return rows


def decode_many(payloads: Sequence[bytes]) -> Rows:
    return Rows.concat([decode(p) for p in payloads])


def _decode_v1(payload: bytes) -> Rows:
    """A record written by an engine before version 2 (JSON lists, labels as numbers)."""
    d = orjson.loads(payload)
    if d.get("v") != 1:
        raise WALError(f"WAL record version {d.get('v')!r} is not understood by this engine")
    for name, table in (("verdict", VERDICTS), ("reason", REASONS), ("kind", KINDS)):
        if any(not 0 <= v < len(table) for v in d[name]):
            raise WALError(f"WAL record v1 has an unknown {name} code")
    device_code, devices = dictionary_codes(d["device_id"])
    key_code, keys = dictionary_codes(d["key_id"], d["issuer"])
    return Rows(
        scan_id=bytes.fromhex(d["scan_id"]),
        device_code=device_code,
        devices=[dev[0] for dev in devices],
        venue_id=Strings.pack([v.encode("utf-8") for v in d["venue_id"]]),
        direction=np.array(d["direction"], np.uint8),
        scanned_ms=np.array(d["scanned_ms"], np.int64),
        received_ms=np.array(d["received_ms"], np.int64),
        verdict=np.array(d["verdict"], np.uint8),
        reason=np.array(d["reason"], np.uint8),
        kind=np.array(d["kind"], np.uint8),
        person_key=bytes.fromhex(d["person_key"]),
        qr_id=Strings.pack([q.encode("utf-8") for q in d["qr_id"]]),
        key_code=key_code,
        key_ids=[k[0] for k in keys],
        issuers=[k[1] for k in keys],
        iat_s=np.array(d["iat"], np.int64),
        exp_s=np.array(d["exp"], np.int64),
    )
