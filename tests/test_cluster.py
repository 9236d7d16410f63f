"""Two engine nodes on a 2-shard ClickHouse cluster on loopback, under load, through the faults a deployment meets.

Everything is real: two ``python -m engine serve`` processes (each its own data directory and WAL, ``--dsn`` on
its own shard, ``--cluster`` with ``--shard-dsns`` naming both), two ClickHouse servers with ``remote_servers``
(engine/testing/clickhouse.py), signed requests from a load generator whose scanners are spread over both nodes
(even devices on node A, odd on node B), minted with their expected verdicts (loadtest/scenario.py). Scanners
behave as real ones: a batch without a 202 (refused connection, node killed, 503) is sent again later with the
same scan ids, and now and then a batch that did get a 202 is sent again (its answer "lost").

The run: load for a few seconds; ``kill -9`` node A and start it again on its data directory; then stop shard 2
for ``ENGINE_TEST_SHARD_OUTAGE_S`` (30) seconds under load, during which both WALs must hold what they
acknowledged (node B's coordinator is down; node A's inserts reach shard 1 only and fail); start it again, stop the
load, let both drains finish, and check with loadtest/checker.py's rules: every 202'd scan stored exactly once
(raw rows, no FINAL) with the verdict it was minted for, nothing stored that was refused or never sent.

The nodes are one deployment as docs/cluster.md sets one up: one person-key secret file both name with
``ENGINE_SECRET_FILE`` (its fingerprint recorded in the store by the first node, checked by the second), one
deployment root key (``ENGINE_TRUST_ROOT_KEY``) under which version 1 of the trust list is published to the store
before either node starts, devices registered in the store. Two more tests prove what makes them agree while they
run: a device revoked through node A is refused by node B within 5 s (registries refreshed from the store), and a
trust list published with ``trust publish`` is used by both nodes within seconds, without a restart.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from engine.codes.keys import write_key_file
from engine.codes.payload import b64url_encode
from engine.codes.trust_root import sign
from engine.deployment.trust import publish
from engine.devices.client import sign_request
from engine.store.store import Store
from engine.testing.clickhouse import ClickHouseCluster
from engine.testing.engines import EngineProcess, admin_headers
from loadtest.checker import check, load_results
from loadtest.scenario import Keyring, ScanMix

pytestmark = [pytest.mark.system, pytest.mark.slow]

OUTAGE_S = float(os.environ.get("ENGINE_TEST_SHARD_OUTAGE_S", "30"))
DEVICES = 8
DATABASE = "vnqr"


@dataclass
class Deployment:
    cluster: ClickHouseCluster
    nodes: list[EngineProcess]
    keys: Keyring
    root: Path
    root_key: Path  # the deployment root signing key (trust publish)

    def store(self, shard: int = 0) -> Store:
        return Store.connect(
            self.cluster[shard].dsn, database=DATABASE, cluster=self.cluster.name, shard_dsns=self.cluster.dsns
        )


def _node_env(cluster: ClickHouseCluster, shard: int, root: Path) -> dict[str, str]:
    return {
        "ENGINE_SECRET_FILE": str(root / "deployment.secret"),
        "ENGINE_TRUST_ROOT_KEY": str(root / "trust-root.pub"),
        "ENGINE_TRUST_LIST": str(root / "trust.json"),
        "ENGINE_DSN": cluster[shard].dsn,
        "ENGINE_DATABASE": DATABASE,
        "ENGINE_CLUSTER": cluster.name,
        "ENGINE_SHARD_DSNS": ",".join(cluster.dsns),
        "ENGINE_INSERT_INTERVAL_MS": "300",
        "ENGINE_BATCH_AGE_MS": "2",
        "ENGINE_VERIFY_THREADS": "1",
        "ENGINE_DEVICE_RATE": "1000",
        "ENGINE_DEVICE_BURST": "1000",
        "ENGINE_DEVICE_SCAN_RATE": "1000000",  # one device stands for a fleet here (issue 13 budgets)
        "ENGINE_DEVICE_SCAN_BURST": "1000000",
        "ENGINE_DEVICE_COLD_RATE": "1000000",
        "ENGINE_DEVICE_COLD_BURST": "1000000",
        "ENGINE_DEVICE_QUEUE_SHARE": "1",
        "ENGINE_LOG_LEVEL": "INFO",
        "ENGINE_GC_FREEZE": "0",
    }


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One deployment for the module: 2 shards, 2 nodes sharing one secret, one trust list and one registry."""
    root = tmp_path_factory.mktemp("deployment")
    keys = Keyring.create(DEVICES, prefix="cl-scanner")
    now = int(time.time())
    with ClickHouseCluster(2, root / "clickhouse") as cluster:
        (root / "deployment.secret").write_bytes(secrets.token_bytes(32))
        os.chmod(root / "deployment.secret", 0o600)
        root_key = write_key_file(root / "trust-root.key", "trust-root")
        (root / "trust-root.pub").write_text(b64url_encode(root_key.public_key) + "\n")
        trust = keys.trust_list(now)
        trust.save(root / "trust.json")
        dirs = [root / "node-a", root / "node-b"]
        for d in dirs:
            d.mkdir(mode=0o700)
        dep = Deployment(cluster, [], keys, root, root / "trust-root.key")
        store = dep.store()
        try:
            store.migrate()
            publish(store, root_key.public_key, sign(trust, root_key.signing_key, 1), "test fixture")
            for i in range(DEVICES):
                device_id, key = keys.device_key(i)
                store.upsert_device(device_id, bytes(key.verify_key), label=f"node {'AB'[i % 2]}")
        finally:
            store.close()
        dep.nodes = [EngineProcess(d, **_node_env(cluster, i, root)) for i, d in enumerate(dirs)]
        try:
            for node in dep.nodes:
                node.start()
            yield dep
        finally:
            for node in dep.nodes:
                if node.proc is not None and node.proc.poll() is None:
                    node.terminate()


