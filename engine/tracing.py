"""Contact tracing: an index case's visits, the people whose stays overlapped them, and who was at a venue.

Scans are points (an entry or an exit); tracing needs intervals. Pairing turns one person's scans at one
venue into stays: an entry closes at the next exit within ``max_stay``; an entry with no exit gets the
default dwell (as check-in systems without mandatory check-out infer it) and is flagged ``inferred_exit``;
an exit with no entry is kept (flagged ``exit_without_entry``), ending the default dwell after it began.
Everyone is paired by the same rule, so the index case and their contacts are judged alike.

Reads go where the data is ordered for them: the index case's scans from ``scans_by_person`` (sorted by
person key, so a lookup reads a few granules, not the month), the others at those venues from ``scans``
(sorted by venue and time) with one key range per venue and run of nearby visits, paired in Python by the
same rule as the index case. Every query is parameterised; the only SQL text
that varies is the number of ``{vN:String}`` placeholders. Only trusted verdicts count unless asked; then
every row says what it rests on. The query function is injected, so the same code runs on the embedded store,
on a ClickHouse server, and inside the engine on its store thread.
"""

from __future__ import annotations

import csv
import hmac
import io
import logging
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from engine.clock import iso_utc, parse_iso
from engine.errors import AuthError, ForbiddenError, PayloadError
from engine.server import CONFIG, RUNTIME
from engine.tracers import TracerRegistry
from engine.verdicts import TRUSTED, Verdict

log = logging.getLogger(__name__)

QueryFn = Callable[[str, dict[str, Any]], list[tuple[Any, ...]]]
MINUTE_MS = 60_000
DAY_MS = 86_400_000
_RANGES_PER_QUERY = 200  # key ranges per venue query: keeps the statement small and the key analysis cheap
# Key ranges at one venue less than this apart are read as one (a workplace's weekdays across a weekend): each
# range costs planning on chdb, and a few quiet days of one venue cost less to read (measured at 10M rows:
# p50 -1.3 ms, mean -3 ms of the others' read, against merging only overlapping ranges).
_RANGE_GAP_MS = 3 * DAY_MS

_TRUSTED_SQL = "verdict IN (" + ", ".join(f"'{v.label}'" for v in sorted(TRUSTED)) + ")"
_UNVERIFIED_SQL = f"verdict != '{Verdict.MALFORMED.label}'"  # a malformed code names nobody
# Rows stay duplicated until merges. Measured at 10M rows (bench/trace_bench.py, person trace p50): LIMIT 1 BY
# 36 ms against FINAL's 47 ms on a store as a live engine leaves it (30 parts), 30 against 28 once merged, so
# choosing by part count would win 2 ms at best, less than asking for the count costs.
_DEDUP = "LIMIT 1 BY scan_id"
_FINAL = ""  # "FINAL" here and "" above is the alternative the benchmark measures
_COLUMNS = (
    "toString(scan_id), hex(person_key), qr_id, venue_id, toString(direction), "
    "toUnixTimestamp64Milli(scanned_at), toString(verdict)"
)
# Settings of every tracing read, measured at 10M rows (bench/trace_bench.py): every granule these key ranges
# select holds matching rows, so PREWHERE's two-pass read only added work (~15%); and the expressions carry
# this trace's constants, so JIT-compiling them (ClickHouse does on an expression's 4th use) never pays off
# for another trace, while it stalls the 4th run of the same one by 30-40 ms.
_READ_SETTINGS = "SETTINGS optimize_move_to_prewhere = 0, compile_expressions = 0"
# Everyone's scans around the windows, one row per scan id, in the order pairing walks them: grouped by person
# and venue, then _pairing_order (the Enum puts 'in' before 'out'; scan ids compare as text, as in Python).
# Python then pairs them in one pass with the same rule as the index case's (_walk). Measured at 10M rows:
# pairing in SQL with window functions cost more to plan on chdb (parse, analysis and pipeline of the nested
# query: ~25 ms a trace) than shipping the rows (~3k a trace) and walking them.
_SCANS_AT_SQL = (
    "SELECT '', hex(person_key), qr_id, venue_id, toString(direction), toUnixTimestamp64Milli(scanned_at), "
    "toString(verdict) FROM scans {final} WHERE ({ranges}) AND {verdicts} "
    "ORDER BY person_key, venue_id, scanned_at, direction, toString(scan_id) {dedup} " + _READ_SETTINGS
)
_TIME = "scanned_at >= fromUnixTimestamp64Milli({%s:Int64}) AND scanned_at < fromUnixTimestamp64Milli({%s:Int64})"


