"""QR images: the size budget of docs/payload.md holds, and an independent decoder reads back the exact text."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from PIL import Image

from engine.codes import qr
from engine.codes.payload import Person, mint, parse
from engine.errors import QRReadError

LONGEST_NAME = "TON NU HOANG PHUONG THANH NGUYEN KHANH LINH"
MAX_TIME = 99_999_999_999  # 11 digits: the widest iat/exp the format allows


def longest_realistic_code(key: SigningKey) -> str:
    """The docs' budget: 12-character document number, 42-character name, 14-character QID, 11-digit times."""
    person = Person("079090012345", LONGEST_NAME, "1990-12-31", "PCC7F3A9D2E1B4", id_type="1")
    return mint(person, key, iat=MAX_TIME - 1, exp=MAX_TIME)


def test_longest_realistic_code_fits_version_10_at_level_m(issuer_key: SigningKey) -> None:
    code = longest_realistic_code(issuer_key)
    assert parse(code.encode()).ok
    info = qr.qr_info(code)
    assert info.error == "M"
    assert info.version <= qr.MAX_VERSION
    print(f"longest realistic code: {len(code)} bytes -> version {info.version}-{info.error}")


def test_error_level_is_not_boosted_for_short_codes() -> None:
    info = qr.qr_info("******012345|AN|1990-01-01|0|Q1|")
    assert info.error == "M" and info.version >= 1  # a regular QR, never a Micro QR


@pytest.mark.parametrize("scale", [2, 8])
def test_png_round_trip_gives_the_exact_text(tmp_path: Path, issuer_key: SigningKey, scale: int) -> None:
    code = longest_realistic_code(issuer_key)
    path = tmp_path / "code.png"
    info = qr.render(code, path, scale=scale)
    assert info == qr.qr_info(code)
    with Image.open(path) as img:
        modules = 17 + 4 * info.version + 2 * 4  # symbol plus the 4-module quiet zone on each side
        assert img.size == (modules * scale, modules * scale)
    assert qr.read_image(path) == code


def test_every_non_malformed_vector_round_trips(tmp_path: Path, code_vectors: dict[str, Any]) -> None:
    """Includes the UTF-8 ID-card codes (Vietnamese diacritics) and the legacy codes."""
    for v in code_vectors["vectors"]:
        if v["verdict"] == "malformed":
            continue
        path = tmp_path / f"{v['name']}.png"
        qr.render(v["code"], path, scale=3)
        assert qr.read_image(path) == v["code"], v["name"]


def test_svg_is_written(tmp_path: Path, issuer_key: SigningKey) -> None:
    code = longest_realistic_code(issuer_key)
    path = tmp_path / "out" / "code.SVG"
    info = qr.render(code, path)
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    side = (17 + 4 * info.version + 8) * 8
    assert (root.get("width"), root.get("height")) == (str(side), str(side))


def test_unsupported_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(QRReadError, match=r"\.png or \.svg"):
        qr.render("x", tmp_path / "code.jpg")
    assert not (tmp_path / "code.jpg").exists()


def test_image_without_a_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "blank.png"
    Image.new("L", (200, 200), 255).save(path)
    with pytest.raises(QRReadError, match="no QR code"):
        qr.read_image(path)


def test_image_with_two_codes_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    qr.render("FIRST|CODE", a, scale=4)
    qr.render("SECOND|CODE", b, scale=4)
    with Image.open(a) as ia, Image.open(b) as ib:
        both = Image.new("L", (ia.width + ib.width, max(ia.height, ib.height)), 255)
        both.paste(ia.convert("L"), (0, 0))
        both.paste(ib.convert("L"), (ia.width, 0))
    both.save(tmp_path / "both.png")
    with pytest.raises(QRReadError, match="2 QR codes"):
        qr.read_image(tmp_path / "both.png")


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\ntruncated"])
def test_unreadable_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(QRReadError, match="cannot read image"):
        qr.read_image(path)
    with pytest.raises(QRReadError, match="cannot read image"):
        qr.read_image(tmp_path / "absent.png")
