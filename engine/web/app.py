"""The aiohttp application: one factory, typed state, lifecycle in cleanup contexts, errors mapped once.

``create_app(config)`` builds everything from a :class:`Config`; nothing lives in module globals, so a test
can run several engines in one process. Resources are opened in ``cleanup_ctx`` generators in dependency
order (store → WAL → verifier and devices → drain → batcher → the stays pairing loop) and aiohttp closes
them in reverse, after in-flight handlers have finished: on SIGTERM the pairing loop stops, the batcher
answers every scan it accepted (they reach the WAL), then the drain flushes the WAL into the store while it
can, then files and the store close.

Anything else that needs the embedded store while the engine runs (tracing, stats, admin) goes through this
process, because chdb locks its data directory to one process; those calls run on the drain's store thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from engine.codes.trust import TrustList
from engine.codes.trust_root import read_root_key
from engine.config import Config
from engine.deployment.registries import RegistryRefresher, register_node_token
from engine.deployment.secret import check_fingerprint, read_secret
from engine.deployment.trust import TrustFeed
from engine.devices.auth import Device, DeviceRegistry
from engine.durable import read_or_create_private_file
from engine.errors import EngineError, OverloadedError, RateLimitedError
from engine.ingest import record
from engine.ingest.admission import Admission, Budgets
from engine.ingest.batcher import Batcher
from engine.ingest.codeset import SharedCodeSet
from engine.ingest.codeset import stop as stop_polling
from engine.ingest.drain import Drain
from engine.ingest.recent import scan_key
from engine.ingest.wal import WriteAheadLog
from engine.ops.authlog import AuthFailures
from engine.ops.heap import HeapPolicy
from engine.ops.metrics import Metrics
from engine.permissions import private_dir, require_private
from engine.store.store import Store
from engine.tracing.audit import AuditLog
from engine.tracing.credentials import TRACERS_FILE, CredentialRegistry, StoredCredentials, TracerRegistry
from engine.tracing.gate import TraceGate
from engine.tracing.lane import LaneLimits, TraceLane
from engine.tracing.quotas import TracerQuotas
from engine.tracing.stays import StaysJob, keep_paired
from engine.verify import make_verifier
from engine.web import admin, audit, dashboard, enroll, scanner, scans, trace
from engine.web.keys import (
    AUTH_FAILURES,
    CLOSE_UNREAD,
    CONFIG,
    LISTENERS,
    METRICS,
    RUNTIME,
    STORE,
    TLS_CONTEXT,
    TRACE_GATE,
    TRACE_LANE,
    WAL,
    Listeners,
    Runtime,
)
from engine.web.listeners import check_listeners, ops_listener_ctx
from engine.web.tls import ServerTLS

log = logging.getLogger(__name__)
T = TypeVar("T")

#: A scan's share of a WAL batch record, about (engine.ingest.record): turns "rows per insert" into a byte bound.
WAL_BYTES_PER_ROW = 130

#: every audience's routes, each module with a ``setup(app)``: devices, operators, tracers (and their audit), the
#: dashboard, and the browser scanner with its enrolment
ROUTE_MODULES = (scans, admin, trace, audit, dashboard, enroll, scanner)


def read_or_create_secret(path: Path, nbytes: int = 32) -> bytes:
    """The person-key HMAC secret: created once (0600), never stored in ClickHouse, never logged."""
    data = read_or_create_private_file(path, lambda: secrets.token_bytes(nbytes))
    if len(data) < 16:
        raise EngineError(f"secret file {path} is too short")
    return data


def deployment_secret(config: Config) -> bytes:
    """The secret every node of the deployment shares: person keys and the verified-code set's tags and row MACs
    are derived from it. The one place it is read, so that where it comes from can change without the verifier,
    the set or the store knowing: ``--secret-file``, else the data directory's (engine.deployment.secret)."""
    return read_secret(config)


def load_trust(cfg: Config, store: Store, metrics: Metrics, node: str) -> tuple[TrustList, TrustFeed | None]:
    """The trust list to start with: with ``--trust-root-key`` the newest signed version (store, file, this node's
    copy; engine.deployment.trust), else the plain file as a single node always read it."""
    if not cfg.signed_trust:
        return load_or_create_trust(cfg.trust_list_path), None
    path = cfg.trust_list_path
    feed = TrustFeed(store, read_root_key(cfg.trust_root_key), metrics, cfg.data_dir, path, node)
    return feed.load_at_start().trust, feed


