"""Verdict and reason codes: the one contract both verifier implementations speak.

The numbers are stored in ClickHouse (Enum8) and returned in numpy ``uint8`` arrays by the compiled path, so
they never change meaning once released; new ones are only appended. See ``docs/payload.md`` section 4.
"""

from __future__ import annotations

from enum import IntEnum


class Verdict(IntEnum):
    OK = 0
    BAD_SIGNATURE = 1
    UNKNOWN_KEY = 2
    REVOKED_KEY = 3
    REVOKED_CODE = 4
    EXPIRED = 5
    NOT_YET_VALID = 6
    UNSIGNED_CODE = 7
    ID_CARD = 8
    MALFORMED = 9

    @property
    def label(self) -> str:
        return self.name.lower()


class Reason(IntEnum):
    NONE = 0
    EMPTY = 1
    TOO_LONG = 2
    CONTROL_CHAR = 3
    FIELD_COUNT = 4
    DOC_NUMBER = 5
    NAME = 6
    BIRTH_DATE = 7
    QR_ID = 8
    EXT = 9
    SIGNED_BLOCK = 10
    KEY_ID = 11
    TIMESTAMP = 12
    VALIDITY = 13
    SIGNATURE_ENCODING = 14
    ID_NUMBER = 15
    OLD_ID_NUMBER = 16
    CARD_NAME = 17
    CARD_BIRTH_DATE = 18
    GENDER = 19
    ADDRESS = 20
    ISSUE_DATE = 21
    KEY_WINDOW = 22

    @property
    def label(self) -> str:
        return self.name.lower()


class CodeKind(IntEnum):
    """What kind of code a scan carried, decided by the parser before any signature check."""

    UNKNOWN = 0  # malformed before the kind could be told
    SIGNED = 1
    UNSIGNED = 2
    ID_CARD = 3

    @property
    def label(self) -> str:
        return self.name.lower()


VERDICTS: tuple[str, ...] = tuple(v.label for v in Verdict)
REASONS: tuple[str, ...] = tuple(r.label for r in Reason)
KINDS: tuple[str, ...] = tuple(k.label for k in CodeKind)

#: Verdicts of codes whose signature was checked and found genuine: tracing counts these by default.
TRUSTED: frozenset[Verdict] = frozenset({Verdict.OK})
