"""Packaging promises: floors that match what the code needs, extras by purpose, and a constraints file that pins
every dependency the project pulls in (so ``scripts/install.sh`` gives a fresh machine the tested versions)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_floors_match_what_the_default_store_needs() -> None:
    deps = {d.split(">=")[0]: d for d in _project()["dependencies"]}
    assert deps["clickhouse-connect"] == "clickhouse-connect>=1.6"  # first release serving chdb:// DSNs
    chdb_floor = deps["chdb"].split(">=")[1].split(",")[0]
    assert tuple(map(int, chdb_floor.split("."))) >= (4, 1, 7)  # what clickhouse-connect's own chdb extra requires


def test_extras_are_split_by_purpose_and_dev_is_all_of_them() -> None:
    extras = _project()["optional-dependencies"]
    assert {"test", "bench", "loadtest", "dev"} <= set(extras)
    assert "vnqr-engine[test,bench,loadtest]" in extras["dev"]
    assert any(d.startswith("locust") for d in extras["loadtest"]) and any(
        d.startswith("pytest") for d in extras["test"]
    )
    assert _project()["classifiers"]
    assert "urls" not in _project(), "[project.urls] must name the project's real public home, not an invented one"


def test_constraints_pin_the_whole_installed_dependency_closure() -> None:
    """Fails when a dependency was added (or upgraded) without regenerating constraints.txt."""
    pinned = {
        line.split("==")[0]: line.split("==")[1]
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    fresh = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "constraints.py")], capture_output=True, text=True, check=True
    ).stdout
    closure = {line.split("==")[0]: line.split("==")[1] for line in fresh.splitlines() if "==" in line}
    missing = sorted(set(closure) - set(pinned))
    assert not missing, f"not in constraints.txt (run scripts/constraints.py > constraints.txt): {missing}"
    for name in ("clickhouse-connect", "chdb", "aiohttp", "numpy", "pynacl"):
        assert name in pinned
    assert "-c constraints.txt" in (ROOT / "scripts" / "install.sh").read_text()
