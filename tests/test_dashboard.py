"""The operators' dashboard: stats derived from a real Metrics registry, the JSON/SSE endpoints of a real engine,
and the page itself in real headless Chromium (driven over the DevTools protocol) while scans are flowing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.codes.verdicts import VERDICTS
from engine.devices.client import ScannerClient, make_scan
from engine.ops.dashboard import HistogramState, StatsRing, derive, read_sample
from engine.ops.metrics import Metrics
from engine.testing.engines import (
    DEVICE_ID,
    Fixture,
    admin_headers,
    device_registration,
    engine_config,
    make_fixture,
    wait_until,
)
from engine.web.app import create_app
from engine.web.dashboard import STATS

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1400,1000",
)


# -- stats from counters: a real Metrics object, an injected clock ------------------------------------------
def test_rates_and_quantiles_over_the_window() -> None:
    m = Metrics()
    ring = StatsRing(m, interval_s=1.0, window_s=5.0)
    assert ring.tick(mono=100.0, wall=1000.0) is None  # one reading is no rate: the window starts here
    idle = ring.tick(mono=101.0, wall=1001.0)
    assert idle is not None and idle["accepted_per_s"] == 0
    assert idle["verify_p99_ms"] is None and idle["batch_size_mean"] is None

    m.scans_acked.labels(verdict="ok").inc(50)
    m.scans_acked.labels(verdict="bad_signature").inc(10)
    m.scans_rejected.labels(reason="direction").inc(3)
    m.scans_rejected.labels(reason="scan_id").inc(2)
    m.scans_duplicate.inc(5)
    for _ in range(90):
        m.verify_seconds.observe(0.0008)  # bucket (0.0005, 0.001]
    for _ in range(10):
        m.verify_seconds.observe(0.03)  # bucket (0.02, 0.05]
    for size in (100, 200, 300):
        m.batch_size.observe(size)
    point = ring.tick(mono=105.0, wall=1005.0)

    assert point is not None and point["t"] == 1005.0 and point["window_s"] == 5.0
    assert point["scans_per_s"]["ok"] == 10.0 and point["scans_per_s"]["bad_signature"] == 2.0
    assert set(point["scans_per_s"]) == set(VERDICTS)
    assert point["accepted_per_s"] == 12.0
    assert point["rejected_per_s"] == 1.0  # summed over reasons
    assert point["duplicate_per_s"] == 1.0
    # histogram_quantile: rank 50 of 100 lies in (0.0005, 0.001] holding 90 → 0.0005 + 0.0005 * 50/90
    assert point["verify_p50_ms"] == pytest.approx(0.5 + 0.5 * 50 / 90, abs=1e-3)
    # rank 99 lies in (0.02, 0.05], holding observations 91..100 → 0.02 + 0.03 * 9/10
    assert point["verify_p99_ms"] == pytest.approx(47.0, abs=1e-3)
    assert point["insert_p99_ms"] is None  # nothing inserted: no number rather than a made-up zero
    assert point["batch_size_mean"] == 200.0 and point["batches_per_s"] == 0.6
    assert 128 < point["batch_size_p50"] <= 256


def test_window_slides_and_old_activity_ages_out() -> None:
    m = Metrics()
    ring = StatsRing(m, interval_s=1.0, window_s=5.0, history_s=30.0)
    for second in range(10):
        m.scans_acked.labels(verdict="ok").inc(20)
        m.verify_seconds.observe(0.3)
        ring.tick(mono=float(second), wall=1000.0 + second)
    steady = ring.latest()
    assert steady is not None and steady["scans_per_s"]["ok"] == 20.0 and steady["window_s"] == 5.0
    # traffic stops: after one full window without increments the rate and the quantile are gone
    points = [ring.tick(mono=float(second), wall=1000.0 + second) for second in range(10, 16)]
    assert all(p is not None for p in points)
    assert points[0]["scans_per_s"]["ok"] == 16.0  # 4 of the 5 window seconds still had traffic
    assert points[-1]["scans_per_s"]["ok"] == 0.0 and points[-1]["verify_p99_ms"] is None
    assert len(ring.history()) == 15  # every tick but the first made a point
    for second in range(16, 60):
        ring.tick(mono=float(second), wall=1000.0 + second)
    assert len(ring.history()) == 30 and ring.history()[0]["t"] == 1030.0


def test_gauges_are_refreshed_from_their_owners() -> None:
    m = Metrics()
    live = {"queue": 7, "records": 3}
    m.on_scrape(lambda: (m.queue_depth.set(live["queue"]), m.wal_backlog_records.set(live["records"])))
    m.store_up.set(1)
    cache = {"hits": 40, "lookups": 100}
    m.set_cache_source(lambda: (cache["hits"], cache["lookups"]))
    ring = StatsRing(m, interval_s=1.0, window_s=2.0)
    ring.tick(mono=0.0, wall=0.0)
    cache.update(hits=130, lookups=200)
    live["queue"] = 11
    p = ring.tick(mono=1.0, wall=1.0)
    assert p is not None
    assert p["queue_scans"] == 11 and p["wal_backlog_records"] == 3 and p["store_up"] is True
    assert p["cache_hit_rate"] == 0.9  # over the window (90 of 100), not since start (130 of 200)


def test_a_counter_that_restarted_counts_from_zero() -> None:
    """Like Prometheus rate(): a reset (engine restarted) never produces a negative rate."""
    m = Metrics()
    m.scans_stored.inc(1000)
    older = read_sample(m, 0.0, 0.0)
    fresh = Metrics()
    fresh.scans_stored.inc(4)
    assert derive(older, read_sample(fresh, 1.0, 1.0))["stored_per_s"] == 4.0


def test_histogram_quantile_edges() -> None:
    h = HistogramState((0.1, 1.0, float("inf")), (0.0, 0.0, 5.0), 50.0)
    assert h.quantile(0.5) == 1.0  # everything above the last finite bound: that bound, as Prometheus does
    assert HistogramState((1.0, float("inf")), (0.0, 0.0), 0.0).quantile(0.99) is None
    h = HistogramState((1.0, 2.0, float("inf")), (4.0, 4.0, 4.0), 2.0)
    assert h.quantile(1.0) == 1.0 and h.quantile(0.5) == 0.5


async def test_subscribers_get_each_point_and_are_told_to_stop() -> None:
    ring = StatsRing(Metrics())
    queue = ring.subscribe()
    for second in range(3):
        ring.tick(mono=float(second), wall=float(second))
    assert [(await queue.get())["t"] for _ in range(2)] == [1.0, 2.0]  # type: ignore[index]
    for i in range(40):  # a reader that stalls keeps only the newest points
        ring.tick(mono=3.0 + i, wall=3.0 + i)
    assert queue.qsize() == 16
    ring.close_streams()
    items = [queue.get_nowait() for _ in range(queue.qsize())]
    assert items[-1] is None
    ring.unsubscribe(queue)


# -- the Grafana board and the metric docs cover the registry -----------------------------------------------
def _registry_families() -> dict[str, str]:
    return {f.name: f.type for f in Metrics().registry.collect()}


def test_metric_docs_and_grafana_board_match_the_registry() -> None:
    families = _registry_families()
    doc = (ROOT / "docs" / "metrics.md").read_text()
    for name, kind in families.items():
        exported = name + "_total" if kind == "counter" else name
        assert f"`{exported}`" in doc, f"docs/metrics.md does not describe {exported}"
    board = json.loads((ROOT / "grafana" / "engine-dashboard.json").read_text())
    assert board["uid"] and board["schemaVersion"] >= 36 and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    family_of = {name + sfx: name for name, kind in families.items() for sfx in suffixes[kind]}
    used: set[str] = set()
    ids = set()
    for panel in board["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            names = set(re.findall(r"\bengine_[a-z_]+", target["expr"]))
            assert names, target["expr"]
            unknown = names - set(family_of)
            assert not unknown, f"panel {panel['title']!r} queries unknown series {unknown}"
            used |= names
    assert set(families) - {family_of[u] for u in used} == set(), "families missing from the Grafana board"


def test_every_promql_expression_parses() -> None:
    """The board's queries and the alert examples in docs/metrics.md are valid PromQL (a real parser, the
    Rust one Prometheus-compatible databases use), so an operator can paste them as they are."""
    promql = pytest.importorskip("promql_parser", reason="pip install promql-parser (a dev dependency)")
    board = json.loads((ROOT / "grafana" / "engine-dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    doc = (ROOT / "docs" / "metrics.md").read_text()
    # inline code that is a query (calls a function); a <placeholder> for a setting becomes a number
    alerts = [re.sub(r"<[a-z_ ]+>", "1e9", c) for c in re.findall(r"`([^`\n]+)`", doc) if "engine_" in c and "(" in c]
    assert len(alerts) > 15
    for expr in exprs + alerts:
        concrete = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        try:
            promql.parse(concrete)
        except ValueError as exc:
            raise AssertionError(f"not valid PromQL: {expr!r}: {exc}") from None


# -- a real engine under load ------------------------------------------------------------------------------
class Load:
    """A scanner posting a realistic mix every 50 ms: valid codes (re-scanned, so the cache hits), forged ones,
    unsigned and malformed codes, items the engine rejects, and retries answered as duplicates."""

    def __init__(self, client: ScannerClient, fx: Fixture) -> None:
        self.client = client
        self.codes = [fx.code(i) for i in range(60)]
        good = self.codes[0]
        self.forged = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
        self.sent = 0
        self.statuses: list[int] = []

    def batch(self, n: int) -> list[dict[str, Any]]:
        scans = [make_scan(self.codes[(n * 7 + i) % len(self.codes)], f"venue-{i % 3}") for i in range(14)]
        scans += [make_scan(self.forged, "venue-1"), make_scan(self.forged, "venue-2")]
        scans += [make_scan("******123456|LE VAN C|1970-05-20|0|LEGACY01|", "venue-2")]
        scans += [make_scan("not a code", "venue-2")]
        scans += [{**make_scan(self.codes[0], "venue-1"), "direction": "sideways"}]  # rejected item
        return scans

    async def run(self) -> None:
        previous: list[dict[str, Any]] = []
        n = 0
        while True:
            scans = self.batch(n) + previous[:2]  # two retried items from the last request: duplicates
            status, _ = await self.client.post_scans(scans)
            self.statuses.append(status)
            self.sent += len(scans)
            previous = scans
            n += 1
            await asyncio.sleep(0.05)


@pytest.fixture
async def loaded_engine(tmp_path: Path, aiohttp_server: Any) -> AsyncIterator[tuple[str, Any, Load]]:
    fx = make_fixture(tmp_path / "engine")
    server = await aiohttp_server(create_app(engine_config(fx.data_dir)))
    url = str(server.make_url("")).rstrip("/")
    client = ScannerClient(url, DEVICE_ID, fx.device)
    status, body = await client.request(
        "POST", "/v1/admin/devices", device_registration(fx), headers_override=admin_headers(fx.data_dir)
    )
    assert status == 201, body
    load = Load(client, fx)
    task = asyncio.create_task(load.run())
    try:
        yield url, server.app, load
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()
    assert load.statuses and set(load.statuses) == {202}


async def test_stats_endpoint_and_stream_follow_the_load(loaded_engine: tuple[str, Any, Load]) -> None:
    url, app, load = loaded_engine
    ring = app[STATS]
    # A full window (~4-5 s, dozens of requests): in the first second or two a window can hold the ack of a
    # request received before it, and then acks can outnumber the items received in it (a full local run failed
    # once here, on a busy host).
    await wait_until(
        lambda: (
            len(ring.history()) >= 2
            and ring.history()[-1]["accepted_per_s"] > 0
            and ring.history()[-1]["window_s"] >= 4
        ),
        timeout=30,
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/v1/stats") as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            body = await r.json()
        latest = body["latest"]
        assert body["interval_s"] == 1.0 and len(body["history"]) >= 2
        assert latest["scans_per_s"]["ok"] > 0 and latest["scans_per_s"]["bad_signature"] > 0
        assert latest["scans_per_s"]["unsigned_code"] > 0 and latest["scans_per_s"]["malformed"] > 0
        assert latest["rejected_per_s"] > 0 and latest["received_per_s"] > latest["accepted_per_s"]
        assert latest["verify_p99_ms"] > 0 and latest["batch_size_mean"] >= 1 and latest["store_up"] is True
        assert latest["active_devices"] == 1
        async with http.get(url + "/v1/stats?history=0") as r:
            assert "history" not in await r.json()

        async with http.get(url + "/v1/stats/stream") as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            events: list[tuple[str, Any]] = []
            name = ""
            while len(events) < 3:
                line = (await asyncio.wait_for(r.content.readline(), 10)).decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
        assert [e[0] for e in events] == ["history", "stats", "stats"]
        assert events[1][1]["t"] < events[2][1]["t"]
        assert events[2][1]["accepted_per_s"] > 0

        async with http.get(url + "/dashboard") as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert "dashboard/dashboard.js" in await r.text()
        for asset, ctype in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            async with http.get(url + "/dashboard/" + asset) as r:
                assert r.status == 200 and r.content_type == ctype
        async with http.get(url + "/dashboard/..%2Fdashboard.py") as r:
            assert r.status == 404
        async with http.get(url + "/dashboard/", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "../dashboard"
    assert ring.latest()["duplicate_per_s"] > 0 or load.sent > 0


async def test_open_streams_do_not_hold_up_shutdown(tmp_path: Path, aiohttp_server: Any) -> None:
    """A dashboard left open must not make a SIGTERM wait for the full shutdown timeout: on_shutdown ends it."""
    fx = make_fixture(tmp_path / "engine")
    server = await aiohttp_server(create_app(engine_config(fx.data_dir)), shutdown_timeout=60.0)
    async with aiohttp.ClientSession() as http, http.get(str(server.make_url("/v1/stats/stream"))) as r:
        assert (await r.content.readline()).startswith(b"retry:")
        closing = asyncio.create_task(server.close())
        rest = await asyncio.wait_for(r.content.read(), 30)  # returns at end of stream, not at the timeout
        await asyncio.wait_for(closing, 30)
    assert b"event: history" in rest
    assert server.app[STATS]._subscribers == set()


# -- the page in real headless Chromium ---------------------------------------------------------------------
def _chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


class DevTools:
    """Just enough of the Chrome DevTools protocol: evaluate an expression, take a screenshot."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 30)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def chromium_page(
    binary: str, url: str, profile: Path, extra_flags: Sequence[str] = ()
) -> AsyncIterator[DevTools]:
    """Chromium with ``url`` open and a DevTools session on that page; the port is chosen by Chromium (port 0).

    ``extra_flags`` are added after the defaults (the scanner's test adds a fake camera)."""
    profile.mkdir(parents=True, exist_ok=True)
    log = (profile / "chromium.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        binary,
        *CHROMIUM_FLAGS,
        *extra_flags,
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        url,
        stdout=log,
        stderr=log,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        await wait_until(lambda: port_file.exists() and port_file.read_text().strip(), timeout=30)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            page: dict[str, Any] = {}

            async def page_listed() -> bool:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    targets = await r.json()
                page.update(next((t for t in targets if t["type"] == "page" and t["url"].startswith(url)), {}))
                return bool(page)

            await wait_until(page_listed, timeout=30)
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield DevTools(ws)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


READ_PAGE = """(() => {
  if (!window.dashboard) return null;  // still loading
  const tile = (k) => {
    const n = document.querySelector(`[data-metric="${k}"]`);
    return {text: n.textContent, value: n.dataset.value ?? ""};  // unset until the first point is drawn
  };
  const chart = (id) => {
    const s = document.getElementById(id);
    return {points: +(s.dataset.points || 0), max: +(s.dataset.max || 0), series: +(s.dataset.series || 0),
            paths: s.querySelectorAll('path').length};
  };
  const d = window.dashboard;
  return {connected: d.connected, mode: d.mode, updates: d.updates,
    accepted: tile('accepted_per_s'), rejected: tile('rejected_per_s'), verify: tile('verify_p99_ms'),
    batch: tile('batch_size_mean'), devices: tile('active_devices'),
    store: document.getElementById('store').textContent,
    scans: chart('chart-scans'), latency: chart('chart-latency'), backlog: chart('chart-backlog'),
    batchChart: chart('chart-batch'), legend: document.getElementById('legend-scans').textContent};
})()"""


@pytest.mark.browser
async def test_dashboard_in_headless_chromium(loaded_engine: tuple[str, Any, Load], tmp_path: Path) -> None:
    binary = _chromium()
    if binary is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; scripts/install.sh does it for CI)")
    url, _app, load = loaded_engine
    async with chromium_page(binary, url + "/dashboard", tmp_path / "profile") as page:
        seen: dict[str, Any] = {}

        async def page_shows_traffic() -> bool:
            seen.update(await page.evaluate(READ_PAGE) or {"connected": False})
            return bool(
                seen["connected"]
                and float(seen["accepted"]["value"] or 0) > 0
                and seen["scans"]["points"] >= 4
                and seen["scans"]["series"] >= 4
                and float(seen["verify"]["value"] or 0) > 0
            )

        await wait_until(page_shows_traffic, timeout=30, interval=0.25)
        # what the page rendered, as a person would read it
        assert seen["mode"] == "stream" and seen["store"] == "store up"
        assert float(seen["accepted"]["text"].rstrip("kM")) > 0 and float(seen["rejected"]["value"]) > 0
        assert float(seen["batch"]["value"]) >= 1 and seen["devices"]["text"] == "1"
        assert seen["scans"]["max"] > 0 and seen["scans"]["paths"] == seen["scans"]["series"]
        assert "ok" in seen["legend"] and "bad signature" in seen["legend"] and "rejected" in seen["legend"]
        assert seen["latency"]["series"] >= 2 and seen["latency"]["max"] > 0
        assert seen["backlog"]["points"] >= 4 and seen["batchChart"]["max"] >= 1
        # it keeps updating from the stream
        before = seen["updates"]
        await wait_until(lambda: _updates_after(page, before), timeout=10, interval=0.25)

        # a dozen seconds of history so the picture in the README shows a chart rather than a first tick
        await wait_until(lambda: _chart_points(page, "chart-scans", 12), timeout=30, interval=0.5)
        metrics = await page.call("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        shot = await page.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        )
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    (tmp_path / "dashboard.png").write_bytes(png)
    if os.environ.get("ENGINE_UPDATE_SCREENSHOT") == "1":  # refresh the README's picture only when asked
        (ROOT / "docs" / "dashboard.png").write_bytes(png)
    assert load.sent > 0


async def _updates_after(page: DevTools, before: int) -> bool:
    return int(await page.evaluate("window.dashboard.updates")) > before


async def _chart_points(page: DevTools, chart: str, at_least: int) -> bool:
    return int(await page.evaluate(f"+(document.getElementById('{chart}').dataset.points || 0)")) >= at_least
