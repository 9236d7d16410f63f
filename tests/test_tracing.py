"""Contact tracing on a real embedded store: pairing, overlaps, ranking, trust, output, auth, CLI paths.

Rows go in with ``Store.insert_scans`` exactly as the drain writes them; the HTTP and CLI-through-engine
tests run a real engine subprocess over the same data directory.
"""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.__main__ import main
from engine.store.store import Store
from engine.testing.engines import EngineProcess, admin_headers
from engine.tracing.credentials import TracerRegistry
from engine.tracing.model import MINUTE_MS, Scan, Stay, TraceOptions
from engine.tracing.pairing import pair_stays
from engine.tracing.queries import TraceQueries
from engine.tracing.render import from_json, render

HOUR = 60 * MINUTE_MS
# a fixed morning two days ago, so the default "last 14 days" window holds every row
T0 = (int(time.time() * 1000) // 86_400_000 - 2) * 86_400_000 + 8 * HOUR


def key(name: str) -> bytes:
    return uuid.uuid5(uuid.NAMESPACE_DNS, name).bytes


def kh(name: str) -> str:
    return key(name).hex().upper()


def scan(person: str, venue: str, direction: str, minute: float, verdict: str = "ok") -> dict[str, Any]:
    kind = {"ok": "signed", "unsigned_code": "unsigned", "id_card": "id_card"}.get(verdict, "signed")
    return {
        "person": person,
        "venue": venue,
        "direction": direction,
        "at": T0 + round(minute * MINUTE_MS),
        "verdict": verdict,
        "kind": kind,
    }


def columns(scans: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(scans)
    at = np.array([s["at"] for s in scans], dtype="datetime64[ms]")
    return {
        "scan_id": [uuid.uuid5(uuid.NAMESPACE_URL, repr(sorted(s.items()))) for s in scans],
        "device_id": [f"dev-{s['venue']}" for s in scans],
        "venue_id": [s["venue"] for s in scans],
        "direction": [s["direction"] for s in scans],
        "scanned_at": at,
        "received_at": at,
        "verdict": [s["verdict"] for s in scans],
        "reason": ["none"] * n,
        "code_kind": [s["kind"] for s in scans],
        "person_key": [key(s["person"]) for s in scans],
        "qr_id": [f"QR-{s['person']}" for s in scans],
        "key_id": [""] * n,
        "issuer": [""] * n,
        "code_iat": np.zeros(n, dtype="datetime64[s]"),
        "code_exp": np.zeros(n, dtype="datetime64[s]"),
    }


# The index case "alice": a paired stay at cafe (0-60), an entry at gym with no exit (120 -> +60 inferred),
# and an exit from the library with no entry (300, so 240-300). Around her:
WORLD = [
    scan("alice", "cafe", "in", 0),
    scan("alice", "cafe", "out", 60),
    scan("alice", "gym", "in", 120),
    scan("alice", "library", "out", 300),
    scan("bob", "cafe", "in", 10),  # 10-50 at the cafe: 40 min together
    scan("bob", "cafe", "out", 50),
    scan("bob", "gym", "in", 150),  # and 150-200 at the gym: 30 more (alice's inferred 120-180)
    scan("bob", "gym", "out", 200),
    scan("carol", "cafe", "in", 40),  # 40-100: 20 min overlap
    scan("carol", "cafe", "out", 100),
    scan("dave", "cafe", "in", 70),  # arrives 10 min after alice left: within the 15 min margin, 0 overlap
    scan("dave", "cafe", "out", 90),
    scan("erin", "cafe", "in", 80),  # 20 min after: outside the margin
    scan("erin", "cafe", "out", 95),
    scan("frank", "bakery", "in", 0),  # same time, other venue
    scan("frank", "bakery", "out", 60),
    scan("gina", "cafe", "in", 20, "unsigned_code"),  # unverified code, 20-50
    scan("gina", "cafe", "out", 50, "unsigned_code"),
    scan("alice", "market", "in", 400, "id_card"),  # the index case herself on an ID card
    scan("alice", "market", "out", 420, "id_card"),
    scan("bob", "pool", "in", 600),  # bob later meets hank: second degree
    scan("bob", "pool", "out", 660),
    scan("hank", "pool", "in", 610),
    scan("hank", "pool", "out", 640),
]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir(mode=0o700)
    store = Store.connect(f"chdb://{(d / 'store').resolve()}", database="vnqr", retention_days=28)
    try:
        store.migrate()
        store.insert_scans(columns(WORLD))
        # a retried upload: the same scan ids stored twice until a merge collapses them
        store.insert_scans(columns(WORLD[:2]))
    finally:
        store.close()
    return d


@pytest.fixture
def store(data_dir: Path) -> Iterator[Store]:
    s = Store.connect(f"chdb://{(data_dir / 'store').resolve()}", database="vnqr", retention_days=28)
    yield s
    s.close()


def _stays(trace_visits: Any) -> list[tuple[str, int, int, tuple[str, ...]]]:
    return [(s.venue_id, (s.start_ms - T0) // MINUTE_MS, (s.end_ms - T0) // MINUTE_MS, s.flags) for s in trace_visits]


# -- pairing without a store ----------------------------------------------------------------------------
def test_pairing_rules() -> None:
    def s(i: int, direction: str, minute: int, venue: str = "v") -> Scan:
        return Scan(f"id{i}", "P", "Q", venue, direction, minute * MINUTE_MS, "ok")

    scans = [
        s(1, "in", 0),
        s(2, "out", 30),
        s(2, "out", 30),  # a duplicate row counts once
        s(3, "in", 100),
        s(4, "in", 130),  # re-entry without exit: the first stay ends here, not after the full dwell
        s(5, "out", 500),  # 370 min after the entry: longer than max_stay, so not a pair
        s(6, "out", 1000),
    ]
    stays = pair_stays(scans, default_dwell_min=60, max_stay_min=240)
    got = [((st.start_ms // MINUTE_MS), (st.end_ms // MINUTE_MS), st.flags) for st in stays]
    assert got == [
        (0, 30, ()),
        (100, 130, ("inferred_exit",)),
        (130, 190, ("inferred_exit",)),
        (440, 500, ("exit_without_entry",)),
        (940, 1000, ("exit_without_entry",)),
    ]


# -- queries on the store ---------------------------------------------------------------------------------
def test_visits_pair_entries_and_exits(store: Store) -> None:
    trace = TraceQueries(store.query).person(qr_id="QR-alice")
    assert trace.person_keys == [kh("alice")]
    assert _stays(trace.visits) == [
        ("cafe", 0, 60, ()),
        ("gym", 120, 180, ("inferred_exit",)),
        ("library", 240, 300, ("exit_without_entry",)),
    ]
    by_key = TraceQueries(store.query).person(person_key=kh("alice").lower())
    assert _stays(by_key.visits) == _stays(trace.visits)


def test_qr_id_lookup_finds_a_past_period_after_later_scans(store: Store) -> None:
    """person_by_qr keeps only each person's latest scan: tracing an earlier period by QR id must still work."""
    store.insert_scans(columns([scan("alice", "cafe", "in", 5000), scan("alice", "cafe", "out", 5030)]))
    store.command("OPTIMIZE TABLE person_by_qr FINAL")
    # one verified pair (her id-card scans, which the helper gives her QR id too, are a separate claim)
    assert store.query("SELECT count() FROM person_by_qr WHERE qr_id = 'QR-alice' AND verified = 1") == [(1,)]
    early = TraceQueries(store.query).person(qr_id="QR-alice", from_ms=T0 - MINUTE_MS, to_ms=T0 + 400 * MINUTE_MS)
    assert [v.venue_id for v in early.visits] == ["cafe", "gym", "library"]


def test_exposures_overlap_margin_and_rank(store: Store) -> None:
    trace = TraceQueries(store.query).person(person_key=kh("alice"))
    ranked = [(c.person_key, c.total_overlap_min) for c in trace.contacts]
    assert ranked == [(kh("bob"), 70.0), (kh("carol"), 20.0), (kh("dave"), 0.0)]
    bob = trace.contacts[0]
    assert [(e.venue_id, e.overlap_min) for e in bob.encounters] == [("cafe", 40.0), ("gym", 30.0)]
    assert "inferred_exit" in bob.encounters[1].flags  # rests on alice's inferred exit from the gym
    # no margin: dave (arrived after she left) is no longer a contact
    strict = TraceQueries(store.query).person(person_key=kh("alice"), options=TraceOptions(margin_min=0))
    assert kh("dave") not in {c.person_key for c in strict.contacts}
    # a period that ends before the gym visit only sees the cafe
    early = TraceQueries(store.query).person(person_key=kh("alice"), from_ms=T0 - HOUR, to_ms=T0 + 90 * MINUTE_MS)
    assert _stays(early.visits) == [("cafe", 0, 60, ())]


def test_trusted_only_by_default_unverified_on_request(store: Store) -> None:
    q = TraceQueries(store.query)
    default = q.person(person_key=kh("alice"))
    assert kh("gina") not in {c.person_key for c in default.contacts}
    assert "market" not in {v.venue_id for v in default.visits}
    wide = q.person(person_key=kh("alice"), options=TraceOptions(include_unverified=True))
    gina = next(c for c in wide.contacts if c.person_key == kh("gina"))
    assert gina.total_overlap_min == 30.0 and not gina.trusted
    assert gina.encounters[0].verdict == "unsigned_code"
    market = next(v for v in wide.visits if v.venue_id == "market")
    assert market.verdict == "id_card" and not market.trusted
    assert all(c.trusted for c in wide.contacts if c.person_key != kh("gina"))


def test_second_degree_contacts(store: Store) -> None:
    trace = TraceQueries(store.query).person(person_key=kh("alice"), options=TraceOptions(second_degree=True))
    second = [c for c in trace.contacts if c.degree == 2]
    # hank met bob at the pool; erin met carol (15 min) and dave (10 min) after they had met alice
    assert [(c.person_key, c.via, c.total_overlap_min) for c in second] == [
        (kh("hank"), [kh("bob")], 30.0),
        (kh("erin"), [kh("carol"), kh("dave")], 25.0),
    ]
    none = TraceQueries(store.query).person(person_key=kh("alice"))
    assert all(c.degree == 1 for c in none.contacts)


def test_venue_view(store: Store) -> None:
    q = TraceQueries(store.query)
    trace = q.venue("cafe", T0 + 45 * MINUTE_MS, T0 + 85 * MINUTE_MS)
    people = {(s.person_key, (s.start_ms - T0) // MINUTE_MS) for s in trace.stays}
    assert people == {(kh("alice"), 0), (kh("bob"), 10), (kh("carol"), 40), (kh("dave"), 70), (kh("erin"), 80)}
    wide = q.venue("cafe", T0, T0 + HOUR, TraceOptions(include_unverified=True))
    assert kh("gina") in {s.person_key for s in wide.stays}


def test_csv_json_table_output(store: Store) -> None:
    opt = TraceOptions(include_unverified=True, second_degree=True)
    trace = TraceQueries(store.query).person(person_key=kh("alice"), options=opt)
    rows = list(csv.DictReader(io.StringIO(render(trace, "csv"))))
    assert [r["section"] for r in rows].count("visit") == 4
    exposures = [r for r in rows if r["section"] == "exposure"]
    assert exposures[0]["person_key"] == kh("bob") and exposures[0]["rank"] == "1"
    assert {r["trusted"] for r in rows if r["person_key"] == kh("gina")} == {"False"}
    doc = json.loads(render(trace, "json"))
    assert doc["exposures"][0]["total_overlap_min"] == 70.0 and doc["include_unverified"] is True
    assert doc["second_degree"][0]["person_key"] == kh("hank") and doc["second_degree"][0]["via"] == [kh("bob")]
    assert (
        json.loads(render(from_json(doc), "json")) == doc
    )  # what a CLI rebuilds from the engine's answer prints the same
    table = render(trace, "table")
    assert "UNVERIFIED" in table and "!unsigned_code" in table and "!id_card" in table
    # what the bounded second degree left out: one row of its own in CSV, the title of the table
    (cut,) = [r for r in rows if r["section"] == "second_degree_cut"]
    counts = dict(item.split("=") for item in cut["flags"].split(";"))
    assert counts == {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in doc["second_degree_cut"].items()}
    assert "second_degree_cut" not in table and "second degree from" in table


def test_refuses_bad_input(store: Store) -> None:
    from engine.errors import PayloadError

    q = TraceQueries(store.query)
    with pytest.raises(PayloadError):
        q.person(person_key="'; DROP TABLE scans; --")
    with pytest.raises(PayloadError):
        q.person(person_key=kh("alice"), qr_id="QR-alice")
    with pytest.raises(PayloadError):
        q.person(person_key=kh("alice"), from_ms=T0, to_ms=T0 - 1)
    # text that would be SQL if it were pasted into a statement is just a QR id that matches nothing
    assert q.person(qr_id="x' OR 1=1 --").visits == []


# -- CLI and HTTP ---------------------------------------------------------------------------------------
def test_cli_opens_the_store_when_no_engine_runs(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = "1"  # nothing listens there
    monkeypatch.setenv("ENGINE_TRACER_TOKEN", TracerRegistry.for_data_dir(data_dir).add("epi-1"))
    rc = main(["trace", "person", "--qr-id", "QR-alice", "--data-dir", str(data_dir), "--port", port,
               "--case-id", "HN-2026-001", "--format", "json"])  # fmt: skip
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert [c["person_key"] for c in doc["exposures"]] == [kh("bob"), kh("carol"), kh("dave")]
    rc = main(["trace", "venue", "--venue-id", "bakery", "--data-dir", str(data_dir), "--port", port,
               "--case-id", "HN-2026-001", "--format", "csv"])  # fmt: skip
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["person_key"] for r in rows] == [kh("frank")]


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_http_auth_and_cli_through_running_engine(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["tracer-add", "alice-tracer", "--data-dir", str(data_dir)]) == 0
    token = capsys.readouterr().out.strip()
    assert (data_dir / "tracers.json").stat().st_mode & 0o777 == 0o600
    assert token not in (data_dir / "tracers.json").read_text()
    assert TracerRegistry.for_data_dir(data_dir).authenticate(token) is not None
    engine = EngineProcess(data_dir).start()
    try:
        url = engine.url + "/v1/trace/person?qr_id=QR-alice&case_id=HN-2026-001"
        assert _get(url)[0] == 401
        assert _get(url, {"Authorization": "Bearer not-a-token"})[0] == 401
        assert _get(url, admin_headers(data_dir))[0] == 403
        device = {"X-Device-Id": "scanner-1", "X-Signature": "x", "Authorization": f"Bearer {token}"}
        assert _get(url, device)[0] == 403
        auth = {"Authorization": f"Bearer {token}"}
        status, body = _get(url, auth)
        assert status == 200
        assert [c["person_key"] for c in json.loads(body)["exposures"]] == [kh("bob"), kh("carol"), kh("dave")]
        status, body = _get(url + "&format=csv&include_unverified=1", auth)
        assert status == 200 and kh("gina") in body.decode()
        t1 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((T0 + HOUR) / 1000))
        status, body = _get(engine.url + f"/v1/trace/venue?venue_id=bakery&to={t1}&case_id=HN-2026-001", auth)
        assert status == 200 and [s["person_key"] for s in json.loads(body)["stays"]] == [kh("frank")]
        assert _get(engine.url + "/v1/trace/person?person_key=nothex&case_id=HN-2026-001", auth)[0] == 400
        # the second degree's bound, from the query string into the answer (JSON and CSV)
        bound = url + "&second_degree=1&second_degree_min_overlap_min=0&second_degree_cap=0"
        status, body = _get(bound, auth)
        assert status == 200
        cut = json.loads(body)["second_degree_cut"]
        assert (cut["min_overlap_min"], cut["cap"]) == (0, 0) and cut["over_cap"] == cut["candidates"] > 0
        status, body = _get(bound + "&format=csv", auth)
        assert status == 200 and "second_degree_cut" in body.decode() and "cap=0" in body.decode()
        assert _get(bound.replace("cap=0", "cap=1.5"), auth)[0] == 400
        assert _get(bound.replace("cap=0", "cap=-1"), auth)[0] == 400

        args = ["trace", "person", "--qr-id", "QR-alice", "--data-dir", str(data_dir), "--port", str(engine.port),
                "--case-id", "HN-2026-001"]  # fmt: skip
        monkeypatch.setenv("ENGINE_TRACER_TOKEN", token)
        assert main([*args, "--format", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["exposures"][0]["person_key"] == kh("bob")
        # the store is the engine's: without a tracer token the CLI says what to do rather than failing oddly
        monkeypatch.delenv("ENGINE_TRACER_TOKEN")
        assert main(args) == 2
        assert "tracer-add" in capsys.readouterr().err
    finally:
        engine.terminate()
    assert 'trace answered: tracer="alice-tracer" kind=person subject="qr_id=QR-alice"' in engine.log_path.read_text()


def reference_pairing(scans: list[Scan], *, dwell_min: float, max_stay_min: float) -> list[Stay]:
    """The pairing rule written plainly, one person and venue at a time: what the engine's one-pass walk over
    ClickHouse-sorted rows (and ``pair_stays``) must reproduce."""
    dwell, max_stay = round(dwell_min * MINUTE_MS), round(max_stay_min * MINUTE_MS)
    groups: dict[tuple[str, str], dict[tuple[str, str], Scan]] = {}
    for s in scans:  # a scan is (device, scan id): the same id from another device is another scan
        groups.setdefault((s.person_key, s.venue_id), {})[(s.device_id, s.scan_id)] = s

    def stay(first: Scan, last: Scan, start: int, end: int, *flags: str) -> Stay:
        verdict = first.verdict if first.verdict != "ok" else last.verdict
        scans = (first,) if flags else (first, last)  # provenance: the scans the stay rests on, entry first
        return Stay(first.person_key, last.qr_id or first.qr_id, first.venue_id, start, end, flags, verdict,
                    tuple(x.device_id for x in scans), tuple(x.scan_id for x in scans))  # fmt: skip

    out: list[Stay] = []
    for group in groups.values():
        entry: Scan | None = None
        for s in sorted(group.values(), key=lambda s: (s.at_ms, s.direction != "in", s.scan_id, s.device_id)):
            if s.direction == "in":
                if entry is not None:
                    out.append(stay(entry, entry, entry.at_ms, min(entry.at_ms + dwell, s.at_ms), "inferred_exit"))
                entry = s
            elif entry is not None and s.at_ms - entry.at_ms <= max_stay:
                out.append(stay(entry, s, entry.at_ms, s.at_ms))
                entry = None
            else:
                if entry is not None:
                    out.append(stay(entry, entry, entry.at_ms, entry.at_ms + dwell, "inferred_exit"))
                    entry = None
                out.append(stay(s, s, s.at_ms - dwell, s.at_ms, "exit_without_entry"))
        if entry is not None:
            out.append(stay(entry, entry, entry.at_ms, entry.at_ms + dwell, "inferred_exit"))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_pair_stays_matches_the_plain_rule(seed: int) -> None:
    """pair_stays walks every group in one sorted pass; the plain per-group rule is its reference. Two devices
    share scan ids here, as predictable scanner apps do: each (device, scan id) is a scan of its own."""
    import random

    rnd = random.Random(seed)
    scans = [
        Scan(f"id{rnd.randrange(150)}", f"P{rnd.randrange(5)}", f"Q{rnd.randrange(3)}", f"v{rnd.randrange(3)}",
             rnd.choice(("in", "in", "out")), rnd.randrange(0, 2000, 10) * MINUTE_MS,
             rnd.choice(("ok", "ok", "ok", "expired")), f"dev{rnd.randrange(2)}")
        for _ in range(200)
    ]  # fmt: skip
    # a repeated (device, scan id) is the same scan (a retried upload): make its copies identical
    first = {(s.person_key, s.venue_id, s.device_id, s.scan_id): s for s in reversed(scans)}
    scans = [first[(s.person_key, s.venue_id, s.device_id, s.scan_id)] for s in scans]
    got = pair_stays(scans, default_dwell_min=30, max_stay_min=240)
    assert sorted(got, key=repr) == sorted(reference_pairing(scans, dwell_min=30, max_stay_min=240), key=repr)


def test_touching_windows() -> None:
    """Stays are kept if they share an instant with a window at their venue; overlapping windows merge."""
    from engine.tracing.pairing import touching as _touching

    def span(venue: str, start: int, end: int) -> Any:
        row = ("", "P", "Q", venue, "in", start, "ok")
        return (row, row, start, end, "")

    windows = [("v", 100, 200), ("v", 150, 300), ("v", 500, 600), ("w", 0, 10)]
    spans = [
        span("v", 0, 99),  # ends just before the first window
        span("v", 0, 100),  # ends on its first instant
        span("v", 250, 260),  # inside the second, overlapping window only
        span("v", 301, 499),  # between windows
        span("v", 600, 700),  # starts on the last instant of the last
        span("v", 601, 700),
        span("x", 100, 200),  # no window at that venue
        span("w", 10, 20),
    ]
    assert [(s[0][3], s[2], s[3]) for s in _touching(spans, windows)] == [
        ("v", 0, 100),
        ("v", 250, 260),
        ("v", 600, 700),
        ("w", 10, 20),
    ]


def test_key_ranges_merge_per_venue() -> None:
    """Ranges at one venue that overlap, or are closer than the gap, are read as one; other venues never join."""
    from engine.tracing.queries import _merge

    ranges = [("v", 40, 50), ("v", 0, 10), ("v", 5, 20), ("w", 21, 30)]
    assert _merge(ranges) == [("v", 0, 20), ("v", 40, 50), ("w", 21, 30)]
    assert _merge(ranges, gap=20) == [("v", 0, 50), ("w", 21, 30)]
    assert _merge(ranges, gap=19) == [("v", 0, 20), ("v", 40, 50), ("w", 21, 30)]


@pytest.mark.parametrize(("ranges_per_query", "gap_days"), [(200, 3), (2, 0)])
def test_sql_pairing_matches_the_python_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ranges_per_query: int, gap_days: int
) -> None:
    """The venue reads dedup and order the scans in ClickHouse and walk them once; they must give exactly the
    stays of the plain reference rule, whether nearby key ranges are read as one or a venue's ranges are split
    over several queries."""
    import random

    from engine.tracing import queries as tracing

    monkeypatch.setattr(tracing, "_RANGES_PER_QUERY", ranges_per_query)
    monkeypatch.setattr(tracing, "_RANGE_GAP_MS", gap_days * tracing.DAY_MS)

    rnd = random.Random(4)
    scans = [
        scan(
            f"p{rnd.randrange(6)}",
            f"v{rnd.randrange(3)}",
            rnd.choice(("in", "in", "out")),
            rnd.randrange(0, 3000, 5),  # coarse minutes, so equal timestamps happen
            rnd.choice(("ok",) * 8 + ("unsigned_code", "id_card")),
        )
        for _ in range(400)
    ]
    scans += scans[:40]  # duplicates, as before a merge
    s = Store.connect(f"chdb://{(tmp_path / 'store').resolve()}", database="vnqr", retention_days=28)
    try:
        s.migrate()
        s.insert_scans(columns(scans))
        opt = TraceOptions(include_unverified=True, default_dwell_min=45, max_stay_min=300)
        lo, hi = T0 + 500 * MINUTE_MS, T0 + 2000 * MINUTE_MS
        windows = [("v0", lo, hi), ("v2", lo, lo + HOUR)]
        windows += [("v1", lo + k * 700 * MINUTE_MS, lo + k * 700 * MINUTE_MS + HOUR) for k in range(3)]
        got = TraceQueries(s.query).stays_at(windows, opt)
    finally:
        s.close()
    cols = columns(scans)
    as_scans = [
        Scan(str(cols["scan_id"][i]), kh(x["person"]), f"QR-{x['person']}", x["venue"], x["direction"], x["at"],
             x["verdict"], cols["device_id"][i])
        for i, x in enumerate(scans)
    ]  # fmt: skip
    reference = reference_pairing(as_scans, dwell_min=45, max_stay_min=300)
    assert sorted(pair_stays(as_scans, default_dwell_min=45, max_stay_min=300), key=repr) == sorted(reference, key=repr)
    want = [
        st for st in reference if any(st.venue_id == v and st.end_ms >= a and st.start_ms <= b for v, a, b in windows)
    ]
    assert len(want) > 50
    assert sorted(got, key=repr) == sorted(want, key=repr)


def test_migration_0009_marks_old_qr_links_and_a_trusted_trace_follows_only_verified_ones(store: Store) -> None:
    """QR-id pairs stored before migration 0009 carry no verdict (they read verified = 0); re-running 0009 (as
    an upgrade does) writes again, as verified, exactly the pairs a verified scan in the store showed. A pair
    only an unverified scan made, like one a hand-made code would leave, is never followed by a trusted trace:
    here an old claim links QR-alice to bob's key, and bob's verified visits stay out of alice's trace."""
    store.command("TRUNCATE TABLE person_by_qr")
    store.command(
        "INSERT INTO person_by_qr (qr_id, person_key, scanned_at) "
        "SELECT qr_id, person_key, max(scanned_at) FROM scans WHERE qr_id != '' GROUP BY qr_id, person_key"
    )
    store.command(
        "INSERT INTO person_by_qr (qr_id, person_key, scanned_at) VALUES "
        "('QR-alice', toFixedString(unhex({bob:String}), 16), now64(3))",
        {"bob": kh("bob")},
    )
    assert store.query("SELECT count() FROM person_by_qr WHERE verified = 1") == [(0,)]
    store.command("ALTER TABLE schema_migrations DELETE WHERE name = '0009_verified_links' SETTINGS mutations_sync = 1")
    assert "0009_verified_links" in store.migrate()
    verified = store.query("SELECT qr_id, hex(person_key) FROM person_by_qr WHERE verified = 1 ORDER BY qr_id")
    # every person with an ok scan, gina (unsigned only) not
    assert [q for q, _ in verified] == [f"QR-{p}" for p in ("alice", "bob", "carol", "dave", "erin", "frank", "hank")]
    assert ("QR-alice", kh("bob")) not in verified
    trace = TraceQueries(store.query).person(qr_id="QR-alice")
    assert {v.venue_id for v in trace.visits} == {"cafe", "gym", "library"}  # not bob's pool
    assert {v.link for v in trace.visits} == {"qr_id"}
