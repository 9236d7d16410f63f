"""Isolation: what an honest device sees while something else hammers the same node (issue 13).

One real engine process (embedded store, WAL fsync on), a hot venue pre-filled with ``--rows`` scans, and an
honest device posting ``--scans`` scans per signed request at ``--rate`` requests/s, each with a 10 s timeout.
Each *scenario* runs the honest device for ``--seconds`` beside a background load, and scenarios are
interleaved ``--rounds`` times in the one run, so they are compared on the same host state:

* ``alone``: nothing else;
* ``trace loop``: one tracer (``--tracers`` of them) running the worst-case trace back to back: a year, every
  verdict, the hot venue (``days=366&include_unverified=1``), as the tracing lane caps it (``--trace-*``);
* ``flood``: one device with a valid key on ``--flood-connections`` (64) connections posting requests of 1,000
  forged codes (well formed, under the trusted issuer's kid, random signatures: each a cold Ed25519 verify, never
  cached) at ``--flood-rate`` (50) requests/s, a device's whole default request rate (the attack of issue 13,
  point 1: on the old code ~10 requests/s of it made an honest device get 503 on 7 of 9 requests);
* ``replay``: the same pace with genuine codes (5,000 people, in the verified-code set after their first
  verify): a stolen key, nothing to quarantine, held by its scan budget and queue share alone.

Each flood or replay round uses a device of its own (a quarantine or a spent budget does not carry over).

Printed per scenario: honest requests, their 202 share, p50/p99 ack latency (wall time from send to answer),
p99 against ``alone`` (target ≤ 2×, 100 % 202s), and what the background load got (trace answers by status).
More scenarios are added to ``SCENARIOS`` (a name and a coroutine running beside the honest device).

    python bench/isolation_bench.py                                    # alone vs trace loop, 2 rounds of 20 s
    python bench/isolation_bench.py --scenarios "trace loop" --rows 1000000 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from nacl.signing import SigningKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.codes.payload import b64url_encode
from engine.devices.client import ScannerClient, make_scan, sign_request
from engine.store.store import Store
from engine.testing.engines import DEVICE_ID, EngineProcess, Fixture, admin_headers, device_registration, make_fixture
from engine.testing.hot_venue import HOT_VENUE, hot_venue_insert
from engine.tracing.credentials import TracerRegistry

HOT = HOT_VENUE
WORST = f"/v1/trace/venue?venue_id={HOT}&days=366&include_unverified=1&case_id=BENCH-0001"


@dataclass
class Bench:
    engine: EngineProcess
    fx: Fixture
    tracer_tokens: list[str]
    args: argparse.Namespace
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    background: collections.Counter[str] = field(default_factory=collections.Counter)


def fill(data_dir: Path, rows: int) -> None:
    """The hot venue, written before the engine starts (the embedded store is then the engine's alone)."""
    store = Store.connect(f"chdb://{(data_dir / 'store').resolve()}")
    store.migrate()
    store.command(hot_venue_insert(rows, HOT))
    store.close()


# -- background loads -----------------------------------------------------------------------------------------
async def nothing(b: Bench) -> None:
    await b.stop.wait()


async def trace_loop(b: Bench) -> None:
    """Each tracer runs the worst-case trace back to back until the scenario ends."""

    async def one(token: str) -> None:
        async with aiohttp.ClientSession() as s:
            while not b.stop.is_set():
                try:
                    async with s.get(
                        b.engine.url + WORST,
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=aiohttp.ClientTimeout(total=120),
                    ) as r:
                        body = await r.read()
                        status = r.status
                        if status != 200:
                            status_text = orjson.loads(body).get("error", "") if body[:1] == b"{" else ""
                            b.background[f"trace {status} {status_text}".strip()] += 1
                        else:
                            b.background["trace 200"] += 1
                        if status == 429:
                            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    b.background[f"trace {type(exc).__name__}"] += 1

    await asyncio.gather(*(one(t) for t in b.tracer_tokens))


_FLOODERS = itertools.count(1)


def forged_pool(fx: Fixture, n: int) -> list[bytes]:
    """``n`` distinct forged codes, JSON-encoded: one genuine code with random signatures. Distinct, so a batch
    holding two flood requests verifies every one of them; a bad signature is never cached."""
    head = fx.code(100_000).rsplit(".", 1)[0]
    return [orjson.dumps(f"{head}.{b64url_encode(os.urandom(64))}") for _ in range(n)]


class FloodBodies:
    """Flood request bodies from pre-encoded pieces: fresh scan ids every request (none is a duplicate), codes
    cycling through the pool, ~1 ms a body, so the generator on the same cores does not measure itself."""

    def __init__(self, device_id: str, pool: list[bytes], per_request: int = 1000) -> None:
        self.device_id, self.pool, self.per_request, self.n = device_id, pool, per_request, 0
        self.prefix = (uuid.uuid4().hex[:8] + "-0000-4000-8000-").encode()

    def next(self) -> bytes:
        now_ms = int(time.time() * 1000)
        items = []
        for _ in range(self.per_request):
            code = self.pool[self.n % len(self.pool)]
            items.append(
                b'{"scan_id":"%s%012x","qr":%s,"venue_id":"venue-flood","direction":"in","scanned_at":%d}'
                % (self.prefix, self.n, code, now_ms)
            )
            self.n += 1
        return b'{"device_id":"%s","scans":[%s]}' % (self.device_id.encode(), b",".join(items))


async def paced_flood(b: Bench, kind: str, pool: list[bytes]) -> None:
    """A device of its own posting ``pool``'s codes, 1,000 a request, ``--flood-rate`` requests/s over
    ``--flood-connections`` connections; its answers counted in ``b.background`` by status."""
    device_id = f"{kind}-{next(_FLOODERS)}"
    key = SigningKey.generate()
    body = orjson.dumps({"device_id": device_id, "public_key": b64url_encode(bytes(key.verify_key))})
    b.engine.post_json("/v1/admin/devices", body, admin_headers(b.fx.data_dir))
    bodies = FloodBodies(device_id, pool)
    rate, start, sent = b.args.flood_rate, time.monotonic(), 0

    async def connection(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while not b.stop.is_set():
            slot = start + sent / rate  # all connections together keep to ``rate`` requests/s
            sent += 1
            if slot > time.monotonic():
                await asyncio.sleep(slot - time.monotonic())
            payload = bodies.next()
            headers = {"Content-Type": "application/json", **sign_request(key, device_id, "POST", "/v1/scans", payload)}
            try:
                async with session.post(b.engine.url + "/v1/scans", data=payload, headers=headers) as r:
                    await r.read()
                    b.background[f"{kind} {r.status}"] += 1
            except aiohttp.ClientError as exc:  # a refusal before the body closes the connection
                b.background[f"{kind} {type(exc).__name__}"] += 1

    connector = aiohttp.TCPConnector(limit=b.args.flood_connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(connection(session) for _ in range(b.args.flood_connections)))


async def flood(b: Bench) -> None:
    await paced_flood(b, "flood", forged_pool(b.fx, 20_000))


async def replay(b: Bench) -> None:
    await paced_flood(b, "replay", [orjson.dumps(b.fx.code(200_000 + i)) for i in range(5000)])


SCENARIOS: dict[str, Callable[[Bench], Awaitable[None]]] = {
    "alone": nothing,
    "trace loop": trace_loop,
    "flood": flood,
    "replay": replay,
}


# -- the honest device ------------------------------------------------------------------------------------------
async def honest(b: Bench, codes: list[str]) -> tuple[list[float], collections.Counter[int]]:
    client = ScannerClient(b.engine.url, DEVICE_ID, b.fx.device)
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    period = 1.0 / b.args.rate
    deadline = time.monotonic() + b.args.seconds
    i = 0
    pending: set[asyncio.Task[None]] = set()

    async def send(scans: list[dict[str, object]]) -> None:
        t0 = time.perf_counter()
        try:
            status, _ = await asyncio.wait_for(client.post_scans(scans), 10.0)
        except TimeoutError:
            status = 0
        latencies.append((time.perf_counter() - t0) * 1000)
        statuses[status] += 1

    try:
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            scans = [make_scan(codes[(i + k) % len(codes)], "venue-honest") for k in range(b.args.scans)]
            i += b.args.scans
            task = asyncio.create_task(send(scans))  # open loop: a slow answer does not slow the sending
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*pending)
    finally:
        await client.close()
    return latencies, statuses


def p(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="isolation-") as tmp:
        data_dir = Path(tmp) / "engine"
        fx = make_fixture(data_dir)
        t0 = time.monotonic()
        fill(data_dir, args.rows)
        print(f"hot venue: {args.rows} scans written in {time.monotonic() - t0:.1f} s")
        tokens = [TracerRegistry.for_data_dir(data_dir).add(f"bench-tracer-{i}") for i in range(args.tracers)]
        env = {
            "ENGINE_DEVICE_RATE": "100000",
            "ENGINE_DEVICE_BURST": "100000",
            "ENGINE_TRACER_WIDE_PER_HOUR": "1000000",
            "ENGINE_INSERT_INTERVAL_MS": str(args.insert_interval_ms),
            **{f"ENGINE_{k.upper()}": v for k, v in args.engine_env},
        }
        engine = EngineProcess(data_dir, **env).start()
        try:
            engine.post_json("/v1/admin/devices", device_registration(fx), admin_headers(data_dir))
            codes = [fx.code(i) for i in range(5000)]
            results: dict[str, list[tuple[list[float], collections.Counter[int], collections.Counter[str]]]] = {}
            names = [n.strip() for n in args.scenarios.split(",")]
            for rnd in range(args.rounds):
                for name in names:
                    b = Bench(engine, fx, tokens, args)
                    load = asyncio.create_task(SCENARIOS[name](b))
                    await asyncio.sleep(0.5 if name != "alone" else 0)  # the background load is running
                    latencies, statuses = await honest(b, codes)
                    b.stop.set()
                    await load
                    results.setdefault(name, []).append((latencies, statuses, b.background))
                    print(
                        f"round {rnd + 1} {name:12s} honest p50 {p(latencies, 0.5):6.1f} ms p99 "
                        f"{p(latencies, 0.99):7.1f} ms, 202s {statuses[202]}/{sum(statuses.values())}; "
                        f"background {dict(b.background) or '-'}",
                        flush=True,
                    )
        finally:
            engine.terminate()
    print(
        f"\n{args.rounds} rounds of {args.seconds:g} s, honest device {args.rate:g} requests/s of {args.scans} scans; "
        f"hot venue {args.rows} scans; medians over rounds"
    )
    base = statistics.median(p(r[0], 0.99) for r in results.get("alone", [])) if "alone" in results else None
    print(f"{'scenario':12s} {'p50 ms':>8s} {'p99 ms':>8s} {'p99 ÷ alone':>12s} {'202 share':>10s}  background")
    for name, runs in results.items():
        p50 = statistics.median(p(r[0], 0.5) for r in runs)
        p99 = statistics.median(p(r[0], 0.99) for r in runs)
        ok = sum(r[1][202] for r in runs) / max(1, sum(sum(r[1].values()) for r in runs))
        bg: collections.Counter[str] = collections.Counter()
        for r in runs:
            bg.update(r[2])
        ratio = f"{p99 / base:.2f}×" if base else "-"
        print(f"{name:12s} {p50:8.1f} {p99:8.1f} {ratio:>12s} {ok:10.1%}  {dict(bg) or '-'}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0, help="honest load per scenario and round")
    ap.add_argument("--rate", type=float, default=10.0, help="honest requests/s")
    ap.add_argument("--scans", type=int, default=50, help="scans per honest request")
    ap.add_argument("--rows", type=int, default=300_000, help="scans at the hot venue")
    ap.add_argument("--tracers", type=int, default=1, help="tracers in the trace loop, each back to back")
    ap.add_argument("--insert-interval-ms", type=float, default=3000.0)
    ap.add_argument("--flood-connections", type=int, default=64, help="flood/replay: connections of the device")
    ap.add_argument("--flood-rate", type=float, default=50.0, help="flood/replay: requests/s of 1,000 scans")
    ap.add_argument(
        "--engine-env",
        type=lambda kv: tuple(kv.split("=", 1)),
        action="append",
        default=[],
        help="extra engine setting NAME=VALUE (e.g. trace_max_rows=1000000), repeatable",
    )
    args = ap.parse_args()
    unknown = [n for n in args.scenarios.split(",") if n.strip() not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
