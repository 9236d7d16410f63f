"""``serve --demo``: a first run that shows the whole path working, on the embedded store, with no setup.

It creates (once, in the data directory) a demo issuing platform with its key in the trust list and a demo
scanner device registered in the store, then runs a small in-process scanner that posts signed batches of
realistic scans to the engine over real HTTP on loopback: mostly genuine codes of a few hundred people with
repeats, plus a forged, an expired, a legacy unsigned and an ID-card code now and then. The dashboard and
``/metrics`` come alive within a second. Nothing here is used outside the demo.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from engine.codes.keys import KeyFile, read_key_file, write_key_file
from engine.codes.payload import Person, key_id, mint
from engine.codes.trust import TrustedKey, TrustList
from engine.config import Config

log = logging.getLogger(__name__)

DEMO_ISSUER = "demo-platform"
DEMO_DEVICE = "demo-scanner-1"
YEAR = 365 * 86_400
ODD_CODES = 4  # appended by demo_codes after the genuine ones


def _key(path: Path, owner: str) -> KeyFile:
    return read_key_file(path) if path.exists() else write_key_file(path, owner)


def prepare_demo(config: Config) -> tuple[KeyFile, KeyFile]:
    """Create the demo issuer, trust-list entry and device (idempotent); returns (issuer key, device key)."""
    from engine.store.store import Store

    demo_dir = config.data_dir / "demo"
    demo_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    issuer = _key(demo_dir / "issuer.key", DEMO_ISSUER)
    device = _key(demo_dir / "device.key", DEMO_DEVICE)
    path = config.trust_list_path
    trust = TrustList.load(path) if path.exists() else TrustList()
    kid = key_id(issuer.public_key)
    if not any(k.kid == kid for k in trust.keys):
        now = int(time.time())
        trust = trust.with_key(TrustedKey(kid, DEMO_ISSUER, issuer.public_key, now - YEAR, now + 2 * YEAR))
        trust.save(path)
    store = Store.connect(config.store_dsn, **config.store_options())
    try:
        store.migrate()
        store.upsert_device(DEMO_DEVICE, device.public_key, revoked=False, label="demo")
    finally:
        store.close()
    log.info("demo ready: issuer %s in %s, device %s registered", DEMO_ISSUER, path, DEMO_DEVICE)
    return issuer, device


def demo_codes(issuer: KeyFile, people: int = 300) -> list[str]:
    """A population of genuine codes plus a few of every kind venues really scan."""
    now = int(time.time())
    rng = random.Random(1405)
    codes = [
        mint(
            Person(f"******{rng.randrange(10**6):06d}", f"NGUYEN VAN {chr(65 + i % 26)}", "1990-01-**", f"DEMO{i:08d}"),
            issuer.signing_key,
            iat=now - 3600,
            exp=now + YEAR,
        )
        for i in range(people)
    ]
    genuine = codes[0]
    codes.append(genuine[:-4] + ("AAAA" if not genuine.endswith("AAAA") else "BBBB"))  # forged signature
    codes.append(
        mint(
            Person("******000001", "TRAN THI B", "1985-**-**", "DEMOEXPIRED"),
            issuer.signing_key,
            iat=now - 200 * 86_400,
            exp=now - 10 * 86_400,
        )
    )
    codes.append("******123456|LE VAN C|1970-05-20|0|LEGACY000001|")
    codes.append("001099012345||Nguyễn Văn A|01011990|Nam|Số 1, Hà Nội|15082021")
    return codes


def demo_scanner_ctx(
    config: Config, device: KeyFile, codes: list[str], rate_per_s: float = 40.0
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that posts demo scans to this engine over loopback HTTP until shutdown."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        from engine.devices.client import ScannerClient, make_scan

        async def run() -> None:
            from engine.web.tls import client_context

            host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
            scheme, ctx = ("https", client_context(pinned=[config.tls_cert])) if config.tls else ("http", None)
            client = ScannerClient(f"{scheme}://{host}:{config.port}", DEMO_DEVICE, device.signing_key, ssl_context=ctx)
            rng = random.Random()
            try:
                await asyncio.sleep(1.0)
                while True:
                    n = max(1, int(rng.expovariate(1 / rate_per_s)))
                    # a few people scanned very often; the odd codes (forged, expired, legacy, CCCD) now and then
                    weights = [1.0 / (i + 1) for i in range(len(codes) - ODD_CODES)] + [0.05] * ODD_CODES
                    picks = rng.choices(codes, weights=weights, k=n)
                    scans = [
                        make_scan(c, f"venue-{rng.randrange(20):03d}", direction=rng.choice(("in", "out")))
                        for c in picks
                    ]
                    try:
                        await client.post_scans(scans)
                    except OSError as exc:
                        log.warning("demo scanner: %s", exc)
                    await asyncio.sleep(1.0)
            finally:
                await client.close()

        task = asyncio.create_task(run(), name="demo-scanner")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return ctx
