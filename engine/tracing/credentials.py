"""Tracing credentials: bearer tokens of role "tracer", kept apart from scanner devices and the admin token.

Contact tracing reads where people have been, so it gets its own credential kind: a scanner device proves
it may *write* scans, an operator runs the engine, and neither may read movements. Tokens are shown once
when created (``python -m engine tracer-add NAME``) and only their SHA-256 is stored, in
``<data_dir>/tracers.json`` (0600): a copy of the file does not let anyone trace. The engine re-reads the
file when it changes, so a tracer added while the engine runs works on their next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from engine.durable import replace_file
from engine.errors import ConfigError

TRACERS_FILE = "tracers.json"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


@dataclass(frozen=True)
class Tracer:
    name: str
    token_sha256: str
    created: int


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

    def authenticate(self, token: str) -> Tracer | None:
        """The tracer this token belongs to, compared in constant time against every stored digest."""
        self._refresh()
        digest = token_digest(token)
        found: Tracer | None = None
        for tracer in self._tracers.values():
            if hmac.compare_digest(digest, tracer.token_sha256):
                found = tracer
        return found

    def add(self, name: str) -> str:
        """Create a tracer and return its token; the token itself is never written anywhere."""
        if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
            raise ConfigError("tracer name must be 1-64 characters of letters, digits, '.', '_', '-', '@'")
        self._refresh()
        if name in self._tracers:
            raise ConfigError(f"tracer {name!r} already exists")
        token = "trc_" + secrets.token_urlsafe(32)
        self._tracers[name] = Tracer(name, token_digest(token), int(time.time()))
        self._write()
        return token

    def remove(self, name: str) -> bool:
        self._refresh()
        if self._tracers.pop(name, None) is None:
            return False
        self._write()
        return True

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._tracers = None, {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            doc = orjson.loads(self.path.read_bytes())
            tracers = {
                t["name"]: Tracer(str(t["name"]), str(t["token_sha256"]), int(t.get("created", 0)))
                for t in doc["tracers"]
            }
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"tracer file {self.path} is malformed: {exc}") from None
        self._stamp, self._tracers = stamp, tracers

    def _write(self) -> None:
        """Write a new file beside the old one and rename it over: readers see the old or the new, never half."""
        doc = {"tracers": [t.__dict__ for t in sorted(self._tracers.values(), key=lambda t: t.name)]}
        replace_file(self.path, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        self._stamp = None
