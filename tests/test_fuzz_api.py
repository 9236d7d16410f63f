"""Schema fuzzing: schemathesis generates requests from the engine's own ``/openapi.json`` and checks the answers.

Every documented route (device, operator, tracer, public) gets two passes over a real ``python -m engine serve``:
as an anonymous stranger (the generated credentials are noise, so protected routes answer 400/401/403) and with
the credential its security scheme names: the registered scanner signing with ``engine.devices.client.sign_request``
over the exact bytes sent, the admin token, or a tracer token from ``tracer-add``, so the answers past
authentication are fuzzed too. Every answer must be a non-5xx (503 aside), with a status, content type, headers
and body the schema declares, and no credentialed request may be refused as unauthenticated. The event stream
never ends, so it gets its own bounded check. Example counts are bounded (hypothesis ``max_examples``) to keep
the file well under a minute.
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
from engine.tracing.credentials import TracerRegistry

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
SEEN: dict[str, dict[int, int]] = {"anonymous": {}, "credentialed": {}}
REFUSED: list[str] = []  # credentialed requests answered 401/403: the credential handling is wrong
STREAM = "/v1/stats/stream"


class Live:
    def __init__(self, proc: EngineProcess, fx: Fixture, tracer_token: str) -> None:
        self.proc, self.fx, self.tracer_token = proc, fx, tracer_token
        self.admin = admin_headers(fx.data_dir)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    fx = make_fixture(tmp_path_factory.mktemp("fuzz_api"))
    env = {"ENGINE_DEVICE_RATE": "100000", "ENGINE_DEVICE_BURST": "100000", "ENGINE_BATCH_AGE_MS": "1"}
    env |= {"ENGINE_DEVICE_SCAN_RATE": "1000000", "ENGINE_DEVICE_SCAN_BURST": "1000000"}  # issue 13 budgets
    env |= {"ENGINE_DEVICE_COLD_RATE": "1000000", "ENGINE_DEVICE_COLD_BURST": "1000000"}
    tracer_token = TracerRegistry.for_data_dir(fx.data_dir).add("fuzzer")
    proc = EngineProcess(fx.data_dir, **env).start()
    try:
        proc.post_json("/v1/admin/devices", device_registration(fx), admin_headers(fx.data_dir))
        yield Live(proc, fx, tracer_token)
    finally:
        proc.terminate()


@pytest.fixture(scope="module")
def api_schema(live: Live) -> Any:
    return schemathesis.openapi.from_url(live.proc.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path=STREAM)
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


def _record(kind: str, status: int) -> None:
    SEEN[kind][status] = SEEN[kind].get(status, 0) + 1


@schema.parametrize()
@FUZZ
def test_anonymous_requests_conform(case: Any, live: Live) -> None:
    response = case.call(base_url=live.proc.url, timeout=30, allow_redirects=False)
    _record("anonymous", response.status_code)
    case.validate_response(response, checks=CHECKS)


def _audience(case: Any) -> str:
    return str(case.operation.definition.raw["tags"][0])


@schema.parametrize()
@FUZZ
def test_credentialed_requests_conform(case: Any, live: Live) -> None:
    """The same generated requests with the credential the operation's security scheme names."""
    audience = _audience(case)
    body = b""
    if case.body is not None and not type(case.body).__name__.startswith("NotSet"):
        doc = case.body
        if isinstance(doc, dict) and audience == "device":
            doc = {**doc, "device_id": DEVICE_ID}  # the body must name the signing device to get past 400
        if isinstance(doc, bytes):
            body = doc
        else:
            try:
                body = orjson.dumps(doc)
            except TypeError:  # integers beyond 64 bits: the stdlib encoder writes them as they are
                body = json.dumps(doc).encode()
    headers = {k: v for k, v in (case.headers or {}).items() if not k.lower().startswith("x-")}
    headers.pop("Authorization", None)
    if body:
        headers["Content-Type"] = "application/json"
    path = case.formatted_path
    query = requests.models.RequestEncodingMixin._encode_params(case.query or {})
    path_qs = path + (f"?{query}" if query else "")
    if audience == "device":
        headers.update(sign_request(live.fx.device, DEVICE_ID, case.method, path_qs, body))
    elif audience == "operator":
        headers.update(live.admin)
    elif audience == "tracer":
        headers["Authorization"] = f"Bearer {live.tracer_token}"
    response = requests.request(
        case.method, live.proc.url + path_qs, data=body or None, headers=headers, timeout=30, allow_redirects=False
    )
    _record("credentialed", response.status_code)
    if audience != "public" and response.status_code in (401, 403):
        REFUSED.append(f"{case.method} {path_qs}: {response.status_code} {response.text[:200]}")
    case.validate_response(response, checks=CHECKS)


def test_the_event_stream_is_documented_and_streams(live: Live, api_schema: Any) -> None:
    """Schemathesis reads a body to its end, which an event stream never reaches: checked here, bounded in time.
    The stream is on the operations listener, which describes its own routes at its own /openapi.json."""
    doc = requests.get(live.proc.ops_url + "/openapi.json", timeout=10).json()
    declared = doc["paths"][STREAM]["get"]["responses"]["200"]["content"]
    assert STREAM not in requests.get(live.proc.url + "/openapi.json", timeout=10).json()["paths"]
    with requests.get(live.proc.ops_url + STREAM, stream=True, timeout=10) as r:
        assert r.status_code == 200 and r.headers["Content-Type"].split(";")[0] in declared
        first = next(r.iter_lines())
        assert first.startswith(b"retry:") or first.startswith(b"event:")


def test_report_status_counts() -> None:
    errors = sum(n for seen in SEEN.values() for s, n in seen.items() if s >= 500 and s != 503)
    print(f"\n[fuzz_api] schemathesis answers by status: {SEEN}; 5xx other than 503: {errors}")
    assert errors == 0
    assert SEEN["credentialed"], "the credentialed pass did not run"
    assert not REFUSED, "credentialed requests were refused:\n" + "\n".join(REFUSED[:10])