def budgets(config: Config) -> Budgets:
    """The per-device admission limits of a configuration (engine.ingest.admission)."""
    return Budgets(
        scan_rate=config.device_scan_rate,
        scan_burst=config.device_scan_burst,
        cold_rate=config.device_cold_rate,
        cold_burst=config.device_cold_burst,
        queue_scans=config.queue_scans,
        queue_share=config.device_queue_share,
        max_request_scans=config.max_scans_per_request,
        quarantine_share=config.quarantine_share,
        quarantine_min_scans=config.quarantine_min_scans,
        quarantine_s=config.quarantine_s,
        quarantine_factor=config.quarantine_factor,
    )


def load_or_create_trust(path: Path) -> TrustList:
    if path.exists():
        return TrustList.load(path)
    log.warning("no trust list at %s: starting with an empty one (every signed code is unknown_key)", path)
    trust = TrustList()
    trust.save(path)
    return trust


# -- cleanup contexts (opened in this order, closed in reverse) --------------------------------------------
async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    store = await asyncio.to_thread(lambda: Store.connect(cfg.store_dsn, **cfg.store_options()))
    applied = await asyncio.to_thread(store.migrate)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    app[STORE] = store
    yield
    await asyncio.to_thread(store.close)


async def _wal_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    wal = WriteAheadLog(cfg.wal_path, budget_bytes=cfg.wal_budget_mb << 20, fsync=cfg.wal_fsync)
    await asyncio.to_thread(wal.open)
    if wal.backlog_records:
        log.info("WAL holds %d acknowledged records not yet stored: replaying", wal.backlog_records)
    app[WAL] = wal
    yield
    await asyncio.to_thread(wal.close)


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg, metrics = app[CONFIG], app[METRICS]
    store, wal = app[STORE], app[WAL]
    node = f"{socket.gethostname()}:{cfg.port}/{cfg.worker_index}"
    secret = deployment_secret(cfg)
    source = str(cfg.secret_path) if cfg.secret_configured else f"{cfg.secret_path}, this data directory's own"
    await asyncio.to_thread(check_fingerprint, store, secret, node, source)
    trust, trust_feed = await asyncio.to_thread(load_trust, cfg, store, metrics, node)
    admin_token = _admin_token(cfg.data_dir / "admin.token")
    table = trust.table()  # one snapshot shared by the verifier and the batcher's record encoder
    verifier = make_verifier(table, secret, cache_size=cfg.cache_size, threads=cfg.threads, skew=cfg.skew_s)
    records = await asyncio.to_thread(store.devices)
    devices = DeviceRegistry(
        (Device(r.device_id, r.public_key, r.revoked, r.label, r.venues) for r in records),
        skew_s=cfg.skew_s,
        rate=cfg.device_rate,
        burst=cfg.device_burst,
        max_nonces=cfg.nonce_pool,
        nonce_quota=cfg.device_nonce_quota,
    )
    unbound = [r.device_id for r in records if not r.revoked and not r.venues]
    if unbound:  # every device registered before venue binding existed, until the operator binds it
        log.warning(
            "%d active device(s) are bound to no venue and %s (e.g. %s); bind them with device-bind",
            len(unbound),
            "are refused (--require-venue-binding)" if cfg.require_venue_binding else "may post for any venue",
            ", ".join(unbound[:3]),
        )
    codeset = SharedCodeSet(store, metrics, secret, node, cfg.cache_size) if cfg.set_poll_s > 0 else None
    metrics.codeset_max.set(cfg.cache_size)
    metrics.set_codeset_source(lambda: (verifier.set_size, cfg.cache_size, verifier.set_evictions))
    drain = Drain(
        wal,
        store,
        metrics,
        max_bytes=cfg.insert_batch_rows * WAL_BYTES_PER_ROW,
        interval_s=cfg.insert_interval_ms / 1000,
        after_insert=codeset.publish if codeset is not None else lambda: None,
    )
    batcher = Batcher(
        verifier=verifier,
        trust=table,
        wal=wal,
        metrics=metrics,
        batch_size=cfg.batch_size,
        batch_age_s=cfg.batch_age_ms / 1000,
        queue_scans=cfg.queue_scans,
        wal_budget_bytes=cfg.wal_budget_mb << 20,
        recent_ids=cfg.recent_ids,
        on_durable=drain.notify,
        codeset=codeset,
        wal_append_timeout_s=cfg.wal_append_timeout_s,
        admission=Admission(budgets(cfg), metrics),
    )
    for orphan in cfg.orphan_wal_paths():
        await asyncio.to_thread(drain_orphan_wal, orphan, store, metrics)
    batcher.remember(*await asyncio.to_thread(recent_scan_verdicts, store, cfg.recent_ids))
    batcher.remember(*await asyncio.to_thread(backlog_scan_verdicts, wal, cfg.recent_ids))

    if codeset is not None:
        added, refused, seconds = await codeset.warm_load(verifier, table)
        log.info(
            "verified-code set: %d entries loaded from the store in %.2fs (%d rows refused)", added, seconds, refused
        )

    def refresh() -> None:
        metrics.codeset_size.set(verifier.set_size)
        metrics.wal_backlog_bytes.set(wal.backlog_bytes)
        metrics.wal_backlog_records.set(wal.backlog_records)
        metrics.active_devices.set(devices.active_devices())
        metrics.device_nonces.set(devices.remembered_nonces)

    metrics.on_scrape(refresh)
    runtime = Runtime(cfg, metrics, store, wal, trust, devices, drain, batcher, admin_token, time.time())
    runtime.trust_feed = trust_feed
    app[RUNTIME] = runtime
    drain.start()
    batcher.start()
    poll = None
    polls: list[asyncio.Task[None]] = []
    if codeset is not None and not store.is_embedded:  # an embedded store has one writer: this process
        poll = asyncio.create_task(
            codeset.keep_polling(runtime.in_store_thread, batcher.load_shared, cfg.set_poll_s), name="codeset-poll"
        )
    if trust_feed is not None and not store.is_embedded:
        polls.append(
            asyncio.create_task(
                trust_feed.keep_polling(runtime.in_store_thread, runtime.apply_signed_trust, cfg.trust_poll_s),
                name="trust-poll",
            )
        )
    if not store.is_embedded:  # a deployment's admin tokens, this node's own among them
        runtime.admin_tokens = StoredCredentials(store, "admin", live=False)
        await runtime.in_store_thread(register_node_token, runtime.admin_tokens, store, node, admin_token)
        runtime.refresher = RegistryRefresher(store, devices, metrics, [runtime.admin_tokens])
        if cfg.registry_poll_s > 0:
            polls.append(
                asyncio.create_task(
                    runtime.refresher.keep_refreshing(runtime.in_store_thread, cfg.registry_poll_s),
                    name="registry-poll",
                )
            )
    log.info(
        "engine ready on %s:%d (verifier %s, %d threads, store %s)",
        cfg.host,
        cfg.port,
        type(verifier).__name__,
        cfg.threads,
        "embedded" if store.is_embedded else "server",
    )
    yield
    await stop_polling(poll)
    for task in polls:
        await stop_polling(task)
    await batcher.close(cfg.shutdown_timeout_s)
    await drain.close(cfg.shutdown_timeout_s)


