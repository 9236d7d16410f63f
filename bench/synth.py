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

``World.row_chunks`` and ``fill_rows`` are the same rows built straight into the store's packed
:class:`engine.store.columns.Rows` (no Python object per value), for fills of 100M rows: ``chunks`` builds a
UUID, a few strings and a bytes object per row, which was half of a 100M-row fill.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.store.columns import ENUM_CODES, Rows, Strings

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

    def row_chunks(self, rows: int, chunk: int = 100_000) -> Iterator[Rows]:
        """The rows of :meth:`chunks` (same seed, same values), as packed ``Rows``: vectorised end to end."""
        rng = np.random.default_rng(self.seed + 1)
        done = 0
        while done < rows:
            n = min(chunk, rows - done)
            yield self._packed(*self._draw(rng, n, self.days * done / rows, self.days * (done + n) / rows))
            done += n

    def _chunk(self, rng: np.random.Generator, n: int, day_from: float, day_to: float) -> dict[str, Any]:
        who, where, at, direction, received, ids = self._draw(rng, n, day_from, day_to)
        m = len(who)
        # a person shows the same kind of code at every venue: most a signed one, a few an unsigned one or a card
        cls = self.code_class[who]
        verdict = np.array([v for v, _k, _s in UNVERIFIED_CLASSES], dtype=object)[cls]
        kind = np.array([k for _v, k, _s in UNVERIFIED_CLASSES], dtype=object)[cls]
        keys = self._keys[who]
        return {
            "scan_id": [uuid.UUID(bytes=ids[i * 16 : i * 16 + 16], version=4) for i in range(m)],
            "device_id": [f"scanner-{v:06d}" for v in where.tolist()],
            "venue_id": [f"venue-{v:06d}" for v in where.tolist()],
            "direction": np.where(direction == 0, "in", "out").tolist(),
            "scanned_at": at.astype("datetime64[ms]"),
            "received_at": received.astype("datetime64[ms]"),
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

    def _packed(
        self,
        who: np.ndarray,
        where: np.ndarray,
        at: np.ndarray,
        direction: np.ndarray,
        received: np.ndarray,
        ids: bytes,
    ) -> Rows:
        """:meth:`_chunk`'s row values, packed with array operations only."""
        m = len(who)
        cls = self.code_class[who]
        verdicts = np.array([ENUM_CODES["verdict"][v] for v, _k, _s in UNVERIFIED_CLASSES], np.uint8)
        kinds = np.array([ENUM_CODES["code_kind"][k] for _v, k, _s in UNVERIFIED_CLASSES], np.uint8)
        signed = np.array([k == "signed" for _v, k, _s in UNVERIFIED_CLASSES])[cls]
        has_qr = np.array([k != "id_card" for _v, k, _s in UNVERIFIED_CLASSES])[cls]
        uid = np.frombuffer(ids, np.uint8).reshape(m, 16).copy()
        uid[:, 6] = (uid[:, 6] & 0x0F) | 0x40  # what uuid.UUID(bytes=..., version=4) does to the raw bytes
        uid[:, 8] = (uid[:, 8] & 0x3F) | 0x80
        venues, code = np.unique(where, return_inverse=True)
        digits = lambda v, w: (v[:, None] // 10 ** np.arange(w - 1, -1, -1)) % 10 + 48  # noqa: E731
        names = np.hstack([np.frombuffer(b"venue-", np.uint8)[None].repeat(m, 0), digits(where, 6)]).astype(np.uint8)
        qr = np.hstack([np.frombuffer(b"QID", np.uint8)[None].repeat(m, 0), digits(who, 10)]).astype(np.uint8)
        qr_lengths = np.where(has_qr, 13, 0)
        qr_offsets = np.zeros(m + 1, np.int64)
        np.cumsum(qr_lengths, out=qr_offsets[1:])
        return Rows(
            scan_id=uid.tobytes(),
            device_code=code.astype(np.int32),
            devices=[f"scanner-{v:06d}" for v in venues.tolist()],
            venue_id=Strings(names.tobytes(), np.arange(m + 1, dtype=np.int64) * 12),
            direction=(direction + 1).astype(np.uint8),
            scanned_ms=at.astype(np.int64),
            received_ms=received.astype(np.int64),
            verdict=verdicts[cls],
            reason=np.full(m, ENUM_CODES["reason"]["none"], np.uint8),
            kind=kinds[cls],
            person_key=self._keys[who].tobytes(),
            qr_id=Strings(qr[has_qr].tobytes(), qr_offsets),
            key_code=signed.astype(np.int32),
            key_ids=["", "AAAAAAAAAAA"],
            issuers=["", "pc-covid"],
            iat_s=np.full(m, self.start_ms // 1000 - 86_400 * 90, np.int64),
            exp_s=np.full(m, self.start_ms // 1000 + 86_400 * 365, np.int64),
        )

    def _draw(
        self, rng: np.random.Generator, n: int, day_from: float, day_to: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, bytes]:
        """One chunk's visits as scans: person, venue, time, direction (0 in, 1 out), receipt time, raw ids."""
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
        ids = rng.bytes(16 * m)
        return who, where, at, direction, at + rng.integers(50, 3000, m), ids


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


def fill_rows(store: Any, world: World, rows: int, *, chunk: int = 100_000, progress: bool = False) -> FillStats:
    """:func:`fill` with :meth:`World.row_chunks`: the same rows, generated without a Python object per value."""
    t0 = time.perf_counter()
    gen = 0.0
    done = 0
    it = world.row_chunks(rows, chunk)
    while True:
        g0 = time.perf_counter()
        packed = next(it, None)
        gen += time.perf_counter() - g0
        if packed is None:
            break
        store.insert_scans(packed)
        done += len(packed)
        if progress:
            rate = done / (time.perf_counter() - t0)
            print(f"\r  {done:>11,} rows  {rate:>9,.0f} rows/s", end="", flush=True)
    if progress:
        print()
    return FillStats(done, time.perf_counter() - t0, gen)
