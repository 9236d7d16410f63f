"""The compiled verifier must be the one in use: a silent fallback to the reference path fails CI.

The reference is complete, so a broken build would otherwise go unnoticed apart from a 20x slower engine.
Set ``ENGINE_NO_EXTENSIONS=1`` to run the suite on the pure-Python path on purpose; these tests then skip.
"""

from __future__ import annotations

import os

import pytest

NO_EXTENSIONS = os.environ.get("ENGINE_NO_EXTENSIONS", "") not in ("", "0")
pytestmark = pytest.mark.skipif(NO_EXTENSIONS, reason="ENGINE_NO_EXTENSIONS=1: the pure-Python path was requested")


def test_extension_importable() -> None:
    from engine import _verify

    assert callable(_verify.ed25519_verify)
    assert _verify.CVerifier.implementation == "cython"


def test_selected_implementation_is_compiled() -> None:
    from engine import _accel, verify
    from engine._verify import CVerifier

    assert verify.verifier_class() is CVerifier
    assert verify.implementation() == "cython"
    assert "_verify" not in _accel.FALLBACK_REASONS, _accel.FALLBACK_REASONS


def test_make_verifier_builds_the_compiled_one(trust_list, person_secret: bytes) -> None:  # type: ignore[no-untyped-def]
    from engine._verify import CVerifier
    from engine.verify import make_verifier

    verifier = make_verifier(trust_list.table(), person_secret, threads=2)
    assert isinstance(verifier, CVerifier)
    assert verifier.threads == 2


def test_intake_check_is_compiled() -> None:
    from engine._intake import render_answer, take_items
    from engine.ingest import intake

    assert intake.TAKE_ITEMS_IMPLEMENTATION == "cython"
    assert intake.take_items is take_items
    assert intake.render_answer is render_answer


def test_compiled_numbers_are_the_one_list() -> None:
    """The compiled verifier was generated from engine/codes/verdicts.py (setup.py writes ext/_verdicts.pxi)."""
    from engine import _verify
    from engine.codes.verdicts import contract_numbers

    assert contract_numbers() == _verify.CONTRACT


def test_a_mismatched_build_falls_back_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """A module built from another list of numbers is refused with a reason, never used to mislabel scans."""
    import types

    from engine import _accel

    stale = types.ModuleType("engine._stale")
    stale.CONTRACT = {"verdict": {"OK": 0}, "reason": {}, "kind": {}}  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "engine._stale", stale)
    monkeypatch.setattr(_accel, "_LOADED", {})
    monkeypatch.setattr(_accel, "FALLBACK_REASONS", {})
    assert _accel.compiled("_stale") is None
    assert "verdict numbers" in _accel.FALLBACK_REASONS["_stale"]
    assert _accel.implementation("_stale") == "python"


_FULL_SET_SCRIPT = """
import os, sys
import numpy as np
from engine._verify import CVerifier
from engine.codes.trust import TrustList
from engine.verify.contract import row_mac, set_key

secret = b"s" * 32
size = int(sys.argv[1])
verifier = CVerifier(TrustList.build([]).table(), secret, cache_size=size)
key = set_key(secret)
n = 40 * size
tags = os.urandom(16 * n)
kids = b"k" * 8 * n
exps = np.full(n, 2_000_000_000, np.int64)
macs = b"".join(row_mac(key, tags[16 * i : 16 * i + 16], kids[8 * i : 8 * i + 8], 2_000_000_000) for i in range(n))
for start in range(0, n, size):  # one load per chunk: a set that is full by the second chunk
    sl = slice(start, start + size)
    verifier.load_set(tags[16 * sl.start : 16 * sl.stop], kids[8 * sl.start : 8 * sl.stop], exps[sl],
                      macs[16 * sl.start : 16 * sl.stop], 1_700_000_000)
print(verifier.set_size, verifier.set_evictions)
"""


@pytest.mark.parametrize("size", [6, 100, 1000])
def test_a_full_verified_code_set_stays_bounded_and_terminates(size: int) -> None:
    """Forty times more entries than the set holds: it must keep at most its size, count what it left out, and
    every insert must end. Before the fix an insert into a full set whose home slot was empty wrote there
    without counting it, so the table filled up and the next probe never ended (run in a child process with a
    timeout so that shows as a failure, not a hung suite)."""
    import subprocess
    import sys

    try:
        done = subprocess.run(
            [sys.executable, "-c", _FULL_SET_SCRIPT, str(size)], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("an insert into the full verified-code set never ended") from None
    assert done.returncode == 0, done.stderr[-2000:]
    set_size, evictions = map(int, done.stdout.split())
    assert set_size == size  # full, and never more than it
    assert evictions == 40 * size - size  # every entry past the size either evicted one or was left out
