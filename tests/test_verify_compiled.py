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
    from engine import verify
    from engine._verify import CVerifier

    assert verify.EXTENSION_ERROR is None, verify.EXTENSION_ERROR
    assert verify.IMPLEMENTATION == "cython"
    assert verify.VerifierImpl is CVerifier


def test_make_verifier_builds_the_compiled_one(trust_list, person_secret: bytes) -> None:  # type: ignore[no-untyped-def]
    from engine._verify import CVerifier
    from engine.verify import make_verifier

    verifier = make_verifier(trust_list.table(), person_secret, threads=2)
    assert isinstance(verifier, CVerifier)
    assert verifier.threads == 2


def test_intake_check_is_compiled() -> None:
    from engine import intake
    from engine._intake import render_answer, take_items

    assert intake.TAKE_ITEMS_IMPLEMENTATION == "cython"
    assert intake.take_items is take_items
    assert intake.render_answer is render_answer
