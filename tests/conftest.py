"""Shared fixtures: a fixed clock, one issuer key in a trust list, a person-key secret, the committed vectors.

Keys come from fixed seeds so failures reproduce; anything a test mutates is built fresh per test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from engine.payload import Person, key_id
from engine.trust import TrustedKey, TrustList

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
