"""Readiness and stop notifications to the service manager (systemd's ``sd_notify`` protocol, no dependency).

With ``Type=notify`` systemd starts units that depend on the engine, and ``systemctl start`` returns, only when
the engine says ``READY=1``: after the store is migrated, the WAL replayed and the listening socket bound, not
when the process merely exists. ``STOPPING=1`` tells it a stop has begun, so a slow graceful drain (answering
accepted scans, flushing the WAL into the store) shows as "deactivating" instead of a hung service.

The protocol is one datagram of ``KEY=VALUE`` lines on the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET``
(a path, or ``@name`` for the abstract namespace). Outside systemd the variable is absent and every call is a
no-op, so the same ``serve`` runs from a shell, a container or a unit. A failure to notify is logged and
swallowed: the engine must never stop serving because its supervisor's socket went away.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

READY = "READY=1"
STOPPING = "STOPPING=1"


def notify_address(environ: Mapping[str, str] | None = None) -> str | bytes | None:
    """The socket address from ``$NOTIFY_SOCKET`` in the form ``socket.connect`` takes, or None when unset.

    An address starting with ``@`` is Linux's abstract namespace, spelled with a leading NUL byte on the wire.
    Anything that is neither a path nor ``@name`` (systemd also knows ``vsock:``) is refused with a warning
    rather than guessed at.
    """
    value = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET=%r is not a socket path or @abstract name: not notifying the service manager", value)
    return None


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. :data:`READY`, or several ``KEY=VALUE`` lines) to the service manager.

    Returns True when a datagram was sent, False when there is no service manager to tell or sending failed.
    """
    if not state or "=" not in state:
        raise ValueError(f"sd_notify state must be KEY=VALUE lines, got {state!r}")
    address = notify_address(environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify the service manager (%s): %s", state.replace("\n", " "), exc)
        return False
    log.debug("service manager notified: %s", state.replace("\n", " "))
    return True
