"""Nodes that agree (issue 15): one secret, one signed trust list, one registry per deployment.

Each refusal is tested where it is decided, on the real stores: the fingerprint check on the embedded store and on
a ClickHouse server, the signed trust list's checks on a server with a running engine polling it, and the
registries (devices, tracers, admin tokens) refreshed from a server while an engine runs. Every test here fails on
the code before branch ``nodes``: there was no fingerprint, no signed list, and registries were read once.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from engine.codes.keys import write_key_file
from engine.codes.payload import Person, b64url_encode, key_id, mint
from engine.codes.trust import TrustedKey, TrustList
from engine.codes.trust_root import TrustListRefused, sign, verify
from engine.deployment.secret import check_fingerprint, fingerprint
from engine.deployment.trust import TrustFeed, publish
from engine.devices.client import make_scan
from engine.errors import ConfigError
from engine.ops.metrics import Metrics
from engine.store.store import Store
from engine.testing.engines import admin_headers
from engine.tracing.credentials import StoredCredentials

YEAR = 365 * 86_400


def _store(target: Any) -> Store:
    store = Store.connect(target.dsn, database=target.database)
    store.migrate()
    return store


# -- one secret ----------------------------------------------------------------------------------------------
def test_a_node_whose_secret_differs_from_the_recorded_fingerprint_is_refused(store_dsn: Any) -> None:
    """The first node records its secret's fingerprint; a node with another secret is refused with a message that
    names both fingerprints and the fix, and the recorded one never changes. The store holds no secret."""
    store = _store(store_dsn)
    try:
        first, other = secrets.token_bytes(32), secrets.token_bytes(32)
        assert check_fingerprint(store, first, "node-a", "a.secret") == fingerprint(first)
        assert check_fingerprint(store, first, "node-c", "c.secret") == fingerprint(first)  # same secret: welcome
        with pytest.raises(ConfigError) as refused:
            check_fingerprint(store, other, "node-b", "b.secret")
        text = str(refused.value)
        assert "refusing to start" in text and fingerprint(other)[:12] in text and fingerprint(first)[:12] in text
        assert "--secret-file" in text and "node-a" in text
        rows = store.query("SELECT value FROM deployment")
        assert {r[0] for r in rows} == {fingerprint(first)}  # the refused node wrote nothing
        assert first.hex() not in str(rows) and other.hex() not in str(rows)
    finally:
        store.close()


async def test_an_engine_with_its_own_secret_does_not_start_on_a_deployments_store(
    engine: Any, clickhouse_server: Any, clickhouse_database: str
) -> None:
    """Two data directories, each creating its own secret (what main did): the second engine is refused at start;
    with ``secret_file`` naming the first one's secret it starts."""
    dsn = {"dsn": clickhouse_server.dsn, "database": clickhouse_database}
    a = await engine(**dsn)
    b = await engine(secret_file=a.fx.data_dir / "person_key.secret", **dsn)
    assert b.rt.batcher.verifier is not None
    with pytest.raises(ConfigError, match="is not the deployment's"):
        await engine(**dsn)  # last: a refused start leaves its data directory's WAL locked in this process


# -- one signed trust list ------------------------------------------------------------------------------------
def _issuer_list(now: int, *issuers: SigningKey) -> TrustList:
    return TrustList.build(
        TrustedKey(key_id(bytes(k.verify_key)), f"issuer-{i}", bytes(k.verify_key), now - YEAR, now + YEAR)
        for i, k in enumerate(issuers)
    )


