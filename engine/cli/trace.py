"""Contact-tracing commands: ``trace person``, ``trace venue``, and the tracer credentials: ``tracer-add``,
``tracer-list``, ``tracer-revoke``.

Every trace needs a tracer token (``ENGINE_TRACER_TOKEN`` or ``--token-file FILE``, never the command line,
where every local user reads it) and a case or purpose id (``--case-id``). The command asks a running engine
over HTTP; when none answers it opens the store itself, and then the same gate applies in this process: the
token is checked against the data directory's tracers, the case id is required, and the audit record is
written to the same chain (under the chain's writer lock) before anything is printed. All paths print the same
output, rendered by ``engine.tracing.render``.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from engine.cli.remote import EngineUnreachable, call_engine, credential_registry, open_store
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
        second_degree_min_overlap_min=getattr(args, "second_degree_min_overlap_min", 15.0),
        second_degree_cap=getattr(args, "second_degree_cap", 200),
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
        q["second_degree_min_overlap_min"] = str(args.second_degree_min_overlap_min)
        q["second_degree_cap"] = str(args.second_degree_cap)
    return urllib.parse.urlencode(q)


def tracer_token(args: argparse.Namespace) -> str:
    """The tracer token from ``--token-file`` (0600), ``ENGINE_TRACER_TOKEN`` or the deprecated ``--token``."""
    from engine.permissions import read_secret_file

    if args.token_file:
        return read_secret_file(Path(args.token_file), "tracer token file")
    token = os.environ.get("ENGINE_TRACER_TOKEN") or args.token
    if not token:
        raise EngineError(
            "tracing needs a tracer token: ENGINE_TRACER_TOKEN or --token-file FILE (mode 0600); an operator issues "
            "one with `python -m engine tracer-add NAME`"
        )
    return str(token)


def _run(args: argparse.Namespace, path: str, extra: dict[str, str], ask: Any, local: Any) -> int:
    """Ask the running engine; when none answers, open the store here, through the same gate."""
    from engine.tracing import render as tracing
    from engine.tracing.gate import check_case_id

    cfg = Config.from_sources(args)
    tz = tracing.zone(args.tz)  # refused before any query if unknown
    token = tracer_token(args)
    check_case_id(args.case_id)
    try:
        doc = call_engine(cfg, "GET", f"{path}?{_query_string(args, {**extra, 'case_id': args.case_id})}", token=token)
        trace = tracing.from_json(doc)
    except EngineUnreachable:
        trace = _with_store(cfg, token, ask, local)
    sys.stdout.write(tracing.render(trace, args.format, tz))
    return 0


def _local_client() -> str:
    """Who traced, for the audit record, when the CLI reads the store itself: the local account and host."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"cli {user}@{socket.gethostname()} pid {os.getpid()}"


def _with_store(cfg: Config, token: str, ask: Any, fn: Any) -> Any:
    """The direct path: the gate (token, case id, audit chain) in this process, record stored before printing."""
    from engine.permissions import restrict_umask
    from engine.tracing.audit import AuditLog
    from engine.tracing.gate import TraceGate
    from engine.tracing.queries import TraceQueries
    from engine.web.app import check_private_files
    from engine.web.trace import result_size

    restrict_umask()
    check_private_files(cfg)
    tracers: Any = TracerRegistry.for_data_dir(cfg.data_dir)
    if cfg.store_dsn.startswith("chdb:"):
        tracers.authenticate(token)  # refused before the store is even opened
    the_ask = ask(_local_client())
    store = open_store(cfg)  # migrated; a store still locked by a process is explained
    if not cfg.store_dsn.startswith("chdb:"):  # a server: the deployment's tracers
        from engine.tracing.credentials import StoredCredentials

        tracers = StoredCredentials(store, "tracer", live=True, fallback=tracers)
    try:
        audit = AuditLog(store, cfg.data_dir).open()
        try:
            gate = TraceGate(tracers, audit)
            tracer = gate.admit(token, the_ask)
            trace = fn(TraceQueries(store.query))
            gate.record(tracer, the_ask, result_size(trace))
        finally:
            audit.close()
        return trace
    finally:
        store.close()


def _times(args: argparse.Namespace) -> tuple[int | None, int | None]:
    from engine.tracing.model import parse_time

    return (parse_time(args.start) if args.start else None, parse_time(args.end) if args.end else None)


