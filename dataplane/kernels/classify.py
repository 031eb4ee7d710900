"""First-match packet classification over compiled cut trees (see compile/classifier.py).

`lookup` classifies one header and is meant to be called from other jitted loops (the
packet engine's parse -> classify -> meter); `classify_batch` is the thin loop around it
that walks several headers through the trees together so their memory loads overlap.
`brute_force` is the obvious reference every result is checked against.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

NO_MATCH = -1
TOO_WIDE = -2  # the header has a value above its field's largest (a port above 65,535)

# Layout of ClassifierArrays.entries and .delta columns.
ENTRY_SLOT, ENTRY_ID, ENTRY_BOX = 0, 1, 2
DELTA_RANK, DELTA_ORDER, DELTA_ID, DELTA_BOX = 0, 1, 2, 3
# Layout of an inner node in ClassifierArrays.tree: dimension, shift, mask, then the
# mask + 1 child references, chosen by bits: (v >> shift) & mask. When shift is -1 the
# node cuts at EDGE_CUTS sorted bounds stored before its EDGE_CUTS + 1 children instead
# (padded with 0xFFFFFFFF bounds, so the count loop has a fixed length and no branch to
# mispredict). A leaf record is [first entry, end entry].
NODE_DIM, NODE_SHIFT, NODE_MASK, NODE_CHILDREN = 0, 1, 2, 3
EDGE_CUTS = 7
# Per tree, after tree[0]: its root, its first slot, and its filter: the field (-1: none),
# the shift that leaves a value's top FILTER_BITS bits, and where its bitmap starts. Bit b
# of a filter says whether any rule of the tree reaches into values whose top bits are b.
# Most random headers fall outside every tree of narrow address rules: one load from a
# bitmap that stays in L1 settles those trees (acl1_10k random: 81% and 94% of headers
# skip the two trees).
TREE_ROOT, TREE_FIRST_SLOT, TREE_FILTER_DIM, TREE_FILTER_SHIFT, TREE_FILTER_AT, TREE_HEADER = 0, 1, 2, 3, 4, 5
FILTER_BITS = 16


class ClassifierArrays(NamedTuple):
    """Everything a lookup reads: four plain arrays and the fields' largest values.

    Few arrays on purpose: a jitted function receives each array as a dozen machine
    words, and a lookup that took fourteen arrays ran at half the speed. The arrays are
    read-only: compile.classifier publishes each change as a new ClassifierArrays.

    A *slot* is one box (per-dimension inclusive [lo, hi]) of one rule; a rule whose
    match is not one box per field (a non-contiguous mask) owns several slots. Slots in
    the trees are numbered in search order, so there a smaller slot index wins; slots
    added since the build are the rows of `delta`, checked one by one.
    """

    # int32: [n_trees, TREE_HEADER ints per tree, then filters, inner nodes and leaves].
    # A reference r >= 0 is an inner node at tree[r], r < 0 a leaf at tree[~r].
    tree: np.ndarray
    # uint32 (entries, 2 + 2D): slot, rule id, lo0, hi0, lo1, hi1, ...; one row per rule
    # copy in a leaf, all a leaf scan and its answer need in one contiguous block.
    entries: np.ndarray
    # uint32 bitmap over the tree slots: bit s set once slot s's rule is removed. Looked
    # at only for an entry that matched; a removal copies these few words, not the
    # megabytes of entries (a 10k table: 1.3 KB).
    removed: np.ndarray
    # int64 (added slots, 3 + 2D): rank (the first tree slot it comes before in search
    # order), order (smaller wins among added slots), rule id, box.
    delta: np.ndarray
    # The largest value of each field. Its length is a constant to the compiler (one
    # compiled kernel per field count), so loops over the fields unroll: acl1_10k ran
    # 15% faster.
    field_max: tuple


# Kernels that take the arrays are compiled without Numba's reference counting
# (_nrt=False): they allocate nothing, and with counting every call increments and
# decrements each array's count (acl1_10k: 5.3 Mpps with counting, 30 Mpps without).
_kernel = njit(cache=True, nogil=True, _nrt=False)
_inline_kernel = njit(cache=True, nogil=True, _nrt=False, inline="always")


@_inline_kernel
def _step(tree: np.ndarray, n: int, h: np.ndarray) -> int:
    """One step down a tree: the child of inner node n that header h belongs to."""
    v = h[tree[n + NODE_DIM]]
    shift, mask = tree[n + NODE_SHIFT], tree[n + NODE_MASK]
    if shift >= 0:
        return tree[n + NODE_CHILDREN + ((v >> shift) & mask)]
    c = 0  # a cut at EDGE_CUTS sorted bounds: the child is how many of them v has reached
    for k in range(EDGE_CUTS):
        c += v >= (tree[n + NODE_CHILDREN + k] & 0xFFFFFFFF)
    return tree[n + NODE_CHILDREN + EDGE_CUTS + c]


@_inline_kernel
def _scan_leaf(a: ClassifierArrays, leaf: int, h: np.ndarray, best: int) -> int:
    """The first entry of the leaf that matches h if it comes before entry `best` in
    search order (-1: none yet), else best. Leaf entries are in search order, so the
    scan stops at the first entry that could not win."""
    limit = a.entries[best, ENTRY_SLOT] if best >= 0 else np.uint32(0xFFFFFFFF)
    for e in range(a.tree[leaf], a.tree[leaf + 1]):
        s = a.entries[e, ENTRY_SLOT]
        if s >= limit:
            break
        # No early exit per field: a branch taken at random costs more than the compares.
        inside = True
        for d in range(len(a.field_max)):
            inside &= (h[d] >= a.entries[e, ENTRY_BOX + 2 * d]) & (h[d] <= a.entries[e, ENTRY_BOX + 1 + 2 * d])
        if inside and not (a.removed[s >> 5] >> (s & 31)) & 1:
            return e
    return best


@_inline_kernel
def _beaten(a: ClassifierArrays, t: int, best: int) -> bool:
    """Whether entry `best` comes before everything in tree t (trees are sorted by their
    first slot, so then no later tree can win either)."""
    return best >= 0 and a.tree[1 + TREE_HEADER * t + TREE_FIRST_SLOT] >= a.entries[best, ENTRY_SLOT]


@_inline_kernel
def _filtered_out(tree: np.ndarray, t: int, h: np.ndarray) -> bool:
    """Whether tree t's filter shows that none of its rules can match h."""
    at = 1 + TREE_HEADER * t
    dim = tree[at + TREE_FILTER_DIM]
    if dim < 0:
        return False
    b = (h[dim] >> tree[at + TREE_FILTER_SHIFT]) & ((1 << FILTER_BITS) - 1)  # in bounds for any value
    return not (tree[tree[at + TREE_FILTER_AT] + (b >> 5)] >> (b & 31)) & 1


