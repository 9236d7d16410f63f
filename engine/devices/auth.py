"""Scanner-device authentication: signed requests, replay protection and per-device rate limits.

Device API contract
===================

The vendor-facing document is ``docs/device-api.md`` (with a worked example and every error answer); this is
its summary for readers of the code.

Every request from a scanner carries four headers:

``X-Device-Id``
    the device id: 1..64 characters of ``A-Z a-z 0-9 _ . : -``.
``X-Timestamp``
    the device clock when it signed, Unix seconds, decimal digits only (1..12 of them).
``X-Nonce``
    16..64 characters of ``A-Z a-z 0-9 _ -``, unique per request (``engine.devices.client`` uses 24 random ones).
``X-Signature``
    the Ed25519 signature of the message below by the device's registered key, base64url without padding:
    exactly 86 characters, canonical (the four unused low bits of the last character are zero).

The signed message is::

    b"VNQR-DEVICE-REQ-V1\\x00" + b"\\n".join([METHOD, PATH, device_id, timestamp, nonce, sha256(body).hexdigest()])

where ``METHOD`` is the upper-case HTTP method, ``PATH`` is the path plus query string exactly as sent on the
request line (percent-encoding included, no scheme or host), ``device_id``, ``timestamp`` and ``nonce`` are
the header values, and the last part is the lower-case hex SHA-256 of the raw body (of ``b""`` when there is
none). Every part is ASCII. The domain prefix differs from the QR-code prefix (``b"VNPQR-ED25519-V1\\x00"``),
so a device key can never sign a check-in code, and an issuer signature can never authenticate a request.

The server accepts a request when, in this order (cheapest and least revealing first):

1. all four headers are present once and well formed, else **401**;
2. the device is registered and not revoked, else **403** (revocation is effective for the next request);
3. ``|server time - X-Timestamp| <= skew`` (300 s by default), else **401**;
4. the signature verifies, else **401**;
5. the (device, nonce) pair has not been accepted within the last ``2 * skew`` seconds, else **401**;
6. the device's token bucket (``rate`` requests/s, ``burst`` deep) holds a token, else **429** with
   ``Retry-After``; if the replay memory is full the answer is **503** with ``Retry-After`` (see below).

Only a request that passes every step has its nonce remembered. A nonce is never recorded before its signature
verified, so nobody can burn another device's nonces; and a request refused with 429/503 is not remembered
either, so the replay memory of one device is bounded by what its rate limit lets through
(``burst + rate * 2 * skew`` nonces). Such a refused request may still be accepted later within its timestamp
window: it was never processed, so that is a delayed first delivery, not a replay, and scans are deduplicated
by ``scan_id`` anyway.

Why ``2 * skew``: a request with timestamp ``ts`` is accepted only while ``now <= ts + skew``, and it was
first received at ``r >= ts - skew``, so a nonce remembered until ``r + 2 * skew`` outlives every moment at
which a replay could pass the timestamp check. Expiry is by receipt time, which only grows, so pruning pops
from the front of a FIFO in amortised O(1).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from engine.codes.payload import b64url_decode_canonical
from engine.codes.trust import check_public_key
from engine.codes.venues import check_venue_list
from engine.errors import (
    AuthError,
    ForbiddenError,
    NotFoundError,
    OverloadedError,
    PayloadError,
    RateLimitedError,
    TrustListError,
)

log = logging.getLogger(__name__)

DOMAIN = b"VNQR-DEVICE-REQ-V1\x00"
HEADERS = ("X-Device-Id", "X-Timestamp", "X-Nonce", "X-Signature")
MAX_LABEL_CHARS = 200

DEVICE_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
SIGNATURE_RE = re.compile(r"[A-Za-z0-9_-]{86}")


def signed_message(method: str, path_qs: str, device_id: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """The exact bytes a device signs; shared with ``engine.devices.client`` so both sides cannot drift apart."""
    parts = (method, path_qs, device_id, timestamp, nonce, hashlib.sha256(body).hexdigest())
    return DOMAIN + "\n".join(parts).encode("ascii")


@dataclass(frozen=True)
class Device:
    """A registered scanner as the store keeps it: id, Ed25519 public key, revocation flag, operator label, and
    the venues it may post scans for (``()``: unbound, any venue, as every device was before issue 12)."""

    device_id: str
    public_key: bytes
    revoked: bool = False
    label: str = ""
    venues: tuple[str, ...] = ()

    @property
    def bound(self) -> bool:
        return bool(self.venues)


class _Entry:
    """Per-device state kept beside the record: the parsed key (parsing costs more than a verify) and the bucket."""

    __slots__ = ("device", "last_seen", "refilled", "tokens", "verify_key")

    def __init__(self, device: Device, verify_key: VerifyKey, tokens: float, now: float) -> None:
        self.device = device
        self.verify_key = verify_key
        self.tokens = tokens
        self.refilled = now
        self.last_seen = float("-inf")


def _validated(device: Device) -> VerifyKey:
    if not isinstance(device.device_id, str) or not DEVICE_ID_RE.fullmatch(device.device_id):
        raise PayloadError("device_id must be 1..64 characters of A-Z a-z 0-9 _ . : -")
    if len(device.label) > MAX_LABEL_CHARS or not device.label.isprintable():
        raise PayloadError(f"label must be at most {MAX_LABEL_CHARS} printable characters")
    if check_venue_list(device.venues) != device.venues:
        raise PayloadError("venues must be distinct venue ids")
    try:
        check_public_key(bytes(device.public_key), f"device {device.device_id} public key")
    except TrustListError as exc:
        raise PayloadError(str(exc)) from None
    return VerifyKey(bytes(device.public_key))


def _header(headers: Mapping[str, str], name: str) -> str:
    """One header value; absent, empty or repeated is an error (proxies disagree on which duplicate wins)."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        values = getall(name, [])
        if len(values) > 1:
            raise AuthError(f"{name} header appears {len(values)} times")
        value = values[0] if values else None
    else:
        value = headers.get(name)
        if value is None:
            value = headers.get(name.lower())
    if not value:
        raise AuthError(f"missing {name} header (signed device request required)")
    return value


