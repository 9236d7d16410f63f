"""Ed25519 private key files for issuers and scanner devices.

A key file is a small JSON document holding the 32-byte seed. It is created with ``O_EXCL`` and mode 0600 in
one system call, so there is no window in which another user can read it, and an existing key is never
overwritten by accident. Loading refuses group/other-readable files, the way ssh refuses a loose key.
"""

from __future__ import annotations

import base64
import stat
from dataclasses import dataclass
from pathlib import Path

import orjson
from nacl.signing import SigningKey

from engine.clock import iso_utc, parse_iso
from engine.durable import create_private_file
from engine.errors import KeyFileError


@dataclass(frozen=True)
class KeyFile:
    """An owner label (issuer id or device id) and its signing key; an issuer key also records the validity
    window it was created with (Unix seconds), so ``mint`` can refuse codes its trust-list entry would not accept.
    Key files from before the window was recorded have none."""

    owner: str
    signing_key: SigningKey
    valid_from: int | None = None
    valid_until: int | None = None

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    def __repr__(self) -> str:  # never let a seed reach a log line
        return f"KeyFile(owner={self.owner!r}, public_key={self.public_key.hex()[:16]}…)"


def write_key_file(
    path: str | Path, owner: str, signing_key: SigningKey | None = None, *, window: tuple[int, int] | None = None
) -> KeyFile:
    """Create a new key file (0600); refuses to overwrite an existing one."""
    key = signing_key or SigningKey.generate()
    doc: dict[str, str] = {"owner": owner, "seed": base64.b64encode(bytes(key)).decode("ascii")}
    if window is not None:
        doc["valid_from"], doc["valid_until"] = iso_utc(window[0]), iso_utc(window[1])
    body = orjson.dumps(doc, option=orjson.OPT_INDENT_2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        create_private_file(path, body + b"\n")
    except FileExistsError:
        raise KeyFileError(f"{path} exists; refusing to overwrite a private key") from None
    return KeyFile(owner, key, *(window or (None, None)))


def read_key_file(path: str | Path) -> KeyFile:
    path = Path(path)
    try:
        st = path.stat()
        raw = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"key file {path} is accessible by group/others (mode {st.st_mode & 0o777:o}); chmod 600")
    try:
        doc = orjson.loads(raw)
        seed = base64.b64decode(doc["seed"], validate=True)
        owner = str(doc["owner"])
        valid_from = int(parse_iso(doc["valid_from"]).timestamp()) if "valid_from" in doc else None
        valid_until = int(parse_iso(doc["valid_until"]).timestamp()) if "valid_until" in doc else None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise KeyFileError(f"key file {path} is not a valid key file") from None
    if len(seed) != 32:
        raise KeyFileError(f"key file {path}: seed must be 32 bytes")
    return KeyFile(owner, SigningKey(seed), valid_from, valid_until)
