"""Small files that must survive a crash whole: secrets created once, and state replaced atomically.

Every such file in the engine (key files, the person-key secret, the admin token, the trust list, tracer
credentials, the drain's redo intent) goes through these two writers, so each gets the same guarantees:
created with mode 0600 in the same system call (no window in which another user can read it), data
fsync'd before it counts, and a replacement renamed over the old file with the directory fsync'd, so a
reader or a restart sees the old contents or the new, never half.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def create_private_file(path: Path, data: bytes) -> None:
    """Write a new file (``O_EXCL``, 0600, fsync'd); FileExistsError if it is already there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_or_create_private_file(path: Path, make: Callable[[], bytes]) -> bytes:
    """The file's bytes, creating it from ``make()`` first if it does not exist yet (secrets made at first start)."""
    data = make()
    try:
        create_private_file(path, data)
    except FileExistsError:
        return path.read_bytes()
    return data


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically: a 0600 temp file beside it, fsync, rename over, fsync the directory."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a directory made for a private file is private
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
