"""Both verifiers against the contract and against each other: same inputs, identical arrays, byte for byte.

The reference (``PyVerifier``) is the definition of correct; the compiled ``CVerifier`` must match it on the
committed vectors, on every single-bit flip and truncation of a genuine code, on hypothesis-generated input,
across trust-list reloads, with and without the cache, on one thread or two. Tests that check behaviour run
once per implementation (ids ``py-verifier`` / ``c-verifier``); parity tests need the compiled one and skip
with a message when it is not built (tests/test_verify_compiled.py is the one that fails in that case).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from engine.codes.payload import Person, key_id, mint
from engine.codes.trust import TrustedKey, TrustList, TrustTable
from engine.codes.verdicts import CodeKind, Reason, Verdict
from engine.verify.contract import BatchResult, CodeBatch, row_mac, set_key
from engine.verify.reference import PyVerifier

try:
    from engine import _verify
except ImportError:  # reported as a failure by test_verify_compiled.py
    _verify = None  # type: ignore[assignment]

VECTORS = json.loads((Path(__file__).parent / "vectors" / "codes.json").read_text())
NOW: int = VECTORS["now"]
SKEW: int = VECTORS["skew"]
SECRET = bytes.fromhex(VECTORS["person_secret_hex"])
TRUST = TrustList.from_json(json.dumps(VECTORS["trust_list"]).encode())
CODES = [v["code"].encode() for v in VECTORS["vectors"]]
BY_NAME = {v["name"]: v["code"].encode() for v in VECTORS["vectors"]}
DAY = 86_400

needs_c = pytest.mark.skipif(_verify is None, reason="engine._verify not built (see test_verify_compiled.py)")
Factory = Callable[..., Any]
IMPLS = [
    pytest.param(PyVerifier, id="py-verifier"),
    pytest.param(getattr(_verify, "CVerifier", None), id="c-verifier", marks=needs_c),
]


def run(factory: Factory, codes: Sequence[bytes], now: int = NOW, trust: TrustTable | None = None, **kw: Any):
    verifier = factory(trust or TRUST.table(), SECRET, skew=kw.pop("skew", SKEW), **kw)
    return verifier.verify_batch(CodeBatch.from_codes(codes), now)


def assert_same(ref: BatchResult, got: BatchResult, codes: Sequence[bytes] = (), *, cache_hit: bool = True) -> None:
    """Every column identical in dtype, shape and content; names the first differing code. ``cache_hit=False``
    also skips ``newly_verified``: both say what the set held before the batch, not what the verdicts are."""
    for f in dataclasses.fields(BatchResult):
        if f.name in ("cache_hit", "newly_verified") and not cache_hit:
            continue
        a, b = getattr(ref, f.name), getattr(got, f.name)
        assert (a.dtype, a.shape) == (b.dtype, b.shape), f.name
        if not np.array_equal(a, b):
            i = int(np.argwhere(a != b)[0][0])
            code = codes[i] if codes else b"?"
            pytest.fail(f"{f.name} differs at {i} ({code!r}): reference {a[i]!r}, compiled {b[i]!r}")


def both(codes: Sequence[bytes], now: int = NOW, **kw: Any) -> BatchResult:
    """Run both implementations on ``codes`` and require identical output; returns the reference result."""
    ref = run(PyVerifier, codes, now, **dict(kw))
    got = run(_verify.CVerifier, codes, now, **dict(kw))
    assert_same(ref, got, codes)
    return ref


# -- the committed vectors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("factory", IMPLS)
def test_vectors_match_their_expectations(factory: Factory) -> None:
    result = run(factory, CODES)
    table = TRUST.table()
    batch = CodeBatch.from_codes(CODES)
    for i, v in enumerate(VECTORS["vectors"]):
        got = (Verdict(result.verdict[i]).label, Reason(result.reason[i]).label, CodeKind(result.kind[i]).label)
        assert got == (v["verdict"], v["reason"], v["kind"]), v["name"]
        qid = result.qr_id(batch.buf, i) if result.qid_end[i] > result.qid_start[i] else ""
        kid = table.kid_text(int(result.key_index[i])) if result.key_index[i] >= 0 else ""
        assert (qid, kid, int(result.iat[i]), int(result.exp[i])) == (v["qr_id"], v["kid"], v["iat"], v["exp"])
        assert bytes(result.person_key[i]).hex() == v["person_key"], v["name"]
        assert bytes(result.link_key[i]).hex() == v["link_key"], v["name"]


@pytest.mark.parametrize("factory", IMPLS)
def test_identity_rules_hold_in_both(factory: Factory) -> None:
    """docs/payload.md section 5 as the vectors state it: the relations computed from this verifier's output."""
    result = run(factory, CODES)
    names = [v["name"] for v in VECTORS["vectors"]]
    keys = {n: (bytes(result.person_key[i]).hex(), bytes(result.link_key[i]).hex()) for i, n in enumerate(names)}
    zero = "0" * 32
    for a, b, rule, field in VECTORS["identity_relations"]:
        col = 0 if field == "person_key" else 1
        if rule == "same":
            assert keys[a][col] == keys[b][col], (a, b)
        elif rule == "differ":
            assert keys[a][col] != keys[b][col], (a, b)
        else:
            assert keys[a][1] != zero and keys[a][1] == keys[b][0], (a, b)
    for name in VECTORS["no_link"]:
        assert keys[name][1] == zero, name
    # only genuine codes printing a complete number link; malformed codes name nobody
    for v in VECTORS["vectors"]:
        if keys[v["name"]][1] != zero:
            assert v["verdict"] in ("ok", "expired") and "*" not in v["code"].split("|")[0], v["name"]
        if v["verdict"] == "malformed":
            assert keys[v["name"]] == (zero, zero), v["name"]


