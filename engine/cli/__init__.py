"""Subcommands of ``python -m engine``: one module per group, each exposing ``register(subparsers)``.

Keeping each group in its own module lets the CLI grow without one file that knows everything; the list
below is the only place that names them.
"""

from __future__ import annotations

COMMAND_MODULES: tuple[str, ...] = (
    "engine.cli.info",
    "engine.cli.codes",
    "engine.cli.serve",
    "engine.cli.admin",
    "engine.cli.trace",
)
