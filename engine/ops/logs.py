"""Log lines that a request cannot forge: control characters in a formatted message are escaped.

A venue id sent as ``x%0A2026-01-01 ... INFO engine: trace by admin`` used to start a line of its own in the
engine's log. The formatter installed by ``serve`` escapes CR, LF and every other control or line-separator
character in the *message* (tracebacks, which the logging module appends after it, keep their lines), so one
record is always one line. Request-derived values are also logged quoted (:func:`quote`), so a reader sees where
a value starts and ends.
"""

from __future__ import annotations

import logging

_ESCAPES = {c: f"\\x{c:02x}" for c in range(0x20)} | {0x7F: "\\x7f", 0x85: "\\x85"}
_ESCAPES |= {0x2028: "\\u2028", 0x2029: "\\u2029", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def escape(text: str) -> str:
    """``text`` with control and line-separator characters as visible escapes."""
    return text.translate(_ESCAPES)


def quote(value: object, limit: int = 200) -> str:
    """A request-derived value for a log line: escaped, in double quotes, cut at ``limit`` characters."""
    text = escape(str(value))
    if len(text) > limit:
        text = text[:limit] + "..."
    return '"' + text.replace('"', '\\"') + '"'


class SafeFormatter(logging.Formatter):
    """A formatter whose message part can never hold a line break or a terminal control sequence."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """The engine's process-wide logging: one stream handler with :class:`SafeFormatter`."""
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
