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
from dataclasses import replace

import orjson
from aiohttp import web

from engine.codes.payload import b64url_decode_canonical, b64url_encode
from engine.codes.venues import MAX_VENUES, VENUE_PATTERN, check_venue_list
from engine.codes.verdicts import REASONS, VERDICTS
from engine.deployment.trust import newest_version
from engine.devices.auth import DEVICE_ID_RE, MAX_LABEL_CHARS, Device
from engine.errors import AuthError, ConflictError, EngineError, ForbiddenError, NotFoundError, PayloadError
from engine.store import listing
from engine.store.listing import DEFAULT_LIMIT, MAX_ID_CHARS, MAX_LIMIT, ScanFilter
from engine.tracing.credentials import TracerRefused
from engine.web.body import read_body
from engine.web.keys import AUTH_FAILURES, RUNTIME, TLS_CONTEXT, Runtime
from engine.web.openapi import SCAN_ROW, anchored, documented, error, json_body, query

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
    token = header[7:].strip()
    if hmac.compare_digest(token.encode(), rt.admin_token.encode()):
        return rt
    if rt.admin_tokens is not None:  # a server store: any admin token of the deployment's registry
        try:
            rt.admin_tokens.authenticate(token)
            return rt
        except TracerRefused as exc:
            failures.record("admin", exc.reason, request.remote or "?")
            if exc.reason != "unknown":
                raise AuthError(str(exc)) from None
            raise AuthError("admin token is not valid") from None
    failures.record("admin", "invalid", request.remote or "?")
    raise AuthError("admin token is not valid")


async def _json_body(request: web.Request) -> dict[str, object]:
    try:
        doc = orjson.loads(await read_body(request))
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PayloadError("body must be a JSON object")
    return doc


def _device_json(d: Device) -> dict[str, object]:
    return {
        "device_id": d.device_id,
        "public_key": b64url_encode(d.public_key),
        "revoked": d.revoked,
        "label": d.label,
        "venues": list(d.venues),
        "bound": d.bound,
    }


DEVICE = {
    "type": "object",
    "required": ["device_id", "public_key", "revoked", "label", "venues", "bound"],
    "properties": {
        "device_id": {"type": "string"},
        "public_key": {"type": "string", "description": "32-byte Ed25519 public key, unpadded base64url"},
        "revoked": {"type": "boolean"},
        "label": {"type": "string"},
        "venues": {"type": "array", "items": {"type": "string"}, "description": "venues it may post scans for"},
        "bound": {
            "type": "boolean",
            "description": "false: bound to no venue (registered before venue binding, or without --venue): it may "
            "post for any venue, or is refused with --require-venue-binding",
        },
    },
}
DEVICE_ID = {"type": "string", "pattern": anchored(DEVICE_ID_RE.pattern)}
VENUES = {
    "type": "array",
    "maxItems": MAX_VENUES,
    "items": {"type": "string", "pattern": VENUE_PATTERN},
    "description": "the venues the device may post scans for; a scan for another venue is rejected as "
    "`venue_not_bound`. Empty: bound to no venue",
}


def _venues_of(doc: dict[str, object]) -> tuple[str, ...] | None:
    """The request's ``venues`` (validated), or None when it names none."""
    return None if "venues" not in doc else check_venue_list(doc["venues"])


@documented(
    summary="Register (or re-key) a scanner device, optionally bound to venues",
    audience="operator",
    description="Without `venues`, a new device is bound to no venue and a re-registered one keeps its venues.",
    request_body={
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["device_id", "public_key"],
                    "properties": {
                        "device_id": DEVICE_ID,
                        "public_key": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"},
                        "label": {"type": "string", "maxLength": MAX_LABEL_CHARS},
                        "venues": VENUES,
                    },
                }
            }
        },
    },
    responses={201: json_body("registered", DEVICE)},
)
async def register_device(request: web.Request) -> web.Response:
    rt = require_admin(request)
    doc = await _json_body(request)
    device_id, pk_text, label = doc.get("device_id"), doc.get("public_key"), doc.get("label", "")
    if not isinstance(device_id, str) or not isinstance(pk_text, str) or not isinstance(label, str):
        raise PayloadError('need "device_id" and "public_key" (base64url) strings')
    public_key = b64url_decode_canonical(pk_text.encode(), 32)
    if public_key is None:
        raise PayloadError("public_key must be 32 bytes of canonical base64url")
    venues = _venues_of(doc)
    if venues is None:  # a re-key keeps the binding it had
        known = rt.devices.get(device_id)
        venues = known.venues if known is not None else ()
    device = Device(device_id, public_key, False, label, venues)
    rt.devices.put(device)  # validates id and key before anything is persisted
    await rt.in_store_thread(
        lambda: rt.store.upsert_device(device_id, public_key, revoked=False, label=label, venues=venues)
    )
    return web.json_response(_device_json(device), status=201)


