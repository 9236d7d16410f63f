"""Driving a real engine with a ``bench/population.py`` city: trust, devices, uploads and the hit rate they produced.

``bench/e2e_bench.py --workload city`` and ``loadtest/run.py --workload city`` share this, so both set an engine up
the same way:

* the engine's trust list holds the **bench issuer** (``population.BENCH_ISSUER_SEED``), with a key window that
  covers the code book's ``iat``;
* every **device** of the city (one key per venue device, derived from the city's seed) is written into the
  store in one insert *before* the engine starts (registering tens of thousands of devices one HTTP call and one
  chdb insert at a time would take minutes); the engine loads them at start-up like any registered device;
* uploads are signed by their own device and sent in upload order, paced when the city's stream has a
  speed-up, as fast as ``concurrency`` allows otherwise;
* the **hit rate** is read from the engine's ``/metrics`` counters (``engine_cache_hits_total`` /
  ``engine_cache_lookups_total``) before and after a window, so it is the one that window produced.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from nacl.signing import SigningKey

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.population import City, CityParams, Request, bench_issuer  # noqa: E402
from engine.codes.payload import key_id  # noqa: E402
from engine.codes.trust import TrustedKey, TrustList  # noqa: E402
from engine.devices.client import sign_request  # noqa: E402

YEAR = 365 * 86_400
COUNTERS = ("engine_cache_hits_total", "engine_cache_lookups_total", "engine_scans_stored_total")


def bench_trusted_key(now: int | None = None) -> TrustedKey:
    """The bench issuer as a trust-list entry, valid from a year before ``now`` (the book's ``iat`` is later)."""
    t = int(time.time()) if now is None else now
    pk = bytes(bench_issuer().verify_key)
    return TrustedKey(key_id(pk), "bench-city", pk, t - YEAR, t + 2 * YEAR)


def with_bench_issuer(trust: TrustList) -> TrustList:
    return trust.with_key(bench_trusted_key())


def seed_devices(data_dir: Path, params: CityParams, timeout: float = 300.0) -> int:
    """Write every device of the city into ``data_dir``'s embedded store, in a child process (chdb is one store
    per process: this one must stay free to start others). Returns how many were written."""
    code = (
        "import sys, orjson; from bench.city_load import _seed_devices_here; from bench.population import CityParams;"
        "print(_seed_devices_here(sys.argv[1], CityParams(**orjson.loads(sys.argv[2]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(data_dir), orjson.dumps(params.__dict__).decode()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if done.returncode != 0:
        raise RuntimeError(f"seeding the city's devices into {data_dir} failed: {done.stderr[-2000:]}")
    return int(done.stdout.strip().splitlines()[-1])


def _seed_devices_here(data_dir: str, params: CityParams) -> int:
    from engine.config import Config
    from engine.store.store import Store

    cfg = Config(data_dir=Path(data_dir))  # the engine's defaults: the store it will open, with its retention
    store = Store.connect(cfg.store_dsn, database=cfg.database, retention_days=cfg.retention_days)
    try:
        store.migrate()
        city_devices = City.device_count(params)
        now_ms = int(time.time() * 1000)
        for lo in range(0, city_devices, 5000):
            rows = ",".join(
                f"('{City.device_id_of(params, d)}', unhex('{bytes(City.device_key_of(params, d).verify_key).hex()}'),"
                f" 'bench city', 0, fromUnixTimestamp64Milli({now_ms}), fromUnixTimestamp64Milli({now_ms}))"
                for d in range(lo, min(lo + 5000, city_devices))
            )
            store.command(
                f"INSERT INTO {store.database}.devices "
                f"(device_id, public_key, label, revoked, registered_at, updated_at) VALUES {rows}"
            )
        return city_devices
    finally:
        store.close()


def counters(url: str) -> dict[str, float]:
    """The engine's cache and store counters from ``/metrics`` (0 for any it does not export)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in out:
            out[name] = float(value)
    return out


def hit_rate(before: dict[str, float], after: dict[str, float]) -> tuple[float | None, int]:
    """(hits ÷ lookups, lookups) between two :func:`counters` readings; None when nothing was looked up."""
    lookups = int(after["engine_cache_lookups_total"] - before["engine_cache_lookups_total"])
    hits = after["engine_cache_hits_total"] - before["engine_cache_hits_total"]
    return (round(hits / lookups, 4) if lookups else None), lookups


@dataclass
class Driven:
    """What one :func:`drive` call sent and got back."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    scans: int = 0


class DeviceKeys:
    """Each city device's signing key, derived once."""

    def __init__(self, params: CityParams) -> None:
        self.params = params
        self._keys: dict[int, SigningKey] = {}

    def __getitem__(self, device: int) -> SigningKey:
        key = self._keys.get(device)
        if key is None:
            key = self._keys[device] = City.device_key_of(self.params, device)
        return key


async def drive(url: str, keys: DeviceKeys, requests: Iterable[Request], concurrency: int) -> Driven:
    """Send every request (each signed by its device at send time; a 503 is retried after 50 ms, up to 50 times),
    no earlier than its ``at_s`` after the start: paced for a sped-up city, back to back when all are 0."""
    out = Driven()
    it: Iterator[Request] = iter(requests)
    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            for req in it:
                body = orjson.dumps({"device_id": req.device_id, "scans": req.scans})
                delay = start + req.at_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                out.requests += 1
                out.scans += len(req.scans)
                for _attempt in range(50):
                    headers = sign_request(keys[req.device], req.device_id, "POST", "/v1/scans", body)
                    headers["Content-Type"] = "application/json"
                    t0 = time.perf_counter()
                    async with session.post(url + "/v1/scans", data=body, headers=headers) as resp:
                        await resp.read()
                        out.statuses[str(resp.status)] = out.statuses.get(str(resp.status), 0) + 1
                        if resp.status != 503:
                            out.latencies.append(time.perf_counter() - t0)
                            break
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out
