"""Security of a deployment (issue 14), each attack against real components: TLS on loopback with certificates
made here, device mTLS, a SIGHUP certificate reload while a client keeps its connection, the refusal of
plaintext off loopback, file modes of a real ``serve`` process, refusal on loose permissions, secrets kept out
of argv, the operations listener, ``/readyz`` that tells nothing, log lines a request cannot forge.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import logging
import os
import signal
import ssl
import stat
import subprocess
import sys
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from engine.__main__ import main
from engine.config import Config, argv_secret_warnings
from engine.devices.client import make_scan, sign_request
from engine.errors import ConfigError
from engine.ops.logs import SafeFormatter
from engine.testing.certificates import TestCA
from engine.testing.engines import (
    DEVICE_ID,
    EngineProcess,
    admin_headers,
    device_registration,
    engine_config,
    make_fixture,
)
from engine.tracing.credentials import TracerRegistry
from engine.web.app import create_app
from engine.web.tls import client_context

ROOT = Path(__file__).resolve().parent.parent


def _tls(data_dir: Path, *, client_ca: bool = False) -> dict[str, Any]:
    ca = TestCA(data_dir.parent / f"{data_dir.name}-pki")
    server = ca.server()
    out: dict[str, Any] = {"tls_cert": server.cert, "tls_key": server.key}
    if client_ca:
        out["tls_client_ca"] = ca.pair.cert
        out["_ca"] = ca
    return out


# -- TLS on the device listener ------------------------------------------------------------------------------
async def test_scans_over_https_and_weak_clients_refused(engine: Any) -> None:
    e = await engine(prepare=_tls)
    assert e.url.startswith("https://")
    status, body = await e.client.post_scans([make_scan(e.fx.code(i), "v") for i in range(3)])
    assert status == 202 and body["stored"] == 3, body
    await e.drained()
    assert (await e.query("SELECT count() FROM scans"))[0][0] == 3
    await asyncio.to_thread(_refused_clients, int(e.url.rsplit(":", 1)[1]), e.rt.config.tls_cert)


def _refused_clients(port: int, cert: Path) -> None:
    """Blocking clients (in a thread: the in-process engine serves on the test's event loop)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # plaintext on the TLS port: no answer
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        conn.request("GET", "/healthz")
        conn.getresponse().read()
    # TLS 1.1, and a TLS 1.2 client offering only suites without forward secrecy: refused at the handshake
    for configure in (
        lambda c: setattr(c, "maximum_version", ssl.TLSVersion.TLSv1_1),
        lambda c: (
            setattr(c, "maximum_version", ssl.TLSVersion.TLSv1_2),
            c.set_ciphers("AES128-SHA:AES256-GCM-SHA384"),
        ),
    ):
        ctx = client_context(pinned=[cert])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # asking for TLS 1.1 is the point
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            try:
                configure(ctx)
            except ssl.SSLError:
                continue  # this OpenSSL cannot even offer it: refused all the more
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            c.request("GET", "/healthz")
            c.getresponse().read()
    ok = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=client_context(pinned=[cert]))
    ok.request("GET", "/healthz")
    assert ok.getresponse().status == 200 and ok.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]


