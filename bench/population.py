"""A synthetic city over several days: who scans which static code, where and when, for benchmarks and load tests.

A fixed "repeat share" says nothing about what a node's verified-code cache sees; what it sees is a population
living its routines. This module draws one from ``bench/synth.py``'s world (the same people, venues, workplaces,
shops near home and Zipf venue popularity) and lays routines over it, day after day:

* **commuters** (35 % of people) scan in at their workplace in the morning (around 08:18, σ 48 min) and, 8 to 9
  hours later, out again;
* **errands**: every person runs about one a day (Poisson with the world's per-person activity, mean 1), at one of
  their three shops near home or, one time in ten, anywhere in the city by popularity; commuters run theirs after
  work, everyone else between 07:00 and 21:00; a stay lasts a lognormal time with a median of 45 minutes;
* **85 % of visits are scanned out**; the rest leave without scanning (an exit after the last simulated midnight
  is dropped too: it has not happened yet);
* **one static code per person** for the whole run, minted once under the bench issuer key with
  ``engine.codes.payload.mint``'s construction and cached on disk (signing a million codes costs ~45 s of CPU; a
  cached book loads in well under a second);
* **devices per venue** (``devices_per_venue``, default 1), or relays that upload for ``venues_per_device``
  venues (0: one upload stream for the whole city, which is how ``e2e_bench.py`` keeps its requests full); a
  device uploads what it holds every ``hold_s`` simulated seconds (each device on its own phase), at most
  ``max_scans`` scans per request. Scanners at single venues upload one or two scans at a time (a venue sees
  ~100 scans a day), so the request size is a parameter a report must state, not a detail.

Times are local (UTC+7) and the calendar ends at the last local midnight, so every ``scanned_at`` is in the past
and inside the store's retention as long as ``days`` ≤ 27; an engine accepts only the scans of its offline
window (7 days by default), so a benchmark posts recent days (``e2e_bench.py`` the last one).

Everything is drawn with numpy, a day at a time (no Python loop per scan or per visit); the same parameters give
the same scans. What stays per scan is only what a request body needs (a dict per item, built when a request is
yielded).

    city = City(CityParams(people=200_000, days=3))
    book = city.codes()                               # minted once, then from the cache directory
    for req in city.requests(book, day=3, hours=(7, 10)):
        req.device_id, req.scans                      # one signed POST /v1/scans each
    city.person, city.t_ms, city.day                  # the whole code stream, time-ordered (cache_model.py)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from nacl.bindings import crypto_sign
from nacl.signing import SigningKey

from bench.synth import DAY_MS, HOUR_MS, PEOPLE_PER_VENUE, World
from engine.codes.payload import DOMAIN, Person, b64url_encode, key_id_text, mint

TZ_OFFSET_MS = 7 * HOUR_MS  # Vietnam: routines are local time
BENCH_ISSUER_SEED = hashlib.blake2b(b"vnqr-bench-issuer-v1", digest_size=32).digest()
"""The bench issuer's Ed25519 seed: fixed, so the code book cached on disk stays valid from run to run. A test key
for synthetic people only; engines under benchmark get its public key in their trust list."""
CODE_PERIOD_S = 30 * 86_400
CODE_VALIDITY_S = 400 * 86_400
BOOK_FORMAT = 1
MINT_CHUNK = 25_000
_SURNAMES = ("NGUYEN", "TRAN", "LE", "PHAM", "HOANG", "HUYNH", "PHAN", "VU", "VO", "DANG", "BUI", "DO")
_GIVEN = ("VAN AN", "THI BINH", "MINH CHAU", "QUOC DUNG", "THU HA", "DUC KHANH", "HONG LINH", "GIA BAO")


def venues_for(people: int) -> int:
    """As ``bench/synth.py`` sizes its world: a venue for every 40 people."""
    return max(20, people // PEOPLE_PER_VENUE)


def bench_issuer() -> SigningKey:
    return SigningKey(BENCH_ISSUER_SEED)


def default_cache_dir() -> Path:
    """``$VNQR_BENCH_CACHE``, else ``~/.cache/vnqr-bench``: minted code books, one file per parameter set."""
    env = os.environ.get("VNQR_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vnqr-bench"


def code_window(now_s: int | None = None) -> tuple[int, int]:
    """(iat, exp) of every person's code: issued a month or two ago, valid for 400 days.

    ``iat`` moves in 30-day steps so a cached book stays usable for a month, and always lies before the
    simulated calendar (≤ 27 days back) and inside a trust-list key window that starts a year before now.
    """
    now = int(time.time()) if now_s is None else now_s
    iat = now // CODE_PERIOD_S * CODE_PERIOD_S - CODE_PERIOD_S
    return iat, iat + CODE_VALIDITY_S


def person(i: int) -> Person:
    """Person ``i`` of the city: a 12-digit document number (unique, so person keys never collide) and a QR id."""
    name = f"{_SURNAMES[i % len(_SURNAMES)]} {_GIVEN[(i // len(_SURNAMES)) % len(_GIVEN)]}"
    return Person(f"{i:012d}", name, f"{1950 + i % 55}-{1 + i % 12:02d}-**", f"PC{i:010d}")


def _mint_range(seed: bytes, start: int, stop: int, iat: int, exp: int) -> tuple[bytes, np.ndarray]:
    """Codes ``start..stop-1``, concatenated, and their lengths.

    The same bytes ``engine.codes.payload.mint`` returns (Ed25519 is deterministic), without its re-parse of every code:
    the first code of the range *is* minted with ``mint`` and must match, so a drift of the format shows here.
    """
    key = SigningKey(seed)
    sk = key._signing_key  # the 64-byte libsodium secret key PyNaCl keeps
    suffix = f"|VS1.{key_id_text(bytes(key.verify_key))}.{iat}.{exp}.".encode()
    parts: list[bytes] = []
    for i in range(start, stop):
        head = person(i).fields().encode() + suffix
        parts.append(head + b64url_encode(crypto_sign(DOMAIN + head, sk)[:64]).encode("ascii"))
    if stop > start and parts[0] != mint(person(start), key, iat=iat, exp=exp).encode():
        raise RuntimeError("the batch minter no longer produces engine.codes.payload.mint's bytes")
    return b"".join(parts), np.fromiter((len(p) for p in parts), np.int64, stop - start)


@dataclass(frozen=True)
class CodeBook:
    """Every person's one static code, packed: ``buf[offsets[i]:offsets[i+1]]`` is person ``i``'s code."""

    buf: bytes
    offsets: np.ndarray
    iat: int
    exp: int

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def code(self, i: int) -> str:
        return self.buf[int(self.offsets[i]) : int(self.offsets[i + 1])].decode("ascii")

    @classmethod
    def mint(
        cls,
        people: int,
        *,
        seed: bytes = BENCH_ISSUER_SEED,
        window: tuple[int, int] | None = None,
        cache_dir: Path | None = None,
        workers: int | None = None,
    ) -> CodeBook:
        """Mint (or load from ``cache_dir``) the codes of persons ``0..people-1``.

        The cache file is named by a hash of everything that determines its bytes (format, issuer seed, count,
        iat, exp), written to a temporary name and renamed, so concurrent runs never read half a file. A smaller
        population reuses nothing from a larger one's file (that would need a slice of a file keyed by its size):
        the files are small next to the time they save.
        """
        if people < 1:
            raise ValueError(f"people must be >= 1, not {people}")
        iat, exp = window or code_window()
        directory = default_cache_dir() if cache_dir is None else cache_dir
        digest = hashlib.sha256(f"{BOOK_FORMAT}|{seed.hex()}|{people}|{iat}|{exp}".encode()).hexdigest()[:20]
        path = directory / f"codes-{people}-{digest}.npz"
        if path.exists():
            with np.load(path) as f:
                return cls(f["buf"].tobytes(), f["offsets"], iat, exp)
        chunks = [(s, min(s + MINT_CHUNK, people)) for s in range(0, people, MINT_CHUNK)]
        n_workers = min(len(chunks), workers or os.cpu_count() or 1)
        if n_workers > 1:
            with ProcessPoolExecutor(n_workers) as pool:
                done = list(pool.map(_mint_range, *zip(*((seed, a, b, iat, exp) for a, b in chunks), strict=True)))
        else:
            done = [_mint_range(seed, a, b, iat, exp) for a, b in chunks]
        buf = b"".join(d[0] for d in done)
        offsets = np.zeros(people + 1, np.int64)
        np.cumsum(np.concatenate([d[1] for d in done]), out=offsets[1:])
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, buf=np.frombuffer(buf, np.uint8), offsets=offsets)
        os.replace(tmp, path)
        return cls(buf, offsets, iat, exp)


@dataclass(frozen=True)
class CityParams:
    """Everything that determines a city's scans (and nothing else: same parameters, same scans)."""

    people: int = 200_000
    days: int = 3
    seed: int = 1
    commuter_share: float = 0.35
    errands_per_day: float = 1.0
    errand_median_min: float = 45.0
    errand_sigma: float = 0.6
    scanned_out: float = 0.85
    devices_per_venue: int = 1
    venues_per_device: int = 1  # > 1: a relay uploads for that many venues; 0: one relay for the whole city
    end_ms: int | None = None  # the calendar's end (a local midnight); default: the last one before now

    def validate(self) -> CityParams:
        checks = (
            (self.people >= 100, f"people must be >= 100, not {self.people}"),
            (1 <= self.days <= 27, f"days must be 1..27 (scans older than the retention are refused): {self.days}"),
            (0 <= self.commuter_share <= 1, f"commuter_share must be in [0, 1], not {self.commuter_share}"),
            (0 <= self.scanned_out <= 1, f"scanned_out must be in [0, 1], not {self.scanned_out}"),
            (self.errands_per_day >= 0, f"errands_per_day must be >= 0, not {self.errands_per_day}"),
            (self.errand_median_min > 0, f"errand_median_min must be > 0, not {self.errand_median_min}"),
            (self.devices_per_venue >= 1, f"devices_per_venue must be >= 1, not {self.devices_per_venue}"),
            (self.venues_per_device >= 0, f"venues_per_device must be >= 0, not {self.venues_per_device}"),
            (
                self.devices_per_venue == 1 or self.venues_per_device == 1,
                "devices_per_venue > 1 and relays (venues_per_device != 1) exclude each other",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self


@dataclass(frozen=True)
class Request:
    """One upload: ``at_s`` is when to send it, in seconds after the window's first upload (0 when unpaced)."""

    at_s: float
    device: int
    device_id: str
    scans: list[dict[str, object]]


class City:
    """The scans of ``params.days`` days, time-ordered, as parallel numpy arrays.

    ``t_ms`` (epoch ms), ``person``, ``venue``, ``device`` (global device index), ``direction`` (0 in, 1 out),
    ``day`` (1-based). ``commuter`` and ``world`` describe the people.
    """

    def __init__(self, params: CityParams | None = None) -> None:
        p = self.params = (params or CityParams()).validate()
        end = p.end_ms if p.end_ms is not None else self.last_local_midnight()
        start = end - p.days * DAY_MS
        self.world = World(p.people, venues_for(p.people), start, p.days, p.seed)
        self.start_ms, self.end_ms = start, end
        rng = np.random.default_rng([p.seed, 16])
        self.commuter = rng.random(p.people) < p.commuter_share
        days = [self._day(rng, d) for d in range(p.days)]
        cols = [np.concatenate([d[k] for d in days]) for k in range(5)]
        keep = cols[0] < end  # exits after the last midnight have not happened yet
        order = np.argsort(cols[0][keep], kind="stable")
        t, who, where, direction, day = (c[keep][order] for c in cols)
        self.t_ms: np.ndarray = t
        self.person: np.ndarray = who
        self.venue: np.ndarray = where
        self.direction: np.ndarray = direction
        self.day: np.ndarray = day
        # which of its venue's devices took the scan: fixed per (person, venue, day), as a person queues at one
        k = (who.astype(np.int64) * 7919 + day.astype(np.int64) * 104729) % p.devices_per_venue
        self.device: np.ndarray = where.astype(np.int64) * p.devices_per_venue + k
        if p.venues_per_device != 1:  # relays: one upload stream for a group of venues (or the whole city)
            self.device = where.astype(np.int64) // p.venues_per_device if p.venues_per_device else np.zeros_like(k)

    @staticmethod
    def last_local_midnight(now_ms: int | None = None) -> int:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return (now + TZ_OFFSET_MS) // DAY_MS * DAY_MS - TZ_OFFSET_MS

    def _day(self, rng: np.random.Generator, d: int) -> tuple[np.ndarray, ...]:
        """Visits of day ``d`` (0-based) as scans: (t_ms, person, venue, direction, day)."""
        p, w = self.params, self.world
        midnight = self.start_ms + d * DAY_MS
        # commuting: in around 08:18, out 8-9 h later
        c = np.flatnonzero(self.commuter)
        c_in = rng.normal(8.3, 0.8, len(c)).clip(5.0, 12.0) * HOUR_MS
        c_out = c_in + rng.uniform(8.0, 9.0, len(c)) * HOUR_MS
        # errands: Poisson(activity) a day, after work for commuters, 07-21 for everyone else
        n = rng.poisson(p.errands_per_day * w.activity)
        e = np.repeat(np.arange(p.people), n)
        shop = w.shops[e, rng.integers(0, 3, len(e))]
        anywhere = rng.random(len(e)) < 0.1
        e_venue = np.where(anywhere, rng.choice(w.venues, len(e), p=w._popularity), shop)
        after_work = np.zeros(p.people)
        after_work[c] = c_out
        is_c = self.commuter[e]
        e_in = np.where(
            is_c, after_work[e] + rng.uniform(0.2, 2.5, len(e)) * HOUR_MS, rng.uniform(7.0, 21.0, len(e)) * HOUR_MS
        )
        stay = np.exp(rng.normal(np.log(p.errand_median_min), p.errand_sigma, len(e))).clip(3, 240) * 60_000
        who = np.concatenate([c, e])
        venue = np.concatenate([w.workplace[c], e_venue])
        t_in = midnight + np.concatenate([c_in, e_in]).astype(np.int64)
        t_out = midnight + np.concatenate([c_out, e_in + stay]).astype(np.int64)
        out = rng.random(len(who)) < p.scanned_out
        t = np.concatenate([t_in, t_out[out]])
        return (
            t,
            np.concatenate([who, who[out]]).astype(np.int32),
            np.concatenate([venue, venue[out]]).astype(np.int32),
            np.concatenate([np.zeros(len(who), np.int8), np.ones(int(out.sum()), np.int8)]),
            np.full(len(t), d + 1, np.int16),
        )

    # -- devices: derived from the parameters alone, so another process can register them without the scans --
    @staticmethod
    def device_count(params: CityParams) -> int:
        venues, per = venues_for(params.people), params.venues_per_device
        if per == 0:
            return 1
        return -(-venues // per) if per > 1 else venues * params.devices_per_venue

    @staticmethod
    def device_id_of(params: CityParams, device: int) -> str:
        if params.venues_per_device != 1:
            return f"city-relay-{device:05d}"
        k = params.devices_per_venue
        return f"city-{device // k:06d}-{device % k}"

    @staticmethod
    def device_key_of(params: CityParams, device: int) -> SigningKey:
        """Device ``device``'s Ed25519 key, derived from the city's seed (so a run can register them in bulk)."""
        seed = hashlib.blake2b(f"city-device|{params.seed}|{device}".encode(), digest_size=32).digest()
        return SigningKey(seed)

    @property
    def devices(self) -> int:
        return self.device_count(self.params)

    def device_id(self, device: int) -> str:
        return self.device_id_of(self.params, device)

    def window(self, day: int, hours: tuple[float, float] = (0.0, 24.0)) -> np.ndarray:
        """Indices of the scans taken on ``day`` (1-based) between ``hours`` (local, [from, to))."""
        if not 1 <= day <= self.params.days:
            raise ValueError(f"day must be 1..{self.params.days}, not {day}")
        h0, h1 = hours
        if not 0 <= h0 < h1 <= 24:
            raise ValueError(f"hours must satisfy 0 <= from < to <= 24, not {h0}-{h1}")
        midnight = self.start_ms + (day - 1) * DAY_MS
        lo, hi = np.searchsorted(self.t_ms, [midnight + h0 * HOUR_MS, midnight + h1 * HOUR_MS])
        return np.arange(lo, hi)

    def requests(
        self,
        book: CodeBook,
        day: int,
        hours: tuple[float, float] = (0.0, 24.0),
        *,
        hold_s: float = 60.0,
        max_scans: int = 100,
        speedup: float = 0.0,
    ) -> Iterator[Request]:
        """The window's scans as uploads, in upload order.

        Each device uploads every ``hold_s`` simulated seconds (on a phase of its own) whatever it scanned since,
        split into requests of at most ``max_scans``. With ``speedup`` > 0 a request's ``at_s`` is its simulated
        upload time after the window's first, divided by the speed-up; 0 means "as fast as possible" (all 0).
        """
        if len(book) < self.params.people:
            raise ValueError(f"the code book holds {len(book)} codes for {self.params.people} people")
        if hold_s <= 0 or max_scans < 1 or speedup < 0:
            raise ValueError("hold_s > 0, max_scans >= 1 and speedup >= 0 please")
        idx = self.window(day, hours)
        if not len(idx):
            return
        hold = int(hold_s * 1000)
        dev = self.device[idx]
        phase = (dev * 2654435761) % hold
        upload = (self.t_ms[idx] - phase + hold - 1) // hold * hold + phase  # first upload moment >= scan
        order = np.lexsort((self.t_ms[idx], dev, upload))
        idx, dev, upload = idx[order], dev[order], upload[order]
        new_group = np.ones(len(idx), bool)
        new_group[1:] = (upload[1:] != upload[:-1]) | (dev[1:] != dev[:-1])
        group_start = np.flatnonzero(new_group)
        rank = np.arange(len(idx)) - np.repeat(group_start, np.diff(np.append(group_start, len(idx))))
        starts = np.flatnonzero(new_group | (rank % max_scans == 0))
        ends = np.append(starts[1:], len(idx))
        first = int(upload[0])
        codes = book.buf
        offs = book.offsets
        ids = np.random.default_rng([self.params.seed, day, int(hours[0] * 60)]).bytes(16 * len(idx))
        who, where, direction, t = self.person[idx], self.venue[idx], self.direction[idx], self.t_ms[idx]
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            scans: list[dict[str, object]] = []
            for j in range(s, e):
                i = int(who[j])
                scans.append(
                    {
                        "scan_id": str(uuid.UUID(bytes=ids[16 * j : 16 * j + 16], version=4)),
                        "qr": codes[int(offs[i]) : int(offs[i + 1])].decode("ascii"),
                        "venue_id": f"venue-{int(where[j]):06d}",
                        "direction": "out" if direction[j] else "in",
                        "scanned_at": int(t[j]),
                    }
                )
            d = int(dev[s])
            at = (int(upload[s]) - first) / 1000 / speedup if speedup else 0.0
            yield Request(at, d, self.device_id(d), scans)

    def code_stream(self, book: CodeBook, *, start: int = 0, stride: int = 1) -> Iterator[str]:
        """Codes in scan order (every ``stride``-th from ``start``), for a load generator that draws one at a time."""
        offs, buf = book.offsets, book.buf
        for i in self.person[start::stride].tolist():
            yield buf[int(offs[i]) : int(offs[i + 1])].decode("ascii")

    def summary(self) -> dict[str, object]:
        """Facts of the generated city (what a report states beside its figures)."""
        n = len(self.t_ms)
        return {
            "params": asdict(self.params),
            "venues": self.world.venues,
            "devices": self.devices,
            "scans": n,
            "scans_per_person_day": round(n / self.params.people / self.params.days, 3),
            "commuters": int(self.commuter.sum()),
        }
