"""Tracing over HTTP: ``GET /v1/trace/person`` and ``/v1/trace/venue`` for tracer credentials only."""

from __future__ import annotations

import hmac
import logging
from typing import Any

import orjson
from aiohttp import web

from engine.errors import AuthError, ForbiddenError, PayloadError
from engine.tracing.credentials import TracerRegistry
from engine.tracing.model import PersonTrace, TraceOptions, VenueTrace, parse_time
from engine.tracing.queries import TraceQueries
from engine.tracing.render import to_csv, to_json
from engine.web.keys import CONFIG, RUNTIME
from engine.web.openapi import documented, query

log = logging.getLogger(__name__)


_TRACERS = web.AppKey("tracers", TracerRegistry)


def require_tracer(request: web.Request) -> str:
    """The tracer's name; scanner devices and the operator's admin token are refused even when valid."""
    if request.headers.get("X-Device-Id") or request.headers.get("X-Signature"):
        raise ForbiddenError("scanner-device credentials cannot trace")
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        raise AuthError("tracing needs Authorization: Bearer <tracer token>")
    token = header[7:].strip()
    if hmac.compare_digest(token.encode(), request.app[RUNTIME].admin_token.encode()):
        raise ForbiddenError(
            "the admin token is not a tracer credential: create one with `python -m engine tracer-add NAME`"
        )
    tracer = request.app[_TRACERS].authenticate(token)
    if tracer is None:
        raise AuthError("tracer token is not valid")
    return tracer.name


def options_from_query(q: Any) -> tuple[int | None, int | None, TraceOptions]:
    def num(name: str, default: float) -> float:
        try:
            return float(q.get(name, default))
        except ValueError:
            raise PayloadError(f"{name} must be a number") from None

    flag = {"1", "true", "yes", "on"}
    opt = TraceOptions(
        days=num("days", 14.0),
        default_dwell_min=num("dwell_min", 60.0),
        margin_min=num("margin_min", 15.0),
        max_stay_min=num("max_stay_min", 720.0),
        include_unverified=q.get("include_unverified", "").lower() in flag,
        second_degree=q.get("second_degree", "").lower() in flag,
        second_degree_limit=int(num("second_degree_limit", 20)),
    )
    t0 = parse_time(q["from"]) if q.get("from") else None
    t1 = parse_time(q["to"]) if q.get("to") else None
    return t0, t1, opt


def _respond(trace: PersonTrace | VenueTrace, fmt: str) -> web.Response:
    if fmt == "csv":
        return web.Response(text=to_csv(trace), content_type="text/csv")
    if fmt != "json":
        raise PayloadError("format must be json or csv")
    return web.Response(body=orjson.dumps(to_json(trace)), content_type="application/json")


_PERIOD = [
    query("from", {"type": "string"}, "period start: RFC 3339 (UTC if no offset) or Unix seconds"),
    query("to", {"type": "string"}, "period end (default: now)"),
    query("days", {"type": "number", "minimum": 0, "maximum": 366}, "period length when from is absent (14)"),
    query(
        "dwell_min",
        {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 10080},
        "stay assumed when an exit is missing, minutes (60)",
    ),
    query("margin_min", {"type": "number", "minimum": 0, "maximum": 1440}, "stays this close overlap, minutes (15)"),
    query("max_stay_min", {"type": "number", "minimum": 0, "maximum": 10080}, "longest entry/exit pair (720)"),
    query("include_unverified", {"type": "string", "enum": ["0", "1", "true", "false"]}, "count unverified codes"),
    query("format", {"type": "string", "enum": ["json", "csv"]}, "answer format (json)"),
]
_TRACE_ANSWERS = {
    200: lambda cfg: {
        "description": "the trace",
        "content": {"application/json": {"schema": {"type": "object"}}, "text/csv": {"schema": {"type": "string"}}},
    },
}


@documented(
    summary="Visits and ranked exposures of an index case (by QR id or person key)",
    audience="tracer",
    parameters=[
        query("qr_id", {"type": "string", "minLength": 1, "maxLength": 64}, "the index case's QR id"),
        query("person_key", {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"}, "or its person key"),
        *_PERIOD,
        query("second_degree", {"type": "string", "enum": ["0", "1", "true", "false"]}, "contacts of contacts"),
        query("second_degree_limit", {"type": "integer", "minimum": 0, "maximum": 1000}, "top contacts expanded"),
    ],
    responses=_TRACE_ANSWERS,
)
async def trace_person(request: web.Request) -> web.Response:
    name = require_tracer(request)
    q = request.query
    t0, t1, opt = options_from_query(q)
    rt = request.app[RUNTIME]
    queries = TraceQueries(rt.store.query)
    pk, qr = q.get("person_key"), q.get("qr_id")
    trace = await rt.in_store_thread(lambda: queries.person(person_key=pk, qr_id=qr, from_ms=t0, to_ms=t1, options=opt))
    log.info(
        "trace by %s: person (%d visits, %d contacts)",
        name,
        len(trace.visits),
        len(trace.contacts),
        extra={"audit": {"tracer": name, "trace": "person", "visits": len(trace.visits)}},
    )
    return _respond(trace, q.get("format", "json"))


@documented(
    summary="Everyone at a venue during a period, as stays",
    audience="tracer",
    parameters=[
        query("venue_id", {"type": "string", "minLength": 1, "maxLength": 128}, "the venue", required=True),
        *_PERIOD,
    ],
    responses=_TRACE_ANSWERS,
)
async def trace_venue(request: web.Request) -> web.Response:
    name = require_tracer(request)
    q = request.query
    t0, t1, opt = options_from_query(q)
    venue_id = q.get("venue_id", "")
    rt = request.app[RUNTIME]
    trace = await rt.in_store_thread(TraceQueries(rt.store.query).venue, venue_id, t0, t1, opt)
    log.info(
        "trace by %s: venue %s (%d stays)",
        name,
        venue_id,
        len(trace.stays),
        extra={"audit": {"tracer": name, "trace": "venue", "venue_id": venue_id, "stays": len(trace.stays)}},
    )
    return _respond(trace, q.get("format", "json"))


def setup(app: web.Application) -> None:
    app[_TRACERS] = TracerRegistry.for_data_dir(app[CONFIG].data_dir)
    app.router.add_get("/v1/trace/person", trace_person)
    app.router.add_get("/v1/trace/venue", trace_venue)
