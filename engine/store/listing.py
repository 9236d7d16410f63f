"""Raw scans for operators: which device sent the ``bad_signature`` scans, what a venue's scanner stored today.

An operator needs to see scans without seeing people: the listing returns the scan's identity, where and when,
and what the verifier said, and never the QR text, the QR id, the person key or the issuer fields. The same
function serves the admin API (``GET /v1/admin/scans``, while an engine owns the embedded store) and the CLI's
direct read when no engine runs, so both answer the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.clock import iso_utc, parse_iso
from engine.codes.verdicts import REASONS, VERDICTS
from engine.errors import PayloadError

DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
#: the columns an operator sees, in order: nothing that identifies a person
COLUMNS = ("scan_id", "device_id", "venue_id", "direction", "scanned_at", "received_at", "verdict", "reason", "kind")
MAX_ID_CHARS = 128
_EPOCH, _MS = datetime(1970, 1, 1, tzinfo=UTC), timedelta(milliseconds=1)


def parse_instant(text: str, what: str) -> int:
    """Unix seconds, or RFC 3339 *with* a zone, as epoch milliseconds (a zone-less time is ambiguous: refused)."""
    if text.isascii() and text.isdigit():
        return int(text) * 1000
    try:
        return (parse_iso(text) - _EPOCH) // _MS
    except ValueError as exc:
        raise PayloadError(f"{what}: {exc}") from None


@dataclass(frozen=True)
class ScanFilter:
    """What to list; every field is optional except the limit. Validated on construction."""

    venue_id: str | None = None
    device_id: str | None = None
    verdict: str | None = None
    reason: str | None = None
    from_ms: int | None = None
    to_ms: int | None = None
    limit: int = DEFAULT_LIMIT

    def __post_init__(self) -> None:
        for name in ("venue_id", "device_id"):
            value = getattr(self, name)
            if value is not None and not 1 <= len(value) <= MAX_ID_CHARS:
                raise PayloadError(f"{name} must be 1..{MAX_ID_CHARS} characters")
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise PayloadError(f"verdict must be one of {', '.join(VERDICTS)}")
        if self.reason is not None and self.reason not in REASONS:
            raise PayloadError(f"reason must be one of {', '.join(REASONS)}")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise PayloadError(f"limit must be 1..{MAX_LIMIT}")
        if self.from_ms is not None and self.to_ms is not None and self.from_ms > self.to_ms:
            raise PayloadError("from must not be after to")

    @classmethod
    def from_query(cls, q: Any) -> ScanFilter:
        """From URL query parameters (``venue``, ``device``, ``verdict``, ``reason``, ``from``, ``to``, ``limit``)."""
        try:
            limit = int(q.get("limit", DEFAULT_LIMIT))
        except ValueError:
            raise PayloadError("limit must be an integer") from None
        return cls(
            venue_id=q.get("venue") or None,
            device_id=q.get("device") or None,
            verdict=q.get("verdict") or None,
            reason=q.get("reason") or None,
            from_ms=parse_instant(q["from"], "from") if q.get("from") else None,
            to_ms=parse_instant(q["to"], "to") if q.get("to") else None,
            limit=limit,
        )

    def as_query(self) -> dict[str, str]:
        """The inverse of :meth:`from_query`, for the CLI calling a running engine."""
        q = {"limit": str(self.limit)}
        for key, value in (
            ("venue", self.venue_id),
            ("device", self.device_id),
            ("verdict", self.verdict),
            ("reason", self.reason),
        ):
            if value is not None:
                q[key] = value
        if self.from_ms is not None:
            q["from"] = _iso_ms(self.from_ms)
        if self.to_ms is not None:
            q["to"] = _iso_ms(self.to_ms)
        return q


def list_scans(query: Any, database: str, flt: ScanFilter) -> list[dict[str, Any]]:
    """Newest first, each scan once (a retried scan not yet merged is collapsed by ``LIMIT 1 BY``).

    ``query`` is :meth:`engine.store.store.Store.query`; every value is bound as a parameter, never pasted.
    """
    where: list[str] = ["1"]
    params: dict[str, Any] = {"limit": flt.limit}
    for column, key, value, kind in (
        ("venue_id", "venue", flt.venue_id, "String"),
        ("device_id", "device", flt.device_id, "String"),
        ("toString(verdict)", "verdict", flt.verdict, "String"),
        ("toString(reason)", "reason", flt.reason, "String"),
    ):
        if value is not None:
            where.append(f"{column} = {{{key}:{kind}}}")
            params[key] = value
    if flt.from_ms is not None:
        where.append("scanned_at >= fromUnixTimestamp64Milli({t0:Int64}, 'UTC')")
        params["t0"] = flt.from_ms
    if flt.to_ms is not None:
        where.append("scanned_at <= fromUnixTimestamp64Milli({t1:Int64}, 'UTC')")
        params["t1"] = flt.to_ms
    sql = (
        "SELECT toString(scan_id), device_id, venue_id, toString(direction), toUnixTimestamp64Milli(scanned_at), "
        "toUnixTimestamp64Milli(received_at), toString(verdict), toString(reason), toString(code_kind) "
        f"FROM {database}.scans WHERE {' AND '.join(where)} "
        "ORDER BY scanned_at DESC, scan_id LIMIT 1 BY device_id, scan_id LIMIT {limit:UInt32}"
    )
    rows = query(sql, params)
    return [_row(r) for r in rows]


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    out = dict(zip(COLUMNS, r, strict=True))
    for name in ("scanned_at", "received_at"):
        out[name] = _iso_ms(int(out[name]))
    return out


def _iso_ms(ms: int) -> str:
    """Milliseconds kept: two scans of one device in the same second must still read apart."""
    seconds, rest = divmod(ms, 1000)
    return iso_utc(seconds)[:-1] + f".{rest:03d}Z"
