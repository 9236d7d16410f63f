"""The README's command examples are true: every fenced ``bash`` block that is safe to run is run, in order, in a
scratch directory, as a user would paste it (bash, ``set -euo pipefail``, so any failing line fails the block).

What is not run, and why: blocks that install software or run the suite (``scripts/install.sh``, ``pytest``), start
the long-running server (``serve``: the test starts its own, below) or run benchmarks and load tests. Before the
first block that needs an engine (device, tracing and operator commands), a real ``python -m engine serve``
is started on a free port with the scratch directory's ``./data`` (the default), so the commands find it the way
an operator's do: from the data directory alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.testing.engines import EngineProcess

pytestmark = pytest.mark.system

README = Path(__file__).resolve().parent.parent / "README.md"
NOT_RUN = re.compile(r"scripts/install\.sh|\bpytest\b|engine serve|bench/|loadtest/|\bcurl\b")
NEEDS_ENGINE = re.compile(r"engine (device-|trace |tracer-add|scans |stats|wal|trust-reload)")


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S)


def test_the_readme_has_runnable_examples() -> None:
    blocks = [b for b in bash_blocks(README.read_text()) if not NOT_RUN.search(b)]
    joined = "\n".join(blocks)
    for needed in ("keys create", "mint", "verify", "codes revoke", "info", "device-register", "tracer-add",
                   "trace person", "scans list"):  # fmt: skip
        assert needed in joined, f"the README no longer shows {needed!r} in a runnable block"


def test_every_safe_readme_command_runs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # python3 is this interpreter
    env["PYTHONPATH"] = os.pathsep.join([str(README.parent), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    engine: EngineProcess | None = None
    try:
        for i, block in enumerate(bash_blocks(README.read_text())):
            if NOT_RUN.search(block):
                continue
            if engine is None and NEEDS_ENGINE.search(block):
                (tmp_path / "data").mkdir(exist_ok=True)
                engine = EngineProcess(tmp_path / "data").start()
            done = subprocess.run(
                ["bash", "-c", "set -euo pipefail\n" + block],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert done.returncode == 0, (
                f"README block {i + 1} failed:\n{block}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
            )
            assert "Traceback" not in done.stderr, done.stderr
        assert engine is not None, "no README block needed an engine: the operator examples are gone"
    finally:
        if engine is not None:
            assert engine.terminate() == 0
