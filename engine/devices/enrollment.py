"""One-time enrolment codes: how a browser scanner (``/scanner``) gets a device identity without a key file.

``device-register`` makes the operator create the device's private key and carry the file to the scanner. A
phone browser cannot take a key file, and should not: its key is generated inside the browser (WebCrypto,
non-extractable) and never leaves it. So the operator issues a short-lived, single-use **enrolment code**
instead (``device-register --enroll --venue V``, or ``POST /v1/admin/enrollments``), and the page trades it for
a registration through ``POST /v1/enroll``:

1. the operator gets the code as text (``XXXXX-XXXXX-XXXXX-XXXXX``, 20 Crockford base32 characters: 100 random
   bits) and as a QR image whose text is ``VNQR-ENROL-1:`` + the code;
2. the store keeps only SHA-256(``ENROL_DOMAIN`` + code), the venue(s), the device id the code will register
   (chosen now, so the operator knows what to revoke later) and the expiry (15 minutes by default);
3. the page sends ``{"code", "public_key", "proof"}``: the code as scanned or typed, its new Ed25519 public key
   (raw 32 bytes, base64url), and a signature by that key over ``PROOF_DOMAIN + code + "\\n" + public_key``,
   which shows the caller holds the private key and lets the page test its signer before it relies on it;
4. the engine marks the code used (on the store thread, which runs one call at a time, so two redeemers of one
   code cannot both win on this node) and then registers the device exactly as ``POST /v1/admin/devices``
   does: ``DeviceRegistry.put`` and ``Store.upsert_device``.

A retry of step 3 with the *same* public key (the answer was lost) gets the same answer again while the code has
not expired, unless the device was revoked meanwhile: a revoked page can never re-register itself with its old
code. Any other second use is refused (409). ``/v1/enroll`` needs no credential, so it is rate limited as a
whole (a guess costs a store query; guessing 100 bits is hopeless anyway).

On a cluster, single use holds per node: two nodes redeeming the same code within the replication delay could
both succeed. Codes live minutes and are handed to one person; docs/scanner.md says so.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.codes.venues import MAX_VENUES as MAX_VENUES  # re-exported: the web page's limit
from engine.codes.venues import check_venue_list
from engine.errors import EngineError, ForbiddenError, PayloadError
from engine.store.store import Store

log = logging.getLogger(__name__)

#: Crockford base32: no I, L, O, U, so a code read aloud or typed from a screen has no look-alikes.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_CHARS = 20  # 100 bits
QR_PREFIX = "VNQR-ENROL-1:"
ENROL_DOMAIN = b"VNQR-ENROL-CODE-V1\x00"
PROOF_DOMAIN = b"VNQR-ENROL-PROOF-V1\x00"
DEFAULT_TTL_S = 15 * 60
MIN_TTL_S, MAX_TTL_S = 60, 24 * 3600
MAX_LABEL_CHARS = 200
_TTL_RE = re.compile(r"\s*(\d+)\s*([smhd]?)\s*")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_LOOKALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})


class EnrollmentUnknownError(ForbiddenError):
    code = "enrollment_unknown"


class EnrollmentUsedError(EngineError):
    http_status = 409
    code = "enrollment_used"


class EnrollmentExpiredError(EngineError):
    http_status = 410
    code = "enrollment_expired"


# -- the code ----------------------------------------------------------------------------------------------
def new_code() -> str:
    """20 random Crockford base32 characters (100 bits from the OS CSPRNG)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_CHARS))


def format_code(code: str) -> str:
    """Groups of five for reading and typing: ``ABCDE-FGHJK-MNPQR-STVWX``."""
    return "-".join(code[i : i + 5] for i in range(0, len(code), 5))


