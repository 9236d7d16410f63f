"""Times as the engine reads and writes them: ISO-8601 with a zone, always shown in UTC.

A naive time is ambiguous across a country's devices and servers, so the trust list, the CLIs and the
device API refuse it (tracing queries, typed by a person, read it as UTC). One parser keeps those rules
the same everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime


def parse_iso(text: str, *, naive_is_utc: bool = False) -> datetime:
    """Parse ISO-8601 (``Z`` accepted); raise ValueError with the reason when it is not one, or has no zone."""
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 time") from None
    if dt.tzinfo is None:
        if not naive_is_utc:
            raise ValueError(f"{text!r} has no time zone; write it with Z")
        dt = dt.replace(tzinfo=UTC)
    return dt


def iso_utc(seconds: float) -> str:
    """Unix seconds as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
