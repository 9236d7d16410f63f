"""The city workload of a load test: which population's codes the simulated scanners show, and in what order.

``run.py --workload city`` mints the code book once (``bench/population.py``, cached on disk under the bench
issuer key, which the run's keyring then uses as its trusted issuer) and writes ``workload.json``; every Locust
process rebuilds the same city from it (same parameters, same scans) and draws its genuine codes from the
city's time-ordered scan stream instead of the Zipf population, so the engine's cache sees routines: the same
person at work in the morning and out in the evening, errands, yesterday's people again today. The bad codes
of the mix are unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.population import BENCH_ISSUER_SEED, City, CityParams, CodeBook  # noqa: E402


def write_workload(path: Path, params: CityParams, cache_dir: Path | None) -> CodeBook:
    """Mint (or load) the city's codes now, so no Locust process mints, and record what the processes need."""
    book = CodeBook.mint(params.validate().people, cache_dir=cache_dir)
    doc = {"params": asdict(params), "cache_dir": str(cache_dir) if cache_dir else None, "window": [book.iat, book.exp]}
    path.write_bytes(orjson.dumps(doc))
    return book


def city_codes(path: Path, *, start: int = 0, stride: int = 1) -> Iterator[str]:
    """Every ``stride``-th genuine code of the city's scan stream from ``start``: one process's share."""
    doc = orjson.loads(path.read_bytes())
    params = CityParams(**doc["params"])
    cache = Path(doc["cache_dir"]) if doc["cache_dir"] else None
    book = CodeBook.mint(params.people, cache_dir=cache, window=(doc["window"][0], doc["window"][1]))
    return City(params).code_stream(book, start=start, stride=stride)


def issuer_seed_hex() -> str:
    """The keyring's issuer for a city run: the bench issuer that signed the code book."""
    return BENCH_ISSUER_SEED.hex()
