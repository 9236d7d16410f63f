"""Drain poison handling, a verifier bug and a stalled WAL, against real engines (issue 13, point 4).

Every test here failed on the code before this change: the drain retried a record it could never store forever
(with ``engine_store_up`` 0, the wrong cause, and the WAL held until its budget), a verifier exception reached
devices as 503 "overloaded", and a WAL append that never returned held its requests for ever.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from typing import Any

import numpy as np
import orjson
import pytest

from engine.devices.client import make_scan
from engine.errors import StoreError
from engine.ingest import record
from engine.ingest.drain import refused_for_good
from engine.store.columns import rows_from_columns
from engine.testing.engines import InProcessEngine, wait_until

ENGINE_DEFAULTS = {"device_rate": 100_000.0, "device_burst": 100_000.0}


def _record_with_device_code(code: int) -> bytes:
    """A well-formed WAL record whose row names device #``code`` of a one-entry dictionary: it decodes, and can
    never become an insert (what a bit flip in a code column, or a bug in a past encoder, leaves)."""
    at = np.array([int(time.time() * 1000)], dtype="datetime64[ms]")
    rows = rows_from_columns(
        {
            "scan_id": [uuid.uuid4()], "device_id": ["poison"], "venue_id": ["venue-p"], "direction": ["in"],
            "scanned_at": at, "received_at": at, "verdict": ["ok"], "reason": ["none"], "code_kind": ["signed"],
            "person_key": [b"\x01" * 16], "qr_id": ["QP"], "key_id": [""], "issuer": [""],
            "code_iat": np.zeros(1, dtype="datetime64[s]"), "code_exp": np.zeros(1, dtype="datetime64[s]"),
        }
    )  # fmt: skip
    return record.encode(dataclasses.replace(rows, device_code=np.array([code], np.int32)))


async def _post(e: InProcessEngine, n: int, tag: int) -> tuple[int, dict[str, Any]]:
    scans = [make_scan(e.fx.code(tag * 1000 + i), f"venue-{i % 5}") for i in range(n)]
    return await e.client.post_scans(scans)


async def _metric(e: InProcessEngine, name: str) -> float:
    status, text = await e.ops.request("GET", "/metrics")
    assert status == 200
    for line in str(text).splitlines():
        if line.startswith(name + " ") or line.startswith(name + "_total "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


async def test_poison_records_are_quarantined_and_every_other_record_is_stored(engine: Any) -> None:
    """An undecodable record and one that decodes but can never be inserted sit between honest batches in a
    running engine's WAL. Both go to the dead-letter directory with their LSNs, counted and logged; every honest
    scan reaches the store; the store stays "up" and the node ready. On the old drain the first poison record
    raised in every step for ever: nothing after it was stored (this test timed out waiting for the drain)."""
    e = await engine()
    status, body = await _post(e, 40, 1)
    assert status == 202 and body["stored"] == 40
    wal = e.rt.wal
    garbage_lsn = await asyncio.to_thread(wal.append, [b"VQR3 not a batch record at all"])
    refused_lsn = await asyncio.to_thread(wal.append, [_record_with_device_code(7)])
    e.rt.drain.notify()
    for tag in (2, 3):
        status, body = await _post(e, 40, tag)
        assert status == 202 and body["stored"] == 40, body
    await wait_until(lambda: wal.backlog_records == 0, timeout=30)
    ((count, unique),) = await e.query("SELECT count(), uniqExact(device_id, scan_id) FROM scans")
    assert (count, unique) == (120, 120)  # every honest scan, the poison row not
    dead = e.rt.drain.dead_letter_dir
    assert (dead / f"lsn-{garbage_lsn}-{garbage_lsn}.rec").read_bytes() == b"VQR3 not a batch record at all"
    meta = orjson.loads((dead / f"lsn-{refused_lsn}-{refused_lsn}.json").read_bytes())
    assert (
        meta["first_lsn"] == meta["last_lsn"] == refused_lsn and "cannot be stored (refused for good)" in meta["reason"]
    )
    assert "cannot be decoded" in orjson.loads((dead / f"lsn-{garbage_lsn}-{garbage_lsn}.json").read_bytes())["reason"]
    assert await _metric(e, "engine_wal_quarantined_records") == 2
    assert await _metric(e, "engine_store_up") == 1
    status, ready = await e.client.request("GET", "/readyz")
    assert status == 200 and ready == {"ready": True, "cause": "ok"}


async def test_store_outage_is_retried_not_quarantined(engine: Any) -> None:
    """A store that does not answer (its table detached) is a transient failure: nothing is quarantined, the
    drain backs off (with jitter) and stores everything once the table is back."""
    e = await engine()
    await e.rt.in_store_thread(e.rt.store.command, "DETACH TABLE scans")
    try:
        status, body = await _post(e, 30, 1)
        assert status == 202, body
        await wait_until(lambda: e.rt.drain.last_error != "", timeout=10)
        await asyncio.sleep(0.5)  # a few retries
        assert e.rt.wal.backlog_records > 0
    finally:
        await e.rt.in_store_thread(e.rt.store.command, "ATTACH TABLE scans")
    await wait_until(lambda: e.rt.wal.backlog_records == 0, timeout=30)
    assert await _metric(e, "engine_wal_quarantined_records") == 0
    ((count,),) = await e.query("SELECT count() FROM scans")
    assert count == 30


def test_only_content_refusals_count_as_for_good() -> None:
    """What the drain quarantines: a content refusal while the store answers; never a transport failure, a
    timeout, too many parts, a missing table or an unknown code (those are retried)."""
    assert refused_for_good(StoreError("insert failed: Code: 27. DB::Exception: Cannot parse input"))
    assert refused_for_good(IndexError("index 7 out of bounds"))
    for text in (
        "connection refused: no ClickHouse server listens there",
        "insert failed: Code: 252. DB::Exception: Too many parts",
        "insert failed: Code: 60. DB::Exception: Table vnqr.scans does not exist. (UNKNOWN_TABLE)",
        "insert failed: Code: 241. DB::Exception: Memory limit exceeded",
        "insert failed: Code: 9999. something new",
    ):
        assert not refused_for_good(StoreError(text)), text


class _FailingVerifier:
    """The engine's verifier with a bug: every batch raises (what a crash in verify_batch looks like)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def verify_batch(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("verifier bug for the test")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_verifier_exception_is_a_500_with_an_error_id(engine: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A bug in the verifier is the engine's fault, not load: devices get 500 "internal" with an error id that
    names the log line holding the traceback (it was 503 "overloaded", which has every device retry into it)."""
    e = await engine()
    batcher = e.rt.batcher
    batcher._verifier = _FailingVerifier(batcher._verifier)
    status, body = await _post(e, 5, 1)
    assert status == 500 and body["error"] == "internal", body
    error_id = body["message"].split()[2]
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)
    batcher._verifier = batcher._verifier._inner  # the bug fixed: the same scans are taken
    status, body = await _post(e, 5, 2)
    assert status == 202 and body["stored"] == 5


async def test_a_stalled_wal_append_fails_its_requests_in_time(engine: Any) -> None:
    """A WAL append that does not return (a hung disk) fails its requests with 503 after --wal-append-timeout-s
    and /readyz says wal_stalled; once the disk answers again the node takes scans. Before, the requests waited
    for ever (this test's client gave up after 10 s)."""
    e = await engine(wal_append_timeout_s=0.5)
    wal = e.rt.wal
    real_append = wal.append
    gate = threading.Event()

    def hung_append(payloads: Any) -> int:
        gate.wait(20)
        return real_append(payloads)

    wal.append = hung_append  # type: ignore[method-assign]
    try:
        t0 = time.monotonic()
        status, body = await asyncio.wait_for(_post(e, 5, 1), 10)
        assert status == 503 and "did not finish within 0.5 s" in body["message"], body
        assert time.monotonic() - t0 < 5
        status, ready = await e.client.request("GET", "/readyz")
        assert status == 503 and ready["cause"] == "wal_stalled"
    finally:
        wal.append = real_append  # type: ignore[method-assign]
        gate.set()
    await wait_until(lambda: not e.rt.batcher.wal_stalled, timeout=10)
    status, body = await _post(e, 5, 2)
    assert status == 202 and body["stored"] == 5
