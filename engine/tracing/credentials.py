"""Tracing credentials: bearer tokens of role "tracer", kept apart from scanner devices and the admin token.

Contact tracing reads where people have been, so it gets its own credential kind: a scanner device proves
it may *write* scans, an operator runs the engine, and neither may read movements. Tokens are shown once
when created (``python -m engine tracer-add NAME --valid-days N``) and only their SHA-256 is stored, in
``<data_dir>/tracers.json`` (0600): a copy of the file does not let anyone trace. Every token expires (90 days
by default, at most 366), and ``tracer-revoke`` ends one at once; a revoked tracer stays in the file, so the
names in old audit records keep meaning someone. Entries written before expiry existed expire 90 days after
their creation. The engine re-reads the file when it changes, so adding or revoking works on the next request.

Everything about who the tracers are sits behind :class:`CredentialRegistry`. On a ClickHouse server (a
deployment that may have several nodes) the registry is the store's ``credentials`` table, one per deployment
(:class:`StoredCredentials`): ``tracer-add`` and ``tracer-revoke`` write there and every node re-reads it every
``--registry-poll-s``; the data directory's file is still read on its own node, the store deciding any name it
knows. The operators' admin tokens of a deployment are the same kind of record (kind ``admin``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from engine.durable import replace_file
from engine.errors import AuthError, ConfigError, NotFoundError
from engine.permissions import check_private_if_present

TRACERS_FILE = "tracers.json"
DEFAULT_VALID_DAYS = 90
MAX_VALID_DAYS = 366
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


@dataclass(frozen=True)
class Tracer:
    name: str
    token_sha256: str
    created: int
    expires: int
    revoked: int = 0  # Unix time of revocation, 0 while valid

    def state(self, now: float) -> str:
        if self.revoked:
            return "revoked"
        return "expired" if now >= self.expires else "active"


class TracerRefused(AuthError):
    """A tracer token that is unknown, expired or revoked; ``reason`` is the metric label."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class CredentialRegistry:
    """Bearer tokens of one kind (tracers, or operators' admin tokens) and the rules they are checked by; where
    they are kept is a subclass's business: a data directory's file (:class:`TracerRegistry`) or the deployment's
    store (:class:`StoredCredentials`)."""

    kind = "tracer"

    def __init__(self) -> None:
        self._tracers: dict[str, Tracer] = {}

    def tracers(self) -> list[Tracer]:
        self._refresh()
        return sorted(self._tracers.values(), key=lambda t: t.name)

    def authenticate(self, token: str, now: float | None = None) -> Tracer:
        """The tracer this token belongs to, compared in constant time against every stored digest.

        Raises :class:`TracerRefused` for an unknown, expired or revoked token. Saying "expired" or "revoked"
        tells only the holder of a once-valid token something they can act on.
        """
        self._refresh()
        now = time.time() if now is None else now
        digest = token_digest(token)
        found: Tracer | None = None
        for tracer in self._tracers.values():
            if hmac.compare_digest(digest, tracer.token_sha256):
                found = tracer
        if found is None:
            raise TracerRefused(f"{self.kind} token is not valid", "unknown")
        state = found.state(now)
        if state == "revoked":
            raise TracerRefused(f"{self.kind} {found.name!r} was revoked", "revoked")
        if state == "expired":
            raise TracerRefused(f"{self.kind} token of {found.name!r} has expired: ask for a new one", "expired")
        return found

    def add(self, name: str, valid_days: float = DEFAULT_VALID_DAYS, now: float | None = None) -> str:
        """Create a credential and return its token; the token itself is never written anywhere."""
        if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
            raise ConfigError(f"{self.kind} name must be 1-64 characters of letters, digits, '.', '_', '-', '@'")
        if not 0 < valid_days <= MAX_VALID_DAYS:
            raise ConfigError(f"a {self.kind} token is valid for 0 < days <= {MAX_VALID_DAYS}, not {valid_days}")
        self._refresh()
        existing = self._tracers.get(name)
        if existing is not None and existing.state(time.time()) == "active":
            raise ConfigError(
                f"{self.kind} {name!r} already exists and is active: revoke it first to issue a new token"
            )
        created = int(time.time() if now is None else now)
        token = ("trc_" if self.kind == "tracer" else "adm_") + secrets.token_urlsafe(32)
        tracer = Tracer(name, token_digest(token), created, created + int(valid_days * 86_400))
        self._tracers[name] = tracer
        self._write(tracer)
        return token

    def revoke(self, name: str, now: float | None = None) -> Tracer:
        """End a credential's token at once (kept, marked revoked, so old audit records still name someone)."""
        self._refresh()
        tracer = self._tracers.get(name)
        if tracer is None:
            raise NotFoundError(f"no {self.kind} {name!r}")
        if not tracer.revoked:
            tracer = replace(tracer, revoked=int(time.time() if now is None else now))
            self._tracers[name] = tracer
            self._write(tracer)
        return tracer

    def _refresh(self) -> None:
        raise NotImplementedError

    def _write(self, changed: Tracer) -> None:
        raise NotImplementedError


