"""The OpenAPI 3.0 description of the device API, served at ``/openapi.json`` and used for schema fuzzing."""

from __future__ import annotations

from typing import Any

from engine.codes.verdicts import REASONS, VERDICTS
from engine.ingest.intake import MAX_QR_CHARS, MAX_VENUE_CHARS

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}

_AUTH_HEADERS = [
    {
        "name": "X-Device-Id",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "pattern": f"^[A-Za-z0-9_.:-]{{1,{MAX_VENUE_CHARS}}}$"},
    },
    {"name": "X-Timestamp", "in": "header", "required": True, "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"}},
    {
        "name": "X-Nonce",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"},
    },
    {
        "name": "X-Signature",
        "in": "header",
        "required": True,
        "description": "base64url Ed25519 signature of the request (see engine/devices/auth.py)",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{86}$"},
    },
]


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def openapi_document() -> dict[str, Any]:
    scan = {
        "type": "object",
        "required": ["scan_id", "qr", "venue_id", "direction", "scanned_at"],
        "properties": {
            "scan_id": {"type": "string", "format": "uuid", "description": "device-generated, stable across retries"},
            "qr": {"type": "string", "maxLength": MAX_QR_CHARS, "description": "the QR text exactly as scanned"},
            "venue_id": {"type": "string", "pattern": f"^[A-Za-z0-9_.:-]{{1,{MAX_VENUE_CHARS}}}$"},
            "direction": {"type": "string", "enum": ["in", "out"]},
            "scanned_at": {
                "oneOf": [
                    {"type": "integer", "description": "device clock, Unix epoch milliseconds"},
                    {"type": "string", "format": "date-time"},
                ]
            },
        },
    }
    result = {
        "type": "object",
        "required": ["index", "status"],
        "properties": {
            "index": {"type": "integer"},
            "scan_id": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "enum": ["stored", "duplicate", "rejected"]},
            "verdict": {"type": "string", "enum": list(VERDICTS)},
            "reason": {"type": "string", "enum": list(REASONS)},
            "error": {"type": "string"},
        },
    }
    accepted = {
        "type": "object",
        "required": ["stored", "duplicates", "rejected", "results"],
        "properties": {
            "stored": {"type": "integer"},
            "duplicates": {"type": "integer"},
            "rejected": {"type": "integer"},
            "results": {"type": "array", "items": result},
        },
    }
    simple = {"type": "object"}
    ready = {
        "type": "object",
        "required": ["ready", "cause"],
        "additionalProperties": False,
        "properties": {"ready": {"type": "boolean"}, "cause": {"type": "string", "enum": READY_CAUSES}},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "VN personal-QR check-in scan ingestion",
            "version": "1",
            "description": "Scanner devices post batches of check-in scans; every scan is verified and stored.",
        },
        "paths": {
            "/v1/scans": {
                "post": {
                    "summary": "Submit a batch of scans from one device",
                    "parameters": _AUTH_HEADERS,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["device_id", "scans"],
                                    "properties": {
                                        "device_id": {"type": "string"},
                                        "scans": {"type": "array", "minItems": 1, "items": scan},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": {
                            "description": "Every accepted scan is durable; a verdict per scan, rejects with reasons",
                            "content": {"application/json": {"schema": accepted}},
                        },
                        "400": _error_response("Malformed envelope"),
                        "401": _error_response("Missing, invalid, stale or replayed request signature"),
                        "403": _error_response("Unknown or revoked device"),
                        "408": _error_response("Request body not received in time"),
                        "413": _error_response("Body too large"),
                        "429": _error_response("Device rate limit; see Retry-After"),
                        "503": _error_response("Overloaded or WAL over budget; see Retry-After"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": {"description": "alive", "content": {"application/json": {"schema": simple}}}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: store reachable and WAL within budget; a cause code and nothing else",
                    "responses": {
                        "200": {"description": "ready", "content": {"application/json": {"schema": ready}}},
                        "503": {"description": "not ready", "content": {"application/json": {"schema": ready}}},
                    },
                }
            },
            **_tracing_paths(),
        },
        "components": {
            "securitySchemes": {
                "tracer": {"type": "http", "scheme": "bearer", "description": "tracer token (tracer-add)"},
                "operator": {"type": "http", "scheme": "bearer", "description": "<data_dir>/admin.token"},
            }
        },
    }


