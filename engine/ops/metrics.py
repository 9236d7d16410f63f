"""Prometheus metrics of one engine instance, on a registry of its own (no process globals).

Every figure the operators' dashboard and ``/metrics`` show lives here, so there is one definition of what
"scans stored" or "queue depth" means. Gauges that mirror live state (queue, WAL backlog, cache) are
refreshed from their owners when scraped, not pushed on every change, to keep the hot path free of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.codes.verdicts import VERDICTS

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_BATCH_BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.scans_received = Counter("engine_scans_received", "Scan items received in requests", registry=r)
        self.scans_rejected = Counter(
            "engine_scans_rejected", "Scan items rejected before storage (bad item)", ["reason"], registry=r
        )
        self.scans_duplicate = Counter(
            "engine_scans_duplicate", "Scan items answered from the recent-id map (device retries)", registry=r
        )
        self.scans_acked = Counter(
            "engine_scans_acked",
            "Scans acknowledged to devices (durable in the WAL), by verdict",
            ["verdict"],
            registry=r,
        )
        self.scans_stored = Counter("engine_scans_stored", "Scans inserted into the store", registry=r)
        self.requests = Counter("engine_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.batch_size = Histogram("engine_batch_size", "Scans per verify batch", buckets=_BATCH_BUCKETS, registry=r)
        self.verify_seconds = Histogram(
            "engine_verify_seconds", "Wall time to verify one batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.wal_append_seconds = Histogram(
            "engine_wal_append_seconds",
            "Wall time of one WAL group commit (write + fsync)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.insert_seconds = Histogram(
            "engine_insert_seconds", "Wall time of one store insert", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.insert_rows = Histogram("engine_insert_rows", "Rows per store insert", buckets=_BATCH_BUCKETS, registry=r)
        self.ack_seconds = Histogram(
            "engine_ack_seconds", "Time from request accepted to scans durable", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.store_errors = Counter("engine_store_errors", "Failed store inserts (retried)", registry=r)
        self.overload = Counter("engine_overload", "Requests refused with 503, by cause", ["cause"], registry=r)
        self.queue_depth = Gauge("engine_queue_scans", "Scans accepted but not yet durable", registry=r)
        self.wal_backlog_bytes = Gauge("engine_wal_backlog_bytes", "WAL bytes not yet in the store", registry=r)
        self.wal_backlog_records = Gauge("engine_wal_backlog_records", "WAL records not yet in the store", registry=r)
        self._cache = _CacheCounters()
        r.register(self._cache)
        self.cache_hit_ratio = Gauge("engine_cache_hit_ratio", "Cache hits / lookups since start", registry=r)
        self.codeset_size = Gauge(
            "engine_codeset_entries",
            "Entries in the verified-code set (codes whose signature is not re-checked)",
            registry=r,
        )
        self.codeset_max = Gauge("engine_codeset_max_entries", "The verified-code set's bound (cache_size)", registry=r)
        self.codeset_warm_load_seconds = Gauge(
            "engine_codeset_warm_load_seconds", "Time to load the deployment's verified-code set at start", registry=r
        )
        self.codeset_published = Counter(
            "engine_codeset_published", "Verified-code set entries this node published to the store", registry=r
        )
        self.codeset_publish_lag = Histogram(
            "engine_codeset_publish_lag_seconds",
            "Age of the oldest entry of a publish when it reached the store (verify to insert)",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 1800),
            registry=r,
        )
        self.codeset_publish_dropped = Counter(
            "engine_codeset_publish_dropped",
            "Unpublished set entries dropped while the store refused them (other nodes verify those codes again)",
            registry=r,
        )
        self.codeset_loaded = Counter(
            "engine_codeset_loaded", "Set entries loaded from the store (warm load and polls)", registry=r
        )
        self.codeset_refused = Counter(
            "engine_codeset_refused",
            "verified_codes rows refused because their MAC is not the deployment secret's (counted per read)",
            registry=r,
        )
        self.store_up = Gauge("engine_store_up", "1 if the store answers (a ping, not the last insert)", registry=r)
        self.wal_quarantined = Counter(
            "engine_wal_quarantined_records",
            "WAL records that can never be stored (undecodable, or refused by the store for their content), moved to "
            "the dead-letter directory so the drain goes on",
            registry=r,
        )
        self.active_devices = Gauge("engine_active_devices", "Devices that sent a request in the last 60 s", registry=r)
        self.auth_failures = Counter(
            "engine_auth_failures",
            "Failed authentications of tracer and operator credentials, by credential kind and reason",
            ["credential", "reason"],
            registry=r,
        )
        self.traces = Counter(
            "engine_traces", "Traces answered (each with its audit record), by kind", ["kind"], registry=r
        )
        self.traces_refused = Counter(
            "engine_traces_refused", "Traces refused after authentication, by cause", ["cause"], registry=r
        )
        self.audit_chain_ok = Gauge(
            "engine_audit_chain_ok",
            "1 if the audit chain matched its anchor at start (else tracing is refused)",
            registry=r,
        )
        # one deployment of several nodes (engine/deployment): which signed trust list this node runs, how old it
        # is, what it refused, and how fresh its registries are
        self.trust_list_version = Gauge(
            "engine_trust_list_version",
            "Version of the signed trust list in use (0: a plain, unsigned file)",
            registry=r,
        )
        self.trust_list_age = Gauge(
            "engine_trust_list_age_seconds", "Seconds since the trust list in use was published", registry=r
        )
        self.trust_list_store_version = Gauge(
            "engine_trust_list_store_version", "Newest trust list version this node saw in the store", registry=r
        )
        self.trust_list_refused = Counter(
            "engine_trust_list_refused",
            "Signed trust lists refused, by reason (bad_signature, rollback, version_reused, unsigned, malformed)",
            ["reason"],
            registry=r,
        )
        self.registry_refresh_age = Gauge(
            "engine_registry_refresh_age_seconds",
            "Seconds since devices, tracers and admin tokens were last read from the store",
            registry=r,
        )
        for v in VERDICTS:
            self.scans_acked.labels(verdict=v)
        self._refreshers: list[Callable[[], None]] = []

    def set_cache_source(self, source: Callable[[], tuple[int, int]]) -> None:
        """Where ``engine_cache_hits_total`` / ``engine_cache_lookups_total`` are read from at scrape time."""
        self._cache.source = source

    def set_codeset_source(self, source: Callable[[], tuple[int, int, int]]) -> None:
        """Where the set's size, bound and ``engine_codeset_evictions_total`` are read from at scrape time."""
        self._cache.codeset = source

    def cache_counts(self) -> tuple[int, int]:
        """(hits, lookups) of the verified-code cache since the engine started."""
        return self._cache.source()

    def on_scrape(self, refresh: Callable[[], None]) -> None:
        """Register a callback that copies live state into gauges just before they are read."""
        self._refreshers.append(refresh)

    def refresh(self) -> None:
        for fn in self._refreshers:
            fn()

    def render(self) -> bytes:
        self.refresh()
        return generate_latest(self.registry)


class _CacheCounters(Collector):
    """The verifier counts cache hits and lookups itself (in C, per batch); they are exposed as counters read at
    scrape time, not incremented a second time on the hot path. Counters, so ``rate()`` handles restarts."""

    def __init__(self) -> None:
        self.source: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self.codeset: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)

    def collect(self) -> Iterator[Metric]:
        hits, lookups = self.source()
        yield CounterMetricFamily("engine_cache_hits", "Verified-code cache hits", value=hits)
        yield CounterMetricFamily("engine_cache_lookups", "Verified-code cache lookups", value=lookups)
        yield CounterMetricFamily(
            "engine_codeset_evictions",
            "Entries the full verified-code set evicted or left out (their codes are verified again)",
            value=self.codeset()[2],
        )
