"""WAL batch records and store rows: real codes, a real verifier, a real chdb store.

A verified batch goes through exactly what the engine does with it (``batch_rows`` → ``encode`` → WAL bytes →
``decode`` → ``Store.insert_scans``) and what lands in ClickHouse is compared with what the verifier said and
what the friendly column form stores. A record written by an earlier engine (version 1, JSON; version 2, from
before scans were keyed by device and scan id) must still drain after an upgrade.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from nacl.signing import SigningKey

from engine.codes.payload import Person, mint
from engine.codes.trust import TrustList
from engine.codes.verdicts import CodeKind, Verdict
from engine.devices.client import make_scan
from engine.errors import WALError
from engine.ingest import record
from engine.store.columns import Rows, Strings, rows_from_columns, to_arrow
from engine.store.store import Store
from engine.verify.contract import CodeBatch
from engine.verify.reference import PyVerifier

NOW_S = 1_767_225_600


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.connect(f"chdb://{tmp_path / 'store'}", retention_days=3650)
    try:
        s.migrate()
        yield s
    finally:
        s.close()


def verified_rows(
    issuer_key: SigningKey, trust_list: TrustList, person_secret: bytes, *, device: str = "dev-1", seed: int = 0
) -> tuple[Rows, list[bytes]]:
    """Six scans: two genuine codes, a forged one, one signed by an unknown key, an unsigned one, garbage."""
    stranger = SigningKey(hashlib.sha256(b"stranger").digest())
    p = [Person(f"******{seed}{i:05d}", "NGUYEN VAN AN", "1990-01-**", f"QID{seed}{i:09d}") for i in range(4)]
    genuine = [mint(p[i], issuer_key, iat=NOW_S - 60, exp=NOW_S + 86_400) for i in range(2)]
    forged = genuine[1][:-2] + ("AA" if not genuine[1].endswith("AA") else "BA")
    codes = [c.encode() for c in [*genuine, forged]]
    codes.append(mint(p[3], stranger, iat=NOW_S - 60, exp=NOW_S + 86_400).encode())
    codes.append(b"******000001|NGUYEN VAN AN|1990-01-**|0|QID000000001|")  # the legacy unsigned code
    codes.append(b"not a code")
    batch = CodeBatch.from_codes(codes)
    result = PyVerifier(trust_list.table(), person_secret).verify_batch(batch, NOW_S)
    n = len(codes)
    rows = record.batch_rows(
        scan_id=b"".join(uuid.UUID(int=seed * 100 + i + 1).bytes for i in range(n)),
        device_code=np.zeros(n, np.int32),
        devices=[device],
        venue_id=Strings.pack([f"venue-{i}".encode() for i in range(n)]),
        direction=np.array([1, 2] * (n // 2), np.uint8),
        scanned_ms=np.arange(n, dtype=np.int64) + NOW_S * 1000,
        received_ms=np.full(n, NOW_S * 1000 + 250, np.int64),
        batch=batch,
        result=result,
        trust=trust_list.table(),
    )
    return rows, codes


def test_batch_rows_carry_the_verdicts_and_no_personal_text(
    issuer_key: SigningKey, trust_list: TrustList, person_secret: bytes
) -> None:
    rows, _ = verified_rows(issuer_key, trust_list, person_secret)
    verdicts = [Verdict(v) for v in rows.verdict.tolist()]
    assert verdicts == [
        Verdict.OK,
        Verdict.OK,
        Verdict.BAD_SIGNATURE,
        Verdict.UNKNOWN_KEY,
        Verdict.UNSIGNED_CODE,
        Verdict.MALFORMED,
    ]
    assert rows.qr_id.to_list()[:2] == ["QID0000000000", "QID0000000001"] and rows.qr_id[5] == ""
    keys = [(rows.key_ids[k], rows.issuers[k]) for k in rows.key_code.tolist()]
    assert keys[0] == (trust_list.table().kid_text(0), "test-issuer")
    assert keys[3][0] not in ("", keys[0][0]) and keys[3][1] == ""  # the key id the forger claimed
    assert keys[4] == keys[5] == ("", "")
    encoded = record.encode(rows)
    assert b"NGUY" not in encoded and b"1990" not in encoded and b"******" not in encoded


def test_encode_decode_round_trip_is_exact(issuer_key: SigningKey, trust_list: TrustList, person_secret: bytes) -> None:
    rows, _ = verified_rows(issuer_key, trust_list, person_secret)
    back = record.decode(record.encode(rows))
    assert to_arrow(back).equals(to_arrow(rows))
    assert len(record.encode(rows)) < 200 * len(rows)


def test_concat_merges_dictionaries(issuer_key: SigningKey, trust_list: TrustList, person_secret: bytes) -> None:
    a, _ = verified_rows(issuer_key, trust_list, person_secret, device="dev-a", seed=1)
    b, _ = verified_rows(issuer_key, trust_list, person_secret, device="dev-b", seed=2)
    both = record.decode_many([record.encode(a), record.encode(b), record.encode(a)])
    table = to_arrow(both).to_pydict()
    assert table["device_id"] == ["dev-a"] * 6 + ["dev-b"] * 6 + ["dev-a"] * 6
    assert table["key_id"][:6] == table["key_id"][6:12] == table["key_id"][12:]
    assert table["venue_id"][6:12] == [f"venue-{i}" for i in range(6)]
    assert sorted(both.devices) == ["dev-a", "dev-b"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-1],
        lambda b: b + b"x",
        lambda b: b"VQR9" + b[4:],
        lambda b: b[:8] + b"{not json" + b[17:],
        lambda b: b[:12],
    ],
)
def test_damaged_record_raises_wal_error(
    damage: object, issuer_key: SigningKey, trust_list: TrustList, person_secret: bytes
) -> None:
    rows, _ = verified_rows(issuer_key, trust_list, person_secret)
    with pytest.raises(WALError):
        record.decode(damage(record.encode(rows)))  # type: ignore[operator]


def v1_record(rows: Rows) -> bytes:
    """What ``encode_record`` of engines before record version 2 wrote for the same rows."""
    n = len(rows)
    return orjson.dumps(
        {
            "v": 1,
            "scan_id": rows.scan_id.hex(),
            "device_id": [rows.devices[c] for c in rows.device_code.tolist()],
            "venue_id": rows.venue_id.to_list(),
            "direction": rows.direction.tolist(),
            "scanned_ms": rows.scanned_ms.tolist(),
            "received_ms": rows.received_ms.tolist(),
            "verdict": rows.verdict.tolist(),
            "reason": rows.reason.tolist(),
            "kind": rows.kind.tolist(),
            "person_key": rows.person_key.hex(),
            "qr_id": [rows.qr_id[i] for i in range(n)],
            "key_id": [rows.key_ids[c] for c in rows.key_code.tolist()],
            "issuer": [rows.issuers[c] for c in rows.key_code.tolist()],
            "iat": rows.iat_s.tolist(),
            "exp": rows.exp_s.tolist(),
        }
    )


def test_a_version_1_record_from_an_older_engine_still_drains(
    store: Store, issuer_key: SigningKey, trust_list: TrustList, person_secret: bytes
) -> None:
    rows, _ = verified_rows(issuer_key, trust_list, person_secret)
    newer, _ = verified_rows(issuer_key, trust_list, person_secret, seed=3)
    mixed = record.decode_many([v1_record(rows), record.encode(newer)])
    assert to_arrow(record.decode(v1_record(rows))).to_pydict() == to_arrow(rows).to_pydict()
    assert store.insert_scans(mixed) == 12
    assert int(store.query("SELECT count() FROM scans")[0][0]) == 12
    with pytest.raises(WALError, match="version 7"):
        record.decode(orjson.dumps({"v": 7}))


V2_BUFFERS = (
    ("scan_id", "b16"), ("device_code", "<i4"), ("venue_id", "s"), ("direction", "u1"), ("scanned_ms", "<i8"),
    ("received_ms", "<i8"), ("verdict", "u1"), ("reason", "u1"), ("kind", "u1"), ("person_key", "b16"),
    ("qr_id", "s"), ("key_code", "<i4"), ("iat_s", "<i8"), ("exp_s", "<i8"),
)  # fmt: skip


def v2_record(rows: Rows) -> bytes:
    """What ``encode`` of engines before record version 3 (scans keyed by scan id alone) wrote for ``rows``."""
    buffers: list[bytes] = []
    for name, kind in V2_BUFFERS:
        value = getattr(rows, name)
        if kind == "s":
            buffers += [value.offsets.astype("<i8").tobytes(), value.data]
        elif kind == "b16":
            buffers.append(value)
        else:
            buffers.append(np.ascontiguousarray(value, kind).tobytes())
    header = orjson.dumps(
        {"n": len(rows), "devices": rows.devices, "key_ids": rows.key_ids, "issuers": rows.issuers,
         "sizes": [len(b) for b in buffers]}
    )  # fmt: skip
    return b"".join([b"VQR2", struct.pack("<I", len(header)), header, *buffers])


def test_version_3_names_the_scan_identity_and_version_2_still_reads(
    issuer_key: SigningKey, trust_list: TrustList, person_secret: bytes
) -> None:
    rows, _ = verified_rows(issuer_key, trust_list, person_secret)
    new = record.encode(rows)
    assert new[:4] == b"VQR3"
    (hlen,) = struct.unpack_from("<I", new, 4)
    header = orjson.loads(new[8 : 8 + hlen])
    assert header["scan_key"] == ["device_id", "scan_id"]
    assert to_arrow(record.decode(v2_record(rows))).to_pydict() == to_arrow(rows).to_pydict()
    # a v3 header naming another identity is refused, not replayed under the wrong one
    other = orjson.dumps({**header, "scan_key": ["scan_id"]})
    with pytest.raises(WALError, match="keys its scans by"):
        record.decode(b"VQR3" + struct.pack("<I", len(other)) + other + new[8 + hlen :])


async def test_a_wal_of_version_2_records_drains_after_the_upgrade(
    engine: Any, issuer_key: SigningKey, trust_list: TrustList, person_secret: bytes
) -> None:
    """An engine stopped with a backlog of version 2 records (two devices reusing one another's scan ids), then
    upgraded: the new engine stores every scan once per device and answers each device's retry as its own."""
    from engine.ingest.wal import WriteAheadLog
    from engine.testing.engines import DEVICE_ID

    now_ms = int(time.time() * 1000)
    a, _ = verified_rows(issuer_key, trust_list, person_secret, device=DEVICE_ID, seed=1)
    b, _ = verified_rows(issuer_key, trust_list, person_secret, device="scanner-old-2", seed=1)  # same scan ids
    fresh = {"scanned_ms": a.scanned_ms - NOW_S * 1000 + now_ms - 60_000, "received_ms": a.received_ms * 0 + now_ms}
    a, b = dataclasses.replace(a, **fresh), dataclasses.replace(b, **fresh)
    assert a.scan_id == b.scan_id

    def old_wal(data_dir: Path) -> dict[str, Any]:
        wal = WriteAheadLog(data_dir / "wal")
        wal.open()
        try:
            wal.append([v2_record(a), v2_record(b)])
        finally:
            wal.close()
        return {}

    e = await engine(prepare=old_wal)
    await e.drained()
    rows = await e.query("SELECT device_id, scan_device, count() FROM scans FINAL GROUP BY 1, 2 ORDER BY 1")
    assert rows == [("scanner-old-2", "scanner-old-2", 6), (DEVICE_ID, DEVICE_ID, 6)]
    # the backlog seeded the recent-id map by (device, scan id): the first device's resend is a duplicate ...
    ids = [str(uuid.UUID(bytes=a.scan_id[16 * i : 16 * i + 16])) for i in range(6)]
    status, body = await e.client.post_scans([make_scan(e.fx.code(i), "venue-1", scan_id=ids[i]) for i in range(6)])
    assert status == 202 and body["duplicates"] == 6, body
    assert [r["verdict"] for r in body["results"]] == [Verdict(int(v)).label for v in a.verdict]


def test_rows_and_friendly_columns_store_the_same(
    store: Store, issuer_key: SigningKey, trust_list: TrustList, person_secret: bytes
) -> None:
    rows, _ = verified_rows(issuer_key, trust_list, person_secret)
    store.insert_scans(record.decode(record.encode(rows)))
    n = len(rows)
    friendly = {
        "scan_id": [uuid.UUID(bytes=rows.scan_id[16 * i : 16 * i + 16]) for i in range(n)],
        "device_id": ["dev-1"] * n,
        "venue_id": rows.venue_id.to_list(),
        "direction": ["in", "out"] * (n // 2),
        "scanned_at": rows.scanned_ms.astype("datetime64[ms]"),
        "received_at": rows.received_ms.astype("datetime64[ms]"),
        "verdict": [Verdict(v).label for v in rows.verdict.tolist()],
        "reason": rows.reason,
        "code_kind": [CodeKind(k) for k in rows.kind.tolist()],
        "person_key": [rows.person_key[16 * i : 16 * i + 16] for i in range(n)],
        "qr_id": rows.qr_id.to_list(),
        "key_id": [rows.key_ids[c] for c in rows.key_code.tolist()],
        "issuer": [rows.issuers[c] for c in rows.key_code.tolist()],
        "code_iat": rows.iat_s,
        "code_exp": rows.exp_s,
    }
    assert to_arrow(rows_from_columns(friendly)).to_pydict() == to_arrow(rows).to_pydict()
    stored = store.query(
        "SELECT toString(scan_id), device_id, venue_id, toString(direction), toUnixTimestamp64Milli(scanned_at), "
        "toString(verdict), toString(code_kind), hex(person_key), qr_id, key_id, issuer, toUnixTimestamp(code_exp) "
        "FROM scans ORDER BY scan_id"
    )
    assert [r[0] for r in stored] == [str(u) for u in friendly["scan_id"]]
    for i, r in enumerate(stored):
        assert r[1:4] == ("dev-1", f"venue-{i}", friendly["direction"][i])
        assert r[4] == NOW_S * 1000 + i
        assert r[5:7] == (friendly["verdict"][i], CodeKind(rows.kind[i]).label)
        assert bytes.fromhex(r[7]) == friendly["person_key"][i]
        assert r[8:11] == (friendly["qr_id"][i], friendly["key_id"][i], friendly["issuer"][i])
        assert r[11] == int(rows.exp_s[i])
    assert int(store.query("SELECT count() FROM scans_by_person")[0][0]) == n


def test_link_keys_ride_in_the_record_only_when_a_batch_has_one(
    issuer_key: SigningKey, trust_list: TrustList, person_secret: bytes
) -> None:
    """A genuine code printing its number whole gives its scan a link key (docs/payload.md section 5, Rule 2);
    the record carries the batch's link keys as one buffer after the others, and none when no row has one. A
    reader that knows only the fixed buffers (an engine from before) splits by the header's sizes and still
    gets every other column right; concatenating batches with and without link keys keeps each row's."""
    masked, _ = verified_rows(issuer_key, trust_list, person_secret)
    assert masked.link_key == b"" and b"link_key" not in record.encode(masked)
    whole = mint(Person("079090012345", "NGUYEN VAN AN", "1990-01-**", "QIDWHOLE01"), issuer_key, iat=NOW_S - 60,
                 exp=NOW_S + 86_400).encode()  # fmt: skip
    batch = CodeBatch.from_codes([whole, b"079090012345|TRAN THI BINH|1985-**-**|1|Q-binh_2026|"])
    result = PyVerifier(trust_list.table(), person_secret).verify_batch(batch, NOW_S)
    linked = record.batch_rows(
        scan_id=uuid.UUID(int=1).bytes + uuid.UUID(int=2).bytes,
        device_code=np.zeros(2, np.int32),
        devices=["dev-1"],
        venue_id=Strings.pack([b"v", b"v"]),
        direction=np.array([1, 1], np.uint8),
        scanned_ms=np.full(2, NOW_S * 1000, np.int64),
        received_ms=np.full(2, NOW_S * 1000, np.int64),
        batch=batch,
        result=result,
        trust=trust_list.table(),
    )
    assert linked.link_key[:16] != bytes(16) and linked.link_key[16:] == bytes(16)  # the unsigned one links nothing
    encoded = record.encode(linked)
    back = record.decode(encoded)
    assert back.link_key == linked.link_key and to_arrow(back).equals(to_arrow(linked))
    (hlen,) = struct.unpack_from("<I", encoded, 4)
    header = orjson.loads(encoded[8 : 8 + hlen])
    assert header["link_key"] is True and header["sizes"][-1] == 32
    both = record.decode_many([record.encode(masked), encoded])
    assert both.link_key == bytes(16 * len(masked)) + linked.link_key
    # the reader from before: the same sizes, no idea of the flag (dropped here), so the last buffer is ignored
    del header["link_key"]
    old_header = orjson.dumps(header)
    as_before = record.decode(encoded[:4] + struct.pack("<I", len(old_header)) + old_header + encoded[8 + hlen :])
    assert as_before.link_key == b"" and as_before.qr_id.to_list() == linked.qr_id.to_list()
    assert as_before.person_key == linked.person_key and as_before.scan_id == linked.scan_id