@dataclass(frozen=True)
class TraceOptions:
    days: float = 14.0
    default_dwell_min: float = 60.0
    margin_min: float = 15.0
    max_stay_min: float = 720.0
    include_unverified: bool = False
    second_degree: bool = False
    second_degree_limit: int = 20  # first-degree contacts expanded, highest-ranked first

    def __post_init__(self) -> None:
        if not (0 < self.default_dwell_min <= self.max_stay_min <= 7 * 1440):
            raise PayloadError("need 0 < default_dwell_min <= max_stay_min <= 10080")
        if not (0 <= self.margin_min <= 1440) or not (0 < self.days <= 366):
            raise PayloadError("margin_min must be 0..1440 and days 0..366")
        if not (0 <= self.second_degree_limit <= 1000):
            raise PayloadError("second_degree_limit must be 0..1000")


class Scan(NamedTuple):
    scan_id: str
    person_key: str
    qr_id: str
    venue_id: str
    direction: str
    at_ms: int
    verdict: str


@dataclass(frozen=True)
class Stay:
    person_key: str
    qr_id: str
    venue_id: str
    start_ms: int
    end_ms: int
    flags: tuple[str, ...]
    verdict: str  # "ok", or the first untrusted verdict among its scans

    @property
    def trusted(self) -> bool:
        return self.verdict in _TRUSTED_LABELS


_TRUSTED_LABELS = frozenset(v.label for v in TRUSTED)


@dataclass
class Encounter:
    venue_id: str
    index_start_ms: int
    index_end_ms: int
    contact_start_ms: int
    contact_end_ms: int
    overlap_min: float
    flags: tuple[str, ...]
    verdict: str


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
        return all(e.verdict in _TRUSTED_LABELS for e in self.encounters)


@dataclass
class PersonTrace:
    person_keys: list[str]
    from_ms: int
    to_ms: int
    include_unverified: bool
    visits: list[Stay]
    contacts: list[Contact]


@dataclass
class VenueTrace:
    venue_id: str
    from_ms: int
    to_ms: int
    include_unverified: bool
    stays: list[Stay]


# -- pairing ------------------------------------------------------------------------------------------------
def pair_stays(scans: Iterable[Scan], *, default_dwell_min: float, max_stay_min: float) -> list[Stay]:
    """Scans into stays, per person and venue; duplicates of a scan id count once."""
    dwell, max_stay = round(default_dwell_min * MINUTE_MS), round(max_stay_min * MINUTE_MS)
    unique = {(s.person_key, s.venue_id, s.scan_id): s for s in scans}
    ordered: list[Scan] = sorted(unique.values(), key=_pairing_order)
    spans: list[_Span] = []
    _walk(ordered, dwell, max_stay, spans)
    stays = [_stay(*span) for span in spans]
    stays.sort(key=lambda st: (st.start_ms, st.venue_id, st.person_key))
    return stays


def _pairing_order(s: Scan) -> tuple[str, str, int, bool, str]:
    """Person and venue (a group), then time, entries before exits at the same instant, scan id last."""
    return (s.person_key, s.venue_id, s.at_ms, s.direction != "in", s.scan_id)


