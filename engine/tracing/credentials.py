"""Tracing credentials: bearer tokens of role "tracer", kept apart from scanner devices and the admin token.

Contact tracing reads where people have been, so it gets its own credential kind: a scanner device proves
it may *write* scans, an operator runs the engine, and neither may read movements. Tokens are shown once
when created (``python -m engine tracer-add NAME --valid-days N``) and only their SHA-256 is stored, in
``<data_dir>/tracers.json`` (0600): a copy of the file does not let anyone trace. Every token expires (90 days
by default, at most 366), and ``tracer-revoke`` ends one at once; a revoked tracer stays in the file, so the
names in old audit records keep meaning someone. Entries written before expiry existed expire 90 days after
their creation. The engine re-reads the file when it changes, so adding or revoking works on the next request.

Everything about who the tracers are sits behind :class:`TracerRegistry`, so moving the registry into the store
(one per deployment) changes this module only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

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


class TracerRegistry:
    """The tracers of one data directory; reads are cached by the file's mtime and size."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._tracers: dict[str, Tracer] = {}

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> TracerRegistry:
        return cls(data_dir / TRACERS_FILE)

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
            raise TracerRefused("tracer token is not valid", "unknown")
        state = found.state(now)
        if state == "revoked":
            raise TracerRefused(f"tracer {found.name!r} was revoked", "revoked")
        if state == "expired":
            raise TracerRefused(f"tracer token of {found.name!r} has expired: ask for a new one", "expired")
        return found

    def add(self, name: str, valid_days: float = DEFAULT_VALID_DAYS, now: float | None = None) -> str:
        """Create a tracer and return its token; the token itself is never written anywhere."""
        if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
            raise ConfigError("tracer name must be 1-64 characters of letters, digits, '.', '_', '-', '@'")
        if not 0 < valid_days <= MAX_VALID_DAYS:
            raise ConfigError(f"a tracer token is valid for 0 < days <= {MAX_VALID_DAYS}, not {valid_days}")
        self._refresh()
        existing = self._tracers.get(name)
        if existing is not None and existing.state(time.time()) == "active":
            raise ConfigError(f"tracer {name!r} already exists and is active: revoke it first to issue a new token")
        created = int(time.time() if now is None else now)
        token = "trc_" + secrets.token_urlsafe(32)
        self._tracers[name] = Tracer(name, token_digest(token), created, created + int(valid_days * 86_400))
        self._write()
        return token

    def revoke(self, name: str, now: float | None = None) -> Tracer:
        """End a tracer's token at once (kept in the file, marked revoked)."""
        self._refresh()
        tracer = self._tracers.get(name)
        if tracer is None:
            raise NotFoundError(f"no tracer {name!r}")
        if not tracer.revoked:
            tracer = replace(tracer, revoked=int(time.time() if now is None else now))
            self._tracers[name] = tracer
            self._write()
        return tracer

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

    def _write(self) -> None:
        """Write a new file beside the old one and rename it over: readers see the old or the new, never half."""
        doc = {"tracers": [asdict(t) for t in sorted(self._tracers.values(), key=lambda t: t.name)]}
        replace_file(self.path, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        self._stamp = None
