"""Compile a policy table into the arrays the jitted classifier walks, and keep them current.

A rule becomes one or more *slots*: boxes of inclusive per-field ranges (prefixes, ranges
and exact values give one box; a non-contiguous mask gives several). Slots are grouped by
the first address field in which they are narrow (EffiCuts' observation: wide and narrow
rules cut badly together), and `cuttree.build_tree` builds one tree per group.

One-rule updates do not rebuild: an added rule goes into a short `delta` list that every
lookup also checks; a removed rule's slots are marked in a small bitmap. A rebuild (tens
of ms for 10k rules) happens only when the delta list is full or a quarter of the slots
are dead. Each update publishes a new, read-only version of the arrays (`ClassifierTable`),
so readers never see one half done.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dataplane.classbench import FIVE_TUPLE
from dataplane.compile.cuttree import build_tree, emit_tree, emitted_size
from dataplane.kernels.classify import (DELTA_BOX, DELTA_ID, DELTA_ORDER, ENTRY_BOX, ENTRY_ID, ENTRY_SLOT, FILTER_BITS, TOO_WIDE,
                                       TREE_FILTER_AT, TREE_FILTER_DIM, TREE_FILTER_SHIFT, TREE_FIRST_SLOT, TREE_HEADER, TREE_ROOT, ClassifierArrays,
                                       classify_batch)
from dataplane.kernels.classify import brute_force as _brute_force_kernel
from dataplane.policy import MAX_PRIORITY, Exact, Field, Invalid, Masked, Match, Prefix, Range, Rule, Table

MAX_BOXES_PER_RULE = 256
# An address range this wide or wider (a prefix shorter than /4) counts as wide. Chosen by
# measurement on the 10k sets: at /16 ipc1 ran 30% slower and fw1 grew to 13 MB, at /8
# fw1 took 6 MB, at /1 fw1 took 15 MB and ran at half the speed; /4 kept all near 2 MB.
WIDE_ADDRESS = 1 << 28
# A tree gets a filter only if its rules leave at least half the values of some field's
# top bits unreached (kernels.classify).
FILTER_MAX_REACHED = 0.5


@dataclass(frozen=True, slots=True)
class TreeParams:
    """Knobs of the cut trees, chosen by measurement on the ClassBench sets (bench/)."""

    leaf_size: int = 6  # stop cutting at this many rules (measured 4-16: 6 balances speed and build time)
    space_factor: float = 4.0  # HiCuts' spfac: rule copies allowed per cut, per rule
    max_cut_bits: int = 8  # at most 2**8 children per node
    delta_capacity: int = 64  # added slots checked linearly before a rebuild
    # Trees of at most this many slots (the wide and catch-all groups, that every random
    # header walks) get leaves of at most small_tree_leaf_size rules: their lookups then
    # scan one rule instead of up to six, for a few KB. Measured on the 24 sets (1M
    # lookups each, trace and random): leaves of 1 up to 512 slots +12% (geometric mean),
    # of 2 +10%, of 1 up to 2,000 slots +9%, all trees at 3 +10% with 1.5x the memory.
    small_tree: int = 512
    small_tree_leaf_size: int = 1


def _one_range(m: Match, width: int, top: int) -> tuple[int, int] | None:
    """The one range m accepts on a field of `width` bits (largest value `top`), or None
    when it accepts several (a mask with free bits above set ones)."""
    # Kinds tested by identity, most common first: this runs for every field of every
    # rule of a build, most of a 10k-rule build's Python time.
    kind = type(m)
    if kind is Prefix:
        return m.value, m.value | ((1 << (width - m.length)) - 1)
    if kind is Range:
        return m.lo, m.hi
    if kind is Exact:
        return m.value, m.value
    if kind is Masked:
        free = ~m.mask & top
        return (m.value, m.value | free) if not free & (free + 1) else None
    return 0, top  # Wildcard


@functools.cache
def _specs(fields: tuple[Field, ...]) -> tuple[frozenset, tuple[tuple[Field, int, int], ...]]:
    """The fields as a set, and each with its width and largest value (looked up once)."""
    return frozenset(fields), tuple((f, f.width, f.max_value) for f in fields)


def rule_boxes(rule: Rule, fields: Sequence[Field]) -> list[tuple[int, ...]]:
    """The boxes whose union is what `rule` matches, each as (lo0, hi0, lo1, hi1, ...)."""
    covered, specs = _specs(fields if type(fields) is tuple else tuple(fields))
    matches = rule.matches
    if not matches.keys() <= covered:
        for f, m in matches.items():
            if f not in covered and m.ranges(f) != [(0, f.max_value)]:
                raise Invalid(f.name.lower(), f"this classifier matches only {[x.name.lower() for x in fields]}")
    box: list[int] = []
    for f, width, top in specs:
        m = matches.get(f)
        one = (0, top) if m is None else _one_range(m, width, top)
        if one is None:
            break
        box += one
    else:
        return [tuple(box)]
    per_field = [m.ranges(f) if (m := matches.get(f)) is not None else [(0, top)] for f, _, top in specs]
    boxes = math.prod(len(ranges) for ranges in per_field)
    if boxes > MAX_BOXES_PER_RULE:
        raise Invalid("matches", f"expands to {boxes} boxes, more than {MAX_BOXES_PER_RULE}")
    return [tuple(bound for r in combo for bound in r) for combo in itertools.product(*per_field)]


def _order(rule: Rule, rule_id: int) -> int:
    """Search order: higher priority first, then lower id (earlier in the table)."""
    return ((MAX_PRIORITY - rule.priority) << 32) | rule_id


# Columns of the slot rows the compiler keeps (one per box of a live or removed rule).
SLOT_ORDER, SLOT_ID, SLOT_BOX = 0, 1, 2


@dataclass(frozen=True, slots=True, eq=False)
class ClassifierTable:
    """One published version of a classifier's table. It never changes: an update
    publishes a new one, so whoever holds this one keeps classifying against it."""

    version: int
    arrays: ClassifierArrays
    fields: tuple[Field, ...]

    def classify(self, headers: np.ndarray) -> np.ndarray:
        """Rule id of the first match for each row of headers ((N, len(fields)) uint32), or
        -1. A value above its field's largest (a port above 65,535) is Invalid, naming the
        field and the row: no rule could say what it matches."""
        headers = np.ascontiguousarray(headers, dtype=np.uint32)
        if headers.ndim != 2 or headers.shape[1] != len(self.fields):
            raise Invalid("headers", f"expected shape (N, {len(self.fields)}), got {headers.shape}")
        out = np.empty(headers.shape[0], np.int32)
        if classify_batch(self.arrays, headers, out):
            row = int(np.flatnonzero(out == TOO_WIDE)[0])
            d = int(np.flatnonzero(headers[row] > np.array(self.arrays.field_max))[0])
            f = self.fields[d]
            raise Invalid(f"headers[{row}].{f.name.lower()}",
                          f"{int(headers[row, d])} does not fit the field's {f.width} bits (largest {f.max_value})")
        return out


class Classifier:
    """First-match classifier over `fields` (each at most 32 bits wide) with rule ids.

    How readers and writers share it (what the packet engine relies on):
    - `table` is the current ClassifierTable, `arrays` its arrays. They never change
      once published, so a jitted loop handed `clf.arrays` (read once per batch) sees one
      consistent table for as long as it runs: the old one or the new, never a mix.
    - Every add or remove publishes a new version with one attribute assignment (atomic
      in Python), copying only what it changes: the short delta array for an add or for
      removing an added rule, the bitmap of removed slots for removing a built rule,
      everything on a rebuild. An old version lives as long as someone holds it.
    - Writers are serialised by a lock; readers take none.
    """

    def __init__(self, rules: Mapping[int, Rule], fields: Sequence[Field] = FIVE_TUPLE, params: TreeParams = TreeParams()):
        self.fields = tuple(Field(f) for f in fields)
        for f in self.fields:
            if f.width > 32:
                raise Invalid("fields", f"{f.name.lower()} is {f.width} bits wide; the classifier takes at most 32")
        self.params = params
        self._rules: dict[int, Rule] = {}
        boxes, owners, priorities = [], [], []
        for rule_id, rule in rules.items():
            if not 0 <= rule_id < 2**31:
                raise Invalid("rule_id", f"must be 0..2147483647, got {rule_id}")
            for box in rule_boxes(rule, self.fields):
                boxes.append(box)
                owners.append(rule_id)
                priorities.append(rule.priority)
            self._rules[rule_id] = rule
        self._next_id = max(self._rules, default=-1) + 1
        self.rebuilds = 0
        self._writer = threading.Lock()
        self._table: ClassifierTable | None = None
        rows = np.empty((len(boxes), SLOT_BOX + 2 * len(self.fields)), np.int64)
        ids = np.array(owners, np.int64)
        rows[:, SLOT_ORDER] = ((MAX_PRIORITY - np.array(priorities, np.int64)) << 32) | ids  # as _order
        rows[:, SLOT_ID] = ids
        rows[:, SLOT_BOX:] = np.array(boxes, np.int64).reshape(len(boxes), 2 * len(self.fields))
        self._rebuild(rows)

    @classmethod
    def build(cls, table: Table, fields: Sequence[Field] = FIVE_TUPLE, params: TreeParams = TreeParams()) -> Classifier:
        """Rule ids are positions in the table."""
        return cls(dict(enumerate(table.rules)), fields, params)

    # --- queries -------------------------------------------------------------------------

    @property
    def table(self) -> ClassifierTable:
        """The current version (take it once and use it throughout a batch)."""
        return self._table

    @property
    def arrays(self) -> ClassifierArrays:
        """The current version's arrays, for `kernels.classify.lookup` in jitted loops."""
        return self._table.arrays

    @property
    def version(self) -> int:
        return self._table.version

    def classify(self, headers: np.ndarray) -> np.ndarray:
        """ClassifierTable.classify on the current version."""
        return self._table.classify(headers)

    @property
    def rules(self) -> dict[int, Rule]:
        with self._writer:
            return dict(self._rules)

    @property
    def table_bytes(self) -> int:
        """Memory of the lookup structures (trees and filters, leaves, delta)."""
        return sum(a.nbytes for a in self.arrays if isinstance(a, np.ndarray))

    # --- updates -------------------------------------------------------------------------

    def add(self, rule: Rule) -> int:
        """Add a rule; returns its id. Costs microseconds until the delta list is full."""
        boxes = rule_boxes(rule, self.fields)
        with self._writer:
            if self._next_id >= 2**31:
                raise Invalid("rule_id", "ids run out at 2147483647: build a new Classifier from .rules to renumber")
            rule_id = self._next_id
            rows = np.array([(_order(rule, rule_id), rule_id) + box for box in boxes], np.int64)
            delta = self.arrays.delta
            if len(delta) + len(rows) > self.params.delta_capacity:
                self._rebuild(np.concatenate([self._live_slots(), rows]))
            else:
                ranks = np.searchsorted(self._built[:, SLOT_ORDER], rows[:, SLOT_ORDER])
                self._publish(self.arrays._replace(delta=np.concatenate([delta, np.column_stack([ranks, rows])])))
            self._rules[rule_id] = rule
            self._next_id += 1
            return rule_id

    def remove(self, rule_id: int) -> None:
        with self._writer:
            if rule_id not in self._rules:
                raise Invalid("rule_id", f"no rule {rule_id}")
            del self._rules[rule_id]
            a = self.arrays
            added = a.delta[:, DELTA_ID] == rule_id
            if added.any():
                self._publish(a._replace(delta=a.delta[~added]))
                return
            mine = np.flatnonzero(self._built[:, SLOT_ID] == rule_id)
            self._dead += len(mine)
            if self._dead * 4 > len(self._built):
                self._rebuild(self._live_slots())
                return
            removed = a.removed.copy()
            np.bitwise_or.at(removed, mine >> 5, np.left_shift(1, mine & 31).astype(np.uint32))
            self._publish(a._replace(removed=removed))

    # --- building ------------------------------------------------------------------------

    def _live_slots(self) -> np.ndarray:
        """Slot rows of every rule still here: built ones, then added ones."""
        live = np.isin(self._built[:, SLOT_ID], np.fromiter(self._rules, np.int64, len(self._rules)))
        return np.concatenate([self._built[live], self.arrays.delta[:, DELTA_ORDER:]])

    def _rebuild(self, rows: np.ndarray) -> None:
        """Build the trees anew from slot rows `rows` and publish them."""
        rows = rows[np.argsort(rows[:, SLOT_ORDER], kind="stable")]
        lo = rows[:, SLOT_BOX::2].astype(np.uint32)
        hi = rows[:, SLOT_BOX + 1 :: 2].astype(np.uint32)
        trees = self._build_trees(lo, hi)
        arrays = _lay_out(trees, lo, hi, rows[:, SLOT_ID], self.fields)
        self._built, self._dead = rows, 0
        self._publish(arrays)
        self.rebuilds += 1

    def _publish(self, arrays: ClassifierArrays) -> None:
        for a in arrays:
            if isinstance(a, np.ndarray):
                a.flags.writeable = False
        version = self._table.version + 1 if self._table is not None else 1
        self._table = ClassifierTable(version, arrays, self.fields)

    def _build_trees(self, lo: np.ndarray, hi: np.ndarray) -> list[tuple]:
        """The trees for slots lo/hi, in search order of their first slot: one tree per
        group of slots narrow first in the source address, narrow first in the
        destination, wide in both, or catch-all, so that each tree cuts its narrow field
        without copying the others' rules, and each tree's filter (kernels.classify) can
        skip it for headers outside its narrow field. (One or two trees for small tables
        ran 1.3-1.8x faster on the 1k traces before the filters, but took 40-75 ms to
        build and up to 5.8x the memory, and ran slower on random headers.)
        """
        p = self.params
        narrow = [hi[:, k].astype(np.int64) - lo[:, k] + 1 < WIDE_ADDRESS
                  for k, f in enumerate(self.fields) if f in (Field.IP_SRC, Field.IP_DST)]
        group = np.full(len(lo), len(narrow), np.int64)
        for k in reversed(range(len(narrow))):
            group[narrow[k]] = k
        # Catch-all rules (wide addresses, each port range at least half the ports) get a
        # tree of their own: in the tree of the wide rules, cut on ports, the final
        # default rules were copied into every leaf (fw4_10k: 15k copies of one rule).
        ports = [hi[:, k].astype(np.int64) - lo[:, k] + 1 > f.max_value // 2
                 for k, f in enumerate(self.fields) if f in (Field.L4_SRC, Field.L4_DST)]
        if narrow and ports:
            catch_all = ~np.logical_or.reduce(narrow) & np.logical_and.reduce(ports)
            group[catch_all] = len(narrow) + 1
        dim_max = np.array([f.max_value for f in self.fields], np.int64)
        trees = []
        for g in np.unique(group):
            members = np.flatnonzero(group == g).astype(np.int32)  # ascending = search order
            leaf = p.leaf_size if len(members) > p.small_tree else min(p.leaf_size, p.small_tree_leaf_size)
            trees.append(build_tree(lo, hi, members, dim_max, leaf, p.space_factor, p.max_cut_bits))
        trees.sort(key=lambda t: t[5].min())  # by first slot, so lookups can stop early
        return trees


