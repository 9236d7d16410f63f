"""Tracing attacks of issue 12, each through a real engine: real chdb, real Ed25519 codes and device signatures,
scans posted over loopback HTTP and traces asked for through ``/v1/trace/person`` with a tracer token.

Some rows here are written as an engine from before issue 12 wrote them (the person key HMAC(``pk1:`` + the
number as printed), the same for every kind of code), straight into the running engine's store: they are what
a deployment holds after the upgrade, for the retention period. Each test says what it proves and why it fails
on the code before this change.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from nacl.signing import SigningKey

from engine import _verify
from engine.codes.payload import Person, b64url_encode, mint
from engine.codes.trust import TrustList
from engine.devices.client import ScannerClient, make_scan
from engine.ingest import record
from engine.store.columns import Strings
from engine.store.store import Store
from engine.testing.engines import DEVICE_ID, YEAR, admin_headers
from engine.verify.contract import CodeBatch, person_key
from engine.verify.reference import PyVerifier
from engine.web.app import deployment_secret
from engine.web.keys import CONFIG

MIN = 60_000
# an hour-aligned morning yesterday: inside the offline window and the default 14-day trace period
T = (int(time.time() * 1000) // 3_600_000 - 20) * 3_600_000


def signed(e: Any, doc_number: str, qr_id: str) -> str:
    now = int(time.time())
    return mint(Person(doc_number, "NGUYEN VAN AN", "1990-01-**", qr_id), e.fx.issuer, iat=now - 60, exp=now + YEAR)


def visit(code: str, venue: str, start_min: int, end_min: int) -> list[dict[str, Any]]:
    return [
        make_scan(code, venue, direction="in", scanned_at_ms=T + start_min * MIN),
        make_scan(code, venue, direction="out", scanned_at_ms=T + end_min * MIN),
    ]


async def post(client: ScannerClient, scans: list[dict[str, Any]], verdict: str = "ok") -> None:
    status, body = await client.post_scans(scans)
    assert status == 202, body
    assert [r["status"] for r in body["results"]] == ["stored"] * len(scans), body
    assert {r["verdict"] for r in body["results"]} == {verdict}, body


async def old_rows(e: Any, rows: list[tuple[str, str, str, str, int, str]]) -> None:
    """Rows as an engine before issue 12 stored them: (printed number, QR id, venue, direction, minute, verdict)
    with the person key HMAC(pk1: + number as printed): strangers sharing a masked number share it."""
    secret = deployment_secret(e.app[CONFIG])
    n = len(rows)
    at = np.array([T + m * MIN for _, _, _, _, m, _ in rows], dtype="datetime64[ms]")
    kind = {"ok": "signed", "unsigned_code": "unsigned"}
    columns = {
        "scan_id": [uuid.uuid4() for _ in rows],
        "device_id": ["old-scanner"] * n,
        "venue_id": [r[2] for r in rows],
        "direction": [r[3] for r in rows],
        "scanned_at": at,
        "received_at": at,
        "verdict": [r[5] for r in rows],
        "reason": ["none"] * n,
        "code_kind": [kind[r[5]] for r in rows],
        "person_key": [person_key(secret, r[0].encode()) for r in rows],
        "qr_id": [r[1] for r in rows],
        "key_id": [""] * n,
        "issuer": [""] * n,
        "code_iat": np.zeros(n, dtype="datetime64[s]"),
        "code_exp": np.zeros(n, dtype="datetime64[s]"),
    }
    await e.rt.in_store_thread(e.rt.store.insert_scans, columns)


async def trace(e: Any, auth: dict[str, str], unverified: bool = False, **subject: str) -> dict[str, Any]:
    extra = {"include_unverified": "1"} if unverified else {}
    query = urllib.parse.urlencode({**subject, "case_id": "HN-2026-012", **extra})
    status, doc = await e.client.request("GET", f"/v1/trace/person?{query}", headers_override=auth)
    assert status == 200, doc
    assert isinstance(doc, dict)
    return doc


def venues(doc: dict[str, Any]) -> list[str]:
    return sorted(v["venue_id"] for v in doc["visits"])


def contact_qrs(doc: dict[str, Any]) -> list[str]:
    return sorted(c["qr_id"] for c in doc["exposures"])


async def test_two_people_with_one_masked_number_never_meet_in_a_trace(engine: Any) -> None:
    """Alice and Bob print the same masked number (``******777001``). Neither appears in the other's trace, by QR
    id or by person key, and neither do the people each met, for new scans and for rows stored before issue 12
    (one old person key for both). Fails before this change: a trace by QR id selected every row of the person
    keys its QR id was linked to, so Alice's trace listed Bob's old bar visit and Erin, who was there with him."""
    e = await engine()
    alice, bob = signed(e, "******777001", "QIDALICE01"), signed(e, "******777001", "QIDBOB0001")
    await post(
        e.client, visit(alice, "clinic", 0, 60) + visit(signed(e, "******000002", "QIDDAVE001"), "clinic", 10, 50)
    )
    await post(e.client, visit(bob, "cafe", 0, 60) + visit(signed(e, "******000003", "QIDCAROL01"), "cafe", 10, 50))
    await old_rows(
        e,
        [
            ("******777001", "QIDALICE01", "gym", "in", -600, "ok"),
            ("******777001", "QIDALICE01", "gym", "out", -540, "ok"),
            ("******777001", "QIDBOB0001", "bar", "in", -300, "ok"),
            ("******777001", "QIDBOB0001", "bar", "out", -240, "ok"),
            ("******000004", "QIDERIN001", "bar", "in", -290, "ok"),
            ("******000004", "QIDERIN001", "bar", "out", -250, "ok"),
        ],
    )
    await e.drained()
    auth = e.tracer()
    by_qr = await trace(e, auth, qr_id="QIDALICE01")
    assert venues(by_qr) == ["clinic", "gym"] and contact_qrs(by_qr) == ["QIDDAVE001"]
    assert {v["qr_id"] for v in by_qr["visits"]} == {"QIDALICE01"}
    bob_doc = await trace(e, auth, qr_id="QIDBOB0001")
    assert venues(bob_doc) == ["bar", "cafe"] and contact_qrs(bob_doc) == ["QIDCAROL01", "QIDERIN001"]
    # by identity: the person key of the new scans is the issuer's QID, not the masked number
    new_key = next(v["person_key"] for v in by_qr["visits"] if v["venue_id"] == "clinic")
    assert new_key not in {v["person_key"] for v in bob_doc["visits"]}
    by_key = await trace(e, auth, person_key=new_key)
    assert venues(by_key) == ["clinic"] and contact_qrs(by_key) == ["QIDDAVE001"]
    for doc in (by_qr, by_key):
        assert not {"QIDBOB0001", "QIDCAROL01", "QIDERIN001"} & {c["qr_id"] for c in doc["exposures"]}


async def test_an_unsigned_code_naming_a_victims_qr_id_changes_no_trusted_trace(engine: Any) -> None:
    """A hand-made unsigned code with Alice's QR id and a third person's printed number (``******444004``, Carol's)
    is shown at a scanner. Alice's trusted trace is the same as without it, and Carol's verified visits never
    enter it; with ``include_unverified`` the forged scan shows, marked with its verdict and with the link it came
    through (``qr_id_unverified``: a QR id only unverified scans claimed). The same holds for such a scan stored
    before issue 12, under the old person key Carol's old rows share. Fails before this change: the QR-id index
    was fed by every verdict and a trace followed it without filtering by QR id, so Alice's trusted trace
    listed Carol's verified bar visit and Gina, who was with Carol."""
    e = await engine()
    alice, carol = signed(e, "******111001", "QIDALICE01"), signed(e, "******444004", "QIDCAROL01")
    await post(e.client, visit(alice, "clinic", 0, 60))
    await post(e.client, visit(carol, "cafe", 0, 60) + visit(signed(e, "******000005", "QIDFRANK01"), "cafe", 5, 55))
    await e.drained()  # traces run on their own lane, not behind the drain
    before = await trace(e, e.tracer("before"), qr_id="QIDALICE01")
    forged = "******444004|X|2000-01-01|0|QIDALICE01|"
    await post(e.client, visit(forged, "cafe", 1, 59), verdict="unsigned_code")
    await old_rows(
        e,
        [
            ("******444004", "QIDCAROL01", "bar", "in", -300, "ok"),
            ("******444004", "QIDCAROL01", "bar", "out", -240, "ok"),
            ("******000006", "QIDGINA001", "bar", "in", -290, "ok"),
            ("******000006", "QIDGINA001", "bar", "out", -250, "ok"),
            ("******444004", "QIDALICE01", "market", "in", -700, "unsigned_code"),  # the forgery, before issue 12
        ],
    )
    await e.drained()
    auth = e.tracer()
    after = await trace(e, auth, qr_id="QIDALICE01")
    assert venues(after) == venues(before) == ["clinic"] and after["exposures"] == before["exposures"] == []
    assert [v["link"] for v in after["visits"]] == ["qr_id"]  # reached through a verified scan's QR-id link
    marked = await trace(e, auth, unverified=True, qr_id="QIDALICE01")
    assert venues(marked) == ["cafe", "clinic", "market"]
    for v in marked["visits"]:
        genuine = v["venue_id"] == "clinic"
        assert (v["trusted"], v["link"]) == ((True, "qr_id") if genuine else (False, "qr_id_unverified")), v
        assert v["verdict"] == ("ok" if genuine else "unsigned_code") and v["qr_id"] == "QIDALICE01"
    # Carol and Frank met the forged scan, not Alice: they show only as unverified exposures, each saying whose
    # verdict is whose and which link the index stay came through
    assert sorted((c["qr_id"], c["trusted"]) for c in marked["exposures"]) == [
        ("QIDCAROL01", False),
        ("QIDFRANK01", False),
    ]
    for c in marked["exposures"]:
        (enc,) = c["encounters"]
        assert (enc["index_verdict"], enc["contact_verdict"], enc["verdict"]) == (
            "unsigned_code",
            "ok",
            "unsigned_code",
        )
        assert enc["index_link"] == "qr_id_unverified" and enc["index_device_ids"] == [DEVICE_ID, DEVICE_ID]
    # Carol's own trace does not gain the forgery either
    carol_doc = await trace(e, auth, qr_id="QIDCAROL01")
    assert venues(carol_doc) == ["bar", "cafe"] and {v["verdict"] for v in carol_doc["visits"]} == {"ok"}


async def test_a_scan_id_pre_claimed_by_another_device_is_stored_and_traced(engine: Any) -> None:
    """A second device replays a screenshot of Bob's code under the scan id Bob's genuine entry will carry, three
    hours earlier at the same venue. The genuine scan is stored (scan identity is (device, scan id), landed
    before) and the trace pairs it: Bob meets Alice from his real entry, and the encounter names the device
    and scan ids it rests on. Fails before this change: the tracing reads kept one row per scan id, the
    earlier replay's, so Bob's stay began at the replay and the genuine scan was in no trace."""
    e = await engine()
    key = SigningKey.generate()
    doc = {"device_id": "intruder", "public_key": b64url_encode(bytes(key.verify_key))}
    status, answer = await e.client.request(
        "POST", "/v1/admin/devices", orjson.dumps(doc), headers_override=admin_headers(e.fx.data_dir)
    )
    assert status == 201, answer
    intruder = ScannerClient(e.url, "intruder", key, ssl_context=e.client_tls())
    try:
        alice, bob = signed(e, "******111001", "QIDALICE01"), signed(e, "******222002", "QIDBOB0001")
        genuine = visit(bob, "cafe", 10, 50)
        claim = make_scan(bob, "cafe", direction="in", scanned_at_ms=T - 180 * MIN, scan_id=genuine[0]["scan_id"])
        await post(intruder, [claim])
        await post(e.client, visit(alice, "cafe", 0, 60) + genuine)
        await e.drained()
        rows = await e.query(
            "SELECT device_id FROM scans WHERE scan_id = toUUID({s:String}) ORDER BY device_id",
            {"s": genuine[0]["scan_id"]},
        )
        assert rows == [("intruder",), (DEVICE_ID,)]
        auth = e.tracer()
        doc_a = await trace(e, auth, qr_id="QIDALICE01")
        (contact,) = doc_a["exposures"]
        assert contact["qr_id"] == "QIDBOB0001"
        (enc,) = contact["encounters"]
        assert enc["contact_start_ms"] == T + 10 * MIN and enc["contact_end_ms"] == T + 50 * MIN
        assert enc["contact_scan_ids"] == [genuine[0]["scan_id"], genuine[1]["scan_id"]]
        assert enc["contact_device_ids"] == [DEVICE_ID, DEVICE_ID]
        assert enc["index_device_ids"] == [DEVICE_ID, DEVICE_ID]
        # Bob's own trace: the replay is a stay of its own, and says which device it came from
        doc_b = await trace(e, auth, qr_id="QIDBOB0001")
        provenance = sorted((v["start_ms"], tuple(v["device_ids"]), tuple(v["scan_ids"])) for v in doc_b["visits"])
        assert provenance == [
            (T - 180 * MIN, ("intruder",), (genuine[0]["scan_id"],)),
            (T + 10 * MIN, (DEVICE_ID, DEVICE_ID), (genuine[0]["scan_id"], genuine[1]["scan_id"])),
        ]
    finally:
        await intruder.close()


async def test_only_a_verified_code_printing_its_number_whole_links_a_cccd(engine: Any) -> None:
    """Hung's signed code prints his number whole (``079090012345``): that verified scan links his QR id's identity
    to his CCCD, so his trace shows the CCCD visit, marked (``id_card`` is unverified) and saying it came through
    the ``document`` link; a trusted trace never shows it. An unsigned code printing Lan's number whole links
    nothing (anyone can type one), nor does a masked number: their CCCD visits stay out of their traces."""
    e = await engine()
    hung = signed(e, "079090012345", "QIDHUNG001")
    await post(e.client, visit(hung, "clinic", 0, 60))
    cccd = "079090012345|123456789|Nguyen Van Hung|01011990|Nam|So 1 Le Loi, Quan 1, TP.HCM|15062021"
    await post(
        e.client, visit(cccd, "pharmacy", 100, 130) + visit(cccd.replace("Hung", "Lan"), "bank", 0, 30), "id_card"
    )
    lan_cccd = "079090067890|123456780|Tran Thi Lan|02021991|Nu|So 2 Le Loi, Quan 1, TP.HCM|15062021"
    await post(e.client, visit("079090067890|TRAN THI LAN|1991-**-**|1|QIDLAN0001|", "cafe", 0, 60), "unsigned_code")
    await post(e.client, visit(lan_cccd, "market", 100, 130), "id_card")
    await e.drained()
    auth = e.tracer()
    trusted = await trace(e, auth, qr_id="QIDHUNG001")
    assert venues(trusted) == ["clinic"]
    marked = await trace(e, auth, unverified=True, qr_id="QIDHUNG001")
    assert sorted((v["venue_id"], v["verdict"], v["link"]) for v in marked["visits"]) == [
        ("bank", "id_card", "document"),  # the same card number, another name printed: the number is what links
        ("clinic", "ok", "qr_id"),
        ("pharmacy", "id_card", "document"),
    ]
    key = next(v["person_key"] for v in marked["visits"] if v["venue_id"] == "clinic")
    by_key = await trace(e, auth, unverified=True, person_key=key)
    assert sorted((v["venue_id"], v["link"]) for v in by_key["visits"]) == [
        ("bank", "document"),
        ("clinic", ""),
        ("pharmacy", "document"),
    ]
    # from the card's identity back to the code's: also when the card's own scans are not in a trusted trace
    card = next(v["person_key"] for v in marked["visits"] if v["venue_id"] == "pharmacy")
    from_card = await trace(e, auth, person_key=card)
    assert [(v["venue_id"], v["verdict"], v["link"]) for v in from_card["visits"]] == [("clinic", "ok", "document")]
    lan = await trace(e, auth, unverified=True, qr_id="QIDLAN0001")
    assert [(v["venue_id"], v["link"]) for v in lan["visits"]] == [("cafe", "qr_id_unverified")]


def test_the_links_the_store_makes_from_every_vector_follow_the_rules_in_both_verifiers(tmp_path: Path) -> None:
    """The link-creating decision is the store's (migration 0009: a verified QR-id pair and a document link only
    from verdict ``ok``), taken on the verifier's fields (verdict, QR id, person and link key), which the vectors
    pin byte for byte in both verifiers (tests/test_verify_parity.py). Here every vector goes through each
    verifier, the record and a real store: the links it made are exactly the rule applied to the vectors, and the
    vectors cover the cases that decide (a genuine code printing its number whole; the same, expired: a link key
    but no link; an unsigned code printing a complete number: no link key)."""
    doc = json.loads((Path(__file__).parent / "vectors" / "codes.json").read_text())
    vectors, trust = doc["vectors"], TrustList.from_json(json.dumps(doc["trust_list"]).encode()).table()
    zero = "00" * 16
    cases = {(v["verdict"], v["link_key"] != zero, v["kind"]) for v in vectors}
    assert {("ok", True, "signed"), ("expired", True, "signed"), ("unsigned_code", False, "unsigned")} <= cases
    assert any(v["kind"] == "unsigned" and "*" not in v["code"].split("|")[0] for v in vectors)
    want_links = {(v["person_key"], v["link_key"]) for v in vectors if v["verdict"] == "ok" and v["link_key"] != zero}
    want_links |= {(lk, pk) for pk, lk in want_links}
    want_qr = {(v["qr_id"], v["person_key"], int(v["verdict"] == "ok")) for v in vectors if v["qr_id"]}
    assert len(want_links) >= 4 and {q[2] for q in want_qr} == {0, 1}
    codes = [v["code"].encode() for v in vectors]
    n = len(codes)
    for i, factory in enumerate((PyVerifier, _verify.CVerifier)):
        batch = CodeBatch.from_codes(codes)
        result = factory(trust, bytes.fromhex(doc["person_secret_hex"]), skew=doc["skew"]).verify_batch(
            batch, doc["now"]
        )
        rows = record.batch_rows(
            scan_id=b"".join(uuid.uuid4().bytes for _ in codes),
            device_code=np.zeros(n, np.int32),
            devices=["dev-1"],
            venue_id=Strings.pack([b"v"] * n),
            direction=np.ones(n, np.uint8),
            scanned_ms=np.full(n, T, np.int64),
            received_ms=np.full(n, T, np.int64),
            batch=batch,
            result=result,
            trust=trust,
        )
        store = Store.connect(f"chdb://{tmp_path / f'store{i}'}", retention_days=3650)
        try:
            store.migrate()
            store.insert_scans(record.decode(record.encode(rows)))  # through the WAL record, as the drain does
            links = store.query("SELECT DISTINCT lower(hex(key)), lower(hex(linked)) FROM identity_links", {})
            pairs = store.query("SELECT DISTINCT qr_id, lower(hex(person_key)), verified FROM person_by_qr", {})
        finally:
            store.close()
        assert set(links) == want_links, factory
        assert set(pairs) == want_qr, factory