@pytest.mark.parametrize("factory", IMPLS)
def test_identity_follows_issuer_across_key_rotation(factory: Factory) -> None:
    """Two keys of one issuer vouch for one identity per QID; a same-named key of another issuer does not."""
    old, new, other = (SigningKey(hashlib.sha256(label).digest()) for label in (b"rot-old", b"rot-new", b"rot-x"))

    def entry(key: SigningKey, issuer: str) -> TrustedKey:
        pub = bytes(key.verify_key)
        return TrustedKey(hashlib.sha256(pub).digest()[:8], issuer, pub, NOW - 400 * DAY, NOW + 400 * DAY, False)

    trust = TrustList.build([entry(old, "platform"), entry(new, "platform"), entry(other, "platform-2")], [])
    person = Person("******777001", "NGUYEN VAN AN", "1990-01-01", "QIDALICE01")
    codes = [mint(person, k, iat=NOW - DAY, exp=NOW + DAY).encode() for k in (old, new, other)]
    r = run(factory, codes, trust=trust.table())
    assert list(r.verdict) == [Verdict.OK] * 3
    assert bytes(r.person_key[0]) == bytes(r.person_key[1]) != bytes(r.person_key[2])


@needs_c
def test_vectors_parity() -> None:
    both(CODES)
    both(CODES, cache_size=0)


