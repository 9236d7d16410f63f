"""Tracing over HTTP: ``GET /v1/trace/person`` and ``/v1/trace/venue`` for tracer credentials only.

Every trace goes through the :class:`engine.tracing.gate.TraceGate` (token, ``case_id``, allowance, audit chain),
and its audit record is stored on the store thread before the answer is sent: if the record cannot be written,
the tracer gets a 503 and no data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import math
import re
from collections.abc import Callable
from typing import Any, TypeAlias

import orjson
from aiohttp import web

from engine.errors import ForbiddenError, PayloadError, TraceLimitError
from engine.ingest.intake import MAX_VENUE_CHARS
from engine.tracing.credentials import Tracer
from engine.tracing.gate import CASE_ID, TraceAsk
from engine.tracing.lane import TraceCancelled
from engine.tracing.model import PersonTrace, QueryFn, TraceOptions, VenueTrace, parse_time
from engine.tracing.queries import TraceQueries
from engine.tracing.render import to_csv, to_json
from engine.web.keys import AUTH_FAILURES, CONFIG, METRICS, RUNTIME, TRACE_GATE, TRACE_LANE
from engine.web.openapi import SchemaSource, anchored, documented, error, query

Trace: TypeAlias = PersonTrace | VenueTrace
_CHUNK = 1 << 20  # bytes of a trace answer written at a time
_VENUE = re.compile(rf"[A-Za-z0-9_.:-]{{1,{MAX_VENUE_CHARS}}}")


def bearer_token(request: web.Request) -> str | None:
    """The tracer token offered, if any; scanner-device credentials and the admin token are refused even when valid."""
    if request.headers.get("X-Device-Id") or request.headers.get("X-Signature"):
        raise ForbiddenError("scanner-device credentials cannot trace")
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.startswith("Bearer ") else ""
    if token and hmac.compare_digest(token.encode(), request.app[RUNTIME].admin_token.encode()):
        request.app[AUTH_FAILURES].record("tracer", "admin_token", client_address(request))
        raise ForbiddenError(
            "the admin token is not a tracer credential: create one with `python -m engine tracer-add NAME`"
        )
    return token or None


def client_address(request: web.Request) -> str:
    """The peer address; behind a declared TLS terminator, the address it forwarded too (as it claimed it)."""
    peer = request.remote or "?"
    if request.app[CONFIG].plaintext_behind_proxy:
        forwarded = request.headers.get("X-Forwarded-For", "").split(",")[-1].strip()
        if forwarded:
            return f"{forwarded[:100]} via {peer}"
    return peer


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
        second_degree_limit=_whole(num("second_degree_limit", 20), "second_degree_limit"),
        second_degree_min_overlap_min=num("second_degree_min_overlap_min", 15.0),
        second_degree_cap=_whole(num("second_degree_cap", 200), "second_degree_cap"),
    )
    t0 = parse_time(q["from"]) if q.get("from") else None
    t1 = parse_time(q["to"]) if q.get("to") else None
    return t0, t1, opt


def trace_parameters(t0: int | None, t1: int | None, opt: TraceOptions) -> dict[str, Any]:
    """What the audit record keeps of a trace's parameters (the CLI's direct path uses the same)."""
    return {"from_ms": t0, "to_ms": t1, **dataclasses.asdict(opt)}


def _format(q: Any) -> str:
    fmt = q.get("format", "json")
    if fmt not in ("json", "csv"):
        raise PayloadError("format must be json or csv")
    return str(fmt)


def _whole(value: float, name: str) -> int:
    if not math.isfinite(value) or value != int(value):  # a fraction is refused rather than rounded
        raise PayloadError(f"{name} must be a whole number")
    return int(value)


def _encode(trace: PersonTrace | VenueTrace, fmt: str) -> tuple[bytes, str]:
    """The answer's bytes and content type (run on the tracing lane's thread, never on the event loop)."""
    if fmt == "csv":
        return to_csv(trace).encode(), "text/csv; charset=utf-8"
    return chunked_dumps(to_json(trace)), "application/json"


def chunked_dumps(doc: Any, chunk: int = 1000) -> bytes:
    """``orjson.dumps(doc)``, byte for byte, with long lists encoded ``chunk`` items at a time.

    One ``orjson.dumps`` of a 150,000-stay answer (36 MB) is one C call holding the GIL for up to a second, and the
    event loop, which needs the GIL for every request, waits for all of it (measured: a 1,055 ms stall of the loop
    during such a trace); a slice at a time, the GIL passes to the loop between slices (longest stall in that
    phase then 143 ms)."""
    if isinstance(doc, dict):
        items = [orjson.dumps(str(k)) + b":" + chunked_dumps(v, chunk) for k, v in doc.items()]
        return b"{" + b",".join(items) + b"}"
    if isinstance(doc, list) and len(doc) > chunk:
        parts = [orjson.dumps(doc[i : i + chunk])[1:-1] for i in range(0, len(doc), chunk)]
        return b"[" + b",".join(parts) + b"]"
    return orjson.dumps(doc)


def person_subject(person_key: str | None, qr_id: str | None) -> str:
    if (person_key is None) == (qr_id is None):
        raise PayloadError("give exactly one of qr_id or person_key")
    return f"qr_id={qr_id}" if qr_id is not None else f"person_key={person_key}"


def result_size(trace: PersonTrace | VenueTrace) -> int:
    if isinstance(trace, PersonTrace):
        return len(trace.visits) + len(trace.contacts)
    return len(trace.stays)


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
_TRACE_ANSWERS: dict[int, SchemaSource] = {
    200: lambda cfg: {
        "description": "the trace; its audit record was stored before this answer was sent",
        "content": {"application/json": {"schema": {"type": "object"}}, "text/csv": {"schema": {"type": "string"}}},
    },
    401: error("Missing, unknown, expired or revoked tracer token"),
    403: error("Scanner or operator credentials, which cannot trace"),
    413: error(
        "Stopped by a cap of the tracing lane (rows read, rows back, answer bytes); the body names the cap "
        "(cap, limit) and how to narrow the trace (narrow)"
    ),
    422: error("Stopped by the tracing lane's time cap (--trace-timeout-s); the body says how to narrow the trace"),
    429: error(
        "The tracer's allowance for this kind of trace is used up, or it already runs its concurrent traces "
        "(--trace-per-tracer), or the lane is full (--trace-concurrency); see Retry-After"
    ),
    503: error("The audit record cannot be written (store down, audit chain broken): no answer is given"),
}
_CASE = query(
    "case_id",
    {"type": "string", "pattern": anchored(CASE_ID.pattern)},
    "the case or purpose this trace serves, kept in its audit record (docs/security.md)",
    required=True,
)


@documented(
    summary="Visits and ranked exposures of an index case (by QR id or person key)",
    audience="tracer",
    parameters=[
        _CASE,
        query("qr_id", {"type": "string", "minLength": 1, "maxLength": 64}, "the index case's QR id"),
        query("person_key", {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"}, "or its person key"),
        *_PERIOD,
        query("second_degree", {"type": "string", "enum": ["0", "1", "true", "false"]}, "contacts of contacts"),
        query("second_degree_limit", {"type": "integer", "minimum": 0, "maximum": 1000}, "top contacts expanded"),
        query(
            "second_degree_min_overlap_min",
            {"type": "number", "minimum": 0, "maximum": 1440},
            "a second-degree contact needs this much overlap in total, minutes (15)",
        ),
        query(
            "second_degree_cap",
            {"type": "integer", "minimum": 0, "maximum": 100_000},
            "second-degree contacts listed at most (200); second_degree_cut in the answer (a second_degree_cut "
            "row in CSV) says what was left out",
        ),
    ],
    responses=_TRACE_ANSWERS,
)
async def trace_person(request: web.Request) -> web.StreamResponse:
    q = request.query
    token = bearer_token(request)
    fmt = _format(q)
    t0, t1, opt = options_from_query(q)
    pk, qr = q.get("person_key"), q.get("qr_id")
    kind = "second_degree" if opt.second_degree else "person"
    ask = TraceAsk(
        kind, person_subject(pk, qr), q.get("case_id", ""), trace_parameters(t0, t1, opt), client_address(request)
    )
    gate = request.app[TRACE_GATE]
    tracer = gate.admit(token, ask)
    return await _on_lane(
        request,
        tracer,
        ask,
        fmt,
        lambda q: TraceQueries(q).person(person_key=pk, qr_id=qr, from_ms=t0, to_ms=t1, options=opt),
    )


@documented(
    summary="Everyone at a venue during a period, as stays",
    audience="tracer",
    parameters=[
        _CASE,
        query("venue_id", {"type": "string", "pattern": anchored(_VENUE.pattern)}, "the venue", required=True),
        *_PERIOD,
    ],
    responses=_TRACE_ANSWERS,
)
async def trace_venue(request: web.Request) -> web.StreamResponse:
    q = request.query
    token = bearer_token(request)
    fmt = _format(q)
    t0, t1, opt = options_from_query(q)
    venue_id = q.get("venue_id", "")
    if not _VENUE.fullmatch(venue_id):
        raise PayloadError(f"venue_id must be 1-{MAX_VENUE_CHARS} characters of letters, digits and _ . : -")
    ask = TraceAsk(
        "venue", f"venue_id={venue_id}", q.get("case_id", ""), trace_parameters(t0, t1, opt), client_address(request)
    )
    gate = request.app[TRACE_GATE]
    tracer = gate.admit(token, ask)
    return await _on_lane(request, tracer, ask, fmt, lambda q: TraceQueries(q).venue(venue_id, t0, t1, opt))


async def _on_lane(
    request: web.Request, tracer: Tracer, ask: TraceAsk, fmt: str, compute: Callable[[QueryFn], Trace]
) -> web.StreamResponse:
    """Run a trace on the tracing lane (engine.tracing.lane: own store clients and threads, caps, cancelled when
    the client goes away), store its audit record, then stream the answer the lane encoded."""
    rt = request.app[RUNTIME]
    lane = request.app[TRACE_LANE]

    def gone() -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    try:
        done = await lane.run(tracer.name, compute, result_size, lambda t: _encode(t, fmt), gone=gone)
    except TraceCancelled:  # the lane saw the connection close
        request.app[METRICS].traces_refused.labels(cause="client_gone").inc()
        return web.Response(status=499, text="client closed the request; the trace was stopped")
    except asyncio.CancelledError:  # aiohttp cancelled the handler (its client went away): the lane stopped it
        request.app[METRICS].traces_refused.labels(cause="client_gone").inc()
        raise
    except TraceLimitError as exc:
        request.app[METRICS].traces_refused.labels(cause=exc.details["cap"]).inc()
        raise
    await rt.in_store_thread(request.app[TRACE_GATE].record, tracer, ask, done.rows)  # before the answer leaves
    response = web.StreamResponse(headers={"Content-Type": done.content_type})
    response.content_length = len(done.body)
    await response.prepare(request)
    view = memoryview(done.body)
    for start in range(0, len(view), _CHUNK):  # the loop only moves bytes, a chunk at a time
        await response.write(view[start : start + _CHUNK])
    await response.write_eof()
    return response


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/trace/person", trace_person)
    app.router.add_get("/v1/trace/venue", trace_venue)
