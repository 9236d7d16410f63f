"""Subcommands of ``python -m engine``: one module per group, each exposing ``register(subparsers)``.

Keeping each group in its own module lets the CLI grow without one file that knows everything; the list
below is the only place that names them. Each module imports what it needs inside its commands, so
``python -m engine --help`` stays fast.
"""

from __future__ import annotations

from engine.cli import admin, audit, codes, info, scans, serve, trace, trust

COMMAND_MODULES = (info, codes, serve, admin, scans, trace, audit, trust)