# -- the raw primitive: RFC 8032 section 7.1 ---------------------------------------------------------------------
RFC8032 = [  # (secret key, public key, message, signature), hex
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (  # TEST SHA(abc): the message is SHA-512("abc")
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        hashlib.sha512(b"abc").hexdigest(),
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]


@needs_c
@pytest.mark.parametrize("secret, public, message, signature", RFC8032, ids=["test1", "test2", "test3", "sha-abc"])
def test_ed25519_rfc8032(secret: str, public: str, message: str, signature: str) -> None:
    sk, pk, msg, sig = (bytes.fromhex(x) for x in (secret, public, message, signature))
    assert bytes(SigningKey(sk).verify_key) == pk  # the vector is what we think it is
    assert _verify.ed25519_verify(sig, msg, pk)
    for bit in (0, 7, 255, 256, 511):  # R and S halves of the signature
        flipped = bytearray(sig)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not _verify.ed25519_verify(bytes(flipped), msg, pk)
    assert not _verify.ed25519_verify(sig, msg + b"\x00", pk)
    assert _verify.verify_loop(sig, msg or b"x", pk, 3) == (3 if msg else 0)


# -- every single-bit flip and every truncation of a genuine code ------------------------------------------------
@needs_c
@pytest.mark.parametrize("name", ["ok", "ok_unmasked_doc_masked_birth_date_type_1", "id_card_7_fields"])
def test_bit_flips_and_truncations(name: str) -> None:
    code = BY_NAME[name]
    flips = []
    for i in range(len(code)):
        for bit in range(8):
            mutated = bytearray(code)
            mutated[i] ^= 1 << bit
            flips.append(bytes(mutated))
    truncated = [code[:k] for k in range(len(code))] + [code[k:] for k in range(1, len(code))]
    result = both([code, *flips, *truncated])
    if name.startswith("ok"):
        # A flip is either caught by the parser or by the signature; only the original is genuine.
        assert Verdict(result.verdict[0]) is Verdict.OK
        assert not np.any(result.verdict[1 : 1 + len(flips)] == Verdict.OK)


# -- hypothesis --------------------------------------------------------------------------------------------------
_CHARS = st.sampled_from(list(b"0123456789AZaz*-_ .|=+/\x00\x7f\xc3\xa1VS1"))
_FIELD = st.binary(max_size=0) | st.lists(_CHARS, max_size=40).map(bytes) | st.binary(max_size=130)


@pytest.fixture(scope="module")
def verifier_pair() -> tuple[Any, Any]:
    if _verify is None:
        pytest.skip("engine._verify not built")
    return PyVerifier(TRUST.table(), SECRET, skew=SKEW), _verify.CVerifier(TRUST.table(), SECRET, skew=SKEW)


def _pair_run(pair: tuple[Any, Any], codes: list[bytes], now: int = NOW) -> None:
    batch = CodeBatch.from_codes(codes)
    assert_same(pair[0].verify_batch(batch, now), pair[1].verify_batch(batch, now), codes)
    assert (pair[0].cache_hits, pair[0].cache_lookups) == (pair[1].cache_hits, pair[1].cache_lookups)


@needs_c
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(codes=st.lists(st.binary(max_size=600), max_size=8))
def test_hypothesis_random_bytes(verifier_pair: tuple[Any, Any], codes: list[bytes]) -> None:
    _pair_run(verifier_pair, codes)


@needs_c
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.sampled_from(sorted(BY_NAME)),
    field=st.integers(0, 10),
    value=_FIELD,
    now=st.sampled_from([NOW, NOW - 400 * DAY, NOW + 400 * DAY, 0]),
)
def test_hypothesis_field_mutations(
    verifier_pair: tuple[Any, Any], base: str, field: int, value: bytes, now: int
) -> None:
    """Replace one ``|`` field (0-6) or one part of the signed block (7-10) with generated bytes."""
    code = BY_NAME[base]
    fields = code.split(b"|")
    if field < 7:
        fields[field % len(fields)] = value
    else:
        parts = fields[-1].split(b".")
        parts[(field - 6) % len(parts)] = value
        fields[-1] = b".".join(parts)
    _pair_run(verifier_pair, [b"|".join(fields), code], now)


# -- time, key window, revocation, reload ------------------------------------------------------------------------
ISSUER = SigningKey(hashlib.sha256(b"test_verify_parity:issuer").digest())
PERSON = Person("******012345", "NGUYEN VAN AN", "1990-01-**", "PCCPARITY0001")


def _one_key_trust(
    valid_from: int, valid_until: int, *, revoked: bool = False, codes: Sequence[str] = ()
) -> TrustTable:
    pk = bytes(ISSUER.verify_key)
    return TrustList.build([TrustedKey(key_id(pk), "parity", pk, valid_from, valid_until, revoked)], codes).table()


@pytest.mark.parametrize("factory", IMPLS)
@pytest.mark.parametrize(
    "now_offset, skew, verdict, reason",
    [
        (0, 300, Verdict.OK, Reason.NONE),
        (-300, 300, Verdict.OK, Reason.NONE),  # iat == now + skew
        (-301, 300, Verdict.NOT_YET_VALID, Reason.NONE),
        (-1, 0, Verdict.NOT_YET_VALID, Reason.NONE),
        (DAY - 1, 300, Verdict.OK, Reason.NONE),
        (DAY, 300, Verdict.EXPIRED, Reason.NONE),  # now == exp
        (10 * DAY, 300, Verdict.EXPIRED, Reason.NONE),
    ],
)
def test_time_boundaries(factory: Factory, now_offset: int, skew: int, verdict: Verdict, reason: Reason) -> None:
    iat = NOW
    code = mint(PERSON, ISSUER, iat=iat, exp=iat + DAY).encode()
    trust = _one_key_trust(NOW - DAY, NOW + DAY)
    result = run(factory, [code], iat + now_offset, trust, skew=skew)
    assert (Verdict(result.verdict[0]), Reason(result.reason[0])) == (verdict, reason)


