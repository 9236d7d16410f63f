"""The test ClickHouse server itself (``engine.testing.clickhouse``) and what only a server shows the Store.

Most tests reuse the session server (``clickhouse_server``) with a fresh database each; a test that stops, kills or
freezes it brings it back before it ends. One test starts a 2-shard cluster of its own, one a server that cannot
start. Everything is real: ClickHouse's own HTTP and native listeners on 127.0.0.1, real processes and signals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import psutil
import pytest
from test_store import scans  # the store tests' batch builder: one shape of scan batch everywhere

from engine.errors import StoreError
from engine.store.schema import migration_names
from engine.store.store import Store
from engine.testing import clickhouse
from engine.testing.clickhouse import ClickHouseCluster, ClickHouseServer, ClickHouseServerError, render_config
from engine.testing.fixtures import SERVER_TIMEZONE


@pytest.fixture
def server_store(clickhouse_server: ClickHouseServer, clickhouse_database: str) -> Iterator[Store]:
    s = Store.connect(clickhouse_server.dsn, database=clickhouse_database, insert_timeout=5, connect_timeout=2)
    try:
        s.migrate()
        yield s
    finally:
        s.close()


def count(store: Store, table: str = "scans") -> int:
    return int(store.query(f"SELECT count() FROM {store.database}.{table}")[0][0])


def listening(pid: int) -> set[tuple[str, int]]:
    process = psutil.Process(pid)
    connections = getattr(process, "net_connections", None) or process.connections  # psutil < 6 has connections
    return {(c.laddr.ip, c.laddr.port) for c in connections(kind="inet") if c.status == psutil.CONN_LISTEN}


def freeze(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until every thread has stopped: ``kill`` returns before they do, and on a busy machine
    a server thread can still answer a request in between."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                states.append(task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0])
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"PID {pid} did not stop within 10 s")


# -- the server ---------------------------------------------------------------------------------------------
def test_session_server_listens_on_loopback_only_and_answers(clickhouse_server: ClickHouseServer) -> None:
    assert clickhouse_server.pid is not None
    assert listening(clickhouse_server.pid) == {
        ("127.0.0.1", clickhouse_server.http_port),
        ("127.0.0.1", clickhouse_server.tcp_port),
    }
    with urllib.request.urlopen(f"http://127.0.0.1:{clickhouse_server.http_port}/ping", timeout=5) as answer:
        assert answer.read() == b"Ok.\n"
    assert clickhouse_server.dsn == f"http://default:@127.0.0.1:{clickhouse_server.http_port}"
    client = clickhouse_connect.get_client(dsn=clickhouse_server.dsn, autogenerate_session_id=False)
    try:
        version, zone = client.query("SELECT version(), timezone()").result_rows[0]
        assert version.startswith("26.") and zone == SERVER_TIMEZONE
        with socket.create_connection(("127.0.0.1", clickhouse_server.tcp_port), timeout=5):
            pass  # the native port (what Distributed tables use) accepts too
    finally:
        client.close()


def test_clean_stop_then_restart_keeps_tables_and_the_dedup_window(
    clickhouse_server: ClickHouseServer, server_store: Store
) -> None:
    batch = scans(20)
    server_store.insert_scans(batch, dedup_token="wal-1-20-restart")
    old_pid = clickhouse_server.pid
    assert clickhouse_server.stop() == 0  # SIGTERM: the child shut ClickHouse down and exited cleanly
    assert not clickhouse_server.running and clickhouse_server.pid is None
    clickhouse_server.start()
    assert clickhouse_server.pid != old_pid
    # the same Store object (its pooled connections died with the old process) works on: same ports, same DSN
    assert count(server_store) == 20 and count(server_store, "scans_by_person") == 20
    # a WAL redo after the server restarted is still recognised (the dedup log is on disk with the parts)
    server_store.insert_scans(batch, dedup_token="wal-1-20-restart")
    assert count(server_store) == 20 and count(server_store, "scans_by_person") == 20
    assert server_store.migrate() == []  # the migrations' record survived too


def test_killed_server_gives_a_clear_store_error_and_the_store_recovers(
    clickhouse_server: ClickHouseServer, server_store: Store
) -> None:
    batch = scans(10)
    server_store.insert_scans(batch, dedup_token="wal-1-10-kill")
    assert clickhouse_server.kill() == -signal.SIGKILL
    with pytest.raises(
        StoreError,
        match=r"insert of 10 scans failed on http://default:\*\*\*@127\.0\.0\.1:\d+: "
        r"connection refused: no ClickHouse server listens there",
    ):
        server_store.insert_scans(scans(10, seed=1), dedup_token="wal-11-20-kill")
    assert server_store.ping() is False
    clickhouse_server.start()
    assert server_store.ping() is True
    # an insert acknowledged before the SIGKILL is there, and its redo is still a no-op
    server_store.insert_scans(batch, dedup_token="wal-1-10-kill")
    server_store.insert_scans(scans(10, seed=1), dedup_token="wal-11-20-kill")
    assert count(server_store) == 20


def test_hung_server_is_a_timeout_error_not_a_hang(
    clickhouse_server: ClickHouseServer, clickhouse_database: str
) -> None:
    store = Store.connect(clickhouse_server.dsn, database=clickhouse_database, insert_timeout=1, connect_timeout=1)
    pid = clickhouse_server.pid
    assert pid is not None
    freeze(pid)  # accepts connections (the kernel does) but never answers
    try:
        with pytest.raises(StoreError, match=r"query failed on .*: no answer in time \(.*timed out.*\): the server "):
            store.query("SELECT 1")
        assert store.ping() is False
    finally:
        os.kill(pid, signal.SIGCONT)
        store.close()
    assert clickhouse_server.running


def test_a_timed_out_insert_still_lands_and_its_retry_is_a_no_op(
    clickhouse_server: ClickHouseServer, clickhouse_database: str
) -> None:
    """On a server the client's timeout does not stop the insert: the drain's retry (same intent, same token) must
    not store the batch twice. A view that sleeps 0.2 s per row makes this insert take ~2 s against a 1 s timeout."""
    store = Store.connect(clickhouse_server.dsn, database=clickhouse_database, insert_timeout=1)
    try:
        store.migrate()
        db = clickhouse_database
        store.command(f"CREATE TABLE {db}.slow_sink (n UInt8) ENGINE = Null")
        store.command(
            f"CREATE MATERIALIZED VIEW {db}.slow_mv TO {db}.slow_sink AS SELECT sleepEachRow(0.2) AS n FROM {db}.scans"
        )
        batch = scans(10)
        with pytest.raises(StoreError, match=r"no answer in time .*may still finish the statement"):
            store.insert_scans(batch, dedup_token="wal-1-10-slow")
        deadline = time.monotonic() + 30
        while count(store) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert count(store) == 10  # the server finished what the client gave up on
        store.command(f"DROP VIEW {db}.slow_mv")
        store.insert_scans(batch, dedup_token="wal-1-10-slow")  # the drain's retry
        assert count(store) == 10 and count(store, "scans_by_person") == 10
    finally:
        store.close()


def test_inserts_reach_the_server_synchronous_with_their_token(
    clickhouse_server: ClickHouseServer, server_store: Store
) -> None:
    """The server's default is async_insert=1; the Store's inserts must turn it off (docs/cluster.md). Only this
    test's inserts are read back (the migrations' own INSERT ... SELECT, e.g. 0009's, ran before it)."""
    ((since,),) = server_store.query("SELECT now64(6)")
    server_store.insert_scans(scans(5), dedup_token="wal-1-5-settings")
    server_store.upsert_device("dev-settings", os.urandom(32))
    server_store.command("SYSTEM FLUSH LOGS")
    default = server_store.query("SELECT value FROM system.settings WHERE name = 'async_insert'")[0][0]
    sent = server_store.query(
        "SELECT has(tables, {d:String}), Settings['async_insert'], Settings['insert_deduplication_token'] "
        "FROM system.query_log WHERE type = 'QueryFinish' AND query_kind = 'Insert' AND has(databases, {db:String}) "
        "AND (has(tables, {s:String}) OR has(tables, {d:String})) AND event_time_microseconds >= {since:DateTime64(6)} "
        "ORDER BY event_time_microseconds",
        {
            "db": server_store.database,
            "s": f"{server_store.database}.scans",
            "d": f"{server_store.database}.devices",
            "since": since,
        },
    )
    assert default == "1"  # what a 26.x server does without being told
    assert sent == [
        (0, "0", "wal-1-5-settings"),  # scans (and the views' tables it feeds)
        (1, "0", ""),  # devices
    ]