def test_signed_trust_lists_are_refused_when_the_signature_or_the_version_is_wrong() -> None:
    root, stranger = SigningKey.generate(), SigningKey.generate()
    public = bytes(root.verify_key)
    now = int(time.time())
    trust = _issuer_list(now, SigningKey.generate())
    good = verify(sign(trust, root, 3), public)
    assert good.version == 3 and good.trust == trust
    with pytest.raises(TrustListRefused) as bad:
        verify(sign(trust, stranger, 4), public)
    assert bad.value.reason == "bad_signature" and "not signed by this deployment's root key" in str(bad.value)
    # the version is inside the signature: raising it on a genuine document breaks the signature
    doc = sign(trust, root, 3).replace(b'"version": 3', b'"version": 9')
    with pytest.raises(TrustListRefused, match="not signed") as edited:
        verify(doc, public)
    assert edited.value.reason == "bad_signature"
    with pytest.raises(TrustListRefused) as plain:
        verify(trust.to_json(), public)
    assert plain.value.reason == "unsigned"


def test_a_node_refuses_a_rollback_even_across_a_restart(store_dsn: Any, tmp_path: Path) -> None:
    """A node that ran version 2 keeps refusing version 1 after a restart, though the file it is given and the
    store (rows lost or rewritten) offer only version 1; publishing a version not above the store's is refused."""
    store = _store(store_dsn)
    root = SigningKey.generate()
    public = bytes(root.verify_key)
    now = int(time.time())
    v1, v2 = _issuer_list(now, SigningKey.generate()), _issuer_list(now, SigningKey.generate())
    try:
        publish(store, public, sign(v1, root, 1), "test")
        publish(store, public, sign(v2, root, 2), "test")
        with pytest.raises(TrustListRefused, match="not above version 2") as again:
            publish(store, public, sign(v1, root, 2), "test")
        assert again.value.reason == "rollback"
        metrics = Metrics()
        assert TrustFeed(store, public, metrics, tmp_path, None, "n").load_at_start().version == 2
        store.command("TRUNCATE TABLE trust_lists")  # the store forgets version 2
        publish(store, public, sign(v1, root, 1), "test")
        (tmp_path / "trust.json").write_bytes(sign(v1, root, 1))
        restarted = TrustFeed(store, public, metrics, tmp_path, tmp_path / "trust.json", "n")
        assert restarted.load_at_start().version == 2 and restarted.current is not None
        assert restarted.current.trust == v2
        refused = metrics.trust_list_refused.labels(reason="rollback")._value.get()
        assert refused == 1  # the file's version 1 (the store's is not even read: only versions >= 2 are)
    finally:
        store.close()


def _root_files(tmp_path: Path) -> tuple[Any, Path]:
    key = write_key_file(tmp_path / "root.key", "trust-root")
    (tmp_path / "root.pub").write_text(b64url_encode(key.public_key) + "\n")
    return key, tmp_path / "root.pub"


async def test_an_engine_polls_signed_versions_and_refuses_a_forged_one(
    engine: Any, clickhouse_server: Any, clickhouse_database: str, tmp_path: Path
) -> None:
    """A running engine with a root key: a version someone wrote into ``trust_lists`` without the root key (an
    issuer key of theirs added) is refused and counted, codes of that issuer stay ``unknown_key``; the next genuine
    version is in force within a few polls. Before branch nodes the store's trust lists were read by nobody."""
    root, public_file = _root_files(tmp_path)
    now = int(time.time())

    def signed_v1(data_dir: Path) -> dict[str, Any]:
        # the fixture's own issuer, as version 1 in the trust list file, signed
        (data_dir / "trust.json").write_bytes(sign(TrustList.load(data_dir / "trust.json"), root.signing_key, 1))
        return {}

    e = await engine(
        prepare=signed_v1,
        dsn=clickhouse_server.dsn,
        database=clickhouse_database,
        trust_root_key=public_file,
        trust_poll_s=0.1,
    )
    assert e.rt.trust_feed.current.version == 1
    attacker, issuer = SigningKey.generate(), SigningKey.generate()
    grown = e.rt.trust.with_key(
        TrustedKey(key_id(bytes(issuer.verify_key)), "new", bytes(issuer.verify_key), now - YEAR, now + YEAR)
    )
    forged = sign(grown, attacker, 2)
    e.rt.store.insert_rows(
        "trust_lists",
        ["version", "published_at", "document", "publisher"],
        ["UInt64", "DateTime64(3, 'UTC')", "String", "String"],
        [[2], [now], [forged.decode()], ["someone with store access"]],
    )
    code = mint(
        Person("******000009", "NGUYEN VAN D", "1990-01-**", "VN0000000009"), issuer, iat=now - 60, exp=now + 3600
    )
    deadline = time.monotonic() + 10
    while e.rt.metrics.trust_list_refused.labels(reason="bad_signature")._value.get() < 1:
        assert time.monotonic() < deadline, "the forged version was never looked at"
        await asyncio.sleep(0.05)
    status, body = await e.client.post_scans([make_scan(code, "v")])
    assert status == 202 and body["results"][0]["verdict"] == "unknown_key"
    assert e.rt.trust_feed.current.version == 1
    await asyncio.to_thread(publish, e.rt.store, root.public_key, sign(grown, root.signing_key, 3), "test")
    while e.rt.trust_feed.current.version != 3:
        assert time.monotonic() < deadline + 5, "the genuine version 3 was not picked up"
        await asyncio.sleep(0.05)
    status, body = await e.client.post_scans([make_scan(code, "v")])
    assert status == 202 and body["results"][0]["verdict"] == "ok"
    assert e.rt.metrics.trust_list_version._value.get() == 3