@pytest.mark.parametrize("factory", IMPLS)
@pytest.mark.parametrize(
    "iat_offset, verdict, reason",
    [
        (-DAY - 1, Verdict.NOT_YET_VALID, Reason.KEY_WINDOW),
        (-DAY, Verdict.OK, Reason.NONE),  # iat == valid_from
        (DAY, Verdict.OK, Reason.NONE),  # iat == valid_until
        (DAY + 1, Verdict.EXPIRED, Reason.KEY_WINDOW),
    ],
)
def test_key_window(factory: Factory, iat_offset: int, verdict: Verdict, reason: Reason) -> None:
    iat = NOW + iat_offset
    code = mint(PERSON, ISSUER, iat=iat, exp=iat + 10 * DAY).encode()
    result = run(factory, [code], iat, _one_key_trust(NOW - DAY, NOW + DAY))
    assert (Verdict(result.verdict[0]), Reason(result.reason[0])) == (verdict, reason)


@pytest.mark.parametrize("factory", IMPLS)
def test_reload_revocations_apply_to_cached_codes(factory: Factory) -> None:
    """A cache hit skips only the signature: a key or code revoked after caching is still refused."""
    code = mint(PERSON, ISSUER, iat=NOW - DAY, exp=NOW + DAY).encode()
    batch = CodeBatch.from_codes([code])
    v = factory(_one_key_trust(NOW - 9 * DAY, NOW + 9 * DAY), SECRET)
    first = v.verify_batch(batch, NOW)
    assert (Verdict(first.verdict[0]), bool(first.cache_hit[0])) == (Verdict.OK, False)
    v.set_trust(_one_key_trust(NOW - 9 * DAY, NOW + 9 * DAY, codes=[PERSON.qr_id]))
    again = v.verify_batch(batch, NOW)
    assert (Verdict(again.verdict[0]), bool(again.cache_hit[0])) == (Verdict.REVOKED_CODE, True)
    v.set_trust(_one_key_trust(NOW - 9 * DAY, NOW + 9 * DAY, revoked=True))
    assert Verdict(v.verify_batch(batch, NOW).verdict[0]) is Verdict.REVOKED_KEY
    v.set_trust(_one_key_trust(NOW - 9 * DAY, NOW - 2 * DAY))
    last = v.verify_batch(batch, NOW)
    assert (Verdict(last.verdict[0]), Reason(last.reason[0]), bool(last.cache_hit[0])) == (
        Verdict.EXPIRED,
        Reason.KEY_WINDOW,
        True,
    )
    v.set_trust(TrustList.build([]).table())
    assert Verdict(v.verify_batch(batch, NOW).verdict[0]) is Verdict.UNKNOWN_KEY
    assert (v.cache_hits, v.cache_lookups) == (2, 3)


@needs_c
def test_unsorted_trust_table_and_revoked_list() -> None:
    """The C path sorts for itself: a TrustTable built by hand in any order gives the same key indices."""
    t = TRUST.table()
    n = len(t)
    rev = list(range(n))[::-1]
    shuffled = TrustTable(
        kids=b"".join(t.kids[i * 8 : i * 8 + 8] for i in rev),
        public_keys=b"".join(t.public_keys[i * 32 : i * 32 + 32] for i in rev),
        valid_from=t.valid_from[rev],
        valid_until=t.valid_until[rev],
        revoked=t.revoked[rev],
        revoked_qids=(b"ZZZ", *t.revoked_qids, b"A", b"PCCREVOKED000"),
        issuers=tuple(t.issuers[i] for i in rev),
    )
    both(CODES, trust=shuffled)


# -- cache -------------------------------------------------------------------------------------------------------
def _signed_codes(count: int, *, exp: int = NOW + DAY) -> list[bytes]:
    key = SigningKey(hashlib.sha256(b"vnqr-test-vectors:issuer-active").digest())  # in the vectors' trust list
    return [
        mint(
            Person(f"******{k:06d}", "TRAN VAN BA", "1990-01-01", f"PCCBULK{k:06d}"), key, iat=NOW - DAY, exp=exp
        ).encode()
        for k in range(count)
    ]


