"""``serve``: run the ingestion server (aiohttp on uvloop) until SIGTERM/SIGINT.

The listening socket is bound here, before the app starts, so the address the engine records in
``<data_dir>/engine.json`` is the one it really listens on (``--port 0`` included) and connections that arrive
while the store opens wait in the backlog instead of being refused. The file is written once the engine is
ready and removed on a clean exit; every other command finds the engine through it (``engine.cli.address``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time

from engine.cli import address
from engine.cli.workers import mark_ready, supervise
from engine.config import Config
from engine.errors import ConfigError
from engine.ops.sdnotify import READY, STOPPING, notify
from engine.permissions import restrict_umask
from engine.version import VERSION

log = logging.getLogger("engine")


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """The listening socket (SO_REUSEADDR, as aiohttp's own sites set it; SO_REUSEPORT for ``--workers``, so every
    worker binds the same port and the kernel spreads connections over them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=1024, reuse_port=reuse_port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


async def _notify_stopping(app: object) -> None:
    """SIGTERM received: the listener is closing and the graceful drain begins (systemd shows "deactivating")."""
    notify(STOPPING)


def _serving(message: str) -> None:
    """aiohttp's run_app calls its ``print`` once, right after every site is listening: the one moment that is
    "serving" (on_startup runs before the socket is bound, so READY=1 there could precede a connection refused)."""
    logging.getLogger("engine").info(message.strip())
    notify(READY)  # a worker of --workers has no NOTIFY_SOCKET: its supervisor reports for all of them
    mark_ready()


def _run(args: argparse.Namespace) -> int:
    import uvloop
    from aiohttp import web

    from engine.ops.logs import configure
    from engine.web.access import AccessLogger, access_logger
    from engine.web.app import create_app
    from engine.web.keys import TLS_CONTEXT
    from engine.web.listeners import is_loopback

    restrict_umask()  # before anything is created: WAL segments, chdb parts, secrets, files of this process
    config = Config.from_sources(args)
    configure(config.log_level, config.log_format)
    if args.demo and not (is_loopback(config.host) and is_loopback(config.ops_host)):
        raise ConfigError(
            "--demo puts a trusted issuer's private key in the data directory: it listens on loopback only "
            f"(not {config.host})"
        )
    if args.demo and str(config.tls_client_ca) not in ("", "."):
        raise ConfigError("--demo's scanner has no client certificate: run it without --tls-client-ca")
    if config.workers > 1 and "ENGINE_WORKER_INDEX" not in os.environ:
        if args.demo:
            raise ConfigError("--demo runs one process: not with --workers")
        from engine.web.app import check_private_files
        from engine.web.listeners import check_listeners

        check_listeners(config)  # refused here once, not by every worker the supervisor would restart
        check_private_files(config)
        return supervise(config, sys.argv[1:])
    app = create_app(config)
    tls = app.get(TLS_CONTEXT)
    if args.demo:
        from engine.cli.demo import demo_codes, demo_scanner_ctx, prepare_demo

        issuer, device = prepare_demo(config)
        app.cleanup_ctx.append(demo_scanner_ctx(config, device, demo_codes(issuer)))
    sock = bind(config.host, config.port, reuse_port=config.workers > 1)
    port = int(sock.getsockname()[1])
    url = address.local_url(config.host, port, tls=tls is not None)
    pid = os.getpid()
    cert = str(config.tls_cert.resolve()) if tls is not None else ""

    async def announce(app: web.Application) -> None:
        address.write(config.data_dir, address.EngineAddress(pid, url, time.time(), VERSION, cert))
        log.info("listening on %s:%d (pid %d; address in %s)", config.host, port, pid, address.path_of(config.data_dir))

    async def withdraw(app: web.Application) -> None:
        address.remove(config.data_dir, pid)  # first thing on shutdown: commands stop asking a closing engine

    app.on_startup.append(announce)  # after the cleanup contexts: the engine is ready when the file appears
    app.on_shutdown.insert(0, withdraw)
    app.on_shutdown.append(_notify_stopping)
    loop = uvloop.new_event_loop()  # uvloop's loop, without the deprecated global policy switch
    try:
        web.run_app(
            app,
            sock=sock,
            ssl_context=tls.context if tls is not None else None,
            shutdown_timeout=config.shutdown_timeout_s,
            keepalive_timeout=config.keepalive_timeout_s,
            access_log=access_logger(config.access_log),
            access_log_class=AccessLogger,
            loop=loop,
            print=_serving,
        )
    finally:
        address.remove(config.data_dir, pid)  # also when start-up failed half-way
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the ingestion server", description="Run the ingestion server.")
    Config.add_arguments(p)
    p.add_argument(
        "--demo",
        action="store_true",
        help="first run: create a demo issuer key, trust list and scanner device in the data directory (loopback only)",
    )
    p.set_defaults(func=_run)