@documented(
    summary="Bind a registered device to venues (or unbind it with an empty list); its key stays",
    audience="operator",
    description="How devices registered before venue binding are moved over: effective for the device's very "
    "next request.",
    path_parameters={"device_id": DEVICE_ID},
    request_body={
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "required": ["venues"], "properties": {"venues": VENUES}}}
        },
    },
    responses={200: json_body("bound", DEVICE), 404: error("No such device")},
)
async def bind_device(request: web.Request) -> web.Response:
    rt = require_admin(request)
    doc = await _json_body(request)
    venues = _venues_of(doc)
    if venues is None:
        raise PayloadError('need "venues": a list of venue ids (empty to unbind)')
    device_id = request.match_info["device_id"]
    known = rt.devices.get(device_id)
    if known is None:
        raise NotFoundError(f"no registered device {device_id!r}")
    device = replace(known, venues=venues)
    rt.devices.put(device)
    await rt.in_store_thread(
        lambda: rt.store.upsert_device(
            device_id, device.public_key, revoked=device.revoked, label=device.label, venues=venues
        )
    )
    return web.json_response(_device_json(device))


@documented(
    summary="Revoke a scanner device (its very next request is refused)",
    audience="operator",
    path_parameters={"device_id": DEVICE_ID},
    responses={200: json_body("revoked", DEVICE), 404: error("No such device")},
)
async def revoke_device(request: web.Request) -> web.Response:
    rt = require_admin(request)
    device_id = request.match_info["device_id"]
    device = rt.devices.revoke(device_id)  # effective for the very next request
    await rt.in_store_thread(
        lambda: rt.store.upsert_device(
            device.device_id, device.public_key, revoked=True, label=device.label, venues=device.venues
        )
    )
    return web.json_response(_device_json(device))


@documented(
    summary="List registered scanner devices (bound venues; `bound: false` for devices bound to none)",
    audience="operator",
    responses={
        200: json_body(
            "every device",
            {
                "type": "object",
                "properties": {
                    "devices": {"type": "array", "items": DEVICE},
                    "unbound": {"type": "integer", "description": "active devices bound to no venue"},
                },
            },
        )
    },
)
async def list_devices(request: web.Request) -> web.Response:
    rt = require_admin(request)
    devices = rt.devices.all()
    return web.json_response(
        {"devices": [_device_json(d) for d in devices], "unbound": sum(not d.bound and not d.revoked for d in devices)}
    )


@documented(
    summary="Re-read the trust list (also: SIGHUP); a bad file is refused and the old list kept",
    audience="operator",
    responses={
        200: json_body(
            "reloaded",
            {"type": "object", "properties": {"keys": {"type": "integer"}, "revoked_codes": {"type": "integer"}}},
        ),
        422: error("The trust list file is unreadable or invalid; the engine keeps the list it had"),
    },
)
async def reload_trust(request: web.Request) -> web.Response:
    rt = require_admin(request)
    trust = await rt.reload_trust()
    return web.json_response({"keys": len(trust.keys), "revoked_codes": len(trust.revoked_codes)})


