"""The verified-code set shared through the store (engine/ingest/codeset.py, migration 0011), on both stores.

One node verifies a code and publishes its entry; another node with the same deployment secret warm-loads it (or
picks it up by polling) and skips that code's signature. The attack: a row written straight into
``verified_codes`` by someone without the secret, for a forged code, is refused and the forged code is verified
(and fails); the same row with the right MAC would have let it pass, which is what makes the check matter.
Revoking a key masks its entries in memory and keeps them out of a warm load. Every test runs on the embedded
store and on a real ClickHouse server (``store_dsn``), with both verifier implementations.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

import numpy as np
import pytest
from nacl.signing import SigningKey

from engine.codes.payload import Person, key_id, mint
from engine.codes.trust import TrustedKey, TrustList
from engine.codes.verdicts import Verdict
from engine.devices.client import make_scan
from engine.ingest.codeset import SharedCodeSet, row_macs
from engine.ops.metrics import Metrics
from engine.store.store import Store
from engine.verify.contract import CodeBatch, code_tag, row_mac, set_key
from engine.verify.reference import PyVerifier

try:
    from engine import _verify
except ImportError:  # reported as a failure by test_verify_compiled.py
    _verify = None  # type: ignore[assignment]

IMPLS = [
    pytest.param(PyVerifier, id="py-verifier"),
    pytest.param(
        getattr(_verify, "CVerifier", None),
        id="c-verifier",
        marks=pytest.mark.skipif(_verify is None, reason="engine._verify not built"),
    ),
]
SECRET = hashlib.sha256(b"test_codeset:deployment").digest()
YEAR = 365 * 86_400


@pytest.fixture
def issuer() -> SigningKey:
    return SigningKey(hashlib.sha256(b"test_codeset:issuer").digest())


@pytest.fixture
def trust(issuer: SigningKey) -> TrustList:
    pk = bytes(issuer.verify_key)
    now = int(time.time())
    return TrustList.build([TrustedKey(key_id(pk), "test-issuer", pk, now - YEAR, now + YEAR)])


def code(issuer: SigningKey, i: int) -> bytes:
    now = int(time.time())
    person = Person(f"******{i:06d}", "NGUYEN VAN AN", "1990-01-**", f"QID{i:010d}")
    return mint(person, issuer, iat=now - 60, exp=now + 30 * 86_400).encode()


def forged(genuine: bytes) -> bytes:
    """The genuine code with another name: same signature, so its signature is bad."""
    out = genuine.replace(b"NGUYEN VAN AN", b"NGUYEN VAN AM", 1)
    assert out != genuine
    return out


def verify(v: Any, codes: list[bytes]) -> Any:
    return v.verify_batch(CodeBatch.from_codes(codes), int(time.time()))


@pytest.fixture
def store(store_dsn: Any) -> Any:
    s = store_dsn.connect()
    s.migrate()
    yield s
    s.close()


@pytest.mark.parametrize("factory", IMPLS)
def test_published_entries_warm_load_on_another_node(factory: Any, store: Store, trust: TrustList, issuer: Any) -> None:
    codes = [code(issuer, i) for i in range(20)]
    a, b = factory(trust.table(), SECRET), factory(trust.table(), SECRET)
    node_a = SharedCodeSet(store, Metrics(), SECRET, "node-a")
    first = verify(a, codes)
    assert (first.verdict == Verdict.OK).all() and first.newly_verified.all()
    node_a.collect(first, trust.table())
    assert node_a.publish() == 20 and node_a.pending_rows == 0
    stored = store.query("SELECT count(), uniqExact(tag), any(node) FROM verified_codes")
    assert stored == [(20, 20, "node-a")]

    metrics_b = Metrics()
    node_b = SharedCodeSet(store, metrics_b, SECRET, "node-b")
    added, refused, seconds = asyncio.run(node_b.warm_load(b, trust.table()))
    assert (added, refused) == (20, 0) and b.set_size == 20 and seconds >= 0
    again = verify(b, codes)
    assert (again.verdict == Verdict.OK).all() and again.cache_hit.all() and not again.newly_verified.any()
    assert metrics_b.codeset_loaded._value.get() == 20


@pytest.mark.parametrize("factory", IMPLS)
def test_a_row_written_without_the_secret_is_refused_and_the_code_verified(
    factory: Any, store: Store, trust: TrustList, issuer: Any
) -> None:
    """The attack: someone with write access to the store adds an entry for a forged code. Even given the forged
    code's exact tag (which needs the secret too), a row whose MAC is not the deployment's is refused."""
    bad = forged(code(issuer, 1))
    key = set_key(SECRET)
    tag, kid, exp = code_tag(key, bad), trust.keys[0].kid, int(time.time()) + 86_400
    wrong_macs = [os.urandom(16), row_mac(set_key(b"another deployment's secret...."), tag, kid, exp)]
    for mac in wrong_macs:
        store.insert_verified_codes(tag, kid, np.array([exp]), mac, "intruder")
    metrics = Metrics()
    v = factory(trust.table(), SECRET)
    added, refused, _ = asyncio.run(SharedCodeSet(store, metrics, SECRET, "n").warm_load(v, trust.table()))
    assert (added, refused) == (0, 2) and v.set_size == 0
    assert metrics.codeset_refused._value.get() == 2
    got = verify(v, [bad])
    assert got.verdict[0] == Verdict.BAD_SIGNATURE and not got.cache_hit[0]

    # the control: the same row under the deployment's MAC is what a node trusts, and then the signature is skipped
    store.insert_verified_codes(tag, kid, np.array([exp]), row_mac(key, tag, kid, exp), "a node with the secret")
    trusting = factory(trust.table(), SECRET)
    asyncio.run(SharedCodeSet(store, Metrics(), SECRET, "n").warm_load(trusting, trust.table()))
    assert verify(trusting, [bad]).verdict[0] == Verdict.OK


@pytest.mark.parametrize("factory", IMPLS)
def test_a_revoked_key_masks_its_entries_and_is_not_loaded(
    factory: Any, store: Store, trust: TrustList, issuer: Any
) -> None:
    codes = [code(issuer, i) for i in range(5)]
    node = SharedCodeSet(store, Metrics(), SECRET, "n")
    v = factory(trust.table(), SECRET)
    node.collect(verify(v, codes), trust.table())
    node.publish()
    revoked = trust.with_key_revoked(trust.keys[0].kid_text)
    v.set_trust(revoked.table())  # in memory: the entries stay, but revocation is checked before the set
    assert (verify(v, codes).verdict == Verdict.REVOKED_KEY).all()
    fresh = factory(revoked.table(), SECRET)
    added, refused, _ = asyncio.run(SharedCodeSet(store, Metrics(), SECRET, "m").warm_load(fresh, revoked.table()))
    assert (added, refused, fresh.set_size) == (0, 0, 0)


def test_expired_entries_are_neither_published_nor_loaded(store: Store, trust: TrustList, issuer: Any) -> None:
    now = int(time.time())
    old = mint(Person("******000009", "TRAN THI B", "1980-01-**", "QID0000000009"), issuer, iat=now - 99, exp=now - 9)
    v = PyVerifier(trust.table(), SECRET)
    node = SharedCodeSet(store, Metrics(), SECRET, "n")
    result = verify(v, [old.encode()])
    assert result.verdict[0] == Verdict.EXPIRED and result.newly_verified[0]  # remembered, so replays stay cheap
    node.collect(result, trust.table())
    assert node.publish() == 0
    key, kid = set_key(SECRET), trust.keys[0].kid
    tag = code_tag(key, old.encode())
    store.insert_verified_codes(tag, kid, np.array([now - 9]), row_mac(key, tag, kid, now - 9), "n")
    assert len(store.verified_codes(now=now)) == 0


def test_polls_pick_up_only_new_rows_after_the_warm_load(store: Store, trust: TrustList, issuer: Any) -> None:
    key, kid = set_key(SECRET), trust.keys[0].kid
    node = SharedCodeSet(store, Metrics(), SECRET, "n")
    assert len(node.read(since_last=False)) == 0
    exps = np.full(3, int(time.time()) + 3600, np.int64)
    tags = os.urandom(48)
    store.insert_verified_codes(tags, kid * 3, exps, row_macs(key, tags, kid * 3, exps), "other")
    first = node.read(since_last=True)
    assert sorted(np.frombuffer(first.tags, "V16").tolist()) == sorted(np.frombuffer(tags, "V16").tolist())
    assert row_macs(key, first.tags, first.kids, first.exps) == first.macs  # read back byte for byte
    later = os.urandom(16)
    store.insert_verified_codes(later, kid, exps[:1], row_macs(key, later, kid, exps[:1]), "other")
    second = node.read(since_last=True)
    assert later in np.frombuffer(second.tags, "V16").tobytes()


def test_a_warm_load_reads_only_the_newest_rows_the_set_can_hold(store: Store, trust: TrustList) -> None:
    """A node whose set (cache_size) is smaller than the deployment's reads the most recently added rows, up to
    its bound, rather than every row only to evict most of them; polls are not bounded (they are small)."""
    key, kid = set_key(SECRET), trust.keys[0].kid
    exps = np.full(15, int(time.time()) + 3600, np.int64)
    old, new = os.urandom(16 * 15), os.urandom(16 * 5)
    store.insert_verified_codes(old, kid * 15, exps, row_macs(key, old, kid * 15, exps), "earlier")
    time.sleep(0.02)  # added_at is in milliseconds
    store.insert_verified_codes(new, kid * 5, exps[:5], row_macs(key, new, kid * 5, exps[:5]), "later")
    rows = SharedCodeSet(store, Metrics(), SECRET, "small", max_entries=5).read(since_last=False)
    assert sorted(np.frombuffer(rows.tags, "V16").tolist()) == sorted(np.frombuffer(new, "V16").tolist())
    assert row_macs(key, rows.tags, rows.kids, rows.exps) == rows.macs
    assert len(SharedCodeSet(store, Metrics(), SECRET, "big", max_entries=50).read(since_last=False)) == 20


def test_row_macs_match_the_contract_one_row_at_a_time() -> None:
    key = set_key(SECRET)
    tags, kids = os.urandom(16 * 4), os.urandom(8 * 4)
    exps = np.array([-5, 0, 1, 2**40], np.int64)
    expected = b"".join(
        row_mac(key, tags[16 * i : 16 * i + 16], kids[8 * i : 8 * i + 8], int(exps[i])) for i in range(4)
    )
    assert row_macs(key, tags, kids, exps) == expected


# -- engines: the set through their real store, over HTTP ---------------------------------------------------------
def _metric(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


async def _metrics(e: Any) -> str:
    status, body = await e.ops.request("GET", "/metrics")
    assert status == 200
    return body.decode() if isinstance(body, bytes) else str(body)


async def test_an_engine_publishes_what_it_verified_and_reports_it(engine: Any, store_dsn: Any) -> None:
    """Embedded or server store: the engine's verified codes land in ``verified_codes`` with the deployment's
    MAC, batched after the scans' insert, and /metrics reports the set."""
    e = await engine(dsn=store_dsn.dsn, database=store_dsn.database, set_poll_s=0.2)
    codes = [e.fx.code(i) for i in range(6)]
    status, body = await e.client.post_scans([make_scan(c, "venue-1") for c in codes])
    assert status == 202 and {r["verdict"] for r in body["results"]} == {"ok"}
    await e.drained()
    rows = await e.query("SELECT tag, kid, exp, mac FROM verified_codes")
    assert len(rows) == 6
    key = set_key((e.fx.data_dir / "person_key.secret").read_bytes())
    tags = {code_tag(key, c.encode()) for c in codes}
    for tag, kid, exp, mac in rows:
        tag, kid, mac = (x if isinstance(x, bytes) else x.encode("latin-1") for x in (tag, kid, mac))
        assert tag in tags and row_mac(key, tag, kid, exp) == mac
    text = await _metrics(e)
    assert _metric(text, "engine_codeset_entries") == 6
    assert _metric(text, "engine_codeset_published_total") == 6
    assert _metric(text, "engine_codeset_publish_lag_seconds_count") >= 1
    assert _metric(text, "engine_codeset_evictions_total") == 0