def _person(args: argparse.Namespace) -> int:
    from engine.tracing.gate import TraceAsk
    from engine.web.trace import person_subject, trace_parameters

    if (args.qr_id is None) == (args.person_key is None):
        raise EngineError("give exactly one of --qr-id or --person-key")
    opt, (t0, t1) = _options(args), _times(args)
    extra = {"qr_id": args.qr_id} if args.qr_id is not None else {"person_key": args.person_key}
    kind = "second_degree" if opt.second_degree else "person"
    subject = person_subject(args.person_key, args.qr_id)
    return _run(
        args,
        "/v1/trace/person",
        extra,
        lambda client: TraceAsk(kind, subject, args.case_id, trace_parameters(t0, t1, opt), client),
        lambda q: q.person(person_key=args.person_key, qr_id=args.qr_id, from_ms=t0, to_ms=t1, options=opt),
    )


def _venue(args: argparse.Namespace) -> int:
    from engine.tracing.gate import TraceAsk
    from engine.web.trace import trace_parameters

    opt, (t0, t1) = _options(args), _times(args)
    return _run(
        args,
        "/v1/trace/venue",
        {"venue_id": args.venue_id},
        lambda client: TraceAsk(
            "venue", f"venue_id={args.venue_id}", args.case_id, trace_parameters(t0, t1, opt), client
        ),
        lambda q: q.venue(args.venue_id, t0, t1, opt),
    )


def _tracer_add(args: argparse.Namespace) -> int:
    cfg = Config.from_sources(args)
    with credential_registry(cfg) as registry:
        token = registry.add(args.name, args.valid_days)
        tracer = next(t for t in registry.tracers() if t.name == args.name)
    if args.token_out:
        from engine.durable import create_private_file

        create_private_file(Path(args.token_out), token.encode() + b"\n")
    else:
        print(token)
    print(
        f"tracer {args.name!r} created, valid until {_when(tracer.expires)}; the token is shown once and stored "
        "only as a hash. Use it as ENGINE_TRACER_TOKEN or --token-file FILE (0600).",
        file=sys.stderr,
    )
    return 0


def _when(ts: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _tracer_list(args: argparse.Namespace) -> int:
    import time

    cfg = Config.from_sources(args)
    now = time.time()
    with credential_registry(cfg) as registry:
        tracers = registry.tracers()
    if args.json:
        import orjson

        doc = [{"name": t.name, "created": t.created, "expires": t.expires, "revoked": t.revoked, "state": t.state(now)}
               for t in tracers]  # fmt: skip
        print(orjson.dumps({"tracers": doc}, option=orjson.OPT_INDENT_2).decode())
        return 0
    for t in tracers:
        print(f"{t.name:32} {t.state(now):8} created {_when(t.created)}  expires {_when(t.expires)}")
    return 0


def _tracer_revoke(args: argparse.Namespace) -> int:
    cfg = Config.from_sources(args)
    with credential_registry(cfg) as registry:
        tracer = registry.revoke(args.name)
    print(f"tracer {tracer.name!r} revoked at {_when(tracer.revoked)} (refused from its next request)")
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
    p.add_argument("--case-id", required=True, help="the case or purpose this trace serves (kept in the audit log)")
    p.add_argument("--token-file", help="file holding the tracer token (mode 0600) [or env ENGINE_TRACER_TOKEN]")
    p.add_argument("--token", help=argparse.SUPPRESS)  # deprecated: argv is readable by every local user


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
    p.add_argument(
        "--second-degree-min-overlap-min",
        type=float,
        default=15.0,
        help="a second-degree contact needs this much overlap in total (min, default: 15)",
    )
    p.add_argument(
        "--second-degree-cap", type=int, default=200, help="second-degree contacts listed at most (default: 200)"
    )
    p.set_defaults(func=_person)
    p = tsub.add_parser("venue", help="everyone at a venue during a period")
    _common(p)
    p.add_argument("--venue-id", required=True)
    p.set_defaults(func=_venue)
    # the store settings too: on a ClickHouse server the tracers are the deployment's registry in the store
    p = sub.add_parser("tracer-add", help="create a tracer credential and print its token once")
    Config.add_arguments(p, only=CLIENT_SETTINGS)
    p.add_argument("name")
    p.add_argument("--valid-days", type=float, default=90.0, help="days until the token expires (default 90, max 366)")
    p.add_argument("--token-out", help="write the token to this new file (0600) instead of printing it")
    p.set_defaults(func=_tracer_add)
    p = sub.add_parser("tracer-list", help="tracers with their state (active, expired, revoked) and expiry")
    Config.add_arguments(p, only=CLIENT_SETTINGS)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_tracer_list)
    p = sub.add_parser("tracer-revoke", help="end a tracer's token at once")
    Config.add_arguments(p, only=CLIENT_SETTINGS)
    p.add_argument("name")
    p.set_defaults(func=_tracer_revoke)
