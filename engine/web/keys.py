"""Typed application state: the keys every route module reads, and the live parts of one engine.

Route modules import these from here, never from the app factory, so the factory can import them plainly
(no import cycle, no string imports). Nothing lives in module globals: each app holds its own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from engine.codes.trust import TrustList
from engine.codes.trust_root import SignedTrustList
from engine.config import Config
from engine.deployment.registries import RegistryRefresher
from engine.deployment.trust import TrustFeed
from engine.devices.auth import DeviceRegistry
from engine.ingest.batcher import Batcher
from engine.ingest.drain import Drain
from engine.ingest.wal import WriteAheadLog
from engine.ops.authlog import AuthFailures
from engine.ops.metrics import Metrics
from engine.store.store import Store
from engine.threads import keeping_name
from engine.tracing.credentials import StoredCredentials
from engine.tracing.gate import TraceGate
from engine.tracing.lane import TraceLane
from engine.web.tls import ServerTLS

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Runtime:
    """The live parts of one engine, shared by the route modules through ``app[RUNTIME]``."""

    config: Config
    metrics: Metrics
    store: Store
    wal: WriteAheadLog
    trust: TrustList
    devices: DeviceRegistry
    drain: Drain
    batcher: Batcher
    admin_token: str
    started: float
    shutting_down: bool = False
    ready_cause: str = "ok"  # the last /readyz cause, so a change is logged once
    trust_feed: TrustFeed | None = None  # with --trust-root-key: signed versions from the store
    refresher: RegistryRefresher | None = None  # a server store: registries re-read every --registry-poll-s
    admin_tokens: StoredCredentials | None = None  # a server store: the deployment's admin tokens

    async def in_store_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store call on the one store thread (chdb is single-process, one call at a time)."""
        call = keeping_name("store", functools.partial(fn, *args))
        return await asyncio.get_running_loop().run_in_executor(self.drain.pool, call)

    async def apply_signed_trust(self, signed: SignedTrustList) -> None:
        """Put a verified, newer signed version in force (between two verify batches)."""
        await self.batcher.set_trust(signed.trust.table())
        self.trust = signed.trust
        if self.trust_feed is not None:
            self.trust_feed.adopted(signed)

    async def reload_trust(self) -> TrustList:
        """Re-read the trust list; a bad file raises and the engine keeps the list it had. With a root key: look
        in the store for a newer signed version now (what the poll does every few seconds)."""
        if self.trust_feed is not None:
            found = await self.in_store_thread(self.trust_feed.newer_in_store)
            if found is not None:
                await self.apply_signed_trust(found)
            return self.trust
        trust = TrustList.load(self.config.trust_list_path)
        await self.batcher.set_trust(trust.table())
        self.trust = trust
        log.info("trust list reloaded: %d keys, %d revoked codes", len(trust.keys), len(trust.revoked_codes))
        return trust


@dataclass
class Listeners:
    """Where this engine's listeners ended up (a port of 0 is chosen at bind time): tests and the CLI read it."""

    ops_url: str = ""


CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
RUNTIME = web.AppKey("runtime", Runtime)
STORE = web.AppKey("store", Store)
WAL = web.AppKey("wal", WriteAheadLog)
TLS_CONTEXT = web.AppKey("tls_context", ServerTLS)
LISTENERS = web.AppKey("listeners", Listeners)
AUTH_FAILURES = web.AppKey("auth_failures", AuthFailures)
TRACE_GATE = web.AppKey("trace_gate", TraceGate)
TRACE_LANE = web.AppKey("trace_lane", TraceLane)