def normalize_code(text: object) -> str:
    """The code from what a page scanned or a person typed: QR prefix, spaces and dashes dropped, any case,
    O/I/L read as 0/1. Raises :class:`PayloadError` saying what is wrong (the page shows it as is)."""
    if not isinstance(text, str):
        raise PayloadError('"code" must be a string: the enrolment code as scanned or typed')
    raw = text.strip()
    if raw.upper().startswith(QR_PREFIX):
        raw = raw[len(QR_PREFIX) :]
    code = re.sub(r"[\s-]+", "", raw).upper().translate(_LOOKALIKES)
    bad = sorted({c for c in code if c not in ALPHABET})
    if bad:
        raise PayloadError(f"enrolment code has characters that are never in a code: {''.join(bad)!r}")
    if len(code) != CODE_CHARS:
        raise PayloadError(f"enrolment code must have {CODE_CHARS} characters (without dashes), not {len(code)}")
    return code


def code_sha256(code: str) -> str:
    """What the store keeps instead of the code (hex, so the driver never sees raw bytes in a String)."""
    return hashlib.sha256(ENROL_DOMAIN + code.encode("ascii")).hexdigest()


def proof_message(code: str, public_key_b64: str) -> bytes:
    """The bytes the page signs with its new key to prove it holds it (mirrored in ``scanner_static/device.js``)."""
    return PROOF_DOMAIN + code.encode("ascii") + b"\n" + public_key_b64.encode("ascii")


def parse_ttl(text: str) -> int:
    """``900``, ``900s``, ``15m``, ``2h``, ``1d`` → seconds, within [1 min, 24 h]."""
    m = _TTL_RE.fullmatch(text)
    if not m:
        raise PayloadError(f"TTL {text!r} must be a number with an optional unit s, m, h or d (e.g. 15m)")
    return check_ttl(int(m.group(1)) * _TTL_UNITS[m.group(2)])


def check_ttl(ttl_s: object) -> int:
    if not isinstance(ttl_s, int) or isinstance(ttl_s, bool) or not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        raise PayloadError(f"enrolment TTL must be {MIN_TTL_S} s to {MAX_TTL_S // 3600} h, not {ttl_s!r}")
    return ttl_s


def check_venues(venues: object) -> list[str]:
    """1..32 venue ids, each as ``POST /v1/scans`` accepts them; duplicates dropped, order kept."""
    if isinstance(venues, str):
        venues = [venues]
    if not isinstance(venues, list | tuple) or not venues:
        raise PayloadError('need "venues": a list of 1 or more venue ids')
    return list(check_venue_list(venues, what="enrolment"))


def device_id_for(venue: str) -> str:
    """``web-<venue>-<8 hex>``: readable in ``device-list``, unique, within the device-id charset and 64 chars."""
    return f"web-{venue[:40]}-{secrets.token_hex(4)}"


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- the store ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Enrollment:
    """An enrolment code's latest state (``public_key`` is base64url, empty until the code is used)."""

    code_sha256: str
    device_id: str
    venues: tuple[str, ...]
    label: str
    created_at_ms: int
    expires_at_ms: int
    used: bool = False
    used_at_ms: int = 0
    public_key: str = ""

    def to_json(self) -> dict[str, Any]:
        """What operators and the page see: never the hash (nothing needs it, and it would help nobody)."""
        return {
            "device_id": self.device_id,
            "venue": self.venues[0],
            "venues": list(self.venues),
            "label": self.label,
            "expires_at": iso_ms(self.expires_at_ms),
            "used": self.used,
        }


_COLUMNS = "code_sha256, device_id, venues, label, created_at, expires_at, used, used_at, public_key, updated_at"


def _write(store: Store, e: Enrollment, updated_ms: int) -> None:
    store.command(
        f"INSERT INTO {store.database}.enrollments ({_COLUMNS}) SELECT {{h:String}}, {{d:String}}, "
        "{v:Array(String)}, {l:String}, fromUnixTimestamp64Milli({c:Int64}, 'UTC'), "
        "fromUnixTimestamp64Milli({x:Int64}, 'UTC'), {u:UInt8}, fromUnixTimestamp64Milli({ua:Int64}, 'UTC'), "
        "{k:String}, fromUnixTimestamp64Milli({t:Int64}, 'UTC')",
        {
            "h": e.code_sha256,
            "d": e.device_id,
            "v": list(e.venues),
            "l": e.label,
            "c": e.created_at_ms,
            "x": e.expires_at_ms,
            "u": int(e.used),
            "ua": e.used_at_ms,
            "k": e.public_key,
            "t": updated_ms,
        },
    )