#: A row laid out as :class:`Scan` (a ``Scan``, or a row of ``_SCANS_AT_SQL``): indexed, not named, in the
#: walk below, which sees every scan around an index case's visits (~3k rows a trace at 10M stored scans).
_Row = tuple[Any, ...]
#: A stay before it becomes a :class:`Stay`: first scan, last scan, start, end, flag ("" for none). Cheap to
#: make, so the others' reads build a ``Stay`` only for the few that touch an index case's visit.
_Span = tuple[_Row, _Row, int, int, str]


def _walk(ordered: Iterable[_Row], dwell: int, max_stay: int, spans: list[_Span]) -> None:
    """The pairing rule, over scans in :func:`_pairing_order` (appends to ``spans``).

    An entry closes at the next scan of the same person and venue if that is an exit within ``max_stay``;
    otherwise it gets the default dwell, cut short by a next entry. An exit nobody entered for stands alone.
    """
    entry: _Row | None = None
    person = venue = None
    for s in ordered:  # s[1] person_key, s[3] venue_id, s[4] direction, s[5] at_ms
        if s[1] != person or s[3] != venue:  # the next group: an open entry gets the default dwell
            if entry is not None:
                spans.append((entry, entry, entry[5], entry[5] + dwell, "inferred_exit"))
                entry = None
            person, venue = s[1], s[3]
        t = s[5]
        if s[4] == "in":
            if entry is not None:  # entered again without leaving: the earlier stay's exit is inferred
                spans.append((entry, entry, entry[5], min(entry[5] + dwell, t), "inferred_exit"))
            entry = s
        elif entry is not None and t - entry[5] <= max_stay:
            spans.append((entry, s, entry[5], t, ""))
            entry = None
        else:
            if entry is not None:
                spans.append((entry, entry, entry[5], entry[5] + dwell, "inferred_exit"))
                entry = None
            spans.append((s, s, t - dwell, t, "exit_without_entry"))
    if entry is not None:
        spans.append((entry, entry, entry[5], entry[5] + dwell, "inferred_exit"))


def _stay(first: _Row, last: _Row, start: int, end: int, flag: str) -> Stay:
    """A span as a Stay: the exit's QR id if it has one; the first untrusted verdict of its two scans."""
    verdict = first[6] if first[6] not in _TRUSTED_LABELS else last[6]
    return Stay(first[1], last[2] or first[2], first[3], start, end, (flag,) if flag else (), verdict)


def _touching(spans: Iterable[_Span], windows: Iterable[tuple[str, int, int]]) -> Iterator[_Span]:
    """The spans that touch (share an instant with) any (venue, from, to) window.

    Windows are merged per venue into sorted disjoint intervals, so each span costs one bisection however many
    visits the index case made there.
    """
    starts: dict[str, list[int]] = defaultdict(list)
    ends: dict[str, list[int]] = defaultdict(list)
    for venue, lo, hi in sorted(windows):
        if ends[venue] and lo <= ends[venue][-1]:
            ends[venue][-1] = max(hi, ends[venue][-1])
        else:
            starts[venue].append(lo)
            ends[venue].append(hi)
    for span in spans:
        venue = span[0][3]
        his = ends.get(venue)
        if his:
            i = bisect_left(his, span[2])  # the first interval that ends at or after the span starts
            if i < len(his) and starts[venue][i] <= span[3]:
                yield span