@documented(
    summary="Publish a signed trust list version (trust publish): checked, stored, in force on this node at once",
    audience="operator",
    description="The body is the signed document `trust publish` writes (signed offline by the deployment root "
    "key). Refused unless it verifies under this node's `--trust-root-key` and its version is above every version "
    "the store and this node know; the other nodes pick it up from the store within `--trust-poll-s`.",
    request_body={"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
    responses={
        200: json_body(
            "published",
            {
                "type": "object",
                "properties": {
                    "version": {"type": "integer"},
                    "keys": {"type": "integer"},
                    "revoked_codes": {"type": "integer"},
                },
            },
        ),
        409: error("This node has no --trust-root-key: it reads a plain trust list file"),
        422: error("Not signed by the root key, not above the versions known, or an invalid list"),
    },
)
async def publish_trust(request: web.Request) -> web.Response:
    rt = require_admin(request)
    feed = rt.trust_feed
    if feed is None:
        raise ConflictError("this node reads a plain trust list file (no --trust-root-key): edit it and trust-reload")
    document = await read_body(request)
    signed = await rt.in_store_thread(feed.publish, document, f"admin API on {request.host}")
    await rt.apply_signed_trust(signed)
    log.info("trust list version %d published through this node", signed.version)
    return web.json_response(
        {"version": signed.version, "keys": len(signed.trust.keys), "revoked_codes": len(signed.trust.revoked_codes)}
    )


@documented(
    summary="The trust list in use: signed version and age (0 for a plain file), and the store's newest version",
    audience="operator",
    responses={200: json_body("trust list state")},
)
async def trust_state(request: web.Request) -> web.Response:
    rt = require_admin(request)
    feed = rt.trust_feed
    doc: dict[str, object] = {"keys": len(rt.trust.keys), "revoked_codes": len(rt.trust.revoked_codes)}
    if feed is not None and feed.current is not None:
        doc["version"] = feed.current.version
        doc["published_at_ms"] = feed.current.published_at_ms
        doc["store_version"] = await rt.in_store_thread(newest_version, rt.store)
    else:
        doc["version"] = 0
    return web.json_response(doc)


@documented(
    summary="Store statistics: rows per day, verdicts, rejects by reason, top venues",
    audience="operator",
    responses={200: json_body("statistics"), 503: error("The store is unavailable")},
)
async def stats(request: web.Request) -> web.Response:
    rt = require_admin(request)
    return web.Response(body=orjson.dumps(await rt.in_store_thread(rt.store.stats)), content_type="application/json")


@documented(
    summary="Raw scans, newest first, without personal data (no QR text, QR id or person key)",
    audience="operator",
    description="Which device sent the bad_signature scans, what a venue stored today. Every listing is logged "
    "with its filters (who looked at what).",
    parameters=[
        query("venue", {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}, "venue id"),
        query("device", {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}, "device id"),
        query("verdict", {"type": "string", "enum": list(VERDICTS)}, "verdict"),
        query("reason", {"type": "string", "enum": list(REASONS)}, "verify reason"),
        query("from", {"type": "string"}, "scanned at or after: RFC 3339 with a zone, or Unix seconds"),
        query("to", {"type": "string"}, "scanned at or before: RFC 3339 with a zone, or Unix seconds"),
        query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, f"at most (default {DEFAULT_LIMIT})"),
    ],
    responses={
        200: json_body(
            "the scans",
            {
                "type": "object",
                "required": ["scans", "limit", "truncated"],
                "properties": {
                    "scans": {"type": "array", "items": SCAN_ROW},
                    "limit": {"type": "integer"},
                    "truncated": {"type": "boolean", "description": "more scans match than the limit"},
                },
            },
        ),
        503: error("The store is unavailable"),
    },
)
async def list_scans(request: web.Request) -> web.Response:
    rt = require_admin(request)
    flt = ScanFilter.from_query(request.query)
    wider = replace(flt, limit=flt.limit + 1)  # one more row tells whether the listing was cut
    rows = await rt.in_store_thread(listing.list_scans, rt.store.query, rt.store.database, wider)
    shown = min(len(rows), flt.limit)
    log.info(
        "operator listed scans: %s (%d rows)",
        flt.as_query(),
        shown,
        extra={"audit": {"scans_list": flt.as_query(), "rows": shown}},
    )
    body = {"scans": rows[: flt.limit], "limit": flt.limit, "truncated": len(rows) > flt.limit}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


@documented(
    summary="Write-ahead-log state: LSNs, backlog, budget, store health",
    audience="operator",
    responses={200: json_body("WAL state")},
)
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
    app.router.add_post("/v1/admin/devices/{device_id}/venues", bind_device)
    app.router.add_post("/v1/admin/trust/reload", reload_trust)
    app.router.add_post("/v1/admin/trust/publish", publish_trust)
    app.router.add_get("/v1/admin/trust", trust_state)
    app.router.add_get("/v1/admin/stats", stats)
    app.router.add_get("/v1/admin/wal", wal_state)
    app.router.add_get("/v1/admin/scans", list_scans)
    app.cleanup_ctx.append(_sighup_ctx)
