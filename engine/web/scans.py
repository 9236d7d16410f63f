"""The device-facing HTTP API: ``POST /v1/scans``, health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from engine.errors import ForbiddenError, NotFoundError, OverloadedError, PayloadError
from engine.ingest.batcher import SubmitResult
from engine.ingest.intake import parse_body, render_answer
from engine.web.body import read_body
from engine.web.keys import CONFIG, METRICS, RUNTIME, TLS_CONTEXT, TRACE_LANE
from engine.web.openapi import SCAN_RESULT, document, documented, error, json_body, scans_request_body, text_body
from engine.web.tls import require_device_certificate

log = logging.getLogger(__name__)
DAY_MS = 86_400_000


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


ACCEPTED = {
    "type": "object",
    "required": ["stored", "duplicates", "rejected", "results"],
    "properties": {
        "stored": {"type": "integer"},
        "duplicates": {"type": "integer"},
        "rejected": {"type": "integer"},
        "results": {"type": "array", "items": SCAN_RESULT},
    },
}


@documented(
    summary="Submit a batch of scans from one device",
    audience="device",
    description="Answered once every accepted scan is durable (WAL fsync). One result per item, in request order; "
    "a rejected item does not refuse the request (docs/item-rejections.md). A device bound to venues "
    "(device-register --venue, device-bind) has every item for another venue rejected as `venue_not_bound`; "
    "an unbound device posts for any venue unless the engine runs with --require-venue-binding (then 403).",
    request_body=scans_request_body,
    responses={
        202: json_body("Every accepted scan is durable; a verdict per scan, rejected items with reasons", ACCEPTED),
        400: error("Malformed envelope: not JSON, no scans list, too many items, device_id not the signer"),
        401: error("Missing, invalid, stale or replayed request signature; with mTLS on, no device certificate"),
        403: error("Unknown or revoked device; or, with --require-venue-binding, a device bound to no venue"),
        408: error("Request body not received in time"),
        413: error("Body too large"),
        429: error("Device rate limit; see Retry-After"),
        503: error("Overloaded, WAL over budget or shutting down; see Retry-After"),
    },
)
async def post_scans(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    cfg = rt.config
    if rt.shutting_down:
        raise OverloadedError("the engine is shutting down; retry", 5.0)
    if request.content_type != "application/json":
        raise PayloadError("Content-Type must be application/json")
    tls = request.app.get(TLS_CONTEXT)
    if tls is not None and tls.requires_client_certificates:  # from the headers, before any body is read
        require_device_certificate(request.transport, request.headers.get("X-Device-Id", ""))
    body = await read_body(request)  # size bounded by client_max_size (413), time by body_timeout_s (408)
    device = rt.devices.authenticate(request.method, request.path_qs, request.headers, body)
    now_ms = int(time.time() * 1000)
    intake = parse_body(
        body,
        header_device_id=device.device_id,
        max_items=cfg.max_scans_per_request,
        now_ms=now_ms,
        oldest_ms=now_ms - cfg.offline_days * DAY_MS,
        skew_ms=cfg.skew_s * 1000,
    )
    if device.venues:
        intake = intake.for_venues(device.venues)
    elif cfg.require_venue_binding:
        raise ForbiddenError(
            f"device {device.device_id!r} is not bound to any venue and this engine requires binding; keep the "
            "scans and ask the operator to bind it (device-bind)"
        )
    metrics = request.app[METRICS]
    metrics.scans_received.inc(intake.count)
    for _index, rejection, _echo in intake.rejected:
        metrics.scans_rejected.labels(reason=rejection.field).inc()  # the field: label values unchanged
    if len(intake):
        answer = await rt.batcher.submit(intake, now_ms)
    else:
        answer = SubmitResult(np.zeros(0, np.bool_), np.zeros(0, np.uint8), np.zeros(0, np.uint8))
    body = render_answer(intake.count, intake.index, intake.scan_texts, intake.rejected, *answer)
    return web.Response(body=body, status=202, content_type="application/json")


@documented(
    summary="Liveness: the process answers",
    audience="public",
    responses={200: json_body("alive", {"type": "object", "properties": {"status": {"type": "string"}}})},
)
async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "alive"})


#: readiness causes, the only thing /readyz tells an anonymous caller (details go to the log and /metrics)
READY_CAUSES = ("ok", "shutting_down", "store_unavailable", "wal_over_budget", "wal_stalled")
READY = {
    "type": "object",
    "required": ["ready", "cause"],
    "additionalProperties": False,
    "properties": {"ready": {"type": "boolean"}, "cause": {"type": "string", "enum": list(READY_CAUSES)}},
}


@documented(
    summary="Readiness: store reachable and WAL within budget; a cause code and nothing else",
    audience="public",
    responses={200: json_body("ready", READY), 503: json_body("not ready, and the cause", READY)},
)
async def readyz(request: web.Request) -> web.Response:
    """Ready = the store answers and the WAL is within budget; load balancers stop sending otherwise.

    The answer is ``{"ready", "cause"}`` and nothing more: the store's error text names DSN users, hosts and
    paths, which an anonymous probe must not learn. Why the node is not ready goes to the log (once per change
    of cause) and to ``/metrics`` and ``/v1/admin/wal``.
    """
    rt = request.app[RUNTIME]
    lane = request.app.get(TRACE_LANE)
    if lane is not None:  # the tracing lane's background ping (control client, every second): no wait at all
        store_ok = lane.store_answers()
    else:
        try:
            store_ok = await asyncio.wait_for(rt.in_store_thread(rt.store.ping), timeout=2.0)
        except TimeoutError:
            store_ok = False
    if rt.shutting_down:
        cause = "shutting_down"
    elif not (store_ok and rt.drain.store_ok):
        cause = "store_unavailable"
    elif rt.wal.backlog_bytes > rt.config.wal_budget_mb << 20:
        cause = "wal_over_budget"
    elif rt.batcher.wal_stalled:
        cause = "wal_stalled"
    else:
        cause = "ok"
    if cause != rt.ready_cause:
        rt.ready_cause = cause
        detail = rt.drain.last_error or "ping failed" if cause == "store_unavailable" else ""
        log.log(logging.INFO if cause == "ok" else logging.WARNING, "readiness: %s %s", cause, detail)
    return _json({"ready": cause == "ok", "cause": cause}, status=200 if cause == "ok" else 503)


@documented(
    summary="Prometheus metrics (docs/metrics.md)",
    audience="public",
    responses={200: text_body("Prometheus text exposition")},
)
async def metrics_endpoint(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


@documented(summary="This document", audience="public", responses={200: json_body("OpenAPI 3.0 document")})
async def openapi(request: web.Request) -> web.Response:
    return _json(document(request.app, request.app[CONFIG]))


@documented(
    summary="Not on this listener: /metrics, /dashboard and /v1/stats are on the operations listener",
    audience="public",
    responses={404: error("served on the operations listener (--ops-host/--ops-port, loopback by default)")},
)
async def on_ops_listener(request: web.Request) -> web.Response:
    raise NotFoundError(
        f"{request.path} is served on the operations listener (--ops-host/--ops-port, loopback by default), not here"
    )


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/scans", post_scans)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    for path in ("/metrics", "/dashboard", "/v1/stats"):
        app.router.add_get(path, on_ops_listener)