def overlaps(
    index_stays: Sequence[Stay], others: Iterable[Stay], *, margin_min: float, degree: int = 1
) -> dict[str, Contact]:
    """Every other person whose stay at the same venue comes within ``margin`` of an index stay."""
    margin = round(margin_min * MINUTE_MS)
    by_venue: dict[str, list[Stay]] = defaultdict(list)
    for st in index_stays:
        by_venue[st.venue_id].append(st)
    index_people = {st.person_key for st in index_stays}
    contacts: dict[str, Contact] = {}
    for other in others:
        if other.person_key in index_people:
            continue
        for mine in by_venue.get(other.venue_id, ()):
            if other.start_ms > mine.end_ms + margin or other.end_ms < mine.start_ms - margin:
                continue
            minutes = max(0, min(mine.end_ms, other.end_ms) - max(mine.start_ms, other.start_ms)) / MINUTE_MS
            c = contacts.get(other.person_key)
            if c is None:
                c = contacts[other.person_key] = Contact(other.person_key, other.qr_id, degree)
            verdict = mine.verdict if other.trusted else other.verdict  # only as trustworthy as both stays
            c.encounters.append(
                Encounter(
                    other.venue_id,
                    mine.start_ms,
                    mine.end_ms,
                    other.start_ms,
                    other.end_ms,
                    round(minutes, 1),
                    tuple(dict.fromkeys(mine.flags + other.flags)),
                    verdict,
                )
            )
            c.total_overlap_min = round(c.total_overlap_min + minutes, 1)
            if mine.person_key not in c.via and degree > 1:
                c.via.append(mine.person_key)
    return contacts


def rank(contacts: Iterable[Contact]) -> list[Contact]:
    """Longest total overlap first; then more encounters; then earliest; person key last for a stable order."""
    out = list(contacts)
    for c in out:
        c.encounters.sort(key=lambda e: (e.contact_start_ms, e.venue_id))
    return sorted(
        out,
        key=lambda c: (-c.total_overlap_min, -len(c.encounters), c.encounters[0].contact_start_ms, c.person_key),
    )