def test_two_stores_migrate_and_insert_at_once(clickhouse_server: ClickHouseServer, clickhouse_database: str) -> None:
    """Two engine nodes on one server: both run the migrations at start, then insert side by side."""
    import threading

    stores = [Store.connect(clickhouse_server.dsn, database=clickhouse_database) for _ in range(2)]
    errors: list[BaseException] = []

    def run(fn: Any) -> None:
        threads = [threading.Thread(target=fn, args=(i, s)) for i, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    def migrate(_: int, store: Store) -> None:
        try:
            store.migrate()
        except BaseException as exc:
            errors.append(exc)

    def insert(i: int, store: Store) -> None:
        try:
            for k in range(4):
                store.insert_scans(scans(50, seed=10 * i + k), dedup_token=f"node{i}-wal-{k}")
            store.insert_scans(scans(30, seed=99), dedup_token="same-token")  # both nodes send the same block
        except BaseException as exc:
            errors.append(exc)

    try:
        run(migrate)
        assert errors == []
        names = stores[0].query(f"SELECT name FROM {clickhouse_database}.schema_migrations FINAL ORDER BY name")
        assert len(names) == len(migration_names()) and stores[1].migrate() == []
        run(insert)
        assert errors == []
        assert count(stores[0]) == 2 * 4 * 50 + 30  # the repeated block landed once
    finally:
        for s in stores:
            s.close()


# -- bad input and a broken chdb ----------------------------------------------------------------------------
def test_bad_arguments_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ClickHouseServerError, match="http_port must be a TCP port"):
        ClickHouseServer(tmp_path, http_port=70000)
    with pytest.raises(ClickHouseServerError, match="must differ"):
        ClickHouseServer(tmp_path, http_port=18123, tcp_port=18123)
    with pytest.raises(ClickHouseServerError, match="unknown time zone 'Mars/Olympus'"):
        ClickHouseServer(tmp_path, timezone="Mars/Olympus")
    with pytest.raises(ClickHouseServerError, match="at least 1 shard"):
        ClickHouseCluster(0, tmp_path)
    with pytest.raises(ClickHouseServerError, match="plain identifier"):
        ClickHouseCluster(2, tmp_path, name="a-b")


