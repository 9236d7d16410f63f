"""Isolation benchmark (issue 13): what an honest device sees alone and beside a misbehaving neighbour.

For each scenario a fresh engine process starts on a fresh data directory (embedded chdb, WAL fsync on, default
budgets unless ``--engine-env`` says otherwise), an honest device is registered, and the honest device posts
``--requests`` requests of ``--scans`` genuine scans each, ``--honest-concurrency`` in flight, while the
scenario's load runs beside it. Reported per scenario: the honest device's p50 / p99 acknowledgement latency
and its share of 202 answers, what the neighbour got (statuses), and the engine's CPU per honest scan.

Scenarios (``--scenarios``, run in the order given, ``--rounds`` times interleaved):

* ``alone``: the honest device only, the reference;
* ``flood``: beside it one device with a valid key on ``--flood-connections`` (64) connections, posting requests
  of 1,000 forged codes (well formed, under the trusted issuer key id, bad signature: each a cold Ed25519 verify,
  never cached) at ``--flood-rate`` (50) requests/s, its whole allowed request rate (the attack of issue 13,
  point 1: on the old code ~10 requests/s of it made the honest device get 503 on 7 of 9 requests);
* ``replay``: the same device and pace with genuine codes (5,000 people, in the verified-code set after their
  first verify): a stolen key, nothing to quarantine, held by its scan budget and queue share alone.

More scenarios plug in as ``async def scenario(ctx) -> dict`` functions in :data:`SCENARIOS` (the tracing lane
adds a worst-case trace loop there). Target (issue 13): honest p99 beside each neighbour at most 2x its alone
figure, and 100 % 202s.

Usage: python bench/isolation_bench.py [--requests N] [--scans N] [--rounds N] [--scenarios alone,flood]
                                       [--flood-connections N] [--json FILE] [--engine-env K=V ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from nacl.signing import SigningKey

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine._accel import implementation  # noqa: E402
from engine.cli.info import cpu_model  # noqa: E402
from engine.codes.payload import b64url_encode  # noqa: E402
from engine.devices.client import make_scan, sign_request  # noqa: E402
from engine.testing.engines import DEVICE_ID, EngineProcess, Fixture, admin_headers, make_fixture  # noqa: E402

FLOOD_DEVICE = "flooder-1"


def forged(code: str) -> str:
    """One signature character changed: a well-formed code under a trusted kid whose signature fails."""
    head, sig = code.rsplit(".", 1)
    return f"{head}.{('B' if sig[0] == 'A' else 'A')}{sig[1:]}"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Context:
    """What a scenario's neighbour needs: the engine, its fixture, keys, and a stop signal."""

    engine: EngineProcess
    fx: Fixture
    stop: asyncio.Event
    args: argparse.Namespace
    keys: dict[str, SigningKey] = field(default_factory=dict)

    async def post(self, session: aiohttp.ClientSession, device_id: str, body: bytes) -> int:
        key = self.fx.device if device_id == DEVICE_ID else self.keys[device_id]
        headers = {"Content-Type": "application/json", **sign_request(key, device_id, "POST", "/v1/scans", body)}
        try:
            async with session.post(self.engine.url + "/v1/scans", data=body, headers=headers) as resp:
                await resp.read()
                return resp.status
        except aiohttp.ClientError:
            return 0  # the connection was closed under it: counted as status 0


def register(ctx: Context, device_id: str) -> SigningKey:
    key = SigningKey.generate()
    body = orjson.dumps({"device_id": device_id, "public_key": b64url_encode(bytes(key.verify_key))})
    ctx.engine.post_json("/v1/admin/devices", body, admin_headers(ctx.fx.data_dir))
    ctx.keys[device_id] = key
    return key


async def scenario_alone(ctx: Context) -> dict[str, Any]:
    await ctx.stop.wait()
    return {}


def forged_pool(fx: Fixture, n: int) -> list[bytes]:
    """``n`` distinct forged codes, JSON-encoded: one genuine code with random signatures (well formed, under the
    trusted kid). Distinct, so a batch holding two flood requests verifies every one of them; never cached."""
    head = fx.code(100_000).rsplit(".", 1)[0]
    return [orjson.dumps(f"{head}.{b64url_encode(os.urandom(64))}") for _ in range(n)]


