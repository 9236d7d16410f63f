"""The one switch between the compiled modules and their pure-Python references.

Every compiled path (``engine._verify``, ``engine._intake``, built from ``ext/``) has a pure-Python twin that the
tests hold it to byte for byte. Which one runs is decided here and nowhere else, once per module, on first use:

* ``ENGINE_NO_EXTENSIONS=1`` forces the references (to test them, or to rule the compiled code out);
* a compiled module that is missing, fails to import, or disagrees with ``engine.codes.verdicts`` (the numbers
  it was built with) is not used, and the reason is kept in :data:`FALLBACK_REASONS` and logged once as a
  warning, so a silent fallback cannot hide: ``python -m engine info`` prints it and a test fails on it.

Nothing else in the package reads the environment variable or imports the compiled modules directly.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

log = logging.getLogger(__name__)

NO_EXTENSIONS = os.environ.get("ENGINE_NO_EXTENSIONS", "") not in ("", "0")

#: module name -> why its reference runs instead (absent: the compiled module is in use, or not asked for yet)
FALLBACK_REASONS: dict[str, str] = {}
_LOADED: dict[str, ModuleType | None] = {}


def compiled(name: str) -> ModuleType | None:
    """The compiled module ``engine.<name>`` if it may be used, else None (the caller runs its reference).

    Loaded on first use, not at import, so that the compiled modules can import the Python contract they
    implement at module level without an import cycle.
    """
    if name not in _LOADED:
        _LOADED[name] = _load(name)
    return _LOADED[name]


def _load(name: str) -> ModuleType | None:
    if NO_EXTENSIONS:
        FALLBACK_REASONS[name] = "ENGINE_NO_EXTENSIONS is set"
        return None
    if name == "_verify":
        # libgomp reads this when the verifier loads it, so it is set just before that import. Between two batches
        # its idle threads would otherwise spin, burning a core on a 2-core machine for nothing: the server's CPU
        # per scan is the capacity figure, so they sleep. An operator's own setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        module = importlib.import_module(f"engine.{name}")
    except ImportError as exc:
        FALLBACK_REASONS[name] = f"not built or not importable: {exc}"
        log.warning("engine.%s unavailable (%s): using the pure-Python reference", name, exc)
        return None
    problem = _contract_mismatch(module)
    if problem:
        FALLBACK_REASONS[name] = problem
        log.warning("engine.%s does not match engine.codes.verdicts (%s): using the reference", name, problem)
        return None
    return module


def _contract_mismatch(module: ModuleType) -> str | None:
    """Compare the numbers a compiled module was built with against the one list in ``engine.codes.verdicts``."""
    from engine.codes.verdicts import contract_numbers

    built = getattr(module, "CONTRACT", None)
    if built is None:
        return None  # a module that uses no verdict numbers declares none
    for table, numbers in contract_numbers().items():
        if dict(built.get(table, {})) != numbers:
            return f"its {table} numbers were generated from another list (rebuild: pip install -e .)"
    return None


def implementation(name: str) -> str:
    """``"cython"`` or ``"python"``: which twin of ``engine.<name>`` runs (loading it if not done yet)."""
    return "cython" if compiled(name) is not None else "python"
