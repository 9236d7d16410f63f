"""Where the engine listens, and on what terms: the device/tracer listener and the operations listener.

Two listeners, because their audiences differ. The **main listener** (``--host/--port``) faces scanners and
tracing clients: every route on it authenticates (signed device requests, tracer or operator tokens), except
``/healthz``, ``/readyz`` (ready or not and a cause code, nothing else) and ``/openapi.json``. The
**operations listener** (``--ops-host/--ops-port``, 127.0.0.1:8081 by default) serves ``/metrics``,
``/dashboard`` and ``/v1/stats`` without a token: Prometheus and a browser reach it from the host itself or
through an SSH tunnel, and the network policy decides who else may. They are not on the main listener at all,
so the figures of a national system (devices active, scans per second by verdict, store state) are not
anonymous reconnaissance for whoever can reach a scanner port.

Off loopback, plain HTTP is refused on either listener unless ``--plaintext-behind-proxy`` says a TLS
terminator sits in front; that choice is logged at WARNING at every start (docs/security.md, "Behind a proxy").
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from aiohttp import web

from engine.config import Config
from engine.errors import ConfigError
from engine.web import dashboard
from engine.web.keys import CONFIG, LISTENERS, METRICS, RUNTIME, TLS_CONTEXT

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; a host name that needs resolving counts as reachable."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listeners(config: Config) -> None:
    """Refuse plaintext off loopback (the fix named), or warn loudly when the operator vouched for a proxy."""
    for what, host in (("--host", config.host), ("--ops-host", config.ops_host)):
        if is_loopback(host) or config.tls:
            continue
        if not config.plaintext_behind_proxy:
            raise ConfigError(
                f"refusing to listen on {host} ({what}) without TLS: scans, tracer tokens and trace results "
                "would cross the network in clear. Give --tls-cert and --tls-key, or --plaintext-behind-proxy "
                "if a TLS terminator in front of the engine is the only thing that can reach it"
            )
        log.warning(
            "PLAINTEXT on %s (%s): --plaintext-behind-proxy says a TLS terminator sits in front and that "
            "nothing else can reach this address; if not, scans and tokens cross the network in clear",
            host,
            what,
        )
    if not is_loopback(config.ops_host):
        log.warning(
            "the operations listener (/metrics, /dashboard, /v1/stats) is on %s and asks no token: "
            "restrict who can reach it by network policy",
            config.ops_host,
        )


def ops_routes(router: web.UrlDispatcher, *, extra: Iterable[tuple[str, Any]] = ()) -> None:
    """The operations listener's routes: metrics, the dashboard and its stats, plus the probes."""
    from engine.web.scans import healthz, metrics_endpoint, openapi, readyz

    router.add_get("/metrics", metrics_endpoint)
    router.add_get("/healthz", healthz)
    router.add_get("/readyz", readyz)
    router.add_get("/openapi.json", openapi)  # this listener's own routes
    dashboard.add_routes(router)
    for path, handler in extra:
        router.add_get(path, handler)


def ops_listener_ctx(
    middlewares: Iterable[Callable[..., Any]],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context of the main app that runs the operations listener beside it.

    The ops app shares the main app's metrics, stats ring and runtime (it serves the same engine), and is torn
    down first on shutdown (cleanup contexts close in reverse), after the main app's ``on_shutdown`` has ended
    the dashboard's event streams.
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        cfg = app[CONFIG]
        ops = web.Application(middlewares=list(middlewares))
        ops[CONFIG], ops[METRICS], ops[RUNTIME] = cfg, app[METRICS], app[RUNTIME]
        ops[dashboard.STATS] = app[dashboard.STATS]
        ops_routes(ops.router)
        runner = web.AppRunner(ops, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        # TLS where it crosses a network; on loopback plain HTTP, so Prometheus on the host needs no certificate
        tls = app.get(TLS_CONTEXT) if not is_loopback(cfg.ops_host) else None
        site = web.TCPSite(runner, cfg.ops_host, cfg.ops_listen_port, ssl_context=tls.context if tls else None)
        await site.start()
        server = site._server
        port = server.sockets[0].getsockname()[1] if server is not None and server.sockets else cfg.ops_listen_port  # type: ignore[attr-defined]
        host = f"[{cfg.ops_host}]" if ":" in cfg.ops_host else cfg.ops_host
        app[LISTENERS].ops_url = f"{'https' if tls else 'http'}://{host}:{port}"
        log.info("operations listener (/metrics, /dashboard, /v1/stats) on %s", app[LISTENERS].ops_url)
        yield
        await runner.cleanup()

    return ctx
