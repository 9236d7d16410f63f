"""The device contract of docs/device-api.md, proven outside Python and kept true by the tests.

* the document's worked example is exactly what ``docs/device_api_example.py`` computes with the engine's signer;
* the Node reference client (``clients/node/scanner.mjs``: Node's built-in Ed25519, SHA-256 and fetch only)
  reproduces that example's signature byte for byte, and posts a signed batch to a real engine subprocess
  (device registered by the operator CLI, key file read by Node) with the right per-item verdicts, while a
  tampered body and a replayed request are refused with 401;
* every row of the document's error table marked as tested is provoked against the same engine, and the
  answer (status, ``error`` code, message) must match that row.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from nacl.signing import SigningKey

from engine.codes.payload import Person, b64url_encode, mint
from engine.devices.client import sign_request
from engine.ingest.items import E_DIRECTION, REJECTIONS
from engine.testing.engines import EngineProcess, Fixture, admin_headers, make_fixture

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "device-api.md"
NODE_CLIENT = ROOT / "clients" / "node" / "scanner.mjs"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(
    NODE is None, reason="node is not installed (scripts/install.sh installs the nodejs package with apt)"
)

PY_DEVICE = "py-scanner-1"
NODE_DEVICE = "node-scanner-1"
LIMIT_DEVICE = "rate-scanner-1"
REVOKED_DEVICE = "revoked-scanner-1"
MAX_BODY = 4096
MAX_ITEMS = 5
ENGINE_ENV = {
    "ENGINE_MAX_BODY_BYTES": str(MAX_BODY),
    "ENGINE_MAX_SCANS_PER_REQUEST": str(MAX_ITEMS),
    "ENGINE_DEVICE_BURST": "20",
    "ENGINE_DEVICE_RATE": "0.2",  # slow refill: the 429 case empties one device's bucket on purpose
    "ENGINE_BATCH_AGE_MS": "1",
}


def example_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("device_api_example", ROOT / "docs" / "device_api_example.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def node(*args: str) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run([NODE, str(NODE_CLIENT), *args], capture_output=True, text=True, timeout=60)


def node_json(*args: str) -> Any:
    done = node(*args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- the document -------------------------------------------------------------------------------------------
def test_worked_example_in_the_document_is_what_the_engine_computes() -> None:
    ex = example_module()
    text = DOC.read_text(encoding="utf-8")
    start, end = text.index(ex.BEGIN), text.index(ex.END) + len(ex.END)
    assert text[start:end] == ex.render(), "docs/device-api.md is stale: run python3 docs/device_api_example.py --write"


def test_worked_example_signature_verifies_over_the_documented_message() -> None:
    """Independently of engine.devices.client: rebuild the message from the documented recipe and verify."""
    values = example_module().example()
    body = values["body"].encode()
    message = b"VNQR-DEVICE-REQ-V1\x00" + "\n".join(
        [
            "POST",
            "/v1/scans",
            values["device_id"],
            values["timestamp"],
            values["nonce"],
            hashlib.sha256(body).hexdigest(),
        ]
    ).encode("ascii")
    assert message.hex() == values["message_hex"]
    key = SigningKey(bytes.fromhex(values["device_seed_hex"]))
    assert b64url_encode(key.sign(message).signature) == values["signature"]
    assert len(values["signature"]) == 86 and values["signature"][-1] in "AQgw"  # 4 unused low bits are zero


def test_the_document_lists_every_item_error_word_for_word() -> None:
    text = DOC.read_text(encoding="utf-8")
    for rejection in REJECTIONS:  # the one table the item check uses (engine/ingest/items.py)
        assert f"`{rejection.code}`" in text and rejection.message in text, rejection
    assert "two unused low bits" not in (ROOT / "engine" / "devices" / "auth.py").read_text()


@needs_node
def test_node_client_reproduces_the_worked_example_byte_for_byte(tmp_path: Path) -> None:
    values = example_module().example()
    key_path = tmp_path / "example.key"
    fd = os.open(key_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, json.dumps(values["key_file"]).encode())
    os.close(fd)
    (tmp_path / "body.json").write_bytes(values["body"].encode())
    signed = node_json(
        "sign",
        *("--key", str(key_path), "--body-file", str(tmp_path / "body.json")),
        *("--timestamp", values["timestamp"], "--nonce", values["nonce"]),
    )
    assert signed == values["headers"]
    assert node("pubkey", "--key", str(key_path)).stdout.strip() == values["device_public_key"]
    key_path.chmod(0o640)  # the client refuses a key file others can read, as the engine does
    refused = node("pubkey", "--key", str(key_path))
    assert refused.returncode == 2 and "chmod 600" in refused.stderr


# -- a real engine ------------------------------------------------------------------------------------------
class Live:
    def __init__(
        self, proc: EngineProcess, fx: Fixture, node_key: Path, limit_key: SigningKey, revoked_key: SigningKey
    ) -> None:
        self.proc, self.fx, self.node_key, self.limit_key = proc, fx, node_key, limit_key
        self.revoked_key = revoked_key

    def send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """One raw HTTP request (a header may repeat); returns status, headers, parsed JSON (or text)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.proc.port, timeout=30)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers or []:
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            raw = resp.read()
            answer: Any = raw.decode("utf-8", "replace")
            if resp.getheader("Content-Type", "").startswith("application/json"):
                answer = orjson.loads(raw)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, answer
        finally:
            conn.close()

    def signed(
        self, body: bytes, *, device: str = PY_DEVICE, key: SigningKey | None = None, **sign: Any
    ) -> list[tuple[str, str]]:
        key = key or self.fx.device
        headers = sign_request(key, device, "POST", "/v1/scans", body, **sign)
        return [("Content-Type", "application/json"), *headers.items()]


