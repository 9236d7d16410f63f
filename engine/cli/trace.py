"""Contact-tracing commands: ``trace person``, ``trace venue`` and ``tracer-add``.

Where the answer comes from is the command's problem, not the user's: with a ClickHouse server DSN it
queries the server directly; otherwise it asks a running engine over HTTP with a tracer token (``--token``
or ``ENGINE_TRACER_TOKEN``), and when no engine answers it opens the embedded store itself (chdb lets one
process hold it). All three print the same output, rendered by ``engine.tracing.render``.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from typing import Any

from engine.cli import address
from engine.cli.remote import EngineUnreachable, call_engine, open_store
from engine.config import CLIENT_SETTINGS, Config
from engine.errors import EngineError
from engine.tracing.credentials import TracerRegistry


def _options(args: argparse.Namespace) -> Any:
    from engine.tracing.model import TraceOptions

    return TraceOptions(
        days=args.days,
        default_dwell_min=args.dwell_min,
        margin_min=args.margin_min,
        max_stay_min=args.max_stay_min,
        include_unverified=args.include_unverified,
        second_degree=getattr(args, "second_degree", False),
        second_degree_limit=getattr(args, "second_degree_limit", 20),
    )


def _query_string(args: argparse.Namespace, extra: dict[str, str]) -> str:
    q = {
        **extra,
        "days": str(args.days),
        "dwell_min": str(args.dwell_min),
        "margin_min": str(args.margin_min),
        "max_stay_min": str(args.max_stay_min),
        "format": "json",
    }
    if args.start:
        q["from"] = args.start
    if args.end:
        q["to"] = args.end
    if args.include_unverified:
        q["include_unverified"] = "1"
    if getattr(args, "second_degree", False):
        q["second_degree"] = "1"
        q["second_degree_limit"] = str(args.second_degree_limit)
    return urllib.parse.urlencode(q)


def _run(args: argparse.Namespace, path: str, extra: dict[str, str], local: Any) -> int:
    """Ask the server, the running engine, or the embedded store, in that order of preference."""
    from engine.tracing import render as tracing

    cfg = Config.from_sources(args)
    tz = tracing.zone(args.tz)  # refused before any query if unknown
    trace = None
    if not cfg.store_dsn.startswith("chdb://"):
        trace = _with_store(cfg, local)
    else:
        token = args.token or os.environ.get("ENGINE_TRACER_TOKEN") or None
        running = address.locate(cfg.data_dir)
        if token is None and running is not None:
            raise EngineError(
                f"an engine runs for {cfg.data_dir} (PID {running.pid}, {running.url}), so tracing goes through it and "
                "needs a tracer token: create one with `python -m engine tracer-add NAME --data-dir "
                f"{cfg.data_dir}`, then pass it as --token or ENGINE_TRACER_TOKEN"
            )
        try:
            doc = call_engine(cfg, "GET", f"{path}?{_query_string(args, extra)}", token=token)
            trace = tracing.from_json(doc)
        except EngineUnreachable:
            trace = _with_store(cfg, local)
    sys.stdout.write(tracing.render(trace, args.format, tz))
    return 0


def _with_store(cfg: Config, fn: Any) -> Any:
    from engine.tracing.queries import TraceQueries

    store = open_store(cfg)
    try:
        return fn(TraceQueries(store.query))
    finally:
        store.close()


def _times(args: argparse.Namespace) -> tuple[int | None, int | None]:
    from engine.tracing.model import parse_time

    return (parse_time(args.start) if args.start else None, parse_time(args.end) if args.end else None)


def _person(args: argparse.Namespace) -> int:
    if (args.qr_id is None) == (args.person_key is None):
        raise EngineError("give exactly one of --qr-id or --person-key")
    opt, (t0, t1) = _options(args), _times(args)
    extra = {"qr_id": args.qr_id} if args.qr_id is not None else {"person_key": args.person_key}
    return _run(
        args,
        "/v1/trace/person",
        extra,
        lambda q: q.person(person_key=args.person_key, qr_id=args.qr_id, from_ms=t0, to_ms=t1, options=opt),
    )


def _venue(args: argparse.Namespace) -> int:
    opt, (t0, t1) = _options(args), _times(args)
    return _run(args, "/v1/trace/venue", {"venue_id": args.venue_id}, lambda q: q.venue(args.venue_id, t0, t1, opt))


def _tracer_add(args: argparse.Namespace) -> int:
    cfg = Config.from_sources(args)
    token = TracerRegistry.for_data_dir(cfg.data_dir).add(args.name)
    print(token)
    print(
        f"tracer {args.name!r} created; this token is shown once and stored only as a hash. "
        "Use it as ENGINE_TRACER_TOKEN or --token.",
        file=sys.stderr,
    )
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    Config.add_arguments(p, only=CLIENT_SETTINGS)
    p.add_argument("--from", dest="start", help="period start (ISO 8601, UTC if no offset; or Unix seconds)")
    p.add_argument("--to", dest="end", help="period end (default: now)")
    p.add_argument("--days", type=float, default=14.0, help="period length when --from is not given (default: 14)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output (default: table)")
    p.add_argument("--tz", default="UTC", help="time zone of the times printed, e.g. Asia/Ho_Chi_Minh (default: UTC)")
    p.add_argument("--include-unverified", action="store_true", help="also count unsigned/ID-card/expired codes")
    p.add_argument(
        "--dwell-min", type=float, default=60.0, help="stay assumed when an exit is missing, minutes (default: 60)"
    )
    p.add_argument(
        "--margin-min", type=float, default=15.0, help="stays this close count as overlapping, minutes (default: 15)"
    )
    p.add_argument(
        "--max-stay-min",
        type=float,
        default=720.0,
        help="longest stay an entry/exit pair may span, minutes (default: 720)",
    )
    p.add_argument("--token", help="tracer token for a running engine [env ENGINE_TRACER_TOKEN]")


def register(sub: argparse._SubParsersAction) -> None:
    trace = sub.add_parser("trace", help="contact tracing: an index case's visits and contacts, or a venue")
    tsub = trace.add_subparsers(dest="trace_command", required=True, metavar="WHAT")
    p = tsub.add_parser("person", help="visits and exposures of an index case")
    _common(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--qr-id", help="the index case's QR id")
    who.add_argument("--person-key", help="the index case's person key (32 hex characters)")
    p.add_argument("--second-degree", action="store_true", help="also list contacts of the top contacts")
    p.add_argument("--second-degree-limit", type=int, default=20, help="top contacts expanded (default: 20)")
    p.set_defaults(func=_person)
    p = tsub.add_parser("venue", help="everyone at a venue during a period")
    _common(p)
    p.add_argument("--venue-id", required=True)
    p.set_defaults(func=_venue)
    p = sub.add_parser("tracer-add", help="create a tracer credential and print its token once")
    Config.add_arguments(p, only=("data_dir",))
    p.add_argument("name")
    p.set_defaults(func=_tracer_add)