async def test_a_second_node_picks_up_the_first_nodes_codes_within_seconds(
    engine: Any, clickhouse_server: Any, clickhouse_database: str
) -> None:
    """Two nodes of one deployment (same secret and trust list) on one ClickHouse server: a code verified on the
    first is a set hit on the second, which never saw it, within a few poll intervals."""
    dsn = {"dsn": clickhouse_server.dsn, "database": clickhouse_database, "set_poll_s": 0.2}
    a = await engine(**dsn)

    def same_deployment(data_dir: Any) -> dict[str, Any]:
        for name in ("person_key.secret", "trust.json"):
            (data_dir / name).write_bytes((a.fx.data_dir / name).read_bytes())
            (data_dir / name).chmod(0o600)
        return {}

    b = await engine(prepare=same_deployment, **dsn)
    codes = [a.fx.code(100 + i) for i in range(8)]
    status, _ = await a.client.post_scans([make_scan(c, "venue-a") for c in codes])
    assert status == 202
    t0 = time.monotonic()
    verifier_b = b.rt.batcher.verifier
    while verifier_b.set_size < 8:
        assert time.monotonic() - t0 < 10, f"node b holds {verifier_b.set_size} of 8 entries after 10 s"
        await asyncio.sleep(0.05)
    hits = verifier_b.cache_hits
    status, body = await b.client.post_scans([make_scan(c, "venue-b") for c in codes])
    assert status == 202 and {r["verdict"] for r in body["results"]} == {"ok"}
    assert verifier_b.cache_hits - hits == 8  # no signature verified on node b
    assert _metric(await _metrics(b), "engine_codeset_loaded_total") >= 8


