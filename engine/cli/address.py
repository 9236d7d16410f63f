"""Where this data directory's engine listens: ``<data_dir>/engine.json``, written by ``serve``, read by every command.

A running engine owns its embedded store (chdb locks the directory to one process), so a command that needs the
store must find the engine and go through its HTTP API. The engine writes its PID and address here once it
answers, and removes the file on a clean exit. After a crash (``kill -9``, power cut) the file stays behind:
:func:`locate` tells a stale file (its PID is not alive) from a live engine, and removes the stale one, so a
command never waits on an address nobody listens on. A PID that is alive but does not answer is reported as such:
it may be an engine starting, a hung one, or an unrelated process that got the PID after a reboot.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from engine.durable import replace_file

log = logging.getLogger(__name__)

ADDRESS_FILE = "engine.json"


@dataclass(frozen=True)
class EngineAddress:
    """What a command needs to reach the engine of a data directory."""

    pid: int
    url: str
    started: float
    version: str


def path_of(data_dir: Path) -> Path:
    return data_dir / ADDRESS_FILE


def local_url(host: str, port: int) -> str:
    """The URL a command on this host uses: a wildcard listen address is reached over loopback."""
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write(data_dir: Path, address: EngineAddress) -> None:
    """Atomically (a reader sees the old file or the new one, never half)."""
    replace_file(path_of(data_dir), orjson.dumps(asdict(address), option=orjson.OPT_INDENT_2) + b"\n")


def read(data_dir: Path) -> EngineAddress | None:
    """The recorded address, or None when there is none (or it is unreadable: treated as absent, and said)."""
    try:
        doc = orjson.loads(path_of(data_dir).read_bytes())
        return EngineAddress(int(doc["pid"]), str(doc["url"]), float(doc["started"]), str(doc.get("version", "")))
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path_of(data_dir), exc)
        return None


def remove(data_dir: Path, pid: int) -> bool:
    """Remove the file if it still names ``pid`` (a newer engine's file is never removed by an older one)."""
    current = read(data_dir)
    if current is None or current.pid != pid:
        return False
    try:
        path_of(data_dir).unlink()
    except FileNotFoundError:
        return False
    return True


def pid_alive(pid: int) -> bool:
    """True if a process with this PID exists (another user's process counts: it exists, we may not signal it)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process nobody reaped yet (a container without an init) is a zombie: gone for our purpose
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def locate(data_dir: Path) -> EngineAddress | None:
    """The live engine's address; a stale file (its PID gone) is removed and None returned."""
    found = read(data_dir)
    if found is None:
        return None
    if not pid_alive(found.pid):
        log.warning(
            "removing stale %s: engine PID %d is not running (it did not exit cleanly)", path_of(data_dir), found.pid
        )
        remove(data_dir, found.pid)
        return None
    return found
