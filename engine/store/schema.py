"""Rendering the numbered migrations in ``engine/store/migrations/`` into DDL for one node or for a cluster.

The ``.sql`` files are written once, for every shape; the placeholders below are what differs. Rendering is a
single regex pass over *known* placeholder names only, so ClickHouse's own macros (``{shard}``, ``{replica}``)
pass through untouched and a typo in a file fails loudly instead of reaching the server. Three shapes:

* **single node** (no cluster): embedded chdb or one server;
* **sharded** (``cluster=NAME``): N shards, one replica each, no Keeper. The same statements are applied on
  *every shard* by the Store (``Store.migrate`` with ``shard_dsns``), so there is no ``ON CLUSTER``; scan tables
  are ``T_local`` MergeTrees with a ``Distributed`` table ``T`` on top on every shard. This is what runs here
  (tests/test_cluster.py);
* **replicated** (``cluster=NAME, replicated=True``): ``ReplicatedReplacingMergeTree`` and ``ON CLUSTER`` DDL,
  which need Keeper and a distributed DDL queue: rendered, parsed by ClickHouse's parser in the tests, never run
  here (clickhouse-local cannot host either; docs/cluster.md).

=====================================  ======================  ====================  ==============================
placeholder                            single node             sharded ``NAME``      replicated ``NAME``
=====================================  ======================  ====================  ==============================
``{db}``, ``{retention_days}``         the values              the values            the values
``{on_cluster}``                       (nothing)               (nothing)             `` ON CLUSTER NAME``
``{local:T}``                          ``T``                   ``T_local``           ``T_local``
``{replacing:T[:ver[:all]]}``          ``ReplacingMergeTree``  ``ReplacingMerge``    ``ReplicatedReplacingMergeTree(
                                       ``[(ver)]``             ``Tree[(ver)]``       '/clickhouse/tables/{shard}/db/
                                                                                     T', '{replica}'[, ver])``;
                                                                                     ``all`` drops ``{shard}``
``{distributed:T:key}`` (a statement)  dropped                 ``CREATE TABLE db.T   the same ``ON CLUSTER NAME``
                                                               AS db.T_local ENGINE
                                                               = Distributed(NAME,
                                                               db, T_local, key)``
``{distributed_add_column:T:col}``      dropped                 ``ALTER TABLE db.T    the same ``ON CLUSTER NAME``
(a statement)                                                  ADD COLUMN IF NOT
                                                               EXISTS col``
``{dedup_window}``                     ``non_replicated_...``  ``non_replicated_..`` ``replicated_deduplication_
                                                                                     window``
``{enum:verdict|reason|code_kind}``    ``Enum8(...)`` built from ``engine.codes.verdicts``, never a hand-kept copy
=====================================  ======================  ====================  ==============================

**Deployment-wide tables** are the ones whose engine is ``{replacing:T:ver:all}`` (devices, enrolments: one
registry per deployment). Replicated, ``all`` gives every node a full replica. Sharded, there is no replication
to copy them, so :func:`render_migrations` routes them through the cluster instead: the file's ``db.T`` becomes
the local ``db.T_local`` on every shard plus a ``Distributed(NAME, db, T_local, 0)`` named ``db.T``, whose
constant sharding key puts every row on the cluster's first shard (the *registry shard*), and every node reads
and writes ``db.T`` as before. Column changes (``ALTER TABLE db.T ADD|DROP|MODIFY COLUMN``) are applied to both,
any other ``ALTER`` to the local table only. Migrations written for the other shapes need nothing new.
``schema_migrations`` is the exception: each shard records what was applied on it, so it stays local.
"""

from __future__ import annotations

import re
from enum import IntEnum
from importlib import resources

from engine.codes.verdicts import CodeKind, Reason, Verdict
from engine.errors import ConfigError

#: Blocks remembered per table for insert deduplication. A WAL batch replayed after a crash must still be in
#: the window: the drain has at most one insert in flight, so even a small window would do; 10 000 leaves room
#: for other writers (CLI imports) without costing more than a few MB of ZooKeeper/Keeper or part metadata.
DEDUP_WINDOW = 10_000

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDER = re.compile(
    r"\{(db|retention_days|on_cluster|local|replacing|distributed_add_column|distributed|dedup_window|enum)"
    r"(?::([^{}]*))?\}"
)
_ENUMS: dict[str, type[IntEnum]] = {"verdict": Verdict, "reason": Reason, "code_kind": CodeKind}
_MIGRATION_FILE = re.compile(r"\d{4}_[a-z0-9_]+\.sql")


def enum8(kind: type[IntEnum]) -> str:
    """``Enum8('ok' = 0, ...)`` for one of the verdict enums: the stored numbers are the IntEnum values."""
    return "Enum8(" + ", ".join(f"'{m.name.lower()}' = {int(m.value)}" for m in kind) + ")"


