"""The deployment's person-key secret, and the check that every node holds the same one.

Person keys, link keys and the verified-code set's tags and row MACs are all derived from this one secret
(``engine.verify.contract``: ``identity_key`` and ``set_key``), so there is no second secret to distribute: the set's
MAC key is derived from it. Two nodes with different secrets hash the same person to different keys (a trace
through one misses the other's scans) and refuse each other's set rows. Each node therefore records a
*fingerprint* of its secret in the store (``deployment``, migration 0013) and refuses to start when the store
already holds another one. The fingerprint is keyed by the secret itself (HMAC-SHA256 of a fixed label), so it
reveals nothing that would help guess the secret or compute a person key, and the secret never reaches the store.

Without ``--secret-file`` a node creates ``<data_dir>/person_key.secret`` at first start, as a single node always
did; the fingerprint check applies all the same, so a second node started against the same store with a fresh
data directory is refused instead of silently splitting the deployment's people in two.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

from engine.config import Config
from engine.durable import read_or_create_private_file
from engine.errors import ConfigError, EngineError
from engine.permissions import check_private
from engine.store.store import Store

log = logging.getLogger(__name__)

FINGERPRINT_LABEL = b"VNQR-DEPLOYMENT-SECRET-FINGERPRINT-V1"
FINGERPRINT = "secret_fingerprint"
MIN_SECRET_BYTES = 16


def fingerprint(secret: bytes) -> str:
    """A keyed hash naming the secret (32 hex digits): equal for equal secrets, useless without the secret."""
    return hmac.new(secret, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:32]


def read_secret(config: Config) -> bytes:
    """The secret this node runs with: the configured file (which must exist, 0600), else the data directory's,
    created once (0600) as a single node always did. Never logged, never stored in ClickHouse."""
    path = config.secret_path
    if config.secret_configured:
        check_private(path, "deployment secret file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the deployment secret file {path}: {exc.strerror}") from None
    else:
        data = read_or_create_private_file(path, lambda: secrets.token_bytes(32))
    if len(data) < MIN_SECRET_BYTES:
        raise EngineError(f"secret file {path} is too short ({len(data)} bytes; at least {MIN_SECRET_BYTES})")
    return data


def check_fingerprint(store: Store, secret: bytes, node: str, source: str) -> str:
    """Record this secret's fingerprint if the store has none, else refuse a secret whose fingerprint differs.

    The first row written is the deployment's (``argMin`` by time): of two nodes started at once with different
    secrets on an empty store, the second to write refuses after re-reading. Returns the fingerprint.
    """
    mine = fingerprint(secret)
    recorded = _recorded(store)
    if recorded is None:
        store.insert_rows(
            "deployment", ["name", "value", "node"], ["String", "String", "String"], [[FINGERPRINT], [mine], [node]]
        )
        log.info("recorded this deployment's secret fingerprint %s… in the store (first node: %s)", mine[:8], node)
        recorded = _recorded(store)
    assert recorded is not None
    value, first_node, at = recorded
    if value != mine:
        raise ConfigError(
            f"refusing to start: this node's person-key secret ({source}, fingerprint {mine[:12]}…) is not the "
            f"deployment's: the store records fingerprint {value[:12]}… (first written by {first_node} at {at}). "
            "With another secret this node would hash every person to another key and split their traces. Give "
            "every node the deployment's secret file (--secret-file / ENGINE_SECRET_FILE), the same bytes on each"
        )
    return mine


def _recorded(store: Store) -> tuple[str, str, str] | None:
    rows = store.query(
        "SELECT argMin(value, at), argMin(node, at), toString(min(at)), count() FROM deployment "
        "WHERE name = {n:String}",
        {"n": FINGERPRINT},
    )
    if not rows or not int(rows[0][3]):
        return None
    return str(rows[0][0]), str(rows[0][1]), str(rows[0][2])