def read_enrollment(store: Store, sha256_hex: str) -> tuple[Enrollment, int] | None:
    """The latest state of one code and its ``updated_at`` (ms), or None if it was never issued."""
    rows = store.query(
        "SELECT argMax(device_id, updated_at), argMax(venues, updated_at), argMax(label, updated_at), "
        "toUnixTimestamp64Milli(min(created_at)), toUnixTimestamp64Milli(argMax(expires_at, updated_at)), "
        "argMax(used, updated_at), toUnixTimestamp64Milli(argMax(used_at, updated_at)), "
        "argMax(public_key, updated_at), toUnixTimestamp64Milli(max(updated_at)), count() "
        f"FROM {store.database}.enrollments WHERE code_sha256 = {{h:String}}",
        {"h": sha256_hex},
    )
    if not rows or not rows[0][9]:
        return None
    r = rows[0]
    e = Enrollment(sha256_hex, r[0], tuple(r[1]), r[2], int(r[3]), int(r[4]), bool(r[5]), int(r[6]), r[7])
    return e, int(r[8])


def issue(
    store: Store, venues: Sequence[str], *, ttl_s: int = DEFAULT_TTL_S, label: str = "", now_ms: int | None = None
) -> tuple[str, Enrollment]:
    """Create a code for ``venues``; return the code (shown once, never stored) and its record."""
    venues = check_venues(list(venues))
    ttl_s = check_ttl(ttl_s)
    if not isinstance(label, str) or len(label) > MAX_LABEL_CHARS or not label.isprintable():
        raise PayloadError(f"label must be at most {MAX_LABEL_CHARS} printable characters")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    code = new_code()
    e = Enrollment(
        code_sha256(code),
        device_id_for(venues[0]),
        tuple(venues),
        label or f"browser scanner for {', '.join(venues)}"[:MAX_LABEL_CHARS],
        now_ms,
        now_ms + ttl_s * 1000,
    )
    _write(store, e, now_ms)
    log.info("enrolment code for device %s (venues %s) expires %s", e.device_id, venues, iso_ms(e.expires_at_ms))
    return code, e


def redeem(store: Store, code: str, public_key_b64: str, now_ms: int | None = None) -> tuple[Enrollment, bool]:
    """Mark the code used by this key; return its record and whether this call used it (False: a same-key retry).

    Must run on the store thread (read and write are then one step for this process). Raises the specific
    error for an unknown, expired or already used code.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    found = read_enrollment(store, code_sha256(code))
    if found is None:
        raise EnrollmentUnknownError(
            "enrolment code is not known to this engine: check it, or ask the operator for a new one"
        )
    e, updated_ms = found
    if now_ms > e.expires_at_ms:
        minutes = (now_ms - e.expires_at_ms) / 60_000
        raise EnrollmentExpiredError(
            f"enrolment code expired at {iso_ms(e.expires_at_ms)} ({minutes:.0f} min ago); "
            "ask the operator for a new one"
        )
    if e.used:
        if e.public_key == public_key_b64:
            return e, False
        raise EnrollmentUsedError(
            f"enrolment code was already used at {iso_ms(e.used_at_ms)} by another device; codes are single use"
        )
    used = Enrollment(
        e.code_sha256, e.device_id, e.venues, e.label, e.created_at_ms, e.expires_at_ms, True, now_ms, public_key_b64
    )
    _write(store, used, max(now_ms, updated_ms + 1))  # the used row must win argMax even within one millisecond
    return used, True
