"""Trace answers as rows, JSON, CSV and a table: one shape for the CLI and the HTTP API."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import asdict, fields
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from engine.clock import iso_utc
from engine.errors import PayloadError
from engine.tracing.model import (
    TRUSTED_LABELS,
    Contact,
    Encounter,
    PersonTrace,
    SecondDegreeCut,
    Stay,
    VenueTrace,
    parse_time,
)

# -- output -------------------------------------------------------------------------------------------------
# A row's verdict and flags are its own person's stay's (for an exposure: the contact's); index_verdict and
# index_flags are the index case's stay that exposure overlapped, and trusted says whether both are trusted.
# devices / scan_ids: the (device, scan id) of each scan the row's stay rests on, entry first, ";"-separated;
# index_devices / index_scan_ids the same for the index stay. link: how the trace reached the (index) stay.
FIELDS = (
    "section", "rank", "person_key", "qr_id", "venue_id", "start", "end", "overlap_min", "total_overlap_min",
    "verdict", "trusted", "flags", "index_verdict", "index_flags", "link", "devices", "scan_ids", "index_devices",
    "index_scan_ids", "via",
)  # fmt: skip
#: Columns the terminal table leaves out (CSV and JSON have them): the long ids; the device stays.
_TABLE_HIDES = frozenset({"trusted", "scan_ids", "index_devices", "index_scan_ids"})


def iso(ms: int, tz: tzinfo = UTC) -> str:
    """A time for people: UTC as ``...Z`` (the HTTP API's form), any other zone with its offset (``+07:00``)."""
    if tz is UTC:
        return iso_utc(ms / 1000)
    return datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="seconds")


def zone(name: str) -> tzinfo:
    """An IANA zone by name (``Asia/Ho_Chi_Minh``), or UTC; an unknown name is refused, never guessed."""
    if name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise PayloadError(f"unknown time zone {name!r}: use an IANA name such as Asia/Ho_Chi_Minh, or UTC") from None


def _stay_row(section: str, st: Stay, tz: tzinfo) -> dict[str, Any]:
    return {
        "section": section,
        "rank": "",
        "person_key": st.person_key,
        "qr_id": st.qr_id,
        "venue_id": st.venue_id,
        "start": iso(st.start_ms, tz),
        "end": iso(st.end_ms, tz),
        "overlap_min": "",
        "total_overlap_min": "",
        "verdict": st.verdict,
        "trusted": st.trusted,
        "flags": ",".join(st.flags),
        "index_verdict": "",
        "index_flags": "",
        "link": st.link,
        "devices": ";".join(st.device_ids),
        "scan_ids": ";".join(st.scan_ids),
        "index_devices": "",
        "index_scan_ids": "",
        "via": "",
    }


def rows(trace: PersonTrace | VenueTrace, tz: tzinfo = UTC) -> list[dict[str, Any]]:
    """One flat row per visit, encounter or stay: what CSV and the table print, and what JSON nests."""
    if isinstance(trace, VenueTrace):
        return [_stay_row("venue", st, tz) for st in trace.stays]
    out = [_stay_row("visit", st, tz) for st in trace.visits]
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
                    "start": iso(e.contact_start_ms, tz),
                    "end": iso(e.contact_end_ms, tz),
                    "overlap_min": e.overlap_min,
                    "total_overlap_min": c.total_overlap_min,
                    "verdict": e.contact_verdict,
                    "trusted": e.verdict in TRUSTED_LABELS,
                    "flags": ",".join(e.contact_flags),
                    "index_verdict": e.index_verdict,
                    "index_flags": ",".join(e.index_flags),
                    "link": e.index_link,
                    "devices": ";".join(e.contact_device_ids),
                    "scan_ids": ";".join(e.contact_scan_ids),
                    "index_devices": ";".join(e.index_device_ids),
                    "index_scan_ids": ";".join(e.index_scan_ids),
                    "via": ",".join(c.via),
                }
            )
    if (cut := trace.second_degree_cut) is not None:
        out.append(_cut_row(cut))
    return out


def _cut_row(cut: SecondDegreeCut) -> dict[str, Any]:
    """What a bounded second degree left out, as one row of the flat shape: the counts as ``name=value`` in
    ``flags``, so a CSV reader keeps its columns and still learns the list is not everyone."""
    row: dict[str, Any] = dict.fromkeys(FIELDS, "")
    row["section"] = "second_degree_cut"
    row["trusted"] = True
    row["flags"] = ";".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in asdict(cut).items())
    return row


def to_json(trace: PersonTrace | VenueTrace, tz: tzinfo = UTC) -> dict[str, Any]:
    head: dict[str, Any] = {
        "from": iso(trace.from_ms, tz),
        "to": iso(trace.to_ms, tz),
        "include_unverified": trace.include_unverified,
    }
    if isinstance(trace, VenueTrace):
        return {"venue_id": trace.venue_id, **head, "stays": [_stay_json(s, tz) for s in trace.stays]}
    return {
        "person_keys": trace.person_keys,
        **head,
        "visits": [_stay_json(s, tz) for s in trace.visits],
        "exposures": [_contact_json(i + 1, c, tz) for i, c in enumerate(x for x in trace.contacts if x.degree == 1)],
        "second_degree": [
            _contact_json(i + 1, c, tz) for i, c in enumerate(x for x in trace.contacts if x.degree == 2)
        ],
        "second_degree_cut": asdict(trace.second_degree_cut) if trace.second_degree_cut else None,
    }


