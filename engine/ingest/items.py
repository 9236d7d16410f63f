"""The item contract of ``POST /v1/scans``: limits, accepted values and the rejection texts, word for word.

Shared by the reference item check (``engine.ingest.intake.take_items_py``) and its compiled twin
(``ext/_intake.pyx``), which imports them from here at module level, so both paths say the same thing and
neither imports the other.
"""

from __future__ import annotations

from typing import Any

from engine.clock import parse_iso
from engine.codes.venues import MAX_VENUE_CHARS as MAX_VENUE_CHARS  # the compiled twin imports it from here
from engine.codes.venues import VENUE_CHARS as VENUE_CHARS
from engine.codes.venues import VENUE_RULE

MAX_QR_CHARS = 2048  # far above any valid code (512 bytes); longer text is an item error, not a stored scan
DIRECTIONS = {"in": 1, "out": 2}

# The item errors, word for word (the compiled path imports them from here, so both say the same thing).
E_NOT_OBJECT = "item must be an object"
E_SCAN_ID_MISSING = "scan_id is missing"
E_SCAN_ID = "scan_id is not a UUID (8-4-4-4-12 hex digits)"
E_QR_TYPE = "qr must be a string (the text the scanner read)"
E_QR_LONG = f"qr is longer than {MAX_QR_CHARS} characters"
E_VENUE = f"venue_id must be {VENUE_RULE}"
E_DIRECTION = 'direction must be "in" or "out"'
E_TIME = "scanned_at must be epoch milliseconds or an ISO-8601 time with a zone"
E_WINDOW = "scanned_at is outside the accepted window (retention period .. now + clock skew)"
E_UNICODE = "qr is not valid Unicode"


def scan_time_ms(value: Any) -> int | None:
    """``scanned_at`` as epoch ms: an int as is, an ISO-8601 time with a zone parsed; None if neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(parse_iso(value).timestamp() * 1000)
        except ValueError:
            return None
    return None