class DeviceRegistry:
    """The server's in-memory source of truth for devices at request time; loaded from the store at start-up.

    Everything runs on the event loop thread, so there is no locking. ``on_change`` (optional) is called with the
    new record after ``put``/``revoke``, for callers that want to schedule persistence; it must not block.
    """

    def __init__(
        self,
        devices: Iterable[Device] = (),
        *,
        skew_s: int = 300,
        rate: float = 50.0,
        burst: float = 200.0,
        max_nonces: int = 1_000_000,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[Device], None] | None = None,
    ) -> None:
        if skew_s < 0 or rate <= 0 or burst < 1 or max_nonces < 1:
            raise ValueError("need skew_s >= 0, rate > 0, burst >= 1, max_nonces >= 1")
        self.skew_s = skew_s
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_nonces = max_nonces
        self._clock = clock
        self._on_change = on_change
        self._entries: dict[str, _Entry] = {}
        # Replay memory: a set for lookups and a FIFO of (expiry second, keys) for pruning; grouping by second
        # saves a tuple and a float per nonce (~220 -> ~140 bytes each). The key joins device id and nonce with
        # "\n", which neither may contain, so two devices' nonces never collide.
        self._nonces: set[str] = set()
        self._expiry: deque[tuple[int, list[str]]] = deque()
        self._retain_s = 2 * skew_s + 1  # +1: timestamps are whole seconds, the clock is not
        self._now_high = float("-inf")  # the clock's high-water mark, so a backwards step never shortens memory
        # local changes (put/revoke) are numbered, so a snapshot read from the store before one of them cannot
        # undo it when it arrives after it (refresh)
        self.generation = 0
        self._changed_at: dict[str, int] = {}
        self.replace_all(devices)

    # -- registry -------------------------------------------------------------------------------------------
    def replace_all(self, devices: Iterable[Device]) -> None:
        """Swap in a fresh set of records (start-up, reload). Buckets and the replay memory are kept.

        An invalid stored record is skipped with an error log rather than stopping the engine: that one device
        is refused (403) until an operator re-registers it, which fails closed without taking every scanner down.
        """
        now = self._clock()
        entries: dict[str, _Entry] = {}
        for device in devices:
            try:
                verify_key = _validated(device)
            except PayloadError as exc:
                log.error("skipping stored device record: %s", exc)
                continue
            old = self._entries.get(device.device_id)
            entry = _Entry(device, verify_key, self.burst, now)
            if old is not None:
                entry.tokens, entry.refilled, entry.last_seen = old.tokens, old.refilled, old.last_seen
            entries[device.device_id] = entry
        self._entries = entries

    def refresh(self, devices: Iterable[Device], generation: int, *, complete: bool = True) -> int:
        """Bring in the store's view of devices (another node registered, re-keyed or revoked one), read when
        :attr:`generation` was ``generation``; returns how many devices changed.

        A device changed here since then keeps its local state (the snapshot predates it); an unchanged record
        keeps its parsed key, bucket and last-seen time, so a refresh costs a comparison per device, not a key
        parse. ``complete``: the snapshot is every device, and one absent from it is dropped unless it was
        registered here since; else it holds only the devices that changed, and the others stay as they are."""
        now = self._clock()
        entries: dict[str, _Entry] = {} if complete else dict(self._entries)
        changed = 0
        for device in devices:
            old = self._entries.get(device.device_id)
            if self._changed_at.get(device.device_id, -1) > generation and old is not None:
                entries[device.device_id] = old
                continue
            if old is not None and old.device == device:
                entries[device.device_id] = old
                continue
            try:
                verify_key = old.verify_key if old is not None and old.device.public_key == device.public_key else None
                entry = _Entry(device, verify_key or _validated(device), self.burst, now)
            except PayloadError as exc:
                log.error("skipping stored device record: %s", exc)
                continue
            if old is not None:
                entry.tokens, entry.refilled, entry.last_seen = old.tokens, old.refilled, old.last_seen
            if device.revoked and (old is None or not old.device.revoked):
                log.warning("device %s revoked (through another node)", device.device_id)
            entries[device.device_id] = entry
            changed += 1
        if complete:
            for device_id, old in self._entries.items():
                if device_id not in entries and self._changed_at.get(device_id, -1) > generation:
                    entries[device_id] = old
            changed += sum(1 for d in self._entries if d not in entries)
        self._entries = entries
        return changed

    def _mark(self, device_id: str) -> None:
        self.generation += 1
        self._changed_at[device_id] = self.generation

    def put(self, device: Device) -> None:
        """Register or update a device; refuses a malformed id or a weak (small-order, off-curve) key with 400."""
        verify_key = _validated(device)
        old = self._entries.get(device.device_id)
        entry = _Entry(device, verify_key, self.burst, self._clock())
        if old is not None:  # keep the bucket: re-registering must not reset a device's rate limit
            entry.tokens, entry.refilled, entry.last_seen = old.tokens, old.refilled, old.last_seen
        self._entries[device.device_id] = entry
        self._mark(device.device_id)
        log.info(
            "device %s registered (label %r, %s)",
            device.device_id,
            device.label,
            f"venues {', '.join(device.venues)}" if device.venues else "unbound: any venue",
        )
        if self._on_change is not None:
            self._on_change(device)

    def revoke(self, device_id: str) -> Device:
        """Mark a device revoked; the very next request from it is refused (no cache to expire)."""
        entry = self._entries.get(device_id)
        if entry is None:
            raise NotFoundError(f"no registered device {device_id!r}")
        entry.device = replace(entry.device, revoked=True)
        self._mark(device_id)
        log.warning("device %s revoked", device_id)
        if self._on_change is not None:
            self._on_change(entry.device)
        return entry.device

    def get(self, device_id: str) -> Device | None:
        entry = self._entries.get(device_id)
        return None if entry is None else entry.device

    def all(self) -> list[Device]:
        return sorted((e.device for e in self._entries.values()), key=lambda d: d.device_id)

    def __len__(self) -> int:
        return len(self._entries)

    def active_devices(self, window_s: float = 60) -> int:
        """Devices that authenticated within ``window_s``; O(devices), called once per metrics scrape."""
        since = self._clock() - window_s
        return sum(1 for e in self._entries.values() if e.last_seen >= since and not e.device.revoked)

    @property
    def remembered_nonces(self) -> int:
        return len(self._nonces)

    # -- request authentication -----------------------------------------------------------------------------
    def authenticate(self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes) -> Device:
        """Check one request against the contract in the module docstring; return its device or raise.

        This runs on the event loop: one Ed25519 verify per request, shared by the hundred or so scans it
        carries (whose own verification is batched in threads), so it is small per scan. Handing it to a thread
        would cost more than the verify itself (a run_in_executor round trip measured longer; README).
        """
        # 1. cheap, local checks: no lookups, nothing an attacker can make expensive
        device_id = _header(headers, "X-Device-Id")
        if not DEVICE_ID_RE.fullmatch(device_id):
            raise AuthError("X-Device-Id must be 1..64 characters of A-Z a-z 0-9 _ . : -")
        ts_text = _header(headers, "X-Timestamp")
        if not TIMESTAMP_RE.fullmatch(ts_text):
            raise AuthError("X-Timestamp must be Unix seconds: 1..12 decimal digits")
        nonce = _header(headers, "X-Nonce")
        if not NONCE_RE.fullmatch(nonce):
            raise AuthError("X-Nonce must be 16..64 characters of A-Z a-z 0-9 _ -")
        sig_text = _header(headers, "X-Signature")
        signature = b64url_decode_canonical(sig_text.encode("ascii"), 64) if SIGNATURE_RE.fullmatch(sig_text) else None
        if signature is None:
            raise AuthError("X-Signature must be 86 characters of canonical unpadded base64url (64 bytes)")
        if not path_qs.isascii():
            raise AuthError("request path must be ASCII (percent-encode it) to be signed")

        # 2. who is it
        entry = self._entries.get(device_id)
        if entry is None:
            raise ForbiddenError(f"unknown device {device_id!r}: register it with the operator first")
        if entry.device.revoked:
            raise ForbiddenError(f"device {device_id!r} is revoked")

        # 3. freshness (before the signature: a stale request is refused without spending a verify)
        now = self._clock()
        offset = now - int(ts_text)
        if abs(offset) > self.skew_s:
            raise AuthError(
                f"X-Timestamp is {abs(offset):.1f} s {'behind' if offset > 0 else 'ahead of'} server time "
                f"(allowed {self.skew_s}); check the device clock"
            )

        # 4. proof of possession
        message = signed_message(method, path_qs, device_id, ts_text, nonce, body)
        try:
            entry.verify_key.verify(message, signature)
        except BadSignatureError:
            raise AuthError(
                f"X-Signature does not verify for device {device_id!r} (wrong key, or method, path, headers "
                "or body differ from what was signed)"
            ) from None

        # 5. replay memory: look up, then make sure there is room, before the rate limit spends a token
        self._prune(now)
        key = device_id + "\n" + nonce
        if key in self._nonces:
            raise AuthError(f"X-Nonce was already used by device {device_id!r} (replayed request)")
        if len(self._nonces) >= self.max_nonces:
            # Fail closed: dropping a remembered nonce early would let whoever captured that request replay it
            # while its timestamp is still valid. Refusing is safe: scanners keep scans and retry on 503.
            retry = max(1.0, self._expiry[0][0] - self._now_high) if self._expiry else 1.0
            log.error("replay memory full (%d nonces): refusing device requests", len(self._nonces))
            raise OverloadedError(f"replay-protection memory is full ({self.max_nonces} nonces); retry later", retry)

        # 6. rate limit (token bucket)
        tokens = min(self.burst, entry.tokens + max(0.0, now - entry.refilled) * self.rate)
        entry.refilled = max(entry.refilled, now)
        if tokens < 1.0:
            entry.tokens = tokens
            raise RateLimitedError(
                f"device {device_id!r} exceeded {self.rate:g} requests/s (burst {self.burst:g})",
                retry_after=(1.0 - tokens) / self.rate,
            )
        entry.tokens = tokens - 1.0

        self._nonces.add(key)
        expires = math.ceil(self._now_high + self._retain_s)
        if self._expiry and self._expiry[-1][0] == expires:
            self._expiry[-1][1].append(key)
        else:
            self._expiry.append((expires, [key]))
        entry.last_seen = now
        return entry.device

    def _prune(self, now: float) -> None:
        self._now_high = max(self._now_high, now)
        expiry, nonces, high = self._expiry, self._nonces, self._now_high
        while expiry and expiry[0][0] <= high:
            nonces.difference_update(expiry.popleft()[1])