#: /metrics, /dashboard and /v1/stats are served on the operations listener (--ops-host/--ops-port), not here
READY_CAUSES = ["ok", "shutting_down", "store_unavailable", "wal_over_budget"]


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _tracing_paths() -> dict[str, Any]:
    """Tracing (tracer token + case id, audited) and the audit log (operator token): docs/security.md."""
    case = _query(
        "case_id",
        {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:/-]{2,63}$"},
        "the case or purpose this trace serves; kept in the audit record",
        required=True,
    )
    period = [
        _query("from", {"type": "string"}, "period start (ISO 8601 or Unix seconds)"),
        _query("to", {"type": "string"}, "period end (default now)"),
        _query("days", {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 366}, "period length"),
        _query("include_unverified", {"type": "string", "enum": ["0", "1"]}, "also unsigned/ID-card/expired codes"),
        _query("format", {"type": "string", "enum": ["json", "csv"]}, "answer format"),
    ]
    answers = {
        "200": {"description": "the trace; its audit record was stored before this answer was sent"},
        "400": _error_response("Missing or malformed case_id, subject or parameter"),
        "401": _error_response("Missing, unknown, expired or revoked tracer token"),
        "403": _error_response("Scanner or operator credentials, which cannot trace"),
        "429": _error_response("The tracer's allowance for this kind of trace is used up; see Retry-After"),
        "503": _error_response("The audit record cannot be written (store down, audit chain broken): no answer"),
    }
    admin = {
        "200": {"description": "audit records / verification report / chain head"},
        "400": _error_response("Malformed parameter"),
        "401": _error_response("Missing or invalid operator token"),
        "403": _error_response("Scanner credentials"),
    }
    return {
        "/v1/trace/person": {
            "get": {
                "summary": "Visits and ranked exposures of an index case (audited)",
                "security": [{"tracer": []}],
                "parameters": [
                    case,
                    _query("qr_id", {"type": "string", "maxLength": 64}, "the index case's QR id (or person_key)"),
                    _query("person_key", {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"}, "or the person key"),
                    _query("second_degree", {"type": "string", "enum": ["0", "1"]}, "also contacts of contacts"),
                    *period,
                ],
                "responses": answers,
            }
        },
        "/v1/trace/venue": {
            "get": {
                "summary": "Everyone at a venue during a period (audited; the stricter allowance)",
                "security": [{"tracer": []}],
                "parameters": [
                    case,
                    _query(
                        "venue_id",
                        {"type": "string", "pattern": f"^[A-Za-z0-9_.:-]{{1,{MAX_VENUE_CHARS}}}$"},
                        "the venue",
                        True,
                    ),
                    *period,
                ],
                "responses": answers,
            }
        },
        "/v1/admin/audit": {
            "get": {
                "summary": "Audit records of traces, newest first",
                "security": [{"operator": []}],
                "parameters": [
                    _query("tracer", {"type": "string"}, "only this tracer"),
                    _query("case_id", {"type": "string"}, "only this case"),
                    _query("subject", {"type": "string"}, "exactly as traced, e.g. qr_id=…"),
                    _query("since", {"type": "string"}, "ISO 8601 or Unix seconds"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100000}, "at most this many"),
                ],
                "responses": admin,
            }
        },
        "/v1/admin/audit/verify": {
            "get": {
                "summary": "Recompute every audit chain against its anchor and the heads given",
                "security": [{"operator": []}],
                "parameters": [_query("expect", {"type": "string"}, "CHAIN:SEQ:HASH kept off-host")],
                "responses": admin,
            }
        },
        "/v1/admin/audit/head": {
            "get": {
                "summary": "This engine's audit chain head, to keep off-host",
                "security": [{"operator": []}],
                "responses": admin,
            }
        },
    }