# -- one registry ---------------------------------------------------------------------------------------------
async def test_devices_tracers_and_admin_tokens_written_elsewhere_reach_a_running_engine_within_5_s(
    engine: Any, clickhouse_server: Any, clickhouse_database: str
) -> None:
    """What another node or a CLI on another host writes into the store: the engine's device is revoked, a tracer
    and an admin token are added. Each takes effect on the running engine within 5 s; on main none did."""
    e = await engine(dsn=clickhouse_server.dsn, database=clickhouse_database, registry_poll_s=0.2)
    other = Store.connect(clickhouse_server.dsn, database=clickhouse_database)  # another process's store client
    try:
        tracer_token = StoredCredentials(other, "tracer").add("epi-elsewhere")
        admin_token = StoredCredentials(other, "admin").add("ops-elsewhere")
        (device,) = [d for d in other.devices() if d.device_id == e.client.device_id]
        other.upsert_device(device.device_id, device.public_key, revoked=True, label=device.label)
        deadline = time.monotonic() + 5
        while True:
            status, _ = await e.client.post_scans([make_scan(e.fx.code(1), "v")])
            trace_status, _ = await e.client.request(
                "GET",
                "/v1/trace/venue?venue_id=v&case_id=HN-2026-9",
                headers_override={"Authorization": f"Bearer {tracer_token}"},
            )
            admin_status, _ = await e.client.request(
                "GET", "/v1/admin/wal", headers_override={"Authorization": f"Bearer {admin_token}"}
            )
            if (status, trace_status, admin_status) == (403, 200, 200):
                break
            assert time.monotonic() < deadline, (status, trace_status, admin_status)
            await asyncio.sleep(0.1)
        StoredCredentials(other, "admin").revoke("ops-elsewhere")
        while (
            await e.client.request("GET", "/v1/admin/wal", headers_override={"Authorization": f"Bearer {admin_token}"})
        )[0] != 401:
            assert time.monotonic() < deadline + 5, "a revoked admin token still works"
            await asyncio.sleep(0.1)
        # the engine's own admin token (its data directory's) is in the deployment's registry too
        names = {t.name for t in StoredCredentials(other, "admin").tracers()}
        assert any(n.startswith("node ") for n in names)
        status, _ = await e.client.request("GET", "/v1/admin/wal", headers_override=admin_headers(e.fx.data_dir))
        assert status == 200
    finally:
        other.close()


