"""The tracing lane (issue 13, point 2) against real engines: a worst-case trace during ingest, its caps, a client
that goes away, and a tracer running two traces at once.

Before the lane, a trace ran on the drain's store thread through the store's one client, unbounded, its answer
encoded on the event loop: /readyz (which pinged on that thread) failed while it ran, nothing capped it, a client
that gave up left it running and audited, and one tracer could run any number at once. Each test here failed
on that code.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aiohttp
import orjson
import pytest

from engine.devices.client import ScannerClient, make_scan
from engine.testing.engines import DEVICE_ID, InProcessEngine, wait_until
from engine.testing.fixtures import StoreTarget
from engine.testing.hot_venue import HOT_VENUE, hot_venue_insert
from engine.web.trace import chunked_dumps

ENGINE_DEFAULTS = {"device_rate": 100_000.0, "device_burst": 100_000.0}
HOT = HOT_VENUE
#: the issue's worst case: a year, every verdict, the busiest venue
WORST = f"/v1/trace/venue?venue_id={HOT}&days=366&include_unverified=1&case_id=HN-2026-0413"


async def _fill_hot_venue(e: InProcessEngine, rows: int) -> None:
    """``rows`` scans at one venue over the last 20 days, 20,000 people, written straight into the store."""
    sql = hot_venue_insert(rows, HOT)
    await e.rt.in_store_thread(e.rt.store.command, sql)


async def _get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], timeout: float = 60
) -> tuple[int, Any, dict[str, str]]:
    async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        raw = await r.read()
        # orjson, not aiohttp's json.loads: this client shares the in-process engine's event loop, and the stdlib
        # decoding a 300k-row answer holds that loop for seconds (the engine's /readyz would time out because of
        # the test's own client, not the lane)
        body = orjson.loads(raw) if r.content_type == "application/json" else raw
        return r.status, body, dict(r.headers)


class Ingest:
    """An honest scanner posting small batches while something else runs, and a load balancer probing /readyz.

    Both run on a thread with its own event loop, so their timeouts are real ones: a client sharing the engine's
    loop would not see that loop blocked (its own timers would be late by as much)."""

    def __init__(self, e: InProcessEngine) -> None:
        self.e = e
        self.statuses: list[int] = []
        self.ready: list[int] = []
        self.acked: list[tuple[float, int]] = []  # (when the 202 came, scans in it)
        self.stop = threading.Event()

    async def _scanner(self) -> None:
        client = ScannerClient(self.e.url, DEVICE_ID, self.e.fx.device)
        tag = 100
        try:
            while not self.stop.is_set():
                tag += 1
                scans = [make_scan(self.e.fx.code(tag * 100 + i), "venue-honest") for i in range(20)]
                try:
                    status, _ = await asyncio.wait_for(client.post_scans(scans), 10.0)  # a device's timeout
                except TimeoutError:
                    status = 0
                self.statuses.append(status)
                if status == 202:
                    self.acked.append((time.monotonic(), len(scans)))
                await asyncio.sleep(0.05)
        finally:
            await client.close()

    async def _prober(self) -> None:
        async with aiohttp.ClientSession() as s:
            while not self.stop.is_set():
                try:
                    async with s.get(self.e.url + "/readyz", timeout=aiohttp.ClientTimeout(total=5.0)) as r:
                        status = r.status  # a load balancer probe's timeout (5 s: AWS ALB's default)
                except TimeoutError:
                    status = 0
                self.ready.append(status)
                await asyncio.sleep(0.1)

    def _run(self) -> None:
        async def both() -> None:
            await asyncio.gather(self._scanner(), self._prober())

        asyncio.run(both())

    async def beside(self, work: Any) -> Any:
        thread = threading.Thread(target=self._run, name="honest")
        thread.start()
        try:
            return await work
        finally:
            self.stop.set()
            await asyncio.to_thread(thread.join)


async def test_worst_case_trace_during_ingest_is_cut_by_its_caps_and_ingest_goes_on(
    engine: Any, store_dsn: StoreTarget
) -> None:
    """days=366, include_unverified, the hot venue, while an honest device posts and a prober asks /readyz:
    every honest request gets 202, /readyz stays 200, and the trace is refused by its row cap with the clear
    413 that names the cap and how to narrow the trace (on the old code it ran uncapped and answered 200). On the
    embedded store and on a ClickHouse server."""
    e = await engine(trace_max_rows_read=30_000, dsn=store_dsn.dsn, database=store_dsn.database)
    await _fill_hot_venue(e, 100_000)
    ingest = Ingest(e)
    async with aiohttp.ClientSession() as s:
        status, body, _ = await ingest.beside(_get(s, e.url + WORST, e.tracer()))
    assert status == 413, body
    assert body["error"] == "trace_too_large" and body["cap"] in ("max_rows_read", "max_rows"), body
    assert any("shorter period" in hint for hint in body["narrow"]) and "narrow it" in body["message"]
    assert ingest.statuses and set(ingest.statuses) == {202}, ingest.statuses
    assert ingest.ready and set(ingest.ready) == {200}, ingest.ready
    ((refused,),) = await e.query("SELECT count() FROM audit_log WHERE case_id = 'HN-2026-0413'")
    assert refused == 0  # no answer, no audit record


async def test_a_trace_past_its_time_cap_is_stopped_with_422(engine: Any) -> None:
    """The same worst case with a time cap the trace cannot meet: 422 trace_too_slow, naming the cap."""
    e = await engine(trace_timeout_s=0.05)
    await _fill_hot_venue(e, 100_000)
    async with aiohttp.ClientSession() as s:
        status, body, _ = await _get(s, e.url + WORST, e.tracer())
    assert status == 422 and body["error"] == "trace_too_slow" and body["cap"] == "timeout_s", body
    assert body["limit"] == 0.05 and body["narrow"]


async def test_worst_case_trace_runs_beside_ingest_without_holding_it(engine: Any) -> None:
    """Uncapped (caps raised), the worst-case trace runs on its own lane: while it runs, honest scans get 202,
    /readyz stays 200, and the answer is streamed in full (on the old code /readyz pinged behind the trace on the
    store thread)."""
    e = await engine(trace_max_rows=5_000_000, trace_timeout_s=120)
    await _fill_hot_venue(e, 300_000)
    ingest = Ingest(e)
    stored = e.rt.metrics.scans_stored  # below 300k rows the old code's trace held the store thread < 2 s
    stored_before = stored._value.get()
    t0 = time.monotonic()

    async def trace_then_count() -> tuple[int, bytes, float]:
        # the answer is read raw and parsed only after the honest load stops: this client shares the engine's
        # event loop, and parsing 36 MB of JSON there would stall the engine itself, not because of the lane
        async with (
            aiohttp.ClientSession() as s,
            s.get(e.url + WORST, headers=e.tracer(), timeout=aiohttp.ClientTimeout(total=120)) as r,
        ):
            raw = await r.read()
            return r.status, raw, stored._value.get() - stored_before  # stored while the trace ran

    status, raw, stored_during = await ingest.beside(trace_then_count())
    seconds = time.monotonic() - t0
    body = orjson.loads(raw)
    assert status == 200 and len(body["stays"]) > 10_000, status
    assert set(ingest.statuses) == {202}, ingest.statuses
    assert set(ingest.ready) == {200}, ingest.ready
    # inserts went on beside the trace: what was acknowledged well before it ended is stored (the drain inserts every
    # 50 ms here; the margin is for a loaded machine)
    settled = sum(n for at, n in ingest.acked if at < t0 + seconds - 2.5)
    assert stored_during >= settled > 0, (stored_during, settled)
    print(f"\n[lane] worst-case trace {seconds:.1f} s, {len(body['stays'])} stays; beside it "
          f"{len(ingest.statuses)} honest requests all 202, {len(ingest.ready)} /readyz all 200, "
          f"{stored_during:.0f} scans stored while it ran")  # fmt: skip


async def test_a_client_that_goes_away_cancels_its_trace(engine: Any, store_dsn: StoreTarget) -> None:
    """The client gives up after 0.3 s: the lane stops the trace (its query killed, no further query started),
    nothing is audited, and the tracer's slot is free again. On the old code the trace ran to the end and was
    audited as answered. On the embedded store and on a ClickHouse server (KILL QUERY on each)."""
    e = await engine(trace_max_rows=5_000_000, trace_timeout_s=120, dsn=store_dsn.dsn, database=store_dsn.database)
    await _fill_hot_venue(e, 100_000)
    auth = e.tracer()
    async with aiohttp.ClientSession() as s:
        with pytest.raises(TimeoutError):
            await _get(s, e.url + WORST, auth, timeout=0.3)
    lane = e.rt_lane
    await wait_until(lambda: lane.in_flight == 0, timeout=60)
    print(f"\n[lane] client gone: cancelled {lane.cancelled}, queries killed {lane.killed}")
    assert lane.cancelled == 1
    await asyncio.sleep(0.5)  # the handler has seen its client go
    ((audited,),) = await e.query("SELECT count() FROM audit_log WHERE case_id = 'HN-2026-0413'")
    assert audited == 0
    _, text = await e.ops.request("GET", "/metrics")
    assert 'engine_traces_refused_total{cause="client_gone"} 1.0' in str(text)


async def test_one_tracer_runs_one_trace_at_a_time(engine: Any) -> None:
    """A tracer's second trace while its first still runs is refused at once with 429 and Retry-After; another
    tracer is not affected by it."""
    e = await engine(trace_max_rows=5_000_000, trace_timeout_s=120)
    await _fill_hot_venue(e, 100_000)
    auth = e.tracer("tracer-a")
    other = e.tracer("tracer-b")
    async with aiohttp.ClientSession() as s:
        first = asyncio.create_task(_get(s, e.url + WORST, auth, timeout=120))
        await wait_until(lambda: e.rt_lane.in_flight == 1, timeout=10)
        small = "/v1/trace/venue?venue_id=venue-none&days=1&case_id=HN-2026-0414"
        status, body, headers = await _get(s, e.url + small, auth)
        assert status == 429 and "already runs 1 trace" in body["message"] and int(headers["Retry-After"]) >= 1
        status, _, _ = await _get(s, e.url + small, other)
        assert status == 200
        assert (await first)[0] == 200


def test_chunked_encoding_is_orjson_byte_for_byte() -> None:
    """The lane encodes long answers a slice at a time (so the GIL reaches the event loop between slices); the
    bytes must be exactly orjson's, whatever the nesting, the slice size or the list lengths."""
    stay = {"person_key": "AB" * 16, "start_ms": 1, "flags": ["unverified"], "overlap": 1.5, "none": None}
    for n in (0, 1, 999, 1000, 1001, 2500):
        doc = {"from": "x", "stays": [dict(stay, i=i) for i in range(n)], "meta": {"nested": list(range(n))}}
        for chunk in (1, 7, 1000):
            assert chunked_dumps(doc, chunk) == orjson.dumps(doc)
    assert chunked_dumps([[1, 2]] * 5, 2) == orjson.dumps([[1, 2]] * 5)


class LaneEngine(InProcessEngine):
    @property
    def rt_lane(self) -> Any:
        from engine.web.keys import TRACE_LANE

        return self.app[TRACE_LANE]


ENGINE_CLASS = LaneEngine
