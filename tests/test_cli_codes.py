"""The issuer CLI end to end: ``keys``, ``codes``, ``mint``, ``verify``, ``demo``.

A few tests run ``python -m engine`` in a real subprocess (what an operator types, exit codes included); the
rest call ``engine.__main__.main`` in process, which is the same code without the interpreter start-up.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from engine.__main__ import main
from engine.codes.keys import read_key_file
from engine.codes.payload import key_id_text, parse
from engine.codes.trust import TrustList

ROOT = Path(__file__).resolve().parents[1]
PERSON = ["--doc-number", "******012345", "--name", "NGUYEN VAN AN", "--birth-date", "1990-01-**"]
NOW = "2026-06-01T00:00:00Z"


def engine(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def issuer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    key, trust = tmp_path / "issuer.key", tmp_path / "trust.json"
    rc, _, _ = run(
        capsys, "keys", "create", "--issuer", "pc-test", "--out", key, "--trust-list", trust,
        "--valid-from", "2026-01-01T00:00:00Z", "--valid-until", "2028-01-01T00:00:00Z",
    )  # fmt: skip
    assert rc == 0
    return key, trust


def mint_code(capsys: pytest.CaptureFixture[str], key: Path, qid: str = "PCC1", *extra: str | Path) -> str:
    rc, out, _ = run(
        capsys, "mint", "--key", key, *PERSON, "--qr-id", qid, "--issued-at", "2026-05-01T00:00:00Z", *extra
    )
    assert rc == 0
    return out.strip()


# -- a real operator session in subprocesses ------------------------------------------------------------
def test_keys_create_mint_verify_in_subprocesses(tmp_path: Path) -> None:
    key, trust = tmp_path / "k.key", tmp_path / "trust.json"
    created = engine("keys", "create", "--issuer", "pc-covid", "--out", key, "--trust-list", trust)
    assert created.returncode == 0, created.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    minted = engine("mint", "--key", key, *PERSON, "--qr-id", "PCC7F3A9D2E1B4", "--png", tmp_path / "c.png")
    assert minted.returncode == 0, minted.stderr
    code = minted.stdout.strip()
    assert "\n" not in code and parse(code.encode()).ok
    assert "version" in minted.stderr and "error level M" in minted.stderr

    ok = engine("verify", "--image", tmp_path / "c.png", "--trust-list", trust, "--json")
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert (result["verdict"], result["reason"], result["kind"]) == ("ok", "none", "signed")
    assert result["issuer"] == "pc-covid" and result["qr_id"] == "PCC7F3A9D2E1B4"

    forged = engine("verify", "--text", code.replace("VAN AN|", "VAN AM|"), "--trust-list", trust)
    assert forged.returncode == 1
    assert "bad_signature" in forged.stdout

    existing = engine("keys", "create", "--issuer", "pc-covid", "--out", key, "--trust-list", trust)
    assert existing.returncode == 2 and "refusing to overwrite" in existing.stderr


def test_demo_runs_and_shows_every_case() -> None:
    done = engine("demo")
    assert done.returncode == 0, done.stderr
    for expected in ("identical", "ok", "bad_signature", "expired", "unsigned_code", "id_card", "malformed"):
        assert expected in done.stdout
    assert "verifier implementation:" in done.stdout


# -- keys and trust list --------------------------------------------------------------------------------
def test_keys_create_adds_to_an_existing_list(
    tmp_path: Path, issuer: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key, trust = issuer
    rc, _, _ = run(capsys, "keys", "create", "--issuer", "second", "--out", tmp_path / "2.key", "--trust-list", trust)
    assert rc == 0
    loaded = TrustList.load(trust)
    assert sorted(k.issuer for k in loaded.keys) == ["pc-test", "second"]
    first = next(k for k in loaded.keys if k.issuer == "pc-test")
    assert first.public_key == read_key_file(key).public_key
    assert (first.valid_from, first.valid_until) == (1_767_225_600, 1_830_297_600)


def test_keys_create_without_list_prints_the_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "keys", "create", "--issuer", "solo", "--out", tmp_path / "k")
    assert rc == 0
    kid = key_id_text(read_key_file(tmp_path / "k").public_key)
    assert kid in out and '"issuer": "solo"' in out


def test_refused_entry_leaves_no_orphan_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(
        capsys, "keys", "create", "--issuer", "x", "--out", tmp_path / "k", "--trust-list", tmp_path / "t.json",
        "--valid-from", "2027-01-01T00:00:00Z", "--valid-until", "2026-01-01T00:00:00Z",
    )  # fmt: skip
    assert rc == 2 and "valid_until" in err
    assert not (tmp_path / "k").exists() and not (tmp_path / "t.json").exists()


def test_naive_time_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "keys", "create", "--issuer", "x", "--out", tmp_path / "k", "--valid-from", "2026-01-01")
    assert rc == 2 and "time zone" in err
    assert not (tmp_path / "k").exists()


def test_revoking_a_key_then_a_code(
    tmp_path: Path, issuer: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key, trust = issuer
    code = mint_code(capsys, key, "PCC-revoke-me")

    def verdict() -> tuple[int, str]:
        rc, out, _ = run(capsys, "verify", "--text", code, "--trust-list", trust, "--now", NOW, "--json")
        return rc, json.loads(out)["verdict"]

    assert verdict() == (0, "ok")
    assert run(capsys, "codes", "revoke", "--trust-list", trust, "--qr-id", "PCC-revoke-me")[0] == 0
    assert verdict() == (1, "revoked_code")
    kid = key_id_text(read_key_file(key).public_key)
    assert run(capsys, "keys", "revoke", "--trust-list", trust, f"--kid={kid}")[0] == 0
    assert verdict() == (1, "revoked_key")
    rc, _, err = run(capsys, "keys", "revoke", "--trust-list", trust, "--kid", "AAAAAAAAAAA")
    assert rc == 2 and "no key" in err
    rc, _, err = run(capsys, "codes", "revoke", "--trust-list", trust, "--qr-id", "bad qid")
    assert rc == 2 and "not a valid QR id" in err


# -- mint and verify ------------------------------------------------------------------------------------
def test_mint_writes_png_and_svg(tmp_path: Path, issuer: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    key, _ = issuer
    code = mint_code(capsys, key, "PCC2", "--png", tmp_path / "c.png", "--svg", tmp_path / "c.svg", "--days", "30")
    p = parse(code.encode())
    assert p.exp - p.iat == 30 * 86_400 and p.iat == 1_777_593_600
    assert (tmp_path / "c.png").stat().st_size > 0
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")


def test_mint_refuses_bad_fields(issuer: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    key, _ = issuer
    rc, out, err = run(capsys, "mint", "--key", key, *PERSON[:3], "Nguyen", *PERSON[4:], "--qr-id", "Q")
    assert rc == 2 and "does not parse" in err and out == ""


def test_mint_refuses_a_loose_key_file(issuer: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    key, _ = issuer
    key.chmod(0o644)
    rc, _, err = run(capsys, "mint", "--key", key, *PERSON, "--qr-id", "Q")
    assert rc == 2 and "chmod 600" in err


def test_verify_reports_times_and_person_key_with_a_secret(
    tmp_path: Path, issuer: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key, trust = issuer
    code = mint_code(capsys, key)
    secret = tmp_path / "person_key.secret"
    secret.write_bytes(b"k" * 32)
    rc, out, _ = run(capsys, "verify", "--text", code, "--trust-list", trust, "--secret-file", secret, "--now", NOW)
    assert rc == 0
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["iat"] == "2026-05-01T00:00:00Z" and lines["exp"] == "2027-05-01T00:00:00Z"
    assert lines["kid"] == key_id_text(read_key_file(key).public_key) and lines["issuer"] == "pc-test"
    issuer = hashlib.sha256(b"pc-test").digest()[:16]
    label = b"id1:iss:" + issuer + lines["qr_id"].encode()
    assert lines["person_key"] == hmac.new(b"k" * 32, label, hashlib.sha256).digest()[:16].hex()
    assert "link_key" not in lines  # the number is masked: it links nothing

    rc, out, _ = run(capsys, "verify", "--text", code, "--trust-list", trust, "--now", NOW)
    assert rc == 0 and "person_key" not in out  # ephemeral secret: nothing meaningful to show


@pytest.mark.parametrize(
    ("now", "verdict", "reason"),
    [
        ("2028-06-01T00:00:00Z", "expired", "none"),
        ("2026-04-30T00:00:00Z", "not_yet_valid", "none"),
    ],
)
def test_verify_exit_code_is_1_unless_ok(
    issuer: tuple[Path, Path], capsys: pytest.CaptureFixture[str], now: str, verdict: str, reason: str
) -> None:
    key, trust = issuer
    code = mint_code(capsys, key)
    rc, out, _ = run(capsys, "verify", "--text", code, "--trust-list", trust, "--now", now, "--json")
    assert rc == 1
    assert (json.loads(out)["verdict"], json.loads(out)["reason"]) == (verdict, reason)


def test_verify_of_unsigned_and_card_codes(issuer: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, trust = issuer
    for text, verdict in [
        ("******012345|NGUYEN VAN AN|1990-01-**|0|PCC1|", "unsigned_code"),
        ("001203004567|NGUYEN THI HOA|29022000|Nu|Ha Noi|01012022", "id_card"),
        ("garbage", "malformed"),
    ]:
        rc, out, _ = run(capsys, "verify", "--text", text, "--trust-list", trust, "--json")
        assert rc == 1 and json.loads(out)["verdict"] == verdict


def test_verify_needs_exactly_one_source(issuer: tuple[Path, Path]) -> None:
    _, trust = issuer
    with pytest.raises(SystemExit):
        main(["verify", "--trust-list", str(trust)])
    with pytest.raises(SystemExit):
        main(["verify", "--text", "x", "--image", "y.png", "--trust-list", str(trust)])


def test_verify_with_unusable_inputs(
    tmp_path: Path, issuer: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, trust = issuer
    (tmp_path / "short.secret").write_bytes(b"tiny")
    cases = [
        (["--text", "x", "--trust-list", tmp_path / "absent.json"], "cannot read trust list"),
        (["--image", tmp_path / "absent.png", "--trust-list", trust], "cannot read image"),
        (["--text", "x", "--trust-list", trust, "--secret-file", tmp_path / "short.secret"], "too short"),
    ]
    for args, message in cases:
        rc, _, err = run(capsys, "verify", *args)
        assert rc == 2 and message in err


# -- key rotation: list, retire by kid, mint inside the window --------------------------------------------
def _kids_by_issuer(trust: Path) -> dict[str, str]:
    return {k.issuer: k.kid_text for k in TrustList.load(trust).keys}


def test_keys_list_and_retire_act_on_the_named_key_never_a_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trust list is kept sorted by kid, not by age: "the first key" is an arbitrary one. Retiring or revoking
    by kid must change exactly that key, whatever its position."""
    trust = tmp_path / "trust.json"
    for i, issuer in enumerate(("old", "mid", "new")):
        rc, _, _ = run(
            capsys, "keys", "create", "--issuer", issuer, "--out", tmp_path / f"{issuer}.key", "--trust-list", trust,
            "--valid-from", f"202{3 + i}-01-01T00:00:00Z", "--valid-until", "2030-01-01T00:00:00Z",
        )  # fmt: skip
        assert rc == 0
    before = {k.kid_text: k for k in TrustList.load(trust).keys}
    kids = _kids_by_issuer(trust)
    target = kids["new"]
    if TrustList.load(trust).keys[0].kid_text == target:  # the target must not be keys[0]
        target = kids["mid"]
    rc, out, _ = run(capsys, "keys", "list", "--trust-list", trust, "--json")
    assert rc == 0
    listed = {r["kid"]: r for r in orjson.loads(out)}
    assert set(listed) == set(before) and listed[kids["old"]]["valid_from"] == "2023-01-01T00:00:00Z"
    assert all(r["state"] == "issuing" and r["revoked"] is False for r in listed.values())

    rc, _, _ = run(capsys, "keys", "retire", "--trust-list", trust, f"--kid={target}", "--at", "2026-06-01T00:00:00Z")
    assert rc == 0
    after = {k.kid_text: k for k in TrustList.load(trust).keys}
    assert after[target].valid_until == 1780272000  # 2026-06-01T00:00:00Z
    assert all(after[k] == before[k] for k in before if k != target)
    rc, out, _ = run(capsys, "keys", "list", "--trust-list", trust)
    assert rc == 0 and f"{target}" in out and "retired" in out

    rc, _, _ = run(capsys, "keys", "revoke", "--trust-list", trust, "--kid=" + kids["old"])
    assert rc == 0
    revoked = {k.kid_text: k.revoked for k in TrustList.load(trust).keys}
    assert revoked == {k: k == kids["old"] for k in before}
    rc, _, err = run(capsys, "keys", "retire", "--trust-list", trust, "--kid", "AAAAAAAAAAA")
    assert rc == 2 and "no key AAAAAAAAAAA" in err