# -- the load generator ------------------------------------------------------------------------------------------
@dataclass
class Load:
    """Scanners posting signed batches to their node, writing checker-format result lines (loadtest/checker.py)."""

    nodes: list[EngineProcess]
    keys: Keyring
    results: Path
    mix: ScanMix = field(init=False)
    statuses: Counter[str] = field(default_factory=Counter)
    acked_at: list[float] = field(default_factory=list)  # time of every 202
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.mix = ScanMix(self.keys, population=400, rng=random.Random(11))
        self.results.mkdir(parents=True, exist_ok=True)

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "the load generator did not stop"

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=20)
        with (self.results / "scans-cluster.jsonl").open("ab") as out:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                await asyncio.gather(*(self._device(session, i, out) for i in range(DEVICES)))

    async def _device(self, session: aiohttp.ClientSession, index: int, out: Any) -> None:
        device_id, key = self.keys.device_key(index)
        node = self.nodes[index % 2]
        rng = random.Random(index)
        venue = f"venue-{index}"
        pending: tuple[str, list[dict[str, Any]], list[str]] | None = None
        last: tuple[list[dict[str, Any]], list[str]] | None = None
        while not self._stop.is_set():
            if pending is not None:
                task, items, expected = pending
            elif last is not None and rng.random() < 0.08:
                task, (items, expected) = "retry", last
            else:
                task, (items, expected) = ("batch", self.mix.batch(rng.randint(10, 30), venue))
            body = orjson.dumps({"device_id": device_id, "scans": items})
            headers = {**sign_request(key, device_id, "POST", "/v1/scans", body), "Content-Type": "application/json"}
            line: dict[str, Any] = {"t": time.time(), "device": device_id, "task": task}
            try:
                async with session.post(node.url + "/v1/scans", data=body, headers=headers) as resp:
                    status, answer = resp.status, await resp.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status, answer = 0, type(exc).__name__.encode()
            line["status"] = status
            self.statuses[str(status)] += 1
            if status == 202:
                results = orjson.loads(answer)["results"]
                line["scans"] = [
                    [it["scan_id"], exp, r.get("status", "?"), r.get("verdict", "rejected")]
                    for it, exp, r in zip(items, expected, results, strict=True)
                ]
                self.acked_at.append(time.monotonic())
                pending, last = None, (items, expected)
            else:  # nothing promised: keep the batch and send it again, as a scanner's outbox does
                line["scans"] = [[it["scan_id"], exp] for it, exp in zip(items, expected, strict=True)]
                pending = (task if task != "retry" else "batch", items, expected)
            out.write(orjson.dumps(line) + b"\n")
            await asyncio.sleep(rng.uniform(0.02, 0.12) if status == 202 else 0.3)

    def acked_between(self, t0: float, t1: float) -> int:
        return sum(1 for t in list(self.acked_at) if t0 <= t <= t1)