# -- queries ------------------------------------------------------------------------------------------------
class TraceQueries:
    """Tracing over one store's query function (``Store.query`` or anything with its signature)."""

    def __init__(self, query: QueryFn) -> None:
        self._query = query

    def person(
        self,
        *,
        person_key: str | None = None,
        qr_id: str | None = None,
        from_ms: int | None = None,
        to_ms: int | None = None,
        options: TraceOptions | None = None,
    ) -> PersonTrace:
        opt = options or TraceOptions()
        from_ms, to_ms = period(from_ms, to_ms, opt.days)
        slack = round(opt.max_stay_min * MINUTE_MS)
        verdicts = _UNVERIFIED_SQL if opt.include_unverified else _TRUSTED_SQL
        params: dict[str, Any] = {"lo": from_ms - slack, "hi": to_ms + slack}
        if person_key is not None and qr_id is None:
            params["pk"] = _person_key_hex(person_key)
            who = "person_key = toFixedString(unhex({pk:String}), 16)"
        elif qr_id is not None and person_key is None:
            if not qr_id or len(qr_id) > 64:
                raise PayloadError("qr_id must be 1-64 characters")
            params["qr"] = qr_id
            who = (
                # person_by_qr keeps each pair's latest scan, so only the lower bound applies: a person scanned
                # since the period ended is still found; who was not scanned since it began cannot be in it.
                "person_key IN (SELECT person_key FROM person_by_qr WHERE qr_id = {qr:String} "
                "AND scanned_at >= fromUnixTimestamp64Milli({lo:Int64}))"
            )
        else:
            raise PayloadError("give exactly one of person_key or qr_id")
        where = f"{who} AND {_TIME % ('lo', 'hi')} AND {verdicts}"
        # pair_stays drops duplicate scan ids itself, so this read needs no LIMIT BY
        sql = f"SELECT {_COLUMNS} FROM scans_by_person {_FINAL} WHERE {where} {_READ_SETTINGS}"
        index_scans = [Scan(*r) for r in self._query(sql, params)]
        keys = sorted({s.person_key for s in index_scans})
        visits = _within(self._pair(index_scans, opt), from_ms, to_ms)
        first = self._contacts_of(visits, opt, degree=1)
        contacts = rank(first.values())
        if opt.second_degree and contacts:
            contacts += self._second_degree(contacts[: opt.second_degree_limit], set(keys) | set(first), to_ms, opt)
        return PersonTrace(keys, from_ms, to_ms, opt.include_unverified, visits, contacts)

    def venue(
        self, venue_id: str, from_ms: int | None = None, to_ms: int | None = None, options: TraceOptions | None = None
    ) -> VenueTrace:
        opt = options or TraceOptions()
        from_ms, to_ms = period(from_ms, to_ms, opt.days)
        if not venue_id or len(venue_id) > 128:
            raise PayloadError("venue_id must be 1-128 characters")
        stays = self.stays_at([(venue_id, from_ms, to_ms)], opt)
        return VenueTrace(venue_id, from_ms, to_ms, opt.include_unverified, _within(stays, from_ms, to_ms))

    # -- internals ------------------------------------------------------------------------------------------
    def _pair(self, scans: Iterable[Scan], opt: TraceOptions) -> list[Stay]:
        return pair_stays(scans, default_dwell_min=opt.default_dwell_min, max_stay_min=opt.max_stay_min)

    def _contacts_of(self, stays: Sequence[Stay], opt: TraceOptions, degree: int) -> dict[str, Contact]:
        margin = round(opt.margin_min * MINUTE_MS)
        others = self.stays_at([(s.venue_id, s.start_ms - margin, s.end_ms + margin) for s in stays], opt)
        return overlaps(stays, others, margin_min=opt.margin_min, degree=degree)

    def stays_at(self, windows: Sequence[tuple[str, int, int]], opt: TraceOptions) -> list[Stay]:
        """Everyone's stays touching any (venue, from, to) window, by the rule of :func:`pair_stays`.

        Pairing needs each person's scans up to ``max_stay`` either side of a window, so that is what is read
        (one key range per venue and merged window, from the venue-ordered ``scans``); ClickHouse removes
        duplicates and sorts, and the stays that touch no window are dropped here.
        """
        dwell, slack = round(opt.default_dwell_min * MINUTE_MS), round(opt.max_stay_min * MINUTE_MS)
        ranges = _merge(((v, lo - slack, hi + slack) for v, lo, hi in windows), _RANGE_GAP_MS)
        verdicts = _UNVERIFIED_SQL if opt.include_unverified else _TRUSTED_SQL
        stays: list[Stay] = []
        for start in range(0, len(ranges), _RANGES_PER_QUERY):
            params: dict[str, Any] = {}
            terms = []
            for i, (venue, lo, hi) in enumerate(ranges[start : start + _RANGES_PER_QUERY]):
                params[f"v{i}"], params[f"a{i}"], params[f"b{i}"] = venue, lo, hi
                terms.append(f"(venue_id = {{v{i}:String}} AND {_TIME % (f'a{i}', f'b{i}')})")
            sql = _SCANS_AT_SQL.format(final=_FINAL, ranges=" OR ".join(terms), verdicts=verdicts, dedup=_DEDUP)
            spans: list[_Span] = []
            _walk(self._query(sql, params), dwell, slack, spans)
            stays += (_stay(*span) for span in _touching(spans, windows))
        stays.sort(key=lambda st: (st.start_ms, st.venue_id, st.person_key))
        return stays

    def _second_degree(
        self, contacts: Sequence[Contact], known: set[str], to_ms: int, opt: TraceOptions
    ) -> list[Contact]:
        """Contacts of the top contacts, from their first exposure on: who they could have passed it to."""
        since = min(e.contact_start_ms for c in contacts for e in c.encounters)
        slack = round(opt.max_stay_min * MINUTE_MS)
        verdicts = _UNVERIFIED_SQL if opt.include_unverified else _TRUSTED_SQL
        sql = (
            f"SELECT {_COLUMNS} FROM scans_by_person {_FINAL} WHERE person_key IN "
            "(SELECT arrayJoin(arrayMap(k -> toFixedString(unhex(k), 16), {keys:Array(String)}))) "
            f"AND {_TIME % ('lo', 'hi')} AND {verdicts} {_READ_SETTINGS}"
        )
        params = {"keys": [c.person_key for c in contacts], "lo": since - slack, "hi": to_ms + slack}
        exposed_at = {c.person_key: min(e.contact_start_ms for e in c.encounters) for c in contacts}
        stays = [
            st
            for st in _within(self._pair((Scan(*r) for r in self._query(sql, params)), opt), since, to_ms)
            if st.end_ms >= exposed_at[st.person_key]
        ]
        found = self._contacts_of(stays, opt, degree=2)
        return rank(c for key, c in found.items() if key not in known)


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
    if text.isdigit():
        return int(text) * 1000
    try:
        return int(parse_iso(text, naive_is_utc=True).timestamp() * 1000)
    except ValueError:
        raise PayloadError(f"{text!r} is not an ISO 8601 time or Unix seconds") from None