def _register(proc: EngineProcess, device_id: str, key: SigningKey) -> None:
    body = orjson.dumps({"device_id": device_id, "public_key": b64url_encode(bytes(key.verify_key))})
    proc.post_json("/v1/admin/devices", body, admin_headers(proc.data_dir))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    fx = make_fixture(tmp_path_factory.mktemp("device_contract"))
    proc = EngineProcess(fx.data_dir, **ENGINE_ENV).start()
    try:
        # the operator's way: the CLI creates the key file and registers it with the running engine
        node_key = fx.data_dir.parent / "node-scanner-1.key"
        cli = [sys.executable, "-m", "engine", "device-register", "--device-id", NODE_DEVICE, "--out", str(node_key)]
        cli += ["--data-dir", str(fx.data_dir), "--port", str(proc.port), "--label", "Node reference client"]
        done = subprocess.run(cli, capture_output=True, text=True, timeout=60, env=proc.env)
        assert done.returncode == 0, done.stderr
        _register(proc, PY_DEVICE, fx.device)
        limit_key = SigningKey.generate()
        _register(proc, LIMIT_DEVICE, limit_key)
        revoked_key = SigningKey.generate()
        _register(proc, REVOKED_DEVICE, revoked_key)
        proc.post_json(f"/v1/admin/devices/{REVOKED_DEVICE}/revoke", b"", admin_headers(fx.data_dir))
        yield Live(proc, fx, node_key, limit_key, revoked_key)
    finally:
        proc.terminate()


def _foreign_code() -> str:
    """A well-formed signed code from an issuer the engine does not trust: stored as unknown_key."""
    now = int(time.time())
    person = Person("******999999", "TRAN THI BINH", "1985-05-**", "QIDFOREIGN01")
    return mint(person, SigningKey(hashlib.sha256(b"not in the trust list").digest()), iat=now - 60, exp=now + 86_400)


