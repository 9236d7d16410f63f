"""The worst case a tracer can ask for, as data: one crowded venue, written straight into a store.

The tracing lane's tests (tests/test_tracing_lane.py) and its benchmarks (bench/lane_probe.py,
bench/isolation_bench.py) all need the same thing: ``rows`` scans at one venue over the last 20 days by 20,000
people, every fifth unsigned, so that ``/v1/trace/venue?days=366&include_unverified=1`` brings back a large answer.
One INSERT ... SELECT generates it inside ClickHouse (300,000 rows in about a second) instead of through the API.
"""

from __future__ import annotations

HOT_VENUE = "venue-hot"


def hot_venue_insert(rows: int, venue: str = HOT_VENUE) -> str:
    """The statement that writes ``rows`` scans at ``venue`` (into the connection's default database)."""
    if rows < 0 or not venue.replace("-", "").isalnum():
        raise ValueError(f"rows must be >= 0 and venue a plain id, not {rows!r}, {venue!r}")
    return (
        "INSERT INTO scans (scan_id, device_id, venue_id, direction, scanned_at, received_at, verdict, reason, "
        "code_kind, person_key, qr_id, key_id, issuer, code_iat, code_exp, scan_device) "
        f"SELECT generateUUIDv4(), 'dev-hot', '{venue}', if(number % 2 = 0, 'in', 'out'), "
        "now64(3) - toIntervalSecond(intDiv(number, 2) * 17 % (20 * 86400)), now64(3), "
        "if(number % 5 = 0, 'unsigned_code', 'ok'), 'none', 'signed', "
        "toFixedString(unhex(lpad(hex(intDiv(number, 2) % 20000), 32, '0')), 16), "
        "concat('QH', toString(intDiv(number, 2) % 20000)), '', '', 0, 0, 'dev-hot' "
        f"FROM numbers({int(rows)})"
    )
