"""What a node's verified-code cache would hit on a city's scans: the model behind the capacity plan.

It replays the code stream of a ``bench/population.py`` city (every scan of every day, in time order; all codes
genuine and signed, so every scan is a cache lookup, as the engine counts them) through

* **LRU of N entries**: the engine's verified-code cache before the verified-code set (an ``OrderedDict``, a
  hit moves the code to the back, a miss is verified and appended, the front is evicted past N), kept as the
  baseline the issue compares against;
* **the bounded verified-code set of N entries** (:func:`bounded_set_hits`): exactly both verifiers' set
  (``engine.verify.verified_set.VerifiedSet``: a full set evicts the entry in the new tag's home slot, no
  reordering on a hit; lookups of a batch see the set as it began), given the codes' tags; the engine's own hit
  rate is what ``e2e_bench.py`` reports;
* **every code remembered once verified** (a set whose entries expire at the code's ``exp``): the
  deployment-wide verified-code set of issue 16, seen from one node whose population is the whole city;

and prints the hit rate per day, and in the busiest hour of each day (the peak is what capacity is planned for:
the morning peak is commuters' entries, whose last scan was yesterday evening). What it does not model: codes
that never reach the cache (unsigned codes, ID cards, unknown keys), renewals of codes, a load balancer
spreading one city over several nodes (each node would then see all of the city's people but a fraction of
their scans: a lower LRU hit rate), and the order in which uploads reach the engine (time order here; a device
holding scans for a minute reorders them by less than that).

    python bench/cache_model.py --people 2000000 --days 3 --sizes 262144,1000000   # the issue's table

``model(city, sizes)`` returns the same figures as a dict (``capacity.py`` plans from it).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.population import City, CityParams
from bench.synth import HOUR_MS
from engine.verify.verified_set import VerifiedSet

SET = 0  # a "size" of 0 in ``model``: the unbounded set


def lru_hits(stream: np.ndarray, size: int) -> np.ndarray:
    """For each lookup of ``stream`` (code ids), whether an LRU of ``size`` entries held it (PyVerifier's cache)."""
    hits = np.zeros(len(stream), np.bool_)
    if size <= 0:
        return hits
    cache: OrderedDict[int, None] = OrderedDict()
    move, pop = cache.move_to_end, cache.popitem
    out = bytearray(len(stream))
    for j, code in enumerate(stream.tolist()):
        if code in cache:
            move(code)
            out[j] = 1
        else:
            cache[code] = None
            if len(cache) > size:
                pop(last=False)
    hits[:] = np.frombuffer(bytes(out), np.uint8).astype(np.bool_)
    return hits


def bounded_set_hits(stream: np.ndarray, size: int, tag: Callable[[int], bytes], batch: int = 1) -> np.ndarray:
    """For each lookup, whether the verifiers' set of at most ``size`` entries held it, fed ``batch`` lookups at a
    time as a verifier is (``tag(code)``: the code's set tag, which decides its slot; nothing expires)."""
    hits = np.zeros(len(stream), np.bool_)
    if size <= 0:
        return hits
    held, never = VerifiedSet(size), 2**62
    codes = stream.tolist()
    for lo in range(0, len(codes), batch):
        new: dict[bytes, int] = {}  # this batch's misses: tag -> first lookup
        repeats: list[tuple[int, bytes]] = []
        for j in range(lo, min(lo + batch, len(codes))):
            t = tag(codes[j])
            if t in held:
                hits[j] = True
            elif t in new:
                repeats.append((j, t))
            else:
                new[t] = j
        inserted = {t for t in new if held.insert(t, never, 0)}
        for j, t in repeats:
            hits[j] = t in inserted
    return hits


def set_hits(stream: np.ndarray, t_s: np.ndarray, exp_s: np.ndarray | int) -> np.ndarray:
    """Whether each lookup finds its code in a set of every code verified so far, entries expiring at ``exp``.

    A code's entry exists from its first verification until its ``exp``; after that the code itself is expired,
    every scan of it misses (and is refused), so only a first sight or a scan after ``exp`` is a miss.
    """
    seen = np.ones(len(stream), np.bool_)
    _, first = np.unique(stream, return_index=True)
    seen[first] = False
    exp = np.asarray(exp_s, np.int64)
    return seen & (t_s < (exp if exp.ndim == 0 else exp[stream]))


def rates(hits: np.ndarray, city: City) -> dict[str, list[float]]:
    """Hit rate per day and in each day's busiest hour (the hour with most lookups)."""
    per_day, peak, peak_hour = [], [], []
    hour = (city.t_ms - city.start_ms) // HOUR_MS
    for d in range(1, city.params.days + 1):
        m = city.day == d
        per_day.append(float(hits[m].mean()) if m.any() else 0.0)
        h = hour[m]
        counts = np.bincount(h - h.min()) if len(h) else np.zeros(1, np.int64)
        busiest = int(np.argmax(counts)) + (int(h.min()) if len(h) else 0)
        sel = m & (hour == busiest)
        peak.append(float(hits[sel].mean()) if sel.any() else 0.0)
        peak_hour.append(float(busiest - (d - 1) * 24))
    return {"day": per_day, "peak_hour": peak, "peak_hour_of_day": peak_hour}


def model(city: City, sizes: list[int], *, exp_s: int | None = None) -> dict[str, Any]:
    """Hit rates of an LRU for every size in ``sizes`` (``SET`` = 0: the unbounded set) on ``city``'s stream."""
    exp = exp_s if exp_s is not None else 2**62
    out: dict[str, Any] = {"city": city.summary(), "caches": []}
    for size in sizes:
        t0 = time.perf_counter()
        hits = set_hits(city.person, city.t_ms // 1000, exp) if size == SET else lru_hits(city.person, size)
        r = rates(hits, city)
        out["caches"].append(
            {
                "cache": "set" if size == SET else f"LRU {size}",
                "entries": None if size == SET else size,
                **r,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
    return out


def parse_sizes(text: str) -> list[int]:
    """``262144,1000000,set`` → [262144, 1000000, 0]; refuses anything else with the offending item named."""
    out = []
    for item in (x.strip() for x in text.split(",")):
        if item == "set":
            out.append(SET)
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        else:
            raise argparse.ArgumentTypeError(f"cache size {item!r}: a positive number of entries, or 'set'")
    return out


def format_table(doc: dict[str, Any]) -> str:
    days = doc["city"]["params"]["days"]
    head = f"{'verified-code cache':22}" + "".join(f"{'day ' + str(d):>9}" for d in range(1, days + 1))
    lines = [head + f"{'peak hour, last day':>22}"]
    for c in doc["caches"]:
        name = "every code (set)" if c["entries"] is None else f"LRU {c['entries']:,}"
        peak_at = int(c["peak_hour_of_day"][-1])
        lines.append(
            f"{name:22}"
            + "".join(f"{r:>9.1%}" for r in c["day"])
            + f"{c['peak_hour'][-1]:>13.1%} ({peak_at:02d}-{peak_at + 1:02d} h)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=int, default=200_000)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--sizes", type=parse_sizes, default=[262_144, 1_000_000, SET], help="comma-separated; 'set' = unbounded"
    )
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        city = City(CityParams(people=args.people, days=args.days, seed=args.seed))
    except ValueError as exc:
        ap.error(str(exc))
    s = city.summary()
    print(
        f"city: {args.people:,} people, {s['venues']:,} venues, {args.days} days, {s['scans']:,} scans "
        f"({s['scans_per_person_day']} per person a day), generated in {time.perf_counter() - t0:.1f} s"
    )
    doc = model(city, args.sizes)
    print(format_table(doc))
    if args.json:
        import orjson

        args.json.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


if __name__ == "__main__":
    main()
