"""Stays paired once (engine/tracing/stays.py) against the reference rule, on real chdb.

The pairing job's SQL is a second implementation of the rule in engine/tracing/pairing.py; these tests hold
it to the plain per-group reference of tests/test_tracing.py, with scans arriving late and out of order over
several job runs, and with scans past the job's horizon that a trace must pair itself.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from engine.store.store import Store
from engine.tracing.model import MINUTE_MS, Scan, TraceOptions
from engine.tracing.queries import TraceQueries
from engine.tracing.stays import StaysJob, read_horizon
from tests.test_tracing import HOUR, T0, columns, kh, reference_pairing, scan

pytestmark = pytest.mark.system


def _world(seed: int, n: int) -> list[dict[str, object]]:
    rnd = random.Random(seed)
    return [
        scan(
            f"p{rnd.randrange(6)}",
            f"v{rnd.randrange(3)}",
            rnd.choice(("in", "in", "out")),
            rnd.randrange(0, 3000, 5),  # coarse minutes, so equal timestamps happen
            rnd.choice(("ok",) * 8 + ("unsigned_code", "id_card", "malformed")),
        )
        for _ in range(n)
    ]


def _reference(scans: list[dict[str, object]], windows: list[tuple[str, int, int]], trusted_only: bool) -> list:
    cols = columns(scans)
    as_scans = [
        Scan(str(cols["scan_id"][i]), kh(str(x["person"])), f"QR-{x['person']}", str(x["venue"]), str(x["direction"]),
             int(x["at"]), str(x["verdict"]), cols["device_id"][i])  # type: ignore[call-overload]
        for i, x in enumerate(scans)
        if x["verdict"] != "malformed" and (x["verdict"] == "ok" or not trusted_only)
    ]  # fmt: skip
    stays = reference_pairing(as_scans, dwell_min=60, max_stay_min=720)
    return sorted(
        (st for st in stays if any(st.venue_id == v and st.end_ms >= a and st.start_ms <= b for v, a, b in windows)),
        key=repr,
    )


@pytest.fixture
def store(tmp_path: Path):
    s = Store.connect(f"chdb://{(tmp_path / 'store').resolve()}", database="vnqr", retention_days=28)
    s.migrate()
    yield s
    s.close()


WINDOWS = [
    ("v0", T0 + 500 * MINUTE_MS, T0 + 2000 * MINUTE_MS),
    ("v2", T0 + 500 * MINUTE_MS, T0 + 500 * MINUTE_MS + HOUR),
]
WINDOWS += [("v1", T0 + (500 + k * 700) * MINUTE_MS, T0 + (560 + k * 700) * MINUTE_MS) for k in range(3)]


@pytest.mark.parametrize("seed", range(3))
def test_job_pairs_late_and_out_of_order_scans_as_the_reference(store: Store, seed: int) -> None:
    """Scans arrive in shuffled batches (late entries, exits before their entries, retried duplicates); after
    each job run the stays read from the table equal the reference over everything stored so far."""
    scans = _world(seed, 360)
    rnd = random.Random(seed)
    order = scans[:]
    rnd.shuffle(order)
    order += order[:30]  # a retried upload: the same scan ids again
    job = StaysJob(store)
    assert job.horizon() is None
    stored: list[dict[str, object]] = []
    for batch in (order[:150], order[150:260], order[260:]):
        store.insert_scans(columns(batch))
        stored += batch
        horizon = job.run()
        assert horizon == job.horizon()
        for trusted_only in (True, False):
            opt = TraceOptions(include_unverified=not trusted_only)
            q = TraceQueries(store.query)
            # nothing is past the horizon: every stay comes from the stays table
            assert q.paired_from_scans(WINDOWS, opt, fresh_since=horizon) == ([], set())
            got = sorted(q.stays_at(WINDOWS, opt), key=repr)
            assert got == _reference(stored, WINDOWS, trusted_only)
            assert len(got) > 10
    # a second run with nothing new changes nothing
    assert job.step().mode == "idle"


def test_scans_past_the_horizon_are_paired_by_the_trace(store: Store) -> None:
    """Until the job runs again, a trace pairs the groups with new scans itself: a late exit closes alice's stay."""
    store.insert_scans(columns([scan("alice", "cafe", "in", 0), scan("bob", "cafe", "in", 10),
                                scan("bob", "cafe", "out", 50)]))  # fmt: skip
    job = StaysJob(store)
    horizon = job.run()
    q = TraceQueries(store.query)
    window = [("cafe", T0, T0 + HOUR)]
    before = {st.person_key: (st.end_ms - T0) // MINUTE_MS for st in q.stays_at(window, TraceOptions())}
    assert before == {kh("alice"): 60, kh("bob"): 50}  # alice's exit inferred after the default dwell
    store.insert_scans(columns([scan("alice", "cafe", "out", 20)]))  # uploaded late by an offline scanner
    _, groups = q.paired_from_scans(window, TraceOptions(), fresh_since=horizon)
    assert groups == {(kh("alice"), "cafe")}
    after = {st.person_key: (st.end_ms - T0) // MINUTE_MS for st in q.stays_at(window, TraceOptions())}
    assert after == {kh("alice"): 20, kh("bob"): 50}
    job.run()
    assert read_horizon(store.query, job.params) == horizon + 1
    assert {st.person_key: (st.end_ms - T0) // MINUTE_MS for st in q.stays_at(window, TraceOptions())} == after
    # the exit that now closes a stay no longer stands alone: its row is a tombstone
    assert store.query("SELECT count() FROM stays FINAL WHERE t_kind = 'exit_without_entry'") == [(0,)]


def test_other_pairing_parameters_pair_from_scans(store: Store) -> None:
    store.insert_scans(columns([scan("alice", "cafe", "in", 0), scan("bob", "cafe", "in", 30)]))
    StaysJob(store).run()
    short = TraceOptions(default_dwell_min=20, max_stay_min=120)
    stays = TraceQueries(store.query).stays_at([("cafe", T0, T0 + HOUR)], short)
    assert [(st.person_key, (st.end_ms - st.start_ms) // MINUTE_MS) for st in stays] == [
        (kh("alice"), 20),
        (kh("bob"), 20),
    ]


def test_second_degree_is_bounded_and_says_what_was_cut(store: Store) -> None:
    """bob met alice; then hank (30 min), ivy (5 min) and joe (20 min) met bob. A 15-minute threshold drops ivy,
    a cap of 1 drops joe, and the answer counts both."""
    store.insert_scans(columns([
        scan("alice", "cafe", "in", 0), scan("alice", "cafe", "out", 60),
        scan("bob", "cafe", "in", 10), scan("bob", "cafe", "out", 50),
        scan("bob", "pool", "in", 600), scan("bob", "pool", "out", 660),
        scan("hank", "pool", "in", 610), scan("hank", "pool", "out", 640),
        scan("ivy", "pool", "in", 655), scan("ivy", "pool", "out", 700),
        scan("joe", "pool", "in", 580), scan("joe", "pool", "out", 620),
    ]))  # fmt: skip
    StaysJob(store).run()
    for q in (TraceQueries(store.query), TraceQueries(store.query, use_stays=False)):
        opt = TraceOptions(second_degree=True, second_degree_cap=1)
        trace = q.person(person_key=kh("alice"), options=opt)
        assert [(c.person_key, c.total_overlap_min) for c in trace.contacts if c.degree == 2] == [(kh("hank"), 30.0)]
        cut = trace.second_degree_cut
        assert cut is not None
        assert (cut.expanded, cut.candidates, cut.below_threshold, cut.over_cap) == (1, 3, 1, 1)
        everyone = TraceOptions(second_degree=True, second_degree_min_overlap_min=0, second_degree_cap=100)
        wide = q.person(person_key=kh("alice"), options=everyone)
        assert [c.person_key for c in wide.contacts if c.degree == 2] == [kh("hank"), kh("joe"), kh("ivy")]


def test_a_scan_id_another_device_sent_first_hides_no_stay_in_the_job_or_a_trace(store: Store) -> None:
    """An intruder device sends bob's code under the scan id bob's genuine entry will carry, three hours earlier
    at the same venue (a scan is (device, scan id), issue 12). The pairing job keeps both scans, so the stays
    read from its table hold bob's genuine stay with alice, with its devices and scan ids, exactly as the trace
    that pairs from scans. Before, the job kept one row per scan id (the earlier replay's), so bob's stay began
    at the replay."""
    genuine = columns([scan("alice", "cafe", "in", 0), scan("alice", "cafe", "out", 60),
                       scan("bob", "cafe", "in", 10), scan("bob", "cafe", "out", 50)])  # fmt: skip
    claim = columns([scan("bob", "cafe", "in", -180)])
    claim["scan_id"], claim["device_id"] = [genuine["scan_id"][2]], ["intruder"]
    store.insert_scans(claim)
    store.insert_scans(genuine)
    StaysJob(store).run()
    window = [("cafe", T0, T0 + HOUR)]
    for q in (TraceQueries(store.query), TraceQueries(store.query, use_stays=False)):
        stays = {st.person_key: st for st in q.stays_at(window, TraceOptions())}
        bob = stays[kh("bob")]
        assert ((bob.start_ms - T0) // MINUTE_MS, (bob.end_ms - T0) // MINUTE_MS) == (10, 50)
        assert bob.scan_ids == (str(genuine["scan_id"][2]), str(genuine["scan_id"][3]))
        assert bob.device_ids == ("dev-cafe", "dev-cafe")
        (contact,) = q.person(person_key=kh("alice")).contacts
        assert [(e.contact_start_ms - T0) // MINUTE_MS for e in contact.encounters] == [10]
