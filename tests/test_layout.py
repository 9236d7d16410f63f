"""The house by domain: lower rooms never import higher ones, and nothing imports by string.

The rooms, lowest first. A module may import its own room and any lower one; ``engine.testing`` (helpers for
tests, benchmarks and the load test) and ``engine.__main__`` stand above everything. Function-level imports
count too: a lazy import that goes upwards is still a dependency upwards.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parent.parent / "engine"
ROOMS = (
    "base", "codes", "accel", "verify", "store", "ops", "devices", "ingest", "tracing", "deployment", "web", "cli",
    "testing", "main",
)  # fmt: skip
BASE = {"errors", "config", "clock", "durable", "permissions", "threads", "version", "_verify", "_intake", "__init__"}


def room(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "engine":
        raise ValueError(module)
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    if parts[1] == "__main__":
        return "main"
    if parts[1] == "_accel":  # the compiled/pure switch checks builds against engine.codes.verdicts
        return "accel"
    assert parts[1] in ROOMS, f"{module}: not in a room (add it to ROOMS in tests/test_layout.py)"
    return parts[1]


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, m) for line, m in found if m == "engine" or m.startswith("engine.")]


MODULES = sorted(p for p in ENGINE.rglob("*.py") if "static" not in p.parts)


def _name(path: Path) -> str:
    rel = path.relative_to(ENGINE.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


@pytest.mark.parametrize("path", MODULES, ids=[_name(p) for p in MODULES])
def test_no_room_imports_a_higher_one(path: Path) -> None:
    own = ROOMS.index(room(_name(path)))
    upward = [f"line {line}: {m} ({room(m)})" for line, m in imports(path) if ROOMS.index(room(m)) > own]
    assert not upward, f"{_name(path)} ({ROOMS[own]}) imports higher rooms: " + "; ".join(upward)


def test_no_string_imports() -> None:
    """Route and command modules are imported plainly: a missing module is an ImportError, never a silent skip."""
    offenders = [
        _name(p)
        for p in MODULES
        if "importlib.import_module(" in p.read_text(encoding="utf-8") and p.name != "_accel.py"
    ]
    assert not offenders, offenders


def test_flat_modules_are_gone() -> None:
    """Every module lives in a room; only the base modules stay at the top of the package."""
    top = {p.stem for p in ENGINE.glob("*.py")}
    assert top <= BASE | {"__main__", "_accel"}, sorted(top - BASE - {"__main__", "_accel"})
