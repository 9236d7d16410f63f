"""The tracing model: what a trace is asked (``TraceOptions``, the period) and what it answers (stays,
encounters, contacts, person and venue traces).

Scans are points (an entry or an exit); tracing needs intervals. :mod:`engine.tracing.pairing` turns one person's
scans at one venue into :class:`Stay` objects, :mod:`engine.tracing.queries` reads the scans from the store,
:mod:`engine.tracing.render` prints the answers. Nothing here touches the store or HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from engine.clock import parse_iso
from engine.codes.verdicts import TRUSTED
from engine.errors import PayloadError

QueryFn = Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]
MINUTE_MS = 60_000
DAY_MS = 86_400_000


@dataclass(frozen=True)
class TraceOptions:
    days: float = 14.0
    default_dwell_min: float = 60.0
    margin_min: float = 15.0
    max_stay_min: float = 720.0
    include_unverified: bool = False
    second_degree: bool = False
    second_degree_limit: int = 20  # first-degree contacts expanded, highest-ranked first
    # A second-degree contact counts from this much total overlap with the expanded contacts (the usual close-
    # contact rule is 15 minutes), and at most this many are listed: around hot venues the second degree would
    # otherwise list thousands of passers-by. The answer says what was cut (PersonTrace.second_degree_cut).
    second_degree_min_overlap_min: float = 15.0
    second_degree_cap: int = 200

    def __post_init__(self) -> None:
        if not (0 < self.default_dwell_min <= self.max_stay_min <= 7 * 1440):
            raise PayloadError("need 0 < default_dwell_min <= max_stay_min <= 10080")
        if not (0 <= self.margin_min <= 1440) or not (0 < self.days <= 366):
            raise PayloadError("margin_min must be 0..1440 and days 0..366")
        if not (0 <= self.second_degree_limit <= 1000):
            raise PayloadError("second_degree_limit must be 0..1000")
        if not (0 <= self.second_degree_min_overlap_min <= 1440) or not (0 <= self.second_degree_cap <= 100_000):
            raise PayloadError("second_degree_min_overlap_min must be 0..1440 and second_degree_cap 0..100000")


class Scan(NamedTuple):
    scan_id: str
    person_key: str
    qr_id: str
    venue_id: str
    direction: str
    at_ms: int
    verdict: str
    device_id: str = ""  # with scan_id, the scan's identity (device, scan id): a trace's provenance


@dataclass(frozen=True)
class Stay:
    person_key: str
    qr_id: str
    venue_id: str
    start_ms: int
    end_ms: int
    flags: tuple[str, ...]
    verdict: str  # "ok", or the first untrusted verdict among its scans
    # Provenance: the scans the stay rests on, entry first (one scan for an inferred exit or an exit without
    # entry), as (device id, scan id) pairs split into two aligned tuples, so a tracer can go back to the device.
    device_ids: tuple[str, ...] = ()
    scan_ids: tuple[str, ...] = ()
    # How a trace reached this stay: "" for the person key asked for, "qr_id" through a QR-id link a verified
    # scan created, "qr_id_unverified" through a QR id only unverified scans claimed (--include-unverified),
    # "document" through the document number a verified code printed whole (a CCCD, another issuer's code).
    link: str = ""

    @property
    def trusted(self) -> bool:
        return self.verdict in TRUSTED_LABELS


TRUSTED_LABELS = frozenset(v.label for v in TRUSTED)
#: Stay.link: reached through a QR-id link a verified scan created; or one only unverified scans claimed.
LINK_QR = "qr_id"
LINK_QR_UNVERIFIED = "qr_id_unverified"
#: ... or through a document link: a verified code printing its document number whole (identity_links).
LINK_DOCUMENT = "document"


@dataclass
class Encounter:
    """One overlap of an index stay and a contact's stay. ``verdict`` and ``flags`` are what the encounter rests
    on (the weaker verdict of the two stays, the flags of both); the ``contact_*`` and ``index_*`` fields say
    whose is whose, so an index case's inferred exit is never read as the contact's."""

    venue_id: str
    index_start_ms: int
    index_end_ms: int
    contact_start_ms: int
    contact_end_ms: int
    overlap_min: float
    flags: tuple[str, ...]
    verdict: str
    contact_verdict: str = ""
    contact_flags: tuple[str, ...] = ()
    index_verdict: str = ""
    index_flags: tuple[str, ...] = ()
    contact_device_ids: tuple[str, ...] = ()
    contact_scan_ids: tuple[str, ...] = ()
    index_device_ids: tuple[str, ...] = ()
    index_scan_ids: tuple[str, ...] = ()
    index_link: str = ""  # how the trace reached the index stay (Stay.link)


@dataclass
class Contact:
    person_key: str
    qr_id: str
    degree: int
    total_overlap_min: float = 0.0
    encounters: list[Encounter] = field(default_factory=list)
    via: list[str] = field(default_factory=list)

    @property
    def trusted(self) -> bool:
        return all(e.verdict in TRUSTED_LABELS for e in self.encounters)


@dataclass(frozen=True)
class SecondDegreeCut:
    """What a bounded second degree left out, so a tracer knows the list is not everyone."""

    expanded: int  # first-degree contacts whose own contacts were looked for
    not_expanded: int  # first-degree contacts below the expansion limit
    candidates: int  # people who overlapped an expanded contact (within the margin), before the cuts
    below_threshold: int  # of those, under second_degree_min_overlap_min in total
    over_cap: int  # at or above the threshold but beyond second_degree_cap
    min_overlap_min: float
    cap: int


@dataclass
class PersonTrace:
    person_keys: list[str]
    from_ms: int
    to_ms: int
    include_unverified: bool
    visits: list[Stay]
    contacts: list[Contact]
    second_degree_cut: SecondDegreeCut | None = None


@dataclass
class VenueTrace:
    venue_id: str
    from_ms: int
    to_ms: int
    include_unverified: bool
    stays: list[Stay]


# -- pairing ------------------------------------------------------------------------------------------------


def period(from_ms: int | None, to_ms: int | None, days: float) -> tuple[int, int]:
    """Default: the last ``days`` up to now; an inverted or over-long period is refused, not silently clipped."""
    to_ms = int(time.time() * 1000) if to_ms is None else to_ms
    from_ms = to_ms - round(days * DAY_MS) if from_ms is None else from_ms
    if from_ms >= to_ms:
        raise PayloadError("the period's start must be before its end")
    if to_ms - from_ms > 366 * DAY_MS:
        raise PayloadError("a trace period is at most 366 days")
    return from_ms, to_ms


def parse_time(text: str) -> int:
    """ISO 8601 (naive means UTC; a bare date means its midnight) or Unix seconds, as milliseconds."""
    text = text.strip()
    if text.isascii() and text.isdigit():  # "³".isdigit() is True, and int() refuses it
        return int(text) * 1000
    try:
        return int(parse_iso(text, naive_is_utc=True).timestamp() * 1000)
    except ValueError:
        raise PayloadError(f"{text!r} is not an ISO 8601 time or Unix seconds") from None


def within(stays: Iterable[Stay], from_ms: int, to_ms: int) -> list[Stay]:
    return [st for st in stays if st.end_ms >= from_ms and st.start_ms <= to_ms]
