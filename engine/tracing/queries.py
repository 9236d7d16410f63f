"""Tracing reads on the store: an index case's visits, the people whose stays overlapped them, who was at a venue.

Reads go where the data is ordered for them: the index case's scans from ``scans_by_person`` (sorted by
person key, so a lookup reads a few granules, not the month), paired in Python by the reference rule; the
others at those venues from the paired ``stays`` (:mod:`engine.tracing.presence`: only the stays that touch a
visit leave ClickHouse) plus, for the few (person, venue) groups with scans the pairing job has not reached yet,
their scans from ``scans`` (sorted by venue and time) paired here by the same rule. Without paired stays for the
trace's pairing parameters (another dwell or maximum stay, or a cluster) every group is paired from scans, as
before. Every query is parameterised; the only SQL text that varies is the number of ``{vN:String}``
placeholders. Only trusted verdicts count unless asked; then every row says what it rests on.
The query function is injected, so the same code runs on the embedded store, on a ClickHouse server, and
inside the engine on its store thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from engine.codes.verdicts import TRUSTED, Verdict
from engine.errors import PayloadError
from engine.tracing.model import (
    DAY_MS,
    LINK_DOCUMENT,
    LINK_QR,
    LINK_QR_UNVERIFIED,
    MINUTE_MS,
    Contact,
    PersonTrace,
    QueryFn,
    Scan,
    SecondDegreeCut,
    Stay,
    TraceOptions,
    VenueTrace,
    period,
    within,
)
from engine.tracing.pairing import Span, overlaps, pair_stays, rank, stay_of, touching, walk
from engine.tracing.presence import stays_touching
from engine.tracing.stays import PairingParams, horizon_and_latest, pairing_state, pairing_state_sql

#: The pairing state a trace read with its index case's scans: (horizon or None, newest block in scans).
State = tuple[int | None, int]

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
_DEDUP = "LIMIT 1 BY scan_id, device_id"  # a scan is (device, scan id): another device's id is another scan
_FINAL = ""  # "FINAL" here and "" above is the alternative the benchmark measures
_COLUMNS = (
    "toString(scan_id), hex(person_key), qr_id, venue_id, toString(direction), "
    "toUnixTimestamp64Milli(scanned_at), toString(verdict), device_id"
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
    "SELECT toString(scan_id), hex(person_key), qr_id, venue_id, toString(direction), "
    "toUnixTimestamp64Milli(scanned_at), toString(verdict), device_id FROM scans {final} {groups}"
    "WHERE ({ranges}) AND {verdicts} "
    "ORDER BY person_key, venue_id, scanned_at, direction, toString(scan_id), device_id {dedup} " + _READ_SETTINGS
)
_TIME = "scanned_at >= fromUnixTimestamp64Milli({%s:Int64}) AND scanned_at < fromUnixTimestamp64Milli({%s:Int64})"
# Only the (person, venue) groups with a scan past the pairing horizon at the windows' venues: a scan changes
# the stays it anchors and its neighbours' (within max_stay). Found in the parts holding blocks past the
# horizon only (a few small parts between two runs of the job), by venue and the windows' whole span: a group
# found that way that needs no re-pairing is paired here by the same rule, so the answer is the same, and
# one set of venues costs less to plan than a term per window. In PREWHERE, so the venue ranges' other
# columns are read only for those groups' rows: this read then costs about the new scans, not the venues.
_FRESH_SQL = (
    "PREWHERE (person_key, venue_id) IN (SELECT person_key, venue_id FROM scans "
    "PREWHERE _block_number > {{horizon:UInt64}} "
    "WHERE _part IN (SELECT name FROM system.parts WHERE database = currentDatabase() AND table = 'scans' "
    "AND active AND max_block_number > {{horizon:UInt64}}) AND has({{fresh_venues:Array(String)}}, venue_id) "
    "AND scanned_at >= fromUnixTimestamp64Milli({{fresh_lo:Int64}}) "
    "AND scanned_at < fromUnixTimestamp64Milli({{fresh_hi:Int64}}) AND {verdicts}) "
)


# -- queries ------------------------------------------------------------------------------------------------
class TraceQueries:
    """Tracing over one store's query function (``Store.query`` or anything with its signature)."""

    def __init__(self, query: QueryFn, *, use_stays: bool = True) -> None:
        self._query = query
        self._use_stays = use_stays  # False: pair every group from scans (the previous path; benchmarks)

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
            seed = "(toFixedString(unhex({pk:String}), 16))"  # a constant, not a subquery: 0.6 ms less on chdb
        elif qr_id is not None and person_key is None:
            if not qr_id or len(qr_id) > 64:
                raise PayloadError("qr_id must be 1-64 characters")
            params["qr"] = qr_id
            # person_by_qr keeps each pair's latest scan, so only the lower bound applies: a person scanned
            # since the period ended is still found; who was not scanned since it began cannot be in it. A
            # trusted trace follows only the links verified scans made (verified = 1, migration 0009); and
            # whatever the link, only rows showing the QR id asked for are this person's (a person key of a
            # row stored before issue 12 is a masked number's, shared by strangers: docs/payload.md, section 5).
            verified = "" if opt.include_unverified else "AND verified = 1 "
            who = (
                "person_key IN (SELECT person_key FROM person_by_qr WHERE qr_id = {qr:String} "
                f"{verified}AND scanned_at >= fromUnixTimestamp64Milli({{lo:Int64}})) AND qr_id = {{qr:String}}"
            )
            seed = "(SELECT person_key FROM person_by_qr WHERE qr_id = {qr:String} AND verified = 1)"
        else:
            raise PayloadError("give exactly one of person_key or qr_id")
        where = f"{who} AND {_TIME % ('lo', 'hi')} AND {verdicts}"
        # The identities a verified code printing its number whole links this one to (identity_links, fed by
        # verified scans only, Rule 2) ride on the same read as a scalar column, like the pairing state (evaluated
        # once, before the rows are read): most people have none, and an IN over identity_links in the WHERE cost
        # about twice as much on chdb (bench/trace_bench.py; README, "Measured": tracing).
        links_sql = f", (SELECT groupUniqArray(hex(linked)) FROM identity_links WHERE key IN {seed})"
        state_sql = ""
        if self._use_stays:
            state_sql, state_params = pairing_state_sql(PairingParams.of(opt))
            state_sql, params = f", {state_sql}", {**params, **state_params}
        # pair_stays drops duplicate scan ids itself, so this read needs no LIMIT BY
        sql = f"SELECT {_COLUMNS}{links_sql}{state_sql} FROM scans_by_person {_FINAL} WHERE {where} {_READ_SETTINGS}"
        rows = self._query(sql, params)
        index_scans = [Scan(*r[:8]) for r in rows]
        state: State | None = None  # no scans, no visits: nothing else is read, so the state is not needed
        if rows:
            state = pairing_state(rows[0][9:]) if self._use_stays else (None, 0)
            linked = list(rows[0][8])
        else:  # nothing in the period under this identity: its linked ones may still have scans there
            linked = [r[0] for r in self._query(f"SELECT hex(linked) FROM identity_links WHERE key IN {seed}", params)]
        if linked:
            index_scans += self._linked_scans(linked, params["lo"], params["hi"], verdicts)
        keys = sorted({s.person_key for s in index_scans})
        visits = within(self._pair(index_scans, opt), from_ms, to_ms)
        if visits:
            visits = self._mark_links(visits, params.get("pk"), qr_id, opt)
        first = self._contacts_of(visits, opt, 1, state)
        contacts = rank(first.values())
        cut = None
        if opt.second_degree and contacts:
            expand = contacts[: opt.second_degree_limit]
            second, counts = self._second_degree(expand, set(keys) | set(first), to_ms, opt, state)
            cut = SecondDegreeCut(len(expand), len(contacts) - len(expand), *counts)
            contacts += second
        return PersonTrace(keys, from_ms, to_ms, opt.include_unverified, visits, contacts, cut)

    def venue(
        self, venue_id: str, from_ms: int | None = None, to_ms: int | None = None, options: TraceOptions | None = None
    ) -> VenueTrace:
        opt = options or TraceOptions()
        from_ms, to_ms = period(from_ms, to_ms, opt.days)
        if not venue_id or len(venue_id) > 128:
            raise PayloadError("venue_id must be 1-128 characters")
        # One venue's window read from scans is one statement whose cost is already about its answer; the
        # stays would add the pairing state's round trip (bench/trace_bench.py, "venue view").
        stays = self.paired_from_scans([(venue_id, from_ms, to_ms)], opt)[0]
        return VenueTrace(venue_id, from_ms, to_ms, opt.include_unverified, within(stays, from_ms, to_ms))

    # -- internals ------------------------------------------------------------------------------------------
    def _linked_scans(self, linked: list[str], lo: int, hi: int, verdicts: str) -> list[Scan]:
        """The scans of the identities linked to the index case: the document's (``linked``) and, one more hop
        through identity_links, the document's other identities (another issuer's code for the same number)."""
        keys = "(SELECT arrayJoin(arrayMap(k -> toFixedString(unhex(k), 16), {keys:Array(String)})))"
        sql = (
            f"SELECT {_COLUMNS} FROM scans_by_person {_FINAL} WHERE (person_key IN {keys} OR person_key IN "
            f"(SELECT linked FROM identity_links WHERE key IN {keys})) AND {_TIME % ('lo', 'hi')} AND {verdicts} "
            f"{_READ_SETTINGS}"
        )
        return [Scan(*r) for r in self._query(sql, {"keys": linked, "lo": lo, "hi": hi})]

    def _mark_links(self, visits: list[Stay], pk: str | None, qr_id: str | None, opt: TraceOptions) -> list[Stay]:
        """Say which link each visit came through: none (the person key asked for), a verified scan's QR-id link,
        (with ``include_unverified`` only) a QR id that nothing but unverified scans claimed for that person
        key, or a verified code's document link."""
        if pk is not None:
            if all(st.person_key == pk.upper() for st in visits):  # the usual case: no linked identity
                return visits
            return [st if st.person_key == pk.upper() else replace(st, link=LINK_DOCUMENT) for st in visits]
        verified: set[str] | None = None
        if opt.include_unverified:  # a trusted trace followed verified links only
            rows = self._query(
                "SELECT DISTINCT hex(person_key) FROM person_by_qr WHERE qr_id = {qr:String} AND verified = 1",
                {"qr": qr_id},
            )
            verified = {r[0] for r in rows}

        def link(st: Stay) -> str:
            if st.qr_id != qr_id:
                return LINK_DOCUMENT
            return LINK_QR if verified is None or st.person_key in verified else LINK_QR_UNVERIFIED

        return [replace(st, link=link(st)) for st in visits]

    def _pair(self, scans: Iterable[Scan], opt: TraceOptions) -> list[Stay]:
        return pair_stays(scans, default_dwell_min=opt.default_dwell_min, max_stay_min=opt.max_stay_min)

    def _contacts_of(
        self, stays: Sequence[Stay], opt: TraceOptions, degree: int, state: State | None
    ) -> dict[str, Contact]:
        margin = round(opt.margin_min * MINUTE_MS)
        windows = [(s.venue_id, s.start_ms - margin, s.end_ms + margin) for s in stays]
        others = self.stays_at(windows, opt, state) if windows else []
        return overlaps(stays, others, margin_min=opt.margin_min, degree=degree)

    def stays_at(
        self, windows: Sequence[tuple[str, int, int]], opt: TraceOptions, state: State | None = None
    ) -> list[Stay]:
        """Everyone's stays touching any (venue, from, to) window, by the rule of :func:`pair_stays`.

        From the paired ``stays`` where the pairing job has paired with this trace's parameters, the groups
        with scans past its horizon replaced by pairing their scans here; otherwise every group from scans.
        ``state`` is the pairing state read with the index case's scans; without it, it is asked for.
        """
        params = PairingParams.of(opt)
        if state is None:
            state = horizon_and_latest(self._query, params) if self._use_stays else (None, 0)
        horizon, latest = state
        if horizon is None:
            return self.paired_from_scans(windows, opt)[0]
        stays = stays_touching(self._query, windows, params, include_unverified=opt.include_unverified)
        fresh: list[Stay] = []
        groups: set[tuple[str, str]] = set()
        if latest > horizon:  # some scans are past the horizon: pair their groups here
            fresh, groups = self.paired_from_scans(windows, opt, fresh_since=horizon)
        if groups:
            stays = [st for st in stays if (st.person_key, st.venue_id) not in groups] + fresh
        stays.sort(key=lambda st: (st.start_ms, st.venue_id, st.person_key))
        return stays

    def paired_from_scans(
        self, windows: Sequence[tuple[str, int, int]], opt: TraceOptions, *, fresh_since: int | None = None
    ) -> tuple[list[Stay], set[tuple[str, str]]]:
        """Stays touching the windows paired from scans, and the (person, venue) groups whose scans were read.

        Pairing needs each person's scans up to ``max_stay`` either side of a window, so that is what is read
        (one key range per venue and merged window, from the venue-ordered ``scans``); ClickHouse removes
        duplicates and sorts, and the stays that touch no window are dropped here. With ``fresh_since`` only
        the groups with a scan in a block after it are read.
        """
        dwell, slack = round(opt.default_dwell_min * MINUTE_MS), round(opt.max_stay_min * MINUTE_MS)
        ranges = _merge(((v, lo - slack, hi + slack) for v, lo, hi in windows), _RANGE_GAP_MS)
        verdicts = _UNVERIFIED_SQL if opt.include_unverified else _TRUSTED_SQL
        stays: list[Stay] = []
        groups: set[tuple[str, str]] = set()
        for start in range(0, len(ranges), _RANGES_PER_QUERY):
            params: dict[str, Any] = {}
            terms = []
            chunk = ranges[start : start + _RANGES_PER_QUERY]
            for i, (venue, lo, hi) in enumerate(chunk):
                params[f"v{i}"], params[f"a{i}"], params[f"b{i}"] = venue, lo, hi
                terms.append(f"(venue_id = {{v{i}:String}} AND {_TIME % (f'a{i}', f'b{i}')})")
            only = ""
            if fresh_since is not None:
                params["horizon"] = fresh_since
                params["fresh_venues"] = sorted({v for v, _, _ in chunk})
                params["fresh_lo"] = min(lo for _, lo, _ in chunk) - slack
                params["fresh_hi"] = max(hi for _, _, hi in chunk) + slack
                only = _FRESH_SQL.format(verdicts=verdicts)
            sql = _SCANS_AT_SQL.format(
                final=_FINAL, ranges=" OR ".join(terms), verdicts=verdicts, dedup=_DEDUP, groups=only
            )
            rows = self._query(sql, params)
            if fresh_since is not None:
                groups.update((r[1], r[3]) for r in rows)
            spans: list[Span] = []
            walk(rows, dwell, slack, spans)
            stays += (stay_of(*span) for span in touching(spans, windows))
        stays.sort(key=lambda st: (st.start_ms, st.venue_id, st.person_key))
        return stays, groups

    def _second_degree(
        self, contacts: Sequence[Contact], known: set[str], to_ms: int, opt: TraceOptions, state: State | None
    ) -> tuple[list[Contact], tuple[int, int, int, float, int]]:
        """Contacts of the top contacts, from their first exposure on: who they could have passed it to.

        Bounded: only those with at least ``second_degree_min_overlap_min`` of overlap in total (exact, before
        the per-encounter rounding) and at most ``second_degree_cap`` of them, highest-ranked first; the second
        value counts what was cut (candidates, below the threshold, over the cap, threshold, cap).
        """
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
        found = self._contacts_of(stays, opt, 2, state)
        candidates = [c for key, c in found.items() if key not in known]
        threshold = round(opt.second_degree_min_overlap_min * MINUTE_MS)
        kept = rank(c for c in candidates if _overlap_ms(c) >= threshold)
        cut = (len(candidates), len(candidates) - len(kept), max(0, len(kept) - opt.second_degree_cap))
        return kept[: opt.second_degree_cap], (*cut, opt.second_degree_min_overlap_min, opt.second_degree_cap)


def _overlap_ms(c: Contact) -> int:
    """A contact's total overlap in milliseconds, from its encounters' bounds (not their rounded minutes)."""
    return sum(
        max(0, min(e.index_end_ms, e.contact_end_ms) - max(e.index_start_ms, e.contact_start_ms)) for e in c.encounters
    )


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
