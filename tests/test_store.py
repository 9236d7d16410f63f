"""The store against a real embedded ClickHouse (chdb) and a real ClickHouse server, and the cluster DDL text.

Every test that takes ``store`` or ``store_dsn`` runs twice, ids ``embedded`` and ``server``
(``engine.testing.fixtures``): chdb in the test's own temporary directory (chdb opens one data directory per process
at a time, so each test gets its own and the fixture always closes it), and the session's ClickHouse server with a
fresh database per test. The differences the server runs found are in docs/cluster.md ("Embedded vs server").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from engine.codes.verdicts import CodeKind, Reason, Verdict
from engine.errors import ConfigError, StoreError
from engine.store.columns import TABLE_COLUMNS
from engine.store.schema import cluster_ddl_text, enum8, migration_names, render_migrations, split_statements
from engine.store.store import SCAN_COLUMNS, Store
from engine.testing.fixtures import StoreTarget

DAY_MS = 86_400_000
NOW_MS = int(time.time() * 1000)


@pytest.fixture
def store(store_dsn: StoreTarget) -> Iterator[Store]:
    s = store_dsn.connect()
    try:
        s.migrate()
        yield s
    finally:
        s.close()


def scans(n: int, *, at_ms: int = NOW_MS, step_ms: int = 1000, venue: str = "venue-1", seed: int = 0) -> dict[str, Any]:
    """A batch shaped the way the drain builds one: uuid.UUID ids, labels, numpy datetimes, 16-byte keys."""
    rng = np.random.default_rng(seed)
    scanned = np.arange(n, dtype=np.int64) * step_ms + at_ms
    return {
        "scan_id": [uuid.UUID(bytes=rng.bytes(16)) for _ in range(n)],
        "device_id": ["scanner-1"] * n,
        "venue_id": [venue] * n,
        "direction": ["in" if i % 2 == 0 else "out" for i in range(n)],
        "scanned_at": scanned.astype("datetime64[ms]"),
        "received_at": (scanned + 250).astype("datetime64[ms]"),
        "verdict": [Verdict(i % len(Verdict)).label for i in range(n)],
        "reason": [Reason.NONE.label] * n,
        "code_kind": [CodeKind.SIGNED.label] * n,
        "person_key": [rng.bytes(15) + b"\x00" for _ in range(n)],  # a trailing NUL must survive
        "qr_id": [f"QID{i:010d}" for i in range(n)],
        "key_id": ["AAAAAAAAAAA"] * n,
        "issuer": ["pc-covid"] * n,
        "code_iat": (scanned // 1000 - 3600).astype("datetime64[s]"),
        "code_exp": (scanned // 1000 + 86_400).astype("datetime64[s]"),
    }


def count(store: Store, table: str, final: bool = False) -> int:
    return int(store.query(f"SELECT count() FROM {table}{' FINAL' if final else ''}")[0][0])


# -- schema and migrations ----------------------------------------------------------------------------------
def test_migrate_applies_every_file_once_then_is_a_noop(store_dsn: StoreTarget) -> None:
    s = store_dsn.connect()
    try:
        first = s.migrate()
        assert first == [name.removesuffix(".sql") for name in migration_names()]
        assert s.migrate() == []
        tables = {r[0] for r in s.query(f"SHOW TABLES FROM {s.database}")}
        assert {"scans", "scans_by_person", "scans_by_person_mv", "devices", "schema_migrations"} <= tables
        assert count(s, f"{s.database}.schema_migrations") == len(first)
    finally:
        s.close()


def test_every_table_the_engine_writes_fsyncs_its_new_parts(store: Store) -> None:
    """The WAL forgets a batch once its insert returns, and revocations live only in ``devices``: a MergeTree
    table without these settings could lose rows to a power cut that the engine already counts as safe."""
    rows = store.query(
        "SELECT name, create_table_query FROM system.tables WHERE database = {db:String} AND engine LIKE '%MergeTree'",
        {"db": store.database},
    )
    written = {name: ddl for name, ddl in rows if name != "schema_migrations"}
    assert {"scans", "scans_by_person", "person_by_qr", "devices"} <= set(written)
    for name, ddl in written.items():
        assert "fsync_after_insert = 1" in ddl and "fsync_part_directory = 1" in ddl, name


def test_enum_types_come_from_the_verdicts_module(store: Store) -> None:
    types = {r[0]: r[1] for r in store.query("DESCRIBE TABLE scans")}
    assert tuple(types) == TABLE_COLUMNS
    assert types["verdict"] == enum8(Verdict)
    assert types["reason"] == enum8(Reason)
    assert types["code_kind"] == enum8(CodeKind)
    assert types["person_key"] == "FixedString(16)"


def test_changed_retention_is_applied_on_start_and_expires_rows(store_dsn: StoreTarget) -> None:
    s = store_dsn.connect(retention_days=28)
    try:
        s.migrate()
        s.insert_scans(scans(5, at_ms=NOW_MS - 10 * DAY_MS))
    finally:
        s.close()
    s = store_dsn.connect(retention_days=7)
    try:
        assert s.migrate() == ["retention_days=7"]
        assert s.migrate() == []
        for table in ("scans", "scans_by_person"):
            ddl = s.query(
                "SELECT create_table_query FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                {"db": s.database, "t": table},
            )
            assert "toIntervalDay(7)" in ddl[0][0]
            s.command(f"OPTIMIZE TABLE {table} FINAL")
            assert count(s, table) == 0
    finally:
        s.close()


# -- inserts ------------------------------------------------------------------------------------------------
def test_insert_and_read_back_every_column(store: Store) -> None:
    batch = scans(12)
    assert store.insert_scans(batch) == 12
    cols, rows = store.query_columns("SELECT * FROM scans ORDER BY qr_id")
    assert tuple(cols) == TABLE_COLUMNS
    by_id = {r[0]: dict(zip(cols, r, strict=True)) for r in rows}
    for i, sid in enumerate(batch["scan_id"]):
        got = by_id[sid]
        assert got["verdict"] == Verdict(i % len(Verdict)).label
        assert got["direction"] == batch["direction"][i]
        assert got["person_key"] == batch["person_key"][i] and len(got["person_key"]) == 16
        want_ms = int(batch["scanned_at"][i].astype(np.int64))
        assert got["scanned_at"] == datetime.fromtimestamp(want_ms / 1000, UTC)
        assert got["received_at"] - got["scanned_at"] == timedelta(milliseconds=250)
        assert got["code_exp"].timestamp() == int(batch["code_exp"][i].astype(np.int64))
        assert (got["qr_id"], got["key_id"], got["issuer"]) == (f"QID{i:010d}", "AAAAAAAAAAA", "pc-covid")
    assert count(store, "scans_by_person") == 12  # the materialized view followed


def test_scan_id_forms_store_the_same_uuid(store: Store) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    for i, form in enumerate(
        (
            ids,
            [u.bytes for u in ids],
            np.frombuffer(b"".join(u.bytes for u in ids), dtype=np.uint8).reshape(3, 16),
        )
    ):
        batch = scans(3, venue=f"form-{i}")
        batch["scan_id"] = form
        store.insert_scans(batch)
    for i in range(3):
        got = [
            r[0]
            for r in store.query(
                "SELECT scan_id FROM scans WHERE venue_id = {v:String} ORDER BY scanned_at", {"v": f"form-{i}"}
            )
        ]
        assert got == ids


def test_integer_codes_and_python_datetimes_are_accepted(store: Store) -> None:
    batch = scans(3)
    batch["verdict"] = np.array([0, 5, 9], dtype=np.uint8)
    batch["reason"] = [Reason.NONE, Reason.NONE, Reason.TOO_LONG]
    at = datetime.fromtimestamp(NOW_MS // 60_000 * 60, UTC)  # recent: older rows would be TTL-merged away
    batch["scanned_at"] = [at, at.replace(tzinfo=None), at + timedelta(milliseconds=5)]  # naive means UTC
    batch["code_exp"] = [10**10] * 3  # beyond 2106: clamped, not wrapped to 1970
    store.insert_scans(batch)
    rows = store.query(
        "SELECT verdict, reason, scanned_at, toUnixTimestamp(code_exp) FROM scans ORDER BY scanned_at, verdict"
    )
    assert [r[0] for r in rows] == ["ok", "expired", "malformed"]
    assert [r[1] for r in rows] == ["none", "none", "too_long"]
    assert [r[2] for r in rows] == [at, at, at + timedelta(milliseconds=5)]
    assert {r[3] for r in rows} == {2**32 - 1}


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("verdict", ["ok", "okay", "ok"], "unknown value 'okay'"),
        ("verdict", np.array([0, 42, 0]), "unknown code 42"),
        ("person_key", [b"x" * 16, b"short", b"y" * 16], "16 bytes"),
        ("scan_id", [1.5, 2.5, 3.5], "scan_id must be"),
        ("scanned_at", ["2026-01-01", "x", "y"], "scanned_at must hold"),
    ],
)
def test_bad_columns_raise_store_error_and_insert_nothing(store: Store, column: str, value: Any, message: str) -> None:
    batch = scans(3)
    batch[column] = value
    with pytest.raises(StoreError, match=message):
        store.insert_scans(batch)
    assert count(store, "scans") == 0


def test_missing_or_ragged_columns_raise(store: Store) -> None:
    batch = scans(3)
    del batch["issuer"]
    with pytest.raises(StoreError, match="missing"):
        store.insert_scans(batch)
    batch = scans(3)
    batch["qr_id"] = ["a"]
    with pytest.raises(StoreError, match="differ in length"):
        store.insert_scans(batch)
    assert store.insert_scans({c: [] for c in SCAN_COLUMNS}) == 0


def test_replayed_batch_with_the_same_dedup_token_is_stored_once(store: Store) -> None:
    # spans Monday 00:00 (partitions are weekly), so the block is split over two partitions: the replay must
    # still be dropped whole. 1970-01-01 was a Thursday, so day 4 was a Monday.
    today = NOW_MS // DAY_MS
    monday = (today - (today - 4) % 7) * DAY_MS
    batch = scans(40, at_ms=monday - 20_000, step_ms=1000)
    assert store.insert_scans(batch, dedup_token="wal-1-4-abcd") == 40
    assert store.insert_scans(batch, dedup_token="wal-1-4-abcd") == 40
    assert count(store, "scans") == 40
    assert count(store, "scans_by_person") == 40
    assert int(store.query("SELECT uniqExact(_partition_id) FROM scans")[0][0]) == 2
    # a different token is a different batch: both land (and would then collapse, next test)
    store.insert_scans(batch, dedup_token="wal-5-9-ef01")
    assert count(store, "scans") == 80


def test_retried_scan_id_collapses_under_final(store: Store) -> None:
    batch = scans(10)
    store.insert_scans(batch)
    retry = {k: v[:4] for k, v in batch.items()}
    retry["received_at"] = retry["received_at"] + np.timedelta64(5000, "ms")
    store.insert_scans(retry)
    assert count(store, "scans") == 14
    assert count(store, "scans", final=True) == 10
    assert count(store, "scans_by_person", final=True) == 10
    store.command("OPTIMIZE TABLE scans FINAL")
    assert count(store, "scans") == 10


def test_rows_older_than_retention_are_gone_after_optimize(store: Store) -> None:
    store.insert_scans(scans(6, at_ms=NOW_MS - 40 * DAY_MS, seed=1))  # 40 days old: past the 28-day TTL
    store.insert_scans(scans(4, at_ms=NOW_MS - 27 * DAY_MS, seed=2))  # still inside it
    store.insert_scans(scans(3, seed=3))
    for table in ("scans", "scans_by_person"):
        store.command(f"OPTIMIZE TABLE {table} FINAL")
        assert count(store, table) == 7
        oldest = store.query(f"SELECT min(scanned_at) FROM {table}")[0][0]
        assert oldest > datetime.now(UTC) - timedelta(days=28)


# -- devices ------------------------------------------------------------------------------------------------
def test_devices_upsert_revoke_and_list_latest(store: Store) -> None:
    key_a, key_b = os.urandom(32), os.urandom(32)
    store.upsert_device("dev-a", key_a, label="gate 1")
    store.upsert_device("dev-b", key_b)
    first = {d.device_id: d for d in store.devices()}
    store.upsert_device("dev-a", key_a, revoked=True, label="gate 1 (lost)")
    devices = {d.device_id: d for d in store.devices()}
    assert sorted(devices) == ["dev-a", "dev-b"]
    a = devices["dev-a"]
    assert (a.public_key, a.revoked, a.label) == (key_a, True, "gate 1 (lost)")
    assert a.registered_at == first["dev-a"].registered_at
    assert a.updated_at > first["dev-a"].updated_at
    assert devices["dev-b"].revoked is False and devices["dev-b"].public_key == key_b
    assert count(store, "devices FINAL") == 2


# -- queries, stats, health ---------------------------------------------------------------------------------
def test_query_parameters_are_bound_not_pasted(store: Store) -> None:
    store.insert_scans(scans(3, venue="cafe"))
    assert store.query("SELECT count() FROM scans WHERE venue_id = {v:String}", {"v": "cafe"}) == [(3,)]
    assert store.query("SELECT count() FROM scans WHERE venue_id = {v:String}", {"v": "x' OR '1'='1"}) == [(0,)]
    cols, rows = store.query_columns("SELECT venue_id AS v, count() AS n FROM scans GROUP BY v")
    assert cols == ["v", "n"] and rows == [("cafe", 3)]
    with pytest.raises(StoreError, match="query failed"):
        store.query("SELECT no_such_column FROM scans")


def test_stats_are_json_ready(store: Store) -> None:
    store.insert_scans(scans(20, venue="market"))
    store.upsert_device("dev-a", os.urandom(32), revoked=True)
    doc = orjson.loads(orjson.dumps(store.stats()))
    assert doc["rows"] == 20 and doc["rows_per_day"][0]["rows"] >= 1
    assert doc["verdicts"]["ok"] == 2 and sum(doc["verdicts"].values()) == 20
    assert {r["verdict"] for r in doc["rejects"]} == {v.label for v in Verdict} - {"ok"}
    assert doc["top_venues_24h"][0] == {"venue_id": "market", "rows": 20, "people": 20}
    assert (doc["devices"], doc["devices_revoked"]) == (1, 1)


def test_ping_and_close(store_dsn: StoreTarget) -> None:
    s = store_dsn.connect()
    assert s.is_embedded == (store_dsn.kind == "embedded") and s.ping()
    s.close()
    s.close()
    assert not s.ping()
    with pytest.raises(StoreError, match="closed"):
        s.query("SELECT 1")


# -- connecting ---------------------------------------------------------------------------------------------
def test_unreachable_server_raises_store_error() -> None:
    with pytest.raises(StoreError, match=re.escape("cannot open the store http://u:***@127.0.0.1:1")):
        Store.connect("http://u:secret@127.0.0.1:1", connect_timeout=0.5)


def test_bad_dsn_and_names_are_refused() -> None:
    with pytest.raises(StoreError, match="must start with"):
        Store.connect("postgres://localhost/x")
    with pytest.raises(ConfigError):
        Store.connect("chdb:///tmp/never-created", database="vnqr; DROP")


def test_one_directory_per_process_at_a_time(tmp_path: Path) -> None:
    a = Store.connect(f"chdb://{tmp_path / 'a'}")
    try:
        with pytest.raises(StoreError, match="cannot open the store"):
            Store.connect(f"chdb://{tmp_path / 'b'}")
        same = Store.connect(f"chdb://{tmp_path / 'a'}")  # a second Store on the same directory is allowed
        same.close()
    finally:
        a.close()
    b = Store.connect(f"chdb://{tmp_path / 'b'}")  # after close, another directory opens fine
    try:
        assert b.ping()
    finally:
        b.close()


def test_directory_held_by_another_process_names_its_pid(tmp_path: Path) -> None:
    path = tmp_path / "store"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys
                from engine.store.store import Store
                s = Store.connect({f"chdb://{path}"!r})
                print("open", flush=True)
                sys.stdin.read()
                s.close()
            """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match=rf"in use by another process \(PID {holder.pid}\)"):
            Store.connect(f"chdb://{path}")
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


