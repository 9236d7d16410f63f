"""``trust``: the deployment root key and signed trust-list versions (engine/codes/trust_root.py).

``trust root-key --out KEY --public-out PUB`` makes the root key pair once per deployment: the private half stays
with whoever publishes (offline, 0600), the public half goes to every node (``--trust-root-key PUB``).
``trust publish --trust-list FILE --signing-key KEY`` signs FILE as the next version (or ``--version N``) and
publishes it: through this host's running engine when there is one (which puts it in force at once), else straight
into the store; every node picks it up within ``--trust-poll-s``. ``trust status`` shows the store's newest version
and this node's. The private key never leaves the machine running the command: only the signed document does.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path
from typing import Any

import orjson

from engine.cli.remote import EngineUnreachable, call_engine, with_store
from engine.config import CLIENT_SETTINGS, Config
from engine.errors import ConfigError


def _root_key(args: argparse.Namespace) -> int:
    from engine.codes.keys import write_key_file
    from engine.codes.payload import b64url_encode
    from engine.durable import replace_file

    key = write_key_file(args.out, "trust-root")
    replace_file(args.public_out, (b64url_encode(key.public_key) + "\n").encode())
    print(f"root signing key written to {args.out} (0600: keep it offline, it signs every trust list)")
    print(f"root public key written to {args.public_out}: give it to every node as --trust-root-key")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from engine.codes.keys import read_key_file
    from engine.codes.trust import TrustList
    from engine.codes.trust_root import sign
    from engine.deployment.trust import publish

    cfg = Config.from_sources(args)
    signing = args.signing_key or os.environ.get("ENGINE_TRUST_SIGNING_KEY")
    if not signing:
        raise ConfigError("trust publish needs the root signing key: --signing-key FILE or ENGINE_TRUST_SIGNING_KEY")
    root = read_key_file(Path(signing))
    trust = TrustList.load(args.trust_list)  # every rule of a trust list is checked before anything is signed
    version = args.version or _store_version(cfg) + 1
    document = sign(trust, root.signing_key, version)
    if args.out:
        Path(args.out).write_bytes(document)
    doc: dict[str, Any]
    try:
        doc = call_engine(cfg, "POST", "/v1/admin/trust/publish", orjson.loads(document))
        doc["published"] = "through the engine of this data directory (in force there now)"
    except EngineUnreachable:
        from engine.codes.trust_root import read_root_key

        public = read_root_key(cfg.trust_root_key) if cfg.signed_trust else bytes(root.signing_key.verify_key)
        signed = with_store(cfg, lambda s: publish(s, public, document, f"trust publish on {socket.gethostname()}"))
        doc = {
            "version": signed.version,
            "keys": len(signed.trust.keys),
            "revoked_codes": len(signed.trust.revoked_codes),
        }
        doc["published"] = "directly in the store (no engine running here)"
    doc["note"] = "every node with this root key uses it within --trust-poll-s (engine_trust_list_version)"
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    return 0


def _store_version(cfg: Config) -> int:
    """The store's newest version: asked of this host's engine (an embedded store is locked by it), else read."""
    from engine.deployment.trust import newest_version

    try:
        return int(call_engine(cfg, "GET", "/v1/admin/trust").get("store_version", 0))
    except EngineUnreachable:
        return with_store(cfg, newest_version)


def _status(args: argparse.Namespace) -> int:
    from engine.deployment.trust import newest_version

    cfg = Config.from_sources(args)
    try:
        doc: dict[str, Any] = call_engine(cfg, "GET", "/v1/admin/trust")
    except EngineUnreachable:
        doc = {"store_version": with_store(cfg, newest_version), "engine": "not running"}
        cache = cfg.data_dir / "trust.signed.json"
        if cache.exists():
            doc["version"] = orjson.loads(cache.read_bytes()).get("version")
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    trust = sub.add_parser("trust", help="deployment root key and signed trust list versions: root-key, publish")
    trust_sub = trust.add_subparsers(dest="trust_command", required=True)
    p = trust_sub.add_parser("root-key", help="create the deployment root key pair (once per deployment)")
    p.add_argument("--out", type=Path, required=True, help="private key file to create (0600; keep it offline)")
    p.add_argument("--public-out", type=Path, required=True, help="public key file for every node's --trust-root-key")
    p.set_defaults(func=_root_key)
    p = trust_sub.add_parser("publish", help="sign a trust list as the next version and publish it to every node")
    Config.add_arguments(p, only=CLIENT_SETTINGS)
    p.add_argument("--trust-list", type=Path, required=True, help="the plain trust list JSON to sign (keys list)")
    p.add_argument("--signing-key", help="the root signing key file [env ENGINE_TRUST_SIGNING_KEY]")
    p.add_argument("--version", type=int, default=0, help="the version to publish (default: the store's newest + 1)")
    p.add_argument("--out", type=Path, help="also write the signed document here")
    p.set_defaults(func=_publish)
    p = trust_sub.add_parser("status", help="the store's newest trust list version and this node's")
    Config.add_arguments(p, only=CLIENT_SETTINGS)
    p.set_defaults(func=_status)
