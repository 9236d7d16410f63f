"""Running real engines for tests: in-process (aiohttp test server) or as a real subprocess.

Everything is real: chdb in a temporary directory, Ed25519 keys, signed requests over loopback HTTP. The
subprocess form exists for what an in-process engine cannot show: ``kill -9``, SIGTERM and restarts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from nacl.signing import SigningKey

from engine.codes.payload import Person, b64url_encode, key_id, mint
from engine.codes.trust import TrustedKey, TrustList
from engine.config import Config
from engine.devices.client import ScannerClient

YEAR = 365 * 86_400
DEVICE_ID = "scanner-test-1"


@dataclass
class Fixture:
    """Keys and codes for one test engine."""

    data_dir: Path
    issuer: SigningKey
    device: SigningKey
    trust: TrustList

    def code(self, i: int = 0, *, iat: int | None = None, exp: int | None = None) -> str:
        now = int(time.time())
        person = Person(f"******{i:06d}", "NGUYEN VAN AN", "1990-01-**", f"QID{i:010d}")
        return mint(person, self.issuer, iat=now - 60 if iat is None else iat, exp=now + YEAR if exp is None else exp)


def make_fixture(data_dir: Path) -> Fixture:
    """Write a trust list with one issuer key into ``data_dir`` (as an operator would before first start)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the engine refuses a data directory others can read
    issuer, device = SigningKey.generate(), SigningKey.generate()
    pk = bytes(issuer.verify_key)
    now = int(time.time())
    trust = TrustList.build([TrustedKey(key_id(pk), "pc-covid", pk, now - YEAR, now + 2 * YEAR)])
    trust.save(data_dir / "trust.json")
    return Fixture(data_dir, issuer, device, trust)


def engine_config(data_dir: Path, **overrides: Any) -> Config:
    """Small, fast settings; fsync stays on (durability is what the tests are about)."""
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "port": 0,
        "batch_age_ms": 2.0,
        "batch_size": 512,
        "verify_threads": 2,
        "shutdown_timeout_s": 10.0,
        "insert_interval_ms": 50.0,  # tests wait for the store; production paces inserts at 3 s
        "ops_port": 0,  # the operations listener on a free loopback port (InProcessEngine.ops_url)
        # a test process builds hundreds of engines: a full collection and a freeze at each start would add up to
        # tens of seconds of the suite (and freeze the previous tests' garbage); engine processes keep the default
        "gc_freeze": False,
    }
    base.update(overrides)
    return Config(**base).validate()


def admin_headers(data_dir: Path) -> dict[str, str]:
    return {"Authorization": "Bearer " + (data_dir / "admin.token").read_text().strip()}


def device_registration(fx: Fixture, device_id: str = DEVICE_ID) -> bytes:
    return orjson.dumps({"device_id": device_id, "public_key": b64url_encode(bytes(fx.device.verify_key))})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EngineProcess:
    """``python -m engine serve`` as a child process, for crash and signal tests."""

    def __init__(self, data_dir: Path, *, ssl_context: ssl.SSLContext | None = None, **env: str) -> None:
        """``env`` is the engine's configuration (``ENGINE_*``): secrets travel there, never in argv.
        ``ssl_context`` is how this harness reaches an engine started with TLS (its certificate pinned)."""
        self.data_dir = data_dir
        self.ssl_context = ssl_context
        self.port = free_port()
        self.ops_port = free_port()
        self.env = {
            **os.environ,
            "ENGINE_DATA_DIR": str(data_dir),
            "ENGINE_PORT": str(self.port),
            "ENGINE_OPS_PORT": str(self.ops_port),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "engine.log"

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"

    def start(self, timeout: float = 60.0) -> EngineProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1, context=self.ssl_context) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"engine did not start: {self.log_path.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def get_json(self, path: str, headers: dict[str, str] | None = None) -> Any:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        with urllib.request.urlopen(req, timeout=30, context=self.ssl_context) as r:
            return orjson.loads(r.read())

    def post_json(self, path: str, body: bytes, headers: dict[str, str]) -> Any:
        req = urllib.request.Request(
            self.url + path, data=body, method="POST", headers={**headers, "Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30, context=self.ssl_context) as r:
            return orjson.loads(r.read())


async def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Poll an async or plain predicate; fail the test with a clear message if it never holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = predicate()
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok:
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class InProcessEngine:
    """An engine inside the test process (aiohttp test server), with its fixture and a signed scanner client."""

    def __init__(self, server: Any, fx: Fixture) -> None:
        from engine.web.keys import LISTENERS, RUNTIME

        self.server, self.fx, self.app = server, fx, server.app
        self._runtime_key = RUNTIME
        self.url = str(server.make_url("")).rstrip("/")
        self.client = ScannerClient(self.url, DEVICE_ID, fx.device, ssl_context=self.client_tls())
        self.ops_url = self.app[LISTENERS].ops_url  # /metrics, /dashboard, /v1/stats
        self.ops = ScannerClient(self.ops_url, DEVICE_ID, fx.device)  # its request() for plain GETs there

    @property
    def rt(self) -> Any:
        return self.app[self._runtime_key]

    def client_tls(self, *, cert: Any = None) -> Any:
        """An SSL context trusting this engine's certificate (None without TLS); ``cert`` = (chain, key) for mTLS."""
        from engine.web.keys import CONFIG
        from engine.web.tls import client_context

        cfg = self.app[CONFIG]
        if not cfg.tls:
            return None
        ctx = client_context(pinned=[cfg.tls_cert])
        if cert is not None:
            ctx.load_cert_chain(*cert)
        return ctx

    def tracer(self, name: str = "tracer-1", **kwargs: Any) -> dict[str, str]:
        """A new tracer's ``Authorization`` header (the token goes nowhere else)."""
        from engine.tracing.credentials import TracerRegistry

        return {"Authorization": "Bearer " + TracerRegistry.for_data_dir(self.fx.data_dir).add(name, **kwargs)}

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Read the engine's own store on its store thread (the embedded store belongs to the engine)."""
        return await self.rt.in_store_thread(self.rt.store.query, sql, params)

    async def drained(self) -> None:
        await wait_until(lambda: self.rt.wal.backlog_records == 0)


class EngineStarter:
    """Starts fresh in-process engines (own data directory, registered device); ``close`` closes their clients."""

    def __init__(
        self, tmp_path: Path, aiohttp_server: Any, cls: type[InProcessEngine] = InProcessEngine, **defaults: Any
    ) -> None:
        self.tmp_path, self.aiohttp_server, self.cls, self.defaults = tmp_path, aiohttp_server, cls, defaults
        self.engines: list[InProcessEngine] = []

    async def __call__(self, **overrides: Any) -> Any:
        from engine.web.app import create_app
        from engine.web.keys import TLS_CONTEXT

        fx = make_fixture(self.tmp_path / f"e{len(self.engines)}")
        prepare = overrides.pop("prepare", None)
        if prepare is not None:  # e.g. write certificates into the data directory before the app is built
            overrides.update(prepare(fx.data_dir))
        app = create_app(engine_config(fx.data_dir, **{**self.defaults, **overrides}))
        tls = app.get(TLS_CONTEXT)
        e = self.cls(await self.aiohttp_server(app, **({"ssl": tls.context} if tls else {})), fx)
        status, body = await e.client.request(
            "POST", "/v1/admin/devices", device_registration(fx), headers_override=admin_headers(fx.data_dir)
        )
        assert status == 201, body
        self.engines.append(e)
        return e

    async def close(self) -> None:
        for e in self.engines:
            await e.client.close()
            await e.ops.close()
