"""The city workload (bench/population.py), the cache model, the city-driven benchmark and load test, the planner.

Small cities, real parts: codes minted under the bench issuer and judged by the reference verifier, the model's
LRU held to PyVerifier's own cache flags, a real engine subprocess driven over loopback (e2e_bench and Locust),
a real chdb store measured by the planner. Nothing here times anything.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from bench import population
from bench.cache_model import SET, bounded_set_hits, lru_hits, model, set_hits
from bench.capacity import build_plan, parser
from bench.city_load import bench_trusted_key
from bench.population import City, CityParams, CodeBook, person
from bench.synth import DAY_MS, HOUR_MS
from engine.codes.payload import mint
from engine.codes.trust import TrustList
from engine.codes.verdicts import VERDICTS
from engine.verify.contract import CodeBatch, code_tag, set_key
from engine.verify.reference import PyVerifier

ROOT = Path(__file__).resolve().parent.parent
END = City.last_local_midnight(1_780_000_000_000)  # a fixed calendar: the same scans whatever the date


@pytest.fixture(scope="module")
def city() -> City:
    return City(CityParams(people=4000, days=3, end_ms=END))


@pytest.fixture(scope="module")
def code_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("codes")


def test_city_is_deterministic(city: City) -> None:
    again = City(CityParams(people=4000, days=3, end_ms=END))
    for name in ("t_ms", "person", "venue", "device", "direction", "day"):
        assert np.array_equal(getattr(city, name), getattr(again, name)), name
    other = City(CityParams(people=4000, days=3, end_ms=END, seed=2))
    assert not np.array_equal(city.person[:1000], other.person[:1000])
    assert np.all(np.diff(city.t_ms) >= 0), "scans are in time order"
    assert city.t_ms[0] >= END - 3 * DAY_MS and city.t_ms[-1] < END


def test_city_has_the_routine_shape(city: City) -> None:
    p, w = city.params, city.world
    assert abs(city.commuter.mean() - 0.35) < 0.03
    entries, exits = city.direction == 0, city.direction == 1
    assert abs(exits.sum() / entries.sum() - 0.85) < 0.02, "85 % of visits are scanned out"
    errands = (entries.sum() - city.commuter.sum() * p.days) / (p.people * p.days)  # all but the commutes
    assert 0.9 < errands < 1.1, f"about one errand a day, not {errands:.2f}"
    # every commuter's first entry and first exit at their workplace on a day are 8-9 h apart
    gaps = []
    at_work = city.venue == w.workplace[city.person]
    for d in (1, 2):
        m = (city.day == d) & at_work & city.commuter[city.person]
        first_in: dict[int, int] = {}
        first_out: dict[int, int] = {}
        for who, t, out in zip(city.person[m].tolist(), city.t_ms[m].tolist(), city.direction[m].tolist(), strict=True):
            (first_out if out else first_in).setdefault(who, t)
        gaps += [first_out[k] - first_in[k] for k in first_out if k in first_in]
    gaps_h = np.array(gaps) / HOUR_MS
    assert len(gaps_h) > 1500
    assert gaps_h.min() >= 8.0 and np.quantile(gaps_h, 0.99) <= 9.0
    # in the morning the commuters arrive: the 07-10 h entries are mostly at workplaces
    hour = (city.t_ms - city.start_ms) % DAY_MS // HOUR_MS
    morning = entries & (hour >= 7) & (hour < 10)
    assert at_work[morning].mean() > 0.5


def test_errand_stays_are_lognormal_around_45_minutes(city: City) -> None:
    m = ~city.commuter[city.person] & (city.day == 2)
    stays = []
    last_in: dict[tuple[int, int], int] = {}
    for who, where, t, out in zip(
        city.person[m].tolist(), city.venue[m].tolist(), city.t_ms[m].tolist(), city.direction[m].tolist(), strict=True
    ):
        if not out:
            last_in[(who, where)] = t
        elif (who, where) in last_in:
            stays.append(t - last_in.pop((who, where)))
    median_min = float(np.median(stays)) / 60_000
    assert 38 < median_min < 52, median_min


def test_code_book_is_minted_like_mint_verified_and_cached(
    code_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    window = (1_700_000_000, 1_700_000_000 + 400 * 86_400)
    monkeypatch.setattr(population, "MINT_CHUNK", 100)  # several chunks, on two worker processes
    book = CodeBook.mint(300, window=window, cache_dir=tmp_path, workers=2)
    key = population.bench_issuer()
    for i in (0, 99, 100, 299):
        assert book.code(i) == mint(person(i), key, iat=window[0], exp=window[1])
    files = list(tmp_path.glob("codes-300-*.npz"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    again = CodeBook.mint(300, window=window, cache_dir=tmp_path)
    assert again.buf == book.buf and files[0].stat().st_mtime_ns == stamp, "loaded, not minted again"
    assert CodeBook.mint(300, window=(window[0], window[1] + 1), cache_dir=tmp_path).buf != book.buf
    trust = TrustList.build([bench_trusted_key(window[0] + 86_400)])
    codes = [book.code(i).encode() for i in range(len(book))]
    res = PyVerifier(trust.table(), b"s" * 32).verify_batch(CodeBatch.from_codes(codes), window[0] + 86_400)
    assert {VERDICTS[v] for v in res.verdict} == {"ok"}
    with pytest.raises(ValueError, match="people must be >= 1"):
        CodeBook.mint(0, cache_dir=tmp_path)


def test_requests_cover_the_window_in_upload_order(city: City, code_cache: Path) -> None:
    book = CodeBook.mint(city.params.people, cache_dir=code_cache)
    window = city.window(2, (7, 10))
    reqs = list(city.requests(book, 2, (7, 10), hold_s=300, max_scans=5, speedup=60))
    assert sum(len(r.scans) for r in reqs) == len(window) > 0
    assert max(len(r.scans) for r in reqs) == 5
    assert [r.at_s for r in reqs] == sorted(r.at_s for r in reqs) and reqs[-1].at_s <= 3 * 3600 / 60 + 300 / 60
    ids = [s["scan_id"] for r in reqs for s in r.scans]
    assert len(set(ids)) == len(ids)
    codes = sorted(str(s["qr"]) for r in reqs for s in r.scans)
    assert codes == sorted(book.code(int(i)) for i in city.person[window])
    for r in reqs[:50]:
        venues = {s["venue_id"] for s in r.scans}
        assert venues == {f"venue-{r.device:06d}"} and r.device_id == city.device_id(r.device)
    with pytest.raises(ValueError, match=r"day must be 1\.\.3"):
        city.window(4)
    with pytest.raises(ValueError, match="hours must satisfy"):
        city.window(1, (10, 7))


def test_bad_city_parameters_are_named() -> None:
    for kwargs, message in (
        ({"people": 10}, "people must be >= 100"),
        ({"days": 40}, "days must be 1..27"),
        ({"scanned_out": 1.5}, "scanned_out"),
        ({"devices_per_venue": 2, "venues_per_device": 0}, "exclude each other"),
    ):
        with pytest.raises(ValueError, match=message):
            CityParams(**kwargs).validate()  # type: ignore[arg-type]


def test_model_bounded_set_is_the_reference_verifiers_set(city: City, code_cache: Path) -> None:
    """The model's bounded set says hit exactly where PyVerifier's own set (same size) reports a hit."""
    book = CodeBook.mint(city.params.people, cache_dir=code_cache)
    stream = city.person[:2500]
    now = int(time.time())
    verifier = PyVerifier(TrustList.build([bench_trusted_key(now)]).table(), b"s" * 32, cache_size=300)
    flags = []
    for lo in range(0, len(stream), 500):
        batch = CodeBatch.from_codes([book.code(int(i)).encode() for i in stream[lo : lo + 500]])
        flags.append(verifier.verify_batch(batch, now).cache_hit)
    key = set_key(b"s" * 32)
    assert np.array_equal(
        np.concatenate(flags), bounded_set_hits(stream, 300, lambda i: code_tag(key, book.code(i).encode()), 500)
    )
    assert not np.array_equal(np.concatenate(flags), lru_hits(stream, 300)), "the set is not an LRU"


def test_model_hit_rates_are_monotone_and_in_the_issues_shape() -> None:
    """20,000 people with caches at the issue's ratios to its 2M (262,144 and 1M entries): 26 % / 64 % / 98 %."""
    c = City(CityParams(people=20_000, days=3, end_ms=END))
    doc = model(c, [500, 2621, 10_000, 40_000, SET])
    days = [x["day"] for x in doc["caches"]]
    for d in range(3):
        col = [r[d] for r in days]
        assert col == sorted(col), f"day {d + 1}: hit rate grows with the cache ({col})"
    assert days[3] == days[4], "an LRU larger than the population is the set (nothing expires)"
    small, large, every = days[1][2], days[2][2], days[4][2]
    assert 0.2 < small < 0.45 and 0.55 < large < 0.78 and every > 0.95, (small, large, every)
    expiring = set_hits(c.person, c.t_ms // 1000, int(c.t_ms[len(c.t_ms) // 2] // 1000))
    assert not expiring[len(c.t_ms) // 2 + 1 :].any(), "no hit on an entry past its code's exp"


def _e2e(tmp: Path, code_cache: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp / "e2e.json"
    done = subprocess.run(
        [
            *(sys.executable, "bench/e2e_bench.py", "--workload", "city", "--people", "2000", "--days", "2"),
            *("--no-naive", "--code-cache", str(code_cache), "--json", str(out), "--cache-size", "1000"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return done, out


@pytest.fixture(scope="module")
def e2e_city(tmp_path_factory: pytest.TempPathFactory, code_cache: Path) -> tuple[Any, dict[str, Any], Path]:
    done, out = _e2e(tmp_path_factory.mktemp("e2e"), code_cache)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, orjson.loads(out.read_bytes()), out


@pytest.mark.slow
def test_e2e_city_run_states_the_hit_rate_it_produced(e2e_city: tuple[Any, dict[str, Any], Path]) -> None:
    done, doc, _ = e2e_city
    (r,) = doc["results"]
    c = r["city"]
    assert r["workload"] == "city" and r["repeat_share"] is None and c["day"] == 2 and c["cache_size"] == 1000
    assert r["statuses"] == {"202": r["requests"]}, "every upload accepted"
    expected = City(CityParams(**c["params"]))
    assert r["scans"] == len(expected.window(2)) and c["warm_scans"] == len(expected.window(1))
    assert r["cache_lookups"] == r["scans"], "every genuine signed code is one cache lookup"
    assert 0.3 < r["hit_rate"] < 1.0, "day 2 of a small city: most people were seen on day 1"
    assert "city" in done.stdout and f"{r['hit_rate']:.1%}" in done.stdout


@pytest.mark.slow
def test_e2e_city_with_the_deployment_set_misses_only_first_sights(tmp_path: Path, code_cache: Path) -> None:
    """``--deployment-set``: no replay; the store holds an entry for everyone scanned on day 1, the engine
    warm-loads them, so on day 2 the only misses are the people first seen on day 2 (once each)."""
    out = tmp_path / "e2e.json"
    done = subprocess.run(
        [
            *(sys.executable, "bench/e2e_bench.py", "--workload", "city", "--people", "2000", "--days", "2"),
            *("--no-naive", "--code-cache", str(code_cache), "--json", str(out), "--cache-size", "10000"),
            "--deployment-set",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (r,) = orjson.loads(out.read_bytes())["results"]
    c = r["city"]
    city = City(CityParams(**c["params"]))
    before = set(city.person[city.window(1)].tolist())
    window = city.person[city.window(2)].tolist()
    assert c["warm_scans"] == 0 and c["deployment_set_rows"] == len(before)
    assert r["scans"] == len(window) and r["cache_lookups"] == len(window)
    first_sights = len(set(window) - before)
    assert r["hit_rate"] == pytest.approx(1 - first_sights / len(window), abs=5e-5)  # rounded to 4 places


@pytest.mark.slow
def test_capacity_plans_from_an_e2e_json(e2e_city: tuple[Any, dict[str, Any], Path]) -> None:
    _, doc, path = e2e_city
    plan = build_plan(parser().parse_args(["--from-json", str(path), "--hit-rate", "0.9", "--bytes-per-row", "90"]))
    inp = plan["inputs"]
    assert inp["cold_verify_us"]["value"] == doc["verify_us"] and "verify-only" in inp["cold_verify_us"]["source"]
    r = doc["results"][0]
    outside = r["cpu_us_per_scan"] - r["cpu_us_by_thread"].get("verify", 0.0)
    assert inp["outside_verify_us"]["value"] == pytest.approx(outside, abs=0.02)
    assert "city" in inp["outside_verify_us"]["source"] and "repeat" not in inp["outside_verify_us"]["source"]
    assert inp["measured_hit_rate"]["value"] == r["hit_rate"]


def test_capacity_arithmetic_by_hand(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    args = ["--hit-rate", "0.75", "--cold-verify-us", "60", "--cache-hit-us", "2", "--outside-verify-us", "10"]
    args += ["--people", "1e6", "--scans-per-person", "2", "--peak-hour-share", "0.1", "--burst", "3"]
    args += ["--utilisation", "0.5", "--cores-per-node", "4", "--peak", "400000"]
    args += ["--bytes-per-row", "150", "--retention-days", "10", "--replicas", "2", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "bench/capacity.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    plan = orjson.loads(out.read_bytes())
    assert plan["cpu_us_per_scan"] == pytest.approx(10 + 0.75 * 2 + 0.25 * 60)  # 26.5
    assert plan["derived_peak"] == pytest.approx(1e6 * 2 * 0.1 / 3600 * 3)
    rows = {r["scenario"]: r for r in plan["rows"]}
    assert rows["given peak"]["cores"] == pytest.approx(400_000 * 26.5e-6 / 0.5)  # 21.2 cores
    assert (rows["given peak"]["cpu_nodes"], rows["given peak"]["nodes"]) == (6, 7)  # ceil(21.2 / 4) + failover
    assert rows["design point"]["cores"] == pytest.approx(2.65) and rows["design point"]["nodes"] == 2
    assert rows["derived peak"]["nodes"] == 2  # one node for a tiny peak, plus the failover node
    assert plan["disk"]["bytes"] == pytest.approx(1e6 * 2 * 10 * 150 * 2)
    for name in ("hit_rate", "cold_verify_us", "cache_hit_us", "outside_verify_us"):
        assert plan["inputs"][name]["source"].startswith("given"), name
    assert "given (--cold-verify-us)" in done.stdout and "repeat" not in done.stdout
    bad = subprocess.run(
        [sys.executable, "bench/capacity.py", "--cache-entries", "lots"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "cache entries 'lots'" in bad.stderr


def test_capacity_models_the_hit_rate_and_measures_bytes_per_row(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    fill = (
        "import sys; from engine.store.store import Store; from bench.synth import World, fill;"
        "s = Store.connect('chdb://' + sys.argv[1]); s.migrate(); fill(s, World.for_rows(5000, days=5), 5000);"
        "print(s.query(\"SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND database = 'vnqr' AND "
        "table IN ('scans', 'scans_by_person', 'person_by_qr')\")[0][0]); s.close()"
    )
    done = subprocess.run(
        [sys.executable, "-c", fill, str(store_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    total = int(done.stdout.split()[-1])
    out = tmp_path / "plan.json"
    done = subprocess.run(
        [
            *(sys.executable, "bench/capacity.py", "--population-per-node", "3000", "--days", "2"),
            *("--cache-entries", "set", "--store-dir", str(tmp_path), "--json", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    plan = orjson.loads(out.read_bytes())
    bpr = plan["disk"]["bytes_per_row"]
    assert bpr["value"] == pytest.approx(total / 5000) and "5,000 scans" in bpr["source"]
    rate = plan["inputs"]["hit_rate"]
    expected = model(City(CityParams(people=3000, days=2)), [SET])["caches"][0]["peak_hour"][-1]
    assert rate["value"] == pytest.approx(expected) and "set" in rate["source"] and "3,000 people" in rate["source"]
    assert all(r["nodes"] == r["cpu_nodes"] + 1 for r in plan["rows"])


@pytest.mark.slow
def test_loadtest_city_workload_loses_nothing(tmp_path: Path, code_cache: Path) -> None:
    from test_loadtest import _assert_clean, _run

    proc, summary, run_dir = _run(
        tmp_path,
        *("--users", "3", "--spawn-rate", "3", "--run-time", "3", "--workload", "city"),
        *("--people", "2000", "--days", "1", "--code-cache", str(code_cache)),
    )
    _assert_clean(proc, summary, run_dir)
    assert summary["cache"]["lookups"] > 0 and "verified-code cache hit rate" in proc.stdout
    count = (
        "import sys; from engine.store.store import Store; s = Store.connect('chdb://' + sys.argv[1]);"
        "print(*s.query(\"SELECT countIf(startsWith(qr_id, 'PC')), countIf(verdict = 'ok') FROM vnqr.scans\")[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", count, str(run_dir / "data" / "store")], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    city_codes, ok = (int(x) for x in done.stdout.split())
    assert ok > 0 and city_codes >= ok, "the genuine codes are the city's (PC… QR ids), not the Zipf mix's"
