"""``audit list | verify | head``: the tracing audit log for operators and auditors.

Like the other operator commands they ask the running engine (admin token) and read the store themselves when
none runs. ``verify`` recomputes every chain in the table and checks this data directory's anchor, plus any
head an auditor kept elsewhere (``--expect CHAIN:SEQ:HASH``, from an earlier ``audit head``); it exits 1 when a
record was removed, altered or inserted, so it can run from cron or a monitoring probe.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import urllib.parse
from typing import Any

import orjson

from engine.cli.remote import EngineUnreachable, call_engine
from engine.config import Config


def _with_store(cfg: Config, fn: Any) -> Any:
    from engine.permissions import restrict_umask
    from engine.store.store import Store

    restrict_umask()
    store = Store.connect(cfg.store_dsn, database=cfg.database, retention_days=cfg.retention_days)
    try:
        store.migrate()
        return fn(store)
    finally:
        store.close()


def _list(args: argparse.Namespace) -> int:
    from engine.tracing import audit
    from engine.tracing.model import parse_time

    cfg = Config.from_sources(args)
    q = {k: v for k, v in (("tracer", args.tracer), ("case_id", args.case_id), ("subject", args.subject),
                           ("since", args.since), ("limit", str(args.limit))) if v}  # fmt: skip
    try:
        records = call_engine(cfg, "GET", "/v1/admin/audit?" + urllib.parse.urlencode(q))["records"]
    except EngineUnreachable:
        since = parse_time(args.since) if args.since else None
        records = [
            r.to_json()
            for r in _with_store(
                cfg,
                lambda s: audit.list_records(
                    s, tracer=args.tracer, case_id=args.case_id, subject=args.subject, since_ms=since, limit=args.limit
                ),
            )
        ]
    if args.json:
        print(orjson.dumps({"records": records}, option=orjson.OPT_INDENT_2).decode())
        return 0
    for r in records:
        at = dt.datetime.fromtimestamp(r["at_ms"] / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{at} {r['chain']}:{r['seq']:<6} {r['tracer']:20} {r['kind']:13} {r['subject']:32} "
            f"case {r['case_id']:16} rows {r['result_size']:<6} from {r['client']}"
        )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from engine.tracing import audit

    cfg = Config.from_sources(args)
    expect = [audit.Head.parse(e) for e in args.expect]  # refuse a malformed head before anything else
    try:
        path = "/v1/admin/audit/verify?" + urllib.parse.urlencode([("expect", e.text()) for e in expect])
        doc = call_engine(cfg, "GET", path)
    except EngineUnreachable:
        heads = [*expect, *audit.read_anchors(cfg.data_dir)]
        from engine.web.audit import report_json

        doc = report_json(_with_store(cfg, lambda s: audit.verify_store(s, heads)))
    if args.json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        for c in doc["chains"]:
            where = "anchored" if c["anchored"] else "NOT anchored here (its last records cannot be checked)"
            state = "OK" if c["ok"] else "BROKEN"
            print(f"chain {c['chain']}: {c['records']} records, head {c['last_seq']}, {state}, {where}")
            for p in c["problems"]:
                print(f"  - {p}")
        if not doc["chains"]:
            print("no audit records")
    return 0 if doc["ok"] else 1


def _head(args: argparse.Namespace) -> int:
    from engine.tracing import audit

    cfg = Config.from_sources(args)
    try:
        head = call_engine(cfg, "GET", "/v1/admin/audit/head")["head"]
    except EngineUnreachable:
        anchor = audit.read_anchor(cfg.data_dir)
        head = anchor.text() if anchor else None
    if head is None:
        print("no audit chain in this data directory yet", file=sys.stderr)
        return 1
    print(head)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="the tracing audit log: list, verify the hash chains, print the head")
    asub = p.add_subparsers(dest="audit_command", required=True, metavar="WHAT")
    q = asub.add_parser("list", help="audit records, newest first")
    Config.add_arguments(q)
    q.add_argument("--tracer")
    q.add_argument("--case-id")
    q.add_argument("--subject", help="exactly as traced, e.g. qr_id=PCC7F3A9D2E1B4 or venue_id=V")
    q.add_argument("--since", help="ISO 8601 or Unix seconds")
    q.add_argument("--limit", type=int, default=100)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_list)
    q = asub.add_parser("verify", help="recompute every chain; exit 1 if a record was removed, altered or added")
    Config.add_arguments(q)
    q.add_argument("--expect", action="append", default=[], metavar="CHAIN:SEQ:HASH", help="a head kept off-host")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_verify)
    q = asub.add_parser("head", help="print this data directory's chain head, to keep off-host for --expect")
    Config.add_arguments(q)
    q.set_defaults(func=_head)
