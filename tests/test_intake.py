"""The per-item check of device requests: the compiled path held to the reference, field for field.

Both implementations get the same item lists (hand-picked edge cases and hypothesis-generated mixes of good and
bad fields, parsed by orjson exactly as the server parses bodies) and must return equal columns and the same
rejections with the same words. ``test_verify_compiled.py`` makes sure the compiled one is what runs.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import PayloadError
from engine.ingest import intake
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


EDGE_CASES: list[tuple[Any, str | None]] = [
    (good(), None),
    (good(scan_id=str(uuid.uuid4()).upper(), direction="out"), None),
    (good(scanned_at="2025-11-24T16:00:00Z"), None),
    (good(scanned_at="2025-11-24T16:00:00+07:00"), None),
    (good(qr=""), None),  # an empty code is a scan of a bad code: stored as malformed, not an item error
    (good(qr="a" * 2048), None),
    (good(venue_id="v" * 64), None),
    (good(venue_id="A.b:C_d-9"), None),
    ([1, 2], intake.E_NOT_OBJECT),
    ("scan", intake.E_NOT_OBJECT),
    (None, intake.E_NOT_OBJECT),
    (good(scan_id=...), intake.E_SCAN_ID_MISSING),
    (good(scan_id=None), intake.E_SCAN_ID),
    (good(scan_id=12), intake.E_SCAN_ID),
    (good(scan_id="g" * 36), intake.E_SCAN_ID),
    (good(scan_id=str(uuid.uuid4()).replace("-", "")), intake.E_SCAN_ID),
    (good(scan_id="1234567-" + str(uuid.uuid4())[8:]), intake.E_SCAN_ID),
    (good(scan_id=" " + str(uuid.uuid4())[1:]), intake.E_SCAN_ID),
    (good(scan_id="é" + str(uuid.uuid4())[1:]), intake.E_SCAN_ID),
    (good(scan_id="{" + str(uuid.uuid4()) + "}"), intake.E_SCAN_ID),
    (good(qr=...), intake.E_QR_TYPE),
    (good(qr=5), intake.E_QR_TYPE),
    (good(qr="a" * 2049), intake.E_QR_LONG),
    (good(qr="ĐÀ\ud800"), intake.E_UNICODE),
    (good(venue_id=""), intake.E_VENUE),
    (good(venue_id="v" * 65), intake.E_VENUE),
    (good(venue_id="café"), intake.E_VENUE),
    (good(venue_id="a b"), intake.E_VENUE),
    (good(venue_id=7), intake.E_VENUE),
    (good(venue_id="\ud800"), intake.E_VENUE),
    (good(direction="IN"), intake.E_DIRECTION),
    (good(direction=["in"]), intake.E_DIRECTION),
    (good(direction=None), intake.E_DIRECTION),
    (good(scanned_at=True), intake.E_TIME),
    (good(scanned_at=1.5e12), intake.E_TIME),
    (good(scanned_at="yesterday"), intake.E_TIME),
    (good(scanned_at="2025-11-24T16:00:00"), intake.E_TIME),  # no zone
    (good(scanned_at=...), intake.E_TIME),
    (good(scanned_at=OLDEST - 1), intake.E_WINDOW),
    (good(scanned_at=NEWEST + 1), intake.E_WINDOW),
    (good(scanned_at=10**30), intake.E_WINDOW),
    (good(scanned_at=-(10**30)), intake.E_WINDOW),
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
def test_each_edge_case_is_accepted_or_rejected_with_its_reason(take: Any, item: Any, error: str | None) -> None:
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
        assert rejected == [(1, error)] and index.tolist() == [0, 2]
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
    rejected = [(i, intake.E_DIRECTION) for i, it in enumerate(items) if it is None]
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
