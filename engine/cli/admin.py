"""Operator commands: devices, trust-list reload, store statistics, WAL state, cluster DDL.

The embedded store belongs to one process. So every command first asks a running engine (over HTTP on this
host, with the admin token from the data directory); only when no engine answers does it open the store
itself. With a ClickHouse server DSN both work at once. The operator never has to know which happened.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import orjson

from engine.cli.remote import EngineUnreachable, call_engine, with_store
from engine.codes.keys import write_key_file
from engine.codes.payload import b64url_encode
from engine.codes.venues import check_venue_list
from engine.config import CLIENT_SETTINGS, Config
from engine.errors import EngineError, NotFoundError


def _config(args: argparse.Namespace) -> Config:
    return Config.from_sources(args)


def _print(doc: Any, as_json: bool) -> None:
    if as_json or not isinstance(doc, dict):
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    for key, value in doc.items():
        print(f"{key:22} {json.dumps(value) if isinstance(value, list | dict) else value}")


def _device_register(args: argparse.Namespace) -> int:
    if args.enroll:
        return _device_enroll(args)
    if not args.device_id or not args.out:
        raise EngineError("device-register needs --device-id and --out (or --enroll --venue V for a browser scanner)")
    cfg = _config(args)
    venues = check_venue_list(args.venue or [])  # before the key file exists: a typo leaves nothing behind
    key = write_key_file(args.out, args.device_id)
    body: dict[str, Any] = {
        "device_id": args.device_id,
        "public_key": b64url_encode(key.public_key),
        "label": args.label,
    }
    if venues:
        body["venues"] = list(venues)
    try:
        doc = call_engine(cfg, "POST", "/v1/admin/devices", body)
    except EngineUnreachable:
        from engine.devices.auth import Device, DeviceRegistry

        DeviceRegistry().put(Device(args.device_id, key.public_key, False, args.label, venues))  # same validation
        bound = with_store(
            cfg,
            lambda s: s.upsert_device(
                args.device_id, key.public_key, revoked=False, label=args.label, venues=venues or None
            ),
        )
        doc = {"device_id": args.device_id, "venues": list(bound), "bound": bool(bound)}
        doc["registered"] = "directly in the store (no engine running)"
    doc["key_file"] = str(args.out)
    _print(doc, args.json)
    return 0


def _device_bind(args: argparse.Namespace) -> int:
    """Bind a registered device to venues without re-keying it: how existing (unbound) devices are moved over."""
    if bool(args.venue) == args.unbind:
        raise EngineError("device-bind needs --venue V (repeatable) or --unbind")
    venues = check_venue_list(args.venue or [])
    cfg = _config(args)
    try:
        doc = call_engine(cfg, "POST", f"/v1/admin/devices/{args.device_id}/venues", {"venues": list(venues)})
    except EngineUnreachable:

        def bind(store: Any) -> dict[str, Any]:
            match = [d for d in store.devices() if d.device_id == args.device_id]
            if not match:
                raise NotFoundError(f"no registered device {args.device_id!r}")
            d = match[0]
            store.upsert_device(d.device_id, d.public_key, revoked=d.revoked, label=d.label, venues=venues)
            return {"device_id": d.device_id, "venues": list(venues), "bound": bool(venues)}

        doc = with_store(cfg, bind)
    _print(doc, args.json)
    return 0


def _device_enroll(args: argparse.Namespace) -> int:
    """A one-time enrolment code for the /scanner page (engine/devices/enrollment.py): no key file, the browser
    makes one."""
    from engine.devices import enrollment

    if args.device_id or args.out:
        raise EngineError("--enroll chooses the device id and the key stays in the browser: drop --device-id/--out")
    venues = enrollment.check_venues(args.venue or [])
    ttl_s = enrollment.parse_ttl(args.ttl)
    cfg = _config(args)
    body = {"venues": venues, "ttl_s": ttl_s, "label": args.label}
    try:
        doc = call_engine(cfg, "POST", "/v1/admin/enrollments", body)
    except EngineUnreachable:
        code, e = with_store(cfg, lambda s: enrollment.issue(s, venues, ttl_s=ttl_s, label=args.label))
        doc = {**e.to_json(), "code": enrollment.format_code(code), "qr_text": enrollment.QR_PREFIX + code}
        doc["issued"] = "directly in the store (no engine running)"
    if args.png:
        from engine.codes.qr import render

        render(doc["qr_text"], args.png)
        doc["png"] = str(args.png)
    _print(doc, args.json)
    return 0


def _device_revoke(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        doc = call_engine(cfg, "POST", f"/v1/admin/devices/{args.device_id}/revoke")
    except EngineUnreachable:

        def revoke(store: Any) -> dict[str, Any]:
            match = [d for d in store.devices() if d.device_id == args.device_id]
            if not match:
                raise NotFoundError(f"no registered device {args.device_id!r}")
            store.upsert_device(args.device_id, match[0].public_key, revoked=True, label=match[0].label)  # venues kept
            return {"device_id": args.device_id, "revoked": True}

        doc = with_store(cfg, revoke)
    _print(doc, args.json)
    return 0


def _device_list(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        doc = call_engine(cfg, "GET", "/v1/admin/devices")
    except EngineUnreachable:
        devices = with_store(cfg, lambda s: s.devices())
        doc = {
            "devices": [
                {
                    "device_id": d.device_id,
                    "public_key": b64url_encode(d.public_key),
                    "revoked": d.revoked,
                    "label": d.label,
                    "venues": list(d.venues),
                    "bound": bool(d.venues),
                }
                for d in devices
            ],
            "unbound": sum(not d.venues and not d.revoked for d in devices),
        }
    if args.json:
        _print(doc, True)
    else:
        for d in doc["devices"]:
            venues = ",".join(d["venues"]) if d["venues"] else "UNBOUND (any venue)"
            print(f"{d['device_id']:32} {'REVOKED' if d['revoked'] else 'active ':8} {venues:32} {d['label']}")
        if doc["unbound"]:
            print(
                f"{doc['unbound']} active device(s) bound to no venue: bind each with "
                "device-bind --device-id ID --venue V",
                file=sys.stderr,
            )
    return 0


def _trust_reload(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        doc = call_engine(cfg, "POST", "/v1/admin/trust/reload")
    except EngineUnreachable:
        print("no engine is running; it will read the trust list when it starts", file=sys.stderr)
        return 1
    _print(doc, args.json)
    return 0


def _stats(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        doc = call_engine(cfg, "GET", "/v1/admin/stats")
    except EngineUnreachable:
        doc = with_store(cfg, lambda s: s.stats())
    _print(doc, args.json)
    return 0


def _wal(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        doc = call_engine(cfg, "GET", "/v1/admin/wal")
    except EngineUnreachable:
        from engine.ingest.wal import WriteAheadLog

        wal = WriteAheadLog(cfg.wal_path)
        wal.open()
        try:
            doc = {
                "engine": "not running",
                "last_lsn": wal.last_lsn,
                "checkpoint_lsn": wal.checkpoint_lsn,
                "backlog_records": wal.backlog_records,
                "backlog_bytes": wal.backlog_bytes,
                "disk_bytes": wal.disk_bytes,
            }
        finally:
            wal.close()
    _print(doc, args.json)
    return 0


def _admin_token_add(args: argparse.Namespace) -> int:
    """A deployment admin token (a ClickHouse server store): accepted by every node within --registry-poll-s."""
    from engine.cli.remote import credential_registry

    cfg = _config(args)
    with credential_registry(cfg, "admin") as registry:
        token = registry.add(args.name, args.valid_days)
    if args.token_out:
        from engine.durable import create_private_file

        create_private_file(Path(args.token_out), token.encode() + b"\n")
    else:
        print(token)
    print(
        f"admin token {args.name!r} created for every node of the deployment; shown once, stored only as a hash",
        file=sys.stderr,
    )
    return 0


def _admin_token_revoke(args: argparse.Namespace) -> int:
    from engine.cli.remote import credential_registry

    with credential_registry(_config(args), "admin") as registry:
        registry.revoke(args.name)
    print(f"admin token {args.name!r} revoked: every node refuses it within --registry-poll-s", file=sys.stderr)
    return 0


def _admin_token_list(args: argparse.Namespace) -> int:
    import time

    from engine.cli.remote import credential_registry

    now = time.time()
    with credential_registry(_config(args), "admin") as registry:
        doc = [{"name": t.name, "state": t.state(now), "expires": t.expires} for t in registry.tracers()]
    _print({"admin_tokens": doc}, True)
    return 0


def _schema(args: argparse.Namespace) -> int:
    from engine.store.schema import cluster_ddl_text, render_migrations

    cfg = _config(args)
    if cfg.cluster:
        print(cluster_ddl_text(cfg.database, cfg.retention_days, cfg.cluster, replicated=cfg.replicated))
    else:
        for name, statements in render_migrations(cfg.database, cfg.retention_days, None):
            print(f"-- {name}")
            for stmt in statements:
                print(stmt.rstrip().rstrip(";") + ";\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    def add(
        name: str, func: Any, help_text: str, settings: tuple[str, ...] = CLIENT_SETTINGS
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        Config.add_arguments(p, only=settings)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=func)
        return p

    p = add("device-register", _device_register, "create a scanner key file and register the device")
    p.add_argument("--device-id", help="1..64 characters of A-Z a-z 0-9 _ . : - (not with --enroll)")
    p.add_argument("--out", type=Path, help="private key file to create (0600; not with --enroll)")
    p.add_argument("--label", default="", help="free text shown by device-list, e.g. the venue (default: none)")
    p.add_argument("--enroll", action="store_true", help="issue a one-time enrolment code for the /scanner page")
    p.add_argument(
        "--venue",
        action="append",
        help="venue id the device may post scans for (repeatable; without it the device is bound to no venue)",
    )
    p.add_argument("--ttl", default="15m", help="with --enroll: how long the code is valid (60s..24h; default 15m)")
    p.add_argument("--png", type=Path, help="with --enroll: also write the code as a QR image (.png or .svg)")
    p = add("device-revoke", _device_revoke, "revoke a scanner device (effective immediately)")
    p.add_argument("--device-id", required=True)
    p = add("device-bind", _device_bind, "bind a registered device to venues, keeping its key (or --unbind)")
    p.add_argument("--device-id", required=True)
    p.add_argument("--venue", action="append", help="venue id it may post scans for (repeatable)")
    p.add_argument("--unbind", action="store_true", help="bind it to no venue (any venue, unless binding is required)")
    add("device-list", _device_list, "list registered scanner devices, their venues, and which are unbound")
    p = add("admin-token-add", _admin_token_add, "create a deployment admin token (server store): valid on every node")
    p.add_argument("name", help="who holds it (1-64 of letters, digits, . _ - @)")
    p.add_argument("--valid-days", type=float, default=90.0, help="days until it expires (default 90, at most 366)")
    p.add_argument("--token-out", help="write the token to this new file (0600) instead of printing it")
    p = add("admin-token-revoke", _admin_token_revoke, "revoke a deployment admin token on every node")
    p.add_argument("name")
    add("admin-token-list", _admin_token_list, "the deployment's admin tokens (names, states; never the tokens)")
    add("trust-reload", _trust_reload, "make the running engine re-read its trust list (also: SIGHUP)")
    add("stats", _stats, "store statistics: rows per day, rejects by reason, top venues")
    add("wal", _wal, "write-ahead-log state", (*CLIENT_SETTINGS, "wal_dir"))
    add(
        "schema",
        _schema,
        "print the DDL (--cluster NAME: sharded, applied on every shard; add --replicated: ReplicatedMergeTree + "
        "ON CLUSTER)",
        ("database", "retention_days", "cluster", "replicated"),
    )