class FloodBodies:
    """Flood request bodies made from pre-encoded pieces: fresh scan ids every request (so none is answered as a
    duplicate), codes cycling through the pool, ~1 ms a body, so the generator stays off the engine's cores."""

    def __init__(self, pool: list[bytes], per_request: int = 1000) -> None:
        self.pool, self.per_request, self.n = pool, per_request, 0
        self.prefix = uuid.uuid4().hex[:8] + "-0000-4000-8000-"

    def next(self) -> bytes:
        now_ms = int(time.time() * 1000)
        items = []
        for _ in range(self.per_request):
            code = self.pool[self.n % len(self.pool)]
            items.append(
                b'{"scan_id":"%s%012x","qr":%s,"venue_id":"venue-flood","direction":"in","scanned_at":%d}'
                % (self.prefix.encode(), self.n, code, now_ms)
            )
            self.n += 1
        return b'{"device_id":"%s","scans":[%s]}' % (FLOOD_DEVICE.encode(), b",".join(items))


async def paced_flood(ctx: Context, bodies: FloodBodies) -> dict[str, Any]:
    """``--flood-connections`` connections keeping together to ``--flood-rate`` requests/s of ``bodies``."""
    statuses: dict[int, int] = {}
    rate = ctx.args.flood_rate
    start, sent = time.monotonic(), 0

    async def connection(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while not ctx.stop.is_set():
            slot = start + sent / rate
            sent += 1
            if slot > time.monotonic():
                await asyncio.sleep(slot - time.monotonic())
            status = await ctx.post(session, FLOOD_DEVICE, bodies.next())
            statuses[status] = statuses.get(status, 0) + 1

    connector = aiohttp.TCPConnector(limit=ctx.args.flood_connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(connection(session) for _ in range(ctx.args.flood_connections)))
    return {"neighbour_statuses": {str(k): v for k, v in sorted(statuses.items())}}


async def scenario_flood(ctx: Context) -> dict[str, Any]:
    register(ctx, FLOOD_DEVICE)
    return await paced_flood(ctx, FloodBodies(forged_pool(ctx.fx, ctx.args.flood_codes)))


async def scenario_replay(ctx: Context) -> dict[str, Any]:
    """A stolen key replaying genuine codes (a pool of 5,000 people, soon all in the verified-code set): nothing
    to quarantine, so what holds it is its scan budget and its queue share."""
    register(ctx, FLOOD_DEVICE)
    pool = [orjson.dumps(ctx.fx.code(200_000 + i)) for i in range(5000)]
    return await paced_flood(ctx, FloodBodies(pool))


#: name -> the neighbour load run beside the honest device until ``ctx.stop`` is set; returns extra figures
SCENARIOS: dict[str, Callable[[Context], Awaitable[dict[str, Any]]]] = {
    "alone": scenario_alone,
    "flood": scenario_flood,
    "replay": scenario_replay,
}


async def honest_device(ctx: Context) -> tuple[list[float], dict[int, int]]:
    args = ctx.args
    codes = [ctx.fx.code(i) for i in range(args.scans * 4)]  # repeats, as a venue's regulars give
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.requests):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            part = [codes[(i * args.scans + j) % len(codes)] for j in range(args.scans)]
            body = orjson.dumps({"device_id": DEVICE_ID, "scans": [make_scan(c, "venue-1") for c in part]})
            t0 = time.perf_counter()
            status = await ctx.post(session, DEVICE_ID, body)
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            await asyncio.sleep(args.interval_ms / 1000)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(args.honest_concurrency)))
    return latencies, statuses


