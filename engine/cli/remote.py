"""Calling a running engine from a CLI on the same host, or opening its store when none runs.

The embedded store can be opened by one process only, so while an engine runs, the CLI's reads and writes
go through it. The engine is found from the data directory alone (``<data_dir>/engine.json``, see
:mod:`engine.cli.address`); ``--host``/``--port`` are only the fallback for an engine that wrote no address.
``call_engine`` raises :class:`EngineUnreachable` when no engine is there, which is the CLI's cue to open the
store itself with :func:`open_store`; if that store is still locked, the error says by whom and how to reach it.
"""

from __future__ import annotations

import contextlib
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from engine.cli import address
from engine.config import Config
from engine.errors import EngineError, StoreError

T = TypeVar("T")


class EngineUnreachable(EngineError):
    """No engine answered for this data directory."""

    code = "engine_unreachable"


def engine_url(cfg: Config) -> str:
    """The data directory's engine if it recorded one, else the configured address."""
    return _located(cfg)[0]


def _located(cfg: Config) -> tuple[str, ssl.SSLContext | None]:
    """The engine's URL, and for https the context that trusts exactly its certificate: the one it recorded in
    ``engine.json``, else ``--tls-cert``. The CLI connects to loopback, which the certificate rarely names;
    only the holder of that certificate's key can answer (``engine.web.tls.client_context``)."""
    found = address.locate(cfg.data_dir)
    url = found.url if found is not None else address.local_url(cfg.host, cfg.port, tls=cfg.tls)
    if not url.startswith("https://"):
        return url, None
    from engine.web.tls import client_context

    cert = found.tls_cert if found is not None and found.tls_cert else (str(cfg.tls_cert) if cfg.tls else "")
    return url, client_context(pinned=[Path(cert)] if cert else [])


def admin_token(cfg: Config) -> str | None:
    path = cfg.data_dir / "admin.token"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EngineError(f"cannot read the admin token {path}: {exc.strerror} (run as the engine's user)") from None


def call_engine(
    cfg: Config, method: str, path: str, body: Any = None, *, token: str | None = None, timeout: float = 30.0
) -> Any:
    """One JSON call to the engine; an answer with an error status raises :class:`EngineError` with its message."""
    token = token or admin_token(cfg)
    if token is None:
        raise EngineUnreachable(f"no admin token in {cfg.data_dir}: no engine has run with this data directory")
    url, tls = _located(cfg)
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=tls) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = orjson.loads(exc.read()).get("message", exc.reason)
        except (orjson.JSONDecodeError, AttributeError):
            detail = exc.reason
        raise EngineError(f"engine at {url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EngineUnreachable(f"no engine answers at {url}: {reason}") from None


def open_store(cfg: Config) -> Any:
    """The store itself (no engine runs); a store still locked by a process is explained, never a raw error."""
    from engine.store.store import Store

    try:
        store = Store.connect(cfg.store_dsn, **cfg.store_options())
    except StoreError as exc:
        found = address.read(cfg.data_dir)
        if "in use by" in str(exc) and found is not None:
            raise StoreError(
                f"{exc}. That is the engine recorded in {address.path_of(cfg.data_dir)} "
                f"(PID {found.pid}, {found.url}), which did not answer: wait for it to finish starting, "
                "or stop it (SIGTERM) and retry"
            ) from None
        raise
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store


def with_store(cfg: Config, fn: Callable[[Any], T]) -> T:
    """Run ``fn(store)`` on the store opened directly, and close it."""
    store = open_store(cfg)
    try:
        return fn(store)
    finally:
        store.close()


def engine_or_store(cfg: Config, method: str, path: str, local: Callable[[Any], T], body: Any = None) -> Any:
    """Ask the running engine (it holds the live device registry and the embedded store); when none runs, do
    ``local(store)`` on the store directly."""
    try:
        return call_engine(cfg, method, path, body)
    except EngineUnreachable:
        return with_store(cfg, local)


@contextlib.contextmanager
def credential_registry(cfg: Config, kind: str = "tracer") -> Iterator[Any]:
    """Where this command adds, lists and revokes tracers (or admin tokens): on a ClickHouse server the
    deployment's registry in the store (every node re-reads it within ``--registry-poll-s``), the data
    directory's file still read beside it; with the embedded store (one node) the data directory's file."""
    from engine.tracing.credentials import StoredCredentials, TracerRegistry

    local = TracerRegistry.for_data_dir(cfg.data_dir)
    if cfg.store_dsn.startswith("chdb:"):
        if kind != "tracer":
            raise EngineError(
                "a single node with the embedded store has one admin token, its data directory's admin.token; "
                "deployment admin tokens need a ClickHouse server store (--dsn http://...)"
            )
        yield local
        return
    store = open_store(cfg)
    try:
        yield StoredCredentials(store, kind, live=True, fallback=local if kind == "tracer" else None)
    finally:
        store.close()
