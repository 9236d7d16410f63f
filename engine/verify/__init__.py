"""Batch verification of scanned codes: the contract, the pure-Python reference, and the compiled twin.

* :mod:`engine.verify.contract`: the batch types and the ``Verifier`` protocol both implementations obey.
* :mod:`engine.verify.reference`: ``PyVerifier``, one PyNaCl call per code, the definition of correct.
* ``engine._verify.CVerifier`` (``ext/_verify.pyx``): parses the packed batch without Python objects, verifies
  cache misses across threads with the GIL released, and calls libsodium directly.

:func:`make_verifier` builds whichever ``engine._accel`` (the one switch) selects; ``python -m engine info``
reports the choice and, if the reference runs, why.
"""

from __future__ import annotations

from engine import _accel
from engine.codes.trust import TrustTable
from engine.verify.contract import Verifier
from engine.verify.reference import PyVerifier


def verifier_class() -> type:
    """The implementation in use: ``CVerifier`` unless unavailable or disabled (then ``PyVerifier``)."""
    module = _accel.compiled("_verify")
    return PyVerifier if module is None else module.CVerifier


def implementation() -> str:
    """``"cython"`` or ``"python"``: the verifier :func:`make_verifier` builds."""
    return _accel.implementation("_verify")


def make_verifier(
    trust: TrustTable, person_secret: bytes, *, cache_size: int = 65536, threads: int = 1, skew: int = 300
) -> Verifier:
    """Build the active implementation (compiled unless unavailable or disabled)."""
    verifier: Verifier = verifier_class()(trust, person_secret, cache_size=cache_size, threads=threads, skew=skew)
    return verifier
