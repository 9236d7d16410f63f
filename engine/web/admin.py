"""Operator endpoints: device registry, trust-list reload, store statistics and WAL state.

They exist because the embedded store belongs to the running engine (chdb locks its directory to one
process): an operator's CLI on the same host talks to the engine with the bearer token the engine wrote to
``<data_dir>/admin.token`` (0600) at first start. Scanner-device credentials are never accepted here.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from engine.codes.payload import b64url_decode_canonical, b64url_encode
from engine.devices.auth import Device
from engine.errors import AuthError, EngineError, ForbiddenError, PayloadError
from engine.web.body import read_body
from engine.web.keys import AUTH_FAILURES, RUNTIME, TLS_CONTEXT, Runtime

log = logging.getLogger(__name__)


def require_admin(request: web.Request) -> Runtime:
    """The runtime, for a caller holding the admin token; every failure is counted and logged (rate-limited)."""
    rt = request.app[RUNTIME]
    header = request.headers.get("Authorization", "")
    failures = request.app[AUTH_FAILURES]
    if not header.startswith("Bearer "):
        failures.record("admin", "missing", request.remote or "?")
        raise AuthError("operator endpoints need Authorization: Bearer <admin token>")
    if request.headers.get("X-Device-Id"):
        raise ForbiddenError("scanner credentials are not accepted on operator endpoints")
    if not hmac.compare_digest(header[7:].strip().encode(), rt.admin_token.encode()):
        failures.record("admin", "invalid", request.remote or "?")
        raise AuthError("admin token is not valid")
    return rt


async def _json_body(request: web.Request) -> dict[str, object]:
    try:
        doc = orjson.loads(await read_body(request))
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PayloadError("body must be a JSON object")
    return doc


def _device_json(d: Device) -> dict[str, object]:
    return {"device_id": d.device_id, "public_key": b64url_encode(d.public_key), "revoked": d.revoked, "label": d.label}


async def register_device(request: web.Request) -> web.Response:
    rt = require_admin(request)
    doc = await _json_body(request)
    device_id, pk_text, label = doc.get("device_id"), doc.get("public_key"), doc.get("label", "")
    if not isinstance(device_id, str) or not isinstance(pk_text, str) or not isinstance(label, str):
        raise PayloadError('need "device_id" and "public_key" (base64url) strings')
    public_key = b64url_decode_canonical(pk_text.encode(), 32)
    if public_key is None:
        raise PayloadError("public_key must be 32 bytes of canonical base64url")
    device = Device(device_id, public_key, False, label)
    rt.devices.put(device)  # validates id and key before anything is persisted
    await rt.in_store_thread(lambda: rt.store.upsert_device(device_id, public_key, revoked=False, label=label))
    return web.json_response(_device_json(device), status=201)


async def revoke_device(request: web.Request) -> web.Response:
    rt = require_admin(request)
    device_id = request.match_info["device_id"]
    device = rt.devices.revoke(device_id)  # effective for the very next request
    await rt.in_store_thread(
        lambda: rt.store.upsert_device(device.device_id, device.public_key, revoked=True, label=device.label)
    )
    return web.json_response(_device_json(device))


async def list_devices(request: web.Request) -> web.Response:
    rt = require_admin(request)
    return web.json_response({"devices": [_device_json(d) for d in rt.devices.all()]})


async def reload_trust(request: web.Request) -> web.Response:
    rt = require_admin(request)
    trust = await rt.reload_trust()
    return web.json_response({"keys": len(trust.keys), "revoked_codes": len(trust.revoked_codes)})


async def stats(request: web.Request) -> web.Response:
    rt = require_admin(request)
    return web.Response(body=orjson.dumps(await rt.in_store_thread(rt.store.stats)), content_type="application/json")


async def wal_state(request: web.Request) -> web.Response:
    rt = require_admin(request)
    w = rt.wal
    return web.json_response(
        {
            "last_lsn": w.last_lsn,
            "checkpoint_lsn": w.checkpoint_lsn,
            "backlog_records": w.backlog_records,
            "backlog_bytes": w.backlog_bytes,
            "disk_bytes": w.disk_bytes,
            "budget_bytes": rt.config.wal_budget_mb << 20,
            "store_ok": rt.drain.store_ok,
            "last_store_error": rt.drain.last_error,
        }
    )


async def _sighup_ctx(app: web.Application) -> AsyncIterator[None]:
    """SIGHUP reloads the trust list and the TLS certificate, as operators expect of a long-running daemon.

    The certificate goes into the listeners' existing SSL context (``engine.web.tls``): open connections stay
    up, new handshakes get the new certificate; a bad new pair is logged and the old one stays in force."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        async def reload() -> None:
            try:
                await app[RUNTIME].reload_trust()
            except EngineError as exc:
                log.error("trust list reload on SIGHUP failed, keeping the old list: %s", exc)
            tls = app.get(TLS_CONTEXT)
            if tls is not None:
                try:
                    tls.reload()
                except EngineError as exc:
                    log.error("TLS certificate reload on SIGHUP failed, keeping the old one: %s", exc)

        task = loop.create_task(reload())
        pending.add(task)
        task.add_done_callback(pending.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (e.g. tests)
        yield
        return
    yield
    loop.remove_signal_handler(signal.SIGHUP)


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/admin/devices", register_device)
    app.router.add_get("/v1/admin/devices", list_devices)
    app.router.add_post("/v1/admin/devices/{device_id}/revoke", revoke_device)
    app.router.add_post("/v1/admin/trust/reload", reload_trust)
    app.router.add_get("/v1/admin/stats", stats)
    app.router.add_get("/v1/admin/wal", wal_state)
    app.cleanup_ctx.append(_sighup_ctx)
