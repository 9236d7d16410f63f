"""The device-facing HTTP API: ``POST /v1/scans``, health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from engine.errors import OverloadedError, PayloadError
from engine.ingest.batcher import SubmitResult
from engine.ingest.intake import parse_body, render_answer
from engine.web.body import read_body
from engine.web.keys import METRICS, RUNTIME
from engine.web.openapi import openapi_document

DAY_MS = 86_400_000


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def post_scans(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    cfg = rt.config
    if rt.shutting_down:
        raise OverloadedError("the engine is shutting down; retry", 5.0)
    if request.content_type != "application/json":
        raise PayloadError("Content-Type must be application/json")
    body = await read_body(request)  # size bounded by client_max_size (413), time by body_timeout_s (408)
    device = rt.devices.authenticate(request.method, request.path_qs, request.headers, body)
    now_ms = int(time.time() * 1000)
    intake = parse_body(
        body,
        header_device_id=device.device_id,
        max_items=cfg.max_scans_per_request,
        now_ms=now_ms,
        oldest_ms=now_ms - cfg.retention_days * DAY_MS,
        skew_ms=cfg.skew_s * 1000,
    )
    metrics = request.app[METRICS]
    metrics.scans_received.inc(intake.count)
    for _index, rejection, _echo in intake.rejected:
        metrics.scans_rejected.labels(reason=rejection.code).inc()
    if len(intake):
        answer = await rt.batcher.submit(intake, now_ms)
    else:
        answer = SubmitResult(np.zeros(0, np.bool_), np.zeros(0, np.uint8), np.zeros(0, np.uint8))
    body = render_answer(intake.count, intake.index, intake.scan_texts, intake.rejected, *answer)
    return web.Response(body=body, status=202, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    """Ready = the store answers and the WAL is within budget; load balancers stop sending otherwise."""
    rt = request.app[RUNTIME]
    try:
        store_ok = await asyncio.wait_for(rt.in_store_thread(rt.store.ping), timeout=2.0)
    except TimeoutError:
        store_ok = False
    budget = rt.config.wal_budget_mb << 20
    wal_ok = rt.wal.backlog_bytes <= budget
    ready = store_ok and wal_ok and rt.drain.store_ok
    return _json(
        {
            "ready": ready,
            "store": "ok" if store_ok and rt.drain.store_ok else f"unavailable: {rt.drain.last_error or 'ping failed'}",
            "wal_backlog_bytes": rt.wal.backlog_bytes,
            "wal_backlog_records": rt.wal.backlog_records,
            "wal_budget_bytes": budget,
            "queue_scans": rt.batcher.queued_scans,
        },
        status=200 if ready else 503,
    )


async def metrics_endpoint(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return _json(openapi_document())


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/scans", post_scans)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/openapi.json", openapi)
