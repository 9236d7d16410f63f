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


def report_json(reports: list[audit.ChainReport]) -> dict[str, Any]:
    return {"ok": all(r.ok for r in reports), "chains": [{**asdict(r), "ok": r.ok} for r in reports]}


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


async def verify_audit(request: web.Request) -> web.Response:
    rt = require_admin(request)
    heads = [audit.Head.parse(text) for text in request.query.getall("expect", [])]
    anchor = audit.read_anchor(rt.config.data_dir)
    if anchor is not None:
        heads.append(anchor)
    reports = await rt.in_store_thread(audit.verify_store, rt.store, heads)
    return web.json_response(report_json(reports))


async def audit_head(request: web.Request) -> web.Response:
    require_admin(request)
    head = request.app[TRACE_GATE].audit.head
    return web.json_response({"head": head.text() if head else None, "broken": request.app[TRACE_GATE].audit.broken})


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/admin/audit", list_audit)
    app.router.add_get("/v1/admin/audit/verify", verify_audit)
    app.router.add_get("/v1/admin/audit/head", audit_head)
