"""Engine configuration: read once at start-up from CLI flags and ``ENGINE_*`` variables, validated, frozen.

Everything the running engine needs is in one :class:`Config` passed to the app factory, so tests build one
directly and nothing reads the environment later. Flags win over environment variables, which win over the
defaults. An invalid value stops the engine at start-up with a :class:`ConfigError` naming the setting,
rather than surfacing as a strange failure on the first busy morning.
"""

from __future__ import annotations

import argparse
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

LOG_FORMATS = ("text", "json")
DEFAULT_OFFLINE_WINDOW_DAYS = 7
#: the settings a command needs to find an engine and its store (every command but ``serve``)
# cluster, replicated, shard_dsns: a command opening a cluster's store itself must migrate it as the engine does;
# tls_cert, dsn_password_file: how it reaches the engine over https and the store with its password
CLIENT_SETTINGS = (
    "data_dir", "host", "port", "dsn", "database", "retention_days", "cluster", "replicated", "shard_dsns",
    "tls_cert", "dsn_password_file", "secret_file", "trust_root_key",
)  # fmt: skip


def _env_name(name: str) -> str:
    return "ENGINE_" + name.upper()


@dataclass(frozen=True)
class Config:
    host: str = field(default="127.0.0.1", metadata={"help": "listen address"})
    port: int = field(default=8080, metadata={"help": "listen port"})
    data_dir: Path = field(default=Path("./data"), metadata={"help": "data directory (store, WAL, secrets)"})
    dsn: str = field(default="", metadata={"help": "store DSN; default chdb://<data_dir>/store"})
    database: str = field(default="vnqr", metadata={"help": "ClickHouse database"})
    cluster: str = field(
        default="", metadata={"help": "ClickHouse cluster name: sharded tables behind Distributed (docs/cluster.md)"}
    )
    replicated: bool = field(
        default=False,
        metadata={"help": "with --cluster: ReplicatedMergeTree + ON CLUSTER DDL (needs Keeper); else sharded only"},
    )
    shard_dsns: str = field(
        default="",
        metadata={"help": "with --cluster (not replicated): comma-separated http(s) DSN of every shard"},
    )
    trust_list: Path = field(default=Path(""), metadata={"help": "trust list JSON; default <data_dir>/trust.json"})
    # -- one deployment of several nodes (docs/cluster.md, "Nodes that agree") -------------------------------
    secret_file: Path = field(
        default=Path(""),
        metadata={"help": "the deployment's person-key secret (mode 0600), the same file on every node; default "
                  "<data_dir>/person_key.secret, created at first start"},
    )  # fmt: skip
    trust_root_key: Path = field(
        default=Path(""),
        metadata={"help": "the deployment root key (public, base64url): only trust lists it signed are used, "
                  "loaded from the store and polled (trust publish)"},
    )  # fmt: skip
    trust_poll_s: float = field(
        default=2.0, metadata={"help": "with --trust-root-key: poll the store for a new trust list every N s"}
    )
    registry_poll_s: float = field(
        default=1.0,
        metadata={"help": "re-read devices, tracers and admin tokens from a server store every N s (0 = off)"},
    )
    batch_size: int = field(default=2048, metadata={"help": "max scans per verify/WAL batch"})
    batch_age_ms: float = field(default=5.0, metadata={"help": "max wait to fill a batch (ms)"})
    queue_scans: int = field(default=50_000, metadata={"help": "max scans queued before answering 503"})
    max_scans_per_request: int = field(default=1000, metadata={"help": "max scans in one POST"})
    max_body_bytes: int = field(default=2 << 20, metadata={"help": "max request body (bytes); larger is 413"})
    body_timeout_s: float = field(default=10.0, metadata={"help": "max time to receive a request body (s)"})
    keepalive_timeout_s: float = field(default=15.0, metadata={"help": "idle keep-alive / header timeout (s)"})
    wal_dir: Path = field(default=Path(""), metadata={"help": "WAL directory; default <data_dir>/wal"})
    wal_budget_mb: int = field(default=1024, metadata={"help": "WAL disk budget (MiB); over it answers 503"})
    wal_fsync: bool = field(default=True, metadata={"help": "fsync the WAL (off only for benchmarks)"})
    retention_days: int = field(default=28, metadata={"help": "days scans are kept (TTL)"})
    # how long a scanner may hold scans offline before uploading them; older scanned_at is refused. Not the whole
    # retention: a screenshot of someone's code and any device key would otherwise fabricate visits weeks back
    offline_window_days: int = field(
        default=0,
        metadata={"help": "oldest scanned_at accepted, days before now; 0 = 7 (or retention_days if shorter)"},
    )
    verify_threads: int = field(default=0, metadata={"help": "verifier threads; 0 = cores - 1 (at least 1)"})
    # off by default so that an upgrade keeps every registered (hence unbound) scanner working; a deployment
    # turns it on once device-list shows no active device unbound (docs/device-api.md, "Venue binding")
    require_venue_binding: bool = field(
        default=False, metadata={"help": "refuse (403) scans from devices not bound to any venue"}
    )
    cache_size: int = field(
        default=262_144,
        metadata={"help": "verified-code set entries (~40 bytes each): size it for the deployment's population"},
    )
    set_poll_s: float = field(
        default=2.0,
        metadata={
            "help": "share the verified-code set through the store, polling others' additions every N s (0 = off; "
            "an embedded store, written by this process only, is published to and warm-loaded but not polled)"
        },
    )
    skew_s: int = field(default=300, metadata={"help": "allowed clock skew (s) for codes and device requests"})
    # ClickHouse pays a fixed CPU cost per insert whatever its size: one insert every 3 s of up to 200k rows (the
    # design point's 50k scans/s) costs the store less per scan than one a second (README, "Measured")
    insert_batch_rows: int = field(default=200_000, metadata={"help": "about the most rows per store insert"})
    insert_interval_ms: float = field(default=3000.0, metadata={"help": "pace of store inserts under load (ms)"})
    # off by default: fully paired the stays path wins at 10M rows, but a live engine is between two runs of the
    # job nearly always, and then traces also read the groups past the horizon (README, "Measured": tracing)
    stays_interval_s: float = field(
        default=0.0, metadata={"help": "pair new scans into tracing stays every N s (0 = off; traces pair scans)"}
    )
    recent_ids: int = field(default=500_000, metadata={"help": "recent scan ids remembered for retries"})
    device_rate: float = field(default=50.0, metadata={"help": "requests/s allowed per device"})
    device_burst: float = field(default=200.0, metadata={"help": "request burst allowed per device"})
    # -- per-device budgets (issue 13; docs/device-api.md section 7, README "Capacity plan") ------------------
    # one device may take at most ~2 % of a node: 1,000 of the 50k scans/s design point, and 200 cold verifies/s
    # (~55 µs each: 1.1 % of a core); a door scans ~1 person/s, so an honest scanner meets neither, and the bursts
    # let an offline week's backlog (~20k scans) go up at once. 5,000 scans/s (~10 %) let one stolen key replaying
    # genuine codes raise an honest device's p99 5x on 2 cores (bench/isolation_bench.py, scenario replay)
    device_scan_rate: float = field(default=1000.0, metadata={"help": "scans/s allowed per device (429 beyond)"})
    device_scan_burst: float = field(
        default=20_000.0, metadata={"help": "scan burst per device (at least max_scans_per_request)"}
    )
    device_cold_rate: float = field(
        default=200.0, metadata={"help": "signature verifies/s of codes not in the verified-code set, per device"}
    )
    device_cold_burst: float = field(default=20_000.0, metadata={"help": "cold-verify burst per device"})
    device_queue_share: float = field(
        default=0.1, metadata={"help": "most of queue_scans one device may hold (at least one whole request)"}
    )
    device_nonce_quota: int = field(
        default=3000, metadata={"help": "nonces one device may hold in the replay memory (its requests per 601 s)"}
    )
    nonce_pool: int = field(
        default=3_000_000,
        metadata={"help": "replay memory size, all devices (~140 B each): request rate x (2 skew_s + 1)"},
    )
    quarantine_share: float = field(
        default=0.8, metadata={"help": "bad_signature/unknown_key share of a device's recent scans that quarantines"}
    )
    quarantine_min_scans: int = field(
        default=200, metadata={"help": "recent scans (about the last minute) before a device can be quarantined"}
    )
    quarantine_s: float = field(
        default=600.0, metadata={"help": "a quarantined device is released after this long without a bad majority"}
    )
    quarantine_factor: float = field(
        default=20.0, metadata={"help": "a quarantined device's scan and cold-verify budgets are divided by this"}
    )
    workers: int = field(
        default=1,
        metadata={"help": "processes sharing the port (SO_REUSEPORT), each with its own WAL; >1 needs a server store"},
    )
    worker_index: int = field(default=0, metadata={"help": "(set by the supervisor of --workers) this worker's index"})
    shutdown_timeout_s: float = field(default=30.0, metadata={"help": "graceful shutdown wait (s)"})
    log_level: str = field(default="INFO", metadata={"help": "logging level"})
    log_format: str = field(default="text", metadata={"help": "log lines: text, or json (one object per line)"})
    access_log: bool = field(default=False, metadata={"help": "log every HTTP request (method, path, status, time)"})
    # -- security (docs/security.md) -------------------------------------------------------------------------
    tls_cert: Path = field(default=Path(""), metadata={"help": "TLS certificate chain (PEM); re-read on SIGHUP"})
    tls_key: Path = field(default=Path(""), metadata={"help": "TLS private key (PEM, mode 0600); re-read on SIGHUP"})
    tls_client_ca: Path = field(
        default=Path(""), metadata={"help": "CA bundle for device client certificates (mTLS on /v1/scans)"}
    )
    plaintext_behind_proxy: bool = field(
        default=False, metadata={"help": "allow plain HTTP off loopback: a TLS terminator sits in front"}
    )
    ops_host: str = field(default="127.0.0.1", metadata={"help": "operations listener (/metrics, /dashboard)"})
    ops_port: int = field(default=8081, metadata={"help": "operations listener port"})
    dsn_password_file: Path = field(
        default=Path(""), metadata={"help": "file holding the ClickHouse password (mode 0600)"}
    )
    #: the password itself comes only from the environment: a flag would put it in /proc/<pid>/cmdline
    dsn_password: str = field(default="", repr=False, metadata={"help": "ClickHouse password", "env_only": True})
    tracer_person_per_hour: float = field(default=120.0, metadata={"help": "person traces per tracer per hour"})
    tracer_wide_per_hour: float = field(
        default=20.0, metadata={"help": "venue and second-degree traces per tracer per hour"}
    )
    gc_young: int = field(
        default=0,
        metadata={"help": "net allocations between young garbage collections; 0 keeps CPython's (engine.ops.heap)"},
    )
    gc_freeze: bool = field(
        default=True, metadata={"help": "freeze start-up's heap out of every garbage collection (engine.ops.heap)"}
    )
    # -- the tracing lane (engine.tracing.lane; docs/operations.md, "Tracing lane") -------------------------------
    trace_concurrency: int = field(default=2, metadata={"help": "traces run at once on the tracing lane"})
    trace_per_tracer: int = field(default=1, metadata={"help": "traces one tracer may run at once (else 429)"})
    trace_timeout_s: float = field(default=20.0, metadata={"help": "a trace's time cap, all its queries (s); 422"})
    trace_max_rows_read: int = field(
        default=50_000_000, metadata={"help": "rows one trace query may read in the store; more is 413"}
    )
    trace_max_rows: int = field(
        default=100_000, metadata={"help": "rows a trace may bring back from the store, and answer; more is 413"}
    )
    trace_max_mb: int = field(default=64, metadata={"help": "largest encoded trace answer (MiB); larger is 413"})
    # -- ingest fault handling (docs/reliability.md, "Poison records") ----------------------------------------
    wal_append_timeout_s: float = field(
        default=10.0, metadata={"help": "a WAL group commit not done in N s fails its requests with 503"}
    )

    # -- derived --------------------------------------------------------------------------------------------
    @property
    def store_dsn(self) -> str:
        """The DSN the store is opened with, the password filled in from ``ENGINE_DSN_PASSWORD`` or
        ``--dsn-password-file`` (read when asked, so a rotated file is picked up by the next connection)."""
        dsn = self.dsn or f"chdb://{(self.data_dir / 'store').resolve()}"
        password = self.dsn_password
        if not password and _is_set(self.dsn_password_file):
            from engine.permissions import read_secret_file

            password = read_secret_file(self.dsn_password_file, "DSN password file")
        if not password or not dsn.startswith(("http://", "https://")):
            return dsn
        scheme, rest = dsn.split("://", 1)
        netloc, sep, tail = rest.partition("/")
        userinfo, at, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            raise ConfigError("the DSN already holds a password: give it in one place only (a file or the env)")
        user = urllib.parse.quote(urllib.parse.unquote(userinfo) if at else "default", safe="")
        quoted = urllib.parse.quote(password, safe="")
        return f"{scheme}://{user}:{quoted}@{hostport}{sep}{tail}"

    @property
    def tls(self) -> bool:
        return _is_set(self.tls_cert)

    @property
    def ops_listen_port(self) -> int:
        """This process's operations port: worker i of ``--workers`` listens on ``ops_port + i`` (each worker has
        its own metrics, so Prometheus scrapes each as its own target)."""
        return self.ops_port + self.worker_index if self.ops_port else 0

    @property
    def audit_chain_name(self) -> str:
        """The file stem of this process's audit chain (anchor and lock): one writer per chain, so each worker of
        ``--workers`` writes its own (``audit``, ``audit-1``, …); the CLI's direct path writes ``audit``."""
        return "audit" if self.worker_index == 0 else f"audit-{self.worker_index}"

    def store_options(self) -> dict[str, Any]:
        """What ``Store.connect`` takes besides the DSN, so every caller opens the store the same way."""
        return {
            "database": self.database,
            "retention_days": self.retention_days,
            "cluster": self.cluster or None,
            "replicated": self.replicated,
            "shard_dsns": self.shard_dsn_list,
        }

    @property
    def shard_dsn_list(self) -> list[str]:
        """The ``shard_dsns`` setting split (empty entries dropped)."""
        return [d.strip() for d in self.shard_dsns.split(",") if d.strip()]

    @property
    def trust_list_path(self) -> Path:
        return self.trust_list if str(self.trust_list) not in ("", ".") else self.data_dir / "trust.json"

    @property
    def wal_path(self) -> Path:
        """This process's WAL: ``<data_dir>/wal`` (or ``--wal-dir``) for worker 0, ``…/wal-<i>`` for worker i."""
        return self.worker_wal_path(self.worker_index)

    def worker_wal_path(self, index: int) -> Path:
        base = self.wal_dir if str(self.wal_dir) not in ("", ".") else self.data_dir / "wal"
        return base if index == 0 else base.with_name(f"{base.name}-{index}")

    def orphan_wal_paths(self) -> list[Path]:
        """WALs of workers that no longer exist (``--workers`` was lowered) that this worker drains at start:
        ``wal-j`` for every j >= workers with j % workers == worker_index, so each is adopted by exactly one."""
        base = self.worker_wal_path(0)
        found = []
        for path in sorted(base.parent.glob(f"{base.name}-*")):
            suffix = path.name.rsplit("-", 1)[1]
            if not (path.is_dir() and suffix.isdigit()):
                continue
            if int(suffix) >= self.workers and int(suffix) % self.workers == self.worker_index:
                found.append(path)
        return found

    @property
    def secret_path(self) -> Path:
        """The person-key secret: ``--secret-file`` (the deployment's) or ``<data_dir>/person_key.secret``."""
        return self.secret_file if _is_set(self.secret_file) else self.data_dir / "person_key.secret"

    @property
    def secret_configured(self) -> bool:
        """A secret file was given (it must exist: a node never makes up a deployment's secret)."""
        return _is_set(self.secret_file)

    @property
    def signed_trust(self) -> bool:
        """Trust lists come signed by the deployment root key (from the store, polled), not from a plain file."""
        return _is_set(self.trust_root_key)

    @property
    def threads(self) -> int:
        """Verifier threads. One core stays for the event loop and the store thread: on 2 cores, 2 verify
        threads gave the same cold throughput as 1 (13.3k vs 13.9k scans/s) at 38% more CPU per scan, and 40%
        less throughput with repeats (bench/e2e_bench.py, ENGINE_VERIFY_THREADS=1 vs 2)."""
        return self.verify_threads or max(1, (os.cpu_count() or 1) - 1)

    @property
    def offline_days(self) -> int:
        """The offline window in days: how far back ``scanned_at`` may be (``offline_window_days``, 0 = 7 days,
        never past the retention). Seven days covers a scanner offline over a long holiday weekend and back."""
        return self.offline_window_days or min(DEFAULT_OFFLINE_WINDOW_DAYS, self.retention_days)

    def validate(self) -> Config:
        checks: list[tuple[bool, str]] = [
            (0 <= self.port <= 65535, "port must be 0..65535"),
            (1 <= self.batch_size <= 100_000, "batch_size must be 1..100000"),
            (0 < self.batch_age_ms <= 10_000, "batch_age_ms must be in (0, 10000]"),
            (self.queue_scans >= self.max_scans_per_request, "queue_scans must be >= max_scans_per_request"),
            (1 <= self.max_scans_per_request <= 100_000, "max_scans_per_request must be 1..100000"),
            (self.max_body_bytes >= 1024, "max_body_bytes must be >= 1024"),
            (0 < self.body_timeout_s <= 600, "body_timeout_s must be in (0, 600]"),
            (0 < self.keepalive_timeout_s <= 3600, "keepalive_timeout_s must be in (0, 3600]"),
            (self.wal_budget_mb >= 1, "wal_budget_mb must be >= 1"),
            (1 <= self.retention_days <= 3650, "retention_days must be 1..3650"),
            (
                0 <= self.offline_window_days <= self.retention_days,
                f"offline_window_days must be 0..retention_days ({self.retention_days}): a scan older than the "
                "retention would be deleted as soon as it is stored",
            ),
            (0 <= self.verify_threads <= 256, "verify_threads must be 0..256"),
            (self.cache_size >= 0, "cache_size must be >= 0"),
            (0 <= self.skew_s <= 86_400, "skew_s must be 0..86400"),
            (self.insert_batch_rows >= 1, "insert_batch_rows must be >= 1"),
            (0 <= self.insert_interval_ms <= 60_000, "insert_interval_ms must be 0..60000"),
            (self.recent_ids >= 0, "recent_ids must be >= 0"),
            (0 <= self.stays_interval_s <= 86_400, "stays_interval_s must be 0..86400"),
            (0 <= self.set_poll_s <= 3600, "set_poll_s must be 0..3600"),
            (0.05 <= self.trust_poll_s <= 3600, "trust_poll_s must be 0.05..3600"),
            (0 <= self.registry_poll_s <= 60, "registry_poll_s must be 0..60 (revocations must reach every node)"),
            (1 <= self.workers <= 64, "workers must be 1..64"),
            (0 <= self.worker_index < self.workers, "worker_index must be 0..workers-1"),
            (
                self.workers == 1 or not self.store_dsn.startswith("chdb:"),
                "workers > 1 needs a ClickHouse server (--dsn http://...): the embedded store belongs to one process",
            ),
            (self.workers == 1 or self.port != 0, "workers > 1 needs a fixed port (they share it with SO_REUSEPORT)"),
            (self.device_rate > 0 and self.device_burst >= 1, "device_rate must be > 0 and device_burst >= 1"),
            (
                self.device_scan_rate > 0 and self.device_scan_burst >= self.max_scans_per_request,
                "device_scan_rate must be > 0 and device_scan_burst >= max_scans_per_request (else a full request "
                "could never be accepted)",
            ),
            (self.device_cold_rate > 0 and self.device_cold_burst >= 1, "device_cold_rate > 0, device_cold_burst >= 1"),
            (0 < self.device_queue_share <= 1, "device_queue_share must be in (0, 1]"),
            (1 <= self.device_nonce_quota <= self.nonce_pool, "device_nonce_quota must be 1..nonce_pool"),
            (0 < self.quarantine_share <= 1, "quarantine_share must be in (0, 1]"),
            (self.quarantine_min_scans >= 1, "quarantine_min_scans must be >= 1"),
            (0 < self.quarantine_s <= 86_400, "quarantine_s must be in (0, 86400]"),
            (self.quarantine_factor >= 1, "quarantine_factor must be >= 1"),
            (
                self.store_dsn.split("://", 1)[0] in ("chdb", "http", "https"),
                "dsn must be chdb://, http:// or https://",
            ),
            (self.database.replace("_", "").isalnum(), "database must be alphanumeric/underscore"),
            (not self.cluster or self.cluster.replace("_", "").isalnum(), "cluster must be alphanumeric/underscore"),
            (_is_set(self.tls_cert) == _is_set(self.tls_key), "tls_cert and tls_key go together"),
            (not _is_set(self.tls_client_ca) or _is_set(self.tls_cert), "tls_client_ca needs tls_cert and tls_key"),
            (0 <= self.ops_port <= 65535, "ops_port must be 0..65535"),
            (self.ops_port == 0 or self.ops_port != self.port, "ops_port must differ from port"),
            (self.tracer_person_per_hour > 0 and self.tracer_wide_per_hour > 0, "tracer rates must be > 0"),
            (1 <= self.trace_concurrency <= 64, "trace_concurrency must be 1..64"),
            (1 <= self.trace_per_tracer <= self.trace_concurrency, "trace_per_tracer must be 1..trace_concurrency"),
            (self.gc_young >= 0, "gc_young must be >= 0 (0 keeps CPython's thresholds)"),
            (0 < self.trace_timeout_s <= 3600, "trace_timeout_s must be in (0, 3600]"),
            (self.trace_max_rows_read >= 1000, "trace_max_rows_read must be >= 1000"),
            (self.trace_max_rows >= 100, "trace_max_rows must be >= 100"),
            (1 <= self.trace_max_mb <= 4096, "trace_max_mb must be 1..4096"),
            (0 < self.wal_append_timeout_s <= 600, "wal_append_timeout_s must be in (0, 600]"),
            (not self.replicated or bool(self.cluster), "replicated needs cluster"),
            (
                not self.shard_dsns or (bool(self.cluster) and not self.replicated),
                "shard_dsns is for a sharded cluster",
            ),
            (
                all(d.startswith(("http://", "https://")) for d in self.shard_dsn_list),
                "shard_dsns must be http:// or https:// DSNs",
            ),
            (self.log_format in LOG_FORMATS, f"log_format must be one of {', '.join(LOG_FORMATS)}"),
            (
                self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                "log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"invalid configuration: {message}")
        return self

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, only: Iterable[str] | None = None) -> None:
        """One flag per field (``--batch-size``), or per field named in ``only`` (a command that never serves needs
        only where the engine and its store are). Defaults stay None so the environment can fill them in; the
        help shows the real default and the environment twin."""
        wanted = None if only is None else set(only)
        unknown = (wanted or set()) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"no such settings: {sorted(unknown)}")
        parser.allow_abbrev = False  # --dsn-password SECRET must not be taken for --dsn-password-file (then echoed)
        for f in fields(cls):
            if f.metadata.get("env_only") or (wanted is not None and f.name not in wanted):
                continue
            flag = "--" + f.name.replace("_", "-")
            # an empty default is derived from another setting, and its help says from which
            shown = "" if f.default in ("", Path("")) else f" (default: {f.default})"
            help_text = f"{f.metadata.get('help', '')}{shown} [env {_env_name(f.name)}]".replace("%", "%%")
            if f.type in ("bool", bool):
                parser.add_argument(
                    flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=help_text
                )
            else:
                parser.add_argument(flag, dest=f.name, default=None, help=help_text)

    @classmethod
    def from_sources(cls, args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Config:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = getattr(args, f.name, None) if args is not None and not f.metadata.get("env_only") else None
            if raw is None:
                raw = environ.get(_env_name(f.name))
            if raw is None:
                continue
            values[f.name] = _coerce(f.name, f.type, raw)
        return cls(**values).validate()

    def with_(self, **changes: Any) -> Config:
        return replace(self, **changes).validate()


def _is_set(path: Path) -> bool:
    return str(path) not in ("", ".")


#: argv patterns that carry a secret: a DSN with a password in it, and the old ``--token`` flag
_DSN_WITH_PASSWORD = re.compile(r"^[a-z]+://[^/@:]*:[^/@]+@")
_SECRET_FLAGS = ("--token", "--dsn-password", "--password")


def argv_secret_warnings(argv: Sequence[str]) -> list[str]:
    """Warnings for secrets given on the command line, where every local user reads them in
    ``/proc/<pid>/cmdline`` and shell history keeps them; each names where the secret should come from."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name == "--dsn":
            value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            if _DSN_WITH_PASSWORD.match(value):
                out.append(
                    "a password was given in --dsn on the command line, readable by every local user in "
                    "/proc/<pid>/cmdline: use --dsn-password-file FILE or ENGINE_DSN_PASSWORD instead"
                )
        elif name in _SECRET_FLAGS:
            instead = (
                "--token-file FILE or ENGINE_TRACER_TOKEN"
                if name == "--token"
                else ("--dsn-password-file FILE or ENGINE_DSN_PASSWORD")
            )
            out.append(
                f"a secret was given as {name} on the command line, readable by every local user in "
                f"/proc/<pid>/cmdline: use {instead} instead"
            )
    return out


def _coerce(name: str, type_name: Any, raw: Any) -> Any:
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
        return str(raw)
    except ValueError:
        raise ConfigError(f"invalid configuration: {name}={raw!r} is not a valid {kind}") from None