def test_a_refresh_never_undoes_a_change_made_here_after_its_read_began() -> None:
    """The race a poll has with an admin call on the same node: the snapshot was read before the revocation
    through this node reached the store, and arrives after it. The revocation stands; the next snapshot (read
    after it) decides. A partial snapshot (what changed lately) leaves every other device as it was."""
    from engine.devices.auth import Device, DeviceRegistry

    keys = [bytes(SigningKey.generate().verify_key) for _ in range(3)]
    devices = [Device(f"d{i}", k) for i, k in enumerate(keys)]
    registry = DeviceRegistry(devices)
    generation = registry.generation  # the poll starts reading here
    registry.revoke("d0")  # an admin call on this node, while the poll reads
    assert registry.refresh(devices, generation) == 0  # the stale snapshot still says d0 is active
    assert registry.get("d0").revoked
    revoked_elsewhere = Device("d1", keys[1], revoked=True)
    assert registry.refresh([revoked_elsewhere], registry.generation, complete=False) == 1
    assert registry.get("d1").revoked and registry.get("d2") is not None and registry.get("d0").revoked
    assert registry.refresh([Device("d0", keys[0], revoked=True), revoked_elsewhere], registry.generation) == 1
    assert registry.get("d2") is None  # gone from a complete snapshot: dropped


async def test_the_admin_api_publishes_a_signed_version_at_once_and_refuses_a_forged_or_older_one(
    engine: Any, tmp_path: Path
) -> None:
    """The embedded store (one node, no poll): ``POST /v1/admin/trust/publish`` is how ``trust publish`` reaches it.
    A document signed by another key is 422 and changes nothing; a genuine version 2 is in force for the very next
    scan; publishing version 2 again, or version 1, is 422 (no rollback); a node without a root key answers 409."""
    root, public_file = _root_files(tmp_path)
    now = int(time.time())

    def signed_v1(data_dir: Path) -> dict[str, Any]:
        (data_dir / "trust.json").write_bytes(sign(TrustList.load(data_dir / "trust.json"), root.signing_key, 1))
        return {}

    e = await engine(prepare=signed_v1, trust_root_key=public_file)
    admin = admin_headers(e.fx.data_dir)
    issuer = SigningKey.generate()
    grown = e.rt.trust.with_key(
        TrustedKey(key_id(bytes(issuer.verify_key)), "new", bytes(issuer.verify_key), now - YEAR, now + YEAR)
    )
    code = mint(Person("******000010", "TRAN THI E", "1991-02-**", "VN0000000010"), issuer, iat=now - 60, exp=now + 600)
    status, body = await e.client.request(
        "POST", "/v1/admin/trust/publish", sign(grown, SigningKey.generate(), 2), headers_override=admin
    )
    assert status == 422 and "not signed by this deployment's root key" in body["message"], body
    assert (await e.client.post_scans([make_scan(code, "v")]))[1]["results"][0]["verdict"] == "unknown_key"
    status, body = await e.client.request(
        "POST", "/v1/admin/trust/publish", sign(grown, root.signing_key, 2), headers_override=admin
    )
    assert status == 200 and body["version"] == 2, body
    assert (await e.client.post_scans([make_scan(code, "v")]))[1]["results"][0]["verdict"] == "ok"
    for version in (2, 1):
        status, body = await e.client.request(
            "POST", "/v1/admin/trust/publish", sign(grown, root.signing_key, version), headers_override=admin
        )
        assert status == 422, (version, body)
    status, body = await e.client.request("GET", "/v1/admin/trust", headers_override=admin)
    assert status == 200 and body["version"] == 2 and body["store_version"] == 2
    assert (e.fx.data_dir / "trust.signed.json").exists()  # the node's high-water mark for its next start


async def test_a_node_reading_a_plain_trust_list_refuses_a_published_version(engine: Any, tmp_path: Path) -> None:
    root, _ = _root_files(tmp_path)
    plain = await engine()
    status, body = await plain.client.request(
        "POST",
        "/v1/admin/trust/publish",
        sign(plain.rt.trust, root.signing_key, 1),
        headers_override=admin_headers(plain.fx.data_dir),
    )
    assert status == 409 and "--trust-root-key" in body["message"]


