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
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"},
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


def _number(name: str, description: str, minimum: float, maximum: float, integer: bool = False) -> dict[str, Any]:
    schema = {"type": "integer" if integer else "number", "minimum": minimum, "maximum": maximum}
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


#: Query parameters of both trace endpoints (engine/web/trace.py, options_from_query; bounds as TraceOptions).
_TRACE_PARAMETERS = [
    {"name": "Authorization", "in": "header", "required": False, "description": "Bearer <tracer token>",
     "schema": {"type": "string"}},
    {"name": "from", "in": "query", "required": False, "description": "period start: ISO 8601 or Unix seconds",
     "schema": {"type": "string"}},
    {"name": "to", "in": "query", "required": False, "description": "period end (default now)",
     "schema": {"type": "string"}},
    _number("days", "period length when from is not given", 0, 366),
    _number("dwell_min", "stay assumed when an exit is missing (minutes)", 0, 10080),
    _number("margin_min", "stays this close count as overlapping (minutes)", 0, 1440),
    _number("max_stay_min", "longest stay an entry/exit pair may span (minutes)", 0, 10080),
    {"name": "include_unverified", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "1/true/yes/on: also count unsigned, ID-card and expired codes"},
    {"name": "format", "in": "query", "required": False, "schema": {"type": "string", "enum": ["json", "csv"]}},
]  # fmt: skip
_SECOND_DEGREE_PARAMETERS = [
    {"name": "second_degree", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "1/true/yes/on: also list contacts of the top contacts, bounded as below"},
    _number("second_degree_limit", "top first-degree contacts expanded (default 20)", 0, 1000, integer=True),
    _number("second_degree_min_overlap_min", "a second-degree contact needs this much overlap in total "
            "(minutes, default 15)", 0, 1440),
    _number("second_degree_cap", "second-degree contacts listed at most (default 200); second_degree_cut in "
            "the answer (a second_degree_cut row in CSV) says what was left out", 0, 100_000, integer=True),
]  # fmt: skip

_PERSON_PARAMETERS = [
    {"name": "person_key", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "32 hexadecimal characters; give this or qr_id"},
    {"name": "qr_id", "in": "query", "required": False, "schema": {"type": "string"}},
    *_TRACE_PARAMETERS,
    *_SECOND_DEGREE_PARAMETERS,
]  # fmt: skip
_VENUE_PARAMETERS = [
    {"name": "venue_id", "in": "query", "required": True, "schema": {"type": "string"}},
    *_TRACE_PARAMETERS,
]


def _trace(summary: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    answer = {"type": "object"}
    return {
        "get": {
            "summary": summary,
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "the trace (JSON) or one row per visit, encounter or stay (CSV)",
                    "content": {"application/json": {"schema": answer}, "text/csv": {"schema": {"type": "string"}}},
                },
                "400": _error_response("Bad parameter"),
                "401": _error_response("Missing or invalid tracer token"),
                "403": _error_response("Not a tracer credential (scanner device or admin token)"),
                "503": _error_response("Store unavailable"),
            },
        }
    }


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
            "/v1/trace/person": _trace("An index case's visits and contacts (tracer token)", _PERSON_PARAMETERS),
            "/v1/trace/venue": _trace("Everyone at a venue during a period (tracer token)", _VENUE_PARAMETERS),
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": {"description": "alive", "content": {"application/json": {"schema": simple}}}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: store reachable and WAL within budget",
                    "responses": {
                        "200": {"description": "ready", "content": {"application/json": {"schema": simple}}},
                        "503": {"description": "not ready", "content": {"application/json": {"schema": simple}}},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "text exposition",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
    }