@needs_node
def test_node_client_posts_a_signed_batch_and_gets_per_item_verdicts(live: Live, tmp_path: Path) -> None:
    assert node("pubkey", "--key", str(live.node_key)).stdout.strip() == next(
        d["public_key"]
        for d in live.proc.get_json("/v1/admin/devices", admin_headers(live.fx.data_dir))["devices"]
        if d["device_id"] == NODE_DEVICE
    )
    ids = [str(uuid.uuid4()) for _ in range(4)]
    scans = [
        {"scan_id": ids[0], "qr": live.fx.code(1), "venue_id": "venue-0042", "direction": "in"},
        {"scan_id": ids[1], "qr": _foreign_code(), "venue_id": "venue-0042", "direction": "out"},
        {"scan_id": ids[2], "qr": "not a personal code", "venue_id": "venue-0042",
         "scanned_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())},
        {"scan_id": ids[3], "qr": live.fx.code(2), "venue_id": "venue-0042", "direction": "sideways"},
    ]  # fmt: skip
    scans_file = tmp_path / "scans.json"
    scans_file.write_text(json.dumps(scans))
    first = node_json("post", "--url", live.proc.url, "--key", str(live.node_key), "--scans", str(scans_file))
    assert first["status"] == 202, first
    body = first["body"]
    assert (body["stored"], body["duplicates"], body["rejected"]) == (3, 0, 1)
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [(r.get("scan_id"), r["status"], r.get("verdict")) for r in results[:3]] == [
        (ids[0], "stored", "ok"),
        (ids[1], "stored", "unknown_key"),
        (ids[2], "stored", "malformed"),
    ]
    assert results[0]["reason"] == "none" and results[2]["reason"] == "field_count"
    assert results[3]["status"] == "rejected" and results[3]["error"] == E_DIRECTION.message
    assert results[3]["reason"] == E_DIRECTION.code and results[3]["scan_id"]

    # a retry of the same scans (new nonce and timestamp, same scan ids) is answered from the first verdicts
    again = node_json("post", "--url", live.proc.url, "--key", str(live.node_key), "--scans", str(scans_file))
    assert again["status"] == 202 and again["body"]["duplicates"] == 3 and again["body"]["stored"] == 0
    assert [r.get("verdict") for r in again["body"]["results"][:3]] == ["ok", "unknown_key", "malformed"]


@needs_node
def test_body_tampered_after_node_signed_it_is_401(live: Live, tmp_path: Path) -> None:
    scan = {"scan_id": str(uuid.uuid4()), "qr": live.fx.code(3), "venue_id": "venue-0042", "direction": "in",
            "scanned_at": int(time.time() * 1000)}  # fmt: skip
    body = json.dumps({"device_id": NODE_DEVICE, "scans": [scan]}).encode()
    (tmp_path / "body.json").write_bytes(body)
    headers = node_json("sign", "--key", str(live.node_key), "--body-file", str(tmp_path / "body.json"))
    wire = [("Content-Type", "application/json"), *headers.items()]
    tampered = body.replace(b"venue-0042", b"venue-0043")
    status, _, answer = live.send("POST", "/v1/scans", tampered, wire)
    assert status == 401 and answer["error"] == "unauthorized"
    assert "X-Signature does not verify" in answer["message"]  # the one answer for unknown ids and bad signatures
    # the same headers over the bytes that were signed pass: the body alone made the difference
    status, _, answer = live.send("POST", "/v1/scans", body, wire)
    assert status == 202 and answer["results"][0]["verdict"] == "ok", answer


@needs_node
def test_request_replayed_with_the_same_nonce_is_401(live: Live, tmp_path: Path) -> None:
    scans_file = tmp_path / "scans.json"
    scans_file.write_text(json.dumps([{"scan_id": str(uuid.uuid4()), "qr": live.fx.code(4), "venue_id": "v-1"}]))
    fixed = ["--timestamp", str(int(time.time())), "--nonce", "replay-" + uuid.uuid4().hex[:20]]
    args = ["post", "--url", live.proc.url, "--key", str(live.node_key), "--scans", str(scans_file), *fixed]
    first = node_json(*args)
    assert first["status"] == 202, first
    replayed = node_json(*args)
    assert replayed["status"] == 401
    assert replayed["body"] == {
        "error": "unauthorized",
        "message": f"X-Nonce was already used by device '{NODE_DEVICE}' (replayed request)",
    }


# -- the error table ----------------------------------------------------------------------------------------
ROW = re.compile(r"^\| (\d{3}) \| `([a-z_]+)` \| `(.+?)`[^|]*\| (✓?) *\|$")


def documented_errors() -> list[tuple[int, str, str, bool]]:
    rows = [ROW.match(line) for line in DOC.read_text(encoding="utf-8").splitlines()]
    return [(int(m[1]), m[2], m[3], m[4] == "✓") for m in rows if m]


def matches(template: str, message: str) -> bool:
    pattern = "".join(".+?" if part.startswith("<") else re.escape(part) for part in re.split(r"(<[^>]+>)", template))
    return re.fullmatch(pattern, message, re.DOTALL) is not None


def _item(**changes: Any) -> dict[str, Any]:
    item = {"scan_id": str(uuid.uuid4()), "qr": "x", "venue_id": "v", "direction": "in",
            "scanned_at": int(time.time() * 1000)}  # fmt: skip
    item.update(changes)
    return item


def _envelope(scans: Any, device: str = PY_DEVICE) -> bytes:
    return orjson.dumps({"device_id": device, "scans": scans})


def test_every_tested_row_of_the_error_table_is_what_a_real_engine_answers(live: Live) -> None:
    rows = documented_errors()
    assert len(rows) >= 30, "the error table of docs/device-api.md was not found"
    good = _envelope([_item()])
    sig = dict(live.signed(good))["X-Signature"]
    flipped = sig[:-1] + {"A": "B", "Q": "R", "g": "h", "w": "x"}[sig[-1]]  # a low unused bit set: non-canonical
    no_nonce = [h for h in live.signed(good) if h[0] != "X-Nonce"]
    ts_twice = [*live.signed(good), ("X-Timestamp", str(int(time.time())))]
    too_many = _envelope([_item() for _ in range(MAX_ITEMS + 1)])
    foreign = _envelope([_item()], "someone-else")

    def with_header(name: str, value: str) -> list[tuple[str, str]]:
        return [(k, value if k == name else v) for k, v in live.signed(good)]

    cases: list[tuple[str, str, bytes, list[tuple[str, str]]]] = [
        ("POST", "/v1/scans", good, [(k, v) for k, v in live.signed(good) if k != "Content-Type"]),
        ("POST", "/v1/scans", b"{not json", live.signed(b"{not json")),
        ("POST", "/v1/scans", b"[]", live.signed(b"[]")),
        ("POST", "/v1/scans", foreign, live.signed(foreign)),
        ("POST", "/v1/scans", _envelope({}), live.signed(_envelope({}))),
        ("POST", "/v1/scans", _envelope([]), live.signed(_envelope([]))),
        ("POST", "/v1/scans", too_many, live.signed(too_many)),
        ("POST", "/v1/scans", good, no_nonce),
        ("POST", "/v1/scans", good, ts_twice),
        ("POST", "/v1/scans", good, with_header("X-Device-Id", "no spaces allowed")),
        ("POST", "/v1/scans", good, with_header("X-Timestamp", "17e8")),
        ("POST", "/v1/scans", good, with_header("X-Nonce", "too-short")),
        ("POST", "/v1/scans", good, with_header("X-Signature", flipped)),
        ("POST", "/v1/scans", good, live.signed(good, now=time.time() - 1000)),
        ("POST", "/v1/scans", good, live.signed(good, key=SigningKey.generate())),
        ("POST", "/v1/scans", good, live.signed(good, device="nobody-registered")),
        ("POST", "/v1/scans", good, live.signed(good, device=REVOKED_DEVICE, key=live.revoked_key)),
        ("GET", "/v1/nothing-here", b"", []),
        ("GET", "/v1/scans", b"", []),
        ("POST", "/v1/scans", b"x" * (MAX_BODY + 1), live.signed(b"x" * (MAX_BODY + 1))),
    ]
    answers = [live.send(*case) for case in cases]

    # a replay: the first delivery is accepted, the same request again is refused
    replay = live.signed(good)
    status, _, accepted = live.send("POST", "/v1/scans", good, replay)
    assert status == 202, accepted
    answers.append(live.send("POST", "/v1/scans", good, replay))
    assert answers[-1][0] == 401

    # the rate limit: empty batches pass authentication (spending a token) before the envelope check refuses them
    empty = _envelope([], LIMIT_DEVICE)
    for _ in range(30):
        answers.append(
            live.send("POST", "/v1/scans", empty, live.signed(empty, device=LIMIT_DEVICE, key=live.limit_key))
        )
        if answers[-1][0] == 429:
            break
    assert answers[-1][0] == 429, "the rate limit was never reached"
    assert int(answers[-1][1]["retry-after"]) >= 1

    matched: set[int] = set()
    for status, headers, body in answers:
        assert isinstance(body, dict) and set(body) == {"error", "message"}, (status, body)
        assert headers["content-type"].startswith("application/json")
        hits = [i for i, (s, code, template, _) in enumerate(rows) if s == status and code == body["error"]
                and matches(template, body["message"])]  # fmt: skip
        assert hits, f"answer not in docs/device-api.md's error table: {status} {body}"
        matched.update(hits)
        if status == 405:
            assert headers["allow"] == "POST"
    untested = [rows[i] for i, row in enumerate(rows) if row[3] and i not in matched]
    assert not untested, f"rows marked tested that no request provoked: {untested}"
