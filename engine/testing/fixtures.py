"""Pytest fixtures for a real ClickHouse server beside the embedded store (a plugin: ``tests/conftest.py`` loads it).

* ``clickhouse_server``: one :class:`~engine.testing.clickhouse.ClickHouseServer` for the whole run (a start costs
  about a second and ~250 MB; one per test would cost minutes), stopped at the end of the session; its zone is
  ``SERVER_TIMEZONE``.
* ``clickhouse_database``: a fresh database name on that server per test, dropped afterwards, so tests sharing the
  server never see each other's tables.
* ``store_dsn``: a :class:`StoreTarget` parametrised over ``embedded`` (chdb in the test's ``tmp_path``) and
  ``server`` (the session server, a fresh database), so one test body runs against both backends the way the
  verifier tests run over both implementations. ``ENGINE_TEST_STORES=embedded`` (or ``server``) narrows the run.
"""

from __future__ import annotations

import os
import secrets
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.store.store import Store
from engine.testing.clickhouse import HOST, ClickHouseServer

STORE_KINDS = ("embedded", "server")
# The session server runs in Vietnam's zone, not the host's (UTC in CI): where a national deployment's servers
# would run, and a zone that makes any read or write depending on the server's zone instead of UTC show up.
SERVER_TIMEZONE = "Asia/Ho_Chi_Minh"


@dataclass(frozen=True)
class StoreTarget:
    """Where a test's store lives: the DSN and database to hand ``Store.connect``, and which backend it is."""

    kind: str  # "embedded" or "server"
    dsn: str
    database: str
    server: ClickHouseServer | None = None  # the running server behind ``dsn``, for restart/kill tests

    @property
    def is_server(self) -> bool:
        return self.kind == "server"

    def connect(self, **options: Any) -> Store:
        """``Store.connect`` on this target (``options`` as ``Store.connect`` takes them)."""
        return Store.connect(self.dsn, database=self.database, **options)

    def __str__(self) -> str:
        return self.dsn


def _kinds() -> list[str]:
    chosen = os.environ.get("ENGINE_TEST_STORES", ",".join(STORE_KINDS))
    kinds = [k.strip() for k in chosen.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(STORE_KINDS))
    if unknown or not kinds:
        raise pytest.UsageError(f"ENGINE_TEST_STORES must name some of {', '.join(STORE_KINDS)}, not {chosen!r}")
    return kinds


def _server_command(server: ClickHouseServer, statement: str) -> None:
    request = urllib.request.Request(f"http://{HOST}:{server.http_port}/", data=statement.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """One real ClickHouse server on loopback for the whole run. A test that stops or kills it must start it again
    (``restart()``) before it returns; the fixture restarts it for the next test if one forgot."""
    server = ClickHouseServer(tmp_path_factory.mktemp("clickhouse-server"), timezone=SERVER_TIMEZONE)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clickhouse_database(clickhouse_server: ClickHouseServer) -> Iterator[str]:
    """A database name no other test uses on the session server; dropped (with its tables) after the test."""
    if not clickhouse_server.running:
        clickhouse_server.start()
    name = f"t_{secrets.token_hex(6)}"
    try:
        yield name
    finally:
        if not clickhouse_server.running:  # a test stopped or killed it and failed before restarting it
            clickhouse_server.start()
        _server_command(clickhouse_server, f"DROP DATABASE IF EXISTS {name} SYNC")


@pytest.fixture(params=_kinds())
def store_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> StoreTarget:
    """The store backends a test runs against, with ids ``embedded`` and ``server``."""
    if request.param == "embedded":
        return StoreTarget("embedded", f"chdb://{tmp_path / 'store'}", "vnqr")
    server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
    database: str = request.getfixturevalue("clickhouse_database")
    return StoreTarget("server", server.dsn, database, server)


__all__ = ["SERVER_TIMEZONE", "STORE_KINDS", "StoreTarget", "clickhouse_database", "clickhouse_server", "store_dsn"]
