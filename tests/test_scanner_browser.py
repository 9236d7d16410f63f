"""The browser scanner (``/scanner``, issue 18): enrolment codes through a real engine and real chdb, the page's
assets and headers, and the page itself in real headless Chromium with a fake camera playing QR codes minted
here, against a real engine subprocess that is stopped and started under it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from nacl.signing import SigningKey, VerifyKey
from PIL import Image
from test_dashboard import DevTools, _chromium, chromium_page

from engine.codes.payload import b64url_encode
from engine.codes.qr import read_image, render
from engine.devices import enrollment
from engine.devices.auth import signed_message
from engine.devices.client import ScannerClient, make_scan
from engine.testing.engines import (
    EngineProcess,
    EngineStarter,
    admin_headers,
    make_fixture,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "engine" / "web" / "scanner_static"
ZXING = STATIC / "vendor" / "zxing-wasm"


# -- enrolment through a real in-process engine ------------------------------------------------------------
@pytest.fixture
async def engine(tmp_path: Path, aiohttp_server: Any) -> Any:
    starter = EngineStarter(tmp_path, aiohttp_server)
    yield await starter()
    await starter.close()


def _enrol_body(code: str, key: SigningKey, *, proof_key: SigningKey | None = None) -> bytes:
    pk = b64url_encode(bytes(key.verify_key))
    proof = (proof_key or key).sign(enrollment.proof_message(enrollment.normalize_code(code), pk)).signature
    return orjson.dumps({"code": code, "public_key": pk, "proof": b64url_encode(proof)})


async def _post(http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
    async with http.post(url, data=body, headers={"Content-Type": "application/json", **(headers or {})}) as r:
        return r.status, await r.json()


async def test_enrolment_code_registers_a_device_once(engine: Any) -> None:
    admin = admin_headers(engine.fx.data_dir)
    async with aiohttp.ClientSession() as http:
        status, issued = await _post(
            http, engine.url + "/v1/admin/enrollments", orjson.dumps({"venues": ["venue-7", "venue-8"]}), admin
        )
        assert status == 201, issued
        assert issued["venues"] == ["venue-7", "venue-8"] and issued["venue"] == "venue-7"
        assert re.fullmatch(r"web-venue-7-[0-9a-f]{8}", issued["device_id"])
        code = enrollment.normalize_code(issued["code"])
        assert issued["qr_text"] == enrollment.QR_PREFIX + code and issued["ttl_s"] == enrollment.DEFAULT_TTL_S

        # stored hashed: the code appears nowhere in the store, its domain-separated SHA-256 does
        rows = await engine.query("SELECT code_sha256, device_id, venues, used FROM enrollments")
        assert rows == [(hashlib.sha256(b"VNQR-ENROL-CODE-V1\x00" + code.encode()).hexdigest(), issued["device_id"],
                         ["venue-7", "venue-8"], 0)]  # fmt: skip
        dump = await engine.query("SELECT * FROM enrollments")
        assert code not in repr(dump) and enrollment.format_code(code) not in repr(dump)

        key = SigningKey.generate()
        # the proof must be made by the key being registered
        stranger = SigningKey.generate()
        status, body = await _post(http, engine.url + "/v1/enroll", _enrol_body(code, key, proof_key=stranger))
        assert status == 400 and "proof does not verify" in body["message"]
        # typed the way a person would: lower case, the dashes, an O for a 0
        typed = issued["code"].lower().replace("0", "o")
        status, body = await _post(http, engine.url + "/v1/enroll", _enrol_body(typed, key))
        assert status == 201, body
        assert body["device_id"] == issued["device_id"] and body["venues"] == ["venue-7", "venue-8"]

        # registered exactly as device-register does: in the registry (it can post scans) and in the store
        client = ScannerClient(engine.url, body["device_id"], key, session=http)
        status, answer = await client.post_scans([make_scan(engine.fx.code(1), "venue-7")])
        assert status == 202 and answer["results"][0]["verdict"] == "ok", answer
        stored = {d.device_id: d for d in await engine.rt.in_store_thread(engine.rt.store.devices)}
        assert stored[body["device_id"]].public_key == bytes(key.verify_key) and not stored[body["device_id"]].revoked
        # bound to the code's venues (issue 12): a scan for any other venue is refused with its reason
        assert stored[body["device_id"]].venues == ("venue-7", "venue-8")
        status, answer = await client.post_scans([make_scan(engine.fx.code(3), "venue-9")])
        assert status == 202 and answer["results"][0]["reason"] == "venue_not_bound", answer

        # a lost answer can be asked for again with the same key; any other second use is refused
        status, again = await _post(http, engine.url + "/v1/enroll", _enrol_body(code, key))
        assert status == 200 and again["device_id"] == body["device_id"]
        status, refused = await _post(http, engine.url + "/v1/enroll", _enrol_body(code, SigningKey.generate()))
        assert status == 409 and "already used" in refused["message"] and refused["error"] == "enrollment_used"

        # a revoked device cannot bring itself back with its old code
        async with http.post(engine.url + f"/v1/admin/devices/{body['device_id']}/revoke", headers=admin) as r:
            assert r.status == 200
        status, refused = await _post(http, engine.url + "/v1/enroll", _enrol_body(code, key))
        assert status == 403 and "revoked" in refused["message"]
        status, answer = await client.post_scans([make_scan(engine.fx.code(2), "venue-7")])
        assert status == 403

        # unknown, malformed and expired codes: each says what is wrong
        status, refused = await _post(http, engine.url + "/v1/enroll", _enrol_body(enrollment.new_code(), key))
        assert status == 403 and refused["error"] == "enrollment_unknown"
        bad = orjson.dumps({"code": "ABC", "public_key": "x", "proof": "y"})
        status, refused = await _post(http, engine.url + "/v1/enroll", bad)
        assert status == 400 and "20 characters" in refused["message"]
        bad = orjson.dumps({"code": "U" * 20, "public_key": "x", "proof": "y"})
        status, refused = await _post(http, engine.url + "/v1/enroll", bad)
        assert status == 400 and "'U'" in refused["message"]
        small_order = b64url_encode(b"\x01" + b"\x00" * 31)
        bad = orjson.dumps({"code": code, "public_key": small_order, "proof": b64url_encode(b"\x00" * 64)})
        status, refused = await _post(http, engine.url + "/v1/enroll", bad)
        assert status == 400 and "not a valid Ed25519 public key" in refused["message"]
        old, _ = await engine.rt.in_store_thread(
            lambda: enrollment.issue(engine.rt.store, ["venue-9"], ttl_s=60, now_ms=int(time.time() * 1000) - 120_000)
        )
        status, refused = await _post(http, engine.url + "/v1/enroll", _enrol_body(old, key))
        assert status == 410 and "expired" in refused["message"]

        # the operator side refuses what it cannot issue, and wants the admin token
        for doc, text in (
            ({"venues": []}, "1 or more"),
            ({"venues": ["bad venue"]}, "venue id"),
            ({"venues": ["v"], "ttl_s": 5}, "TTL"),
        ):
            status, refused = await _post(http, engine.url + "/v1/admin/enrollments", orjson.dumps(doc), admin)
            assert status == 400 and text in refused["message"], refused
        status, refused = await _post(http, engine.url + "/v1/admin/enrollments", orjson.dumps({"venues": ["v"]}))
        assert status == 401


def test_code_text_and_ttl_parsing() -> None:
    code = enrollment.new_code()
    assert len(code) == 20 and set(code) <= set(enrollment.ALPHABET)
    assert enrollment.normalize_code(f"  {enrollment.QR_PREFIX}{code} ") == code
    assert enrollment.normalize_code(enrollment.format_code(code).lower()) == code
    assert [enrollment.parse_ttl(t) for t in ("900", "90s", "15m", "2h", "1d")] == [900, 90, 900, 7200, 86400]
    for bad in ("15 minutes", "59s", "2d", ""):
        with pytest.raises(enrollment.PayloadError):
            enrollment.parse_ttl(bad)


def test_cli_issues_a_code_and_its_qr_image(tmp_path: Path) -> None:
    """No engine running: the CLI writes the enrolment into the store itself, and the PNG reads back."""
    env = {**os.environ, "ENGINE_DATA_DIR": str(tmp_path / "data"), "ENGINE_PORT": "1"}
    png = tmp_path / "enrol.png"
    out = subprocess.run(
        [sys.executable, "-m", "engine", "device-register", "--enroll", "--venue", "venue-3", "--ttl", "10m",
         "--png", str(png), "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["venues"] == ["venue-3"] and doc["issued"].startswith("directly in the store")
    assert read_image(png) == doc["qr_text"] == enrollment.QR_PREFIX + enrollment.normalize_code(doc["code"])
    wrong = subprocess.run(
        [sys.executable, "-m", "engine", "device-register", "--enroll", "--venue", "v", "--ttl", "5s"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert wrong.returncode == 2 and "TTL" in wrong.stderr


# -- the page's files and headers --------------------------------------------------------------------------
async def test_page_assets_types_and_policy(engine: Any) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(engine.url + "/scanner", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "scanner/"
        expected = {
            "": "text/html",
            "app.js": "text/javascript",
            "scanner.css": "text/css",
            "manifest.webmanifest": "application/manifest+json",
            "sw.js": "text/javascript",
            "icon-192.png": "image/png",
            "vendor/zxing-wasm/dist/reader/zxing_reader.wasm": "application/wasm",
            "vendor/zxing-wasm/dist/es/reader/index.js": "text/javascript",
            "vendor/zxing-wasm/LICENSE": "text/plain",
        }
        for name, ctype in expected.items():
            async with http.get(engine.url + "/scanner/" + name) as r:
                assert r.status == 200 and r.content_type == ctype, name
                csp = r.headers["Content-Security-Policy"]
                assert "default-src 'none'" in csp and "script-src 'self' 'wasm-unsafe-eval'" in csp
                assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                body = await r.read()
            if name == "sw.js":
                assert b"__ASSETS_VERSION__" not in body and re.search(rb'VERSION = "[0-9a-f]{16}"', body)
        for missing in ("nope.js", "__init__.py", "..%2F..%2Fserver.py", "vendor/zxing-wasm/VERSION"):
            async with http.get(engine.url + "/scanner/" + missing) as r:
                assert r.status == 404, missing
        async with http.get(engine.url + "/scanner/manifest.webmanifest") as r:
            manifest = json.loads(await r.read())
        assert manifest["start_url"] == "./" and manifest["display"] == "standalone"


def test_vendored_decoder_is_the_recorded_artefact() -> None:
    """The three files are the npm package's own (the .wasm hash is the one its JS names), with their licences."""
    record = (ZXING / "VERSION.txt").read_text()
    version = re.search(r"^version: (\S+)", record, re.M)
    assert version and f"npm pack zxing-wasm@{version.group(1)}" in record
    wasm = (ZXING / "dist/reader/zxing_reader.wasm").read_bytes()
    assert wasm[:4] == b"\0asm"
    digest = hashlib.sha256(wasm).hexdigest()
    assert digest in record
    js = (ZXING / "dist/es/reader/index.js").read_text()
    assert f'"{digest}"' in js and f'"{version.group(1)}"' in (ZXING / "dist/es/share.js").read_text()
    assert "MIT License" in (ZXING / "LICENSE").read_text()
    assert "Apache License" in (ZXING / "LICENSE.zxing-cpp").read_text()
    # the page overrides the CDN default: the .wasm comes from the engine
    camera = (STATIC / "camera.js").read_text()
    assert "locateFile" in camera and "jsdelivr" not in camera