def test_a_port_in_use_fails_the_start_with_the_childs_log(clickhouse_server: ClickHouseServer, tmp_path: Path) -> None:
    taken = ClickHouseServer(tmp_path / "second", http_port=clickhouse_server.http_port, start_timeout=20)
    with pytest.raises(
        ClickHouseServerError, match=r"(?s)exited with code 1 before it answered.*Address already in use"
    ):
        taken.start()
    assert not taken.running


def test_a_chdb_without_the_private_entry_point_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from chdb import _chdb

    monkeypatch.delattr(_chdb, "query")
    with pytest.raises(ClickHouseServerError, match=r"chdb\._chdb\.query.* is missing in chdb \d[\d.]*, chdb-core \d"):
        ClickHouseServer(tmp_path).start()


def test_config_is_loopback_only_with_the_cluster_and_macros() -> None:
    text = render_config(18123, 19000, remote_servers={"c1": [19000, 19001]}, macros={"shard": "2"})
    assert "<listen_host>127.0.0.1</listen_host>" in text and "::" not in text and "0.0.0.0" not in text
    assert text.count("<shard>") == 3  # two shards in remote_servers, one macro
    assert "<port>19001</port>" in text and f"<keep_alive_timeout>{clickhouse.KEEP_ALIVE_S}<" in text


# -- a sharded cluster ----------------------------------------------------------------------------------------
def test_two_shard_cluster_distributed_splits_inserts_merges_reads_and_dedups(tmp_path: Path) -> None:
    """Distributed over 2 servers (no Keeper here: one replica per shard). Also what docs/cluster.md promises of a
    WAL redo through Distributed: after a partial failure, the retry lands only on the shard that missed it."""
    with ClickHouseCluster(2, tmp_path) as cluster:
        clients = [clickhouse_connect.get_client(dsn=s.dsn, autogenerate_session_id=False) for s in cluster]
        try:
            for c in clients:
                c.command("CREATE DATABASE d")
                c.command(
                    "CREATE TABLE d.t_local (id UInt64, person String) ENGINE = ReplacingMergeTree ORDER BY id "
                    "SETTINGS non_replicated_deduplication_window = 100"
                )
                c.command(
                    f"CREATE TABLE d.t AS d.t_local ENGINE = Distributed({cluster.name}, d, t_local, sipHash64(person))"
                )
            assert [str(c.command("SELECT getMacro('shard')")) for c in clients] == ["1", "2"]

            def insert(first: int, n: int, token: str) -> None:
                clients[0].insert(
                    "t",
                    [[i, f"person-{i}"] for i in range(first, first + n)],
                    column_names=["id", "person"],
                    database="d",
                    settings={"insert_distributed_sync": 1, "insert_deduplication_token": token, "async_insert": 0},
                )

            def local_counts() -> list[int]:
                return [int(c.command("SELECT count() FROM d.t_local")) for c in clients]

            insert(0, 200, "batch-1")
            split = local_counts()
            assert sum(split) == 200 and min(split) > 0  # split by the sharding key
            assert [int(c.command("SELECT count() FROM d.t")) for c in clients] == [200, 200]  # merged on either
            insert(0, 200, "batch-1")
            assert local_counts() == split  # a replay: each shard dropped its part of it

            # its peer's pooled native connections keep it from a fully clean exit: 0 or EXIT_CONNECTIONS_OPEN
            assert cluster[1].stop() in (0, clickhouse.EXIT_CONNECTIONS_OPEN)
            with pytest.raises(Exception, match="Connection refused"):
                insert(200, 100, "batch-2")
            cluster[1].start()
            insert(200, 100, "batch-2")
            assert int(clients[0].command("SELECT uniqExact(id) FROM d.t")) == 300
            assert int(clients[1].command("SELECT count() FROM d.t")) == 300
        finally:
            for c in clients:
                c.close()
    assert all(not s.running for s in cluster)


def test_stop_escalates_to_sigkill_when_sigterm_is_not_acted_on(clickhouse_server: ClickHouseServer) -> None:
    pid = clickhouse_server.pid
    assert pid is not None
    freeze(pid)  # a stopped process only queues SIGTERM; SIGKILL still ends it
    try:
        assert clickhouse_server.stop(timeout=0.5) == -signal.SIGKILL
        assert not psutil.pid_exists(pid)
    finally:
        clickhouse_server.start()
