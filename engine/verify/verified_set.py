"""``VerifiedSet``: the pure-Python twin of the compiled verified-code set (ext/_cache.pxi), slot for slot.

Both implementations follow one eviction rule, so a full set holds the same entries whichever verifier runs
(tests/test_verify_parity.py compares the two tables byte for byte after loads far past the bound):

* a power-of-two table of at least 16 slots, at most 3/4 of them in use (``slots(max_entries)``);
* an entry's home slot is the low bits of its tag's first 8 bytes read little-endian; linear probing;
* a lookup walks from home to the first empty slot; it does not look at ``exp`` (the verdict checks expiry);
* an insert of a tag already there keeps the later ``exp``; else it takes the first expired slot on its probe
  path (no count change), else the empty slot that ends the path while the set is below its maximum; at the
  maximum it evicts the entry in its home slot, or is left out when that slot is empty (both counted as
  evictions), so the slots in use are exactly ``count``.

Why this rule and not "oldest first": the tags are keyed MACs, uniform and not aimable, so evicting the home
slot's entry is a random eviction that needs no per-entry age or list (24 bytes a slot), and a set sized for the
deployment's population (the design) evicts rarely; ``engine_codeset_evictions_total`` says when it does.
``exp`` is kept as 32-bit seconds, saturated, never 0 (the empty marker), exactly as the compiled slots do.
"""

from __future__ import annotations

SLOT_BYTES = 24  # the compiled SetSlot: two 64-bit tag words, 32-bit exp, 32-bit padding
_U32_MAX = 4_294_967_295


def slots(max_entries: int) -> int:
    """The table size for a bound: the smallest power of two (at least 16) at most 3/4 full when at the bound."""
    n = 16
    while n * 3 < max_entries * 4:
        n <<= 1
    return n


def exp32(exp: int) -> int:
    """``exp`` as a slot stores it: 1 for any exp <= 0 (never the empty marker 0), saturated at 2**32 - 1."""
    return 1 if exp <= 0 else min(exp, _U32_MAX)


class VerifiedSet:
    """A bounded open-addressing table of 16-byte tags and their exp (the reference; slow, and simple)."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError("cache_size must be >= 0")
        self.max_entries = max_entries
        n = slots(max_entries) if max_entries > 0 else 0
        self._mask = n - 1
        self._tags: list[bytes] = [b""] * n
        self._exps: list[int] = [0] * n  # 0 = empty
        self.count = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def _home(self, tag: bytes) -> int:
        return int.from_bytes(tag[:8], "little") & self._mask

    def __contains__(self, tag: bytes) -> bool:
        if not self.enabled:
            return False
        i = self._home(tag)
        while self._exps[i] != 0:
            if self._tags[i] == tag:
                return True
            i = (i + 1) & self._mask
        return False

    def insert(self, tag: bytes, exp: int, now: int) -> bool:
        """Add one entry by the rule above; True if it was not there yet and now is."""
        if not self.enabled:
            return False
        e = exp32(exp)
        home = i = self._home(tag)
        target = -1
        while self._exps[i] != 0:
            if self._tags[i] == tag:
                self._exps[i] = max(self._exps[i], e)
                return False
            if target < 0 and self._exps[i] <= now:
                target = i  # the first expired slot on the path is reused
            i = (i + 1) & self._mask
        if target < 0:
            if self.count < self.max_entries:
                target = i
                self.count += 1
            elif self._exps[home] != 0:
                target = home  # full: the entry in the home slot makes way
                self.evictions += 1
            else:  # full and the home slot empty: writing there would hold one more than count
                self.evictions += 1
                return False
        self._tags[target], self._exps[target] = tag, e
        return True

    def table(self) -> bytes:
        """Every slot as 16 tag bytes + 4 exp bytes (little-endian; zeros when empty): the parity tests'
        byte-for-byte view of the compiled table (``CVerifier.set_table``)."""
        out = bytearray()
        for tag, e in zip(self._tags, self._exps, strict=True):
            out += (tag if e else bytes(16)) + e.to_bytes(4, "little")
        return bytes(out)


__all__ = ["SLOT_BYTES", "VerifiedSet", "exp32", "slots"]
