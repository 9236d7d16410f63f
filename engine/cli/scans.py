"""``scans list``: raw scans for operators, without personal data.

"Which device sent the ``bad_signature`` scans?" is answered here: filter by venue, device, verdict, reason
and time, printed as a table, CSV or JSON. The rows never carry the QR text, the QR id or the person key (see
``engine.store.listing``). While an engine runs, the listing goes through its admin API (it owns the embedded
store, and the listing is logged there); otherwise the store is read directly.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import urllib.parse
from datetime import datetime
from typing import Any

import orjson

from engine.cli.remote import engine_or_store
from engine.config import CLIENT_SETTINGS, Config


def render(rows: list[dict[str, Any]], fmt: str, tz_name: str, truncated: bool) -> str:
    from engine.store.listing import COLUMNS
    from engine.tracing.render import zone

    tz = zone(tz_name)
    if tz_name.upper() not in ("UTC", "Z"):
        rows = [{**r, **{k: _in_zone(r[k], tz) for k in ("scanned_at", "received_at")}} for r in rows]
    if fmt == "json":
        return orjson.dumps({"scans": rows, "truncated": truncated}, option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    cells = [[str(r[c]) for c in COLUMNS] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    footer = f"{len(rows)} scans" + (" (more match: raise --limit or narrow the filters)" if truncated else "")
    return "\n".join([*lines, footer]) + "\n"


def _in_zone(text: str, tz: Any) -> str:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(tz).isoformat(timespec="milliseconds")


def _list(args: argparse.Namespace) -> int:
    from engine.store import listing

    cfg = Config.from_sources(args)
    flt = listing.ScanFilter(
        venue_id=args.venue,
        device_id=args.device,
        verdict=args.verdict,
        reason=args.reason,
        from_ms=listing.parse_instant(args.start, "--from") if args.start else None,
        to_ms=listing.parse_instant(args.end, "--to") if args.end else None,
        limit=args.limit,
    )

    def local(store: Any) -> dict[str, Any]:
        from dataclasses import replace

        rows = listing.list_scans(store.query, store.database, replace(flt, limit=flt.limit + 1))
        return {"scans": rows[: flt.limit], "truncated": len(rows) > flt.limit}

    doc = engine_or_store(cfg, "GET", "/v1/admin/scans?" + urllib.parse.urlencode(flt.as_query()), local)
    sys.stdout.write(render(doc["scans"], args.format, args.tz, bool(doc["truncated"])))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from engine.codes.verdicts import REASONS, VERDICTS
    from engine.store.listing import DEFAULT_LIMIT, MAX_LIMIT

    scans = sub.add_parser("scans", help="raw scans for operators (no personal data)")
    ssub = scans.add_subparsers(dest="scans_command", required=True, metavar="ACTION")
    p = ssub.add_parser(
        "list",
        help="list scans, newest first: id, device, venue, direction, times, verdict, reason, kind",
        description="List scans, newest first. Never shows QR texts, QR ids or person keys.",
    )
    Config.add_arguments(p, only=CLIENT_SETTINGS)
    p.add_argument("--venue", help="only this venue id")
    p.add_argument("--device", help="only this device id")
    p.add_argument("--verdict", choices=VERDICTS, metavar="VERDICT", help=f"only this verdict: {', '.join(VERDICTS)}")
    p.add_argument("--reason", choices=REASONS, metavar="REASON", help="only this verify reason, e.g. signature")
    p.add_argument("--from", dest="start", help="scanned at or after: ISO 8601 with a zone, or Unix seconds")
    p.add_argument("--to", dest="end", help="scanned at or before: ISO 8601 with a zone, or Unix seconds")
    p.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help=f"at most this many (1..{MAX_LIMIT}; default: {DEFAULT_LIMIT})"
    )
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output (default: table)")
    p.add_argument("--tz", default="UTC", help="time zone of the times printed, e.g. Asia/Ho_Chi_Minh (default: UTC)")
    p.set_defaults(func=_list)