async def test_device_mtls_binds_the_certificate_to_the_device_id(engine: Any) -> None:
    made: dict[str, Any] = {}

    def prepare(d: Path) -> dict[str, Any]:
        made.update(_tls(d, client_ca=True))
        return {k: v for k, v in made.items() if not k.startswith("_")}

    e = await engine(prepare=prepare)  # the operator registers the device without a client certificate
    ca: TestCA = made["_ca"]
    scans = [make_scan(e.fx.code(0), "v")]
    status, body = await e.client.post_scans(scans)  # a valid signature alone is not enough now
    assert status == 401 and "client certificate" in body["message"], body
    other = ca.device("someone-else")
    from engine.devices.client import ScannerClient

    wrong = ScannerClient(e.url, DEVICE_ID, e.fx.device, ssl_context=e.client_tls(cert=(other.cert, other.key)))
    right_pair = ca.device(DEVICE_ID)
    right = ScannerClient(
        e.url, DEVICE_ID, e.fx.device, ssl_context=e.client_tls(cert=(right_pair.cert, right_pair.key))
    )
    uri_pair = ca.issue("uri", "ignored-cn", uris=(f"urn:vnqr:device:{DEVICE_ID}",))
    by_uri = ScannerClient(e.url, DEVICE_ID, e.fx.device, ssl_context=e.client_tls(cert=(uri_pair.cert, uri_pair.key)))
    rogue_ca = TestCA(e.fx.data_dir.parent / "rogue")
    rogue_pair = rogue_ca.device(DEVICE_ID)
    rogue = ScannerClient(
        e.url, DEVICE_ID, e.fx.device, ssl_context=e.client_tls(cert=(rogue_pair.cert, rogue_pair.key))
    )
    try:
        status, body = await wrong.post_scans(scans)
        assert status == 401 and "not issued for this device" in body["message"], body
        status, body = await right.post_scans(scans)
        assert status == 202 and body["stored"] == 1, body
        status, body = await by_uri.post_scans([make_scan(e.fx.code(1), "v")])
        assert status == 202, body
        with pytest.raises(Exception):  # noqa: B017 - a certificate from another CA fails the handshake itself
            await rogue.post_scans(scans)
    finally:
        for c in (wrong, right, by_uri, rogue):
            await c.close()


# -- listening rules -----------------------------------------------------------------------------------------
def test_plaintext_refused_off_loopback_unless_behind_a_proxy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fx = make_fixture(tmp_path / "d")
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 .*--tls-cert and --tls-key"):
        create_app(engine_config(fx.data_dir, host="0.0.0.0"))
    with pytest.raises(ConfigError, match="--ops-host"):
        create_app(engine_config(fx.data_dir, ops_host="10.1.2.3"))
    with caplog.at_level(logging.WARNING):
        create_app(engine_config(fx.data_dir, host="0.0.0.0", plaintext_behind_proxy=True))
    assert any("PLAINTEXT on 0.0.0.0" in r.getMessage() for r in caplog.records)
    create_app(engine_config(fx.data_dir, host="0.0.0.0", **_tls(fx.data_dir)))  # with TLS: allowed


