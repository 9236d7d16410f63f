"""Calling a running engine from a CLI on the same host.

The embedded store can be opened by one process only, so while an engine runs, the CLI's reads and writes
go through it. ``call_engine`` raises :class:`EngineUnreachable` when nothing listens, which is the CLI's cue
to open the store itself.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from typing import Any

import orjson

from engine.config import Config
from engine.errors import EngineError


class EngineUnreachable(EngineError):
    """No engine answered on the configured address."""

    code = "engine_unreachable"


def engine_url(cfg: Config) -> str:
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    return f"{'https' if cfg.tls else 'http'}://{host}:{cfg.port}"


def _tls_context(cfg: Config) -> ssl.SSLContext | None:
    """With TLS on, the CLI trusts exactly the engine's own certificate (it connects to loopback, which the
    certificate rarely names; only the holder of that certificate's key can answer)."""
    if not cfg.tls:
        return None
    from engine.web.tls import client_context

    return client_context(pinned=[cfg.tls_cert])


def admin_token(cfg: Config) -> str | None:
    path = cfg.data_dir / "admin.token"
    return path.read_text().strip() if path.exists() else None


def call_engine(
    cfg: Config, method: str, path: str, body: Any = None, *, token: str | None = None, timeout: float = 30.0
) -> Any:
    token = token or admin_token(cfg)
    if token is None:
        raise EngineUnreachable("no admin token in the data directory: no engine has run here")
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(engine_url(cfg) + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=_tls_context(cfg)) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = orjson.loads(exc.read()).get("message", exc.reason)
        except orjson.JSONDecodeError:
            detail = exc.reason
        raise EngineError(f"engine answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, ConnectionError) as exc:
        raise EngineUnreachable(f"no engine at {engine_url(cfg)}: {exc}") from None