def test_mint_refuses_codes_outside_the_key_window_unless_forced(
    issuer: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key, trust = issuer  # valid 2026-01-01 .. 2028-01-01, recorded in the key file and the trust list
    for when in ("2025-12-31T23:59:59Z", "2028-01-01T00:00:01Z"):
        rc, out, err = run(capsys, "mint", "--key", key, *PERSON, "--qr-id", "PCCW", "--issued-at", when)
        assert rc == 2 and out == "" and "outside key" in err and "key_window" in err, err
    rc, out, err = run(
        capsys, "mint", "--key", key, *PERSON, "--qr-id", "PCCW", "--issued-at", "2025-06-01T00:00:00Z", "--force"
    )
    assert rc == 0 and out.strip() and "warning (--force)" in err
    forced = out.strip()
    rc, out, _ = run(capsys, "verify", "--text", forced, "--trust-list", trust, "--now", "2026-02-01T00:00:00Z")
    assert rc == 1 and "key_window" in out  # what the refusal promised
    # the trust list wins over the key file: a retired key refuses new codes
    kid = next(iter(_kids_by_issuer(trust).values()))
    assert run(capsys, "keys", "retire", "--trust-list", trust, f"--kid={kid}", "--at", "2026-03-01T00:00:00Z")[0] == 0
    rc, _, err = run(
        capsys, "mint", "--key", key, *PERSON, "--qr-id", "Q", "--issued-at", "2026-05-01T00:00:00Z",
        "--trust-list", trust,
    )  # fmt: skip
    assert rc == 2 and "outside key" in err
    assert run(capsys, "keys", "revoke", "--trust-list", trust, f"--kid={kid}")[0] == 0
    rc, _, err = run(
        capsys, "mint", "--key", key, *PERSON, "--qr-id", "Q", "--issued-at", "2026-02-01T00:00:00Z",
        "--trust-list", trust,
    )  # fmt: skip
    assert rc == 2 and "revoked" in err


def test_mint_with_a_key_file_that_records_no_window_needs_the_trust_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.codes.keys import write_key_file

    write_key_file(tmp_path / "legacy.key", "pc-old")  # as written before key files recorded their window
    rc, _, err = run(capsys, "mint", "--key", tmp_path / "legacy.key", *PERSON, "--qr-id", "Q")
    assert rc == 2 and "--trust-list" in err