async def _stays_ctx(app: web.Application) -> AsyncIterator[None]:
    """Pairs new scans into tracing stays in the background (engine.tracing.stays); closed before the drain."""
    cfg, rt = app[CONFIG], app[RUNTIME]
    task = None
    if cfg.stays_interval_s > 0 and not rt.store.cluster:  # block horizons are per shard: not on a cluster yet
        task = asyncio.create_task(keep_paired(StaysJob(rt.store), rt.in_store_thread, cfg.stays_interval_s))
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def recent_scan_verdicts(store: Store, limit: int) -> tuple[list[bytes], list[int]]:
    """(device, scan id) keys stored in the last hour, so device retries across a restart are still duplicates."""
    if limit <= 0:
        return [], []
    rows = store.query(
        "SELECT scan_id, device_id, toUInt8(verdict), toUInt8(reason) FROM scans "
        "WHERE received_at > now64(3) - INTERVAL 1 HOUR ORDER BY received_at DESC LIMIT {n:UInt64}",
        {"n": limit},
    )
    keys = [scan_key(r[1], r[0].bytes if hasattr(r[0], "bytes") else bytes(r[0])) for r in rows]
    return keys, [(int(r[2]) << 8) | int(r[3]) for r in rows]


async def _lane_ctx(app: web.Application) -> AsyncIterator[None]:
    """The tracing lane (engine.tracing.lane): its own store clients and threads, so no trace holds ingest."""
    cfg = app[CONFIG]
    limits = LaneLimits(
        concurrency=cfg.trace_concurrency,
        per_tracer=cfg.trace_per_tracer,
        timeout_s=cfg.trace_timeout_s,
        max_rows_read=cfg.trace_max_rows_read,
        max_rows=cfg.trace_max_rows,
        max_bytes=cfg.trace_max_mb << 20,
    )
    options = {**cfg.store_options(), "insert_timeout": cfg.trace_timeout_s + 10}
    lane = await asyncio.to_thread(TraceLane(lambda: Store.connect(cfg.store_dsn, **options), limits).open)
    app[TRACE_LANE] = lane
    store_up = app[METRICS].store_up
    pinging = asyncio.create_task(  # /readyz answers from its last result; engine_store_up is its answer
        lane.keep_pinging(on_result=lambda ok: store_up.set(1 if ok else 0)), name="store-ping"
    )
    yield
    pinging.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pinging
    await asyncio.to_thread(lane.close)


