"""``python -m engine`` / ``vnqr-engine``: the one command-line entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from engine.cli import COMMAND_MODULES
from engine.errors import EngineError
from engine.version import VERSION


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vnqr-engine {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EngineError as exc:  # every deliberate refusal, store failures included, as one clear line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
