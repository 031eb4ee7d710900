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

# Layout of ClassifierArrays.slots and .entries columns.
SLOT_ORDER, SLOT_ID, SLOT_LIVE, SLOT_BOX = 0, 1, 2, 3
ENTRY_SLOT, ENTRY_ID, ENTRY_BOX = 0, 1, 2
# Layout of an inner node in ClassifierArrays.tree: dimension, shift, mask, then the
# mask + 1 child references, chosen by bits: (v >> shift) & mask. When shift is -1 the
# node cuts at EDGE_CUTS sorted bounds stored before its EDGE_CUTS + 1 children instead
# (padded with 0xFFFFFFFF bounds, so the count loop has a fixed length and no branch to
# mispredict). A leaf record is [first entry, end entry].
NODE_DIM, NODE_SHIFT, NODE_MASK, NODE_CHILDREN = 0, 1, 2, 3
EDGE_CUTS = 7


class ClassifierArrays(NamedTuple):
    """Everything a lookup reads: four plain arrays, to swap whole or share, and a shape.

    Few arrays on purpose: a jitted function receives each array as a dozen machine
    words, and a lookup that took fourteen arrays ran at half the speed.

    A *slot* is one box (per-dimension inclusive [lo, hi]) of one rule; a rule whose
    match is not one box per field (a non-contiguous mask) owns several slots. Slots in
    the trees are numbered in search order, so there a smaller slot index wins; slots
    added since the build are listed in `delta` and checked one by one by their order.
    """

    # int32: [n_trees, (root, first slot) per tree, then inner nodes and leaves].
    # A reference r >= 0 is an inner node at tree[r], r < 0 a leaf at tree[~r].
    tree: np.ndarray
    # uint32 (entries, 2 + 2D): slot, rule id, lo0, hi0, lo1, hi1, ...; one row per rule
    # copy in a leaf, all a leaf scan and its answer need in one contiguous block (a
    # removed rule's rows get an empty box, lo0 > hi0, rather than a flag to look up).
    entries: np.ndarray
    # int64 (slots, 3 + 2D): order (smaller wins), rule id, live (0 once removed), box.
    slots: np.ndarray
    # int64 (1 + capacity,): delta[0] slots added since the build, listed from delta[1].
    delta: np.ndarray
    # One zero per field. Its length is a constant to the compiler (one compiled kernel
    # per field count), so loops over the fields unroll: acl1_10k ran 15% faster.
    fields: tuple


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
        if a.entries[e, ENTRY_SLOT] >= limit:
            break
        # No early exit per field: a branch taken at random costs more than the compares.
        inside = True
        for d in range(len(a.fields)):
            inside &= (h[d] >= a.entries[e, ENTRY_BOX + 2 * d]) & (h[d] <= a.entries[e, ENTRY_BOX + 1 + 2 * d])
        if inside:
            return e
    return best


@_inline_kernel
def _beaten(a: ClassifierArrays, t: int, best: int) -> bool:
    """Whether entry `best` comes before everything in tree t (trees are sorted by their
    first slot, so then no later tree can win either)."""
    return best >= 0 and a.tree[2 + 2 * t] >= a.entries[best, ENTRY_SLOT]


@_inline_kernel
def _finish(a: ClassifierArrays, h: np.ndarray, best: int) -> int:
    """The rule id of entry `best` (-1: none), unless a slot added since the build wins."""
    winner, order = -1, np.int64(0)
    if best >= 0:
        winner = a.entries[best, ENTRY_ID]
        if a.delta[0]:
            order = a.slots[a.entries[best, ENTRY_SLOT], SLOT_ORDER]
    for k in range(1, 1 + a.delta[0]):
        s = a.delta[k]
        if a.slots[s, SLOT_LIVE] and (winner < 0 or a.slots[s, SLOT_ORDER] < order):
            inside = True
            for d in range(len(a.fields)):
                inside &= (h[d] >= a.slots[s, SLOT_BOX + 2 * d]) & (h[d] <= a.slots[s, SLOT_BOX + 2 * d + 1])
            if inside:
                winner, order = a.slots[s, SLOT_ID], a.slots[s, SLOT_ORDER]
    return winner


@_kernel
def lookup(a: ClassifierArrays, h: np.ndarray) -> int:
    """Rule id of the first match for one header h (uint32[D]), or NO_MATCH."""
    best = -1
    for t in range(a.tree[0]):
        if _beaten(a, t, best):
            break
        n = a.tree[1 + 2 * t]
        while n >= 0:
            n = _step(a.tree, n, h)
        best = _scan_leaf(a, ~n, h, best)
    return _finish(a, h, best)


GROUP = 4  # headers walked through a tree together (measured: 2, 4, 6, 8, 16; 4 was best)
_PARKED = -(1 << 40)  # below every ~leaf value: this header is done with the current tree


@_kernel
def _classify_groups(a: ClassifierArrays, headers: np.ndarray, out: np.ndarray, node: np.ndarray, best: np.ndarray) -> None:
    """lookup() for every header, GROUP at a time: the headers of a group take their
    steps down a tree in turn, then scan their leaves one after another, so the cache
    misses of different headers overlap instead of queueing."""
    n = headers.shape[0]
    for g0 in range(0, n - n % GROUP, GROUP):
        best[:] = -1
        for t in range(a.tree[0]):
            root = a.tree[1 + 2 * t]
            active = 0
            for j in range(GROUP):
                if _beaten(a, t, best[j]):
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
    for i in range(n - n % GROUP, n):
        out[i] = lookup(a, headers[i])


@njit(cache=True, nogil=True)
def classify_batch(a: ClassifierArrays, headers: np.ndarray, out: np.ndarray) -> None:
    """out[i] = lookup(a, headers[i]) for a batch of headers ((N, D) uint32)."""
    _classify_groups(a, headers, out, np.empty(GROUP, np.int64), np.empty(GROUP, np.int64))


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
