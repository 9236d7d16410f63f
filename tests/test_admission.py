"""Per-device admission (engine.ingest.admission): budgets in scans and verify cost, queue shares, quarantine.

Unit tests with an injected clock; tests/test_isolation.py attacks the same rules through a real engine.
"""

from __future__ import annotations

import pytest

from engine.errors import OverloadedError, RateLimitedError
from engine.ingest.admission import Admission, Budgets
from engine.ops.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admission(clock: Clock, **kw: float) -> Admission:
    budgets = {"scan_rate": 100.0, "scan_burst": 1000.0, "cold_rate": 10.0, "cold_burst": 100.0}
    budgets |= {"queue_scans": 10_000, "queue_share": 0.1, "max_request_scans": 500}
    budgets |= {"quarantine_min_scans": 100, "quarantine_s": 60.0, "quarantine_factor": 10.0}
    return Admission(Budgets(**{**budgets, **kw}), Metrics(), clock=clock)  # type: ignore[arg-type]


def test_scan_budget_refuses_the_whole_request_then_refills() -> None:
    """The request bucket counted requests while a request holds up to 1,000 scans (issue 13): now scans count."""
    clock = Clock()
    a = admission(clock)
    a.charge("dev-a", 600)
    with pytest.raises(RateLimitedError, match="scans/s") as info:
        a.charge("dev-a", 500)  # 400 left: the whole request is refused, nothing of it spent
    assert info.value.retry_after == pytest.approx(1.0)
    a.charge("dev-a", 400)
    a.charge("dev-b", 1000)  # every device has its own
    clock.now += 5
    a.charge("dev-a", 500)
    a.refund("dev-a", 500)  # refused later as a whole (queue full): given back
    a.charge("dev-a", 500)


def test_a_device_refused_for_n_scans_is_refused_from_its_headers_until_it_holds_n() -> None:
    """Otherwise a device sending 1,000-scan requests at 1,000 scans/s has nearly every one read, verified and
    parsed (its bucket holds a token) only to be refused after: the event loop pays for its flood."""
    clock = Clock()
    a = admission(clock)
    a.charge("dev-a", 1000)
    clock.now += 1  # 100 scans back
    a.precheck("dev-a")  # one token is enough for a request of unknown size ...
    with pytest.raises(RateLimitedError):
        a.charge("dev-a", 500)
    with pytest.raises(RateLimitedError) as info:  # ... until it was refused for 500: then 500 are needed
        a.precheck("dev-a")
    assert info.value.retry_after == pytest.approx(4.0)
    clock.now += 4
    a.precheck("dev-a")
    a.charge("dev-a", 20)  # a smaller request passes and forgets the refused size
    a.precheck("dev-a")


def test_cold_verifies_are_debited_after_the_batch_and_block_until_paid_back() -> None:
    """A verify's cost is known only after it ran: cache hits cost nothing, cold verifies put the device in debt."""
    clock = Clock()
    a = admission(clock)
    a.judged("dev-a", 1000, bad=0, cold=0)  # all cache hits: free
    a.charge("dev-a", 10)
    a.judged("dev-a", 150, bad=0, cold=150)  # 50 over the burst of 100
    with pytest.raises(RateLimitedError, match="signature verifies/s") as info:
        a.precheck("dev-a")  # refused before its next body is read
    assert info.value.retry_after == pytest.approx(5.0)
    a.precheck("dev-b")
    clock.now += 5.1
    a.precheck("dev-a")


def test_one_device_holds_at_most_its_share_and_under_pressure_the_biggest_holders_go_first() -> None:
    clock = Clock()
    a = admission(clock)
    a.enqueue("flooder", 1000)  # its share: 10 % of 10,000
    with pytest.raises(RateLimitedError, match="share of the ingest queue"):
        a.enqueue("flooder", 1)
    for i in range(4):
        a.enqueue(f"other-{i}", 900)
    a.enqueue("other-4", 500)  # past PRESSURE x 10,000 = 5,000 now, but it held nothing: admitted
    # under pressure a device already holding more than an equal share (5,000 / 6) is refused (503) ...
    with pytest.raises(OverloadedError, match="fair share"):
        a.enqueue("other-0", 10)
    a.enqueue("honest", 10)  # ... one holding nothing still gets in
    a.settled("flooder", 1000)
    a.enqueue("flooder", 500)
    assert a.queued_by("flooder") == 500 and a.queued_by("honest") == 10


def test_a_device_sending_mostly_bad_signatures_is_quarantined_until_it_behaves_or_is_cleared() -> None:
    clock = Clock()
    a = admission(clock)
    a.judged("forger", 50, bad=50, cold=0)
    assert a.quarantined() == []  # too few scans to judge
    a.judged("honest", 500, bad=20, cold=0)
    a.judged("forger", 100, bad=95, cold=0)
    (held,) = a.quarantined()
    assert held.device_id == "forger" and held.bad_share > 0.9
    with pytest.raises(RateLimitedError, match="quarantined"):
        a.charge("forger", 200)  # 1,000 / 10: at most 100 scans a request now
    a.charge("forger", 50)
    clock.now += 30
    a.judged("forger", 10, bad=10, cold=0)  # still forging: the 60 s start again
    clock.now += 59
    assert [q.device_id for q in a.quarantined()] == ["forger"]
    clock.now += 2  # 60 s without a bad majority: released by itself
    assert a.quarantined() == []
    a.judged("forger", 200, bad=200, cold=0)
    assert [q.device_id for q in a.quarantined()] == ["forger"]
    assert a.clear("forger") is True and a.clear("forger") is False
    a.charge("forger", 1000)  # the operator's clear gives the whole budget back