@pytest.mark.parametrize("factory", IMPLS)
def test_cache_hit_on_repeat_with_unchanged_verdicts(factory: Factory) -> None:
    v = factory(TRUST.table(), SECRET, skew=SKEW)
    batch = CodeBatch.from_codes(CODES)
    cold, warm = v.verify_batch(batch, NOW), v.verify_batch(batch, NOW)
    assert_same(cold, warm, CODES, cache_hit=False)
    genuine = np.isin(cold.verdict, [Verdict.OK, Verdict.REVOKED_CODE, Verdict.EXPIRED, Verdict.NOT_YET_VALID])
    assert not cold.cache_hit.any()
    assert np.array_equal(warm.cache_hit, genuine)  # bad signatures are never cached
    reached = int(genuine.sum() + (cold.verdict == Verdict.BAD_SIGNATURE).sum())
    assert (v.cache_hits, v.cache_lookups) == (int(genuine.sum()), 2 * reached)


@pytest.mark.parametrize("factory", IMPLS)
def test_duplicates_in_one_batch(factory: Factory) -> None:
    good, bad = BY_NAME["ok"], BY_NAME["bad_signature_sig_byte_flipped"]
    result = run(factory, [good, bad, good, bad, good])
    assert list(result.cache_hit) == [False, False, True, False, True]
    assert list(result.verdict) == [Verdict.OK, Verdict.BAD_SIGNATURE] * 2 + [Verdict.OK]
    no_cache = run(factory, [good, good], cache_size=0)
    assert not no_cache.cache_hit.any() and list(no_cache.verdict) == [Verdict.OK] * 2


@needs_c
@pytest.mark.parametrize("cache_size", [0, 1, 4, 7])
def test_tiny_cache_evicts_without_changing_verdicts(cache_size: int) -> None:
    codes = _signed_codes(24)
    codes = codes + codes[::-1] + codes
    ref = run(PyVerifier, codes, cache_size=cache_size)
    v = _verify.CVerifier(TRUST.table(), SECRET, skew=SKEW, cache_size=cache_size)
    got = v.verify_batch(CodeBatch.from_codes(codes), NOW)
    assert_same(ref, got, codes)  # hits too: both evict by one rule (engine/verify/verified_set.py)
    assert v.cache_lookups == len(codes) and v.cache_hits <= v.cache_lookups


# -- one eviction rule: a full set holds the same entries in both -----------------------------------------------
def _rows(rng: np.random.Generator, n: int, exps: np.ndarray) -> tuple[bytes, bytes, np.ndarray, bytes]:
    """``n`` set rows with random tags under the vectors' secret, MACs as a node publishing them computes."""
    key, kid = set_key(SECRET), TRUST.keys[0].kid
    tags = rng.bytes(16 * n)
    macs = b"".join(row_mac(key, tags[16 * i : 16 * i + 16], kid, int(exps[i])) for i in range(n))
    return tags, kid * n, exps, macs