# -- cluster DDL --------------------------------------------------------------------------------------------
def test_cluster_ddl_parses_and_has_the_cluster_shape(store: Store) -> None:
    text = cluster_ddl_text("vnqr", 28, "prod", replicated=True)
    statements = split_statements(text)
    for stmt in statements:  # the real ClickHouse parser (chdb) accepts every statement
        assert store.query("SELECT formatQuery({q:String})", {"q": stmt})[0][0]
    ddl = [s for s in statements if s.startswith("CREATE")]
    assert ddl and all(" ON CLUSTER prod" in s for s in ddl)
    # only ClickHouse's own macros are left in braces
    assert set(re.findall(r"\{(\w+)\}", text)) == {"shard", "replica"}
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/vnqr/scans_local', '{replica}')" in text
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/vnqr/scans_by_person_local', '{replica}')" in text
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/all/vnqr/devices', '{replica}', updated_at)" in text
    assert "ENGINE = Distributed(prod, vnqr, scans_local, sipHash64(person_key))" in text
    assert "ENGINE = Distributed(prod, vnqr, scans_by_person_local, sipHash64(person_key))" in text
    assert "TO vnqr.scans_by_person_local" in text and "FROM vnqr.scans_local" in text
    assert "replicated_deduplication_window = 10000" in text and "non_replicated" not in text
    assert text.count("INSERT INTO vnqr.schema_migrations") == len(migration_names())