async def run_scenario(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    data_dir = workdir / f"{name}-{time.monotonic_ns()}"
    fx = make_fixture(data_dir)
    env = dict(kv.split("=", 1) for kv in args.engine_env)
    engine = EngineProcess(data_dir, **env).start()
    try:
        engine.post_json(
            "/v1/admin/devices",
            orjson.dumps({"device_id": DEVICE_ID, "public_key": b64url_encode(bytes(fx.device.verify_key))}),
            admin_headers(data_dir),
        )
        ctx = Context(engine, fx, asyncio.Event(), args)
        warm = await honest_device_warmup(ctx)
        neighbour = asyncio.create_task(SCENARIOS[name](ctx))
        await asyncio.sleep(args.settle_s)  # let the neighbour reach its steady state first
        assert engine.proc is not None
        cpu0 = cpu_seconds(engine.proc.pid)
        latencies, statuses = await honest_device(ctx)
        cpu1 = cpu_seconds(engine.proc.pid)
        ctx.stop.set()
        extra = await neighbour
    finally:
        engine.terminate()
    ms = sorted(x * 1000 for x in latencies)
    accepted = statuses.get(202, 0)
    return {
        "scenario": name,
        "honest_requests": len(latencies),
        "honest_202_share": accepted / len(latencies) if latencies else 0.0,
        "honest_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
        "engine_cpu_s": cpu1 - cpu0,
        "warmup_202": warm,
        **extra,
    }


async def honest_device_warmup(ctx: Context) -> int:
    """A few requests first, so the honest device's codes are in the verified-code set in every scenario alike."""
    codes = [ctx.fx.code(i) for i in range(ctx.args.scans * 4)]
    ok = 0
    async with aiohttp.ClientSession() as session:
        for i in range(0, len(codes), ctx.args.scans):
            body = orjson.dumps(
                {"device_id": DEVICE_ID, "scans": [make_scan(c, "venue-1") for c in codes[i : i + ctx.args.scans]]}
            )
            ok += await ctx.post(session, DEVICE_ID, body) == 202
    return ok


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200, help="honest requests per scenario")
    p.add_argument("--scans", type=int, default=20, help="scans per honest request")
    p.add_argument("--honest-concurrency", type=int, default=2)
    p.add_argument("--interval-ms", type=float, default=20.0, help="pause between one worker's honest requests")
    p.add_argument("--flood-connections", type=int, default=64)
    p.add_argument(
        "--flood-rate", type=float, default=50.0, help="flood requests/s, all connections (50: the device rate limit)"
    )
    p.add_argument("--flood-codes", type=int, default=20_000, help="distinct forged codes the flood cycles through")
    p.add_argument("--settle-s", type=float, default=2.0, help="neighbour running alone before measuring")
    p.add_argument("--rounds", type=int, default=1, help="every scenario this many times, interleaved")
    p.add_argument("--scenarios", default="alone,flood", help=f"comma-separated, of {', '.join(SCENARIOS)}")
    p.add_argument("--engine-env", nargs="*", default=[], help="ENGINE_X=value settings for the engine")
    p.add_argument("--json", type=Path, help="write the results here")
    return p


def main() -> int:
    args = parser().parse_args()
    names = [n for n in args.scenarios.split(",") if n]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}")
    print(f"cpu      {cpu_model()} ({os.cpu_count()} logical); load average {os.getloadavg()[0]:.1f}")
    paths = f"verifier {implementation('_verify')}, intake {implementation('_intake')}"
    print(f"python   {platform.python_version()}; {paths}")
    print(f"honest   {args.requests} requests x {args.scans} scans, {args.honest_concurrency} in flight")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="isolation-bench-") as tmp:
        for _ in range(args.rounds):
            for name in names:
                results.append(asyncio.run(run_scenario(name, args, Path(tmp))))
                r = results[-1]
                print(f"  ran {name}: p99 {r['p99_ms']:.1f} ms, 202 {100 * r['honest_202_share']:.1f} %", flush=True)
    alone = [r["p99_ms"] for r in results if r["scenario"] == "alone"]
    base = statistics.median(alone) if alone else None
    print()
    print(f"{'scenario':10} {'p50 ms':>8} {'p99 ms':>8} {'p99/alone':>9} {'202 %':>7} {'CPU s':>6}  neighbour")
    for r in results:
        ratio = f"{r['p99_ms'] / base:.2f}" if base else "-"
        neighbour = r.get("neighbour_statuses", "")
        print(
            f"{r['scenario']:10} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {ratio:>9} "
            f"{100 * r['honest_202_share']:7.1f} {r['engine_cpu_s']:6.2f}  {neighbour}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
