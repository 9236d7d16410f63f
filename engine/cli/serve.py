"""``serve``: run the ingestion server (aiohttp on uvloop) until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

from engine.cli.workers import mark_ready, supervise
from engine.config import Config
from engine.errors import ConfigError
from engine.ops.sdnotify import READY, STOPPING, notify


async def _freeze_startup_heap(app: object) -> None:
    """Move everything built at start-up (modules, chdb, pyarrow, aiohttp, the migrated store: ~65k objects) out
    of the collector's reach; none of it ever becomes garbage. Without this, full collections walk that heap
    while serving (gc callbacks over a bench run showed it; README); with it, none. ``ENGINE_GC_FREEZE=0`` turns
    it off."""
    gc.collect()
    gc.freeze()


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

    from engine.web.app import create_app

    config = Config.from_sources(args)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.workers > 1 and "ENGINE_WORKER_INDEX" not in os.environ:
        if args.demo:
            raise ConfigError("--demo runs one process: not with --workers")
        return supervise(config, sys.argv[1:])
    app = create_app(config)
    if args.demo:
        from engine.cli.demo import demo_codes, demo_scanner_ctx, prepare_demo

        issuer, device = prepare_demo(config)
        app.cleanup_ctx.append(demo_scanner_ctx(config, device, demo_codes(issuer)))
    if os.environ.get("ENGINE_GC_FREEZE", "1") != "0":
        app.on_startup.append(_freeze_startup_heap)
    app.on_shutdown.append(_notify_stopping)
    loop = uvloop.new_event_loop()  # uvloop's loop, without the deprecated global policy switch
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        shutdown_timeout=config.shutdown_timeout_s,
        keepalive_timeout=config.keepalive_timeout_s,
        access_log=None,
        loop=loop,
        print=_serving,
        reuse_port=config.workers > 1,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the ingestion server")
    Config.add_arguments(p)
    p.add_argument(
        "--demo",
        action="store_true",
        help="first run: create a demo issuer key, trust list and scanner device in the data directory",
    )
    p.set_defaults(func=_run)
