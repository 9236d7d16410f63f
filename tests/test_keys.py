"""Private key files: created 0600 in one step, never overwritten, refused when others can read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from engine.codes.keys import read_key_file, write_key_file
from engine.errors import KeyFileError


def test_written_0600_and_read_back(tmp_path: Path, issuer_key: SigningKey) -> None:
    path = tmp_path / "dir" / "issuer.key"
    written = write_key_file(path, "platform-a", issuer_key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = read_key_file(path)
    assert loaded.owner == "platform-a"
    assert bytes(loaded.signing_key) == bytes(issuer_key)
    assert loaded.public_key == written.public_key == bytes(issuer_key.verify_key)


def test_mode_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_key_file(tmp_path / "k", "o")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_generates_a_fresh_key_when_none_given(tmp_path: Path) -> None:
    a = write_key_file(tmp_path / "a", "o")
    b = write_key_file(tmp_path / "b", "o")
    assert a.public_key != b.public_key


def test_refuses_to_overwrite(tmp_path: Path, issuer_key: SigningKey) -> None:
    path = tmp_path / "k"
    write_key_file(path, "first", issuer_key)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_key_file(path, "second")
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o610])
def test_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k"
    write_key_file(path, "o")
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_key_file(path)


def test_0400_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_key_file(path, "o")
    path.chmod(0o400)
    assert read_key_file(path).owner == "o"


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[]", b'{"owner": "o"}', b'{"owner": "o", "seed": "not base64!"}', b'{"owner": "o", "seed": "AAAA"}'],
    ids=["empty", "truncated", "list", "no-seed", "bad-base64", "short-seed"],
)
def test_refuses_malformed_files(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "k"
    path.write_bytes(body)
    path.chmod(0o600)
    with pytest.raises(KeyFileError):
        read_key_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        read_key_file(tmp_path / "absent")


def test_repr_never_shows_the_seed(tmp_path: Path, issuer_key: SigningKey) -> None:
    key = write_key_file(tmp_path / "k", "o", issuer_key)
    text = repr(key) + str(key)
    assert bytes(issuer_key).hex() not in text
    assert bytes(issuer_key).hex()[:16] not in text
