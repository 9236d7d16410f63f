"""QR images of codes: rendering for issuers and demos, reading back for tests and the ``verify --image`` CLI.

Rendering is pinned to error correction level M with ``boost_error=False``: the size budget in
docs/payload.md section 2 (version 10 at level M, read from a phone screen) is only meaningful if the level
does not silently change with the payload length. Reading uses zxing-cpp, an independent decoder, so a
round trip checks our output against somebody else's reader rather than against itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import segno
import zxingcpp
from PIL import Image, UnidentifiedImageError

from engine.errors import QRReadError

ERROR_LEVEL = "M"
MAX_VERSION = 10
"""The largest QR version the format budgets for (docs/payload.md section 2)."""

_FORMATS = {".png", ".svg"}


class QRInfo(NamedTuple):
    version: int
    error: str


def _make(code: str) -> segno.QRCode:
    # micro=False: a short test string would otherwise become a Micro QR that phone scanners often ignore.
    return segno.make(code, error=ERROR_LEVEL, boost_error=False, micro=False)


def qr_info(code: str) -> QRInfo:
    """The QR version and error level the code renders at, without writing anything."""
    qr = _make(code)
    return QRInfo(int(qr.version), str(qr.error))


def render(code: str, path: Path, *, scale: int = 8) -> QRInfo:
    """Write the code as a PNG or SVG (chosen by the file suffix) with the standard 4-module quiet zone."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise QRReadError(f"{path}: can render only .png or .svg, not {suffix or 'no suffix'!r}")
    qr = _make(code)
    path.parent.mkdir(parents=True, exist_ok=True)
    qr.save(str(path), kind=suffix[1:], scale=scale, border=4)
    return QRInfo(int(qr.version), str(qr.error))


def read_image(path: Path) -> str:
    """Decode the one QR code in an image file and return its text exactly as a scanner would.

    ``TextMode.Plain`` keeps the bytes as encoded (no GS1/HRI reformatting), so what we verify is what the
    camera saw. More than one QR code in the picture is refused: which one a check-in meant is not ours to guess.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            barcodes = zxingcpp.read_barcodes(
                img, formats=zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode), text_mode=zxingcpp.TextMode.Plain
            )
    except (OSError, UnidentifiedImageError) as exc:
        raise QRReadError(f"cannot read image {path}: {exc}") from None
    if not barcodes:
        raise QRReadError(f"no QR code found in {path}")
    if len(barcodes) > 1:
        raise QRReadError(f"{len(barcodes)} QR codes found in {path}; expected one")
    return str(barcodes[0].text)
