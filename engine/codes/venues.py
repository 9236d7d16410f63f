"""Venue ids: the one rule for what a venue id may be, shared by the item check, device binding and enrolment.

A venue id is chosen by the deployment (a registry number, a shop code), not by this engine; it is stored in
every scan and in device registrations, so it is kept short and to characters that need no escaping anywhere
(URLs, CSV, logs, SQL parameters).
"""

from __future__ import annotations

MAX_VENUE_CHARS = 64
VENUE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")
VENUE_RULE = f"1..{MAX_VENUE_CHARS} characters of A-Z a-z 0-9 _ . : -"


def is_venue_id(value: object) -> bool:
    """True for a string that is a valid venue id."""
    return isinstance(value, str) and 1 <= len(value) <= MAX_VENUE_CHARS and all(c in VENUE_CHARS for c in value)