def _person_key_hex(text: str) -> str:
    text = text.strip().lower()
    if len(text) != 32 or any(c not in "0123456789abcdef" for c in text):
        raise PayloadError("person_key must be 32 hexadecimal characters")
    return text


def _merge(ranges: Iterable[tuple[str, int, int]], gap: int = 0) -> list[tuple[str, int, int]]:
    """Windows at one venue that overlap (or are less than ``gap`` apart) become one key range."""
    out: list[tuple[str, int, int]] = []
    for venue, lo, hi in sorted(ranges):
        if out and out[-1][0] == venue and lo <= out[-1][2] + gap:
            out[-1] = (venue, out[-1][1], max(hi, out[-1][2]))
        else:
            out.append((venue, lo, hi))
    return out


def _within(stays: Iterable[Stay], from_ms: int, to_ms: int) -> list[Stay]:
    return [st for st in stays if st.end_ms >= from_ms and st.start_ms <= to_ms]


# -- output -------------------------------------------------------------------------------------------------
FIELDS = (
    "section", "rank", "person_key", "qr_id", "venue_id", "start", "end", "overlap_min", "total_overlap_min",
    "verdict", "trusted", "flags", "via",
)  # fmt: skip


def iso(ms: int) -> str:
    return iso_utc(ms / 1000)


def _stay_row(section: str, st: Stay) -> dict[str, Any]:
    return {
        "section": section,
        "rank": "",
        "person_key": st.person_key,
        "qr_id": st.qr_id,
        "venue_id": st.venue_id,
        "start": iso(st.start_ms),
        "end": iso(st.end_ms),
        "overlap_min": "",
        "total_overlap_min": "",
        "verdict": st.verdict,
        "trusted": st.trusted,
        "flags": ",".join(st.flags),
        "via": "",
    }


def rows(trace: PersonTrace | VenueTrace) -> list[dict[str, Any]]:
    """One flat row per visit, encounter or stay: what CSV and the table print, and what JSON nests."""
    if isinstance(trace, VenueTrace):
        return [_stay_row("venue", st) for st in trace.stays]
    out = [_stay_row("visit", st) for st in trace.visits]
    ranks: dict[int, int] = defaultdict(int)
    for c in trace.contacts:
        ranks[c.degree] += 1
        for e in c.encounters:
            out.append(
                {
                    "section": "exposure" if c.degree == 1 else "second_degree",
                    "rank": ranks[c.degree],
                    "person_key": c.person_key,
                    "qr_id": c.qr_id,
                    "venue_id": e.venue_id,
                    "start": iso(e.contact_start_ms),
                    "end": iso(e.contact_end_ms),
                    "overlap_min": e.overlap_min,
                    "total_overlap_min": c.total_overlap_min,
                    "verdict": e.verdict,
                    "trusted": e.verdict in _TRUSTED_LABELS,
                    "flags": ",".join(e.flags),
                    "via": ",".join(c.via),
                }
            )
    return out


