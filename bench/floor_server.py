"""The chosen stack with none of the engine in it: one aiohttp handler on uvloop, stage by stage.

``bench/floor_bench.py`` runs it under the e2e load generator to measure what the mandated parts cost per
scan before any engine code runs (the floor under the pipeline's overhead). ``--stage``:

* ``http``: read the body, answer 202 with a body the size of the engine's answer (aiohttp + uvloop + kernel);
* ``auth``: + the device-request check (``DeviceRegistry.authenticate``: SHA-256 of the body, one Ed25519);
* ``intake``: + ``parse_body`` (orjson and the per-item check) and ``render_answer``, as the engine's handler.

No batching, no verify, no WAL, no store: those are the engine's; this is what it cannot avoid. Not part of the
engine; never imported by it.

Run: python bench/floor_server.py --stage intake --port N --device ID:PUBLIC_KEY
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np
import uvloop
from aiohttp import web

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.codes.payload import b64url_decode_canonical
from engine.devices.auth import Device, DeviceRegistry
from engine.ingest.intake import parse_body, render_answer

STAGES = ("http", "auth", "intake")
DAY_MS = 86_400_000
ANSWER_BYTES = 12_000  # the engine's 202 for 100 scans is ~12 KB


def build_app(stage: str, devices: list[Device]) -> web.Application:
    level = STAGES.index(stage)
    registry = DeviceRegistry(devices, rate=1e9, burst=1e9)
    fixed_answer = b'{"padding":"' + b"x" * ANSWER_BYTES + b'"}'

    async def post_scans(request: web.Request) -> web.Response:
        body = await request.read()
        if level == 0:
            return web.Response(body=fixed_answer, status=202, content_type="application/json")
        device = registry.authenticate(request.method, request.path_qs, request.headers, body)
        if level == 1:
            return web.Response(body=fixed_answer, status=202, content_type="application/json")
        now = int(time.time() * 1000)
        intake = parse_body(
            body,
            header_device_id=device.device_id,
            max_items=1000,
            now_ms=now,
            oldest_ms=now - 28 * DAY_MS,
            skew_ms=300_000,
        )
        n = len(intake)
        answer = render_answer(
            intake.count, intake.index, intake.scan_texts, intake.rejected,
            np.ones(n, np.bool_), np.zeros(n, np.uint8), np.zeros(n, np.uint8),
        )  # fmt: skip
        return web.Response(body=answer, status=202, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="alive")

    async def freeze(app: web.Application) -> None:  # as ``engine serve`` does
        gc.collect()
        gc.freeze()

    app = web.Application(client_max_size=8 << 20)
    app.router.add_post("/v1/scans", post_scans)
    app.router.add_get("/healthz", healthz)
    app.on_startup.append(freeze)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=STAGES, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--device", action="append", default=[], help="ID:PUBLIC_KEY (base64url), repeatable")
    args = ap.parse_args()
    devices = []
    for spec in args.device:
        device_id, key = spec.split(":", 1)
        devices.append(Device(device_id, b64url_decode_canonical(key.encode(), 32) or b""))
    web.run_app(
        build_app(args.stage, devices),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        loop=uvloop.new_event_loop(),
        print=None,
    )


if __name__ == "__main__":
    main()