@needs_c
@pytest.mark.parametrize("size", [1, 7, 100, 1000])
def test_a_full_set_evicts_the_same_entries_in_both(size: int) -> None:
    """Loads far past the bound, with entries expiring between loads: after every load both tables are equal
    slot for slot (which entries went, which stayed, where), and so are count and evictions. Before the rule was
    shared the reference dropped its oldest entry and the compiled one its home slot's, so the tables parted at
    the first eviction."""
    rng = np.random.default_rng(size)
    ref, got = (
        PyVerifier(TRUST.table(), SECRET, cache_size=size),
        _verify.CVerifier(TRUST.table(), SECRET, cache_size=size),
    )
    now = NOW
    for _ in range(12):
        n = max(2, size // 2 + 3)
        exps = now + rng.integers(1, 4 * DAY, n)  # some expire before the next load, whose now is a day later
        rows = _rows(rng, n, exps)
        assert ref.load_set(*rows, now) == got.load_set(*rows, now)
        assert ref.set_table() == got.set_table()
        assert (ref.set_size, ref.set_evictions) == (got.set_size, got.set_evictions)
        now += DAY
    assert ref.set_size == size and ref.set_evictions > 0  # the rule was exercised: full, evicting


@needs_c
def test_a_large_load_checks_macs_on_every_core_and_builds_the_same_table() -> None:
    """From 65,536 rows the compiled load checks the MACs in parallel: the same rows refused (1 % corrupted,
    spread over every thread's share), the same table as the reference's serial load, evictions included."""
    rng = np.random.default_rng(65_536)
    n = 70_000
    tags, kids, exps, macs = _rows(rng, n, NOW + rng.integers(1, 4 * DAY, n))
    bad = rng.choice(n, n // 100, replace=False)
    corrupted = bytearray(macs)
    for i in bad.tolist():
        corrupted[16 * i] ^= 1
    ref, got = (f(TRUST.table(), SECRET, cache_size=50_000, threads=2) for f in (PyVerifier, _verify.CVerifier))
    assert ref.load_set(tags, kids, exps, bytes(corrupted), NOW) == got.load_set(
        tags, kids, exps, bytes(corrupted), NOW
    )
    assert got.set_refused == len(bad) and got.set_size == 50_000 and got.set_evictions > 0
    assert ref.set_table() == got.set_table() and ref.set_evictions == got.set_evictions


@needs_c
def test_batches_over_a_full_set_agree_on_every_hit_and_the_table() -> None:
    """Real codes verified into a set already full of other entries, batches with repeats inside them (a repeat
    of a miss is a hit only when that miss's entry went in): every column, hits included, and the table agree."""
    size = 48
    rng = np.random.default_rng(7)
    ref, got = (f(TRUST.table(), SECRET, skew=SKEW, cache_size=size) for f in (PyVerifier, _verify.CVerifier))
    rows = _rows(rng, 3 * size, np.full(3 * size, NOW + DAY, np.int64))
    assert ref.load_set(*rows, NOW) == got.load_set(*rows, NOW)
    codes = _signed_codes(90)
    for k in range(6):
        batch = [codes[(k * 17 + j * j) % 90] for j in range(40)] + codes[k * 5 : k * 5 + 10]
        a = ref.verify_batch(CodeBatch.from_codes(batch), NOW)
        b = got.verify_batch(CodeBatch.from_codes(batch), NOW)
        assert_same(a, b, batch)
        assert ref.set_table() == got.set_table()
        assert (ref.cache_hits, ref.cache_lookups, ref.set_evictions) == (
            got.cache_hits,
            got.cache_lookups,
            got.set_evictions,
        )
    assert ref.set_size == size and ref.cache_hits > 0 and ref.set_evictions > 3 * size - size


@needs_c
def test_two_threads_equal_one_thread() -> None:
    codes = _signed_codes(150) + _signed_codes(30, exp=NOW - 1) + CODES
    codes[5] = codes[5][:-2] + (b"AA" if codes[5][-2:] != b"AA" else b"BA")  # a bad signature among the misses
    batch = CodeBatch.from_codes(codes)
    results = []
    for threads in (1, 2):
        v = _verify.CVerifier(TRUST.table(), SECRET, skew=SKEW, threads=threads, cache_size=0)
        results.append(v.verify_batch(batch, NOW))
    assert_same(results[0], results[1], codes)
    assert_same(run(PyVerifier, codes, cache_size=0), results[1], codes)
    v.threads = 2
    assert v.threads == 2
    with pytest.raises(ValueError):
        v.threads = 0


# -- edges of the interface --------------------------------------------------------------------------------------
@needs_c
@pytest.mark.parametrize("secret", [b"", b"k", b"s" * 64, b"long" * 40], ids=["empty", "short", "block", "long"])
def test_person_key_any_secret_length(secret: bytes) -> None:
    """HMAC keys longer than a SHA-256 block are hashed first; both paths must agree on every length."""
    ref = PyVerifier(TRUST.table(), secret).verify_batch(CodeBatch.from_codes(CODES), NOW)
    got = _verify.CVerifier(TRUST.table(), secret).verify_batch(CodeBatch.from_codes(CODES), NOW)
    assert_same(ref, got, CODES)


@needs_c
def test_empty_batch_and_bad_offsets() -> None:
    v = _verify.CVerifier(TRUST.table(), SECRET)
    assert len(v.verify_batch(CodeBatch.from_codes([]), NOW)) == 0
    assert list(v.verify_batch(CodeBatch.from_codes([b"", b""]), NOW).reason) == [Reason.EMPTY] * 2
    with pytest.raises(ValueError):
        v.verify_batch(CodeBatch(b"abc", np.array([0, 4], dtype=np.int64)), NOW)
    with pytest.raises(ValueError):
        v.verify_batch(CodeBatch(b"abc", np.array([0, 2, 1], dtype=np.int64)), NOW)