def _wal(node: EngineProcess) -> dict[str, Any]:
    return dict(node.get_json("/v1/admin/wal", admin_headers(node.data_dir)))


def _wait_drained(nodes: list[EngineProcess], timeout: float = 120.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        states = [_wal(n) for n in nodes]
        if all(s["backlog_records"] == 0 for s in states) or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def _stored(dep: Deployment) -> dict[tuple[str, str], list[str]]:
    """(device, scan id) -> the verdict of every row stored under it, read through Distributed (raw rows, no
    FINAL): a scan's identity is the pair, as the checker keys it."""
    store = dep.store()
    try:
        rows = store.query(
            "SELECT device_id, toString(scan_id), toString(verdict), count() FROM scans GROUP BY 1, 2, 3"
        )
    finally:
        store.close()
    out: dict[tuple[str, str], list[str]] = {}
    for device, sid, verdict, n in rows:
        out.setdefault((str(device), str(sid)), []).extend([str(verdict)] * int(n))
    return out


# -- the proof ---------------------------------------------------------------------------------------------------
def test_two_nodes_two_shards_kill_9_and_a_shard_outage_lose_nothing(deployment: Deployment) -> None:
    dep = deployment
    node_a, _node_b = dep.nodes
    load = Load(dep.nodes, dep.keys, dep.root / "results").start()
    try:
        time.sleep(3)
        node_a.kill9()  # mid-load: requests in flight, batches in its WAL, an insert maybe half done
        time.sleep(1)
        node_a.start()  # same data directory and WAL, same port: its scanners' outboxes get through again
        time.sleep(2)

        assert dep.cluster[1].stop() is not None  # shard 2 (node B's own server) goes away under load
        outage_start = time.monotonic()
        time.sleep(max(0.0, OUTAGE_S - 3))
        held = [_wal(n)["backlog_records"] for n in dep.nodes]  # the WALs hold what the store cannot take
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_start)))
        outage_end = time.monotonic()
        dep.cluster[1].start()
        time.sleep(3)  # the drains resume by themselves, under load
    finally:
        load.stop()
    states = _wait_drained(dep.nodes)
    assert all(s["backlog_records"] == 0 for s in states), states

    acked_in_outage = load.acked_between(outage_start + 1, outage_end)
    assert acked_in_outage > 0 and all(h > 0 for h in held), (acked_in_outage, held, load.statuses)
    report = check(load_results(dep.root / "results"), _stored(dep))
    doc = report.as_dict()
    print(
        f"\n[cluster] requests by status {dict(load.statuses)}; {doc['scans_acknowledged']} scans acknowledged "
        f"({acked_in_outage} requests 202'd during the {OUTAGE_S:g} s shard outage, WAL backlogs then {held}); "
        f"stored {doc['stored_rows']} rows; lost {doc['lost']}, duplicates {doc['duplicates']}, mismatched "
        f"{doc['mismatched']}, phantoms {doc['phantoms']}"
    )
    assert doc["scans_acknowledged"] > 1000, doc
    assert (doc["lost"], doc["duplicates"], doc["mismatched"], doc["phantoms"]) == (0, 0, 0, 0), doc["examples"]
    assert doc["answer_mismatches"] == 0 and doc["generator_conflicts"] == 0, doc
    assert report.ok
    assert load.statuses["0"] > 0  # node A really was down for its scanners


