"""The item contract of ``POST /v1/scans``: limits, accepted values and every way an item is rejected.

Shared by the reference item check (``engine.ingest.intake.take_items_py``) and its compiled twin
(``ext/_intake.pyx``), which imports them from here at module level, so both paths say the same thing and
neither imports the other. The OpenAPI document (``engine.web.openapi``) and ``docs/item-rejections.md`` are
generated from the same objects, so the published contract cannot drift from the check.

A rejection is a :class:`Rejection`: a stable machine-readable ``code`` a device vendor can switch on, the
field at fault, and an English sentence for people. The codes are an API: they are only ever appended to
:data:`REJECTIONS`, never renamed. A check that wants to say *by how much* (a window bound, say) keeps the code
and specialises the text with :meth:`Rejection.detailed`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.clock import parse_iso
from engine.codes.venues import MAX_VENUE_CHARS as MAX_VENUE_CHARS  # the compiled twin imports it from here
from engine.codes.venues import VENUE_CHARS as VENUE_CHARS
from engine.codes.venues import VENUE_PATTERN as VENUE_PATTERN
from engine.codes.venues import VENUE_RULE

MAX_QR_CHARS = 2048  # far above any valid code (512 bytes); longer text is an item error, not a stored scan
DIRECTIONS = {"in": 1, "out": 2}
#: the canonical scan id form: any case, 8-4-4-4-12 hex digits
SCAN_ID_PATTERN = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
#: a rejected item's scan id is echoed only when it is a string of at most this many characters (valid UTF-8):
#: enough for any id a device could mean, and no way to make the answer reflect megabytes back
MAX_ECHO_SCAN_ID_CHARS = 64

#: ``scanned_at`` as text: RFC 3339 with a zone (``Z`` or ``±HH:MM``). A zone-less time is refused, not read as
#: UTC: a scanner set to Vietnamese local time would otherwise put every scan 7 hours off, silently, and tracing
#: would pair the wrong people. ASCII digits only (``\d`` would also match other scripts' digits).
SCANNED_AT_PATTERN = (
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_EPOCH, _MS = datetime(1970, 1, 1, tzinfo=UTC), timedelta(milliseconds=1)
_SCANNED_AT = re.compile(SCANNED_AT_PATTERN)
_SCANNED_AT_NO_ZONE = re.compile(SCANNED_AT_PATTERN.removesuffix("([Zz]|[+-][0-9]{2}:[0-9]{2})$") + "$")


@dataclass(frozen=True)
class Rejection:
    """One way an item is refused: ``code`` (stable, for machines), ``field`` at fault, ``message`` (for people)."""

    code: str
    field: str
    message: str

    def detailed(self, detail: str) -> Rejection:
        """The same rejection with the specifics of this item appended to its text (the code never changes)."""
        return replace(self, message=f"{self.message}: {detail}")


E_NOT_OBJECT = Rejection("not_object", "item", "item must be an object")
E_SCAN_ID_MISSING = Rejection("scan_id_missing", "scan_id", "scan_id is missing")
E_SCAN_ID = Rejection("scan_id_invalid", "scan_id", "scan_id is not a UUID (8-4-4-4-12 hex digits)")
E_QR_TYPE = Rejection("qr_not_string", "qr", "qr must be a string (the text the scanner read)")
E_QR_LONG = Rejection("qr_too_long", "qr", f"qr is longer than {MAX_QR_CHARS} characters")
E_UNICODE = Rejection("qr_not_unicode", "qr", "qr is not valid Unicode (a lone surrogate escape)")
E_VENUE = Rejection("venue_id_invalid", "venue_id", f"venue_id must be {VENUE_RULE}")
E_DIRECTION = Rejection("direction_invalid", "direction", 'direction must be "in" or "out"')
E_TIME = Rejection(
    "scanned_at_invalid",
    "scanned_at",
    "scanned_at must be epoch milliseconds (an integer) or an RFC 3339 time with a zone, "
    "e.g. 2025-11-24T16:00:00+07:00",
)
E_TIME_NO_ZONE = Rejection(
    "scanned_at_no_zone",
    "scanned_at",
    "scanned_at has no time zone; add Z or an offset such as +07:00 (a zone-less time is ambiguous and is refused)",
)
E_TIME_UNIT = Rejection(
    "scanned_at_not_milliseconds",
    "scanned_at",
    "scanned_at is outside the accepted window but would be inside it read in another unit; "
    "it must be epoch milliseconds",
)
E_TOO_OLD = Rejection(
    "scanned_at_too_old", "scanned_at", "scanned_at is older than the accepted window (now - offline window)"
)
E_IN_FUTURE = Rejection(
    "scanned_at_in_future", "scanned_at", "scanned_at is later than the accepted window (now + clock skew)"
)
E_VENUE_NOT_BOUND = Rejection(
    "venue_not_bound",
    "venue_id",
    "venue_id is not a venue this device is registered for; keep the scan and ask the operator to bind the device",
)

#: Every item rejection, in the order they are checked: the one table the docs and the OpenAPI enum are made from.
#: New checks (offline window, venue binding, ...) add their row here and nowhere else.
REJECTIONS: tuple[Rejection, ...] = (
    E_NOT_OBJECT,
    E_SCAN_ID_MISSING,
    E_SCAN_ID,
    E_QR_TYPE,
    E_QR_LONG,
    E_VENUE,
    E_DIRECTION,
    E_TIME,
    E_TIME_NO_ZONE,
    E_TIME_UNIT,
    E_TOO_OLD,
    E_IN_FUTURE,
    E_UNICODE,
    E_VENUE_NOT_BOUND,  # after every item check: against the authenticated device's venues (Intake.for_venues)
)
REJECTION_CODES: tuple[str, ...] = tuple(r.code for r in REJECTIONS)
if len(set(REJECTION_CODES)) != len(REJECTION_CODES):  # a duplicate would make two rejections one to a device
    raise RuntimeError("item rejection codes must be unique")


def scan_time_ms(value: Any) -> int | Rejection:
    """``scanned_at`` as epoch ms: an int as is, an RFC 3339 time with a zone parsed; else why not."""
    if isinstance(value, bool):
        return E_TIME
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if _SCANNED_AT.fullmatch(value) is None:
            return E_TIME_NO_ZONE if _SCANNED_AT_NO_ZONE.fullmatch(value) else E_TIME
        try:
            # integer arithmetic: float seconds * 1000 would turn .123 into 122.999... and lose a millisecond
            return (parse_iso(value.upper().replace(" ", "T")) - _EPOCH) // _MS
        except ValueError:  # the right shape, an impossible date (month 13, Feb 30)
            return E_TIME
    return E_TIME


def window_rejection(scanned: int, oldest_ms: int, newest_ms: int, *, from_text: bool = False) -> Rejection:
    """Why ``scanned`` (epoch ms, outside ``[oldest_ms, newest_ms]``) is refused: which bound, by how much.

        The bounds are the offline window (how long a scanner may hold scans before uploading them) and now plus the
        clock skew. A value that lands inside the window once read as epoch seconds (or microseconds) gets its own
        code: it is a common client mistake (``Date.now() / 1000``, ``time.time_ns() // 1000``), and "too old by
        20,000 days" would not tell the vendor what to fix. The units are a thousand-fold apart and the window is
    at most the retention (days), so no value fits two of them. An RFC 3339 text (``from_text``) has no unit
    to mistake. Shared by both item checks (a Python int, any size), so
        the compiled one answers word for word like the reference.
    """
    if scanned > 0 and not from_text:
        for as_ms, unit in (
            (scanned * 1000, "seconds"),
            (scanned // 1000, "microseconds"),
            (scanned // 1_000_000, "nanoseconds"),
        ):
            if oldest_ms <= as_ms <= newest_ms:
                return E_TIME_UNIT.detailed(f"{scanned} read as epoch {unit} is {_iso(as_ms)}")
    if scanned < oldest_ms:
        return E_TOO_OLD.detailed(
            f"{_iso(scanned)} is {_span(oldest_ms - scanned)} before the oldest accepted time {_iso(oldest_ms)}"
        )
    return E_IN_FUTURE.detailed(
        f"{_iso(scanned)} is {_span(scanned - newest_ms)} after the latest accepted time {_iso(newest_ms)}"
    )


def _iso(ms: int) -> str:
    """Epoch ms as RFC 3339 UTC with milliseconds, or the number itself where no calendar date exists."""
    try:
        return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except OverflowError:
        return f"epoch ms {ms}"


def _span(ms: int) -> str:
    """A positive duration for people: days, hours, minutes and seconds, the largest two or three units."""
    days, rest = divmod(ms, 86_400_000)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest // 1000}.{rest % 1000:03d} s"
    if days:
        return f"{days} d {hours} h {minutes} min"
    if hours:
        return f"{hours} h {minutes} min {rest // 1000} s"
    if minutes:
        return f"{minutes} min {seconds}"
    return seconds


def echo_scan_id(item: Any) -> str | None:
    """The scan id to echo in a rejected item's answer: the device's own text when it sent a short string."""
    if not isinstance(item, dict):
        return None
    value = item.get("scan_id")
    if type(value) is not str or len(value) > MAX_ECHO_SCAN_ID_CHARS:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate cannot be written back as JSON
        return None
    return value


def rejected_json(index: int, rejection: Rejection, scan_id: str | None) -> dict[str, object]:
    """One rejected item's answer; the compiled answer writer calls this too (rejects are rare)."""
    doc: dict[str, object] = {"index": index}
    if scan_id is not None:
        doc["scan_id"] = scan_id
    doc.update(status="rejected", reason=rejection.code, error=rejection.message)
    return doc


def rejections_markdown() -> str:
    """The table ``docs/item-rejections.md`` holds (``tests/test_intake.py`` checks the file is this)."""
    lines = ["| reason | field | meaning |", "|---|---|---|"]
    lines += ["| `{}` | `{}` | {} |".format(r.code, r.field, r.message.replace("|", "\\|")) for r in REJECTIONS]
    return "\n".join(lines) + "\n"
