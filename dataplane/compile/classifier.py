"""Compile a policy table into the arrays the jitted classifier walks, and keep them current.

A rule becomes one or more *slots*: boxes of inclusive per-field ranges (prefixes, ranges
and exact values give one box; a non-contiguous mask gives several). Slots are split
into a few groups by how wide their address ranges are (EffiCuts' observation: wide and
narrow rules cut badly together, so each group gets its own tree and replication stays
low); `cuttree.build_tree` builds one tree per group.

One-rule updates do not rebuild: an added rule goes into a short `delta` list that every
lookup also checks, a removed rule is marked dead. A rebuild (tens of ms for 10k rules)
happens when the delta list is full, when many slots are dead, or when the removed rule
shadowed others inside the trees (those were left out of some leaves because of it).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dataplane.classbench import FIVE_TUPLE
from dataplane.compile.cuttree import build_tree, emit_tree, emitted_size
from dataplane.kernels.classify import ENTRY_BOX, ENTRY_ID, ENTRY_SLOT, SLOT_BOX, SLOT_ID, SLOT_LIVE, SLOT_ORDER, ClassifierArrays, classify_batch
from dataplane.kernels.classify import brute_force as _brute_force_kernel
from dataplane.policy import MAX_PRIORITY, Exact, Field, Invalid, Masked, Match, Prefix, Range, Rule, Table

MAX_BOXES_PER_RULE = 256
# An address range this wide or wider (a prefix shorter than /4) counts as wide. Chosen by
# measurement: /16 and /8 thresholds replicated fw1_10k rules into 3-6 MB trees and ran
# 10-45% slower on ipc1_10k and fw1_10k; wildcard-only splitting grew fw1_10k to 56 MB.
WIDE_ADDRESS = 1 << 28


@dataclass(frozen=True, slots=True)
class TreeParams:
    """Knobs of the cut trees, chosen by measurement on the ClassBench sets (bench/)."""

    leaf_size: int = 6  # stop cutting at this many rules (measured 4-16: 6 balances speed and build time)
    space_factor: float = 4.0  # HiCuts' spfac: rule copies allowed per cut, per rule
    max_cut_bits: int = 8  # at most 2**8 children per node
    delta_capacity: int = 64  # added slots checked linearly before a rebuild


def _field_ranges(m: Match, f: Field) -> list[tuple[int, int]]:
    # The common kinds inline: this runs for every field of every rule of a build.
    kind = type(m)
    if kind is Prefix:
        return [(m.value, m.value | ((1 << (f.width - m.length)) - 1))]
    if kind is Range:
        return [(m.lo, m.hi)]
    if kind is Exact:
        return [(m.value, m.value)]
    if kind is Masked:
        free = ~m.mask & f.max_value
        if not free & (free + 1):  # the free bits are all at the bottom: one range
            return [(m.value, m.value | free)]
    return m.ranges(f)


def rule_boxes(rule: Rule, fields: Sequence[Field]) -> list[tuple[int, ...]]:
    """The boxes whose union is what `rule` matches, each as (lo0, hi0, lo1, hi1, ...)."""
    matches = rule.matches
    if not matches.keys() <= set(fields):
        for f, m in matches.items():
            if f not in fields and _field_ranges(m, f) != [(0, f.max_value)]:
                raise Invalid(f.name.lower(), f"this classifier matches only {[x.name.lower() for x in fields]}")
    box: list[int] = []
    per_field = []
    for f in fields:
        m = matches.get(f)
        ranges = _field_ranges(m, f) if m is not None else [(0, f.max_value)]
        box += ranges[0]
        per_field.append(ranges)
    if len(box) == 2 * len(fields) and all(len(r) == 1 for r in per_field):
        return [tuple(box)]
    count = 1
    for ranges in per_field:
        count *= len(ranges)
    if count > MAX_BOXES_PER_RULE:
        raise Invalid("matches", f"expands to {count} boxes, more than {MAX_BOXES_PER_RULE}")
    return [tuple(bound for r in combo for bound in r) for combo in itertools.product(*per_field)]


def _order(rule: Rule, rule_id: int) -> int:
    """Search order: higher priority first, then lower id (earlier in the table)."""
    return ((MAX_PRIORITY - rule.priority) << 32) | rule_id


class Classifier:
    """First-match classifier over `fields` (each at most 32 bits wide) with rule ids.

    The slots live in `arrays.slots` (order, id, live, box); rows [0, built) are the
    ones in the trees, in search order, rows from `built` on were added since.
    """

    def __init__(self, rules: Mapping[int, Rule], fields: Sequence[Field] = FIVE_TUPLE, params: TreeParams = TreeParams()):
        self.fields = tuple(Field(f) for f in fields)
        for f in self.fields:
            if f.width > 32:
                raise Invalid("fields", f"{f.name.lower()} is {f.width} bits wide; the classifier takes at most 32")
        self.params = params
        self._rules: dict[int, Rule] = {}
        rows = []
        for rule_id, rule in rules.items():
            if not 0 <= rule_id < 2**31:
                raise Invalid("rule_id", f"must be 0..2147483647, got {rule_id}")
            order = _order(rule, rule_id)
            rows.extend((order, rule_id, 1) + box for box in rule_boxes(rule, self.fields))
            self._rules[rule_id] = rule
        self._next_id = max(self._rules, default=-1) + 1
        self.rebuilds = 0
        self._rebuild(np.array(rows, np.int64).reshape(len(rows), SLOT_BOX + 2 * len(self.fields)))

    @classmethod
    def build(cls, table: Table, fields: Sequence[Field] = FIVE_TUPLE, params: TreeParams = TreeParams()) -> Classifier:
        """Rule ids are positions in the table."""
        return cls(dict(enumerate(table.rules)), fields, params)

    # --- queries -------------------------------------------------------------------------

    def classify(self, headers: np.ndarray) -> np.ndarray:
        """Rule id of the first match for each row of headers ((N, len(fields)) uint32), or -1."""
        headers = np.ascontiguousarray(headers, dtype=np.uint32)
        if headers.ndim != 2 or headers.shape[1] != len(self.fields):
            raise Invalid("headers", f"expected shape (N, {len(self.fields)}), got {headers.shape}")
        out = np.empty(headers.shape[0], np.int32)
        classify_batch(self.arrays, headers, out)
        return out

    @property
    def rules(self) -> dict[int, Rule]:
        return dict(self._rules)

    @property
    def table_bytes(self) -> int:
        """Memory of the lookup structures (trees, leaves, slots, delta)."""
        return sum(a.nbytes for a in self.arrays if isinstance(a, np.ndarray))

    # --- updates -------------------------------------------------------------------------

    def add(self, rule: Rule) -> int:
        """Add a rule; returns its id. Costs microseconds until the delta list is full."""
        boxes = rule_boxes(rule, self.fields)
        if self._next_id >= 2**31:
            raise Invalid("rule_id", "ids run out at 2147483647: build a new Classifier from .rules to renumber")
        rule_id = self._next_id
        self._next_id += 1
        self._rules[rule_id] = rule
        a = self.arrays
        used = int(a.delta[0])
        rows = np.array([(_order(rule, rule_id), rule_id, 1) + box for box in boxes], np.int64)
        if used + len(boxes) > a.delta.shape[0] - 1:
            self._rebuild(np.concatenate([a.slots[: self._n_slots], rows]))
            return rule_id
        a.slots[self._n_slots : self._n_slots + len(rows)] = rows
        a.delta[used + 1 : used + 1 + len(rows)] = np.arange(self._n_slots, self._n_slots + len(rows))
        self._n_slots += len(rows)
        a.delta[0] = used + len(rows)  # published last: a concurrent lookup sees only whole slots
        return rule_id

    def remove(self, rule_id: int) -> None:
        if rule_id not in self._rules:
            raise Invalid("rule_id", f"no rule {rule_id}")
        del self._rules[rule_id]
        slots = self.arrays.slots
        mine = np.flatnonzero(slots[: self._n_slots, SLOT_ID] == rule_id)
        slots[mine, SLOT_LIVE] = 0
        entries = self.arrays.entries
        copies = np.flatnonzero(np.isin(entries[:, ENTRY_SLOT], mine))
        entries[copies, ENTRY_BOX], entries[copies, ENTRY_BOX + 1] = 1, 0  # an empty box
        self._dead += len(mine)
        if self._shadowing[mine].any() or self._dead * 4 > self._n_slots:
            self._rebuild(slots[: self._n_slots])

    # --- building ------------------------------------------------------------------------

    def _rebuild(self, rows: np.ndarray) -> None:
        """Build the trees anew from the live rows of slot table `rows`."""
        rows = rows[rows[:, SLOT_LIVE] == 1]
        rows = rows[np.argsort(rows[:, SLOT_ORDER], kind="stable")]
        n = len(rows)
        slots = np.zeros((n + self.params.delta_capacity, rows.shape[1]), np.int64)
        slots[:n] = rows
        lo = rows[:, SLOT_BOX::2].astype(np.uint32)
        hi = rows[:, SLOT_BOX + 1 :: 2].astype(np.uint32)
        trees = self._build_trees(lo, hi)
        self._shadowing = np.zeros(len(slots), bool)
        for t in trees:
            self._shadowing[:n] |= t[-1].astype(bool)
        self.arrays = _lay_out(trees, lo, hi, slots, self.params.delta_capacity)
        self._n_slots, self._dead = n, 0
        self.rebuilds += 1

    def _build_trees(self, lo: np.ndarray, hi: np.ndarray) -> list[tuple]:
        """One tree per group of slots, grouped by the first address field in which the
        slot is narrow (or none): each tree can then cut that field without copying wide
        rules into every child. (One tree over everything looks up faster, but copies
        rules 30-500 times over on the fw and ipc sets.)"""
        p = self.params
        dim_max = np.array([f.max_value for f in self.fields], np.int64)
        addr = [k for k, f in enumerate(self.fields) if f in (Field.IP_SRC, Field.IP_DST)]
        group = np.full(lo.shape[0], len(addr), np.int64)
        for k_index, k in reversed(list(enumerate(addr))):
            narrow = hi[:, k].astype(np.int64) - lo[:, k] + 1 < WIDE_ADDRESS
            group[narrow] = k_index
        trees = []
        for g in np.unique(group):
            members = np.flatnonzero(group == g).astype(np.int32)  # ascending = search order
            trees.append(build_tree(lo, hi, members, dim_max, p.leaf_size, p.space_factor, p.max_cut_bits))
        trees.sort(key=lambda t: t[5].min())  # by first slot, so lookups can stop early
        return trees


def _lay_out(trees, lo, hi, slots, delta_capacity) -> ClassifierArrays:
    """Put the trees into one flat array (the layout the kernels read) and copy the boxes
    of the slots each leaf holds next to each other."""
    header = 1 + 2 * len(trees)
    tree = np.empty(header + sum(emitted_size(t[1], t[4]) for t in trees), np.int32)
    tree[0] = len(trees)
    pos, entry_base, entry_slots = header, 0, []
    for t, (root, node, children, bounds, leaf, entry, _shadowing) in enumerate(trees):
        tree[1 + 2 * t], pos = emit_tree(tree, pos, root, node, children, bounds, leaf, entry_base)
        tree[2 + 2 * t] = entry.min()
        entry_slots.append(entry)
        entry_base += len(entry)
    entry_slot = np.concatenate(entry_slots) if entry_slots else np.zeros(0, np.int32)
    d = lo.shape[1]
    entries = np.empty((len(entry_slot), ENTRY_BOX + 2 * d), np.uint32)
    entries[:, ENTRY_SLOT] = entry_slot
    entries[:, ENTRY_ID] = slots[entry_slot, SLOT_ID]
    entries[:, ENTRY_BOX::2] = lo[entry_slot]
    entries[:, ENTRY_BOX + 1 :: 2] = hi[entry_slot]
    return ClassifierArrays(tree=tree, entries=entries, slots=slots, delta=np.zeros(1 + delta_capacity, np.int64), fields=(0,) * d)


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
