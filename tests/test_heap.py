"""The collector's policy while an engine serves (engine.ops.heap): applied on start, undone on stop, measured."""

from __future__ import annotations

import gc

import pytest
from prometheus_client import CollectorRegistry, Histogram

from engine.ops.heap import MIDDLE_EVERY, OLDEST_EVERY, HeapPolicy


def _pauses() -> Histogram:
    return Histogram("pause", "pause", ["generation"], registry=CollectorRegistry())


def _observed(h: Histogram, generation: str) -> float:
    """How many pauses of ``generation`` the histogram holds."""
    return sum(
        s.value
        for m in h.collect()
        for s in m.samples
        if s.name.endswith("_count") and s.labels == {"generation": generation}
    )


def test_the_policy_raises_the_thresholds_freezes_what_start_up_left_and_undoes_both() -> None:
    before = gc.get_threshold()
    pauses = _pauses()
    policy = HeapPolicy(50_000, pauses)
    policy.start()
    try:
        assert gc.get_threshold() == (50_000, MIDDLE_EVERY, OLDEST_EVERY)
        assert gc.get_freeze_count() > 0  # start-up's objects are out of every collection's walk
        gc.collect()
        assert _observed(pauses, "2") >= 1  # every collection's pause is measured, by generation
    finally:
        policy.stop()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    n = _observed(pauses, "2")
    gc.collect()
    assert _observed(pauses, "2") == n  # the callback is gone with the engine


def test_the_default_keeps_cpythons_thresholds_freezes_and_measures() -> None:
    before = gc.get_threshold()
    pauses = _pauses()
    policy = HeapPolicy(0, pauses)
    policy.start()
    try:
        assert gc.get_threshold() == before and gc.get_freeze_count() > 0
        gc.collect()
        assert _observed(pauses, "2") >= 1
    finally:
        policy.stop()
    assert gc.get_freeze_count() == 0


def test_freeze_off_leaves_the_heap_as_it_is() -> None:
    policy = HeapPolicy(0, None, freeze=False)
    policy.start()
    try:
        assert gc.get_freeze_count() == 0
    finally:
        policy.stop()


def test_a_negative_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="gc_young"):
        HeapPolicy(-1)