async def test_an_engine_refuses_a_row_written_without_the_secret_and_verifies_the_code(
    engine: Any, clickhouse_server: Any, clickhouse_database: str
) -> None:
    """The attack end to end, on a real ClickHouse server: someone with write access to the store inserts a set
    row for a forged code straight into ``verified_codes`` (even with the forged code's exact tag, which itself
    needs the secret). The running engine's poll reads it, refuses it (counted), and the forged code posted
    afterwards is verified and rejected. The control: the same row under the deployment's MAC makes the engine
    skip the signature, so the check is what stands between the row and a forged ``ok``."""
    e = await engine(dsn=clickhouse_server.dsn, database=clickhouse_database, set_poll_s=0.1)
    key = set_key((e.fx.data_dir / "person_key.secret").read_bytes())
    bad = forged(e.fx.code(7).encode())
    tag, kid, exp = code_tag(key, bad), e.fx.trust.keys[0].kid, int(time.time()) + 86_400
    writer = Store.connect(clickhouse_server.dsn, database=clickhouse_database)
    try:
        writer.insert_verified_codes(tag, kid, np.array([exp]), os.urandom(16), "intruder")
        t0 = time.monotonic()
        while _metric(await _metrics(e), "engine_codeset_refused_total") < 1:
            assert time.monotonic() - t0 < 10, "the engine's poll never read the intruder's row"
            await asyncio.sleep(0.05)
        status, body = await e.client.post_scans([make_scan(bad.decode(), "venue-1")])
        assert status == 202 and body["results"][0]["verdict"] == "bad_signature"
        assert e.rt.batcher.verifier.set_size == 0

        writer.insert_verified_codes(tag, kid, np.array([exp]), row_mac(key, tag, kid, exp), "a node with the secret")
        while e.rt.batcher.verifier.set_size < 1:
            assert time.monotonic() - t0 < 20, "the engine's poll never loaded the authentic row"
            await asyncio.sleep(0.05)
        status, body = await e.client.post_scans([make_scan(bad.decode(), "venue-1")])
        assert status == 202 and body["results"][0]["verdict"] == "ok"  # what the MAC check alone prevents
    finally:
        writer.close()
