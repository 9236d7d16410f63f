"""The operations dashboard over HTTP: the page and its assets, ``/v1/stats`` and its server-sent event stream.

The figures come from :class:`engine.ops.dashboard.StatsRing`, which derives them from the app's own metrics
once a second; everything the page needs is shipped in the package (no CDN).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from engine.ops.dashboard import StatsRing
from engine.web.keys import METRICS
from engine.web.openapi import documented, error, json_body, query, text_body

STATS = web.AppKey("stats", StatsRing)


async def _stats_ctx(app: web.Application) -> AsyncIterator[None]:
    ring = app[STATS]
    task = asyncio.create_task(ring.run(), name="dashboard-stats")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _end_streams(app: web.Application) -> None:
    app[STATS].close_streams()


def _json(data: object) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json", headers={"Cache-Control": "no-store"})


@documented(
    summary="The dashboard's figures: the latest point and the ring buffer",
    audience="public",
    parameters=[query("history", {"type": "string", "enum": ["0", "1", "false", "no"]}, "0: latest point only")],
    responses={200: json_body("figures (docs/metrics.md)")},
)
async def stats(request: web.Request) -> web.Response:
    """Latest point plus the ring buffer (``?history=0`` to skip it, e.g. for a monitoring probe)."""
    ring = request.app[STATS]
    body: dict[str, Any] = {"interval_s": ring.interval_s, "window_s": ring.window_s, "latest": ring.latest()}
    if request.query.get("history", "1") not in ("0", "false", "no"):
        body["history"] = ring.history()
    return _json(body)


@documented(
    summary="The dashboard's figures as server-sent events (history first, then one event a second)",
    audience="public",
    responses={200: text_body("an endless event stream", "text/event-stream")},
)
async def stats_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the ring buffer first (``event: history``), then one ``event: stats`` per tick.

    Sending the history on every (re)connect lets EventSource's automatic reconnect heal a gap by itself.
    """
    ring = request.app[STATS]
    queue = ring.subscribe()
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    try:
        await response.prepare(request)
        await response.write(b"retry: 2000\nevent: history\ndata: " + orjson.dumps(ring.history()) + b"\n\n")
        while (point := await queue.get()) is not None:
            await response.write(b"event: stats\ndata: " + orjson.dumps(point) + b"\n\n")
    except ConnectionResetError:
        pass  # the page went away; nothing to answer
    finally:
        ring.unsubscribe(queue)
    return response


def _static(name: str, content_type: str) -> web.Response:
    body = resources.files("engine.web.static").joinpath(name).read_bytes()
    return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "no-cache"})


@documented(summary="The live operations dashboard", audience="public", responses={200: text_body("page", "text/html")})
async def dashboard_page(request: web.Request) -> web.Response:
    return _static("dashboard.html", "text/html")


@documented(
    summary="Redirect to /dashboard",
    audience="public",
    responses={302: {"description": "to ../dashboard", "headers": {"Location": {"schema": {"type": "string"}}}}},
)
async def dashboard_slash(request: web.Request) -> web.Response:
    """``/dashboard/`` would resolve the page's relative asset URLs one level too deep: send it to ``/dashboard``.

    The location is relative so it also works behind a proxy that mounts the engine under a path prefix.
    """
    raise web.HTTPFound("../dashboard")


@documented(
    summary="The dashboard's script and style sheet",
    audience="public",
    path_parameters={"name": {"type": "string", "enum": ["dashboard.js", "dashboard.css"]}},
    responses={
        200: {
            "description": "the asset",
            "content": {"text/javascript": {"schema": {"type": "string"}}, "text/css": {"schema": {"type": "string"}}},
        },
        404: error("No such asset"),
    },
)
async def dashboard_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    types = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
    if name not in types:
        raise web.HTTPNotFound(text=f"no asset {name!r}")
    return _static(name, types[name])


def setup(app: web.Application, *, interval_s: float = 1.0, window_s: float = 5.0, history_s: float = 300.0) -> None:
    app[STATS] = StatsRing(app[METRICS], interval_s=interval_s, window_s=window_s, history_s=history_s)
    app.cleanup_ctx.append(_stats_ctx)
    app.on_shutdown.append(_end_streams)
    app.router.add_get("/dashboard", dashboard_page)
    app.router.add_get("/dashboard/", dashboard_slash)
    app.router.add_get("/dashboard/{name}", dashboard_asset)
    app.router.add_get("/v1/stats", stats)
    app.router.add_get("/v1/stats/stream", stats_stream)
