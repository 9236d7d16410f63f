"""The installed version, for ``--version``, ``engine.json`` and bug reports (one place reads it)."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("vnqr-engine")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "0+unknown"
