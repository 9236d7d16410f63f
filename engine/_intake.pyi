"""Type stub for the compiled item check (sources: ext/_intake.pyx); same contract as intake.take_items_py."""

from typing import Any

import numpy as np

def take_items(scans: list[Any], oldest_ms: int, newest_ms: int) -> tuple[Any, ...]: ...
def render_answer(
    count: int,
    index: np.ndarray,
    scan_texts: list[str],
    rejected: list[tuple[int, str]],
    stored: np.ndarray,
    verdict: np.ndarray,
    reason: np.ndarray,
) -> bytes: ...
