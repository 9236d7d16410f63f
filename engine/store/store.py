"""The ClickHouse store: one client, one lock, and the few calls the engine makes.

The same code runs on three backends and only the DSN differs: ``chdb:///dir`` (embedded, the default),
``http(s)://user:pass@host:8123`` (a server), and the latter with ``cluster=NAME``: shard-local tables behind
``Distributed`` tables, either sharded only (the migrations applied here on every shard of ``shard_dsns``) or
``replicated`` (ReplicatedMergeTree, ``ON CLUSTER`` DDL applied once); DDL from ``engine.store.schema``. On a
cluster every call sends ``insert_distributed_sync = 1``: an insert through a Distributed table returns only once
every shard holds its part, because the drain moves its WAL checkpoint on that return. Every call holds one
``threading.Lock``: chdb is not safe for concurrent calls, and for HTTP it keeps the "at most one insert in
flight" the drain relies on.

chdb facts this module is built around (chdb 4.4, engine 26.x; see docs/cluster.md):

* one data directory per process at a time: opening a second directory while a client is open fails, but
  after ``close()`` another directory can be opened in the same process;
* the directory is ``flock``-ed by the process that opened it; a second process fails with an unhelpful
  message, so a failed open is diagnosed here and reported as "in use by PID n";
* no async client: callers run these methods in a worker thread.

Datetimes come back timezone-aware (``tz_mode="aware"``): chdb drops the zone of ``DateTime('UTC')`` columns
and clickhouse-connect would then read them in the host's zone, so naive values would silently differ between
a UTC server and a host in Asia/Ho_Chi_Minh; aware values are the same instant everywhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import math
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from engine.errors import StoreError
from engine.store.columns import SCAN_COLUMNS, Rows, rows_from_columns, to_arrow
from engine.store.schema import TTL_TABLES, render_migrations, retention_statements

log = logging.getLogger(__name__)

_MAX_ERROR_CHARS = 600
_URL_IN_ERROR = re.compile(r"with url: \S+")
_TTL_DAYS = re.compile(r"toIntervalDay\((\d+)\)")
_DEVICE_COLUMNS = ["device_id", "public_key", "label", "revoked", "registered_at", "updated_at", "venues"]
_DEVICE_TYPES = [
    "String", "String", "String", "UInt8", "DateTime64(3, 'UTC')", "DateTime64(3, 'UTC')", "Array(String)",
]  # fmt: skip

# Inserts are synchronous on purpose. ClickHouse 26.x servers default to ``async_insert = 1`` (the server here
# reports it unchanged from its default): the insert would then go through the server's async queue, merged with
# other clients' inserts, where ``insert_deduplication_token`` does not deduplicate into non-replicated tables
# (``async_insert_deduplicate`` covers replicated ones, and is off by default) and a WAL redo after a crash would
# land twice. chdb's clickhouse-local has no async queue at all, so only a server shows the difference.
_SYNC_INSERT: dict[str, Any] = {"async_insert": 0}

ScanColumns = Mapping[str, "np.ndarray[Any, Any] | Sequence[Any]"]


@dataclass(frozen=True)
class SetRows:
    """Rows of ``verified_codes`` as packed columns (16-byte tags, 8-byte kids, 16-byte MACs): what
    ``Verifier.load_set`` takes, with no Python object per row; ``newest_ms`` is the latest ``added_at`` read."""

    tags: bytes
    kids: bytes
    exps: np.ndarray
    macs: bytes
    newest_ms: int

    def __len__(self) -> int:
        return len(self.exps)


@dataclass(frozen=True)
class DeviceRecord:
    """A device's latest state in the store (``registered_at`` is its first registration, kept across updates)."""

    device_id: str
    public_key: bytes
    revoked: bool
    label: str
    registered_at: datetime
    updated_at: datetime
    venues: tuple[str, ...] = ()  # the venues it may post for; () = unbound (migration 0008)