@_inline_kernel
def _finish(a: ClassifierArrays, h: np.ndarray, best: int) -> int:
    """The rule id of entry `best` (-1: none), unless a slot added since the build wins;
    TOO_WIDE for a header that does not fit its fields (checked here, once per header,
    rather than before the walk: any header walks safely, every index is masked)."""
    too_wide = False
    for d in range(len(a.field_max)):
        too_wide |= h[d] > a.field_max[d]
    if too_wide:
        return TOO_WIDE
    winner, slot, order = NO_MATCH, np.int64(1) << 62, np.int64(1) << 62
    if best >= 0:
        winner, slot = a.entries[best, ENTRY_ID], a.entries[best, ENTRY_SLOT]
    for k in range(a.delta.shape[0]):
        # An added slot beats the trees' answer if it comes before it, and the other added
        # slots if its order is smaller.
        if a.delta[k, DELTA_RANK] <= slot and a.delta[k, DELTA_ORDER] < order:
            inside = True
            for d in range(len(a.field_max)):
                inside &= (h[d] >= a.delta[k, DELTA_BOX + 2 * d]) & (h[d] <= a.delta[k, DELTA_BOX + 2 * d + 1])
            if inside:
                winner, order = a.delta[k, DELTA_ID], a.delta[k, DELTA_ORDER]
    return winner


