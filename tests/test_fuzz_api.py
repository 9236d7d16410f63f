"""Schema fuzzing: schemathesis generates requests from the engine's own ``/openapi.json`` and checks the answers.

Two passes over a real ``python -m engine serve``: as an anonymous stranger (the generated ``X-Signature`` is
noise, so the device API answers 400/401/403) and as the registered scanner, every request signed with
``engine.devices.client.sign_request`` over the exact bytes sent, so the 202 path is reached too. Every answer must be
a non-5xx, with a status, content type, headers and body the schema declares. Example counts are bounded
(hypothesis ``max_examples``) to keep the file well under a minute.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from engine.devices.client import sign_request
from engine.testing.engines import DEVICE_ID, EngineProcess, Fixture, admin_headers, device_registration, make_fixture

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
SEEN: dict[str, dict[int, int]] = {"anonymous": {}, "signed": {}}


class Live:
    def __init__(self, proc: EngineProcess, fx: Fixture) -> None:
        self.proc, self.fx = proc, fx


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    fx = make_fixture(tmp_path_factory.mktemp("fuzz_api"))
    env = {"ENGINE_DEVICE_RATE": "100000", "ENGINE_DEVICE_BURST": "100000", "ENGINE_BATCH_AGE_MS": "1"}
    proc = EngineProcess(fx.data_dir, **env).start()
    try:
        proc.post_json("/v1/admin/devices", device_registration(fx), admin_headers(fx.data_dir))
        yield Live(proc, fx)
    finally:
        proc.terminate()


@pytest.fixture(scope="module")
def api_schema(live: Live) -> Any:
    return schemathesis.openapi.from_url(live.proc.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


def _record(kind: str, status: int) -> None:
    SEEN[kind][status] = SEEN[kind].get(status, 0) + 1


@schema.parametrize()
@FUZZ
def test_anonymous_requests_conform(case: Any, live: Live) -> None:
    response = case.call(base_url=live.proc.url, timeout=30)
    _record("anonymous", response.status_code)
    case.validate_response(response, checks=CHECKS)


@schema.parametrize()
@FUZZ
def test_signed_requests_conform(case: Any, live: Live) -> None:
    """The same generated requests, but signed by the registered scanner over the bytes actually sent."""
    body = b""
    if case.body is not None and not type(case.body).__name__.startswith("NotSet"):
        doc = case.body
        if isinstance(doc, dict):
            doc = {**doc, "device_id": DEVICE_ID}  # the body must name the signing device to get past 400
        if isinstance(doc, bytes):
            body = doc
        else:
            try:
                body = orjson.dumps(doc)
            except TypeError:  # integers beyond 64 bits: the stdlib encoder writes them as they are
                body = json.dumps(doc).encode()
    headers = {k: v for k, v in (case.headers or {}).items() if not k.lower().startswith("x-")}
    if body:
        headers["Content-Type"] = "application/json"
    path = case.formatted_path
    url = live.proc.url + path
    query = requests.models.RequestEncodingMixin._encode_params(case.query or {})
    path_qs = path + (f"?{query}" if query else "")
    headers.update(sign_request(live.fx.device, DEVICE_ID, case.method, path_qs, body))
    response = requests.request(case.method, live.proc.url + path_qs, data=body or None, headers=headers, timeout=30)
    _record("signed", response.status_code)
    assert url in response.url or response.url.startswith(live.proc.url)
    case.validate_response(response, checks=CHECKS)


def test_report_status_counts() -> None:
    errors = sum(n for seen in SEEN.values() for s, n in seen.items() if s >= 500 and s != 503)
    print(f"\n[fuzz_api] schemathesis answers by status: {SEEN}; 5xx other than 503: {errors}")
    assert errors == 0