def _redact(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", dsn)


def _short(exc: BaseException) -> str:
    """The reason for a failed call, short: the transport's own cause when there is one (see :func:`_transport`)."""
    reason = _transport(exc)
    if reason is not None:
        return reason
    # urllib3 pastes the request URL (the whole SQL, URL-encoded) into its message: it would push the cause out
    text = _URL_IN_ERROR.sub("with url: ...", " ".join(str(exc).split()))
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "..."


def _transport(exc: BaseException) -> str | None:
    """Name a server-side transport failure plainly, or None if ``exc`` is not one.

    clickhouse-connect wraps these three deep in its exception chain, under a message that begins with a 600-char
    URL: on a killed or restarting server the operator would otherwise never see "connection refused".
    """
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused: no ClickHouse server listens there (stopped, restarting, or a wrong port)"
        if isinstance(seen, ConnectionResetError | BrokenPipeError):
            return "the server closed the connection during the call (it stopped or restarted); nothing was answered"
        if isinstance(seen, TimeoutError) or type(seen).__name__ in ("ReadTimeoutError", "ConnectTimeoutError"):
            return (
                f"no answer in time ({_short_text(seen)}): the server is overloaded or hung, and may still finish "
                "the statement (a retried insert must carry the same deduplication token)"
            )
        seen = seen.__cause__ or seen.__context__
    return None


def _short_text(exc: BaseException) -> str:
    text = _URL_IN_ERROR.sub("with url: ...", " ".join(str(exc).split()))
    return text[:200]


def _lock_holder(directory: Path) -> str | None:
    """Who holds the chdb directory lock, if anyone: called only after an open failed, to say why."""
    status = directory / "status"
    try:
        fd = status.open("rb")
    except OSError:
        return None
    with fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            first = fd.read(200).decode(errors="replace").splitlines()
            return first[0].removeprefix("PID:").strip() if first else "?"
        fcntl.flock(fd, fcntl.LOCK_UN)
    return None


# Every call to a cluster. ``insert_distributed_sync``: see _server_client. ``distributed_product_mode = 'global'``:
# a read like tracing by QR id (``person_key IN (SELECT person_key FROM person_by_qr ...)``) is an IN over two
# Distributed tables, which ClickHouse refuses by default ("Double-distributed IN/JOIN subqueries is denied", found
# by tests/test_sharded_store.py). 'global' runs the subquery once and ships its few keys to every shard: right
# whatever the two tables' sharding; 'local' would also be right today (both are sharded by person key) but would
# silently miss rows the day a query joins tables sharded differently.
_CLUSTER_SETTINGS: dict[str, Any] = {"insert_distributed_sync": 1, "distributed_product_mode": "global"}


def _server_client(dsn: str, timeouts: tuple[int, int], *, cluster: bool) -> Client:
    """A clickhouse-connect HTTP client as the Store uses it (``timeouts``: connect, send/receive, whole seconds)."""
    return clickhouse_connect.get_client(
        dsn=dsn,
        tz_mode="aware",
        connect_timeout=timeouts[0],
        send_receive_timeout=timeouts[1],
        # a session would pin every call to one server behind a load balancer and make concurrent processes fail
        # with "session is locked"; nothing here needs session state
        autogenerate_session_id=False,
        # through a Distributed table, return only once every shard has its rows (scans: the WAL checkpoint moves
        # on the insert's return; devices: a revocation must be a part, not a queued file); the default background
        # mode would keep them in the coordinator's queue, lost with that node
        settings=_CLUSTER_SETTINGS if cluster else None,
    )


class Store:
    """The engine's only door to ClickHouse; created once per process (the server owns it)."""

    def __init__(
        self,
        client: Client,
        *,
        dsn: str,
        database: str,
        retention_days: int,
        cluster: str | None,
        replicated: bool = False,
        shard_dsns: Sequence[str] = (),
        timeouts: tuple[int, int] = (10, 30),
    ) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._closed = False
        self.dsn = _redact(dsn)
        self.database = database
        self.retention_days = retention_days
        self.cluster = cluster or None
        self.replicated = bool(self.cluster) and replicated
        self._shard_dsns = list(shard_dsns)
        self._timeouts = timeouts
        self.is_embedded = dsn.startswith("chdb:")

    @property
    def sharded(self) -> bool:
        """A cluster without replication: the Store itself applies the migrations on every shard."""
        return bool(self.cluster) and not self.replicated

    @property
    def shards(self) -> list[str]:
        """The shard DSNs of a sharded cluster, passwords redacted (for messages and ``stats``)."""
        return [_redact(d) for d in self._shard_dsns]

    # -- lifecycle -----------------------------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        dsn: str,
        *,
        database: str = "vnqr",
        retention_days: int = 28,
        cluster: str | None = None,
        replicated: bool = False,
        shard_dsns: Sequence[str] = (),
        connect_timeout: float = 10.0,
        insert_timeout: float = 30.0,
    ) -> Store:
        """Open the store; raise :class:`StoreError` with the reason if it cannot be reached or opened.

        ``cluster`` names a cluster in the servers' ``remote_servers``. Sharded (not ``replicated``), ``shard_dsns``
        must name the HTTP endpoint of every shard, because the migrations are applied on each of them (there is no
        ``ON CLUSTER`` without Keeper); :meth:`migrate` checks them against the cluster's own definition.
        """
        render_migrations(database, retention_days, cluster, replicated=replicated)  # names checked: ConfigError
        if cluster and not dsn.startswith(("http://", "https://")):
            raise StoreError(
                f"cluster {cluster!r} needs ClickHouse servers (an http:// or https:// DSN), not {_redact(dsn)}"
            )
        if cluster and not replicated and not shard_dsns:
            raise StoreError(
                f"the sharded schema of cluster {cluster!r} is applied on every shard: give the http(s) DSN of each "
                "shard (--shard-dsns / ENGINE_SHARD_DSNS), or use --replicated on a cluster with Keeper"
            )
        if not cluster and shard_dsns:
            raise StoreError("shard DSNs need a cluster name (--cluster)")
        timeouts = (max(1, math.ceil(connect_timeout)), max(1, math.ceil(insert_timeout)))
        try:
            if dsn.startswith("chdb:"):
                path = Path(urlparse(dsn).path or ".")
                path.mkdir(mode=0o700, parents=True, exist_ok=True)  # scans are personal data: owner only
                # asked before chdb tries: on a locked directory it writes its own raw "Code: 76" line to stderr
                holder = _lock_holder(path)
                if holder is not None and holder != str(os.getpid()):  # this process may reopen its own directory
                    raise StoreError(
                        f"the embedded store {path} is in use by another process (PID {holder}); "
                        "stop it, or go through its admin API"
                    )
                client = clickhouse_connect.get_client(dsn=dsn, tz_mode="aware")
            elif dsn.startswith(("http://", "https://")):
                client = _server_client(dsn, timeouts, cluster=bool(cluster))
            else:
                raise StoreError(f"store DSN must start with chdb://, http:// or https://, not {_redact(dsn)!r}")
        except StoreError:
            raise
        except Exception as exc:
            holder = _lock_holder(Path(urlparse(dsn).path)) if dsn.startswith("chdb:") else None
            if holder is not None:
                raise StoreError(
                    f"the embedded store {urlparse(dsn).path} is in use by another process (PID {holder}); "
                    "stop it, or go through its admin API"
                ) from exc
            raise StoreError(f"cannot open the store {_redact(dsn)}: {_short(exc)}") from exc
        store = cls(
            client,
            dsn=dsn,
            database=database,
            retention_days=retention_days,
            cluster=cluster,
            replicated=replicated,
            shard_dsns=shard_dsns,
            timeouts=timeouts,
        )
        with contextlib.suppress(StoreError):
            if store._call("check database", lambda: client.command(f"EXISTS DATABASE {database}")) == 1:
                client.database = database  # unqualified names (FROM scans) work before migrate() too
        return store

    def close(self) -> None:
        """Release the client (and, for chdb, the directory, so another directory can be opened after)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(Exception):
                    self._client.close()

    # -- schema --------------------------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply the migrations not yet recorded, then the configured retention; return what was applied.

        Every statement is ``IF NOT EXISTS``, so a migration interrupted half-way is simply run again. The first
        migration creates the bookkeeping table and is run every time (it must exist before we can ask it).
        A changed ``retention_days`` is applied with ``ALTER ... MODIFY TTL`` and reported as
        ``retention_days=N``. On a sharded cluster all of this happens on every shard in turn (each records what
        it has in its own ``schema_migrations``), after checking that the shard DSNs are exactly the cluster's
        shards; what was applied is reported once per shard as ``shard N: name``.
        """
        if not self.sharded:
            with self._lock:
                single = self._migrate_on(self._client, self._run)
                self._client.database = self.database
            return single
        with self._lock:
            shards = self._check_shards()
            applied: list[str] = []
            for number, dsn in shards:
                client = _server_client(dsn, self._timeouts, cluster=True)
                try:
                    run = functools.partial(self._run_on, _redact(dsn))
                    applied += [f"shard {number}: {name}" for name in self._migrate_on(client, run)]
                finally:
                    client.close()
            self._client.database = self.database
        return applied

    def _check_shards(self) -> list[tuple[int, str]]:
        """``(shard number, DSN)`` for every shard DSN, checked against ``system.clusters`` (caller holds the lock).

        Each server says which shard of the cluster it is (``is_local``); a DSN that is no shard, two DSNs for one
        shard, or a shard with no DSN would leave a shard without tables, which shows only as failed inserts.
        """
        cluster = self.cluster
        found: dict[int, str] = {}
        expected: set[int] = set()
        for dsn in self._shard_dsns:
            client = _server_client(dsn, self._timeouts, cluster=True)
            try:
                rows = self._run_on(
                    _redact(dsn),
                    "read the cluster definition",
                    lambda c=client: (
                        c.query(
                            "SELECT shard_num, is_local FROM system.clusters WHERE cluster = {c:String}",
                            parameters={"c": cluster},
                        ).result_rows
                    ),
                )
            finally:
                client.close()
            if not rows:
                raise StoreError(f"{_redact(dsn)} has no cluster {cluster!r} in its remote_servers")
            expected |= {int(r[0]) for r in rows}
            local = sorted({int(r[0]) for r in rows if int(r[1])})
            if len(local) != 1:
                raise StoreError(
                    f"{_redact(dsn)} is {'no' if not local else 'more than one'} shard of cluster {cluster!r} "
                    "(system.clusters, is_local): every shard DSN must be one shard's own server"
                )
            if local[0] in found:
                other = _redact(found[local[0]])
                raise StoreError(f"{_redact(dsn)} and {other} are both shard {local[0]} of cluster {cluster!r}")
            found[local[0]] = dsn
        missing = sorted(expected - found.keys())
        if missing:
            raise StoreError(
                f"cluster {cluster!r} has shard(s) {', '.join(map(str, missing))} with no DSN in shard_dsns: the "
                "schema must be applied on every shard"
            )
        return sorted(found.items())

    def _migrate_on(self, client: Client, run: Any) -> list[str]:
        """The migration loop on one server (``run(what, fn)`` wraps its errors); caller holds the lock."""
        db = self.database
        migrations = render_migrations(db, self.retention_days, self.cluster, replicated=self.replicated)
        applied: list[str] = []
        for stmt in migrations[0][1]:
            run("migrate", lambda s=stmt: client.command(s))
        done = {
            r[0]
            for r in run(
                "read migrations", lambda: client.query(f"SELECT name FROM {db}.schema_migrations").result_rows
            )
        }
        for name, statements in migrations:
            if name in done:
                continue
            for stmt in statements:
                run(f"migration {name}", lambda s=stmt: client.command(s))
            run(
                f"record migration {name}",
                lambda n=name: client.command(
                    f"INSERT INTO {db}.schema_migrations (name) VALUES ({{n:String}})", parameters={"n": n}
                ),
            )
            log.info("applied migration %s", name)
            applied.append(name)
        if self._current_retention(client, run) != self.retention_days:
            for stmt in retention_statements(db, self.retention_days, self.cluster, replicated=self.replicated):
                run("change retention", lambda s=stmt: client.command(s))
            applied.append(f"retention_days={self.retention_days}")
        return applied

    def _current_retention(self, client: Client, run: Any) -> int | None:
        """The TTL (days) on the scans table as ClickHouse reports it; caller holds the lock."""
        local = f"{TTL_TABLES[0]}_local" if self.cluster else TTL_TABLES[0]
        rows = run(
            "read retention",
            lambda: (
                client.query(
                    "SELECT create_table_query FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                    parameters={"db": self.database, "t": local},
                ).result_rows
            ),
        )
        found = _TTL_DAYS.search(rows[0][0]) if rows else None
        return int(found.group(1)) if found else None

    # -- writes --------------------------------------------------------------------------------------------
    def insert_scans(
        self, columns: Rows | ScanColumns, *, dedup_token: str | None = None, settings: Mapping[str, Any] | None = None
    ) -> int:
        """Insert one batch into ``scans``; return the rows sent (a deduplicated replay counts too).

        ``columns`` is :class:`engine.store.columns.Rows` (what the drain decodes from the WAL) or a mapping of
        ``SCAN_COLUMNS`` to lists/arrays (tests, tools), checked by :func:`engine.store.columns.rows_from_columns`.
        The insert is Arrow (``insert_arrow``): the row buffers are handed over as they are, with no Python
        object per value; measured beside the Native path this removed the Python loop per row on the store
        thread (README, "Measured"). With ``dedup_token`` ClickHouse drops a block it has already seen with that
        token (within ``non_replicated_deduplication_window``/``replicated_deduplication_window``), so replaying
        a WAL batch after a crash is a no-op, and the materialized views' blocks are deduplicated with it.
        ``settings`` overrides ClickHouse settings of this one insert (``bench/store_bench.py --versus``).
        """
        rows = columns if isinstance(columns, Rows) else rows_from_columns(columns)
        n = len(rows)
        if n == 0:
            return 0
        table = to_arrow(rows)
        query_settings: dict[str, Any] = {
            **_SYNC_INSERT,
            "insert_deduplicate": 1,
            "deduplicate_blocks_in_dependent_materialized_views": 1,
            # Replacing tables would otherwise collapse equal keys inside each new block at insert time, ClickHouse
            # CPU per row of the three tables (bench/store_bench.py --versus; README), to remove duplicates the
            # batcher's recent-id map already keeps out. Merges and readers still collapse.
            "optimize_on_insert": 0,
            **(settings or {}),
        }
        if dedup_token:
            query_settings["insert_deduplication_token"] = dedup_token
        with self._lock:
            self._run(
                f"insert of {n} scans",
                lambda: self._client.insert_arrow("scans", table, database=self.database, settings=query_settings),
            )
        return n

    def upsert_device(
        self,
        device_id: str,
        public_key: bytes,
        *,
        revoked: bool = False,
        label: str = "",
        venues: Sequence[str] | None = None,
    ) -> tuple[str, ...]:
        """Write a device's new state; its first ``registered_at`` is kept, ``updated_at`` always moves forward.

        The forward move (at least 1 ms past the previous version) matters: ReplacingMergeTree keeps the row with
        the highest ``updated_at``, and a revoke that landed in the same millisecond as a register must win.
        ``venues`` None keeps the venues the device is bound to (a revoke or a re-key never unbinds it silently);
        a sequence replaces them (empty: unbound). Returns the venues written.
        """
        key = bytes(public_key)
        now_ms = int(time.time() * 1000)
        with self._lock:
            prev = self._run(
                "read device",
                lambda: (
                    self._client.query(
                        f"SELECT toUnixTimestamp64Milli(min(registered_at)), toUnixTimestamp64Milli(max(updated_at)), "
                        f"count(), argMax(venues, updated_at) FROM {self.database}.devices "
                        "WHERE device_id = {d:String}",
                        parameters={"d": device_id},
                    ).result_rows
                ),
            )
            registered, updated = now_ms, now_ms
            bound: tuple[str, ...] = () if venues is None else tuple(venues)
            if prev and prev[0][2]:
                registered, updated = int(prev[0][0]), max(now_ms, int(prev[0][1]) + 1)
                if venues is None:
                    bound = tuple(prev[0][3])
            self._run(
                f"upsert of device {device_id}",
                lambda: self._client.insert(
                    "devices",
                    [[device_id], [key], [label], [1 if revoked else 0], [registered], [updated], [list(bound)]],
                    column_names=_DEVICE_COLUMNS,
                    database=self.database,
                    column_type_names=_DEVICE_TYPES,
                    column_oriented=True,
                    settings=_SYNC_INSERT,  # a revocation is a part before this returns, not a queued row
                ),
            )
        return bound

    def insert_rows(
        self, table: str, column_names: Sequence[str], column_types: Sequence[str], columns: Sequence[Sequence[Any]]
    ) -> None:
        """A small column-oriented insert into one of our tables (the audit log's records), types given so the
        driver needs no round trip to describe the table."""
        with self._lock:
            self._run(
                f"insert into {table}",
                lambda: self._client.insert(
                    table,
                    [list(c) for c in columns],
                    column_names=list(column_names),
                    database=self.database,
                    column_type_names=list(column_types),
                    column_oriented=True,
                    settings=_SYNC_INSERT,  # a registry row (credential, fingerprint) is a part once this returns
                ),
            )

    def insert_verified_codes(self, tags: bytes, kids: bytes, exps: np.ndarray, macs: bytes, node: str) -> int:
        """Publish verified-code set entries (packed like :class:`SetRows`); return the rows sent.

        Arrow columns straight from the packed buffers; ``added_at`` is left to the server, so every node's poll
        reads one clock (the store's), not the publishers'."""
        n = len(exps)
        if n == 0:
            return 0
        if len(tags) != 16 * n or len(kids) != 8 * n or len(macs) != 16 * n:
            raise StoreError("verified codes: tags, kids and macs must hold 16, 8 and 16 bytes per entry")

        def fixed(buf: bytes, width: int) -> pa.Array:
            return pa.Array.from_buffers(pa.binary(width), n, [None, pa.py_buffer(buf)])

        table = pa.table(
            {
                "tag": fixed(tags, 16),
                "kid": fixed(kids, 8),
                "exp": pa.array(np.ascontiguousarray(exps, np.int64)),
                "mac": fixed(macs, 16),
                "node": pa.array([node] * n, pa.string()),
            }
        )
        with self._lock:
            self._run(
                f"publish of {n} verified codes",
                lambda: self._client.insert_arrow(
                    "verified_codes", table, database=self.database, settings=_SYNC_INSERT
                ),
            )
        return n

    def verified_codes(self, *, now: int, since_ms: int | None = None, newest: int | None = None) -> SetRows:
        """Unexpired ``verified_codes`` rows (added at or after ``since_ms`` if given), as packed columns; with
        ``newest``, at most that many, the most recently added (a node whose set is smaller than the deployment's
        reads only what it can hold, not every row to drop most of them).

        Read as Arrow and handed over as the columns' buffers: a warm load of millions of rows makes no Python
        object per row. The MACs are not checked here: the verifier checks each row's before using it."""
        where = "exp > {now:Int64}"
        params: dict[str, Any] = {"now": now}
        if since_ms is not None:
            where += " AND added_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')"
            params["since"] = since_ms
        source = f"FROM {self.database}.verified_codes WHERE {where}"
        sql = f"SELECT tag, kid, exp, mac, toUnixTimestamp64Milli(added_at) AS added {source}"
        if newest is not None:
            # the sort only when it is needed: counting reads one column, sorting all of them
            (total,) = self.query(f"SELECT count() {source}", params)[0]
            if total > newest:
                sql += " ORDER BY added_at DESC LIMIT {newest:UInt64}"
                params["newest"] = newest
        with self._lock:
            table = self._run("read of verified codes", lambda: self._client.query_arrow(sql, parameters=params))
        table = table.combine_chunks()
        n = table.num_rows

        def packed(name: str, width: int) -> bytes:
            if n == 0:
                return b""
            col = table.column(name).chunks[0]
            start = col.offset * width
            return col.buffers()[1].to_pybytes()[start : start + n * width]

        added = table.column("added").to_numpy() if n else np.zeros(0, np.int64)
        return SetRows(
            tags=packed("tag", 16),
            kids=packed("kid", 8),
            exps=table.column("exp").to_numpy().astype(np.int64) if n else np.zeros(0, np.int64),
            macs=packed("mac", 16),
            newest_ms=int(added.max()) if n else (since_ms or 0),
        )

    # -- reads ---------------------------------------------------------------------------------------------
    def devices(self, *, changed_since_ms: int | None = None) -> list[DeviceRecord]:
        """Every device's latest state (argMax by ``updated_at``: correct before merges, and needs no FINAL); with
        ``changed_since_ms``, only devices updated at or after it (a node's refresh reads what changed)."""
        having = ""
        params: dict[str, Any] | None = None
        if changed_since_ms is not None:
            having = " HAVING max(updated_at) >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')"
            params = {"since": changed_since_ms}
        rows = self.query(
            "SELECT device_id, hex(argMax(public_key, updated_at)), argMax(revoked, updated_at), "
            "argMax(label, updated_at), min(registered_at), max(updated_at), argMax(venues, updated_at) "
            f"FROM {self.database}.devices GROUP BY device_id{having} ORDER BY device_id",
            params,
        )
        # hex: the driver decodes String as UTF-8 and hands back raw key bytes as a hex str when they are not
        return [DeviceRecord(r[0], bytes.fromhex(r[1]), bool(r[2]), r[3], r[4], r[5], tuple(r[6])) for r in rows]

    def query(
        self, sql: str, parameters: dict[str, Any] | None = None, *, settings: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Rows of a parameterised query: values go in ``{name:Type}`` and are bound by the server, never pasted.
        ``settings``: ClickHouse settings of this one query (the tracing lane's caps)."""
        return self.query_columns(sql, parameters, settings=settings)[1]

    def query_columns(
        self, sql: str, parameters: dict[str, Any] | None = None, *, settings: Mapping[str, Any] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Like :meth:`query`, with the result's column names (for tables printed by the CLI)."""
        extra = dict(settings) if settings else None
        with self._lock:
            result = self._run("query", lambda: self._client.query(sql, parameters=parameters, settings=extra))
        return list(result.column_names), [tuple(r) for r in result.result_rows]

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        """A statement with no result set (``OPTIMIZE``, ``ALTER``, ``SYSTEM``): for operators and tests."""
        with self._lock:
            return self._run("command", lambda: self._client.command(sql, parameters=parameters))

    def ping(self) -> bool:
        """True if ClickHouse answers ``SELECT 1``; never raises (readiness probes call it)."""
        try:
            with self._lock:
                return bool(self._run("ping", lambda: self._client.command("SELECT 1")) == 1)
        except Exception:
            return False

    def stats(self) -> dict[str, Any]:
        """What an operator wants at a glance, JSON-ready. Counts are rows before merges: a retried scan not yet
        collapsed counts twice; exact numbers would need FINAL, which is too heavy for a dashboard call."""
        db = self.database
        days = self.query(
            f"SELECT toString(toDate(scanned_at)) AS day, count() FROM {db}.scans GROUP BY day ORDER BY day"
        )
        verdicts = self.query(f"SELECT toString(verdict), count() FROM {db}.scans GROUP BY verdict ORDER BY verdict")
        rejects = self.query(
            f"SELECT toString(verdict), toString(reason), count() AS n FROM {db}.scans WHERE verdict != 'ok' "
            "GROUP BY verdict, reason ORDER BY n DESC LIMIT 50"
        )
        venues = self.query(
            f"SELECT venue_id, count() AS n, uniq(person_key) FROM {db}.scans "
            "WHERE scanned_at > now64(3) - INTERVAL 1 DAY GROUP BY venue_id ORDER BY n DESC LIMIT 10"
        )
        devices = self.devices()
        return {
            "store": "embedded" if self.is_embedded else "server",
            "database": db,
            "cluster": self.cluster or "",
            "cluster_schema": ("replicated" if self.replicated else "sharded") if self.cluster else "",
            "shards": self.shards,
            "retention_days": self.retention_days,
            "rows": sum(int(r[1]) for r in days),
            "rows_per_day": [{"day": r[0], "rows": int(r[1])} for r in days],
            "verdicts": {r[0]: int(r[1]) for r in verdicts},
            "rejects": [{"verdict": r[0], "reason": r[1], "rows": int(r[2])} for r in rejects],
            "top_venues_24h": [{"venue_id": r[0], "rows": int(r[1]), "people": int(r[2])} for r in venues],
            "devices": len(devices),
            "devices_revoked": sum(1 for d in devices if d.revoked),
        }

    # -- plumbing ------------------------------------------------------------------------------------------
    def _call(self, what: str, fn: Any) -> Any:
        with self._lock:
            return self._run(what, fn)

    def _run_on(self, dsn: str, what: str, fn: Any) -> Any:
        """:meth:`_run` for a call on another server than the Store's own (a shard during migrations)."""
        if self._closed:
            raise StoreError(f"{what}: the store is closed")
        try:
            return fn()
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{what} failed on {dsn}: {_short(exc)}") from exc

    def _run(self, what: str, fn: Any) -> Any:
        """Run one driver call (caller holds the lock); any driver failure becomes a StoreError that says what."""
        if self._closed:
            raise StoreError(f"{what}: the store is closed")
        try:
            return fn()
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{what} failed on {self.dsn}: {_short(exc)}") from exc


__all__ = ["SCAN_COLUMNS", "DeviceRecord", "SetRows", "Store"]