def _lay_out(trees, lo, hi, slot_ids, fields) -> ClassifierArrays:
    """Put the trees and their filters into one flat array (the layout the kernels read)
    and copy the boxes of the slots each leaf holds next to each other."""
    header = 1 + TREE_HEADER * len(trees)
    filters = [_filter(np.unique(t[5]), lo, hi, fields) for t in trees]
    filter_words = sum(len(bits) for _, bits in filters)
    tree = np.empty(header + filter_words + sum(emitted_size(t[1], t[4]) for t in trees), np.int32)
    tree[0] = len(trees)
    pos, entry_base, entry_slots = header, 0, []
    for t, (dim, bits) in enumerate(filters):
        at = 1 + TREE_HEADER * t
        tree[at + TREE_FILTER_DIM], tree[at + TREE_FILTER_AT] = dim, pos
        tree[at + TREE_FILTER_SHIFT] = fields[dim].width - FILTER_BITS if dim >= 0 else 0
        tree[pos : pos + len(bits)] = bits
        pos += len(bits)
    for t, (root, node, children, bounds, leaf, entry) in enumerate(trees):
        at = 1 + TREE_HEADER * t
        tree[at + TREE_ROOT], pos = emit_tree(tree, pos, root, node, children, bounds, leaf, entry_base)
        tree[at + TREE_FIRST_SLOT] = entry.min()
        entry_slots.append(entry)
        entry_base += len(entry)
    entry_slot = np.concatenate(entry_slots) if entry_slots else np.zeros(0, np.int32)
    d = lo.shape[1]
    entries = np.empty((len(entry_slot), ENTRY_BOX + 2 * d), np.uint32)
    entries[:, ENTRY_SLOT] = entry_slot
    entries[:, ENTRY_ID] = slot_ids[entry_slot]
    entries[:, ENTRY_BOX::2] = lo[entry_slot]
    entries[:, ENTRY_BOX + 1 :: 2] = hi[entry_slot]
    removed = np.zeros(-(-len(slot_ids) // 32), np.uint32)
    delta = np.zeros((0, DELTA_BOX + 2 * d), np.int64)
    return ClassifierArrays(tree, entries, removed, delta, field_max=tuple(f.max_value for f in fields))


def _filter(members: np.ndarray, lo: np.ndarray, hi: np.ndarray, fields: tuple[Field, ...]) -> tuple[int, np.ndarray]:
    """The filter of a tree over slots `members`: the field (at least FILTER_BITS wide)
    whose top FILTER_BITS bits its rules leave most often unreached, and the bitmap of the
    reached values (kernels.classify). (-1, no words) when every field is mostly reached:
    then the filter's load would cost more than the walks it saves."""
    buckets = 1 << FILTER_BITS
    best = (-1, np.zeros(0, np.int32), FILTER_MAX_REACHED * buckets)
    for k, f in enumerate(fields):
        if f.width < FILTER_BITS:
            continue
        shift = f.width - FILTER_BITS
        if (hi[members, k].astype(np.int64) - lo[members, k]).max(initial=0) >> shift >= best[2]:
            continue  # one rule alone reaches too much: no need to count (saves most of the time)
        starts = np.bincount(lo[members, k] >> shift, minlength=buckets)
        ends = np.bincount((hi[members, k] >> shift) + 1, minlength=buckets + 1)
        reached = np.cumsum(starts - ends[:-1]) > 0
        if (count := int(reached.sum())) < best[2]:
            best = (k, np.packbits(reached, bitorder="little").view("<u4").astype(np.uint32).view(np.int32), count)
    return best[0], best[1]


def brute_force(table: Table, headers: np.ndarray, fields: Sequence[Field] = FIVE_TUPLE) -> np.ndarray:
    """Reference first match (position in the table, or -1) by a linear scan of every rule."""
    fields = tuple(fields)
    order = table.search_order()
    boxes = [(i, box) for i in order for box in rule_boxes(table.rules[i], fields)]
    bounds = np.array([b for _, b in boxes], np.uint32).reshape(-1, 2 * len(fields))
    lo, hi = np.ascontiguousarray(bounds[:, 0::2]), np.ascontiguousarray(bounds[:, 1::2])
    ids = np.array([i for i, _ in boxes], np.int32)
    out = np.empty(len(headers), np.int32)
    _brute_force_kernel(lo, hi, ids, np.ascontiguousarray(headers, dtype=np.uint32), out)
    return out
