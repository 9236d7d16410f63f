# The verified-code set of docs/payload.md section 6, included into _verify.pyx.
#
# An entry is the code's 16-byte tag (BLAKE2b-128 keyed with the deployment's set key, over the exact code
# bytes) and the code's exp: 24 bytes a slot, at most 3/4 of the slots in use, so tens of bytes per entry and a
# nation's codes fit in a few GB. The tag is a keyed MAC, so its bits are uniform and an attacker cannot aim
# codes at one region of the table: the home slot is the tag's low bits, with linear probing.
#
# Entries are never deleted, only overwritten, so no tombstones are needed: an insert reuses the first expired
# slot on its probe path, else takes the empty slot that ends it; when the set holds its maximum it evicts the
# entry in its home slot, or leaves the new entry out when that slot is empty (both counted), so the slots in use
# are exactly `count` and never more than 3/4 of the table. A revoked key needs no sweep: the revocation check
# runs before the lookup.
# Only the serial phases and load_set touch it, under the verifier's lock.

cdef enum:
    TAG_LEN = 16


cdef struct SetSlot:       # 24 bytes
    uint64_t t0            # the tag, as two words
    uint64_t t1
    uint32_t exp           # the code's exp (seconds, saturated); 0 = empty slot
    uint32_t pad           # keeps slots 8-byte aligned (a revoked key needs no field: it is checked first)


cdef struct VSet:
    SetSlot* slots
    uint64_t mask          # slots - 1 (a power of two)
    uint64_t count
    uint64_t max_entries
    uint64_t evictions


cdef inline uint32_t _exp32(int64_t exp) noexcept nogil:
    if exp <= 0:
        return 1           # never 0 (the empty marker); such a code is expired, its slot the first reused
    if exp >= <int64_t>4294967295:
        return <uint32_t>4294967295
    return <uint32_t>exp


cdef bint _set_find(const VSet* s, const uint8_t* tag) noexcept nogil:
    cdef uint64_t a, b, i
    memcpy(&a, tag, 8)
    memcpy(&b, tag + 8, 8)
    i = a & s.mask
    while s.slots[i].exp != 0:
        if s.slots[i].t0 == a and s.slots[i].t1 == b:
            return True
        i = (i + 1) & s.mask
    return False


cdef bint _set_insert(VSet* s, const uint8_t* tag, int64_t exp, int64_t now) noexcept nogil:
    """Add one entry; True if it was not there yet."""
    cdef uint64_t a, b, i, home, target
    cdef bint reuse = False
    cdef SetSlot* slot
    memcpy(&a, tag, 8)
    memcpy(&b, tag + 8, 8)
    home = a & s.mask
    i = home
    target = home
    while s.slots[i].exp != 0:
        slot = &s.slots[i]
        if slot.t0 == a and slot.t1 == b:
            if _exp32(exp) > slot.exp:
                slot.exp = _exp32(exp)
            return False
        if not reuse and <int64_t>slot.exp <= now:
            reuse = True
            target = i
        i = (i + 1) & s.mask
    if not reuse:
        if s.count < s.max_entries:
            target = i
            s.count += 1
        elif s.slots[home].exp != 0:
            target = home  # full: the entry in the home slot makes way (counted)
            s.evictions += 1
        else:
            # Full and the home slot empty: writing there would hold one entry more than count says, and enough
            # of those would leave no empty slot for a probe to end on. The new entry is the one left out.
            s.evictions += 1
            return False
    slot = &s.slots[target]
    slot.t0, slot.t1, slot.exp, slot.pad = a, b, _exp32(exp), 0
    return True
