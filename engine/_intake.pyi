"""Type stub for the compiled item check (sources: ext/_intake.pyx); same contract as engine.intake.take_items_py."""

from typing import Any

def take_items(scans: list[Any], oldest_ms: int, newest_ms: int) -> tuple[Any, ...]: ...