def test_a_secret_file_must_exist_and_be_private(tmp_path: Path) -> None:
    """A node never makes up a deployment's secret: a missing ``--secret-file`` is an error, not a new secret."""
    from engine.config import Config
    from engine.deployment.secret import read_secret

    path = tmp_path / "deployment.secret"
    cfg = Config(data_dir=tmp_path / "data", secret_file=path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_secret(cfg)
    assert not path.exists() and not (tmp_path / "data" / "person_key.secret").exists()
    path.write_bytes(secrets.token_bytes(32))
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_secret(cfg)
    path.chmod(0o600)
    assert read_secret(cfg) == path.read_bytes()
    path.write_bytes(b"short")
    with pytest.raises(Exception, match="too short"):
        read_secret(cfg)


def _cli(*args: str | Path) -> Any:
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True, timeout=120, env=clean
    )


def test_trust_cli_signs_publishes_and_refuses_an_old_version_with_no_engine_running(tmp_path: Path) -> None:
    """``trust root-key``, ``trust publish`` (straight into the embedded store: no engine runs) and ``trust status``,
    as an operator types them; a version not above the store's is refused with the version to use."""
    from engine.testing.engines import make_fixture

    fx = make_fixture(tmp_path / "data")
    done = _cli("trust", "root-key", "--out", tmp_path / "root.key", "--public-out", tmp_path / "root.pub")
    assert done.returncode == 0, done.stderr
    where = ("--data-dir", fx.data_dir, "--trust-root-key", tmp_path / "root.pub")
    publish_args = (
        "trust",
        "publish",
        "--trust-list",
        fx.data_dir / "trust.json",
        "--signing-key",
        tmp_path / "root.key",
    )
    done = _cli(*publish_args, *where)
    assert done.returncode == 0, done.stderr
    assert '"version": 1' in done.stdout and "directly in the store" in done.stdout
    again = _cli(*publish_args, "--version", "1", *where)
    assert again.returncode != 0 and "not above version 1" in again.stderr, again.stderr
    status = _cli("trust", "status", *where)
    assert status.returncode == 0 and '"store_version": 1' in status.stdout, status.stderr


def test_tracers_and_admin_tokens_on_a_server_store_are_one_registry_for_every_data_directory(
    tmp_path: Path, clickhouse_server: Any, clickhouse_database: str
) -> None:
    """``tracer-add`` on host A's data directory, ``tracer-list`` and ``tracer-revoke`` on host B's: one registry
    (before branch nodes each data directory had its own tracers.json). ``admin-token-add`` needs a server."""
    store_args = ("--dsn", clickhouse_server.dsn, "--database", clickhouse_database)
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir(mode=0o700)
    added = _cli("tracer-add", "epi-hn", "--data-dir", a, *store_args)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    listed = _cli("tracer-list", "--json", "--data-dir", b, *store_args)
    assert listed.returncode == 0 and '"epi-hn"' in listed.stdout, listed.stderr
    store = Store.connect(clickhouse_server.dsn, database=clickhouse_database)
    try:
        assert StoredCredentials(store, "tracer").authenticate(token).name == "epi-hn"
        assert _cli("tracer-revoke", "epi-hn", "--data-dir", b, *store_args).returncode == 0
        with pytest.raises(Exception, match="revoked"):
            StoredCredentials(store, "tracer").authenticate(token)
        assert not (a / "tracers.json").exists() and not (b / "tracers.json").exists()
        admin = _cli("admin-token-add", "ops-1", "--data-dir", a, *store_args)
        assert admin.returncode == 0, admin.stderr
        assert StoredCredentials(store, "admin").authenticate(admin.stdout.strip()).name == "ops-1"
    finally:
        store.close()
    single = _cli("admin-token-add", "ops-2", "--data-dir", tmp_path / "single")
    assert single.returncode != 0 and "deployment admin tokens need a ClickHouse server" in single.stderr
