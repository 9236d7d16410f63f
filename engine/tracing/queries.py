"""Tracing reads on the store: an index case's visits, the people whose stays overlapped them, who was at a venue.

Reads go where the data is ordered for them: the index case's scans from ``scans_by_person`` (sorted by
person key, so a lookup reads a few granules, not the month), the others at those venues from ``scans``
(sorted by venue and time) with one key range per venue and run of nearby visits, paired in Python by the
same rule as the index case. Every query is parameterised; the only SQL text that varies is the number of
``{vN:String}`` placeholders. Only trusted verdicts count unless asked; then every row says what it rests on.
The query function is injected, so the same code runs on the embedded store, on a ClickHouse server, and
inside the engine on its store thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from engine.codes.verdicts import TRUSTED, Verdict
from engine.errors import PayloadError
from engine.tracing.model import (
    DAY_MS,
    MINUTE_MS,
    Contact,
    PersonTrace,
    QueryFn,
    Scan,
    Stay,
    TraceOptions,
    VenueTrace,
    period,
    within,
)
from engine.tracing.pairing import Span, overlaps, pair_stays, rank, stay_of, touching, walk

_RANGES_PER_QUERY = 200  # key ranges per venue query: keeps the statement small and the key analysis cheap
# Key ranges at one venue less than this apart are read as one (a workplace's weekdays across a weekend): each
# range costs planning on chdb, and a few quiet days of one venue cost less to read than a range more (README,
# "Measured": tracing).
_RANGE_GAP_MS = 3 * DAY_MS

_TRUSTED_SQL = "verdict IN (" + ", ".join(f"'{v.label}'" for v in sorted(TRUSTED)) + ")"
_UNVERIFIED_SQL = f"verdict != '{Verdict.MALFORMED.label}'"  # a malformed code names nobody
# Rows stay duplicated until merges. LIMIT 1 BY beat FINAL clearly on a store as a live engine leaves it and
# lost only narrowly once merged (bench/trace_bench.py; README), so choosing by part count would win less than
# asking for the count costs.
_DEDUP = "LIMIT 1 BY scan_id"
_FINAL = ""  # "FINAL" here and "" above is the alternative the benchmark measures
_COLUMNS = (
    "toString(scan_id), hex(person_key), qr_id, venue_id, toString(direction), "
    "toUnixTimestamp64Milli(scanned_at), toString(verdict)"
)
# Settings of every tracing read (bench/trace_bench.py): every granule these key ranges select holds matching
# rows, so PREWHERE's two-pass read only adds work; and the expressions carry this trace's constants, so
# JIT-compiling them (ClickHouse does on an expression's 4th use) never pays off for another trace, while it
# stalls the 4th run of the same one.
_READ_SETTINGS = "SETTINGS optimize_move_to_prewhere = 0, compile_expressions = 0"
# Everyone's scans around the windows, one row per scan id, in the order pairing walks them: grouped by person
# and venue, then _pairing_order (the Enum puts 'in' before 'out'; scan ids compare as text, as in Python).
# Python then pairs them in one pass with the same rule as the index case's (walk). Pairing in SQL with window
# functions cost more to plan on chdb (parse, analysis and pipeline of the nested query) than shipping the
# rows and walking them (README, "Measured": tracing).
_SCANS_AT_SQL = (
    "SELECT '', hex(person_key), qr_id, venue_id, toString(direction), toUnixTimestamp64Milli(scanned_at), "
    "toString(verdict) FROM scans {final} WHERE ({ranges}) AND {verdicts} "
    "ORDER BY person_key, venue_id, scanned_at, direction, toString(scan_id) {dedup} " + _READ_SETTINGS
)
_TIME = "scanned_at >= fromUnixTimestamp64Milli({%s:Int64}) AND scanned_at < fromUnixTimestamp64Milli({%s:Int64})"


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
        visits = within(self._pair(index_scans, opt), from_ms, to_ms)
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
        return VenueTrace(venue_id, from_ms, to_ms, opt.include_unverified, within(stays, from_ms, to_ms))

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
            spans: list[Span] = []
            walk(self._query(sql, params), dwell, slack, spans)
            stays += (stay_of(*span) for span in touching(spans, windows))
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
            for st in within(self._pair((Scan(*r) for r in self._query(sql, params)), opt), since, to_ms)
            if st.end_ms >= exposed_at[st.person_key]
        ]
        found = self._contacts_of(stays, opt, degree=2)
        return rank(c for key, c in found.items() if key not in known)


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
