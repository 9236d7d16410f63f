"""The sharded schema on a real 2-shard ClickHouse cluster (no Keeper): applied on every shard, written through
``Distributed``, deduplicated on a WAL replay (also after a partial failure), deployment-wide tables on the
registry shard, and a trace giving the same answer through ``Distributed`` as on one server with the same data.

The replicated variant cannot run here (clickhouse-local has no interserver address, so no Keeper and no
``ON CLUSTER``): its DDL is rendered and every statement parsed by ClickHouse's own parser
(``test_replicated_ddl_renders_and_parses``). docs/cluster.md says what ran and what did not.
"""

from __future__ import annotations

import random
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.errors import StoreError
from engine.store.schema import (
    REGISTRY_SHARD_KEY,
    cluster_ddl_text,
    deployment_tables,
    migration_names,
    render_migrations,
    split_statements,
)
from engine.store.store import Store
from engine.testing import clickhouse
from engine.testing.clickhouse import ClickHouseCluster, ClickHouseServer
from engine.tracing.model import MINUTE_MS, TraceOptions
from engine.tracing.queries import TraceQueries

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseCluster]:
    """Two shards for the module (a start costs ~1 s and ~250 MB each); every test uses its own database."""
    with ClickHouseCluster(2, tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture
def database(cluster: ClickHouseCluster) -> Iterator[str]:
    name = f"c_{secrets.token_hex(5)}"
    yield name
    for server in cluster:
        if not server.running:
            server.start()
    for server in cluster:
        Store.connect(server.dsn).command(f"DROP DATABASE IF EXISTS {name} SYNC")


def connect(cluster: ClickHouseCluster, database: str, shard: int = 0, **options: Any) -> Store:
    return Store.connect(
        cluster[shard].dsn, database=database, cluster=cluster.name, shard_dsns=cluster.dsns, **options
    )


def local_count(server: ClickHouseServer, database: str, table: str) -> int:
    store = Store.connect(server.dsn)
    try:
        return int(store.query(f"SELECT count() FROM {database}.{table}")[0][0])
    finally:
        store.close()


HOUR = 60 * MINUTE_MS
T0 = (int(time.time() * 1000) // 86_400_000 - 2) * 86_400_000 + 8 * HOUR


def world(people: int = 80, venues: int = 12, seed: int = 5) -> dict[str, Any]:
    """A morning of stays: every person visits 2-4 venues, in and mostly out, some at the same time as others."""
    rng = random.Random(seed)
    rows: list[tuple[int, str, str, int]] = []
    for p in range(people):
        t = rng.randrange(0, 120)
        for _ in range(rng.randint(2, 4)):
            venue = f"venue-{rng.randrange(venues)}"
            stay = rng.randint(10, 90)
            rows.append((p, venue, "in", T0 + t * MINUTE_MS))
            if rng.random() < 0.85:
                rows.append((p, venue, "out", T0 + (t + stay) * MINUTE_MS))
            t += stay + rng.randint(5, 60)
    return columns(rows)


def columns(rows: list[tuple[int, str, str, int]]) -> dict[str, Any]:
    n = len(rows)
    at = np.array([r[3] for r in rows], dtype="datetime64[ms]")
    return {
        "scan_id": [uuid.uuid5(uuid.NAMESPACE_URL, repr(r)) for r in rows],
        "device_id": [f"dev-{r[1]}" for r in rows],
        "venue_id": [r[1] for r in rows],
        "direction": [r[2] for r in rows],
        "scanned_at": at,
        "received_at": at,
        "verdict": ["ok"] * n,
        "reason": ["none"] * n,
        "code_kind": ["signed"] * n,
        "person_key": [uuid.uuid5(uuid.NAMESPACE_DNS, f"p{r[0]}").bytes for r in rows],
        "qr_id": [f"QR{r[0]:06d}" for r in rows],
        "key_id": [""] * n,
        "issuer": [""] * n,
        "code_iat": np.zeros(n, dtype="datetime64[s]"),
        "code_exp": np.zeros(n, dtype="datetime64[s]"),
    }


# -- the schema --------------------------------------------------------------------------------------------------
def test_sharded_schema_is_applied_on_every_shard_once(cluster: ClickHouseCluster, database: str) -> None:
    store = connect(cluster, database)
    try:
        applied = store.migrate()
        for shard in (1, 2):  # every migration on every shard, each recorded in that shard's own bookkeeping
            assert [a.split(": ", 1)[1] for a in applied if a.startswith(f"shard {shard}: ")] == [
                n.removesuffix(".sql") for n in migration_names()
            ]
        assert store.migrate() == []
        assert connect(cluster, database, shard=1).migrate() == []  # a second node on the other shard: no-op
    finally:
        store.close()
    for server in cluster:
        s = Store.connect(server.dsn)
        try:
            engines = dict(
                s.query("SELECT name, engine FROM system.tables WHERE database = {d:String}", {"d": database})
            )
            recorded = {r[0] for r in s.query(f"SELECT name FROM {database}.schema_migrations")}
        finally:
            s.close()
        for table in ("scans", "scans_by_person", "person_by_qr", *deployment_tables()):
            assert engines[f"{table}_local"] == "ReplacingMergeTree", (table, engines)
            assert engines[table] == "Distributed", (table, engines)
        assert engines["schema_migrations"] == "ReplacingMergeTree"
        assert recorded == {n.removesuffix(".sql") for n in migration_names()}


def test_shard_dsns_must_be_exactly_the_clusters_shards(cluster: ClickHouseCluster, database: str) -> None:
    only_one = Store.connect(cluster[0].dsn, database=database, cluster=cluster.name, shard_dsns=[cluster[0].dsn])
    with pytest.raises(StoreError, match=r"shard\(s\) 2 with no DSN"):
        only_one.migrate()
    twice = Store.connect(
        cluster[0].dsn, database=database, cluster=cluster.name, shard_dsns=[cluster[0].dsn, cluster[0].dsn]
    )
    with pytest.raises(StoreError, match="are both shard 1"):
        twice.migrate()
    unknown = Store.connect(cluster[0].dsn, database=database, cluster="nope", shard_dsns=cluster.dsns)
    with pytest.raises(StoreError, match="has no cluster 'nope'"):
        unknown.migrate()
    with pytest.raises(StoreError, match="applied on every shard"):
        Store.connect(cluster[0].dsn, database=database, cluster=cluster.name)
    with pytest.raises(StoreError, match="needs ClickHouse servers"):
        Store.connect("chdb:///tmp/x", cluster=cluster.name, shard_dsns=cluster.dsns)


# -- writes --------------------------------------------------------------------------------------------------
def test_inserts_keep_a_person_on_one_shard_and_a_replay_is_a_no_op_even_after_a_partial_failure(
    cluster: ClickHouseCluster, database: str
) -> None:
    """What the drain relies on through Distributed: every shard drops its part of a replayed block (the views'
    tables too), and after a failed insert that reached one shard only, the retry with the same token lands
    exactly the rows the other shard missed."""
    store = connect(cluster, database)
    try:
        store.migrate()
        data = world()
        half = len(data["scan_id"]) // 2
        first = {k: v[:half] for k, v in data.items()}
        second = {k: v[half:] for k, v in data.items()}
        store.insert_scans(first, dedup_token="wal-1-10-a")
        tables = ("scans_local", "scans_by_person_local", "person_by_qr_local")
        counts = {t: [local_count(s, database, t) for s in cluster] for t in tables}
        assert sum(counts["scans_local"]) == half and min(counts["scans_local"]) > 0
        assert counts["scans_by_person_local"] == counts["scans_local"]  # the view fires on the shard's own insert
        store.insert_scans(first, dedup_token="wal-1-10-a")  # the redo after a crash
        assert {t: [local_count(s, database, t) for s in cluster] for t in tables} == counts

        # shard 2 goes away mid-insert: shard 1 (the coordinator, local) writes its part, the call fails
        assert cluster[1].stop() in (0, clickhouse.EXIT_CONNECTIONS_OPEN)
        with pytest.raises(StoreError):
            store.insert_scans(second, dedup_token="wal-11-20-b")
        cluster[1].start()
        store.insert_scans(second, dedup_token="wal-11-20-b")
        n = len(data["scan_id"])
        assert store.query("SELECT count(), uniqExact(scan_id) FROM scans")[0] == (n, n)
        assert store.query("SELECT count(), uniqExact(scan_id) FROM scans_by_person")[0] == (n, n)
        # a person's whole history is on one shard: where tracing starts
        where = [
            {r[0] for r in Store.connect(s.dsn).query(f"SELECT DISTINCT hex(person_key) FROM {database}.scans_local")}
            for s in cluster
        ]
        assert where[0] and where[1] and not where[0] & where[1]
    finally:
        store.close()


def test_deployment_wide_tables_live_on_the_registry_shard_and_every_node_sees_them(
    cluster: ClickHouseCluster, database: str
) -> None:
    assert REGISTRY_SHARD_KEY == "0"
    on_shard2 = connect(cluster, database, shard=1)
    on_shard1 = connect(cluster, database, shard=0)
    try:
        on_shard2.migrate()
        on_shard2.upsert_device("kiosk-1", b"k" * 32, label="through shard 2")
        assert [d.device_id for d in on_shard1.devices()] == ["kiosk-1"]
        on_shard1.upsert_device("kiosk-1", b"k" * 32, revoked=True)
        assert [d.revoked for d in on_shard2.devices()] == [True]  # a revocation through either node, seen by both
        assert [local_count(s, database, "devices_local") for s in cluster] == [2, 0]
    finally:
        on_shard1.close()
        on_shard2.close()


# -- reads ---------------------------------------------------------------------------------------------------
def test_a_trace_through_distributed_answers_as_one_server_with_the_same_data(
    cluster: ClickHouseCluster, database: str, clickhouse_server: ClickHouseServer, clickhouse_database: str
) -> None:
    data = world(people=150, venues=15)
    sharded = connect(cluster, database)
    single = Store.connect(clickhouse_server.dsn, database=clickhouse_database)
    try:
        for store in (sharded, single):
            store.migrate()
            store.insert_scans(data, dedup_token="same-data")
        opt = TraceOptions(days=14)
        lo, hi = T0 - HOUR, T0 + 12 * HOUR
        compared = 0
        for person in range(0, 150, 10):
            qr = f"QR{person:06d}"
            a = TraceQueries(sharded.query).person(qr_id=qr, from_ms=lo, to_ms=hi, options=opt)
            b = TraceQueries(single.query).person(qr_id=qr, from_ms=lo, to_ms=hi, options=opt)
            assert a == b, qr
            assert a.visits
            compared += len(a.contacts)
        assert compared > 0  # the others-at-venue read across both shards found people
        for venue in ("venue-0", "venue-7"):
            assert TraceQueries(sharded.query).venue(venue, lo, hi, opt) == TraceQueries(single.query).venue(
                venue, lo, hi, opt
            )
    finally:
        sharded.close()
        single.close()


# -- the replicated variant: rendered and parsed, not run ----------------------------------------------------
def test_replicated_ddl_renders_and_parses(tmp_path: Path) -> None:
    parser = Store.connect(f"chdb://{tmp_path / 'parser'}")
    try:
        text = cluster_ddl_text("vnqr", 28, "prod", replicated=True)
        statements = split_statements(text)
        for stmt in statements:  # ClickHouse's own parser (chdb) accepts every statement
            assert parser.query("SELECT formatQuery({q:String})", {"q": stmt})[0][0]
    finally:
        parser.close()
    assert all(" ON CLUSTER prod" in s for s in statements if s.startswith(("CREATE", "ALTER")))
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/vnqr/scans_local', '{replica}')" in text
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/all/vnqr/devices', '{replica}', updated_at)" in text
    assert "devices_local" not in text  # replicated: every node holds the registry itself
    sharded = cluster_ddl_text("vnqr", 28, "prod")
    sql = "\n".join(split_statements(sharded))  # the statements, without the script's header comments
    assert "ON CLUSTER" not in sql and "Replicated" not in sql
    assert "ENGINE = Distributed(prod, vnqr, devices_local, 0)" in sharded
    assert "ENGINE = Distributed(prod, vnqr, scans_local, sipHash64(person_key))" in sharded
    # a column change on a deployment-wide table reaches its Distributed table too; a setting only the local one
    routed = [s for _, stmts in render_migrations("vnqr", 28, "prod") for s in stmts]
    assert "ALTER TABLE vnqr.devices_local MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1" in routed
    assert not [s for s in routed if re.match(r"ALTER TABLE vnqr\.devices\b(?!_).*SETTING", s)]
