"""The OpenAPI 3.0 description of every route, served at ``/openapi.json`` and used for schema fuzzing.

Each handler carries its own description, written next to it with :func:`documented`; the document is built by
walking the app's router, so a route cannot be served without being described (``tests/test_openapi.py`` fails on
one that is not) and a description cannot outlive its route. Limits are not typed twice: ``maxItems``, body
size, the ``scanned_at`` window and every string pattern come from the constants and the :class:`Config` the
validation itself uses (``engine.ingest.items``, ``engine.devices.auth``), so the published contract is the
enforced one.

To document a new route: put ``@documented(summary=..., audience=..., responses={...})`` on its handler. The
audience decides the security scheme (and the 401/403 answers that come with it): ``device`` (signed request),
``operator`` (admin bearer token), ``tracer`` (tracer bearer token) or ``public``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from engine.codes.verdicts import KINDS, REASONS, VERDICTS
from engine.config import Config
from engine.devices.auth import DEVICE_ID_RE, NONCE_RE, SIGNATURE_RE, TIMESTAMP_RE
from engine.ingest.items import (
    DIRECTIONS,
    MAX_ECHO_SCAN_ID_CHARS,
    MAX_QR_CHARS,
    REJECTIONS,
    SCAN_ID_PATTERN,
    SCANNED_AT_PATTERN,
    VENUE_PATTERN,
)

Schema = dict[str, Any]
#: a schema, or a function of the running configuration that makes one (for limits that are settings)
SchemaSource = Schema | Callable[[Config], Schema]
H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])

OPENAPI_ATTR = "__openapi__"
AUDIENCES = ("device", "operator", "tracer", "public")
SECURITY_SCHEMES: dict[str, Schema] = {
    "deviceSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Signature",
        "description": "Ed25519 signature of the request by the scanner's registered key, with X-Device-Id, "
        "X-Timestamp and X-Nonce (the exact signed message: docs/device-api.md)",
    },
    "adminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "the operator token the engine writes to <data_dir>/admin.token (0600) at first start",
    },
    "tracerToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "a tracer token issued by `python -m engine tracer-add NAME` (the admin token is refused)",
    },
}
_SECURITY = {"device": "deviceSignature", "operator": "adminToken", "tracer": "tracerToken"}

ERROR: Schema = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "machine-readable error code"},
        "message": {"type": "string", "description": "what was wrong, for people"},
    },
}


def anchored(pattern: str) -> str:
    """A ``re`` pattern used with ``fullmatch`` as an OpenAPI (ECMA) pattern that must match the whole value."""
    return f"^(?:{pattern})$"


def error(description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def json_body(description: str, schema: Schema | None = None) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def text_body(description: str, media_type: str = "text/plain") -> Schema:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def query(name: str, schema: Schema, description: str = "", *, required: bool = False) -> Schema:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


@dataclass(frozen=True)
class Operation:
    """What :func:`documented` records on a handler; rendered against the running config by :func:`document`."""

    summary: str
    audience: str
    responses: Mapping[int, SchemaSource]
    description: str = ""
    parameters: Sequence[SchemaSource] = ()
    request_body: SchemaSource | None = None
    path_parameters: Mapping[str, Schema] = field(default_factory=dict)

    def render(self, cfg: Config, path: str) -> Schema:
        def made(source: SchemaSource) -> Schema:
            return source(cfg) if callable(source) else source

        op: Schema = {"summary": self.summary, "tags": [self.audience], "operationId": _operation_id(path)}
        if self.description:
            op["description"] = self.description
        params = [made(p) for p in self.parameters]
        for name in _path_names(path):
            schema = self.path_parameters.get(name, {"type": "string", "minLength": 1})
            params.append({"name": name, "in": "path", "required": True, "schema": schema})
        if self.audience == "device":
            params = _device_headers() + params
        if params:
            op["parameters"] = params
        if self.request_body is not None:
            op["requestBody"] = made(self.request_body)
        responses = {str(status): made(r) for status, r in sorted(self.responses.items())}
        if self.audience in _SECURITY:
            op["security"] = [{_SECURITY[self.audience]: []}]
            responses.setdefault("401", error("Missing or invalid credentials"))
            responses.setdefault("403", error("Credentials of the wrong kind (or a revoked device)"))
        if params or self.request_body is not None:
            responses.setdefault("400", error("Malformed request: the message says which parameter and why"))
        op["responses"] = responses
        return op


def documented(
    *,
    summary: str,
    audience: str,
    responses: Mapping[int, SchemaSource],
    description: str = "",
    parameters: Sequence[SchemaSource] = (),
    request_body: SchemaSource | None = None,
    path_parameters: Mapping[str, Schema] | None = None,
) -> Callable[[H], H]:
    """Describe a handler for ``/openapi.json``; every routed handler needs this (tests/test_openapi.py)."""
    if audience not in AUDIENCES:
        raise ValueError(f"audience must be one of {AUDIENCES}")
    op = Operation(summary, audience, responses, description, parameters, request_body, dict(path_parameters or {}))

    def attach(handler: H) -> H:
        setattr(handler, OPENAPI_ATTR, op)
        return handler

    return attach


def operation_of(handler: Any) -> Operation | None:
    return getattr(handler, OPENAPI_ATTR, None)


def routes_of(app: web.Application) -> list[tuple[str, str, Any]]:
    """``(method, path, handler)`` of every route the app serves (HEAD twins of GET routes left out)."""
    out = []
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        out.append((route.method.lower(), route.resource.canonical, route.handler))
    return out


def undocumented(app: web.Application) -> list[str]:
    return [f"{m.upper()} {p}" for m, p, h in routes_of(app) if operation_of(h) is None]


def document(app: web.Application, cfg: Config) -> Schema:
    """The whole OpenAPI document of ``app`` as configured by ``cfg`` (limits are the configured ones)."""
    paths: dict[str, dict[str, Schema]] = {}
    for method, path, handler in routes_of(app):
        op = operation_of(handler)
        if op is not None:
            paths.setdefault(path, {})[method] = op.render(cfg, path)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "VN personal-QR check-in scan ingestion",
            "version": "1",
            "description": "Scanner devices post batches of check-in scans; every scan is verified and stored. "
            "Operators manage devices and read statistics; tracing teams query visits and exposures.",
        },
        "tags": [
            {"name": "device", "description": "scanner devices (signed requests)"},
            {"name": "operator", "description": "operators on the engine's host (admin token)"},
            {"name": "tracer", "description": "contact-tracing teams (tracer tokens)"},
            {"name": "public", "description": "health, metrics, the dashboard and this document"},
        ],
        "paths": dict(sorted(paths.items())),
        "components": {"securitySchemes": SECURITY_SCHEMES},
    }


def _path_names(path: str) -> list[str]:
    return [part[1:-1].split(":", 1)[0] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def _operation_id(path: str) -> str:
    return path.strip("/").replace("/", "_").replace("{", "").replace("}", "").replace(".", "_") or "root"


def _device_headers() -> list[Schema]:
    def header(name: str, pattern: str, description: str) -> Schema:
        return {
            "name": name,
            "in": "header",
            "required": True,
            "description": description,
            "schema": {"type": "string", "pattern": anchored(pattern)},
        }

    return [
        header("X-Device-Id", DEVICE_ID_RE.pattern, "the registered device id; must equal the body's device_id"),
        header("X-Timestamp", TIMESTAMP_RE.pattern, "Unix seconds; within the clock-skew window of the engine"),
        header("X-Nonce", NONCE_RE.pattern, "unique per request within the skew window (replay protection)"),
        header("X-Signature", SIGNATURE_RE.pattern, "unpadded base64url Ed25519 signature (docs/device-api.md)"),
    ]


# -- the device API's own schemas (used by engine.web.scans) -------------------------------------------------------
def scan_item_schema(cfg: Config) -> Schema:
    window = f"[now - {cfg.offline_days} days (the offline window), now + {cfg.skew_s} s]"
    return {
        "type": "object",
        "required": ["scan_id", "qr", "venue_id", "direction", "scanned_at"],
        "properties": {
            "scan_id": {
                "type": "string",
                "pattern": SCAN_ID_PATTERN,
                "description": "device-generated UUID, stable across retries (a retry is answered `duplicate`)",
            },
            "qr": {"type": "string", "maxLength": MAX_QR_CHARS, "description": "the QR text exactly as scanned"},
            "venue_id": {"type": "string", "pattern": VENUE_PATTERN},
            "direction": {"type": "string", "enum": list(DIRECTIONS)},
            "scanned_at": {
                "description": f"device clock; accepted within {window}; a zone-less text time is refused; "
                "an integer that fits the window only as epoch seconds, microseconds or nanoseconds is refused "
                "as `scanned_at_not_milliseconds`",
                "oneOf": [
                    {"type": "integer", "description": "Unix epoch milliseconds"},
                    {"type": "string", "pattern": SCANNED_AT_PATTERN, "description": "RFC 3339 with a zone"},
                ],
            },
        },
    }


def scans_request_body(cfg: Config) -> Schema:
    return {
        "required": True,
        "description": f"at most {cfg.max_body_bytes} bytes (larger: 413), received within {cfg.body_timeout_s:g} s "
        "(slower: 408); read only after the headers passed (signature headers, timestamp, device known, budgets). "
        f"Per device: {cfg.device_rate:g} requests/s (burst {cfg.device_burst:g}), {cfg.device_scan_rate:g} scans/s "
        f"(burst {cfg.device_scan_burst:g}), {cfg.device_cold_rate:g} cold signature verifies/s (burst "
        f"{cfg.device_cold_burst:g}), {cfg.device_nonce_quota} requests per replay window; beyond: 429",
        "x-max-body-bytes": cfg.max_body_bytes,
        "x-device-budgets": {
            "requests_per_s": cfg.device_rate,
            "request_burst": cfg.device_burst,
            "scans_per_s": cfg.device_scan_rate,
            "scan_burst": cfg.device_scan_burst,
            "cold_verifies_per_s": cfg.device_cold_rate,
            "cold_verify_burst": cfg.device_cold_burst,
            "nonce_quota": cfg.device_nonce_quota,
            "queue_share": cfg.device_queue_share,
        },
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["device_id", "scans"],
                    "properties": {
                        "device_id": {"type": "string", "pattern": anchored(DEVICE_ID_RE.pattern)},
                        "scans": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": cfg.max_scans_per_request,
                            "items": scan_item_schema(cfg),
                        },
                    },
                }
            }
        },
    }


def rejection_codes_description() -> str:
    return "; ".join(f"`{r.code}`: {r.message}" for r in REJECTIONS)


SCAN_RESULT: Schema = {
    "type": "object",
    "required": ["index", "status"],
    "properties": {
        "index": {"type": "integer", "minimum": 0},
        "scan_id": {
            "type": "string",
            "maxLength": MAX_ECHO_SCAN_ID_CHARS,
            "description": "the device's scan id (for a rejected item: its text as sent, when it sent a string)",
        },
        "status": {"type": "string", "enum": ["stored", "duplicate", "rejected"]},
        "verdict": {"type": "string", "enum": list(VERDICTS)},
        "reason": {
            "type": "string",
            "enum": list(REASONS) + [r.code for r in REJECTIONS],
            "description": "stored/duplicate: the verify reason (docs/payload.md); rejected: why the item was "
            "refused, one of: " + rejection_codes_description(),
        },
        "error": {"type": "string", "description": "rejected only: the reason in words"},
    },
}

#: one scan as an operator sees it (``scans list``): no QR text, no person key
SCAN_ROW: Schema = {
    "type": "object",
    "properties": {
        "scan_id": {"type": "string"},
        "device_id": {"type": "string"},
        "venue_id": {"type": "string"},
        "direction": {"type": "string", "enum": list(DIRECTIONS)},
        "scanned_at": {"type": "string", "description": "RFC 3339, UTC"},
        "received_at": {"type": "string", "description": "RFC 3339, UTC"},
        "verdict": {"type": "string", "enum": list(VERDICTS)},
        "reason": {"type": "string", "enum": list(REASONS)},
        "kind": {"type": "string", "enum": list(KINDS)},
    },
}
