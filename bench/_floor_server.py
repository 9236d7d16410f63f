"""Experiment: the chosen stack's floor per request, stage by stage (FLOOR_MODE=bare|auth|parse|render)."""
from __future__ import annotations
import argparse, gc, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
import uvloop
from aiohttp import web
from engine.devices import Device, DeviceRegistry
from engine.intake import parse_body, render_answer
from engine.payload import b64url_decode_canonical

MODE = os.environ.get("FLOOR_MODE", "bare")
LEVEL = ["bare", "auth", "parse", "render"].index(MODE)
STATIC = b'{"x":"' + b"a" * 12000 + b'"}'

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir"); ap.add_argument("--port", type=int); ap.add_argument("--device", action="append", default=[])
    a = ap.parse_args()
    devs = []
    for d in a.device:
        did, pk = d.split(":", 1)
        devs.append(Device(did, b64url_decode_canonical(pk.encode(), 32)))
    reg = DeviceRegistry(devs, rate=1e9, burst=1e9)

    async def post(request: web.Request) -> web.Response:
        body = await request.read()
        if LEVEL >= 1:
            dev = reg.authenticate(request.method, request.path_qs, request.headers, body)
        if LEVEL >= 2:
            now = int(time.time() * 1000)
            it = parse_body(body, header_device_id=dev.device_id, max_items=1000, now_ms=now, oldest_ms=now - 86400000 * 28, skew_ms=300000)
        if LEVEL >= 3:
            n = len(it)
            out = render_answer(it.count, it.index, it.scan_texts, it.rejected, np.ones(n, np.bool_), np.zeros(n, np.uint8), np.zeros(n, np.uint8))
            return web.Response(body=out, status=202, content_type="application/json")
        return web.Response(body=STATIC, status=202, content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def freeze(app):
        gc.collect(); gc.freeze()
    app = web.Application(client_max_size=8 << 20)
    app.router.add_post("/v1/scans", post); app.router.add_get("/healthz", health)
    app.on_startup.append(freeze)
    web.run_app(app, host="127.0.0.1", port=a.port, access_log=None, loop=uvloop.new_event_loop(), print=None)

main()