def migration_names() -> list[str]:
    """The migration files in apply order (their four-digit prefix)."""
    files = resources.files("engine.store.migrations")
    return sorted(f.name for f in files.iterdir() if _MIGRATION_FILE.fullmatch(f.name))


def _check(database: str, retention_days: int, cluster: str | None) -> None:
    if not _IDENT.fullmatch(database):
        raise ConfigError(f"database name {database!r} must be an identifier (letters, digits, _)")
    if cluster is not None and not _IDENT.fullmatch(cluster):
        raise ConfigError(f"cluster name {cluster!r} must be an identifier (letters, digits, _)")
    if not isinstance(retention_days, int) or not 1 <= retention_days <= 3650:
        raise ConfigError(f"retention_days must be an integer from 1 to 3650, not {retention_days!r}")


def render(template: str, database: str, retention_days: int, cluster: str | None, *, replicated: bool = False) -> str:
    """One template with every placeholder replaced (see the module docstring for the table)."""
    _check(database, retention_days, cluster)
    replicated = bool(cluster) and replicated

    def sub(m: re.Match[str]) -> str:
        name, arg = m.group(1), m.group(2) or ""
        if name == "db":
            return database
        if name == "retention_days":
            return str(retention_days)
        if name == "on_cluster":
            return f" ON CLUSTER {cluster}" if replicated else ""
        if name == "local":
            return f"{arg}_local" if cluster else arg
        if name == "dedup_window":
            setting = "replicated_deduplication_window" if replicated else "non_replicated_deduplication_window"
            return f"{setting} = {DEDUP_WINDOW}"
        if name == "enum":
            if arg not in _ENUMS:
                raise ConfigError(f"unknown enum placeholder {m.group(0)}")
            return enum8(_ENUMS[arg])
        parts = arg.split(":", 1) if name.startswith("distributed") else arg.split(":")
        table = parts[0]
        if not _IDENT.fullmatch(table):
            raise ConfigError(f"bad table in placeholder {m.group(0)}")
        if name == "replacing":
            version = parts[1] if len(parts) > 1 and parts[1] else ""
            everywhere = len(parts) > 2 and parts[2] == "all"
            if not replicated:
                return f"ReplacingMergeTree({version})" if version else "ReplacingMergeTree"
            local = table if everywhere else f"{table}_local"
            path = f"/clickhouse/tables/{'all' if everywhere else '{shard}'}/{database}/{local}"
            return f"ReplicatedReplacingMergeTree('{path}', '{{replica}}'{', ' + version if version else ''})"
        if name == "distributed_add_column":
            # the Distributed table on top of T_local has T_local's columns only if told of each new one
            if len(parts) != 2:
                raise ConfigError(f"{m.group(0)} needs a column definition")
            if not cluster:
                return ""
            on_cluster = f" ON CLUSTER {cluster}" if replicated else ""
            return f"ALTER TABLE {database}.{table}{on_cluster} ADD COLUMN IF NOT EXISTS {parts[1]}"
        # distributed: a whole statement that exists only on a cluster
        if len(parts) != 2:
            raise ConfigError(f"{m.group(0)} needs a sharding key")
        if not cluster:
            return ""
        return distributed_statement(database, table, cluster, parts[1], replicated=replicated)

    return _PLACEHOLDER.sub(sub, template)


def split_statements(sql: str) -> list[str]:
    """Statements of one file: ``--`` comment lines dropped, split on ``;`` at a line end, empties removed.

    Good enough for our own DDL (no ``;`` inside literals); a general SQL splitter would be overkill here.
    """
    lines = [ln for ln in sql.splitlines() if not ln.lstrip().startswith("--")]
    parts = re.split(r";[ \t]*(?:\n|$)", "\n".join(lines))
    return [p.strip() for p in parts if p.strip()]


def distributed_statement(database: str, table: str, cluster: str, key: str, *, replicated: bool) -> str:
    """``CREATE TABLE db.T AS db.T_local ENGINE = Distributed(...)``; ``ON CLUSTER`` only when replicated."""
    on_cluster = f" ON CLUSTER {cluster}" if replicated else ""
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{table}{on_cluster} AS {database}.{table}_local\n"
        f"ENGINE = Distributed({cluster}, {database}, {table}_local, {key})"
    )


#: The bookkeeping table: per shard on a sharded cluster (each shard records what was applied on it).
BOOKKEEPING = "schema_migrations"
#: The sharding key of a deployment-wide table on a sharded cluster: a constant, so every row is on shard 1.
REGISTRY_SHARD_KEY = "0"
_SHARED_MARK = re.compile(r"\{replacing:([A-Za-z_][A-Za-z0-9_]*):[^:{}]*:all\}")
_COLUMN_CHANGE = re.compile(r"\b(ADD|DROP|MODIFY|RENAME|COMMENT|CLEAR)\s+COLUMN\b", re.IGNORECASE)


