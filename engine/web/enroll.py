"""Enrolment over HTTP: ``POST /v1/admin/enrollments`` (operator) issues one-time codes, ``POST /v1/enroll``
trades one for a device registration (the browser scanner, docs/scanner.md). The codes themselves, their
hashing and their single use live in :mod:`engine.devices.enrollment`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from engine.codes.payload import b64url_decode_canonical, b64url_encode
from engine.codes.trust import check_public_key
from engine.devices.auth import Device
from engine.devices.enrollment import (
    DEFAULT_TTL_S,
    QR_PREFIX,
    check_ttl,
    check_venues,
    format_code,
    issue,
    normalize_code,
    proof_message,
    redeem,
)
from engine.errors import ForbiddenError, PayloadError, RateLimitedError, TrustListError
from engine.web.admin import require_admin
from engine.web.body import read_body
from engine.web.keys import RUNTIME
from engine.web.openapi import documented, error, json_body

log = logging.getLogger(__name__)


class Bucket:
    """One token bucket for the whole unauthenticated endpoint: bounds the store queries strangers can cause."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.at = burst, clock()

    def take(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            raise RateLimitedError(
                f"too many enrolment attempts on this engine (at most {self.rate:g}/s); retry shortly",
                retry_after=(1 - self.tokens) / self.rate,
            )
        self.tokens -= 1


ENROL_BUCKET = web.AppKey("enrol_bucket", Bucket)


async def _json_object(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise PayloadError("Content-Type must be application/json")
    try:
        doc = orjson.loads(await read_body(request))
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PayloadError("body must be a JSON object")
    return doc


_ENROLMENT = {"type": "object", "properties": {"code": {"type": "string"}, "qr_text": {"type": "string"}}}


@documented(
    summary="Issue a one-time enrolment code for a browser scanner (bound to its venues)",
    audience="operator",
    request_body={
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["venues"],
                    "properties": {
                        "venues": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                        "ttl_s": {"type": "integer"},
                        "label": {"type": "string"},
                    },
                }
            }
        },
    },
    responses={201: json_body("the code, shown once", _ENROLMENT), 503: error("The store is unavailable")},
)
async def create_enrollment(request: web.Request) -> web.Response:
    """``POST /v1/admin/enrollments`` ``{"venues": [...], "ttl_s": 900, "label": ""}`` (operator token)."""
    rt = require_admin(request)
    doc = await _json_object(request)
    venues = check_venues(doc.get("venues", doc.get("venue")))
    ttl_s = check_ttl(doc.get("ttl_s", DEFAULT_TTL_S))
    label = doc.get("label", "")
    if not isinstance(label, str):
        raise PayloadError('"label" must be a string')
    code, e = await rt.in_store_thread(lambda: issue(rt.store, venues, ttl_s=ttl_s, label=label))
    return web.json_response(
        {**e.to_json(), "code": format_code(code), "qr_text": QR_PREFIX + code, "ttl_s": ttl_s}, status=201
    )


@documented(
    summary="Trade a one-time enrolment code for a device registration (the code is the only credential)",
    audience="public",
    request_body={
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["code", "public_key", "proof"],
                    "properties": {
                        "code": {"type": "string"},
                        "public_key": {"type": "string", "description": "raw Ed25519 key, unpadded base64url"},
                        "proof": {"type": "string", "description": "signature proving the private key"},
                    },
                }
            }
        },
    },
    responses={
        200: json_body("already enrolled with this key (a retry)"),
        201: json_body("enrolled"),
        403: error("Credentials sent, or the device was revoked"),
        404: error("Unknown enrolment code"),
        409: error("The code was used by another key"),
        410: error("The code expired"),
        429: error("Too many enrolment attempts; see Retry-After"),
        503: error("The store is unavailable"),
    },
)
async def enroll(request: web.Request) -> web.Response:
    """``POST /v1/enroll`` ``{"code", "public_key", "proof"}``: trade a one-time code for a device registration."""
    rt = request.app[RUNTIME]
    if request.headers.get("Authorization") or request.headers.get("X-Device-Id"):
        raise ForbiddenError("/v1/enroll takes no credential but the enrolment code (drop Authorization/X-Device-*)")
    doc = await _json_object(request)
    code = normalize_code(doc.get("code"))
    pk_text, proof_text = doc.get("public_key"), doc.get("proof")
    if not isinstance(pk_text, str) or not isinstance(proof_text, str):
        raise PayloadError('need "public_key" (raw Ed25519, base64url) and "proof" (base64url signature) strings')
    public_key = b64url_decode_canonical(pk_text.encode("ascii", "replace"), 32)
    if public_key is None:
        raise PayloadError("public_key must be 32 bytes of canonical unpadded base64url (raw Ed25519 key)")
    try:
        check_public_key(public_key, "public_key")
    except TrustListError as exc:
        raise PayloadError(str(exc)) from None
    proof = b64url_decode_canonical(proof_text.encode("ascii", "replace"), 64)
    if proof is None:
        raise PayloadError("proof must be 64 bytes of canonical unpadded base64url (an Ed25519 signature)")
    try:
        VerifyKey(public_key).verify(proof_message(code, pk_text), proof)
    except BadSignatureError:
        raise PayloadError(
            "proof does not verify with public_key: sign PROOF_DOMAIN + code + newline + public_key (docs/scanner.md)"
        ) from None
    request.app[ENROL_BUCKET].take()  # after the cheap checks, before the store

    e, first = await rt.in_store_thread(redeem, rt.store, code, pk_text)
    existing = rt.devices.get(e.device_id)
    if not first and existing is not None and existing.revoked:
        raise ForbiddenError(f"device {e.device_id!r} was revoked; ask the operator for a new enrolment code")
    device = Device(e.device_id, public_key, False, e.label, tuple(e.venues))  # bound to the code's venues
    rt.devices.put(device)  # exactly what POST /v1/admin/devices does
    await rt.in_store_thread(
        lambda: rt.store.upsert_device(e.device_id, public_key, revoked=False, label=e.label, venues=e.venues)
    )
    log.info("device %s enrolled for venues %s%s", e.device_id, list(e.venues), "" if first else " (retry)")
    return web.json_response(
        {**e.to_json(), "public_key": b64url_encode(public_key), "registered": True}, status=201 if first else 200
    )


def setup(app: web.Application, *, rate: float = 2.0, burst: float = 20.0) -> None:
    app[ENROL_BUCKET] = Bucket(rate, burst)
    app.router.add_post("/v1/admin/enrollments", create_enrollment)
    app.router.add_post("/v1/enroll", enroll)
