"""Synthetic but realistic scans for benchmarks: who goes where, when, and for how long.

Uniformly random rows would flatter every query (no hot venues, no repeated routines), so the generator
models what a month of check-ins looks like: venue popularity follows a Zipf-like law, every person has a
home area, a workplace and a few shops near home, weekdays send most people to work in the morning and to
shops around it, stays are entry/exit pairs (some exits are missing, as on systems where checking out is
optional), and a few percent of codes are unverified (unsigned, ID cards, expired).

Generation is vectorised with numpy, one chunk of rows per store insert, so the benchmark measures the store,
not this module. Everything derives from a seed: the same arguments give the same rows.

    from bench.synth import World, fill
    world = World.for_rows(1_000_000)
    fill(store, world, 1_000_000)                 # 100k-row inserts
    world.person_key(42).hex(), world.qr_id(42)   # index cases for tracing
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
SCANS_PER_PERSON_MONTH = 50  # ~1 visit a day, most with an entry and an exit
PEOPLE_PER_VENUE = 40
AREA_VENUES = 100  # venues per neighbourhood: people shop near home
MISSING_EXIT = 0.15
#: (verdict, code kind, share of people): ~3% of people show a code that cannot be verified
UNVERIFIED_CLASSES = (
    ("ok", "signed", 0.97),
    ("unsigned_code", "unsigned", 0.015),
    ("id_card", "id_card", 0.01),
    ("expired", "signed", 0.005),
)


@dataclass
class World:
    """People, venues and routines; rows are drawn from it chunk by chunk."""

    people: int
    venues: int
    start_ms: int
    days: int = 28
    seed: int = 1

    @classmethod
    def for_rows(cls, rows: int, *, days: int = 28, end_ms: int | None = None, seed: int = 1) -> World:
        """A world sized so ``rows`` scans over ``days`` is one month of ordinary life for its population."""
        people = max(100, rows * 28 // (SCANS_PER_PERSON_MONTH * days))
        venues = max(20, people // PEOPLE_PER_VENUE)
        end = int(time.time() * 1000) if end_ms is None else end_ms
        start = (end - days * DAY_MS) // DAY_MS * DAY_MS
        return cls(people, venues, start, days, seed)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        ranks = np.arange(1, self.venues + 1, dtype=np.float64)
        weights = 1.0 / ranks**1.07
        self._popularity = weights / weights.sum()
        rng.shuffle(self._popularity)  # popular venues are spread over areas, not all in area 0
        areas = max(1, self.venues // AREA_VENUES)
        self.home_area = rng.integers(0, areas, self.people)
        # employers are less skewed than shoppers' favourites: a hot mall is not everyone's office
        jobs = 1.0 / ranks**0.6
        self.workplace = rng.choice(self.venues, self.people, p=jobs / jobs.sum())
        # three shops in the home area, chosen by popularity within it
        local = rng.random((self.people, 3)) ** 2  # skewed towards the area's first (busiest) venues
        span = np.minimum(AREA_VENUES, self.venues)
        self.shops = np.minimum(
            self.home_area[:, None] * AREA_VENUES + (local * span).astype(np.int64), self.venues - 1
        )
        self.works = rng.random(self.people) < 0.6
        shares = np.array([c[2] for c in UNVERIFIED_CLASSES])
        self.code_class = rng.choice(len(shares), self.people, p=shares / shares.sum())
        self.activity = rng.gamma(2.0, 0.5, self.people)  # some people go out far more than others
        self._activity_p = self.activity / self.activity.sum()
        self._keys = np.frombuffer(
            b"".join(hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).digest() for i in range(self.people)),
            dtype=np.uint8,
        ).reshape(self.people, 16)

    def person_key(self, i: int) -> bytes:
        return self._keys[i].tobytes()

    def qr_id(self, i: int) -> str:
        return f"QID{i:010d}"

    def venue_id(self, v: int) -> str:
        return f"venue-{v:06d}"

    def chunks(self, rows: int, chunk: int = 100_000) -> Iterator[dict[str, Any]]:
        """Insert columns (the shape ``Store.insert_scans`` takes), ``chunk`` rows at a time, ``rows`` in all."""
        rng = np.random.default_rng(self.seed + 1)
        done = 0
        while done < rows:
            n = min(chunk, rows - done)
            # chunks advance through the month, as a live engine's inserts do: each touches a day or two
            yield self._chunk(rng, n, self.days * done / rows, self.days * (done + n) / rows)
            done += n

    def _chunk(self, rng: np.random.Generator, n: int, day_from: float, day_to: float) -> dict[str, Any]:
        visits = int(n / (2 - MISSING_EXIT) * 1.05) + 16  # enough visits to fill n scans whatever is drawn
        person = rng.choice(self.people, visits, p=self._activity_p)
        day = np.floor(rng.uniform(day_from, day_to, visits)).astype(np.int64).clip(0, self.days - 1)
        weekday = (day + 3) % 7 < 5  # the epoch day 0 was a Thursday
        to_work = weekday & self.works[person] & (rng.random(visits) < 0.55)
        venue = np.where(to_work, self.workplace[person], self.shops[person, rng.integers(0, 3, visits)])
        elsewhere = rng.random(visits) < 0.1  # errands anywhere in the city, by popularity
        venue = np.where(elsewhere, rng.choice(self.venues, visits, p=self._popularity), venue)
        arrive = np.where(
            to_work,
            rng.normal(8.3, 0.8, visits) * HOUR_MS,
            rng.uniform(7, 21, visits) * HOUR_MS,
        ).clip(0, 23.5 * HOUR_MS)
        dwell = np.where(to_work, rng.normal(8.5, 1.0, visits) * HOUR_MS, rng.lognormal(3.3, 0.6, visits) * 60_000)
        t_in = self.start_ms + day * DAY_MS + arrive.astype(np.int64)
        t_out = t_in + dwell.clip(60_000, 11 * HOUR_MS).astype(np.int64)
        has_out = rng.random(visits) >= MISSING_EXIT
        # keep whole visits up to n scans; if one scan is left over, the next visit has no exit
        cum = np.cumsum(1 + has_out)
        k = int(np.searchsorted(cum, n, side="right"))
        if k < visits and (cum[k - 1] if k else 0) < n:
            has_out[k] = False
            k += 1
        person, venue, t_in, t_out, has_out = person[:k], venue[:k], t_in[:k], t_out[:k], has_out[:k]
        who = np.concatenate([person, person[has_out]])
        where = np.concatenate([venue, venue[has_out]])
        at = np.concatenate([t_in, t_out[has_out]])
        direction = np.concatenate([np.zeros(k, np.int8), np.ones(int(has_out.sum()), np.int8)])
        m = len(who)
        # a person shows the same kind of code at every venue: most a signed one, a few an unsigned one or a card
        cls = self.code_class[who]
        verdict = np.array([v for v, _k, _s in UNVERIFIED_CLASSES], dtype=object)[cls]
        kind = np.array([k for _v, k, _s in UNVERIFIED_CLASSES], dtype=object)[cls]
        ids = rng.bytes(16 * m)
        keys = self._keys[who]
        return {
            "scan_id": [uuid.UUID(bytes=ids[i * 16 : i * 16 + 16], version=4) for i in range(m)],
            "device_id": [f"scanner-{v:06d}" for v in where.tolist()],
            "venue_id": [f"venue-{v:06d}" for v in where.tolist()],
            "direction": np.where(direction == 0, "in", "out").tolist(),
            "scanned_at": at.astype("datetime64[ms]"),
            "received_at": (at + rng.integers(50, 3000, m)).astype("datetime64[ms]"),
            "verdict": verdict.tolist(),
            "reason": ["none"] * m,
            "code_kind": kind.tolist(),
            "person_key": [keys[i].tobytes() for i in range(m)],
            "qr_id": [f"QID{p:010d}" if k != "id_card" else "" for p, k in zip(who.tolist(), kind, strict=True)],
            "key_id": ["AAAAAAAAAAA" if k == "signed" else "" for k in kind],
            "issuer": ["pc-covid" if k == "signed" else "" for k in kind],
            "code_iat": np.full(m, self.start_ms // 1000 - 86_400 * 90, dtype="datetime64[s]"),
            "code_exp": np.full(m, self.start_ms // 1000 + 86_400 * 365, dtype="datetime64[s]"),
        }


@dataclass(frozen=True)
class FillStats:
    rows: int
    seconds: float
    generate_seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def fill(store: Any, world: World, rows: int, *, chunk: int = 100_000, progress: bool = False) -> FillStats:
    """Write ``rows`` scans in ``chunk``-row inserts; reports time spent generating apart from inserting."""
    t0 = time.perf_counter()
    gen = 0.0
    done = 0
    it = world.chunks(rows, chunk)
    while True:
        g0 = time.perf_counter()
        cols = next(it, None)
        gen += time.perf_counter() - g0
        if cols is None:
            break
        store.insert_scans(cols)
        done += len(cols["scan_id"])
        if progress:
            rate = done / (time.perf_counter() - t0)
            print(f"\r  {done:>11,} rows  {rate:>9,.0f} rows/s", end="", flush=True)
    if progress:
        print()
    return FillStats(done, time.perf_counter() - t0, gen)