def test_serve_refuses_plaintext_and_demo_off_loopback(tmp_path: Path) -> None:
    """The real command, before it binds anything: exit 2 and the fix in the message."""
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    env = {**os.environ, "ENGINE_DATA_DIR": str(d), "ENGINE_OPS_PORT": "0"}
    for extra, expect in (
        (["--host", "0.0.0.0"], "without TLS"),
        (["--host", "0.0.0.0", "--plaintext-behind-proxy", "--demo"], "--demo puts a trusted issuer"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "engine", "serve", *extra], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2 and expect in done.stderr, done.stderr


# -- least privilege on disk ---------------------------------------------------------------------------------
def test_refuses_loose_permissions_with_the_chmod_that_fixes_them(tmp_path: Path) -> None:
    fx = make_fixture(tmp_path / "d")
    app_cfg = engine_config(fx.data_dir)
    os.chmod(fx.data_dir, 0o755)
    (fx.data_dir / "admin.token").write_text("x" * 40)
    os.chmod(fx.data_dir / "admin.token", 0o644)
    with pytest.raises(ConfigError) as err:
        create_app(app_cfg)
    message = str(err.value)
    assert f"chmod 700 {fx.data_dir}" in message and f"chmod 600 {fx.data_dir / 'admin.token'}" in message, message
    os.chmod(fx.data_dir, 0o700)
    os.chmod(fx.data_dir / "admin.token", 0o600)
    create_app(app_cfg)  # fixed as told: starts
    tls = _tls(fx.data_dir)
    os.chmod(tls["tls_key"], 0o640)
    with pytest.raises(ConfigError, match=f"chmod 600 {tls['tls_key']}"):
        create_app(engine_config(fx.data_dir, **tls))
    pw = fx.data_dir / "dsn.password"
    pw.write_text("s3cret\n")
    os.chmod(pw, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        _ = Config(dsn="http://engine@ch.internal:8123", dsn_password_file=pw).store_dsn


def test_dsn_password_from_a_file_or_the_environment_never_a_flag(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("p@ss:w/rd\n")
    os.chmod(pw, 0o600)
    cfg = Config(dsn="https://engine@ch.internal:8443/", dsn_password_file=pw)
    assert cfg.store_dsn == "https://engine:p%40ss%3Aw%2Frd@ch.internal:8443/"
    env_cfg = Config.from_sources(None, {"ENGINE_DSN": "http://engine@ch:8123", "ENGINE_DSN_PASSWORD": "pw2"})
    assert env_cfg.store_dsn == "http://engine:pw2@ch:8123" and "pw2" not in repr(env_cfg)
    with pytest.raises(ConfigError, match="one place only"):
        _ = Config(dsn="http://engine:inline@ch:8123", dsn_password="again").store_dsn
    with pytest.raises(SystemExit):  # there is no flag that would put the password in argv
        main(["serve", "--dsn-password", "x"])
    warnings = argv_secret_warnings(["stats", "--dsn", "http://u:pw@ch:8123"])
    warnings += argv_secret_warnings(["trace", "person", "--token=trc_abc"])
    assert len(warnings) == 2 and all("/proc/<pid>/cmdline" in w for w in warnings)
    assert argv_secret_warnings(["stats", "--dsn", "http://u@ch:8123", "--dsn-password-file", "f"]) == []


# -- a real `serve` process with TLS: reload, file modes, argv, logs ---------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("served")
    fx = make_fixture(tmp / "data")
    ca = TestCA(tmp / "pki")
    first = ca.server("server")
    token = TracerRegistry.for_data_dir(fx.data_dir).add("epi-1")
    proc = EngineProcess(
        fx.data_dir,
        ssl_context=client_context(cafile=ca.pair.cert),
        ENGINE_TLS_CERT=str(first.cert),
        ENGINE_TLS_KEY=str(first.key),
        ENGINE_LOG_LEVEL="INFO",
    ).start()
    proc.post_json("/v1/admin/devices", device_registration(fx), admin_headers(fx.data_dir))
    yield proc, fx, ca, token
    proc.terminate()


def _signed_post(conn: http.client.HTTPSConnection, fx: Any, n: int, tag: str) -> int:
    body = orjson.dumps({"device_id": DEVICE_ID, "scans": [make_scan(fx.code(i), f"v-{tag}") for i in range(n)]})
    headers = {**sign_request(fx.device, DEVICE_ID, "POST", "/v1/scans", body), "Content-Type": "application/json"}
    conn.request("POST", "/v1/scans", body=body, headers=headers)
    resp = conn.getresponse()
    resp.read()
    return resp.status


def _fingerprint(port: int, ca: TestCA) -> str:
    ctx = client_context(cafile=ca.pair.cert)
    c = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    c.connect()
    assert c.sock is not None
    der = c.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    c.close()
    return hashlib.sha256(der or b"").hexdigest()


def test_certificate_reload_on_sighup_keeps_open_connections(served: Any) -> None:
    proc, fx, ca, _ = served
    before = _fingerprint(proc.port, ca)
    keep = http.client.HTTPSConnection("127.0.0.1", proc.port, timeout=30, context=client_context(cafile=ca.pair.cert))
    assert _signed_post(keep, fx, 2, "a") == 202
    sock = keep.sock
    renewed = ca.server("server-renewed")
    os.replace(renewed.cert, proc.env["ENGINE_TLS_CERT"])  # the operator drops the renewed pair in place
    os.replace(renewed.key, proc.env["ENGINE_TLS_KEY"])
    proc.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while _fingerprint(proc.port, ca) == before:
        assert time.monotonic() < deadline, "new handshakes never saw the renewed certificate"
        assert _signed_post(keep, fx, 1, "during") == 202  # the client keeps posting throughout
        time.sleep(0.2)
    assert _signed_post(keep, fx, 2, "b") == 202 and keep.sock is sock  # same connection, never dropped
    keep.close()
    assert "TLS certificate loaded" in proc.log_path.read_text()


def test_files_of_a_running_engine_are_private(served: Any) -> None:
    proc, fx, ca, _ = served
    keep = http.client.HTTPSConnection("127.0.0.1", proc.port, timeout=30, context=client_context(cafile=ca.pair.cert))
    assert _signed_post(keep, fx, 5, "modes") == 202
    keep.close()
    deadline = time.monotonic() + 30
    while proc.get_json("/v1/admin/wal", admin_headers(fx.data_dir))["backlog_records"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    loose = []
    for path in [fx.data_dir, *fx.data_dir.rglob("*")]:
        if path.name in ("trust.json", "engine.log") or path.is_symlink():
            continue  # written by the test harness before the engine started, not by the engine
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            loose.append(f"{path.relative_to(fx.data_dir)} {mode:04o}")
    assert not loose, loose
    assert any(p.suffix == ".seg" or "wal" in p.parts for p in fx.data_dir.rglob("*"))  # the WAL was checked too
    assert stat.S_IMODE(fx.data_dir.stat().st_mode) == 0o700


def test_no_secret_in_the_argv_of_the_engine_or_its_children(served: Any) -> None:
    proc, fx, _, token = served
    secrets = [(fx.data_dir / "admin.token").read_text().strip(), token]
    procs = [psutil.Process(proc.proc.pid), *psutil.Process(proc.proc.pid).children(recursive=True)]
    # and the CLI as the harness runs it: the tracer token through the environment
    env = {**proc.env, "ENGINE_TRACER_TOKEN": token}
    cli = subprocess.Popen(
        [sys.executable, "-m", "engine", "tracer-list"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        procs.append(psutil.Process(cli.pid))
        for p in procs:
            try:
                argv = " ".join(p.cmdline())
            except psutil.NoSuchProcess:
                continue
            for s in secrets:
                assert s not in argv, f"a secret is in the argv of PID {p.pid}"
    finally:
        cli.communicate(timeout=60)


def test_log_injection_is_escaped(served: Any) -> None:
    proc, _fx, _ca, token = served
    forged = "2026-01-01 00:00:00,000 INFO engine: forged"  # a QR id is any text of up to 64 characters
    qr = urllib.parse.quote("QID1\n" + forged + "\r\n")
    status = _get_status(proc, f"/v1/trace/person?qr_id={qr}&case_id=HN-1", {"Authorization": f"Bearer {token}"})
    assert status == 200
    bad_venue = urllib.parse.quote("v-1\n" + forged)
    assert (
        _get_status(proc, f"/v1/trace/venue?venue_id={bad_venue}&case_id=HN-1", {"Authorization": f"Bearer {token}"})
        == 400
    )
    text = proc.log_path.read_text()
    assert "QID1\\n2026-01-01" in text  # the newline is in the log, escaped, inside the one line
    assert not any(line.startswith("2026-01-01 00:00:00,000") for line in text.splitlines()), "a forged line"
    record = logging.LogRecord("x", logging.INFO, "f", 1, "venue %s", ("a\nb\x1b[31m\u2028c",), None)
    assert SafeFormatter("%(message)s").format(record) == "venue a\\nb\\x1b[31m\\u2028c"


def _get_status(proc: EngineProcess, path: str, headers: dict[str, str]) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(
            urllib.request.Request(proc.url + path, headers=headers), timeout=30, context=proc.ssl_context
        ) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


# -- operations endpoints ------------------------------------------------------------------------------------
async def test_ops_endpoints_live_on_their_own_loopback_listener(engine: Any) -> None:
    e = await engine()
    assert e.ops_url.startswith("http://127.0.0.1:")
    for path in ("/metrics", "/dashboard", "/v1/stats"):
        status, _ = await e.client.request("GET", path)  # anonymous on the scanner port: not there
        assert status == 404, path
        status, _ = await e.ops.request("GET", path)
        assert status == 200, path
    status, ready = await e.client.request("GET", "/readyz")
    assert (status, ready) == (200, {"ready": True, "cause": "ok"})
    e.rt.drain.store_ok, e.rt.drain.last_error = False, "insert failed on http://engine:***@ch-7.internal:8123 /data"
    status, ready = await e.client.request("GET", "/readyz")
    assert (status, ready) == (503, {"ready": False, "cause": "store_unavailable"})  # no DSN, host or path
    e.rt.drain.store_ok = True