class TracerRegistry(CredentialRegistry):
    """The tracers of one data directory; reads are cached by the file's mtime and size."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._stamp: tuple[int, int] | None = None

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> TracerRegistry:
        return cls(data_dir / TRACERS_FILE)

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._tracers = None, {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        check_private_if_present(self.path, "tracer credentials file")
        try:
            doc = orjson.loads(self.path.read_bytes())
            tracers = {}
            for t in doc["tracers"]:
                created = int(t.get("created", 0))
                tracers[str(t["name"])] = Tracer(
                    str(t["name"]),
                    str(t["token_sha256"]),
                    created,
                    int(t.get("expires", created + DEFAULT_VALID_DAYS * 86_400)),
                    int(t.get("revoked", 0)),
                )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"tracer file {self.path} is malformed: {exc}") from None
        self._stamp, self._tracers = stamp, tracers

    def _write(self, changed: Tracer | None = None) -> None:
        """Write a new file beside the old one and rename it over: readers see the old or the new, never half."""
        doc = {"tracers": [asdict(t) for t in sorted(self._tracers.values(), key=lambda t: t.name)]}
        replace_file(self.path, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        self._stamp = None


_CREDENTIAL_COLUMNS = ["kind", "name", "token_sha256", "created", "expires", "revoked", "updated_at"]
_CREDENTIAL_TYPES = ["String", "String", "String", "Int64", "Int64", "Int64", "DateTime64(3, 'UTC')"]


class StoredCredentials(CredentialRegistry):
    """One kind of credential for the whole deployment, in the store's ``credentials`` table (migration 0014).

    ``live`` (the CLI): every call reads the store, so ``tracer-add`` sees what another host added. In the engine
    (``live=False``) requests are answered from a snapshot, never touching the store on the event loop; the
    snapshot is re-read every ``--registry-poll-s`` (``engine.deployment.registries``), so a tracer added or
    revoked through any host works, or is refused, on every node within about a second. ``fallback``: the data
    directory's own file, still read on that node (single-node habits, upgrades), but a name the store knows is
    decided by the store, so a revocation in the store wins over an old file.
    """

    def __init__(
        self, store: Any, kind: str = "tracer", *, live: bool = True, fallback: CredentialRegistry | None = None
    ) -> None:
        super().__init__()
        if kind not in ("tracer", "admin"):
            raise ValueError(kind)
        self.kind = kind
        self._store = store
        self._live = live
        self._fallback = fallback
        self._snapshot: dict[str, Tracer] = {}

    def read(self, store: Any) -> dict[str, Tracer]:
        """The latest state of every credential of this kind (store thread)."""
        rows = store.query(
            "SELECT name, argMax(token_sha256, updated_at), argMax(created, updated_at), argMax(expires, updated_at), "
            "argMax(revoked, updated_at) FROM credentials WHERE kind = {k:String} GROUP BY name",
            {"k": self.kind},
        )
        return {str(r[0]): Tracer(str(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}

    def apply(self, snapshot: dict[str, Tracer]) -> None:
        """Swap in a snapshot read by :meth:`read` (event loop)."""
        self._snapshot = snapshot

    def _refresh(self) -> None:
        if self._live:
            self._snapshot = self.read(self._store)
        merged: dict[str, Tracer] = {}
        if self._fallback is not None:
            merged.update({t.name: t for t in self._fallback.tracers()})
        merged.update(self._snapshot)
        self._tracers = merged

    def put(self, credential: Tracer) -> None:
        """Write one credential's state as it is (a node's own admin token, renewed at start)."""
        self._write(credential)

    def _write(self, changed: Tracer) -> None:
        from datetime import UTC, datetime

        row = [self.kind, changed.name, changed.token_sha256, changed.created, changed.expires, changed.revoked]
        self._store.insert_rows(
            "credentials",
            _CREDENTIAL_COLUMNS,
            _CREDENTIAL_TYPES,
            [[v] for v in [*row, datetime.now(UTC)]],
        )
        self._snapshot[changed.name] = changed
