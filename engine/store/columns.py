"""Rows of the ``scans`` table, column-wise: the one shape the WAL record, the store insert and the tests share.

Why this shape: the store insert used to turn every value into a Python object (ints for UUIDs, one ``bytes``
per person key, one label per enum) for clickhouse-connect's Native writer, a Python loop per row on the
store thread, and the WAL record was JSON that had to be parsed back into lists first. Here every column is
a numpy array or a packed buffer from the moment the verify stage produces it; concatenating batches is a few
``np.concatenate`` calls whatever the row count, and :func:`to_arrow` wraps the buffers in an Arrow table
without copying them. ClickHouse reads Arrow natively (``INSERT ... FORMAT Arrow``, through clickhouse-connect's
``insert_arrow``, on chdb and on a server alike), converting ``FixedSizeBinary(16)`` to ``UUID``, ``int8`` to
``Enum8`` and dictionary arrays to ``LowCardinality(String)``.

:func:`rows_from_columns` is the friendly door for tests and benchmarks: a mapping of lists or arrays in many
forms (``uuid.UUID`` or 16-byte ids, labels or codes, datetimes or ticks), checked strictly, because a wrong
value must fail the batch rather than be stored as something else (an unknown verdict label would otherwise
become ``ok``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from engine.codes.verdicts import CodeKind, Reason, Verdict
from engine.errors import StoreError

#: The scans columns the pipeline writes, in table order: names and types are the contract (docs/cluster.md).
SCAN_COLUMNS: tuple[str, ...] = (
    "scan_id", "device_id", "venue_id", "direction", "scanned_at", "received_at", "verdict", "reason",
    "code_kind", "person_key", "qr_id", "key_id", "issuer", "code_iat", "code_exp",
)  # fmt: skip
#: Every column of ``scans`` in table order: the pipeline's columns, then ``scan_device``, the device half of the
#: scan's identity in the sorting key (migration 0008), which :func:`to_arrow` fills from ``device_id``.
TABLE_COLUMNS: tuple[str, ...] = (*SCAN_COLUMNS, "scan_device", "link_key")
#: Columns a caller of :func:`rows_from_columns` may leave out: ``link_key`` (16 zero bytes: links nothing).
OPTIONAL_COLUMNS: tuple[str, ...] = ("link_key",)
ENUM_CODES: dict[str, dict[str, int]] = {
    "direction": {"in": 1, "out": 2},
    "verdict": {v.label: int(v) for v in Verdict},
    "reason": {r.label: int(r) for r in Reason},
    "code_kind": {k.label: int(k) for k in CodeKind},
}
_UINT32_MAX = 2**32 - 1  # DateTime is UInt32 seconds


@dataclass(frozen=True)
class Strings:
    """A column of strings as one UTF-8 buffer and ``n + 1`` int64 offsets (Arrow's layout, wider offsets)."""

    data: bytes
    offsets: np.ndarray

    @classmethod
    def pack(cls, parts: Sequence[bytes]) -> Strings:
        offsets = np.zeros(len(parts) + 1, np.int64)
        if parts:
            np.cumsum([len(p) for p in parts], out=offsets[1:])
        return cls(b"".join(parts), offsets)

    @classmethod
    def gather(cls, buf: bytes, starts: np.ndarray, ends: np.ndarray) -> Strings:
        """The spans ``buf[starts[i]:ends[i]]`` packed, in one vectorised copy (QR ids out of a code batch)."""
        lengths = (np.asarray(ends, np.int64) - np.asarray(starts, np.int64)).clip(0)
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        if total == 0:
            return cls(b"", offsets)
        index = np.repeat(np.asarray(starts, np.int64) - offsets[:-1], lengths) + np.arange(total)
        return cls(np.frombuffer(buf, np.uint8)[index].tobytes(), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.data[self.offsets[i] : self.offsets[i + 1]].decode("utf-8")

    def to_list(self) -> list[str]:
        return [self[i] for i in range(len(self))]

    @staticmethod
    def concat(parts: Sequence[Strings]) -> Strings:
        if len(parts) == 1:
            return parts[0]
        offsets = concat_offsets([p.offsets for p in parts], [len(p.data) for p in parts])
        return Strings(b"".join(p.data for p in parts), offsets)


def concat_offsets(parts: Sequence[np.ndarray], sizes: Sequence[int]) -> np.ndarray:
    """Offsets of buffers laid end to end: each part's offsets (``n + 1``, from 0) shifted by what precedes it."""
    shifts = np.cumsum([0, *sizes[:-1]])
    return np.concatenate([parts[0][:1], *(p[1:] + s for p, s in zip(parts, shifts, strict=True))])


@dataclass(frozen=True)
class Rows:
    """``n`` scans rows. ``device_code`` indexes ``devices``; ``key_code`` indexes ``key_ids`` and ``issuers``
    (low-cardinality columns travel as a dictionary plus small codes, as ClickHouse stores them)."""

    scan_id: bytes  # 16 bytes per row, RFC 4122 byte order
    device_code: np.ndarray  # int32
    devices: list[str]
    venue_id: Strings
    direction: np.ndarray  # uint8: 1 in, 2 out
    scanned_ms: np.ndarray  # int64 epoch ms
    received_ms: np.ndarray  # int64 epoch ms
    verdict: np.ndarray  # uint8 Verdict
    reason: np.ndarray  # uint8 Reason
    kind: np.ndarray  # uint8 CodeKind
    person_key: bytes  # 16 bytes per row
    qr_id: Strings
    key_code: np.ndarray  # int32
    key_ids: list[str]
    issuers: list[str]
    iat_s: np.ndarray  # int64 epoch s
    exp_s: np.ndarray  # int64 epoch s
    # 16 bytes per row: the link key of a genuine code printing its document number whole (docs/payload.md
    # section 5, Rule 2), zeros for every other; b"" when no row of the batch has one (the usual case).
    link_key: bytes = b""

    def link_keys(self) -> bytes:
        """``link_key`` with its rows spelled out (zeros where none)."""
        return self.link_key or bytes(16 * len(self))

    def __len__(self) -> int:
        return len(self.verdict)

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        """One batch from several, merging the dictionaries (a few entries each) and re-coding their codes."""
        if len(parts) == 1:
            return parts[0]
        devices, device_code = _merge_dicts([(p.devices,) for p in parts], [p.device_code for p in parts])
        keys, key_code = _merge_dicts([(p.key_ids, p.issuers) for p in parts], [p.key_code for p in parts])

        def cat(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts])

        return Rows(
            scan_id=b"".join(p.scan_id for p in parts),
            device_code=device_code,
            devices=[d[0] for d in devices],
            venue_id=Strings.concat([p.venue_id for p in parts]),
            direction=cat("direction"),
            scanned_ms=cat("scanned_ms"),
            received_ms=cat("received_ms"),
            verdict=cat("verdict"),
            reason=cat("reason"),
            kind=cat("kind"),
            person_key=b"".join(p.person_key for p in parts),
            qr_id=Strings.concat([p.qr_id for p in parts]),
            key_code=key_code,
            key_ids=[k[0] for k in keys],
            issuers=[k[1] for k in keys],
            iat_s=cat("iat_s"),
            exp_s=cat("exp_s"),
            link_key=b"".join(p.link_keys() for p in parts) if any(p.link_key for p in parts) else b"",
        )


def dictionary_codes(
    *columns: Sequence[str], seen: dict[tuple[str, ...], int] | None = None
) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Low-cardinality columns as int32 codes into their distinct entries (tuples across ``columns``), in order
    of first appearance; ``seen`` carries the entries over several calls (merging dictionaries)."""
    seen = {} if seen is None else seen
    codes = np.array([seen.setdefault(entry, len(seen)) for entry in zip(*columns, strict=True)], np.int32)
    return codes, list(seen)


def _merge_dicts(
    dicts: Sequence[tuple[list[str], ...]], codes: Sequence[np.ndarray]
) -> tuple[list[tuple[str, ...]], np.ndarray]:
    merged: dict[tuple[str, ...], int] = {}
    out = []
    for values, local in zip(dicts, codes, strict=True):
        mapping, _ = dictionary_codes(*values, seen=merged)
        out.append(mapping[local] if len(local) else local.astype(np.int32))
    return list(merged), np.concatenate(out)


# -- to Arrow -------------------------------------------------------------------------------------------------
def _fixed16(raw: bytes, n: int) -> pa.Array:
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(raw)])


def _strings(s: Strings) -> pa.Array:
    return pa.StringArray.from_buffers(len(s), pa.py_buffer(s.offsets.astype(np.int32)), pa.py_buffer(s.data))


def _dictionary(codes: np.ndarray, values: list[str]) -> pa.Array:
    """A dictionary column; ClickHouse refuses repeated dictionary values (``issuers`` shares ``key_code`` with
    ``key_ids``, so one issuer appears once per key of theirs), so repeats are folded first."""
    remap, unique = dictionary_codes(values)
    if len(unique) < len(values):
        codes, values = remap[codes], [u[0] for u in unique]
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(values, pa.string()))


def _times(ticks: np.ndarray, unit: str) -> pa.Array:
    return pa.array(np.asarray(ticks, np.int64), pa.timestamp(unit, "UTC"))


def to_arrow(rows: Rows) -> pa.Table:
    """The rows as an Arrow table in ``TABLE_COLUMNS`` order: buffers wrapped, not copied, per column."""
    n = len(rows)
    return pa.table(
        {
            "scan_id": _fixed16(rows.scan_id, n),
            "device_id": _dictionary(rows.device_code, rows.devices),
            "venue_id": _strings(rows.venue_id),
            "direction": pa.array(rows.direction.astype(np.int8)),
            "scanned_at": _times(rows.scanned_ms, "ms"),
            "received_at": _times(rows.received_ms, "ms"),
            "verdict": pa.array(rows.verdict.astype(np.int8)),
            "reason": pa.array(rows.reason.astype(np.int8)),
            "code_kind": pa.array(rows.kind.astype(np.int8)),
            "person_key": _fixed16(rows.person_key, n),
            "qr_id": _strings(rows.qr_id),
            "key_id": _dictionary(rows.key_code, rows.key_ids),
            "issuer": _dictionary(rows.key_code, rows.issuers),
            "code_iat": _times(np.clip(rows.iat_s, 0, _UINT32_MAX), "s"),
            "code_exp": _times(np.clip(rows.exp_s, 0, _UINT32_MAX), "s"),
            # the device half of the scan's identity in the tables' sorting keys (migration 0008)
            "scan_device": _dictionary(rows.device_code, rows.devices),
            # feeds identity_links for verified scans (migration 0009)
            "link_key": _fixed16(rows.link_keys(), n),
        }
    )


# -- from friendly columns (tests, benchmarks, tools) ---------------------------------------------------------
def _fail(message: str) -> StoreError:
    return StoreError(f"insert_scans: {message}")


def _fixed_bytes(name: str, values: Any, n: int) -> bytes:
    """``scan_id``/``person_key`` as 16 bytes per row, from ``uuid.UUID`` objects, 16-byte ``bytes`` or an
    ``(n, 16)`` uint8 array. Never ``ndarray.tolist()`` on an S16 array: numpy strips trailing NUL bytes."""
    if isinstance(values, np.ndarray):
        raw = np.ascontiguousarray(values).tobytes()
        if len(raw) != 16 * n:
            raise _fail(f"{name} array holds {len(raw)} bytes, expected {16 * n}")
        return raw
    out = []
    for v in values:
        if isinstance(v, uuid.UUID):
            out.append(v.bytes)
        elif isinstance(v, bytes | bytearray | memoryview):
            if len(v) != 16:
                raise _fail(f"every {name} must be exactly 16 bytes (FixedString(16) would pad or cut it silently)")
            out.append(bytes(v))
        elif isinstance(v, str) and name == "scan_id":
            try:
                out.append(uuid.UUID(v).bytes)
            except ValueError:
                raise _fail(f"scan_id {v!r} is not a UUID") from None
        else:
            raise _fail(f"{name} must be uuid.UUID or 16-byte bytes, not {type(v).__name__}")
    return b"".join(out)


def _enum_codes(name: str, values: Any) -> np.ndarray:
    """Labels or numbers to the stored numbers, strictly: an unknown one fails the batch."""
    codes = ENUM_CODES[name]
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        bad = np.setdiff1d(values, np.fromiter(codes.values(), np.int64))
        if bad.size:
            raise _fail(f"{name} has unknown code {int(bad[0])}")
        return values.astype(np.uint8)
    lookup: dict[Any, int] = {**codes, **{v: v for v in codes.values()}}
    try:
        return np.array([lookup[v] for v in (values.tolist() if isinstance(values, np.ndarray) else values)], np.uint8)
    except (KeyError, TypeError) as exc:
        raise _fail(f"{name} has unknown value {exc.args[0]!r} (known: {', '.join(codes)})") from None


def _ticks(name: str, values: Any, unit: str) -> np.ndarray:
    """Datetime column to integer ticks (``ms`` or ``s`` since the epoch, UTC); ints are taken as ticks already.
    A naive ``datetime`` means UTC here: the driver would otherwise read it in the server's zone."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "M":
            return values.astype(f"datetime64[{unit}]").astype(np.int64)
        if values.dtype.kind in "iu":
            return values.astype(np.int64)
        raise _fail(f"{name} must be datetime64 or integer ticks, not {values.dtype}")
    scale = 1000 if unit == "ms" else 1
    out: list[int] = []
    for v in values:
        if isinstance(v, datetime):
            aware = v if v.tzinfo is not None else v.replace(tzinfo=UTC)
            out.append(math.floor(aware.timestamp() * scale))
        elif isinstance(v, int | np.integer):
            out.append(int(v))
        else:
            raise _fail(f"{name} must hold datetimes or integer {unit} ticks, not {type(v).__name__}")
    return np.asarray(out, dtype=np.int64)


def _texts(values: Any) -> list[str]:
    return [str(v) for v in (values.tolist() if isinstance(values, np.ndarray) else values)]


def rows_from_columns(columns: Mapping[str, Any]) -> Rows:
    """A mapping of ``SCAN_COLUMNS`` to lists or arrays, checked (names, equal lengths, types, enum values)."""
    missing = [c for c in SCAN_COLUMNS if c not in columns]
    extra = sorted(set(columns) - set(SCAN_COLUMNS) - set(OPTIONAL_COLUMNS))
    if missing or extra:
        raise _fail(f"columns missing {missing} / unexpected {extra}")
    lengths = {c: len(columns[c]) for c in SCAN_COLUMNS}
    n = lengths["scan_id"]
    if any(v != n for v in lengths.values()):
        raise _fail(f"columns differ in length: {lengths}")
    devices = _texts(columns["device_id"])
    key_ids, issuers = _texts(columns["key_id"]), _texts(columns["issuer"])
    device_code, device_dict = dictionary_codes(devices)
    key_code, key_dict = dictionary_codes(key_ids, issuers)
    return Rows(
        scan_id=_fixed_bytes("scan_id", columns["scan_id"], n),
        device_code=device_code,
        devices=[d[0] for d in device_dict],
        venue_id=Strings.pack([v.encode("utf-8") for v in _texts(columns["venue_id"])]),
        direction=_enum_codes("direction", columns["direction"]),
        scanned_ms=_ticks("scanned_at", columns["scanned_at"], "ms"),
        received_ms=_ticks("received_at", columns["received_at"], "ms"),
        verdict=_enum_codes("verdict", columns["verdict"]),
        reason=_enum_codes("reason", columns["reason"]),
        kind=_enum_codes("code_kind", columns["code_kind"]),
        person_key=_fixed_bytes("person_key", columns["person_key"], n),
        qr_id=Strings.pack([v.encode("utf-8") for v in _texts(columns["qr_id"])]),
        key_code=key_code,
        key_ids=[k[0] for k in key_dict],
        issuers=[k[1] for k in key_dict],
        iat_s=_ticks("code_iat", columns["code_iat"], "s"),
        exp_s=_ticks("code_exp", columns["code_exp"], "s"),
        link_key=_fixed_bytes("link_key", columns["link_key"], n) if "link_key" in columns else b"",
    )
