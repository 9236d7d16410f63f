"""Venue ids: the one rule for what a venue id may be, shared by the item check, device binding and enrolment.

A venue id is chosen by the deployment (a registry number, a shop code), not by this engine; it is stored in
every scan and in device registrations, so it is kept short and to characters that need no escaping anywhere
(URLs, CSV, logs, SQL parameters).
"""

from __future__ import annotations

MAX_VENUE_CHARS = 64
#: the venue alphabet, spelled once: the checks' character set and the OpenAPI pattern are both made from it
VENUE_CLASS = "A-Za-z0-9_.:-"


def _expand_class(spec: str) -> frozenset[str]:
    """The characters of a regex character class body made of ``a-z`` ranges and literals (a final ``-`` is one)."""
    chars: set[str] = set()
    i = 0
    while i < len(spec):
        if i + 2 < len(spec) and spec[i + 1] == "-":
            chars.update(chr(c) for c in range(ord(spec[i]), ord(spec[i + 2]) + 1))
            i += 3
        else:
            chars.add(spec[i])
            i += 1
    return frozenset(chars)


VENUE_CHARS = _expand_class(VENUE_CLASS)
VENUE_PATTERN = f"^[{VENUE_CLASS}]{{1,{MAX_VENUE_CHARS}}}$"
VENUE_RULE = f"1..{MAX_VENUE_CHARS} characters of A-Z a-z 0-9 _ . : -"


def is_venue_id(value: object) -> bool:
    """True for a string that is a valid venue id."""
    return isinstance(value, str) and 1 <= len(value) <= MAX_VENUE_CHARS and all(c in VENUE_CHARS for c in value)
