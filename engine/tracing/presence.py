"""Who was at a venue when: the stays that touch (venue, from, to) windows, read from the paired ``stays`` table.

Why a module of its own: this is the read the issue of province scale is about. Pairing at query time reads
every scan at the visited venues half a day either side (``max_stay``) and pairs them in Python, so a trace
costs what the venues' traffic costs. Here ClickHouse reads one key range per venue window from ``stays``
(ordered by venue and anchor time) and applies the overlap condition itself, so only the stays that touch a
window leave it: a trace costs about the size of its answer. The rows are the anchors' pairing results for
one scope (trusted scans only, or every scan), deduplicated by ``FINAL`` before the condition is evaluated (a
re-paired row must hide its older version, even when only the older one would match). ``FINAL`` measured
close to no deduplication at all (bench/trace_profile.py; figures: see the closing note): the key ranges are
small and mostly in one part each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from engine.tracing.model import QueryFn, Stay
from engine.tracing.stays import TRUSTED_SQL, PairingParams

#: Windows per statement: keeps the text and ClickHouse's key analysis small.
WINDOWS_PER_QUERY = 200
# Key ranges of one venue less than this apart are read as one: on chdb each key range costs planning and
# evaluation of its own terms, more than reading a few quiet days of one venue's stays between two windows
# (bench/trace_profile.py; figures: see the closing note). The same gap as the reads of scans.
_KEY_GAP_MS = 3 * 86_400_000
_READ_SETTINGS = "SETTINGS optimize_move_to_prewhere = 0, compile_expressions = 0"
_TIME = "scanned_at >= fromUnixTimestamp64Milli({%s:Int64}) AND scanned_at <= fromUnixTimestamp64Milli({%s:Int64})"
# The overlap condition over every window at once: three array parameters and one lambda, instead of an OR
# of a term per window. The terms cost key analysis and expression planning per window (they are not key
# conditions: the stay's bounds are not in the key), the lambda a few comparisons per row read.
_TOUCHES = (
    "arrayExists((v, a, b) -> v = venue_id AND {s}_start <= b AND {s}_end >= a, "
    "{{wv:Array(String)}}, {{wa:Array(Int64)}}, {{wb:Array(Int64)}})"
)


def merge(windows: Iterable[tuple[str, int, int]], gap: int = 0) -> list[tuple[str, int, int]]:
    """Windows at one venue that overlap (or are less than ``gap`` apart) become one."""
    out: list[tuple[str, int, int]] = []
    for venue, lo, hi in sorted(windows):
        if out and out[-1][0] == venue and lo <= out[-1][2] + gap:
            out[-1] = (venue, out[-1][1], max(hi, out[-1][2]))
        else:
            out.append((venue, lo, hi))
    return out


def _select(scope: str) -> str:
    """A row laid out as :func:`engine.tracing.pairing.stay_of` makes a Stay: person, QR id (the exit's if it has
    one), venue, start, end, kind, verdict (the first untrusted one of the stay's two scans), and the anchor's
    and the other end's (device, scan id): the stay's provenance."""
    s = scope
    return (
        f"SELECT hex(person_key), if({s}_last_qr_id != '', {s}_last_qr_id, qr_id), venue_id, {s}_start, {s}_end, "
        f"toString({s}_kind), if({TRUSTED_SQL}, toString({s}_last_verdict), toString(verdict)), device_id, "
        f"toString(scan_id), {s}_last_device_id, toString({s}_last_scan_id) FROM stays FINAL"
    )


def stays_touching(
    query: QueryFn, windows: Sequence[tuple[str, int, int]], params: PairingParams, *, include_unverified: bool
) -> list[Stay]:
    """Every paired stay (of the scope) that shares an instant with a window at its venue."""
    scope = "a" if include_unverified else "t"
    exact = merge(windows)
    stays: list[Stay] = []
    for start in range(0, len(exact), WINDOWS_PER_QUERY):
        chunk = exact[start : start + WINDOWS_PER_QUERY]
        # a stay touching [lo, hi] is anchored at most max_stay before lo (its entry) and at most the default
        # dwell after hi (an exit nobody entered for, which starts a dwell before it)
        keys = merge(((v, lo - params.max_stay_ms, hi + params.dwell_ms) for v, lo, hi in chunk), _KEY_GAP_MS)
        p: dict[str, Any] = {
            "wv": [v for v, _, _ in chunk],
            "wa": [lo for _, lo, _ in chunk],
            "wb": [hi for _, _, hi in chunk],
        }
        key_terms = []
        for i, (venue, lo, hi) in enumerate(keys):
            p[f"kv{i}"], p[f"ka{i}"], p[f"kb{i}"] = venue, lo, hi
            key_terms.append(f"(venue_id = {{kv{i}:String}} AND {_TIME % (f'ka{i}', f'kb{i}')})")
        sql = (
            f"{_select(scope)} WHERE ({' OR '.join(key_terms)}) AND {scope}_kind != 'none' "
            f"AND {_TOUCHES.format(s=scope)} {_READ_SETTINGS}"
        )
        for person, qr, venue, t0, t1, kind, verdict, dev, scan, last_dev, last_scan in query(sql, p):
            flags: tuple[str, ...]
            devices: tuple[str, ...]
            scans: tuple[str, ...]
            if kind == "paired":
                flags, devices, scans = (), (dev, last_dev), (scan, last_scan)
            else:  # one scan: the entry whose exit is inferred, or the exit nobody entered for
                flags, devices, scans = (kind,), (dev,), (scan,)
            stays.append(Stay(person, qr, venue, int(t0), int(t1), flags, verdict, devices, scans))
    return stays
