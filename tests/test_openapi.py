"""The OpenAPI document is complete and tells the truth about the limits the engine enforces.

The document is built by walking the app's router, so these tests build a real app (the same factory ``serve``
uses) and compare its routes with what ``/openapi.json`` would say; nothing is started.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.devices.auth import DEVICE_ID_RE, SIGNATURE_RE
from engine.ingest import items
from engine.testing.engines import engine_config
from engine.web import openapi
from engine.web.app import create_app


def _app(tmp_path: Path, **config: Any) -> tuple[web.Application, dict[str, Any]]:
    cfg = engine_config(tmp_path, **config)
    app = create_app(cfg)
    return app, openapi.document(app, cfg)


def test_every_route_the_app_serves_is_documented(tmp_path: Path) -> None:
    app, doc = _app(tmp_path)
    assert openapi.undocumented(app) == [], "document these handlers with @documented (engine/web/openapi.py)"
    served = {(m, p) for m, p, _h in openapi.routes_of(app)}
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == described
    # every audience is there: devices, operators, tracers, the public routes
    for path in ("/v1/scans", "/v1/admin/devices", "/v1/admin/scans", "/v1/trace/person", "/v1/stats", "/metrics"):
        assert path in doc["paths"], path


def test_an_undocumented_route_is_found(tmp_path: Path) -> None:
    app, _doc = _app(tmp_path)

    async def secret_route(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/v1/forgotten", secret_route)
    assert openapi.undocumented(app) == ["GET /v1/forgotten"]


def test_protected_operations_name_their_security_scheme(tmp_path: Path) -> None:
    _unused, doc = _app(tmp_path)
    schemes = doc["components"]["securitySchemes"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            audience = op["tags"][0]
            if audience == "public":
                assert "security" not in op, (method, path)
                continue
            (requirement,) = op["security"]
            assert set(requirement) <= set(schemes) and {"401", "403"} <= set(op["responses"]), (method, path)
    assert doc["paths"]["/v1/admin/scans"]["get"]["security"] == [{"adminToken": []}]
    assert doc["paths"]["/v1/trace/venue"]["get"]["security"] == [{"tracerToken": []}]
    assert doc["paths"]["/v1/scans"]["post"]["security"] == [{"deviceSignature": []}]


def test_limits_are_the_configured_ones_and_patterns_the_enforced_ones(tmp_path: Path) -> None:
    _unused, doc = _app(
        tmp_path, max_scans_per_request=37, max_body_bytes=65_536, retention_days=9, offline_window_days=4, skew_s=120
    )
    post = doc["paths"]["/v1/scans"]["post"]
    body = post["requestBody"]
    assert body["x-max-body-bytes"] == 65_536 and "65536 bytes" in body["description"]
    envelope = body["content"]["application/json"]["schema"]
    assert envelope["properties"]["scans"]["maxItems"] == 37
    item = envelope["properties"]["scans"]["items"]["properties"]
    assert item["qr"]["maxLength"] == items.MAX_QR_CHARS
    assert item["venue_id"]["pattern"] == items.VENUE_PATTERN
    assert item["scan_id"]["pattern"] == items.SCAN_ID_PATTERN
    time_text = next(s for s in item["scanned_at"]["oneOf"] if s["type"] == "string")
    assert time_text["pattern"] == items.SCANNED_AT_PATTERN
    window = item["scanned_at"]["description"]
    assert "now - 4 days (the offline window)" in window and "now + 120 s" in window  # not the retention's 9 days
    assert "scanned_at_not_milliseconds" in window
    headers = {p["name"]: p["schema"]["pattern"] for p in post["parameters"] if p["in"] == "header"}
    assert headers["X-Device-Id"] == openapi.anchored(DEVICE_ID_RE.pattern)
    assert headers["X-Signature"] == openapi.anchored(SIGNATURE_RE.pattern)
    result = post["responses"]["202"]["content"]["application/json"]["schema"]["properties"]["results"]["items"]
    assert set(items.REJECTION_CODES) <= set(result["properties"]["reason"]["enum"])


def test_the_published_patterns_accept_and_refuse_what_the_check_does() -> None:
    """The OpenAPI patterns are ECMA regexes; for these simple ones Python's ``re`` reads them the same way."""
    venue = re.compile(items.VENUE_PATTERN)
    for text in ("venue-0042", "A.b:C_d-9", "v" * 64):
        assert venue.search(text) and all(c in items.VENUE_CHARS for c in text)
    for text in ("", "café", "a b", "v" * 65):
        assert not venue.search(text)
    when = re.compile(items.SCANNED_AT_PATTERN)
    for text in ("2025-11-24T16:00:00Z", "2025-11-24T23:00:00.5+07:00"):
        assert when.search(text) and isinstance(items.scan_time_ms(text), int)
    for text in ("2025-11-24T16:00:00", "2025-11-24T16:00:00+0700", "yesterday"):
        assert not when.search(text) and isinstance(items.scan_time_ms(text), items.Rejection)
