"""The tracing audit log for operators and auditors: ``GET /v1/admin/audit`` (records, newest first),
``/v1/admin/audit/verify`` (recompute every chain) and ``/v1/admin/audit/head`` (the head to keep off-host).

Behind the operator token like every admin route: audit records name who was traced, so they are as private as
the traces. The CLI (``python -m engine audit list|verify|head``) calls these while an engine runs and reads the
store itself otherwise.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web

from engine.errors import PayloadError
from engine.tracing import audit
from engine.tracing.model import parse_time
from engine.web.admin import require_admin
from engine.web.keys import TRACE_GATE
from engine.web.openapi import documented, error, json_body, query


def report_json(reports: list[audit.ChainReport]) -> dict[str, Any]:
    return {"ok": all(r.ok for r in reports), "chains": [{**asdict(r), "ok": r.ok} for r in reports]}


@documented(
    summary="Audit records of traces, newest first (docs/security.md)",
    audience="operator",
    parameters=[
        query("tracer", {"type": "string"}, "only this tracer"),
        query("case_id", {"type": "string"}, "only this case"),
        query("subject", {"type": "string"}, "exactly as traced, e.g. qr_id=PCC7F3A9D2E1B4"),
        query("since", {"type": "string"}, "RFC 3339 or Unix seconds"),
        query("limit", {"type": "integer", "minimum": 1, "maximum": 100_000}, "at most this many (100)"),
    ],
    responses={200: json_body("the records"), 400: error("Malformed parameter")},
)
async def list_audit(request: web.Request) -> web.Response:
    rt = require_admin(request)
    q = request.query
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise PayloadError("limit must be an integer") from None
    since = parse_time(q["since"]) if q.get("since") else None
    records = await rt.in_store_thread(
        lambda: audit.list_records(
            rt.store,
            tracer=q.get("tracer") or None,
            case_id=q.get("case_id") or None,
            subject=q.get("subject") or None,
            since_ms=since,
            limit=limit,
        )
    )
    return web.json_response({"records": [r.to_json() for r in records]})


@documented(
    summary="Recompute every audit chain against its anchor and the heads given",
    audience="operator",
    parameters=[query("expect", {"type": "string"}, "CHAIN:SEQ:HASH from an earlier audit head, kept off-host")],
    responses={200: json_body("per chain: records, head, problems, anchored"), 400: error("Malformed head")},
)
async def verify_audit(request: web.Request) -> web.Response:
    rt = require_admin(request)
    heads = [audit.Head.parse(text) for text in request.query.getall("expect", [])]
    heads += audit.read_anchors(rt.config.data_dir)
    reports = await rt.in_store_thread(audit.verify_store, rt.store, heads)
    return web.json_response(report_json(reports))


@documented(
    summary="This engine's audit chain head, to keep off-host",
    audience="operator",
    responses={200: json_body("CHAIN:SEQ:HASH, and why the chain is broken if it is")},
)
async def audit_head(request: web.Request) -> web.Response:
    require_admin(request)
    head = request.app[TRACE_GATE].audit.head
    return web.json_response({"head": head.text() if head else None, "broken": request.app[TRACE_GATE].audit.broken})


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/admin/audit", list_audit)
    app.router.add_get("/v1/admin/audit/verify", verify_audit)
    app.router.add_get("/v1/admin/audit/head", audit_head)