async def _audit_ctx(app: web.Application) -> AsyncIterator[None]:
    """The tracing audit chain of this data directory, held (locked) for the engine's life; the trace gate."""
    cfg, rt = app[CONFIG], app[RUNTIME]
    log_ = await rt.in_store_thread(lambda: AuditLog(rt.store, cfg.data_dir, cfg.audit_chain_name).open())
    app[METRICS].audit_chain_ok.set(0 if log_.broken else 1)
    tracers: CredentialRegistry = TracerRegistry.for_data_dir(cfg.data_dir)
    if rt.refresher is not None:  # a server store: the deployment's tracers, this directory's file beside them
        stored = StoredCredentials(rt.store, "tracer", live=False, fallback=tracers)
        await rt.in_store_thread(lambda: stored.apply(stored.read(rt.store)))
        rt.refresher.add(stored)
        tracers = stored
    app[TRACE_GATE] = TraceGate(
        tracers,
        log_,
        quotas=TracerQuotas(cfg.tracer_person_per_hour, cfg.tracer_wide_per_hour),
        failures=app[AUTH_FAILURES],
        metrics=app[METRICS],
    )
    yield
    log_.close()


def drain_orphan_wal(path: Path, store: Store, metrics: Metrics) -> None:
    """Move what a former worker's WAL still holds into the store, exactly once (its own drain intent and dedup
    token), before serving: after ``--workers`` is lowered, nothing those workers acknowledged may be stranded."""
    wal = WriteAheadLog(path)
    wal.open()
    try:
        if not wal.backlog_records:
            return
        log.info("draining %d records left in %s by a former worker", wal.backlog_records, path)
        drain = Drain(wal, store, metrics)
        try:
            while drain.step():
                pass
        finally:
            drain.pool.shutdown(wait=False)
    finally:
        wal.close()


def backlog_scan_verdicts(wal: WriteAheadLog, limit: int) -> tuple[list[bytes], list[int]]:
    """(device, scan id) keys acknowledged before a crash but not yet in the store (the WAL past its checkpoint).

    The store's last hour cannot name them yet: the drain replays them only after start-up. Without this, a
    scanner that never saw its 202 (the node was killed after the fsync) resends the batch and the restarted
    node, not knowing the ids, stores them a second time: a raw duplicate that only FINAL or a merge collapses
    (tests/test_cluster.py kills a node under load with scanners that resend).
    """
    if limit <= 0 or not wal.backlog_records:
        return [], []
    ids: list[bytes] = []
    codes: list[int] = []
    after = wal.checkpoint_lsn
    while len(ids) < limit:
        chunk = wal.read(after, max_records=1024)
        if not chunk:
            break
        rows = record.decode_many([r.payload for r in chunk])
        raw = rows.scan_id
        ids += [scan_key(rows.devices[d], raw[16 * i : 16 * i + 16]) for i, d in enumerate(rows.device_code.tolist())]
        codes += ((rows.verdict.astype(int) << 8) | rows.reason.astype(int)).tolist()
        after = chunk[-1].lsn
    return ids[-limit:], codes[-limit:]


