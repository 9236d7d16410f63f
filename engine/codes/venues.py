"""Venue ids: the one rule for what a venue id may be, shared by the item check, device binding and enrolment.

A venue id is chosen by the deployment (a registry number, a shop code), not by this engine; it is stored in
every scan and in device registrations, so it is kept short and to characters that need no escaping anywhere
(URLs, CSV, logs, SQL parameters).
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.errors import PayloadError

MAX_VENUE_CHARS = 64
#: venues one device (or one enrolment code) may serve: a kiosk at one door, a relay for a market's stalls
MAX_VENUES = 32
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


def check_venue_list(venues: object, *, what: str = "device") -> tuple[str, ...]:
    """0..MAX_VENUES valid venue ids as a tuple (a single string counts as one); duplicates dropped, order kept.

    :class:`PayloadError` names the first bad id, so an operator's typo is refused with what to fix.
    """
    if isinstance(venues, str):
        venues = [venues]
    if not isinstance(venues, Sequence):
        raise PayloadError(f'"venues" must be a list of venue ids, not {type(venues).__name__}')
    if len(venues) > MAX_VENUES:
        raise PayloadError(f"at most {MAX_VENUES} venues per {what}, not {len(venues)}")
    out: list[str] = []
    for v in venues:
        if not is_venue_id(v):
            raise PayloadError(f"venue id {v!r} must be {VENUE_RULE}")
        if v not in out:
            out.append(v)
    return tuple(out)
