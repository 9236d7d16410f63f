"""Least privilege on disk: private directories, secret files that only their owner can read, and the refusal
that names the ``chmod`` which fixes a loose one.

Scans hold QR ids with venues and times, and the secrets (person-key HMAC secret, admin token, tracer
digests, TLS key, DSN password) open everything else: another local account must not be able to read any of
it. The engine therefore runs under ``umask 077`` (:func:`restrict_umask`, called once by ``serve``), creates
its directories 0700 and its files 0600, and refuses to start when a secret or a data directory it did not
create is group- or world-accessible, rather than silently tightening it: a loose mode on a production host is
a finding an operator must see, and the message says exactly which command fixes it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from engine.errors import ConfigError

#: permission bits nobody but the owner may hold on a private directory or a secret file
_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def restrict_umask() -> int:
    """``umask 077`` for the whole process (chdb's parts, the WAL, every file created from now on); returns
    the previous mask. Called at start-up by ``serve`` and by the CLI commands that open the store."""
    return os.umask(0o077)


def private_dir(path: Path, what: str = "data directory") -> Path:
    """Create ``path`` (0700) if it is missing; refuse an existing one that others may enter or list."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode passes through the umask; a test process may run with 022
        return path
    check_private(path, what)
    return path


def check_private(path: Path, what: str) -> None:
    """Refuse a file or directory whose mode lets group or others in, naming the fix.

    Ownership is checked too: a secret owned by another account could be swapped under us by that account.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    if st.st_mode & _OTHERS:
        fix = "700" if stat.S_ISDIR(st.st_mode) else "600"
        raise ConfigError(
            f"refusing to start: {what} {path} is accessible to other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"fix it with: chmod {fix} {path}"
        )
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise ConfigError(
            f"refusing to start: {what} {path} belongs to uid {st.st_uid}, not to this process (uid {os.geteuid()}); "
            f"fix it with: chown {os.geteuid()} {path}"
        )


def check_private_if_present(path: Path, what: str) -> None:
    if path.exists():
        check_private(path, what)


def require_private(paths: list[tuple[Path, str]]) -> None:
    """Check every existing path at once and refuse with *one* message holding every fix, so an upgraded
    deployment (created under umask 022) is put right in one step, not one restart per file."""
    loose: list[str] = []
    dirs: list[str] = []
    files: list[str] = []
    for path, what in paths:
        try:
            check_private_if_present(path, what)
        except ConfigError as exc:
            loose.append(str(exc).removeprefix("refusing to start: ").split("; fix it with")[0])
            if "chown" in str(exc):
                continue
            (dirs if path.is_dir() else files).append(str(path))
    if loose:
        fixes = " && ".join(
            f"chmod {mode} {' '.join(group)}" for mode, group in (("700", dirs), ("600", files)) if group
        )
        raise ConfigError("refusing to start: " + "; ".join(loose) + (f". Fix it with: {fixes}" if fixes else ""))


def read_secret_file(path: Path, what: str) -> str:
    """A secret's text (first line, stripped) from a file only its owner can read; ConfigError otherwise."""
    check_private(path, what)
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise ConfigError(f"{what} {path} is empty")
    return text.splitlines()[0].strip()