def _templates() -> list[tuple[str, str]]:
    files = resources.files("engine.store.migrations")
    return [(name, files.joinpath(name).read_text(encoding="utf-8")) for name in migration_names()]


def deployment_tables() -> frozenset[str]:
    """Tables marked ``{replacing:T:ver:all}`` in any migration: one registry per deployment (not the bookkeeping)."""
    found = {m.group(1) for _, text in _templates() for m in _SHARED_MARK.finditer(text)}
    return frozenset(found - {BOOKKEEPING})


def _route_shared(statement: str, database: str, cluster: str, shared: frozenset[str]) -> list[str]:
    """A sharded cluster's version of one statement on a deployment-wide table (see the module docstring)."""
    for table in shared:
        name = re.escape(f"{database}.{table}")
        create = re.match(rf"(CREATE TABLE IF NOT EXISTS\s+){name}\b(?!_)", statement)
        if create:
            local = statement[: create.end(1)] + f"{database}.{table}_local" + statement[create.end() :]
            return [local, distributed_statement(database, table, cluster, REGISTRY_SHARD_KEY, replicated=False)]
        alter = re.match(rf"(ALTER TABLE\s+){name}\b(?!_)", statement)
        if alter:
            local = statement[: alter.end(1)] + f"{database}.{table}_local" + statement[alter.end() :]
            # the Distributed table has the columns of the local one only if it is told about every change
            return [local, statement] if _COLUMN_CHANGE.search(statement) else [local]
    return [statement]


def render_migrations(
    database: str, retention_days: int, cluster: str | None, *, replicated: bool = False
) -> list[tuple[str, list[str]]]:
    """Every migration as ``(name, statements)``, in apply order, ready to execute one statement at a time."""
    sharded = bool(cluster) and not replicated
    shared = deployment_tables() if sharded else frozenset()
    out: list[tuple[str, list[str]]] = []
    for name, text in _templates():
        statements = split_statements(render(text, database, retention_days, cluster, replicated=replicated))
        if sharded:
            assert cluster is not None
            statements = [routed for st in statements for routed in _route_shared(st, database, cluster, shared)]
        out.append((name.removesuffix(".sql"), statements))
    return out


#: Tables whose TTL carries the retention; on a cluster the TTL lives on the shard-local tables.
TTL_TABLES = ("scans", "scans_by_person", "person_by_qr", "stays", "identity_links")


def retention_statements(
    database: str, retention_days: int, cluster: str | None, *, replicated: bool = False
) -> list[str]:
    """``ALTER ... MODIFY TTL`` for every table holding scans: how a changed retention reaches existing tables."""
    return [
        render(
            f"ALTER TABLE {{db}}.{{local:{t}}}{{on_cluster}} "
            "MODIFY TTL toDateTime(scanned_at) + INTERVAL {retention_days} DAY",
            database,
            retention_days,
            cluster,
            replicated=replicated,
        )
        for t in TTL_TABLES
    ]


def cluster_ddl_text(database: str, retention_days: int, cluster: str, *, replicated: bool = False) -> str:
    """The whole cluster schema as one SQL script an operator can review and run with ``clickhouse-client -mn``.

    The engine applies the same statements itself when started with ``--cluster``; printing them exists so a
    DBA can see (and pre-create) exactly what will run, which matters more on a shared cluster than speed.
    """
    if not cluster:
        raise ConfigError("cluster_ddl_text needs a cluster name")
    if replicated:
        how = [
            "-- Replicated: ReplicatedMergeTree + ON CLUSTER. Run once, on any node.",
            "-- Needs the {shard} and {replica} macros on every node, and ClickHouse Keeper (or ZooKeeper).",
        ]
    else:
        how = [
            "-- Sharded, not replicated: run the whole script on EVERY shard of the cluster (no ON CLUSTER, no",
            f"-- Keeper). Deployment-wide tables ({', '.join(sorted(deployment_tables()))}) keep their rows on the",
            "-- first shard. The engine applies it itself on every shard named by --shard-dsns.",
        ]
    out = [
        f"-- vnqr engine schema for cluster {cluster}, database {database}, retention {retention_days} days.",
        *how,
        "",
    ]
    for name, statements in render_migrations(database, retention_days, cluster, replicated=replicated):
        out.append(f"-- {name}")
        out.extend(stmt + ";\n" for stmt in statements)
        out.append(f"INSERT INTO {database}.schema_migrations (name) VALUES ('{name}');\n")
    return "\n".join(out)
