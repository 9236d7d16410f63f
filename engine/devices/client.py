"""The scanner side of the device API: request signing and a small async client.

Real scanners, the tests, the benchmark and the Locust load test all sign through :func:`sign_request`, which
builds the message with the same function the server checks it with (``engine.devices.auth.signed_message``), so
the two sides cannot drift apart. The contract itself is written down in ``engine/devices/auth.py``.
"""

from __future__ import annotations

import secrets
import ssl
import time
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from nacl.signing import SigningKey
from yarl import URL

from engine.codes.payload import b64url_encode
from engine.devices.auth import signed_message


def new_nonce() -> str:
    """24 base64url characters: 144 random bits, so collisions within a device's replay window never happen."""
    return secrets.token_urlsafe(18)


def sign_request(
    key: SigningKey,
    device_id: str,
    method: str,
    path_qs: str,
    body: bytes,
    *,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four authentication headers for one request (``now`` and ``nonce`` are injectable for tests)."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = new_nonce() if nonce is None else nonce
    message = signed_message(method.upper(), path_qs, device_id, timestamp, nonce, body)
    return {
        "X-Device-Id": device_id,
        "X-Timestamp": timestamp,
        "X-Nonce": nonce,
        "X-Signature": b64url_encode(key.sign(message).signature),
    }


def make_scan(
    code: str,
    venue_id: str,
    *,
    direction: str = "in",
    scanned_at_ms: int | None = None,
    scan_id: str | None = None,
) -> dict[str, Any]:
    """One scan item as ``POST /v1/scans`` expects it; the scan id is what makes a retried upload idempotent."""
    return {
        "scan_id": scan_id or str(uuid.uuid4()),
        "qr": code,
        "venue_id": venue_id,
        "direction": direction,
        "scanned_at": int(time.time() * 1000) if scanned_at_ms is None else scanned_at_ms,
    }


class ScannerClient:
    """An async client for one device identity; for tests, benchmarks and the demo scanner, not production."""

    def __init__(
        self,
        base_url: str,
        device_id: str,
        key: SigningKey,
        *,
        session: aiohttp.ClientSession | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.device_id = device_id
        self._key = key
        self._ssl = ssl_context  # https: the server's trust anchor, and the device's client certificate for mTLS
        self._session = session
        self._owns_session = session is None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession must be made inside the running loop, and constructors here are sync.
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def post_scans(
        self, scans: list[dict[str, Any]], *, device_id: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST /v1/scans signed as this device; ``device_id`` changes only the id written in the body."""
        body = orjson.dumps({"device_id": device_id or self.device_id, "scans": scans})
        status, answer = await self.request("POST", "/v1/scans", body)
        if not isinstance(answer, dict):  # e.g. a proxy's plain-text error page
            answer = {"error": "non_json", "message": str(answer)}
        return status, answer

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        headers_override: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Send one request; return (status, parsed JSON) or (status, text) when the answer is not JSON.

        The request is signed as this device, then ``headers_override`` is laid over the signed headers (to send
        a broken or foreign header in a test). If the override carries ``Authorization`` the request is an
        operator call and is not signed at all: the engine refuses requests that carry both kinds of credential.
        The path is sent exactly as given (no re-quoting), because it is part of what was signed.
        """
        method = method.upper()
        override = dict(headers_override or {})
        headers: dict[str, str] = {}
        if body:
            headers["Content-Type"] = "application/json"
        if "Authorization" not in override:
            headers.update(sign_request(self._key, self.device_id, method, path, body))
        headers.update(override)
        url = URL(self.base_url + path, encoded=True)
        async with self._get_session().request(method, url, data=body or None, headers=headers) as resp:
            raw = await resp.read()
            if resp.content_type == "application/json":
                try:
                    return resp.status, orjson.loads(raw)
                except orjson.JSONDecodeError:
                    pass
            return resp.status, raw.decode("utf-8", "replace")

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None
