"""The per-item check of device requests: the compiled path held to the reference, field for field.

Both implementations get the same item lists (hand-picked edge cases and hypothesis-generated mixes of good and
bad fields, parsed by orjson exactly as the server parses bodies) and must return equal columns and the same
rejections with the same words. ``test_verify_compiled.py`` makes sure the compiled one is what runs.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import PayloadError
from engine.ingest import intake
from engine.ingest import items as contract
from engine.ingest.intake import Intake, parse_body, take_items_py

NOW = 1_764_000_000_000
OLDEST, NEWEST = NOW - 28 * 86_400_000, NOW + 300_000

try:
    from engine._intake import take_items as compiled_take_items
except ImportError:  # pragma: no cover - ENGINE_NO_EXTENSIONS builds
    compiled_take_items = None

IMPLEMENTATIONS = [pytest.param(take_items_py, id="py-intake")]
if compiled_take_items is not None:
    IMPLEMENTATIONS.append(pytest.param(compiled_take_items, id="c-intake"))


def good(**over: Any) -> dict[str, Any]:
    item = {
        "scan_id": str(uuid.uuid4()),
        "qr": "******012345|NGUYỄN VĂN AN|1990-01-**|CCCD|PCC7F3A9D2E1B4|VS1.x",
        "venue_id": "venue-0042",
        "direction": "in",
        "scanned_at": NOW,
    }
    item.update(over)
    return {k: v for k, v in item.items() if v is not ...}


EDGE_CASES: list[tuple[Any, contract.Rejection | None]] = [
    (good(), None),
    (good(scan_id=str(uuid.uuid4()).upper(), direction="out"), None),
    (good(scanned_at="2025-11-24T16:00:00Z"), None),
    (good(scanned_at="2025-11-24T16:00:00+07:00"), None),
    (good(qr=""), None),  # an empty code is a scan of a bad code: stored as malformed, not an item error
    (good(qr="a" * 2048), None),
    (good(venue_id="v" * 64), None),
    (good(venue_id="A.b:C_d-9"), None),
    ([1, 2], contract.E_NOT_OBJECT),
    ("scan", contract.E_NOT_OBJECT),
    (None, contract.E_NOT_OBJECT),
    (good(scan_id=...), contract.E_SCAN_ID_MISSING),
    (good(scan_id=None), contract.E_SCAN_ID),
    (good(scan_id=12), contract.E_SCAN_ID),
    (good(scan_id="g" * 36), contract.E_SCAN_ID),
    (good(scan_id=str(uuid.uuid4()).replace("-", "")), contract.E_SCAN_ID),
    (good(scan_id="1234567-" + str(uuid.uuid4())[8:]), contract.E_SCAN_ID),
    (good(scan_id=" " + str(uuid.uuid4())[1:]), contract.E_SCAN_ID),
    (good(scan_id="é" + str(uuid.uuid4())[1:]), contract.E_SCAN_ID),
    (good(scan_id="{" + str(uuid.uuid4()) + "}"), contract.E_SCAN_ID),
    (good(qr=...), contract.E_QR_TYPE),
    (good(qr=5), contract.E_QR_TYPE),
    (good(qr="a" * 2049), contract.E_QR_LONG),
    (good(qr="ĐÀ\ud800"), contract.E_UNICODE),
    (good(venue_id=""), contract.E_VENUE),
    (good(venue_id="v" * 65), contract.E_VENUE),
    (good(venue_id="café"), contract.E_VENUE),
    (good(venue_id="a b"), contract.E_VENUE),
    (good(venue_id=7), contract.E_VENUE),
    (good(venue_id="\ud800"), contract.E_VENUE),
    (good(direction="IN"), contract.E_DIRECTION),
    (good(direction=["in"]), contract.E_DIRECTION),
    (good(direction=None), contract.E_DIRECTION),
    (good(scanned_at=True), contract.E_TIME),
    (good(scanned_at=1.5e12), contract.E_TIME),
    (good(scanned_at="yesterday"), contract.E_TIME),
    (good(scanned_at="2025-11-24T16:00:00"), contract.E_TIME_NO_ZONE),  # refused, not read as UTC: ambiguous
    (good(scanned_at="2025-11-24 16:00:00.250"), contract.E_TIME_NO_ZONE),
    (good(scanned_at="2025-11-24T16:00:00+0700"), contract.E_TIME),  # RFC 3339 offsets have a colon
    (good(scanned_at="2025-13-24T16:00:00Z"), contract.E_TIME),  # the right shape, no such month
    (good(scanned_at="２０２５-11-24T16:00:00Z"), contract.E_TIME),  # full-width digits are not ASCII digits
    (good(scanned_at="2025-11-24"), contract.E_TIME),
    (good(scanned_at=...), contract.E_TIME),
    (good(scanned_at=OLDEST - 1), contract.E_TOO_OLD),
    (good(scanned_at=NEWEST + 1), contract.E_IN_FUTURE),
    (good(scanned_at=10**30), contract.E_IN_FUTURE),
    (good(scanned_at=-(10**30)), contract.E_TOO_OLD),
    (good(scanned_at=NOW // 1000), contract.E_TIME_UNIT),  # epoch seconds: Date.now() / 1000
    (good(scanned_at=NOW * 1000), contract.E_TIME_UNIT),  # microseconds
    (good(scanned_at=NOW * 1_000_000), contract.E_TIME_UNIT),  # nanoseconds: time.time_ns()
    (good(scanned_at=OLDEST // 1000 - 1), contract.E_TOO_OLD),  # seconds, and too old even as seconds
    (good(scanned_at="1970-01-21T10:00:00Z"), contract.E_TOO_OLD),  # text is never read in another unit
    (good(scanned_at="2025-11-24T16:00:00.123456789z"), None),
    (good(scanned_at="2025-11-24 23:00:00+07:00"), None),
    (good(scanned_at=OLDEST), None),
    (good(scanned_at=NEWEST), None),
]


def as_parsed(items: list[Any]) -> list[Any]:
    """The objects orjson hands the server for these items (lone surrogates cannot be encoded: kept as is)."""
    try:
        return orjson.loads(orjson.dumps(items))
    except orjson.JSONEncodeError:
        return items


def assert_same(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    assert len(a) == len(b) == 10
    for x, y in zip(a, b, strict=True):
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and x.dtype == y.dtype and np.array_equal(x, y)
        else:
            assert type(x) is type(y) and x == y


@pytest.mark.parametrize("take", IMPLEMENTATIONS)
@pytest.mark.parametrize(("item", "error"), EDGE_CASES)
def test_each_edge_case_is_accepted_or_rejected_with_its_reason(
    take: Any, item: Any, error: contract.Rejection | None
) -> None:
    items = as_parsed([good(), item, good()])
    out = take(items, OLDEST, NEWEST)
    index, scan_ids, texts, codes, code_offsets, venues, venue_offsets, directions, _scanned, rejected = out
    if error is None:
        assert rejected == [] and index.tolist() == [0, 1, 2]
        assert scan_ids[16:32] == uuid.UUID(item["scan_id"]).bytes and texts[1] == item["scan_id"]
        assert codes[code_offsets[1] : code_offsets[2]] == item["qr"].encode()
        assert venues[venue_offsets[1] : venue_offsets[2]] == item["venue_id"].encode()
        assert directions[1] == intake.DIRECTIONS[item["direction"]]
    else:
        assert [(i, r.code, r.field) for i, r, _echo in rejected] == [(1, error.code, error.field)]
        assert rejected[0][1].message.startswith(error.message) and index.tolist() == [0, 2]
    assert len(scan_ids) == 16 * len(index) == 16 * len(texts) and len(code_offsets) == len(index) + 1
    assert_same(out, take_items_py(items, OLDEST, NEWEST))


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # what orjson reads as int
    st.integers(min_value=OLDEST - 10, max_value=NEWEST + 10),
    st.floats(allow_nan=False),
    st.text(max_size=80),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=2),
)
_items = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "scan_id": st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), _values),
            "qr": st.one_of(st.text(max_size=300), st.text(min_size=2040, max_size=2060), _values),
            "venue_id": st.one_of(st.from_regex(r"[A-Za-z0-9_.:\-]{1,70}", fullmatch=True), _values),
            "direction": st.one_of(st.sampled_from(["in", "out", "IN", ""]), _values),
            "scanned_at": st.one_of(st.integers(min_value=OLDEST - 10, max_value=NEWEST + 10), _values),
        },
    ),
    _values,
)


@pytest.mark.skipif(compiled_take_items is None, reason="engine._intake is not built")
@settings(max_examples=300, deadline=None)
@given(st.lists(_items, max_size=12))
def test_compiled_matches_reference_on_generated_items(items: list[Any]) -> None:
    parsed = orjson.loads(orjson.dumps(items))  # exactly the objects the server hands over
    assert compiled_take_items is not None
    assert_same(compiled_take_items(parsed, OLDEST, NEWEST), take_items_py(parsed, OLDEST, NEWEST))


def _body(scans: Any, device: Any = "dev-1") -> bytes:
    return orjson.dumps({"device_id": device, "scans": scans})


def parse(body: bytes) -> Intake:
    return parse_body(body, header_device_id="dev-1", max_items=3, now_ms=NOW, oldest_ms=OLDEST, skew_ms=300_000)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (_body([good()], device="dev-2"), "must equal the X-Device-Id"),
        (_body("x"), '"scans" must be a list'),
        (_body([]), "is empty"),
        (_body([good()] * 4), "4 scans in one request; the limit is 3"),
    ],
)
def test_envelope_faults_refuse_the_whole_request(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse(body)


def test_take_keeps_only_the_chosen_items_column_for_column() -> None:
    items = [good(venue_id=f"v{i}", qr=f"code-{i}", direction="in" if i % 2 else "out") for i in range(3)]
    got = parse(_body(items))
    assert got.take([0, 1, 2]) is got  # the common all-new request never copies
    sub = got.take([0, 2])
    assert sub.index.tolist() == [0, 2] and sub.scan_texts == [items[0]["scan_id"], items[2]["scan_id"]]
    assert [sub.code(i) for i in range(2)] == [b"code-0", b"code-2"]
    assert [sub.venue(i) for i in range(2)] == ["v0", "v2"]
    assert sub.scan_id(1) == uuid.UUID(items[2]["scan_id"]).bytes
    assert sub.directions.tolist() == [2, 2] and sub.count == 3


# -- the 202 body -------------------------------------------------------------------------------------------
try:
    from engine._intake import render_answer as compiled_render_answer
except ImportError:  # pragma: no cover - ENGINE_NO_EXTENSIONS builds
    compiled_render_answer = None


@pytest.mark.skipif(compiled_render_answer is None, reason="engine._intake is not built")
@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.tuples(st.booleans(), st.integers(0, 9), st.integers(0, 22))), max_size=30))
def test_compiled_answer_is_byte_for_byte_the_reference(items: list[Any]) -> None:
    """``None`` is a rejected item; a tuple is an accepted one with (stored?, verdict, reason)."""
    scans = [good() if it is not None else good(direction='sideways "up"') for it in items]
    got = parse(_body(scans)) if scans and len(scans) <= 3 else None
    index = np.array([i for i, it in enumerate(items) if it is not None], np.int32)
    texts = [scans[i]["scan_id"] for i in index.tolist()]
    rejected = [(i, contract.E_DIRECTION, scans[i]["scan_id"]) for i, it in enumerate(items) if it is None]
    accepted = [it for it in items if it is not None]
    stored = np.array([a[0] for a in accepted], np.bool_)
    verdict = np.array([a[1] for a in accepted], np.uint8)
    reason = np.array([a[2] for a in accepted], np.uint8)
    want = intake.render_answer_py(len(items), index, texts, rejected, stored, verdict, reason)
    assert compiled_render_answer is not None
    assert compiled_render_answer(len(items), index, texts, rejected, stored, verdict, reason) == want
    doc = orjson.loads(want)
    assert (doc["stored"], doc["duplicates"], doc["rejected"]) == (
        int(stored.sum()),
        len(accepted) - int(stored.sum()),
        len(rejected),
    )
    if got is not None:  # small requests also go through parse_body: the same index and texts
        assert got.index.tolist() == index.tolist() and got.scan_texts == texts


# -- machine-readable rejections ------------------------------------------------------------------------------
ECHO_CASES: list[tuple[Any, str | None]] = [
    (good(scan_id="not-a-uuid"), "not-a-uuid"),  # an invalid id is still the device's own: echoed to match it up
    (good(scan_id="x" * 64, direction="up"), "x" * 64),
    (good(scan_id="x" * 65), None),  # longer than any id a device could mean: not reflected back
    (good(scan_id=12), None),
    (good(scan_id=...), None),
    (good(scan_id="\ud800" + "0" * 35), None),  # a lone surrogate cannot be written back as JSON
    ("scan", None),
]


@pytest.mark.parametrize("take", IMPLEMENTATIONS)
@pytest.mark.parametrize(("item", "echo"), ECHO_CASES)
def test_rejected_items_echo_the_scan_id_the_device_sent(take: Any, item: Any, echo: str | None) -> None:
    rejected = take(as_parsed([item]), OLDEST, NEWEST)[-1]
    assert len(rejected) == 1 and rejected[0][0] == 0 and rejected[0][2] == echo


@pytest.mark.parametrize("take", IMPLEMENTATIONS)
def test_the_answer_names_each_rejection_by_code_and_keeps_the_good_items(take: Any) -> None:
    """What a device sees: ``reason`` codes it can switch on, its own scan ids, and its good scans accepted."""
    scans = [
        good(),
        good(scanned_at="2025-11-24T16:00:00"),
        good(direction="sideways"),
        good(scanned_at=NEWEST + 1),
        good(),
    ]
    cols = take(as_parsed(scans), OLDEST, NEWEST)
    index, texts, rejected = cols[0], cols[2], cols[-1]
    n = len(index)
    answer = orjson.loads(
        intake.render_answer(
            len(scans), index, texts, rejected, np.ones(n, np.bool_), np.zeros(n, np.uint8), np.zeros(n, np.uint8)
        )
    )
    assert answer["stored"] == 2 and answer["rejected"] == 3
    got = [(r["index"], r.get("scan_id"), r["status"], r["reason"]) for r in answer["results"]]
    assert got == [
        (0, scans[0]["scan_id"], "stored", "none"),
        (1, scans[1]["scan_id"], "rejected", "scanned_at_no_zone"),
        (2, scans[2]["scan_id"], "rejected", "direction_invalid"),
        (3, scans[3]["scan_id"], "rejected", "scanned_at_in_future"),
        (4, scans[4]["scan_id"], "stored", "none"),
    ]
    assert "no time zone" in answer["results"][1]["error"]


def test_every_rejection_has_a_unique_code_and_the_docs_list_them_all() -> None:
    """docs/item-rejections.md is generated from the table the check uses; regenerate it when a row is added."""
    codes = [r.code for r in contract.REJECTIONS]
    assert len(set(codes)) == len(codes) and all(c.replace("_", "").isalpha() and c.islower() for c in codes)
    from engine.codes.verdicts import REASONS

    assert not set(codes) & set(REASONS), "an item rejection code must not mean a verify reason too"
    doc = (Path(__file__).parent.parent / "docs" / "item-rejections.md").read_text()
    assert contract.rejections_markdown() in doc, (
        "docs/item-rejections.md is out of date: paste engine.ingest.items.rejections_markdown() into it"
    )


@pytest.mark.parametrize("take", IMPLEMENTATIONS)
def test_a_window_rejection_says_which_bound_and_by_how_much(take: Any) -> None:
    """Issue 12: the answer names the bound crossed, the distance and, for a unit mistake, the unit it fits."""
    cases = [
        (OLDEST - 1, "2025-10-27T15:59:59.999Z is 0.001 s before the oldest accepted time 2025-10-27T16:00:00.000Z"),
        (OLDEST - 86_400_000 - 3 * 3_600_000 - 60_000, "is 1 d 3 h 1 min before the oldest accepted time"),
        (NEWEST + 125_500, "2025-11-24T16:07:05.500Z is 2 min 5.500 s after the latest accepted time"),
        (NEWEST + 2 * 3_600_000 + 7_000, "is 2 h 0 min 7 s after the latest accepted time 2025-11-24T16:05:00.000Z"),
        (NOW // 1000, "1764000000 read as epoch seconds is 2025-11-24T16:00:00.000Z"),
        (NOW * 1000 + 999, "1764000000000999 read as epoch microseconds is 2025-11-24T16:00:00.000Z"),
        (-(10**30), "epoch ms -1000000000000000000000000000000 is "),
    ]
    items = as_parsed([good(scanned_at=v) for v, _ in cases])
    rejected = take(items, OLDEST, NEWEST)[-1]
    assert len(rejected) == len(cases)
    for (_i, rejection, _echo), (_value, words) in zip(rejected, cases, strict=True):
        assert words in rejection.message, rejection.message
    assert rejected == take_items_py(items, OLDEST, NEWEST)[-1]  # word for word in both paths
    assert rejected[4][1].message.startswith(
        "scanned_at is outside the accepted window but would be inside it read in another unit; it must be epoch"
    )


def test_a_specialised_rejection_keeps_its_code() -> None:
    detailed = contract.E_TOO_OLD.detailed("8 days before now; the offline window is 7 days")
    assert detailed.code == "scanned_at_too_old" and detailed.message.endswith("the offline window is 7 days")