def _contact_json(rank: int, c: Contact, tz: tzinfo) -> dict[str, Any]:
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
                **_fields(e, _ENCOUNTER_FIELDS),
                "index_start": iso(e.index_start_ms, tz),
                "index_end": iso(e.index_end_ms, tz),
                "contact_start": iso(e.contact_start_ms, tz),
                "contact_end": iso(e.contact_end_ms, tz),
                "trusted": e.verdict in TRUSTED_LABELS,
            }
            for e in c.encounters
        ],
    }


def _fields(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """A dataclass's fields as a dict, like ``asdict`` for flat ones but without its deep copy of every value:
    ``asdict`` cost half a 150,000-stay answer's encoding, and the provenance tuples doubled that."""
    return {name: getattr(obj, name) for name in names}


_STAY_FIELDS = tuple(f.name for f in fields(Stay))
_ENCOUNTER_FIELDS = tuple(f.name for f in fields(Encounter))


def _stay_json(st: Stay, tz: tzinfo) -> dict[str, Any]:
    return {**_fields(st, _STAY_FIELDS), "start": iso(st.start_ms, tz), "end": iso(st.end_ms, tz),
            "trusted": st.trusted}  # fmt: skip


def from_json(doc: dict[str, Any]) -> PersonTrace | VenueTrace:
    """Rebuild a trace from :func:`to_json`, so a CLI that asked a running engine prints exactly what it would."""
    t0, t1 = parse_time(doc["from"]), parse_time(doc["to"])

    # .get: an engine from before provenance (issue 12) answers without these fields
    def stay(d: dict[str, Any]) -> Stay:
        return Stay(d["person_key"], d["qr_id"], d["venue_id"], d["start_ms"], d["end_ms"], tuple(d["flags"]),
                    d["verdict"], tuple(d.get("device_ids", ())), tuple(d.get("scan_ids", ())),
                    d.get("link", ""))  # fmt: skip

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
                          e["contact_end_ms"], e["overlap_min"], tuple(e["flags"]), e["verdict"],
                          e.get("contact_verdict", ""), tuple(e.get("contact_flags", ())), e.get("index_verdict", ""),
                          tuple(e.get("index_flags", ())), tuple(e.get("contact_device_ids", ())),
                          tuple(e.get("contact_scan_ids", ())), tuple(e.get("index_device_ids", ())),
                          tuple(e.get("index_scan_ids", ())), e.get("index_link", ""))
                for e in c["encounters"]
            ],
            c["via"],
        )
        for c in doc["exposures"] + doc["second_degree"]
    ]  # fmt: skip
    cut = SecondDegreeCut(**doc["second_degree_cut"]) if doc.get("second_degree_cut") else None
    return PersonTrace(doc["person_keys"], t0, t1, doc["include_unverified"], [stay(s) for s in doc["visits"]],
                       contacts, cut)  # fmt: skip


def to_csv(trace: PersonTrace | VenueTrace, tz: tzinfo = UTC) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows(trace, tz))
    return buf.getvalue()


def to_table(trace: PersonTrace | VenueTrace, tz: tzinfo = UTC) -> str:
    """Aligned columns for a terminal; untrusted rows are marked with '!' so they cannot be missed, and each row
    names the devices its scans came from (the scan ids are in CSV and JSON)."""
    data = [r for r in rows(trace, tz) if r["section"] != "second_degree_cut"]  # the title says what was cut
    if isinstance(trace, VenueTrace):
        title = f"venue {trace.venue_id}: {len(trace.stays)} stays"
    else:
        n1 = sum(1 for c in trace.contacts if c.degree == 1)
        title = f"person {','.join(trace.person_keys) or '(no scans)'}: {len(trace.visits)} visits, {n1} contacts"
        if (cut := trace.second_degree_cut) is not None:
            title += (
                f"; second degree from {cut.expanded} contacts ({cut.not_expanded} not expanded): "
                f"{cut.candidates} overlapped, {cut.below_threshold} under {cut.min_overlap_min:g} min, "
                f"{cut.over_cap} over the cap of {cut.cap}"
            )
    title += f", {iso(trace.from_ms, tz)} .. {iso(trace.to_ms, tz)}"
    title += " (including UNVERIFIED codes, marked !)" if trace.include_unverified else " (trusted codes only)"
    cols = [c for c in FIELDS if c not in _TABLE_HIDES]
    cells = [[("" if r["trusted"] else "!") + str(r[c]) if c == "verdict" else str(r[c]) for c in cols] for r in data]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def render(trace: PersonTrace | VenueTrace, fmt: str, tz: tzinfo = UTC) -> str:
    """``tz`` changes how times are written, never which rows there are (the period is chosen in UTC instants)."""
    if fmt == "json":
        return orjson.dumps(to_json(trace, tz), option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "csv":
        return to_csv(trace, tz)
    if fmt == "table":
        return to_table(trace, tz)
    raise PayloadError("format must be table, csv or json")
