"""What the simulated scanners send, and the verdict the engine must give each scan.

The load test is only worth running if it can tell a correct engine from a fast wrong one, so every scan is
built with its expected verdict known up front: the codes are minted here, with keys whose trust-list status
we chose (a trusted issuer, a revoked one, one the trust list has never heard of), so no verdict is guessed
from the engine's own answer. ``tests/test_loadtest.py`` runs the reference verifier over a sample of these
scans to keep this module honest.

The mix follows a morning at real venues: most scans are genuine codes, and a few people (staff, regulars)
are scanned many times a day while most are scanned once or twice, so the person drawn for a genuine scan
follows a Zipf law. The rest are the things the field actually shows: expired and not-yet-valid codes,
edited screenshots (bad signature), codes from unknown or revoked issuer keys, revoked codes, legacy
unsigned codes, citizen ID card (CCCD) codes, and text that is not a code at all.

The morning-peak curve (``users_at``) lives here too, free of Locust imports, so the test suite can check it
without letting gevent monkey-patch the test process; ``shapes.py`` wraps it in a ``LoadTestShape``.
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from nacl.signing import SigningKey

from engine.codes.payload import Person, key_id, mint
from engine.codes.trust import TrustedKey, TrustList

DAY = 86_400
YEAR = 365 * DAY
REJECTED = "rejected"
"""Pseudo-verdict of an item the engine must refuse (and never store): its ``scanned_at`` is in the future."""

DEFAULT_MIX: dict[str, float] = {
    "ok": 0.795,
    "expired": 0.04,
    "bad_signature": 0.03,
    "unknown_key": 0.02,
    "revoked_key": 0.01,
    "revoked_code": 0.01,
    "not_yet_valid": 0.01,
    "unsigned_code": 0.03,
    "id_card": 0.03,
    "malformed": 0.02,
    REJECTED: 0.005,
}

_SURNAMES = ("NGUYEN", "TRAN", "LE", "PHAM", "HOANG", "HUYNH", "PHAN", "VU", "VO", "DANG", "BUI", "DO")
_GIVEN = ("VAN AN", "THI BINH", "MINH CHAU", "QUOC DUNG", "THU HA", "DUC KHANH", "HONG LINH", "GIA BAO")
_CARD_NAMES = ("Nguyễn Văn An", "Trần Thị Bình", "Lê Minh Châu", "Phạm Quốc Dũng", "Hoàng Thu Hà")
_ADDRESSES = (
    "Phường Bến Nghé, Quận 1, TP. Hồ Chí Minh",
    "Phường Hàng Bạc, Quận Hoàn Kiếm, Hà Nội",
    "Hải Châu, Đà Nẵng",
)
_MALFORMED = (
    "",
    "hello",
    "https://example.com/check-in?venue=42",
    "a|b|c",
    "******012345|NGUYEN VAN AN|1990-13-01|0|QID1|",
    "******012345|nguyen van an|1990-01-01|0|QID1|",
    "******012345|NGUYEN VAN AN|1990-01-01|0|QID1|VS1.short",
    "line one\nline two",
    "X" * 600,
)


def _seed_key(seed: str) -> SigningKey:
    return SigningKey(bytes.fromhex(seed))


@dataclass(frozen=True)
class Keyring:
    """Every key of one load-test run: what ``run.py`` writes for the Locust processes to read.

    The seeds are test keys made for this run only; the file is written 0600 all the same.
    """

    issuer: str
    revoked_issuer: str
    unknown_issuer: str
    revoked_qids: tuple[str, ...]
    devices: tuple[tuple[str, str], ...]  # (device_id, seed hex)

    @classmethod
    def create(cls, n_devices: int, *, prefix: str = "lt-scanner", revoked_codes: int = 20) -> Keyring:
        def seed() -> str:
            return bytes(SigningKey.generate()).hex()

        return cls(
            issuer=seed(),
            revoked_issuer=seed(),
            unknown_issuer=seed(),
            revoked_qids=tuple(f"RV{i:010d}" for i in range(revoked_codes)),
            devices=tuple((f"{prefix}-{i:05d}", seed()) for i in range(n_devices)),
        )

    def trust_list(self, now: int) -> TrustList:
        """The trust list the engine starts with: the issuer, a revoked issuer, and the revoked codes."""
        keys = []
        for seed, issuer, revoked in ((self.issuer, "pc-covid", False), (self.revoked_issuer, "old-platform", True)):
            pk = bytes(_seed_key(seed).verify_key)
            keys.append(TrustedKey(key_id(pk), issuer, pk, now - YEAR, now + 2 * YEAR, revoked))
        return TrustList.build(keys, self.revoked_qids)

    def device_key(self, index: int) -> tuple[str, SigningKey]:
        device_id, seed = self.devices[index % len(self.devices)]
        return device_id, _seed_key(seed)

    def save(self, path: Path) -> None:
        path.touch(mode=0o600)
        path.write_bytes(
            orjson.dumps(
                {
                    "issuer": self.issuer,
                    "revoked_issuer": self.revoked_issuer,
                    "unknown_issuer": self.unknown_issuer,
                    "revoked_qids": list(self.revoked_qids),
                    "devices": [list(d) for d in self.devices],
                }
            )
        )

    @classmethod
    def load(cls, path: Path) -> Keyring:
        doc = orjson.loads(path.read_bytes())
        return cls(
            issuer=doc["issuer"],
            revoked_issuer=doc["revoked_issuer"],
            unknown_issuer=doc["unknown_issuer"],
            revoked_qids=tuple(doc["revoked_qids"]),
            devices=tuple((d[0], d[1]) for d in doc["devices"]),
        )


def _person(rank: int, prefix: str = "LT") -> Person:
    name = f"{_SURNAMES[rank % len(_SURNAMES)]} {_GIVEN[(rank // len(_SURNAMES)) % len(_GIVEN)]}"
    birth = f"{1950 + rank % 55}-{1 + rank % 12:02d}-**"
    return Person(f"******{rank % 1_000_000:06d}", name, birth, f"{prefix}{rank:012d}")


class ScanMix:
    """Draws scans with their expected verdicts; one per Locust process, shared by its simulated devices.

    Codes are minted once and reused (a person's code is static), so the Zipf-popular people hit the
    engine's verified-code cache exactly as they would in the field. Every expected verdict holds for as long
    as ``stable_s`` after ``now``: expiry and validity times sit days away from it.
    """

    def __init__(
        self,
        keys: Keyring,
        *,
        population: int = 5000,
        zipf_s: float = 1.1,
        mix: dict[str, float] | None = None,
        now: int | None = None,
        rng: random.Random | None = None,
        genuine: Iterator[str] | None = None,
    ) -> None:
        self.now = int(time.time()) if now is None else now
        # a city's code stream (bench/population.py, minted under the issuer) replaces the Zipf draw of genuine codes
        self._genuine = genuine
        self.rng = rng or random.Random()
        self._issuer = _seed_key(keys.issuer)
        self._revoked_issuer = _seed_key(keys.revoked_issuer)
        self._unknown_issuer = _seed_key(keys.unknown_issuer)
        self._revoked_qids = keys.revoked_qids
        mix = dict(DEFAULT_MIX if mix is None else mix)
        self._kinds = list(mix)
        self._kind_cum = list(itertools.accumulate(mix.values()))
        self._person_cum = list(itertools.accumulate(1.0 / (r**zipf_s) for r in range(1, population + 1)))
        self._codes: dict[tuple[str, int], str] = {}

    # -- codes ----------------------------------------------------------------------------------------------
    def _pick(self, cum: list[float]) -> int:
        return min(bisect.bisect(cum, self.rng.random() * cum[-1]), len(cum) - 1)

    def _minted(self, kind: str, rank: int) -> str:
        """One code per (kind, person), minted on first use: minting costs as much as a verification."""
        code = self._codes.get((kind, rank))
        if code is None:
            code = self._mint(kind, rank)
            self._codes[(kind, rank)] = code
        return code

    def _mint(self, kind: str, rank: int) -> str:
        now = self.now
        if kind == "ok":
            return mint(_person(rank), self._issuer, iat=now - 30 * DAY, exp=now + YEAR)
        if kind == "expired":
            return mint(_person(rank), self._issuer, iat=now - 200 * DAY, exp=now - 10 * DAY)
        if kind == "not_yet_valid":
            return mint(_person(rank), self._issuer, iat=now + 10 * DAY, exp=now + YEAR)
        if kind == "unknown_key":
            return mint(_person(rank, "UK"), self._unknown_issuer, iat=now - DAY, exp=now + YEAR)
        if kind == "revoked_key":
            return mint(_person(rank, "RK"), self._revoked_issuer, iat=now - DAY, exp=now + YEAR)
        if kind == "revoked_code":
            qid = self._revoked_qids[rank % len(self._revoked_qids)]
            p = _person(rank)
            return mint(Person(p.doc_number, p.name, p.birth_date, qid), self._issuer, iat=now - DAY, exp=now + YEAR)
        raise ValueError(f"no minted code of kind {kind}")

    def _genuine_code(self) -> str:
        if self._genuine is not None:
            code = next(self._genuine, None)
            if code is not None:
                return code
            self._genuine = None  # the city's days are used up: back to the Zipf population
        return self._minted("ok", self._pick(self._person_cum))

    def code(self, kind: str) -> str:
        """A code whose verdict is ``kind`` (``ok`` draws the person from the Zipf law)."""
        rng = self.rng
        if kind == "ok":
            return self._genuine_code()
        if kind in ("expired", "not_yet_valid", "unknown_key", "revoked_key", "revoked_code"):
            return self._minted(kind, rng.randrange(50))
        if kind == "bad_signature":
            genuine = self._genuine_code()
            if rng.random() < 0.5:  # an edited screenshot: the identity changed, the signature did not
                doc, rest = genuine.split("|", 1)
                return doc[:-1] + ("1" if doc[-1] != "1" else "2") + "|" + rest
            pos = len(genuine) - 40  # a mid-signature character: all 6 bits used, so still canonical
            return genuine[:pos] + ("A" if genuine[pos] != "A" else "B") + genuine[pos + 1 :]
        if kind == "unsigned_code":
            n = rng.randrange(10_000)
            return f"******{n:06d}|TRAN THI BINH|1985-**-**|{n % 2}|LEG{n:08d}|"
        if kind == "id_card":
            number = f"0{rng.randrange(10**11):011d}"
            old = f"{rng.randrange(10**9):09d}" if rng.random() < 0.5 else ""
            dob = f"{rng.randint(1, 28):02d}{rng.randint(1, 12):02d}{rng.randint(1940, 2010)}"
            issued = f"{rng.randint(1, 28):02d}{rng.randint(1, 12):02d}{rng.randint(2016, 2024)}"
            name, gender, address = rng.choice(_CARD_NAMES), rng.choice(("Nam", "Nữ")), rng.choice(_ADDRESSES)
            if rng.random() < 0.2:  # the 6-field variant, without the old ID number
                return f"{number}|{name}|{dob}|{gender}|{address}|{issued}"
            return f"{number}|{old}|{name}|{dob}|{gender}|{address}|{issued}"
        if kind == "malformed":
            return rng.choice(_MALFORMED)
        raise ValueError(f"unknown scan kind {kind!r}")

    # -- scans ----------------------------------------------------------------------------------------------
    def scan(self, venue_id: str, scanned_at_ms: int) -> tuple[dict[str, Any], str]:
        """One scan item for ``POST /v1/scans`` and the verdict expected for it (or ``REJECTED``)."""
        kind = self._kinds[self._pick(self._kind_cum)]
        direction = "in" if self.rng.random() < 0.8 else "out"
        if kind == REJECTED:  # a scanner with its clock a day ahead: the engine must refuse the item
            item = _item(self.code("ok"), venue_id, direction, scanned_at_ms + DAY * 1000)
        else:
            item = _item(self.code(kind), venue_id, direction, scanned_at_ms)
        return item, kind

    def batch(self, n: int, venue_id: str, *, backlog_s: float = 0.0) -> tuple[list[dict[str, Any]], list[str]]:
        """``n`` scans taken now, or (``backlog_s`` > 0) spread over that many seconds before now, oldest first."""
        now_ms = int(time.time() * 1000)
        times = sorted(now_ms - int(self.rng.random() * backlog_s * 1000) for _ in range(n))
        pairs = [self.scan(venue_id, t) for t in times]
        return [p[0] for p in pairs], [p[1] for p in pairs]


def _item(code: str, venue_id: str, direction: str, scanned_at_ms: int) -> dict[str, Any]:
    return {
        "scan_id": str(uuid.uuid4()),
        "qr": code,
        "venue_id": venue_id,
        "direction": direction,
        "scanned_at": scanned_at_ms,
    }


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def require_loopback(url: str) -> None:
    """Refuse any target but this machine: our rules forbid generating load against another address."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in LOOPBACK_NAMES
    if not loopback:
        raise ValueError(f"refusing to load {url!r}: the load test only targets 127.0.0.1 / localhost")


# -- the morning peak (locust-free, so tests can check it without gevent's monkey-patching) ------------
MAX_DURATION_S = 3600
BASE_PEAK_USERS = 20

# Morning shape: (end of phase as a fraction of the duration, users at the end as a fraction of the peak)
PHASES: tuple[tuple[float, float], ...] = (
    (0.20, 0.50),  # ramp: venues open, scanners come online
    (0.45, 0.50),  # plateau: steady arrivals
    (0.55, 1.00),  # burst: offices and schools open at once
    (0.65, 1.00),  # the burst holds briefly
    (1.00, 0.15),  # decline
)


def users_at(t: float, duration: float, peak_users: int) -> int | None:
    """Users wanted ``t`` seconds in; None once the morning is over (Locust then stops the test)."""
    if t >= duration:
        return None
    start_frac, start_users = 0.0, 0.0
    for end_frac, end_users in PHASES:
        if t < end_frac * duration:
            span = (end_frac - start_frac) * duration
            share = start_users + (end_users - start_users) * (t - start_frac * duration) / span
            return max(1, round(share * peak_users))
        start_frac, start_users = end_frac, end_users
    return None