async def _on_shutdown(app: web.Application) -> None:
    """Runs when the listener has closed, before in-flight handlers are awaited: refuse new work cleanly."""
    if RUNTIME in app:
        app[RUNTIME].shutting_down = True


def _admin_token(path: Path) -> str:
    """Bearer token for operator calls (admin CLI on this host); created 0600 at first start."""
    return read_or_create_private_file(path, lambda: secrets.token_urlsafe(32).encode() + b"\n").decode().strip()


# -- error mapping ------------------------------------------------------------------------------------------
@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The one place that turns errors into HTTP answers: specific message, right status, never a traceback."""
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    metrics = request.app[METRICS]
    try:
        response = await handler(request)
    except EngineError as exc:
        headers = {}
        if isinstance(exc, OverloadedError | RateLimitedError):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        body = {"error": exc.code, "message": str(exc), **getattr(exc, "details", {})}  # e.g. a trace cap's hints
        response = web.json_response(body, status=exc.http_status, headers=headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = web.json_response(
            {"error": exc.reason.lower().replace(" ", "_"), "message": exc.text or exc.reason},
            status=exc.status,
            headers={k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")},
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        error_id = secrets.token_hex(6)
        log.exception("unhandled error %s on %s %s", error_id, request.method, request.path)
        response = web.json_response(
            {"error": "internal", "message": f"internal error {error_id}; it has been logged"},
            status=500,
        )
    metrics.requests.labels(route=route, status=str(response.status)).inc()
    if request.get(CLOSE_UNREAD):
        # Sent now and the connection closed, rather than aiohttp's lingering read of the whole unread body (up
        # to max_body_bytes, for seconds) from a caller that did not even authenticate.
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()
    return response


def check_private_files(config: Config) -> None:
    """Least privilege on disk (docs/security.md): the data directory 0700, created so if missing; refuse to start
    when it, the WAL or store directory, or a secret is open to other users, with the chmod that fixes it."""
    if not config.data_dir.exists():
        private_dir(config.data_dir)
    d = config.data_dir
    paths = [
        (d, "data directory"),
        (config.wal_path, "WAL directory"),
        (config.secret_path, "person-key secret"),
        (d / "admin.token", "admin token"),
        (d / TRACERS_FILE, "tracer credentials file"),
        *((p, "audit anchor") for p in sorted(d.glob("audit*.head"))),
    ]
    if config.store_dsn.startswith("chdb://"):
        paths.append((d / "store", "embedded store directory"))
    require_private(paths)


async def _heap_ctx(app: web.Application) -> AsyncIterator[None]:
    """The collector's policy while serving (engine.ops.heap: start-up frozen, every pause measured)."""
    policy = HeapPolicy(app[CONFIG].gc_young, app[METRICS].gc_pause_seconds, freeze=app[CONFIG].gc_freeze)
    policy.start()
    yield
    policy.stop()


def create_app(config: Config) -> web.Application:
    """The app factory: the only way an engine is built, by ``serve`` and by the tests alike."""
    check_listeners(config)
    check_private_files(config)
    app = web.Application(middlewares=[error_middleware], client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[METRICS] = Metrics()
    app[LISTENERS] = Listeners()
    app[AUTH_FAILURES] = AuthFailures(app[METRICS])
    tls = ServerTLS.from_config(config)
    if tls is not None:
        app[TLS_CONTEXT] = tls
    app.cleanup_ctx.extend([_store_ctx, _wal_ctx, _engine_ctx, _lane_ctx, _audit_ctx, _stays_ctx])
    app.on_shutdown.append(_on_shutdown)
    for routes in ROUTE_MODULES:
        routes.setup(app)
    app.cleanup_ctx.append(ops_listener_ctx([error_middleware]))  # last: it serves what the others built
    app.cleanup_ctx.append(_heap_ctx)  # after everything start-up keeps alive, so the freeze covers it
    return app