def to_json(trace: PersonTrace | VenueTrace) -> dict[str, Any]:
    head: dict[str, Any] = {
        "from": iso(trace.from_ms),
        "to": iso(trace.to_ms),
        "include_unverified": trace.include_unverified,
    }
    if isinstance(trace, VenueTrace):
        return {"venue_id": trace.venue_id, **head, "stays": [_stay_json(s) for s in trace.stays]}
    return {
        "person_keys": trace.person_keys,
        **head,
        "visits": [_stay_json(s) for s in trace.visits],
        "exposures": [_contact_json(i + 1, c) for i, c in enumerate(x for x in trace.contacts if x.degree == 1)],
        "second_degree": [_contact_json(i + 1, c) for i, c in enumerate(x for x in trace.contacts if x.degree == 2)],
    }


def _contact_json(rank: int, c: Contact) -> dict[str, Any]:
    return {
        "rank": rank,
        "person_key": c.person_key,
        "qr_id": c.qr_id,
        "degree": c.degree,
        "total_overlap_min": c.total_overlap_min,
        "trusted": c.trusted,
        "via": c.via,
        "encounters": [
            {
                **asdict(e),
                "index_start": iso(e.index_start_ms),
                "index_end": iso(e.index_end_ms),
                "contact_start": iso(e.contact_start_ms),
                "contact_end": iso(e.contact_end_ms),
                "trusted": e.verdict in _TRUSTED_LABELS,
            }
            for e in c.encounters
        ],
    }


def _stay_json(st: Stay) -> dict[str, Any]:
    return {**asdict(st), "start": iso(st.start_ms), "end": iso(st.end_ms), "trusted": st.trusted}


def from_json(doc: dict[str, Any]) -> PersonTrace | VenueTrace:
    """Rebuild a trace from :func:`to_json`, so a CLI that asked a running engine prints exactly what it would."""
    t0, t1 = parse_time(doc["from"]), parse_time(doc["to"])

    def stay(d: dict[str, Any]) -> Stay:
        return Stay(d["person_key"], d["qr_id"], d["venue_id"], d["start_ms"], d["end_ms"], tuple(d["flags"]),
                    d["verdict"])  # fmt: skip

    if "venue_id" in doc:
        return VenueTrace(doc["venue_id"], t0, t1, doc["include_unverified"], [stay(s) for s in doc["stays"]])
    contacts = [
        Contact(
            c["person_key"],
            c["qr_id"],
            c["degree"],
            c["total_overlap_min"],
            [
                Encounter(e["venue_id"], e["index_start_ms"], e["index_end_ms"], e["contact_start_ms"],
                          e["contact_end_ms"], e["overlap_min"], tuple(e["flags"]), e["verdict"])
                for e in c["encounters"]
            ],
            c["via"],
        )
        for c in doc["exposures"] + doc["second_degree"]
    ]  # fmt: skip
    return PersonTrace(doc["person_keys"], t0, t1, doc["include_unverified"], [stay(s) for s in doc["visits"]],
                       contacts)  # fmt: skip


def to_csv(trace: PersonTrace | VenueTrace) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows(trace))
    return buf.getvalue()


