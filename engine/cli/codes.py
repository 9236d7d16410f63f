"""Issuer-side and inspection commands: ``keys``, ``codes``, ``mint``, ``verify`` and the quick-start ``demo``.

These are what an operator of an issuing platform, or someone debugging one code, runs by hand. They use the
same modules as the server (trust list, key files, the active verifier), so "it verifies on my desk" means
the engine will say the same.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from nacl.signing import SigningKey

from engine.clock import iso_utc, parse_iso
from engine.codes import qr
from engine.codes.keys import KeyFile, read_key_file, write_key_file
from engine.codes.payload import Person, key_id, key_id_text, mint
from engine.codes.trust import TrustedKey, TrustList
from engine.codes.verdicts import CodeKind, Reason, Verdict
from engine.errors import ConfigError, MintError
from engine.verify import implementation, make_verifier
from engine.verify.contract import CodeBatch

DAY = 86_400
DEFAULT_KEY_YEARS = 2
MIN_SECRET_BYTES = 16


def parse_time(text: str | None, default: int) -> int:
    """ISO-8601 with a zone (``Z`` accepted) or Unix seconds; naive times are refused as in the trust list."""
    if text is None:
        return default
    if text.isascii() and text.isdigit():  # "³".isdigit() is True, and int() refuses it
        return int(text)
    try:
        return int(parse_iso(text).timestamp())
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _load_or_empty(path: Path) -> TrustList:
    return TrustList.load(path) if path.exists() else TrustList()


# -- keys / codes -----------------------------------------------------------------------------------------
def _keys_create(args: argparse.Namespace) -> int:
    now = int(time.time())
    valid_from = parse_time(args.valid_from, now)
    valid_until = parse_time(args.valid_until, valid_from + DEFAULT_KEY_YEARS * 365 * DAY)
    signing_key = SigningKey.generate()
    public = bytes(signing_key.verify_key)
    entry = TrustedKey(key_id(public), args.issuer, public, valid_from, valid_until)
    # Validate the new trust list before the key file exists, so a refused entry leaves no orphan private key.
    updated = _load_or_empty(args.trust_list).with_key(entry) if args.trust_list else TrustList.build([entry])
    write_key_file(args.out, args.issuer, signing_key, window=(valid_from, valid_until))
    if args.trust_list:
        updated.save(args.trust_list)
        print(f"added key {entry.kid_text} ({args.issuer}) to {args.trust_list}")
    else:
        print("trust list entry (add it to the engine's trust list):")
        print(updated.to_json().decode(), end="")
    print(f"private key written to {args.out} (mode 0600); valid {iso_utc(valid_from)} .. {iso_utc(valid_until)}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    TrustList.load(args.trust_list).with_key_revoked(args.kid).save(args.trust_list)
    print(f"key {args.kid} revoked in {args.trust_list}; codes it signed now verify as revoked_key")
    return 0


def key_state(k: TrustedKey, now: int) -> str:
    if k.revoked:
        return "revoked"
    if now < k.valid_from:
        return "not yet valid"
    return "issuing" if now <= k.valid_until else "retired"


def _keys_list(args: argparse.Namespace) -> int:
    trust = TrustList.load(args.trust_list)
    now = int(time.time())
    rows = [
        {
            "kid": k.kid_text,
            "issuer": k.issuer,
            "valid_from": iso_utc(k.valid_from),
            "valid_until": iso_utc(k.valid_until),
            "revoked": k.revoked,
            "state": key_state(k, now),
        }
        for k in sorted(trust.keys, key=lambda k: (k.issuer, k.valid_from, k.kid_text))
    ]
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"{'kid':12} {'issuer':16} {'valid_from':21} {'valid_until':21} state")
    for r in rows:
        print(f"{r['kid']:12} {r['issuer']:16} {r['valid_from']:21} {r['valid_until']:21} {r['state']}")
    return 0


def _keys_retire(args: argparse.Namespace) -> int:
    at = parse_time(args.at, int(time.time()))
    TrustList.load(args.trust_list).with_key_retired(args.kid, at).save(args.trust_list)
    print(
        f"key {args.kid} retired in {args.trust_list} as of {iso_utc(at)}: codes it signed before keep verifying "
        "until they expire; codes it signs after are refused (key_window). Then: trust-reload or SIGHUP"
    )
    return 0


def _codes_revoke(args: argparse.Namespace) -> int:
    TrustList.load(args.trust_list).with_code_revoked(args.qr_id).save(args.trust_list)
    print(f"code {args.qr_id} revoked in {args.trust_list}")
    return 0


# -- mint -------------------------------------------------------------------------------------------------
def _key_window(args: argparse.Namespace, key: KeyFile) -> tuple[int, int, bool] | None:
    """The window (and revoked flag) codes from this key are judged by: the trust list's if given, else the
    one recorded in the key file when it was created."""
    if args.trust_list is not None:
        entry = TrustList.load(args.trust_list).key(key_id_text(key.public_key))
        return entry.valid_from, entry.valid_until, entry.revoked
    if key.valid_from is not None and key.valid_until is not None:
        return key.valid_from, key.valid_until, False
    return None


def _check_window(args: argparse.Namespace, key: KeyFile, iat: int) -> None:
    """Refuse to issue a code the engine would not verify (unless ``--force``, e.g. for a test vector)."""
    window = _key_window(args, key)
    kid = key_id_text(key.public_key)
    if window is None:
        problem = f"key file {args.key} records no validity window; give --trust-list (the engine's) to check it"
    elif window[2]:
        problem = f"key {kid} is revoked in {args.trust_list}: every code it signs verifies as revoked_key"
    elif not window[0] <= iat <= window[1]:
        verdict = "not_yet_valid" if iat < window[0] else "expired"
        problem = (
            f"issued at {iso_utc(iat)}, outside key {kid}'s window {iso_utc(window[0])} .. {iso_utc(window[1])}: "
            f"the code would verify as {verdict} (reason key_window)"
        )
    else:
        return
    if not args.force:
        raise MintError(f"{problem}; --force mints it anyway")
    print(f"warning (--force): {problem}", file=sys.stderr)


def _mint(args: argparse.Namespace) -> int:
    key = read_key_file(args.key)
    iat = parse_time(args.issued_at, int(time.time()))
    _check_window(args, key, iat)
    person = Person(args.doc_number, args.name, args.birth_date, args.qr_id, id_type=args.id_type)
    code = mint(person, key.signing_key, iat=iat, exp=iat + args.days * DAY)
    info = qr.qr_info(code)
    for path in (args.png, args.svg):
        if path is not None:
            qr.render(code, path)
    print(code)
    # Only the code goes to stdout, so `CODE=$(python -m engine mint ...)` captures exactly the payload.
    print(f"qr: version {info.version}, error level {info.error}, {len(code.encode())} bytes", file=sys.stderr)
    if info.version > qr.MAX_VERSION:
        print(f"warning: above version {qr.MAX_VERSION}: hard to scan from a phone screen", file=sys.stderr)
    return 0


# -- verify -----------------------------------------------------------------------------------------------
def verify_one(code: bytes, trust: TrustList, secret: bytes, now: int) -> dict[str, Any]:
    """Run one code through the active verifier and describe the result for people (or ``--json``)."""
    verifier = make_verifier(trust.table(), secret, cache_size=0)
    batch = CodeBatch.from_codes([code])
    r = verifier.verify_batch(batch, now)
    kind = CodeKind(r.kind[0])
    out: dict[str, Any] = {
        "verdict": Verdict(r.verdict[0]).label,
        "reason": Reason(r.reason[0]).label,
        "kind": kind.label,
        "verifier": implementation(),
    }
    if r.qid_end[0] > r.qid_start[0]:
        out["qr_id"] = r.qr_id(batch.buf, 0)
    if kind is CodeKind.SIGNED and r.exp[0]:
        idx = int(r.key_index[0])
        if idx >= 0:
            table = trust.table()
            out["kid"], out["issuer"] = table.kid_text(idx), table.issuers[idx]
        out["iat"], out["exp"] = iso_utc(int(r.iat[0])), iso_utc(int(r.exp[0]))
    out["person_key"] = bytes(r.person_key[0]).hex()  # the tracing identity (docs/payload.md section 5)
    if r.link_key[0].any():  # a genuine code printing its number whole: the document it links to
        out["link_key"] = bytes(r.link_key[0]).hex()
    return out


def _read_secret(path: Path | None) -> bytes:
    if path is None:
        return secrets.token_bytes(32)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
    if len(data) < MIN_SECRET_BYTES:
        raise ConfigError(f"secret file {path} is too short")
    return data


def _verify(args: argparse.Namespace) -> int:
    text = args.text if args.text is not None else qr.read_image(args.image)
    trust = TrustList.load(args.trust_list)
    result = verify_one(
        text.encode("utf-8"), trust, _read_secret(args.secret_file), parse_time(args.now, int(time.time()))
    )
    if args.secret_file is None:
        # keyed by a throw-away secret: meaningless outside this run
        result.pop("person_key", None)
        result.pop("link_key", None)
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        for name, value in result.items():
            print(f"{name:10} {value}")
    return 0 if result["verdict"] == Verdict.OK.label else 1


# -- demo -------------------------------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> int:
    """Everything the format promises, in a temp dir, in about a second; see docs/payload.md section 7."""
    now = int(time.time())
    person = Person("******012345", "NGUYEN VAN AN", "1990-01-**", "PCC7F3A9D2E1B4")
    with tempfile.TemporaryDirectory(prefix="vnqr-demo-") as tmp:
        d = Path(tmp)
        key = write_key_file(d / "issuer.key", "demo-platform")
        trust = TrustList.build(
            [TrustedKey(key_id(key.public_key), "demo-platform", key.public_key, now - 400 * DAY, now + 730 * DAY)]
        )
        trust.save(d / "trust.json")
        print(f"issuer key {key_id_text(key.public_key)} created; trust list at {d / 'trust.json'}")
        code = mint(person, key.signing_key, iat=now, exp=now + 365 * DAY)
        info = qr.render(code, d / "code.png")
        scanned = qr.read_image(d / "code.png")
        print(f"minted ({len(code)} bytes, QR version {info.version}-{info.error}):\n  {code}")
        print(f"rendered to PNG and read back with zxing-cpp: {'identical' if scanned == code else 'DIFFERENT'}")
        sig_at = len(code) - 40
        cases = [
            ("scanned from the PNG", scanned),
            ("name changed (AN -> AM)", code.replace("VAN AN|", "VAN AM|")),
            ("signature byte changed", code[:sig_at] + ("B" if code[sig_at] != "B" else "C") + code[sig_at + 1 :]),
            ("expired a day ago", mint(person, key.signing_key, iat=now - 366 * DAY, exp=now - DAY)),
            ("legacy unsigned code", f"{person.fields()}|"),
            ("CCCD card code", "001203004567||NGUYEN THI HOA|29022000|Nu|Ha Noi|01012022"),
            ("not a code at all", "https://example.vn/?q=1"),
        ]
        secret = secrets.token_bytes(32)
        print(f"\n{'case':28} {'verdict':14} {'reason':12} kind")
        for label, text in cases:
            r = verify_one(text.encode(), trust, secret, now)
            print(f"{label:28} {r['verdict']:14} {r['reason']:12} {r['kind']}")
    print(f"\nverifier implementation: {implementation()}")
    return 0 if scanned == code else 1


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="issuer signing keys: create, list, retire, revoke")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = keys_sub.add_parser("create", help="create an issuer private key and add its public key to a trust list")
    p.add_argument("--issuer", required=True, help="issuing platform id, e.g. pc-covid")
    p.add_argument("--out", required=True, type=Path, help="private key file to create (0600, never overwritten)")
    p.add_argument(
        "--trust-list",
        type=Path,
        help="trust list to add the key to (created if missing); without it the entry is printed",
    )
    p.add_argument("--valid-from", help="ISO-8601 with zone, or Unix seconds (default: now)")
    p.add_argument("--valid-until", help=f"ISO-8601 with zone, or Unix seconds (default: +{DEFAULT_KEY_YEARS} years)")
    p.set_defaults(func=_keys_create)
    p = keys_sub.add_parser("list", help="the trust list's keys: kid, issuer, window, revoked, state")
    p.add_argument("--trust-list", required=True, type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_keys_list)
    p = keys_sub.add_parser(
        "retire", help="end a key's issuing window (rotation): codes it signed before keep verifying until they expire"
    )
    p.add_argument("--trust-list", required=True, type=Path)
    p.add_argument(
        "--kid",
        required=True,
        help="key id (11 base64url characters; see keys list), never a position; "
        "write --kid=KID when it starts with '-'",
    )
    p.add_argument("--at", help="end of the window: ISO-8601 with zone, or Unix seconds (default: now)")
    p.set_defaults(func=_keys_retire)
    p = keys_sub.add_parser("revoke", help="mark a key revoked (compromise): every code it signed stops verifying")
    p.add_argument("--trust-list", required=True, type=Path)
    p.add_argument("--kid", required=True, help="key id (11 base64url characters; --kid=KID if it starts with '-')")
    p.set_defaults(func=_keys_revoke)

    codes = sub.add_parser("codes", help="individual codes: revoke")
    codes_sub = codes.add_subparsers(dest="codes_command", required=True, metavar="ACTION")
    p = codes_sub.add_parser("revoke", help="add a QR id to the trust list's code revocation list")
    p.add_argument("--trust-list", required=True, type=Path)
    p.add_argument("--qr-id", required=True)
    p.set_defaults(func=_codes_revoke)

    p = sub.add_parser("mint", help="issue a signed code (prints it; QR version goes to stderr)")
    p.add_argument("--key", required=True, type=Path, help="issuer private key file")
    p.add_argument("--doc-number", required=True, help="e.g. ******012345")
    p.add_argument("--name", required=True, help="upper case, no diacritics")
    p.add_argument("--birth-date", required=True, help="YYYY-MM-DD, day/month may be **")
    p.add_argument("--qr-id", required=True)
    p.add_argument("--id-type", default="0", choices=("0", "1"), help="0 = for oneself, 1 = on someone's behalf")
    p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    p.add_argument("--issued-at", help="ISO-8601 with zone, or Unix seconds (default: now)")
    p.add_argument(
        "--trust-list", type=Path, help="check the key against this trust list (default: the window in the key file)"
    )
    p.add_argument("--force", action="store_true", help="mint even outside the key's window or with a revoked key")
    p.add_argument("--png", type=Path, help="also render the QR code as PNG")
    p.add_argument("--svg", type=Path, help="also render the QR code as SVG")
    p.set_defaults(func=_mint)

    p = sub.add_parser("verify", help="verify one code (text or QR image); exit 0 only if the verdict is ok")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the code as scanned")
    src.add_argument("--image", type=Path, help="PNG/JPEG holding one QR code (read with zxing-cpp)")
    p.add_argument("--trust-list", required=True, type=Path)
    p.add_argument(
        "--secret-file",
        type=Path,
        help="person-key secret (the engine's data_dir/person_key.secret); "
        "without it an ephemeral secret is used and no person key is shown",
    )
    p.add_argument("--now", help="judge as of this time: ISO-8601 with zone, or Unix seconds (default: now)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_verify)

    p = sub.add_parser("demo", help="quick start: key, trust list, mint, PNG round trip, verdicts for several codes")
    p.set_defaults(func=_demo)
