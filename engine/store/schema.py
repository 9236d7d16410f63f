"""Rendering the numbered migrations in ``engine/store/migrations/`` into DDL for one node or for a cluster.

The ``.sql`` files are written once, for both shapes; the placeholders below are what differs. Rendering is a
single regex pass over *known* placeholder names only, so ClickHouse's own macros (``{shard}``, ``{replica}``)
pass through untouched and a typo in a file fails loudly instead of reaching the server.

=====================================  ==============================  ================================================
placeholder                            single node                     cluster ``NAME``
=====================================  ==============================  ================================================
``{db}``, ``{retention_days}``         the values                      the values
``{on_cluster}``                       (nothing)                       `` ON CLUSTER NAME``
``{local:T}``                          ``T``                           ``T_local`` (the shard-local table)
``{replacing:T[:ver[:all]]}``          ``ReplacingMergeTree[(ver)]``   ``ReplicatedReplacingMergeTree('/clickhouse/
                                                                       tables/{shard}/db/T', '{replica}'[, ver])``;
                                                                       ``all`` drops ``{shard}``: one copy per node
``{distributed:T:key}`` (a statement)  dropped                         ``CREATE TABLE db.T AS db.T_local ENGINE =
                                                                       Distributed(NAME, db, T_local, key)``
``{dedup_window}``                     ``non_replicated_...window``    ``replicated_deduplication_window``
``{enum:verdict|reason|code_kind}``    ``Enum8(...)`` built from ``engine.codes.verdicts``, never a hand-kept copy
=====================================  ==============================  ================================================
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
    r"\{(db|retention_days|on_cluster|local|replacing|distributed|dedup_window|enum)(?::([^{}]*))?\}"
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


def render(template: str, database: str, retention_days: int, cluster: str | None) -> str:
    """One template with every placeholder replaced (see the module docstring for the table)."""
    _check(database, retention_days, cluster)

    def sub(m: re.Match[str]) -> str:
        name, arg = m.group(1), m.group(2) or ""
        if name == "db":
            return database
        if name == "retention_days":
            return str(retention_days)
        if name == "on_cluster":
            return f" ON CLUSTER {cluster}" if cluster else ""
        if name == "local":
            return f"{arg}_local" if cluster else arg
        if name == "dedup_window":
            setting = "replicated_deduplication_window" if cluster else "non_replicated_deduplication_window"
            return f"{setting} = {DEDUP_WINDOW}"
        if name == "enum":
            if arg not in _ENUMS:
                raise ConfigError(f"unknown enum placeholder {m.group(0)}")
            return enum8(_ENUMS[arg])
        parts = arg.split(":", 1) if name == "distributed" else arg.split(":")
        table = parts[0]
        if not _IDENT.fullmatch(table):
            raise ConfigError(f"bad table in placeholder {m.group(0)}")
        if name == "replacing":
            version = parts[1] if len(parts) > 1 and parts[1] else ""
            everywhere = len(parts) > 2 and parts[2] == "all"
            if not cluster:
                return f"ReplacingMergeTree({version})" if version else "ReplacingMergeTree"
            local = table if everywhere else f"{table}_local"
            path = f"/clickhouse/tables/{'all' if everywhere else '{shard}'}/{database}/{local}"
            return f"ReplicatedReplacingMergeTree('{path}', '{{replica}}'{', ' + version if version else ''})"
        # distributed: a whole statement that exists only on a cluster
        if len(parts) != 2:
            raise ConfigError(f"{m.group(0)} needs a sharding key")
        if not cluster:
            return ""
        return (
            f"CREATE TABLE IF NOT EXISTS {database}.{table} ON CLUSTER {cluster} AS {database}.{table}_local\n"
            f"ENGINE = Distributed({cluster}, {database}, {table}_local, {parts[1]})"
        )

    return _PLACEHOLDER.sub(sub, template)


def split_statements(sql: str) -> list[str]:
    """Statements of one file: ``--`` comment lines dropped, split on ``;`` at a line end, empties removed.

    Good enough for our own DDL (no ``;`` inside literals); a general SQL splitter would be overkill here.
    """
    lines = [ln for ln in sql.splitlines() if not ln.lstrip().startswith("--")]
    parts = re.split(r";[ \t]*(?:\n|$)", "\n".join(lines))
    return [p.strip() for p in parts if p.strip()]


def render_migrations(database: str, retention_days: int, cluster: str | None) -> list[tuple[str, list[str]]]:
    """Every migration as ``(name, statements)``, in apply order, ready to execute one statement at a time."""
    files = resources.files("engine.store.migrations")
    out: list[tuple[str, list[str]]] = []
    for name in migration_names():
        text = files.joinpath(name).read_text(encoding="utf-8")
        out.append((name.removesuffix(".sql"), split_statements(render(text, database, retention_days, cluster))))
    return out


#: Tables whose TTL carries the retention; on a cluster the TTL lives on the shard-local tables.
TTL_TABLES = ("scans", "scans_by_person", "person_by_qr", "stays")


def retention_statements(database: str, retention_days: int, cluster: str | None) -> list[str]:
    """``ALTER ... MODIFY TTL`` for every table holding scans: how a changed retention reaches existing tables."""
    return [
        render(
            f"ALTER TABLE {{db}}.{{local:{t}}}{{on_cluster}} "
            "MODIFY TTL toDateTime(scanned_at) + INTERVAL {retention_days} DAY",
            database,
            retention_days,
            cluster,
        )
        for t in TTL_TABLES
    ]


def cluster_ddl_text(database: str, retention_days: int, cluster: str) -> str:
    """The whole cluster schema as one SQL script an operator can review and run with ``clickhouse-client -mn``.

    The engine applies the same statements itself when started with ``--cluster``; printing them exists so a
    DBA can see (and pre-create) exactly what will run, which matters more on a shared cluster than speed.
    """
    if not cluster:
        raise ConfigError("cluster_ddl_text needs a cluster name")
    out = [
        f"-- vnqr engine schema for cluster {cluster}, database {database}, retention {retention_days} days.",
        "-- Needs the {shard} and {replica} macros on every node, and ClickHouse Keeper (or ZooKeeper).",
        "",
    ]
    for name, statements in render_migrations(database, retention_days, cluster):
        out.append(f"-- {name}")
        out.extend(stmt + ";\n" for stmt in statements)
        out.append(f"INSERT INTO {database}.schema_migrations (name) VALUES ('{name}');\n")
    return "\n".join(out)
