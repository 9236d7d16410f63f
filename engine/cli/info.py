"""``info``: which compiled paths are active (verifier, request intake) and the versions that matter for bug reports."""

from __future__ import annotations

import argparse
import os
import platform

import orjson


def cpu_model() -> str:
    """The CPU's model name, printed beside every benchmark figure (figures drift between machines)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor() or "unknown"


def collect() -> dict[str, object]:
    """Facts about this installation; the benchmarks print the same dict beside their figures."""
    import aiohttp
    import nacl
    import numpy

    from engine import _accel, verify
    from engine.ingest import intake

    return {
        "verifier": verify.implementation(),
        "intake": intake.TAKE_ITEMS_IMPLEMENTATION,
        "extension_error": "; ".join(f"{k}: {v}" for k, v in sorted(_accel.FALLBACK_REASONS.items())) or None,
        "no_extensions_env": _accel.NO_EXTENSIONS,
        "python": platform.python_version(),
        "cpu": cpu_model() or platform.processor(),
        "cores": os.cpu_count(),
        "numpy": numpy.__version__,
        "pynacl": nacl.__version__,
        "aiohttp": aiohttp.__version__,
    }


def _run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(orjson.dumps(info, option=orjson.OPT_INDENT_2).decode())
    else:
        for key, value in info.items():
            print(f"{key:18} {value}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show the active verification path and versions")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_run)