# -- what needs branch nodes (one registry and one trust list per deployment, refreshed from the store) ------------
def test_a_revocation_through_node_a_is_refused_by_node_b_within_5_s(deployment: Deployment) -> None:
    """Node B read its devices at start; only its refresh from the store (every ``--registry-poll-s``) can tell it
    of a revocation made through node A. On main B kept accepting the device until it restarted."""
    node_a, node_b = deployment.nodes
    device_id, key = deployment.keys.device_key(1)  # one of node B's scanners
    node_a.post_json(f"/v1/admin/devices/{device_id}/revoke", b"{}", admin_headers(node_a.data_dir))
    revoked_at = time.monotonic()
    deadline = revoked_at + 5
    status = 0
    while time.monotonic() < deadline:
        body = orjson.dumps({"device_id": device_id, "scans": []})
        headers = {**sign_request(key, device_id, "POST", "/v1/scans", body), "Content-Type": "application/json"}
        request = urllib.request.Request(node_b.url + "/v1/scans", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        if status == 403:
            print(f"\n[cluster] revoked through node A, refused by node B {time.monotonic() - revoked_at:.2f} s later")
            return
        time.sleep(0.2)
    raise AssertionError(f"node B still answers {status} to a device revoked through node A 5 s ago")


def test_a_published_trust_list_is_used_by_both_nodes(deployment: Deployment, tmp_path: Path) -> None:
    """``trust publish`` signs a new version with the deployment root key and puts it in the store (through node
    A's admin API, which applies it at once); node B picks it up by polling. Both verify codes of an issuer only the
    new version trusts within a few seconds, without a restart or SIGHUP. On main there was no such command."""
    from nacl.signing import SigningKey

    from engine.codes.payload import Person, key_id, mint
    from engine.codes.trust import TrustedKey, TrustList

    now = int(time.time())
    issuer = SigningKey.generate()
    pk = bytes(issuer.verify_key)
    trust = TrustList.load(deployment.root / "trust.json")
    new = TrustList.build([*trust.keys, TrustedKey(key_id(pk), "vneid", pk, now - 86400, now + 86400 * 365)])
    path = tmp_path / "trust.json"
    new.save(path)
    node = deployment.nodes[0]
    done = subprocess.run(
        [
            *(sys.executable, "-m", "engine", "trust", "publish", "--trust-list", str(path)),
            *("--signing-key", str(deployment.root_key)),
        ],
        env={**node.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    published_at = time.monotonic()
    code = mint(Person("******000001", "LE VAN C", "1980-01-**", "VN0000000001"), issuer, iat=now - 60, exp=now + 86400)
    deadline = time.monotonic() + 10
    for index, target in enumerate(deployment.nodes):
        device_id, key = deployment.keys.device_key(index + 2)  # a scanner of that node (device 1 is revoked above)
        while True:
            item = {"scan_id": str(uuid.uuid4()), "qr": code, "venue_id": "v", "direction": "in"}
            item["scanned_at"] = int(time.time() * 1000)
            body = orjson.dumps({"device_id": device_id, "scans": [item]})
            headers = {**sign_request(key, device_id, "POST", "/v1/scans", body), "Content-Type": "application/json"}
            answer = target.post_json("/v1/scans", body, headers)
            if answer["results"][0]["verdict"] == "ok":
                break
            assert time.monotonic() < deadline, f"node {index} still says {answer['results'][0]}"
            time.sleep(0.1)
        print(
            f"\n[cluster] trust list published; node {'AB'[index]} uses it "
            f"{time.monotonic() - published_at:.2f} s later"
        )


# -- what the kill -9 above can leave behind ---------------------------------------------------------------------
def test_a_resent_batch_acknowledged_before_a_crash_is_a_duplicate_after_the_restart(
    tmp_path: Path, clickhouse_server: Any, clickhouse_database: str
) -> None:
    """A node killed after the WAL fsync but before its scanner read the 202: the scanner resends the batch to the
    restarted node, which must answer "duplicate" although the scans are still only in its WAL (the store's last
    hour, which seeds the recent-id map, cannot name them yet). Made real by stopping the server first."""
    from engine.testing.engines import device_registration, make_fixture

    fx = make_fixture(tmp_path / "node")
    node = EngineProcess(
        fx.data_dir, ENGINE_DSN=clickhouse_server.dsn, ENGINE_DATABASE=clickhouse_database, ENGINE_GC_FREEZE="0"
    ).start()
    try:
        node.post_json("/v1/admin/devices", device_registration(fx), admin_headers(fx.data_dir))
        clickhouse_server.stop()
        items = [{"scan_id": str(uuid.uuid4()), "qr": fx.code(i), "venue_id": "v", "direction": "in"} for i in range(5)]
        for item in items:
            item["scanned_at"] = int(time.time() * 1000)
        body = orjson.dumps({"device_id": "scanner-test-1", "scans": items})

        def send() -> list[str]:
            headers = sign_request(fx.device, "scanner-test-1", "POST", "/v1/scans", body)
            return [r["status"] for r in node.post_json("/v1/scans", body, headers)["results"]]

        assert send() == ["stored"] * 5
        node.kill9()
        clickhouse_server.start()
        node.start()
        assert send() == ["duplicate"] * 5
    finally:
        if not clickhouse_server.running:
            clickhouse_server.start()
        if node.proc is not None and node.proc.poll() is None:
            node.terminate()