# -- the page in headless Chromium with a fake camera ------------------------------------------------------
W, H = 640, 480


def _luma(code: str | None, tmp: Path) -> np.ndarray[Any, Any]:
    """One 640x480 grey frame: the code's QR image (engine/qr.py) centred, or blank white."""
    canvas = Image.new("L", (W, H), 235)
    if code is not None:
        png = tmp / "frame.png"
        render(code, png, scale=1)
        img = Image.open(png).convert("L")
        scale = max(1, 440 // img.width)
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        canvas.paste(img, ((W - img.width) // 2, (H - img.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def write_y4m(path: Path, codes: Sequence[str | None], frames_each: int = 4, fps: int = 5) -> Path:
    """A raw 4:2:0 video Chromium's fake camera loops: each code held for ``frames_each`` frames, grey chroma."""
    chroma = np.full((H // 2) * (W // 2), 128, np.uint8).tobytes()
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{W} H{H} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for code in codes:
            frame = b"FRAME\n" + _luma(code, path.parent).tobytes() + chroma + chroma
            f.write(frame * frames_each)
    return path


READ_PAGE = """(() => {
  const s = window.scanner;
  if (!s || !document.getElementById('verdict')) return null;
  const v = document.getElementById('verdict');
  const text = (id) => document.getElementById(id).textContent;
  return {mode: s.mode, device_id: s.device && s.device.device_id, venue: s.venue, queue: s.queue, scans: s.scans,
    net: s.net, sw: s.sw, tones: s.tones, error: s.lastError, frames: s.camera ? s.camera.frames : 0,
    verdict: {state: v.dataset.state, text: v.dataset.text || '', scan_id: v.dataset.scanId || '',
              verdict: v.dataset.verdict || '', title: text('verdict-title'), why: text('verdict-why'),
              meta: text('verdict-meta')},
    queueText: text('queue'), footer: text('device'), enrolError: text('enrol-error'),
    reenrol: document.getElementById('reenrol').hidden ? '' : text('reenrol'),
    history: [...document.querySelectorAll('#history li')].map(li => ({scan_id: li.dataset.scanId,
              state: li.dataset.state, verdict: li.dataset.verdict, text: li.textContent})),
    body: document.body.innerText, lang: document.documentElement.lang};
})()"""

CHROMIUM_CAMERA = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


class Page:
    """A DevTools session on the scanner page, with the reads and waits the test needs."""

    def __init__(self, devtools: DevTools) -> None:
        self.dt = devtools
        self.last: dict[str, Any] = {}

    async def read(self) -> dict[str, Any]:
        try:
            self.last = await self.dt.evaluate(READ_PAGE) or {}
        except RuntimeError:  # navigating: no execution context for a moment
            self.last = {}
        return self.last

    async def until(self, what: str, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        async def ok() -> bool:
            state = await self.read()
            return bool(state) and bool(predicate(state))

        try:
            await wait_until(ok, timeout=timeout, interval=0.2)
        except AssertionError:
            raise AssertionError(f"page never showed {what}; last state: {self.last}") from None
        return self.last

    async def run(self, expression: str) -> Any:
        """Evaluate an async expression in the page (a module import, WebCrypto) and return its value."""
        result = await self.dt.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self) -> tuple[bytes, Image.Image]:
        shot = await self.dt.call("Page.captureScreenshot", format="png")
        png = base64.b64decode(shot["data"])
        return png, Image.open(io.BytesIO(png)).convert("RGB")

    async def verdict_colour(self, img: Image.Image) -> tuple[float, float, float]:
        """Mean colour of the verdict box as drawn in the screenshot (its rectangle read from the layout)."""
        r = await self.dt.evaluate(
            "(() => { const b = document.getElementById('verdict').getBoundingClientRect();"
            " return [b.left, b.top, b.right, b.bottom]; })()"
        )
        box = img.crop(tuple(int(x) for x in r))
        mean = np.asarray(box, dtype=np.float64).reshape(-1, 3).mean(axis=0)
        return float(mean[0]), float(mean[1]), float(mean[2])


@contextlib.asynccontextmanager
async def scanner_page(binary: str, url: str, profile: Path, video: Path) -> AsyncIterator[Page]:
    """Chromium on ``url`` with ``video`` as its camera, the profile kept between launches (IndexedDB, the
    service worker's cache), laid out as a 390 px wide phone."""
    (profile / "DevToolsActivePort").unlink(missing_ok=True)  # the last launch's port, else read as this one's
    flags = (
        *CHROMIUM_CAMERA,
        f"--use-file-for-fake-video-capture={video}",
        "--autoplay-policy=no-user-gesture-required",  # the verdict tone plays without a tap first
    )
    async with chromium_page(binary, url, profile, flags) as devtools:
        await devtools.call(
            "Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=1, mobile=True
        )
        yield Page(devtools)


def _green(c: tuple[float, float, float]) -> bool:
    return c[1] > c[0] + 40 and c[1] > c[2] + 20


def _red(c: tuple[float, float, float]) -> bool:
    return c[0] > c[1] + 60 and c[0] > c[2] + 60


@pytest.mark.browser
async def test_scanner_in_headless_chromium(tmp_path: Path) -> None:
    binary = _chromium()
    if binary is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; scripts/install.sh does it for CI)")
    fx = make_fixture(tmp_path / "engine")
    engine = EngineProcess(fx.data_dir, ENGINE_INSERT_INTERVAL_MS="50", ENGINE_BATCH_AGE_MS="2")
    await asyncio.to_thread(engine.start)
    admin = admin_headers(fx.data_dir)
    profile = tmp_path / "profile"
    url = engine.url + "/scanner/"
    shown: dict[str, dict[str, Any]] = {}
    try:
        # 1. enrolment: the operator's code shown to the camera; the key is made in the browser
        issued = engine.post_json("/v1/admin/enrollments", orjson.dumps({"venues": ["venue-7", "venue-8"]}), admin)
        async with scanner_page(binary, url, profile, write_y4m(tmp_path / "enrol.y4m", [issued["qr_text"]])) as page:
            state = await page.until("the scanning screen after enrolment", lambda s: s["mode"] == "scan")
            assert state["device_id"] == issued["device_id"] and state["venue"] == "venue-7"
            assert issued["device_id"] in state["footer"] and "venue-7" in state["footer"]
            assert state["lang"] == "vi" and "Sẵn sàng quét" in state["body"]  # Vietnamese by default
            # the key: Ed25519, private part non-extractable, and the same bytes signed as engine/client.py signs
            probe = await page.run(SIGNING_PROBE)
            assert probe["type"] == "private" and probe["algorithm"] == "Ed25519" and probe["extractable"] is False
            assert probe["export"].startswith("InvalidAccessError")
            body = b'{"device_id":"d","scans":[]}'
            assert bytes.fromhex(probe["message"]) == signed_message(
                "POST", "/v1/scans?x=1", "dev-1", "1700000000", "abcdefghijklmnop", body
            )
            headers = probe["headers"]
            assert headers["X-Timestamp"] == "1700000000" and headers["X-Device-Id"] == issued["device_id"]
            VerifyKey(base64.urlsafe_b64decode(probe["public_key"] + "=")).verify(
                signed_message("POST", "/v1/scans", issued["device_id"], "1700000000", headers["X-Nonce"], body),
                base64.urlsafe_b64decode(headers["X-Signature"] + "=="),
            )
            # registered exactly as device-register registers: device-list shows it active with that key
            devices = {d["device_id"]: d for d in engine.get_json("/v1/admin/devices", admin)["devices"]}
            assert devices[issued["device_id"]]["public_key"] == probe["public_key"]
            assert devices[issued["device_id"]]["revoked"] is False
            # everything came from the engine, the decoder's .wasm included; the service worker cached it all
            resources = await page.run("performance.getEntriesByType('resource').map(e => e.name)")
            assert url + "vendor/zxing-wasm/dist/reader/zxing_reader.wasm" in resources
            assert all(r.startswith(engine.url + "/") for r in resources), resources
            await page.until("the service worker ready", lambda s: s["sw"] == "ready")

        # 2. a genuine code: verified, stored with its verdict, shown big and green; no name, no birth date
        good = fx.code(1)
        async with scanner_page(binary, url, profile, write_y4m(tmp_path / "good.y4m", [good])) as page:
            state = await page.until("a verdict", lambda s: s["verdict"]["state"] in ("ok", "bad"))
            v = state["verdict"]
            assert v["state"] == "ok" and v["title"] == "Hợp lệ" and v["verdict"] == "ok", state
            assert "Vào" in v["meta"] and "•••0001" in v["meta"]  # direction and the masked QR id
            assert "ok" in state["tones"]
            for private in ("NGUYEN VAN AN", "1990-01", "******000001", "QID0000000001"):
                assert private not in state["body"]
            png, img = await page.screenshot()
            assert _green(await page.verdict_colour(img)), "the verdict box is not drawn green"
            shown["good"] = state
            if os.environ.get("ENGINE_UPDATE_SCREENSHOT") == "1":  # refresh the README's picture only when asked
                (ROOT / "docs" / "scanner.png").write_bytes(png)
            await page.dt.evaluate("document.getElementById('lang').click()")  # English from now on (kept)
            await page.until("English labels", lambda s: s["lang"] == "en" and "Entry" in s["body"])
            await wait_until(lambda: page.dt.evaluate("window.scanner.prefsSaved === 'en'"), timeout=10)

        # 3. a forged code: not verified, and why
        forged = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
        async with scanner_page(binary, url, profile, write_y4m(tmp_path / "forged.y4m", [forged])) as page:
            state = await page.until("a verdict", lambda s: s["verdict"]["state"] in ("ok", "bad"))
            assert state["verdict"]["text"].lower() == "not verified: bad signature", state
            assert state["verdict"]["verdict"] == "bad_signature" and "bad" in state["tones"]
            _, img = await page.screenshot()
            assert _red(await page.verdict_colour(img)), "the verdict box is not drawn red"
            shown["forged"] = state

        # 4. offline: the engine stopped; the page still loads (service worker) and queues three scans
        await asyncio.to_thread(engine.terminate)
        offline = [fx.code(i) for i in (2, 3, 4)]
        async with scanner_page(binary, url, profile, write_y4m(tmp_path / "offline.y4m", offline)) as page:
            state = await page.until("three queued scans", lambda s: s["queue"] == 3 and s["scans"] == 3, timeout=40)
            assert state["verdict"]["state"] == "queued" and state["verdict"]["title"] == "Queued offline"
            assert state["net"] == "offline" and "3" in state["queueText"]
            await asyncio.sleep(2)  # the codes keep looping in view: still three scans, not more
            assert (await page.read())["scans"] == 3
        # the queue survives the browser: a fresh launch, camera blank, engine started while it waits
        blank = write_y4m(tmp_path / "blank.y4m", [None])
        async with scanner_page(binary, url, profile, blank) as page:
            await page.until("the queue kept across a restart", lambda s: s["queue"] == 3)
            await asyncio.to_thread(engine.start)
            state = await page.until("the queue drained", lambda s: s["queue"] == 0 and len(s["history"]) >= 3, 40)
            drained = [h for h in state["history"] if h["state"] == "ok"]
            assert len(drained) == 3, state["history"]
            shown["offline"] = state

        # 5. revoked: the page says it must re-enrol; a new code typed in brings it back, and the scan it kept
        engine.post_json(f"/v1/admin/devices/{issued['device_id']}/revoke", b"", admin)
        last = fx.code(5)
        async with scanner_page(binary, url, profile, write_y4m(tmp_path / "last.y4m", [last])) as page:
            state = await page.until("the re-enrol notice", lambda s: s["mode"] == "enrol" and s["reenrol"])
            assert "revoked" in state["reenrol"] and "re-enrol" in state["reenrol"], state
            assert state["verdict"]["state"] == "revoked" and state["queue"] == 1
            again = engine.post_json("/v1/admin/enrollments", orjson.dumps({"venues": ["venue-7"]}), admin)
            await page.dt.evaluate(
                f"document.getElementById('enrol-code').value = {json.dumps(again['code'])};"
                "document.getElementById('enrol-submit').click()"
            )
            state = await page.until("re-enrolled and drained", lambda s: s["mode"] == "scan" and s["queue"] == 0)
            assert state["device_id"] == again["device_id"] != issued["device_id"]
            shown["reenrolled"] = state
    finally:
        if engine.proc is not None and engine.proc.poll() is None:
            await asyncio.to_thread(engine.terminate)

    # every scan the page made is in the store once, with the verdict the page showed
    from engine.store.store import Store

    store = Store.connect(f"chdb://{fx.data_dir}/store")
    try:
        rows = store.query(
            "SELECT toString(scan_id), device_id, venue_id, toString(direction), toString(verdict), qr_id, count() "
            "FROM scans GROUP BY scan_id, device_id, venue_id, direction, verdict, qr_id"
        )
    finally:
        store.close()
    by_id = {r[0]: r for r in rows}
    assert all(r[6] == 1 for r in rows), rows  # exactly once, counted before any merge could hide a duplicate
    assert len(rows) == 6, rows  # good, forged, three offline, the one kept over re-enrolment
    good_row = by_id[shown["good"]["verdict"]["scan_id"]]
    assert good_row[1:6] == (issued["device_id"], "venue-7", "in", "ok", "QID0000000001")
    assert by_id[shown["forged"]["verdict"]["scan_id"]][4] == "bad_signature"
    offline_ids = [h["scan_id"] for h in shown["offline"]["history"] if h["state"] == "ok"]
    assert {by_id[i][5] for i in offline_ids} == {"QID0000000002", "QID0000000003", "QID0000000004"}
    last_rows = [r for r in rows if r[5] == "QID0000000005"]
    assert len(last_rows) == 1 and last_rows[0][1] == again["device_id"] and last_rows[0][4] == "ok"


@pytest.mark.browser
async def test_scanner_waits_out_retry_after(tmp_path: Path, aiohttp_server: Any) -> None:
    """A device over its rate limit gets 429 + Retry-After: the page resends the same scan ids, never earlier."""
    binary = _chromium()
    if binary is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; scripts/install.sh does it for CI)")
    starter = EngineStarter(tmp_path, aiohttp_server, device_rate=0.25, device_burst=1.0)
    e = await starter()
    try:
        issued = await e.rt.in_store_thread(lambda: enrollment.issue(e.rt.store, ["venue-1"]))
        qr = enrollment.QR_PREFIX + issued[0]
        video = write_y4m(tmp_path / "burst.y4m", [qr, e.fx.code(1), e.fx.code(2)])
        async with scanner_page(binary, e.url + "/scanner/", tmp_path / "profile", video) as page:
            state = await page.until(
                "both scans answered", lambda s: s["mode"] == "scan" and s["scans"] == 2 and s["queue"] == 0, 40
            )
            sends = await page.dt.evaluate("window.scanner.sends")
        limited = [i for i, s in enumerate(sends) if s["status"] == 429]
        assert limited, f"the second scan should have met the rate limit: {sends}"
        for i in limited:
            assert sends[i]["retry_after_ms"] >= 1000
            later = sends[i + 1]
            assert later["sent_at"] >= sends[i]["at"] + sends[i]["retry_after_ms"], (sends[i], later)
            assert set(sends[i]["scan_ids"]) <= set(later["scan_ids"])  # the same scan ids again
        assert sends[-1]["status"] == 202 and [h["state"] for h in state["history"]] == ["ok", "ok"]
        await e.drained()
        rows = await e.query(
            "SELECT toString(scan_id), count() FROM scans WHERE device_id = {d:String} GROUP BY scan_id",
            {"d": issued[1].device_id},
        )
        assert sorted(r[0] for r in rows) == sorted(h["scan_id"] for h in state["history"])
        assert all(r[1] == 1 for r in rows)
    finally:
        await starter.close()


SIGNING_PROBE = """(async () => {
  const m = await import('./device.js');
  const body = new TextEncoder().encode('{"device_id":"d","scans":[]}');
  const message = await m.signedMessage('POST', '/v1/scans?x=1', 'dev-1', '1700000000', 'abcdefghijklmnop', body);
  const device = await m.loadDevice();
  const headers = await m.signRequest(device, 'POST', '/v1/scans', body, 1700000000999);
  let exported = 'exported';
  try { await crypto.subtle.exportKey('pkcs8', device.privateKey); } catch (e) { exported = e.name + ': ' + e.message; }
  return {message: m.hex(message), headers, public_key: device.publicKey, type: device.privateKey.type,
          algorithm: device.privateKey.algorithm.name, extractable: device.privateKey.extractable, export: exported};
})()"""
