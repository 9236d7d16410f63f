"""Shared fixtures: a fixed clock, one issuer key in a trust list, a person-key secret, the committed vectors,
and the one ``engine`` fixture that starts real in-process engines.

Keys come from fixed seeds so failures reproduce; anything a test mutates is built fresh per test. Tests that
start engines, stores or servers are marked ``system`` (``-m system`` / ``-m "not system"`` select them); both
kinds run in the default ``python3 -m pytest``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from engine.codes.payload import Person, key_id
from engine.codes.trust import TrustedKey, TrustList
from engine.testing.engines import EngineStarter, InProcessEngine

pytest_plugins = ["engine.testing.fixtures"]

VECTORS_PATH = Path(__file__).parent / "vectors" / "codes.json"
FIXED_NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 86_400


@pytest.fixture
def now() -> int:
    """A fixed 'current time' so verdicts never depend on the wall clock."""
    return FIXED_NOW


@pytest.fixture
def issuer_key() -> SigningKey:
    return SigningKey(hashlib.sha256(b"conftest:issuer").digest())


@pytest.fixture
def issuer_trusted_key(issuer_key: SigningKey, now: int) -> TrustedKey:
    public = bytes(issuer_key.verify_key)
    return TrustedKey(key_id(public), "test-issuer", public, now - 365 * DAY, now + 365 * DAY)


@pytest.fixture
def trust_list(issuer_trusted_key: TrustedKey) -> TrustList:
    """A trust list holding only ``issuer_key``, valid a year either side of ``now``."""
    return TrustList.build([issuer_trusted_key])


@pytest.fixture
def person_secret() -> bytes:
    return hashlib.sha256(b"conftest:person-secret").digest()


@pytest.fixture
def person() -> Person:
    return Person("******012345", "NGUYEN VAN AN", "1990-01-**", "PCC7F3A9D2E1B4")


@pytest.fixture(scope="session")
def code_vectors() -> dict[str, Any]:
    """``tests/vectors/codes.json`` as a dict (see tests/vectors/make_vectors.py for the layout)."""
    doc: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return doc


@pytest.fixture(scope="session")
def vectors_trust_list(code_vectors: dict[str, Any]) -> TrustList:
    return TrustList.from_json(json.dumps(code_vectors["trust_list"]).encode(), "vectors trust list")


@pytest.fixture
async def engine(tmp_path: Path, aiohttp_server: Any, request: pytest.FixtureRequest) -> Any:
    """A factory of fresh in-process engines (own data directory, one registered device): ``await engine(**cfg)``.

    A test module may set ``ENGINE_CLASS`` (a subclass of ``InProcessEngine`` with its own helpers) and
    ``ENGINE_DEFAULTS`` (config overrides for every engine it starts).
    """
    cls = getattr(request.module, "ENGINE_CLASS", InProcessEngine)
    defaults = getattr(request.module, "ENGINE_DEFAULTS", {})
    starter = EngineStarter(tmp_path, aiohttp_server, cls, **defaults)
    yield starter
    await starter.close()


#: fixtures that start a real engine, store or server: a test asking for one is a system test
SYSTEM_FIXTURES = frozenset(
    {
        "engine",
        "aiohttp_server",
        "loaded_engine",
        "live",
        "api_schema",
        "report",
        "store",
        "clickhouse_server",
        "store_dsn",
    }
)
#: names whose use in a test's own body means it starts one itself (an engine process, a store, a subprocess)
SYSTEM_NAMES = frozenset({"EngineProcess", "EngineStarter", "Store", "create_app", "subprocess", "run_engine"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``system`` every test that starts real engines, stores or servers, so the fast ones can run alone
    (``-m "not system"``) while a plain ``python3 -m pytest`` still runs everything."""
    for item in items:
        if item.get_closest_marker("system"):
            continue
        fn = getattr(item, "function", None)
        names = set(getattr(getattr(fn, "__code__", None), "co_names", ()))
        if SYSTEM_FIXTURES.intersection(getattr(item, "fixturenames", ())) or SYSTEM_NAMES & names:
            item.add_marker(pytest.mark.system)
