"""The pairing rule: one person's scans at one venue become stays, and overlapping stays become encounters.

An entry closes at the next exit within ``max_stay``; an entry with no exit gets the default dwell (as check-in
systems without mandatory check-out infer it) and is flagged ``inferred_exit``; an exit with no entry is kept
(flagged ``exit_without_entry``), ending the default dwell after it began. Everyone is paired by the same rule,
so the index case and their contacts are judged alike.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from engine.tracing.model import MINUTE_MS, TRUSTED_LABELS, Contact, Encounter, Scan, Stay


def pair_stays(scans: Iterable[Scan], *, default_dwell_min: float, max_stay_min: float) -> list[Stay]:
    """Scans into stays, per person and venue; duplicates of a scan (device, scan id) count once.

    Keyed by the device too: the same scan id from another device is another scan (issue 12), so a device that
    pre-claims a genuine scan's id cannot make it vanish from a trace.
    """
    dwell, max_stay = round(default_dwell_min * MINUTE_MS), round(max_stay_min * MINUTE_MS)
    unique = {(s.person_key, s.venue_id, s.device_id, s.scan_id): s for s in scans}
    ordered: list[Scan] = sorted(unique.values(), key=_pairing_order)
    spans: list[Span] = []
    walk(ordered, dwell, max_stay, spans)
    stays = [stay_of(*span) for span in spans]
    stays.sort(key=lambda st: (st.start_ms, st.venue_id, st.person_key))
    return stays


def _pairing_order(s: Scan) -> tuple[str, str, int, bool, str, str]:
    """Person and venue (a group), then time, entries before exits at the same instant, scan id, device last."""
    return (s.person_key, s.venue_id, s.at_ms, s.direction != "in", s.scan_id, s.device_id)


#: A row laid out as :class:`Scan` (a ``Scan``, or a row of ``_SCANS_AT_SQL``; ``s[7]`` the device): indexed, not
#: named, in the walk below, which sees every scan around an index case's visits (~3k rows a trace at 10M scans).
_Row = tuple[Any, ...]
#: A stay before it becomes a :class:`Stay`: first scan, last scan, start, end, flag ("" for none). Cheap to
#: make, so the others' reads build a ``Stay`` only for the few that touch an index case's visit.
Span = tuple[_Row, _Row, int, int, str]


def walk(ordered: Iterable[_Row], dwell: int, max_stay: int, spans: list[Span]) -> None:
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


def stay_of(first: _Row, last: _Row, start: int, end: int, flag: str, link: str = "") -> Stay:
    """A span as a Stay: the exit's QR id if it has one; the first untrusted verdict of its two scans; the
    (device, scan id) of each scan it rests on (``s[7]``, ``s[0]``): one for a flagged span, two for a pair."""
    verdict = first[6] if first[6] not in TRUSTED_LABELS else last[6]
    devices: tuple[str, ...]
    scan_ids: tuple[str, ...]
    if flag:
        devices, scan_ids = (first[7],), (first[0],)
    else:
        devices, scan_ids = (first[7], last[7]), (first[0], last[0])
    return Stay(first[1], last[2] or first[2], first[3], start, end, (flag,) if flag else (), verdict, devices,
                scan_ids, link)  # fmt: skip


def touching(spans: Iterable[Span], windows: Iterable[tuple[str, int, int]]) -> Iterator[Span]:
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
                    other.verdict,
                    other.flags,
                    mine.verdict,
                    mine.flags,
                    other.device_ids,
                    other.scan_ids,
                    mine.device_ids,
                    mine.scan_ids,
                    mine.link,
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
