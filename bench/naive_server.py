"""The reference a user might have written instead of the engine: one aiohttp handler, no batching.

It does the same job per request — authenticate the device, parse the body with orjson, parse every code with
the same reference parser, verify each signature with one PyNaCl call, insert the request's rows into the
same chdb store with clickhouse-connect, answer with verdicts — but inline on the event loop, one request at
a time, with no cache and no WAL. ``bench/e2e_bench.py`` runs it under the same load as the engine and
reports scans per CPU-second of both. Not part of the engine; never imported by it.

Run: python bench/naive_server.py --data-dir DIR --port N   (DIR must hold trust.json; devices via --device)
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import clickhouse_connect
import orjson
from aiohttp import web
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from engine.codes.payload import b64url_decode_canonical, parse
from engine.codes.trust import TrustList
from engine.codes.verdicts import CodeKind, Verdict
from engine.devices.auth import Device, DeviceRegistry


def build_app(data_dir: Path, devices: list[Device]) -> web.Application:
    trust = TrustList.load(data_dir / "trust.json")
    keys = {k.kid: (VerifyKey(k.public_key), k) for k in trust.keys}
    registry = DeviceRegistry(devices, rate=1e9, burst=1e9)
    client = clickhouse_connect.get_client(dsn=f"chdb://{data_dir / 'naive-store'}")
    client.command("CREATE DATABASE IF NOT EXISTS naive")
    client.command(
        "CREATE TABLE IF NOT EXISTS naive.scans (scan_id UUID, device_id String, venue_id String, direction String, "
        "scanned_at DateTime64(3), verdict String, qr_id String) ENGINE = MergeTree ORDER BY (venue_id, scanned_at)"
    )

    async def post_scans(request: web.Request) -> web.Response:
        body = await request.read()
        device = registry.authenticate(request.method, request.path_qs, request.headers, body)
        doc = orjson.loads(body)
        now = int(time.time())
        rows, results = [], []
        for item in doc["scans"]:
            code = item["qr"].encode()
            p = parse(code)
            verdict = Verdict.MALFORMED
            if p.ok and p.kind is CodeKind.SIGNED:
                entry = keys.get(p.kid)
                if entry is None:
                    verdict = Verdict.UNKNOWN_KEY
                else:
                    try:
                        entry[0].verify(p.message(code), p.signature)
                        verdict = Verdict.OK if p.iat <= now + 300 and now < p.exp else Verdict.EXPIRED
                    except BadSignatureError:
                        verdict = Verdict.BAD_SIGNATURE
            elif p.ok:
                verdict = Verdict.UNSIGNED_CODE if p.kind is CodeKind.UNSIGNED else Verdict.ID_CARD
            qid = code[p.qid_start : p.qid_end].decode() if p.ok else ""
            rows.append(
                [
                    uuid.UUID(item["scan_id"]),
                    device.device_id,
                    item["venue_id"],
                    item["direction"],
                    datetime.fromtimestamp(item["scanned_at"] / 1000, UTC),
                    verdict.label,
                    qid,
                ]
            )
            results.append({"scan_id": item["scan_id"], "verdict": verdict.label})
        client.insert(
            "naive.scans",
            rows,
            column_names=["scan_id", "device_id", "venue_id", "direction", "scanned_at", "verdict", "qr_id"],
        )
        return web.Response(body=orjson.dumps({"results": results}), status=202, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    app = web.Application(client_max_size=16 << 20)
    app.router.add_post("/v1/scans", post_scans)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--device", action="append", default=[], help="DEVICE_ID:BASE64URL_PUBLIC_KEY")
    args = ap.parse_args()
    devices = []
    for spec in args.device:
        device_id, pk = spec.split(":", 1)
        public_key = b64url_decode_canonical(pk.encode(), 32)
        assert public_key is not None
        devices.append(Device(device_id, public_key))
    import uvloop

    web.run_app(
        build_app(args.data_dir, devices),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