def test_single_node_ddl_has_no_cluster_parts() -> None:
    text = "\n".join(s for _, stmts in render_migrations("vnqr", 28, None) for s in stmts)
    assert "ON CLUSTER" not in text and "Replicated" not in text and "Distributed" not in text
    assert "_local" not in text and "{" not in text
    assert "non_replicated_deduplication_window = 10000" in text
    with pytest.raises(ConfigError):
        cluster_ddl_text("vnqr", 28, "")
    with pytest.raises(ConfigError):
        render_migrations("vnqr", 0, None)


# -- scan identity (device_id, scan_id): issue 12 -----------------------------------------------------------
def test_same_scan_id_from_two_devices_is_two_scans(store: Store) -> None:
    """A device reusing another's scan ids must not collapse the other's rows away (the key holds the device)."""
    first = scans(6)
    store.insert_scans(first)
    other = {**first, "device_id": ["scanner-2"] * 6, "qr_id": [f"QIDOTHER{i:04d}" for i in range(6)]}
    store.insert_scans(other)
    for table in ("scans", "scans_by_person"):
        store.command(f"OPTIMIZE TABLE {table} FINAL")
        assert count(store, table, final=True) == 12, table
    pairs = store.query("SELECT device_id, scan_device, count() FROM scans FINAL GROUP BY 1, 2 ORDER BY 1")
    assert [tuple(p) for p in pairs] == [("scanner-1", "scanner-1", 6), ("scanner-2", "scanner-2", 6)]


