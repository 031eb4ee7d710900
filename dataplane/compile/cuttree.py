"""Build one decision tree over rule boxes (HiCuts/HyperCuts-style cuts, jitted: a 10k-rule
set builds in tens of ms).

Why cut trees: a lookup costs a handful of dependent loads plus a short leaf scan,
whatever the rule count, and the tree is plain arrays the kernels walk. The alternatives
we weighed: tuple-space search (TupleMerge) probes one hash table per prefix-length tuple,
tens per packet on ClassBench sets; DPDK-style byte tries take about 13 dependent steps
and need SIMD across packets to be fast.

Each inner node cuts one dimension of its region into children:
- equal cuts: child = (value >> shift) & mask, the top bits in which the region still
  varies, as many as the space factor allows (HiCuts), after shrinking the region to the
  bounding box of its rules (HyperCuts' region compaction);
- or cuts at up to 7 rule edges (HyperSplit-style), when those separate the rules
  better, as they do where single ports sit among port-wildcard rules.
Neighbouring children that would hold the same rules share one subtree.

The result refers to slots by index; `compile.classifier` stitches the trees of a table
together with `emit_tree` into the flat layout `kernels.classify` reads.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from dataplane.kernels.classify import EDGE_CUTS

EDGE_SAMPLE = 64  # rule edges looked at to place cuts at edges


@njit(cache=True)
def _grow(a: np.ndarray, need: int) -> np.ndarray:
    if need <= a.shape[0]:
        return a
    cap = max(need, 2 * a.shape[0])
    b = np.empty((cap,) + a.shape[1:], a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def _bit_length(x: int) -> int:
    n = 0
    while x:
        x >>= 1
        n += 1
    return n


@njit(cache=True)
def _largest_child(lo, hi, rules, d, reg_lo, reg_hi, shift, mask, bounds, diff):
    """(largest child, sum of child sizes + children) of cutting dimension d with
    (shift, mask), or at `bounds` when there are any. `diff` is scratch space."""
    n_children = bounds.shape[0] + 1 if bounds.shape[0] else mask + 1
    diff[: n_children + 1] = 0
    total = n_children
    for r in rules:
        ja = _child(max(np.int64(lo[r, d]), reg_lo[d]), shift, mask, bounds)
        jb = _child(min(np.int64(hi[r, d]), reg_hi[d]), shift, mask, bounds)
        total += jb - ja + 1
        diff[ja] += 1
        diff[jb + 1] -= 1
    run, largest = 0, 0
    for c in range(n_children):
        run += diff[c]
        largest = max(largest, run)
    return largest, total


@njit(cache=True)
def _copies(lo, hi, rules, d, reg_lo, reg_hi, shift, mask):
    """Sum of child sizes + children of an equal cut (HiCuts' space measure)."""
    total = mask + 1
    for r in rules:
        total += ((min(np.int64(hi[r, d]), reg_hi[d]) >> shift) & mask) - ((max(np.int64(lo[r, d]), reg_lo[d]) >> shift) & mask) + 1
    return total


@njit(cache=True)
def _child(v, shift, mask, bounds):
    if bounds.shape[0]:
        return np.searchsorted(bounds, v, side="right")
    return (v >> shift) & mask


@njit(cache=True)
def _endpoint_bounds(lo, hi, rules, d, reg_lo, reg_hi, k):
    """Up to k cut points, evenly spaced among the rule edges inside the region."""
    edges = np.empty(2 * rules.shape[0], np.int64)
    m = 0
    for r in rules:
        a = max(np.int64(lo[r, d]), reg_lo[d])
        z = min(np.int64(hi[r, d]), reg_hi[d])
        if a > reg_lo[d]:
            edges[m] = a
            m += 1
        if z < reg_hi[d]:
            edges[m] = z + 1
            m += 1
    if m > EDGE_SAMPLE:  # quantiles of a sample are as good, and sorting all cost half the build
        edges[:EDGE_SAMPLE] = edges[(np.arange(EDGE_SAMPLE) * m) // EDGE_SAMPLE]
        m = EDGE_SAMPLE
    edges = np.unique(edges[:m])
    if edges.shape[0] <= k:
        return edges
    return np.unique(edges[(np.arange(1, k + 1) * edges.shape[0]) // (k + 1)])


@njit(cache=True)
def _choose_cut(lo, hi, rules, reg_lo, reg_hi, cutting_fields, spfac, max_bits, diff):
    """The cut that leaves the smallest largest child: (dimension, shift, mask, bounds,
    largest). Equal cuts use as many bits as the space factor allows (sum of child sizes
    <= spfac * rules); a cut at rule edges (up to EDGE_CUTS of them, HyperSplit-style)
    is taken when it does strictly better, as it does where narrow rules (single ports)
    sit among wide ones and equal cuts would spend all their bits on empty space."""
    n = rules.shape[0]
    no_bounds = np.zeros(0, np.int64)
    best = (-1, 0, 0, no_bounds, n + 1, 0)
    for d in range(lo.shape[1]):
        rl, rh = reg_lo[d], reg_hi[d]
        if rl == rh or not cutting_fields[d]:
            continue
        top = _bit_length(rl ^ rh)  # bits [0, top) vary inside the region
        # The most bits within the space factor (copies grow with bits: binary search).
        b_lo, b_hi = 1, min(top, max_bits)
        while b_lo < b_hi:
            b = (b_lo + b_hi + 1) // 2
            if _copies(lo, hi, rules, d, reg_lo, reg_hi, top - b, (1 << b) - 1) <= spfac * n:
                b_lo = b
            else:
                b_hi = b - 1
        shift, mask = top - b_lo, (1 << b_lo) - 1
        largest, total = _largest_child(lo, hi, rules, d, reg_lo, reg_hi, shift, mask, no_bounds, diff)
        if largest < best[4] or (largest == best[4] and total < best[5]):
            best = (d, shift, mask, no_bounds, largest, total)
        if 2 * largest <= n:
            continue  # equal cuts already halve the rules here; edges cost a sort to find
        bounds = _endpoint_bounds(lo, hi, rules, d, reg_lo, reg_hi, EDGE_CUTS)
        if bounds.shape[0]:
            largest, total = _largest_child(lo, hi, rules, d, reg_lo, reg_hi, 0, 0, bounds, diff)
            if largest < best[4] and total <= spfac * n:
                best = (d, 0, bounds.shape[0], bounds, largest, total)
    return best[0], best[1], best[2], best[3], best[4]


@njit(cache=True)
def build_tree(lo, hi, members, dim_max, binth, spfac, max_bits):
    """Cut tree over the slots `members` (in search order) of boxes lo/hi (uint32 (S, D)).

    Returns (root, node, children, bounds, leaf, entry_slot):
    root/children hold node indices (>= 0) or ~leaf; node rows are (dim, shift, mask,
    first child, first bound): an equal cut when mask+1 children are chosen by bits, a
    cut at bounds[first bound : first bound + mask] when shift is -1; leaf rows are
    [start, end) in entry_slot.
    """
    D = lo.shape[1]
    node = np.empty((64, 5), np.int64)
    children = np.empty(256, np.int32)
    all_bounds = np.empty(64, np.int64)
    leaf = np.empty((64, 2), np.int32)
    entry = np.empty(max(64, members.shape[0]), np.int32)
    n_node = n_child = n_bound = n_leaf = n_entry = 0

    pool = np.empty(max(64, 2 * members.shape[0]), np.int32)  # rule lists of pending nodes
    pool[: members.shape[0]] = members
    # Pending nodes (a stack): their list in pool, where to write their reference
    # (ref0 == -1: the root), and their region.
    st = np.empty((64, 4), np.int64)  # start, length, ref0, ref1
    st_lo = np.empty((64, D), np.int64)
    st_hi = np.empty((64, D), np.int64)
    st[0, 0], st[0, 1], st[0, 2], st[0, 3] = 0, members.shape[0], -1, -1
    st_lo[0] = 0
    st_hi[0] = dim_max
    # Scratch space for one node at a time, allocated once (per node it cost a third of
    # the build): per rule of the node, and per child of a cut.
    m, c_max = members.shape[0], max(1 << max_bits, EDGE_CUTS + 1)
    ja_s, jb_s = np.empty(m, np.int64), np.empty(m, np.int64)
    per_child = np.empty((11, c_max + 1), np.int64)
    diff = np.empty(c_max + 1, np.int64)
    reg_lo, reg_hi = np.empty(D, np.int64), np.empty(D, np.int64)
    cutting_fields = np.empty(D, np.bool_)
    pending = 1
    root = 0
    while pending:
        pending -= 1
        start, n, ref0, ref1 = st[pending, 0], st[pending, 1], st[pending, 2], st[pending, 3]
        reg_lo[:] = st_lo[pending]
        reg_hi[:] = st_hi[pending]
        rules = pool[start : start + n]
        n_pool = start + n  # everything above was consumed: lists are used in stack order

        d, largest = -1, n
        if n > binth:
            # Shrink the region to the rules' bounding box (HyperCuts' region compaction) so
            # cuts spend their bits where the rules differ. A header outside it matches none
            # of these rules, whichever child it falls into.
            # A field every rule covers whole cannot separate them: skip it (cutting_fields).
            for e in range(D):
                bb_lo, bb_hi = reg_hi[e], reg_lo[e]
                top_lo, low_hi = reg_lo[e], reg_hi[e]
                for r in rules:
                    bb_lo = min(bb_lo, np.int64(lo[r, e]))
                    bb_hi = max(bb_hi, np.int64(hi[r, e]))
                    top_lo = max(top_lo, np.int64(lo[r, e]))
                    low_hi = min(low_hi, np.int64(hi[r, e]))
                reg_lo[e] = max(reg_lo[e], bb_lo)
                reg_hi[e] = min(reg_hi[e], bb_hi)
                cutting_fields[e] = top_lo > reg_lo[e] or low_hi < reg_hi[e]
            d, shift, mask, bounds, largest = _choose_cut(lo, hi, rules, reg_lo, reg_hi, cutting_fields, spfac, max_bits, diff)
        if d < 0 or largest >= n:  # small enough, or no cut separates these rules
            leaf = _grow(leaf, n_leaf + 1)
            entry = _grow(entry, n_entry + n)
            leaf[n_leaf, 0] = n_entry
            entry[n_entry : n_entry + n] = rules
            n_entry += n
            leaf[n_leaf, 1] = n_entry
            ref = ~n_leaf
            n_leaf += 1
        else:
            n_children = bounds.shape[0] + 1 if bounds.shape[0] else mask + 1
            # Each child's slice of the region in dimension d.
            c_lo, c_hi, group_of, g_first, starts, ends = per_child[0], per_child[1], per_child[2], per_child[3], per_child[4], per_child[5]
            g_lo, g_hi, count, offset, fill = per_child[6], per_child[7], per_child[8], per_child[9], per_child[10]
            if bounds.shape[0]:
                c_lo[0] = reg_lo[d]
                c_lo[1:n_children] = bounds
                c_hi[: n_children - 1] = bounds - 1
                c_hi[n_children - 1] = reg_hi[d]
            else:
                top = shift + _bit_length(mask)
                base = (reg_lo[d] >> top) << top
                for c in range(n_children):
                    c_lo[c] = max(reg_lo[d], base + (c << shift))
                    c_hi[c] = min(reg_hi[d], base + ((c + 1) << shift) - 1)
            first_c = _child(reg_lo[d], shift, mask, bounds)
            last_c = _child(reg_hi[d], shift, mask, bounds)
            ja, jb = ja_s[:n], jb_s[:n]
            starts[: n_children + 1] = 0
            ends[: n_children + 1] = 0
            for i in range(n):
                r = rules[i]
                ja[i] = _child(max(np.int64(lo[r, d]), reg_lo[d]), shift, mask, bounds)
                jb[i] = _child(min(np.int64(hi[r, d]), reg_hi[d]), shift, mask, bounds)
                starts[ja[i]] = 1
                ends[jb[i]] = 1
            # Group the children: a new group begins wherever some rule begins or ends.
            g = -1
            for c in range(first_c, last_c + 1):
                if c == first_c or starts[c] or ends[c - 1]:
                    g += 1
                    g_first[g] = c
                group_of[c] = g
            n_groups = g + 1
            for g in range(n_groups):
                g_last = g_first[g + 1] - 1 if g + 1 < n_groups else last_c
                g_lo[g] = c_lo[g_first[g]]
                g_hi[g] = c_hi[g_last]
            # Each group's list: the rules that reach it, in search order. (Rules behind one
            # that covers the whole child are kept: dropping them saved 15-40% memory but
            # made removing the covering rule a rebuild.)
            count[:n_groups] = 0
            for i in range(n):
                for g in range(group_of[ja[i]], group_of[jb[i]] + 1):
                    count[g] += 1
            total = n_pool
            for g in range(n_groups):
                offset[g] = total
                total += count[g]
            pool = _grow(pool, total)
            rules = pool[start : start + n]  # pool may have moved
            fill[:n_groups] = offset[:n_groups]
            for i in range(n):
                for g in range(group_of[ja[i]], group_of[jb[i]] + 1):
                    pool[fill[g]] = rules[i]
                    fill[g] += 1

            node = _grow(node, n_node + 1)
            children = _grow(children, n_child + n_children)
            all_bounds = _grow(all_bounds, n_bound + bounds.shape[0])
            all_bounds[n_bound : n_bound + bounds.shape[0]] = bounds
            node[n_node, 0], node[n_node, 3], node[n_node, 4] = d, n_child, n_bound
            node[n_node, 1] = -1 if bounds.shape[0] else shift
            node[n_node, 2] = n_children - 1
            ref = n_node
            n_node += 1
            n_bound += bounds.shape[0]
            st = _grow(st, pending + n_groups)
            st_lo = _grow(st_lo, pending + n_groups)
            st_hi = _grow(st_hi, pending + n_groups)
            for g in range(n_groups):
                # Children outside the region are never reached: give them to the edge groups.
                c0 = 0 if g == 0 else g_first[g]
                c1 = n_children if g == n_groups - 1 else g_first[g + 1]
                st[pending, 0], st[pending, 1] = offset[g], count[g]
                st[pending, 2], st[pending, 3] = n_child + c0, n_child + c1
                st_lo[pending] = reg_lo
                st_hi[pending] = reg_hi
                st_lo[pending, d] = g_lo[g]
                st_hi[pending, d] = g_hi[g]
                pending += 1
            n_child += n_children
        if ref0 < 0:
            root = ref
        else:
            children[ref0:ref1] = ref
    return root, node[:n_node], children[:n_child], all_bounds[:n_bound], leaf[:n_leaf], entry[:n_entry]


@njit(cache=True)
def emit_tree(out, pos, root, node, children, bounds, leaf, entry_base):
    """Write one tree in the flat layout of kernels.classify into out[pos:]: each inner
    node as (dim, shift, mask), its bounds if it cuts at bounds (padded to EDGE_CUTS),
    then its child references; then the leaf records. Returns (root reference, end)."""
    node_at = np.empty(node.shape[0], np.int64)
    for i in range(node.shape[0]):
        node_at[i] = pos
        pos += node_size(node[i, 1], node[i, 2])
    leaf_at = np.empty(leaf.shape[0], np.int64)
    for j in range(leaf.shape[0]):
        leaf_at[j] = pos
        out[pos] = leaf[j, 0] + entry_base
        out[pos + 1] = leaf[j, 1] + entry_base
        pos += 2
    for i in range(node.shape[0]):
        o = node_at[i]
        shift, mask = node[i, 1], node[i, 2]
        out[o], out[o + 1], out[o + 2] = node[i, 0], shift, mask
        o += 3
        n_children = mask + 1
        if shift < 0:
            for k in range(EDGE_CUTS):  # int32 bit patterns of uint32 bounds, read back masked
                out[o + k] = np.int32(np.uint32(bounds[node[i, 4] + k] if k < mask else 0xFFFFFFFF))
            o += EDGE_CUTS
            n_children = EDGE_CUTS + 1
        for c in range(n_children):
            r = children[node[i, 3] + min(c, mask)]  # past the real bounds: the last child
            out[o + c] = node_at[r] if r >= 0 else ~leaf_at[~r]
    return (node_at[root] if root >= 0 else ~leaf_at[~root]), pos


@njit(cache=True)
def node_size(shift, mask):
    return 3 + (2 * EDGE_CUTS + 1 if shift < 0 else mask + 1)


@njit(cache=True)
def emitted_size(node, leaf):
    """How many int32s emit_tree writes for this tree."""
    size = 2 * leaf.shape[0]
    for i in range(node.shape[0]):
        size += node_size(node[i, 1], node[i, 2])
    return size
