"""Turning one device's POST body into scans the pipeline can batch, and into clear per-item rejections.

Two kinds of bad input are told apart on purpose:

* a broken *envelope* (not JSON, not an object, no ``scans`` list, wrong device id, too many items) refuses
  the whole request with 400: nothing in it can be trusted to be what the device meant;
* a broken *item* (bad scan id, unknown direction, time outside the accepted window) is rejected with its
  index and reason while every good item of the same request is kept.

A QR text that fails to parse is *not* a broken item: it is a real scan of a bad code, so it is stored with
the verdict ``malformed`` and its reason, which is exactly what tracing and fraud analysis want to see.

The accepted items come out column-wise (packed buffers and numpy arrays, no object per scan): the verify
stage, the WAL record and the store insert all work on whole columns, so the per-scan Python work of the
whole pipeline is the item check itself. That check has two implementations with one contract:
:func:`take_items_py` here, the reference, and ``engine._intake.take_items`` (``ext/_intake.pyx``), which
reads orjson's objects through the C API; the tests hold them to the same output, field for field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from engine import _accel
from engine.codes.verdicts import REASONS, VERDICTS
from engine.errors import PayloadError
from engine.ingest.items import (
    DIRECTIONS,
    E_DIRECTION,
    E_NOT_OBJECT,
    E_QR_LONG,
    E_QR_TYPE,
    E_SCAN_ID,
    E_SCAN_ID_MISSING,
    E_UNICODE,
    E_VENUE,
    E_VENUE_NOT_BOUND,
    MAX_QR_CHARS,
    MAX_VENUE_CHARS,
    VENUE_CHARS,
    Rejection,
    echo_scan_id,
    rejected_json,
    scan_time_ms,
    window_rejection,
)
from engine.store.columns import Strings

#: one rejected item: its index in the request, why, and its scan id as the device sent it (if echoable)
Rejected = tuple[int, Rejection, str | None]


def _empty_offsets() -> np.ndarray:
    return np.zeros(1, np.int64)


@dataclass
class Intake:
    """The accepted items of one request, column-wise, plus the rejected ones with reasons.

    ``codes``/``code_offsets`` are exactly a :class:`engine.verify.contract.CodeBatch`; ``venues`` is packed the same
    way. ``scan_texts`` keeps the device's own scan id strings (no copies), echoed in the answer.
    """

    device_id: str
    count: int = 0  # items in the request
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # request index of each accepted
    scan_ids: bytes = b""  # 16 raw bytes each
    scan_texts: list[str] = field(default_factory=list)
    codes: bytes = b""
    code_offsets: np.ndarray = field(default_factory=_empty_offsets)  # int64, n + 1
    venues: bytes = b""
    venue_offsets: np.ndarray = field(default_factory=_empty_offsets)  # int64, n + 1
    directions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))  # 1 in, 2 out
    scanned_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rejected: list[Rejected] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scan_texts)

    def scan_id(self, i: int) -> bytes:
        return self.scan_ids[16 * i : 16 * i + 16]

    def code(self, i: int) -> bytes:
        return self.codes[self.code_offsets[i] : self.code_offsets[i + 1]]

    def venue(self, i: int) -> str:
        return self.venues[self.venue_offsets[i] : self.venue_offsets[i + 1]].decode("utf-8")

    def take(self, positions: list[int]) -> Intake:
        """The accepted items at ``positions`` only (a request that repeats scans already seen): rare, so
        plain Python; the common all-new request never copies."""
        if len(positions) == len(self):
            return self
        pos = np.asarray(positions, np.int64)
        codes = Strings.pack([self.code(i) for i in positions])
        venues = Strings.pack([self.venues[self.venue_offsets[i] : self.venue_offsets[i + 1]] for i in positions])
        return Intake(
            device_id=self.device_id,
            count=self.count,
            index=self.index[pos],
            scan_ids=b"".join(self.scan_id(i) for i in positions),
            scan_texts=[self.scan_texts[i] for i in positions],
            codes=codes.data,
            code_offsets=codes.offsets,
            venues=venues.data,
            venue_offsets=venues.offsets,
            directions=self.directions[pos],
            scanned_ms=self.scanned_ms[pos],
        )

    def for_venues(self, device_venues: tuple[str, ...]) -> Intake:
        """Only the items for one of ``device_venues`` (a bound device's); the others become ``venue_not_bound``
        rejections. Checked here, after the item check, so that both item checks stay the same code path and the
        binding needs no parity of its own; a request whose venues are all allowed (the normal case) is returned
        as is."""
        allowed = frozenset(device_venues)
        venues = [self.venue(k) for k in range(len(self))]
        keep = [k for k, v in enumerate(venues) if v in allowed]
        if len(keep) == len(self):
            return self
        shown = ", ".join(device_venues[:5]) + (f" and {len(device_venues) - 5} more" if len(device_venues) > 5 else "")
        out = self.take(keep)
        refused = [
            (int(self.index[k]), E_VENUE_NOT_BOUND.detailed(f"{venues[k]!r} is not one of {shown}"), self.scan_texts[k])
            for k in range(len(self))
            if venues[k] not in allowed
        ]
        out.rejected = sorted([*self.rejected, *refused], key=lambda r: r[0])
        return out


def _uuid_bytes(value: Any) -> bytes | None:
    """The canonical 36-character form only (any case), parsed without building a uuid.UUID."""
    if type(value) is not str or len(value) != 36:
        return None
    if value[8] != "-" or value[13] != "-" or value[18] != "-" or value[23] != "-":
        return None
    try:
        raw = bytes.fromhex(value.replace("-", ""))
    except ValueError:
        return None
    return raw if len(raw) == 16 else None


class _Columns:
    __slots__ = ("codes", "directions", "index", "rejected", "scan_ids", "scan_texts", "scanned", "venues")

    def __init__(self) -> None:
        self.index: list[int] = []
        self.scan_ids: list[bytes] = []
        self.scan_texts: list[str] = []
        self.codes: list[bytes] = []
        self.venues: list[bytes] = []
        self.directions: list[int] = []
        self.scanned: list[int] = []
        self.rejected: list[Rejected] = []


def take_items_py(scans: list[Any], oldest_ms: int, newest_ms: int) -> tuple[Any, ...]:
    """The reference item check: every item of ``scans`` accepted into columns or rejected with its reason.

    Returns ``(index, scan_ids, scan_texts, codes, code_offsets, venues, venue_offsets, directions,
    scanned_ms, rejected)``, the fields of :class:`Intake` in that order.
    """
    out = _Columns()
    for i, item in enumerate(scans):
        error = _take_item(out, i, item, oldest_ms, newest_ms)
        if error is not None:
            out.rejected.append((i, error, echo_scan_id(item)))
    codes, venues = Strings.pack(out.codes), Strings.pack(out.venues)
    return (
        np.asarray(out.index, np.int32),
        b"".join(out.scan_ids),
        out.scan_texts,
        codes.data,
        codes.offsets,
        venues.data,
        venues.offsets,
        np.asarray(out.directions, np.uint8),
        np.asarray(out.scanned, np.int64),
        out.rejected,
    )


def _take_item(out: _Columns, i: int, item: Any, oldest_ms: int, newest_ms: int) -> Rejection | None:
    if not isinstance(item, dict):
        return E_NOT_OBJECT
    scan_id = _uuid_bytes(item.get("scan_id"))
    if scan_id is None:
        return E_SCAN_ID_MISSING if "scan_id" not in item else E_SCAN_ID
    qr = item.get("qr")
    if not isinstance(qr, str):
        return E_QR_TYPE
    if len(qr) > MAX_QR_CHARS:
        return E_QR_LONG
    venue = item.get("venue_id")
    if not isinstance(venue, str) or not 1 <= len(venue) <= MAX_VENUE_CHARS or any(c not in VENUE_CHARS for c in venue):
        return E_VENUE
    raw_direction = item.get("direction")
    direction = DIRECTIONS.get(raw_direction) if isinstance(raw_direction, str) else None
    if direction is None:
        return E_DIRECTION
    raw_scanned = item.get("scanned_at")
    scanned = scan_time_ms(raw_scanned)
    if isinstance(scanned, Rejection):
        return scanned
    if not oldest_ms <= scanned <= newest_ms:
        return window_rejection(scanned, oldest_ms, newest_ms, from_text=isinstance(raw_scanned, str))
    try:
        code = qr.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from \ud800-style escapes
        return E_UNICODE
    out.index.append(i)
    out.scan_ids.append(scan_id)
    out.scan_texts.append(item["scan_id"])
    out.codes.append(code)
    out.venues.append(venue.encode("ascii"))
    out.directions.append(direction)
    out.scanned.append(scanned)
    return None


def parse_body(
    body: bytes,
    *,
    header_device_id: str,
    max_items: int,
    now_ms: int,
    oldest_ms: int,
    skew_ms: int,
) -> Intake:
    """Validate a ``POST /v1/scans`` body; raise :class:`PayloadError` only for envelope faults."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PayloadError('body must be a JSON object with "device_id" and "scans"')
    device_id = doc.get("device_id")
    if device_id != header_device_id:
        raise PayloadError('"device_id" must equal the X-Device-Id the request was signed with')
    scans = doc.get("scans")
    if not isinstance(scans, list):
        raise PayloadError('"scans" must be a list')
    if not scans:
        raise PayloadError('"scans" is empty')
    if len(scans) > max_items:
        raise PayloadError(f"{len(scans)} scans in one request; the limit is {max_items}")
    cols = take_items(scans, oldest_ms, now_ms + skew_ms)
    return Intake(device_id, len(scans), *cols)


def render_answer_py(
    count: int,
    index: np.ndarray,
    scan_texts: list[str],
    rejected: list[Rejected],
    stored: np.ndarray,
    verdict: np.ndarray,
    reason: np.ndarray,
) -> bytes:
    """The reference 202 body: counts, then one result per item in request order (stored / duplicate /
    rejected). ``index``/``scan_texts`` are the accepted items (``Intake``), the rest their answers.

    A rejected item says why twice: ``reason`` (a code from ``engine.ingest.items.REJECTIONS``) for the device's
    software, ``error`` for the person reading its log, plus its ``scan_id`` when the device sent one."""
    results: list[dict[str, object] | None] = [None] * count
    for i, rejection, echo in rejected:
        results[i] = rejected_json(i, rejection, echo)
    new = stored.tolist()
    for i, text, is_new, v, r in zip(index.tolist(), scan_texts, new, verdict.tolist(), reason.tolist(), strict=True):
        results[i] = {
            "index": i,
            "scan_id": text,
            "status": "stored" if is_new else "duplicate",
            "verdict": VERDICTS[v],
            "reason": REASONS[r],
        }
    n_stored = sum(new)
    return orjson.dumps(
        {"stored": n_stored, "duplicates": len(new) - n_stored, "rejected": len(rejected), "results": results}
    )


# -- the one switch (engine._accel) --------------------------------------------------------------------------------
TakeItems = Callable[[list[Any], int, int], tuple[Any, ...]]
RenderAnswer = Callable[[int, np.ndarray, list[str], list[Rejected], np.ndarray, np.ndarray, np.ndarray], bytes]
_compiled = _accel.compiled("_intake")
take_items: TakeItems = take_items_py if _compiled is None else _compiled.take_items
render_answer: RenderAnswer = render_answer_py if _compiled is None else _compiled.render_answer
TAKE_ITEMS_IMPLEMENTATION = _accel.implementation("_intake")