@_kernel
def lookup(a: ClassifierArrays, h: np.ndarray) -> int:
    """Rule id of the first match for one header h (uint32[D]), NO_MATCH, or TOO_WIDE."""
    best = -1
    for t in range(a.tree[0]):
        if _beaten(a, t, best):
            break
        if _filtered_out(a.tree, t, h):
            continue
        n = a.tree[1 + TREE_HEADER * t + TREE_ROOT]
        while n >= 0:
            n = _step(a.tree, n, h)
        best = _scan_leaf(a, ~n, h, best)
    return _finish(a, h, best)


GROUP = 4  # headers walked through a tree together (measured: 2, 4, 6, 8, 16; 4 was best)
_PARKED = -(1 << 40)  # below every ~leaf value: this header is done with the current tree


@_kernel
def _classify_groups(a: ClassifierArrays, headers: np.ndarray, out: np.ndarray, node: np.ndarray, best: np.ndarray) -> int:
    """lookup() for every header, GROUP at a time: the headers of a group take their
    steps down a tree in turn, then scan their leaves one after another, so the cache
    misses of different headers overlap instead of queueing. Returns how many headers
    were TOO_WIDE."""
    n, too_wide = headers.shape[0], 0
    for g0 in range(0, n - n % GROUP, GROUP):
        best[:] = -1
        for t in range(a.tree[0]):
            root = a.tree[1 + TREE_HEADER * t + TREE_ROOT]
            active = 0
            for j in range(GROUP):
                if _beaten(a, t, best[j]) or _filtered_out(a.tree, t, headers[g0 + j]):
                    node[j] = _PARKED
                else:
                    node[j] = root
                    active += root >= 0
            while active:
                active = 0
                for j in range(GROUP):
                    if node[j] >= 0:
                        node[j] = _step(a.tree, node[j], headers[g0 + j])
                        active += node[j] >= 0
            for j in range(GROUP):
                if node[j] != _PARKED:
                    best[j] = _scan_leaf(a, ~node[j], headers[g0 + j], best[j])
        for j in range(GROUP):
            out[g0 + j] = _finish(a, headers[g0 + j], best[j])
            too_wide += out[g0 + j] == TOO_WIDE
    for i in range(n - n % GROUP, n):
        out[i] = lookup(a, headers[i])
        too_wide += out[i] == TOO_WIDE
    return too_wide


@njit(cache=True, nogil=True)
def classify_batch(a: ClassifierArrays, headers: np.ndarray, out: np.ndarray) -> int:
    """out[i] = lookup(a, headers[i]) for a batch of headers ((N, D) uint32); returns how
    many were TOO_WIDE."""
    return _classify_groups(a, headers, out, np.empty(GROUP, np.int64), np.empty(GROUP, np.int64))


@njit(cache=True, nogil=True)
def brute_force(lo: np.ndarray, hi: np.ndarray, ids: np.ndarray, headers: np.ndarray, out: np.ndarray) -> None:
    """out[i] = ids[first s with lo[s] <= headers[i] <= hi[s]], or NO_MATCH.
    Slots must come in search order. Plain linear scan: the reference."""
    for i in range(headers.shape[0]):
        out[i] = NO_MATCH
        for s in range(lo.shape[0]):
            inside = True
            for d in range(headers.shape[1]):
                inside = inside and lo[s, d] <= headers[i, d] <= hi[s, d]
            if inside:
                out[i] = ids[s]
                break