def to_table(trace: PersonTrace | VenueTrace) -> str:
    """Aligned columns for a terminal; untrusted rows are marked with '!' so they cannot be missed."""
    data = rows(trace)
    if isinstance(trace, VenueTrace):
        title = f"venue {trace.venue_id}: {len(trace.stays)} stays"
    else:
        n1 = sum(1 for c in trace.contacts if c.degree == 1)
        title = f"person {','.join(trace.person_keys) or '(no scans)'}: {len(trace.visits)} visits, {n1} contacts"
    title += f", {iso(trace.from_ms)} .. {iso(trace.to_ms)}"
    title += " (including UNVERIFIED codes, marked !)" if trace.include_unverified else " (trusted codes only)"
    cols = [c for c in FIELDS if c not in ("trusted",)]
    cells = [[("" if r["trusted"] else "!") + str(r[c]) if c == "verdict" else str(r[c]) for c in cols] for r in data]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def render(trace: PersonTrace | VenueTrace, fmt: str) -> str:
    if fmt == "json":
        return orjson.dumps(to_json(trace), option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "csv":
        return to_csv(trace)
    if fmt == "table":
        return to_table(trace)
    raise PayloadError("format must be table, csv or json")


# -- HTTP -----------------------------------------------------------------------------------------------------
_TRACERS = web.AppKey("tracers", TracerRegistry)


def require_tracer(request: web.Request) -> str:
    """The tracer's name; scanner devices and the operator's admin token are refused even when valid."""
    if request.headers.get("X-Device-Id") or request.headers.get("X-Signature"):
        raise ForbiddenError("scanner-device credentials cannot trace")
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        raise AuthError("tracing needs Authorization: Bearer <tracer token>")
    token = header[7:].strip()
    if hmac.compare_digest(token.encode(), request.app[RUNTIME].admin_token.encode()):
        raise ForbiddenError(
            "the admin token is not a tracer credential: create one with `python -m engine tracer-add NAME`"
        )
    tracer = request.app[_TRACERS].authenticate(token)
    if tracer is None:
        raise AuthError("tracer token is not valid")
    return tracer.name


def options_from_query(q: Any) -> tuple[int | None, int | None, TraceOptions]:
    def num(name: str, default: float) -> float:
        try:
            return float(q.get(name, default))
        except ValueError:
            raise PayloadError(f"{name} must be a number") from None

    flag = {"1", "true", "yes", "on"}
    opt = TraceOptions(
        days=num("days", 14.0),
        default_dwell_min=num("dwell_min", 60.0),
        margin_min=num("margin_min", 15.0),
        max_stay_min=num("max_stay_min", 720.0),
        include_unverified=q.get("include_unverified", "").lower() in flag,
        second_degree=q.get("second_degree", "").lower() in flag,
        second_degree_limit=int(num("second_degree_limit", 20)),
    )
    t0 = parse_time(q["from"]) if q.get("from") else None
    t1 = parse_time(q["to"]) if q.get("to") else None
    return t0, t1, opt


def _respond(trace: PersonTrace | VenueTrace, fmt: str) -> web.Response:
    if fmt == "csv":
        return web.Response(text=to_csv(trace), content_type="text/csv")
    if fmt != "json":
        raise PayloadError("format must be json or csv")
    return web.Response(body=orjson.dumps(to_json(trace)), content_type="application/json")


async def trace_person(request: web.Request) -> web.Response:
    name = require_tracer(request)
    q = request.query
    t0, t1, opt = options_from_query(q)
    rt = request.app[RUNTIME]
    queries = TraceQueries(rt.store.query)
    pk, qr = q.get("person_key"), q.get("qr_id")
    trace = await rt.in_store_thread(lambda: queries.person(person_key=pk, qr_id=qr, from_ms=t0, to_ms=t1, options=opt))
    log.info("trace by %s: person (%d visits, %d contacts)", name, len(trace.visits), len(trace.contacts))
    return _respond(trace, q.get("format", "json"))


async def trace_venue(request: web.Request) -> web.Response:
    name = require_tracer(request)
    q = request.query
    t0, t1, opt = options_from_query(q)
    venue_id = q.get("venue_id", "")
    rt = request.app[RUNTIME]
    trace = await rt.in_store_thread(TraceQueries(rt.store.query).venue, venue_id, t0, t1, opt)
    log.info("trace by %s: venue %s (%d stays)", name, venue_id, len(trace.stays))
    return _respond(trace, q.get("format", "json"))


def setup(app: web.Application) -> None:
    app[_TRACERS] = TracerRegistry.for_data_dir(app[CONFIG].data_dir)
    app.router.add_get("/v1/trace/person", trace_person)
    app.router.add_get("/v1/trace/venue", trace_venue)