def test_rows_stored_before_0008_stay_readable_and_keep_their_dedup(store_dsn: StoreTarget) -> None:
    """An existing deployment (every migration but 0008 applied, rows in it) upgrades in place."""
    s = store_dsn.connect()
    try:
        for name, statements in render_migrations(s.database, s.retention_days, None):
            if name == "0008_scan_identity_device_venues":
                continue
            for stmt in statements:
                s.command(stmt)
            s.command(f"INSERT INTO {s.database}.schema_migrations (name) VALUES ('{name}')")
        old = scans(4)
        cols = ", ".join(SCAN_COLUMNS)
        for i in range(4):
            s.command(
                f"INSERT INTO {s.database}.scans ({cols}) VALUES ('{old['scan_id'][i]}', 'scanner-1', 'venue-1', 'in', "
                f"now64(3), now64(3), '{Verdict(0).label}', '{Reason.NONE.label}', '{CodeKind.SIGNED.label}', "
                f"unhex('{old['person_key'][i].hex()}'), 'QIDOLD{i}', 'AAAAAAAAAAA', 'pc-covid', now(), now())"
            )
        s.command(
            f"INSERT INTO {s.database}.devices (device_id, public_key, label, revoked, registered_at, updated_at) "
            "VALUES ('kiosk-old', 'k', 'registered before 0008', 0, now64(3), now64(3))"
        )
        assert s.migrate() == ["0008_scan_identity_device_venues"]
        (device,) = s.devices()  # a device registered before binding existed reads as unbound
        assert (device.device_id, device.label, device.venues) == ("kiosk-old", "registered before 0008", ())
        assert s.upsert_device("kiosk-old", b"k", label=device.label) == ()  # an update keeps it unbound
        assert s.upsert_device("kiosk-old", b"k", venues=["v-1"]) == ("v-1",)
        assert s.upsert_device("kiosk-old", b"k", revoked=True) == ("v-1",)  # a revoke keeps the venues
        assert [(d.venues, d.revoked) for d in s.devices()] == [(("v-1",), True)]
        rows = s.query("SELECT toString(scan_id), device_id, scan_device, qr_id FROM scans FINAL ORDER BY qr_id")
        assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
            (str(old["scan_id"][i]), "scanner-1", "", f"QIDOLD{i}") for i in range(4)
        ]
        assert count(s, "scans_by_person", final=True) == 4
        s.insert_scans(scans(3, seed=7))  # the replaced view feeds scans_by_person again, with the device key
        assert count(s, "scans_by_person", final=True) == 7
        key = s.query("SELECT sorting_key FROM system.tables WHERE database = currentDatabase() AND name = 'scans'")
        assert key[0][0].endswith("scan_id, scan_device")
    finally:
        s.close()
