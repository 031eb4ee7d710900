"""dataplane.compile.classifier: the compiled cut-tree classifier answers exactly what the
slow references answer (Table.first_match, brute_force), before and after updates, and
rejects what it cannot classify with an error that names the culprit."""

from __future__ import annotations

import math
import threading
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

from dataplane.classbench import FIVE_TUPLE, read_rules, read_trace
from dataplane.compile.classifier import MAX_BOXES_PER_RULE, Classifier, TreeParams, brute_force, rule_boxes
from dataplane.kernels.classify import TOO_WIDE, lookup
from dataplane.policy import ANY, MAX_PRIORITY, Exact, Field, Invalid, Masked, Prefix, Range, Rule, Table

SETS_1K = [f"{family}_1k" for family in
           ("acl1", "acl2", "acl3", "acl4", "acl5", "fw1", "fw2", "fw3", "fw4", "fw5", "ipc1", "ipc2")]

# Small trees on purpose: one rule per leaf, two bits per cut and a tiny delta list make the
# trees deep, the edge cuts frequent and the rebuilds many, which is where bugs hide.
SMALL = TreeParams(leaf_size=1, max_cut_bits=2, delta_capacity=4)
PARAMS = [
    TreeParams(),
    SMALL,
    TreeParams(leaf_size=2, space_factor=1.0, max_cut_bits=1, delta_capacity=4),
    TreeParams(leaf_size=1, space_factor=8.0, max_cut_bits=4, delta_capacity=0),
    TreeParams(leaf_size=3, max_cut_bits=8, delta_capacity=2),
]
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- strategies: small tables whose rules overlap a lot ---------------------------------------

# A few values per width, so that prefixes nest, ranges touch and headers hit edges.
POOLS = {
    32: [0, 1, 0x0A000000, 0x0A010000, 0x0A010100, 0x0A010180, 0x0A0101FF, 0x0AFFFFFF,
         0x7FFFFFFF, 0x80000000, 0xC0A80001, 0xFFFFFFFE, 0xFFFFFFFF],
    24: [0, 1, 2, 5, 0x7FFFFF, 0x800000, 0xFFFFFE, 0xFFFFFF],
    16: [0, 1, 79, 80, 81, 1023, 1024, 1025, 65534, 65535],
    8: [0, 1, 6, 17, 127, 128, 254, 255],
}


def masks(width: int) -> st.SearchStrategy[int]:
    full = (1 << width) - 1
    contiguous = st.integers(0, width).map(lambda n: (full << (width - n)) & full)
    if width == 8:
        return st.one_of(contiguous, st.integers(0, 255))  # any mask, scattered ones included
    # Scattered masks on wide fields: a few runs each (one free bit above the lowest mask bit).
    return st.one_of(contiguous, st.sampled_from([full >> 1, full ^ (1 << (width // 2)), full ^ 1]))


def matches_of(f: Field) -> st.SearchStrategy:
    w, top = f.width, f.max_value
    values = st.one_of(st.sampled_from(POOLS[w]), st.integers(0, top))
    return st.one_of(
        st.just(ANY),
        st.builds(Exact, values),
        st.builds(lambda v, n: Prefix(v & ~((1 << (w - n)) - 1) & top, n), values, st.sampled_from([0, 1, w // 2, w - 1, w]) | st.integers(0, w)),
        st.builds(lambda a, b: Range(min(a, b), max(a, b)), values, values),
        st.builds(lambda v, m: Masked(v & m, m), values, masks(w)),
    )


MATCHES = {f: matches_of(f) for f in Field if f.width <= 32}  # built once: building is slow
PRIORITIES = st.sampled_from([0, 1, 7, 7, 7, 100, MAX_PRIORITY]) | st.integers(0, MAX_PRIORITY)


def box_count(matches: dict) -> int:
    return math.prod(len(m.ranges(f)) for f, m in matches.items())


@st.composite
def rules(draw, fields=FIVE_TUPLE):
    matches = {}
    for f in fields:
        if draw(st.integers(0, 4)):  # a field is left out (a wildcard) one time in five
            matches[f] = draw(MATCHES[f])
    while box_count(matches) > MAX_BOXES_PER_RULE:  # keep within what a rule may expand to
        del matches[max(matches, key=lambda f: len(matches[f].ranges(f)))]
    return Rule(draw(PRIORITIES), matches)


@st.composite
def tables(draw, fields=FIVE_TUPLE, max_rules=60):
    size = draw(st.integers(0, max_rules))  # drawn first: plain st.lists stays short
    rs = draw(st.lists(rules(fields), min_size=size, max_size=size))
    # Duplicates, rules shadowed by an earlier copy, and catch-alls above everything.
    for kind, a, b in draw(st.lists(st.tuples(st.sampled_from(["duplicate", "shadowed", "catch-all"]),
                                              st.integers(0, 999), st.integers(0, 999)), max_size=6)):
        if kind == "catch-all":
            rule = Rule(draw(st.sampled_from([MAX_PRIORITY, 100, 7, 0])))
        elif rs:
            original = rs[a % len(rs)]
            rule = original if kind == "duplicate" else Rule(max(0, original.priority - 1), original.matches)
        else:
            continue
        rs.insert(b % (len(rs) + 1), rule)
    return Table(tuple(rs))


def probe_headers(rs, fields, seed: int, n_corner=151, n_mixed=100, n_random=50) -> np.ndarray:
    """Headers on and just beside the corners of the rules' boxes, headers mixing the edges
    of different rules per field, and uniform ones. (Odd counts on purpose: classify walks
    headers four at a time and the rest one by one; both paths get headers.)"""
    rng = np.random.default_rng(seed)
    d = len(fields)
    top = np.array([f.max_value for f in fields], np.int64)
    boxes = np.array([b for r in rs for b in rule_boxes(r, fields)], np.int64).reshape(-1, 2 * d)
    uniform = rng.integers(0, top + 1, size=(n_random, d))
    if not len(boxes):
        return uniform.astype(np.uint32)
    lo, hi = boxes[:, 0::2], boxes[:, 1::2]
    edges = np.stack([lo, hi, lo - 1, hi + 1])  # (4, boxes, d)
    cols = np.arange(d)
    corner = edges[rng.integers(0, 4, (n_corner, d)), rng.integers(0, len(boxes), n_corner)[:, None], cols]
    mixed = edges[rng.integers(0, 4, (n_mixed, d)), rng.integers(0, len(boxes), (n_mixed, d)), cols]
    headers = np.concatenate([corner, mixed, uniform])
    return np.clip(headers, 0, top).astype(np.uint32)


def reference(rules_by_id: dict[int, Rule], headers: np.ndarray, fields=FIVE_TUPLE) -> np.ndarray:
    """Table.first_match over the rules in id order, as rule ids (-1: no match)."""
    ids = sorted(rules_by_id)
    table = Table(tuple(rules_by_id[i] for i in ids))
    positions = [table.first_match(dict(zip(fields, map(int, h)))) for h in headers]
    return np.array([ids[p] if p >= 0 else -1 for p in positions], np.int32)


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


# --- the ClassBench sets ---------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS_1K)
def test_classbench_1k_set_classifies_like_brute_force_on_its_trace_and_random_headers(classbench_dir, name):
    table = read_rules(classbench_dir / name)
    clf = Classifier.build(table)
    trace = read_trace(classbench_dir / f"{name}_trace").headers
    np.testing.assert_array_equal(clf.classify(trace), brute_force(table, trace))

    rng = np.random.default_rng(seed_of(name))
    uniform = rng.integers(0, [2**32, 2**32, 2**16, 2**16, 2**8], size=(20_000, 5)).astype(np.uint32)
    np.testing.assert_array_equal(clf.classify(uniform), brute_force(table, uniform))

    corners = probe_headers(table.rules, FIVE_TUPLE, seed_of(name), n_corner=10_000, n_mixed=10_000, n_random=0)
    np.testing.assert_array_equal(clf.classify(corners), brute_force(table, corners))
    assert clf.rebuilds == 1 and clf.table_bytes > 0


@pytest.mark.parametrize("name", ["acl1_1k", "fw1_1k", "ipc1_1k"])
def test_classbench_1k_set_classifies_like_brute_force_with_deep_small_trees(classbench_dir, name):
    table = read_rules(classbench_dir / name)
    clf = Classifier.build(table, params=TreeParams(leaf_size=2, max_cut_bits=2))
    trace = read_trace(classbench_dir / f"{name}_trace").headers
    np.testing.assert_array_equal(clf.classify(trace), brute_force(table, trace))


def test_brute_force_agrees_with_table_first_match_on_a_classbench_sample(classbench_dir):
    table = read_rules(classbench_dir / "acl1_1k")
    headers = read_trace(classbench_dir / "acl1_1k_trace").headers[::50]
    expected = [table.first_match(dict(zip(FIVE_TUPLE, map(int, h)))) for h in headers]
    np.testing.assert_array_equal(brute_force(table, headers), expected)


# --- properties on small, heavily overlapping tables ----------------------------------------------


@PROPERTY
@given(table=tables(), params=st.sampled_from(PARAMS), seed=st.integers(0, 2**32 - 1))
def test_classifier_returns_the_first_match_of_the_table_for_every_header(table, params, seed):
    headers = probe_headers(table.rules, FIVE_TUPLE, seed)
    expected = reference(dict(enumerate(table.rules)), headers)
    clf = Classifier.build(table, params=params)
    np.testing.assert_array_equal(clf.classify(headers), expected)
    np.testing.assert_array_equal(brute_force(table, headers), expected)


OTHER_FIELDS = (Field.TENANT, Field.IP_DST, Field.L4_DST, Field.IN_PORT)


@settings(PROPERTY, max_examples=50)
@given(table=tables(OTHER_FIELDS, max_rules=30), params=st.sampled_from(PARAMS), seed=st.integers(0, 2**32 - 1))
def test_classifier_over_other_fields_returns_the_first_match(table, params, seed):
    headers = probe_headers(table.rules, OTHER_FIELDS, seed)
    clf = Classifier.build(table, OTHER_FIELDS, params)
    np.testing.assert_array_equal(clf.classify(headers), reference(dict(enumerate(table.rules)), headers, OTHER_FIELDS))


@settings(PROPERTY, max_examples=50)
@given(
    table=tables(max_rules=20),
    ids=st.lists(st.integers(0, 2**31 - 1), min_size=20, max_size=20, unique=True),
    params=st.sampled_from(PARAMS),
    seed=st.integers(0, 2**32 - 1),
)
def test_rule_ids_are_the_callers_and_equal_priorities_go_to_the_smaller_id(table, ids, params, seed):
    by_id = dict(zip(ids, table.rules))
    by_id = dict(reversed(list(by_id.items())))  # insertion order must not matter
    headers = probe_headers(table.rules, FIVE_TUPLE, seed)
    clf = Classifier(by_id, params=params)
    np.testing.assert_array_equal(clf.classify(headers), reference(by_id, headers))
    assert clf.rules == by_id


@settings(PROPERTY, max_examples=100)
@given(rule=rules(), params=st.sampled_from(PARAMS), seed=st.integers(0, 2**32 - 1))
def test_single_rule_table_matches_exactly_the_headers_the_rule_matches(rule, params, seed):
    headers = probe_headers([rule], FIVE_TUPLE, seed)
    expected = [0 if rule.matches_packet(dict(zip(FIVE_TUPLE, map(int, h)))) else -1 for h in headers]
    np.testing.assert_array_equal(Classifier.build(Table((rule,)), params=params).classify(headers), expected)


@settings(PROPERTY, max_examples=20)
@given(params=st.sampled_from(PARAMS), seed=st.integers(0, 2**32 - 1))
def test_empty_table_matches_no_header(params, seed):
    headers = np.random.default_rng(seed).integers(0, 2**32, (500, 5)).astype(np.uint32)
    headers[:, 2:4] &= 0xFFFF
    headers[:, 4] &= 0xFF
    clf = Classifier.build(Table(), params=params)
    np.testing.assert_array_equal(clf.classify(headers), np.full(500, -1))
    assert clf.classify(np.zeros((0, 5), np.uint32)).shape == (0,)


def test_scattered_protocol_mask_expands_into_one_box_per_run_and_matches_exactly():
    rule = Rule(5, {Field.IP_PROTO: Masked(0x05, 0x55), Field.L4_DST: Range(80, 81)})
    boxes = rule_boxes(rule, FIVE_TUPLE)
    assert len(boxes) == 16  # four free bits above the lowest mask bit
    assert sorted((b[8], b[9]) for b in boxes) == Masked(0x05, 0x55).ranges(Field.IP_PROTO)
    table = Table((Rule(9, {Field.IP_PROTO: Exact(0x07)}), rule, Rule(1, {Field.L4_DST: Exact(81)})))
    headers = np.array([[1, 2, 3, port, proto] for proto in range(256) for port in (79, 80, 81, 82)], np.uint32)
    for params in PARAMS:
        np.testing.assert_array_equal(Classifier.build(table, params=params).classify(headers),
                                      reference(dict(enumerate(table.rules)), headers))


def test_classify_accepts_any_integer_array_layout_and_read_only_headers():
    table = Table((Rule(1, {Field.L4_DST: Exact(80)}), Rule(0, {Field.IP_PROTO: Exact(6)})))
    headers = probe_headers(table.rules, FIVE_TUPLE, 1)
    clf = Classifier.build(table)
    expected = reference(dict(enumerate(table.rules)), headers)
    np.testing.assert_array_equal(clf.classify(headers), expected)
    np.testing.assert_array_equal(clf.classify(headers.astype(np.int64)), expected)
    np.testing.assert_array_equal(clf.classify(np.asfortranarray(headers)), expected)
    np.testing.assert_array_equal(clf.classify(np.repeat(headers, 2, axis=0)[::2]), expected)
    frozen = np.frombuffer(headers.tobytes(), np.uint32).reshape(headers.shape)  # read-only
    np.testing.assert_array_equal(clf.classify(frozen), expected)


# --- updates ------------------------------------------------------------------------------------


@PROPERTY
@given(data=st.data(), table=tables(max_rules=30), params=st.sampled_from(PARAMS))
def test_any_sequence_of_adds_and_removes_classifies_like_a_fresh_build(data, table, params):
    clf = Classifier.build(table, params=params)
    ever = list(table.rules)  # headers probe removed rules' corners too
    issued = set(clf.rules)
    for step in range(data.draw(st.integers(1, 20), label="steps")):
        ids = sorted(clf.rules)
        if ids and data.draw(st.booleans(), label="remove"):
            clf.remove(data.draw(st.sampled_from(ids), label="victim"))
        else:
            rule = data.draw(rules(), label="added")
            new = clf.add(rule)
            assert new not in issued and clf.rules[new] == rule  # ids are never reused
            issued.add(new)
            ever.append(rule)
        headers = probe_headers(ever, FIVE_TUPLE, step, n_corner=63, n_mixed=30, n_random=10)
        fresh = Classifier(clf.rules, params=params)
        np.testing.assert_array_equal(clf.classify(headers), fresh.classify(headers), err_msg=f"step {step}")
    headers = probe_headers(ever, FIVE_TUPLE, 12345)
    np.testing.assert_array_equal(clf.classify(headers), reference(clf.rules, headers))


@pytest.mark.parametrize("params", PARAMS, ids=[f"params{i}" for i in range(len(PARAMS))])
@pytest.mark.parametrize(
    "shadow",
    [
        Rule(MAX_PRIORITY),  # covers everything
        Rule(MAX_PRIORITY, {Field.IP_SRC: Prefix(0x80000000, 1)}),  # covers half the sources
        Rule(MAX_PRIORITY, {Field.IP_PROTO: Exact(6)}),
        Rule(MAX_PRIORITY, {Field.L4_DST: Range(0, 1023)}),
    ],
    ids=["all", "half-sources", "tcp", "low-ports"],
)
def test_removing_a_rule_that_shadows_narrower_rules_uncovers_them(classbench_dir, shadow, params):
    table = read_rules(classbench_dir / "acl1_1k")
    narrow = table.rules[:300]
    clf = Classifier({0: shadow, **{i + 1: r for i, r in enumerate(narrow)}}, params=params)
    headers = read_trace(classbench_dir / "acl1_1k_trace").headers[:3000]
    before = clf.classify(headers)
    covered = np.array([shadow.matches_packet(dict(zip(FIVE_TUPLE, map(int, h)))) for h in headers])
    assert covered.any() and (before[covered] == 0).all()

    clf.remove(0)
    expected = brute_force(Table(narrow), headers)
    np.testing.assert_array_equal(clf.classify(headers), np.where(expected >= 0, expected + 1, -1))


def test_removing_an_added_shadowing_rule_uncovers_the_rules_below():
    table = Table(tuple(Rule(10, {Field.L4_DST: Exact(p)}) for p in range(0, 2000, 7)))
    clf = Classifier.build(table, params=SMALL)
    headers = probe_headers(table.rules, FIVE_TUPLE, 3)
    before = clf.classify(headers)
    top = clf.add(Rule(MAX_PRIORITY))
    assert (clf.classify(headers) == top).all()
    clf.remove(top)
    np.testing.assert_array_equal(clf.classify(headers), before)


def test_ids_given_by_add_stay_within_the_valid_range():
    # Rule ids are 0..2**31-1 (the constructor says so, classify returns int32). After the
    # largest id, add must refuse (Invalid naming rule_id) or pick a free id, not wrap.
    clf = Classifier({2**31 - 1: port_rule(80)})
    headers = np.array([[0, 0, 0, 22, 6], [0, 0, 0, 80, 6]], np.uint32)
    try:
        new = clf.add(Rule(MAX_PRIORITY))
    except Invalid as e:
        assert e.field == "rule_id"
        assert clf.rules == {2**31 - 1: port_rule(80)}
        assert clf.classify(headers).tolist() == [-1, 2**31 - 1]
        return
    assert 0 <= new < 2**31
    assert clf.classify(headers).tolist() == [new, new]
    assert Classifier(clf.rules).rules == clf.rules


def port_rule(port: int, priority: int = 10) -> Rule:
    return Rule(priority, {Field.L4_DST: Exact(port)})


def test_adds_within_the_delta_capacity_do_not_rebuild_and_the_next_one_does():
    base = Table(tuple(port_rule(p) for p in (1, 2, 3)))
    clf = Classifier.build(base, params=TreeParams(delta_capacity=4))
    assert clf.rebuilds == 1
    headers = np.array([[0, 0, 0, p, 6] for p in range(12)], np.uint32)
    for port in (4, 5, 6, 7):
        clf.add(port_rule(port, priority=20))
        assert clf.rebuilds == 1
        np.testing.assert_array_equal(clf.classify(headers), reference(clf.rules, headers))
    clf.add(port_rule(8, priority=20))
    assert clf.rebuilds == 2
    np.testing.assert_array_equal(clf.classify(headers), reference(clf.rules, headers))
    for port in (9, 10, 11, 0):  # the rebuild emptied the delta list: room for four again
        clf.add(port_rule(port))
        assert clf.rebuilds == 2
    clf.add(port_rule(1, priority=30))
    assert clf.rebuilds == 3
    np.testing.assert_array_equal(clf.classify(headers), reference(clf.rules, headers))


def test_delta_capacity_counts_boxes_not_rules():
    clf = Classifier.build(Table((port_rule(1),)), params=TreeParams(delta_capacity=4))
    two_boxes = Rule(20, {Field.IP_PROTO: Masked(0x06, 0x7F)})  # protocols 6 and 134
    assert len(rule_boxes(two_boxes, FIVE_TUPLE)) == 2
    clf.add(two_boxes)
    clf.add(port_rule(2))
    clf.add(port_rule(3))
    assert clf.rebuilds == 1
    clf.add(two_boxes)  # two more boxes, one place left
    assert clf.rebuilds == 2
    headers = np.array([[0, 0, 0, p, proto] for p in range(5) for proto in (6, 7, 134)], np.uint32)
    np.testing.assert_array_equal(clf.classify(headers), reference(clf.rules, headers))


def test_a_rule_added_with_a_tie_loses_to_the_existing_rule():
    clf = Classifier.build(Table((port_rule(80),)))
    later = clf.add(port_rule(80))
    headers = np.array([[0, 0, 0, 80, 6]], np.uint32)
    assert clf.classify(headers).tolist() == [0]
    clf.remove(0)
    assert clf.classify(headers).tolist() == [later]


# --- lookup() from the packet engine's own jitted loop ---------------------------------------------


@njit(nogil=True)  # not cached: Numba's cache would keep an old lookup() inlined after it changes
def engine_loop(arrays, packets, out):
    """A stand-in for the packet engine: parse each packet into a scratch header, classify it."""
    h = np.empty(packets.shape[1], np.uint32)
    for i in range(packets.shape[0]):
        for d in range(packets.shape[1]):
            h[d] = packets[i, d]
        out[i] = lookup(arrays, h)


def test_lookup_called_from_a_users_njit_loop_answers_like_classify(classbench_dir):
    table = read_rules(classbench_dir / "acl1_1k")
    headers = read_trace(classbench_dir / "acl1_1k_trace").headers
    clf = Classifier.build(table, params=TreeParams(delta_capacity=8))
    out = np.empty(len(headers), np.int32)
    engine_loop(clf.arrays, headers, out)
    np.testing.assert_array_equal(out, clf.classify(headers))

    clf.add(Rule(MAX_PRIORITY, {Field.L4_DST: Range(0, 1023)}))  # in the delta list
    clf.add(Rule(MAX_PRIORITY, {Field.IP_PROTO: Masked(0x11, 0xFF)}))
    clf.remove(5)
    engine_loop(clf.arrays, headers, out)
    np.testing.assert_array_equal(out, clf.classify(headers))
    np.testing.assert_array_equal(out, reference_ids(clf, headers))


def reference_ids(clf: Classifier, headers: np.ndarray) -> np.ndarray:
    return reference_ids_of(clf.rules, headers)


def reference_ids_of(rules: dict[int, Rule], headers: np.ndarray) -> np.ndarray:
    """Brute force over rules by id (ties go to the smaller id, as positions in a Table)."""
    ids = sorted(rules)
    positions = brute_force(Table(tuple(rules[i] for i in ids)), headers)
    return np.where(positions >= 0, np.array(ids)[positions], -1)


# --- one table shared by a reader and a writer --------------------------------------------------


def test_a_reader_classifying_while_a_writer_adds_and_removes_sees_whole_versions(classbench_dir):
    """A thread classifies (the kernel releases the GIL) while another adds and removes
    rules; every batch must equal brute force over the rules of the one version it read,
    and versions only move forward."""
    table = read_rules(classbench_dir / "acl1_1k")
    headers = np.concatenate([read_trace(classbench_dir / "acl1_1k_trace").headers[:1500],
                              np.random.default_rng(7).integers(0, 2**16, (500, 5)).astype(np.uint32)])
    headers[1500:, 4] &= 0xFF
    clf = Classifier.build(table, params=TreeParams(delta_capacity=8))  # rebuilds too
    rules_at = {clf.version: clf.rules}
    seen: list[tuple[int, np.ndarray]] = []
    writing = threading.Event()
    writing.set()

    def read() -> None:
        while writing.is_set() or len(seen) < 5:
            version = clf.table  # one version for the whole batch
            seen.append((version.version, version.classify(headers)))

    def write() -> None:
        rng = np.random.default_rng(11)
        try:
            for step in range(120):
                ids = sorted(clf.rules)
                if step % 3 == 2:
                    clf.remove(int(rng.choice(ids)))
                else:  # a copy of a rule from the table, at the top or in the middle of the order
                    rule = table.rules[int(rng.integers(len(table)))]
                    clf.add(Rule(MAX_PRIORITY if step % 2 else rule.priority, rule.matches))
                rules_at[clf.version] = clf.rules  # the only writer: this is the version just made
        finally:
            writing.clear()

    reader, writer = threading.Thread(target=read), threading.Thread(target=write)
    reader.start()
    writer.start()
    writer.join()
    reader.join()
    assert clf.rebuilds > 1 and len(rules_at) == 121
    versions = [v for v, _ in seen]
    assert versions == sorted(versions) and len(set(versions)) > 3
    expected = {v: reference_ids_of(rules_at[v], headers) for v in set(versions)}
    for version, got in seen:
        np.testing.assert_array_equal(got, expected[version], err_msg=f"version {version}")


def test_a_published_table_is_read_only_and_outlives_updates():
    clf = Classifier.build(Table((port_rule(80), port_rule(22))))
    old = clf.table
    headers = np.array([[0, 0, 0, 80, 6], [0, 0, 0, 22, 6], [0, 0, 0, 443, 6]], np.uint32)
    for a in old.arrays:
        if isinstance(a, np.ndarray):
            assert not a.flags.writeable
    clf.remove(0)
    clf.add(port_rule(443))
    assert old.classify(headers).tolist() == [0, 1, -1]
    assert clf.classify(headers).tolist() == [-1, 1, 2]
    assert clf.version == old.version + 2


# --- headers that do not fit their fields ----------------------------------------------------------

# A port above 65,535 in the uint32 column: Table.first_match would call a wildcard port a match
# and a port range not, so no answer of the trees could be "what the table says".
TOO_WIDE_HEADERS = [([0, 0, 65536, 80, 6], "l4_src"), ([0, 0, 80, 2**32 - 1, 6], "l4_dst"), ([0, 0, 0, 0, 256], "ip_proto")]


@pytest.mark.parametrize("header, field", TOO_WIDE_HEADERS)
def test_a_header_wider_than_its_field_is_invalid_at_the_batch_naming_row_and_field(header, field):
    clf = Classifier.build(Table((Rule(1), port_rule(80, priority=5))))
    headers = np.array([[0, 0, 0, 80, 6], header], np.uint32)
    with pytest.raises(Invalid) as e:
        clf.classify(headers)
    assert e.value.field == f"headers[1].{field}"
    clf.add(port_rule(81, priority=6))  # in the delta list: the check is the same
    with pytest.raises(Invalid):
        clf.classify(headers)
    assert clf.classify(headers[:1]).tolist() == [1]


@pytest.mark.parametrize("header, field", TOO_WIDE_HEADERS)
def test_lookup_from_a_jitted_loop_answers_too_wide_for_such_a_header(header, field):
    clf = Classifier.build(Table((Rule(1), port_rule(80, priority=5))))
    headers = np.array([[0, 0, 0, 80, 6], header, [0, 0, 0, 22, 17]], np.uint32)
    out = np.empty(len(headers), np.int32)
    engine_loop(clf.arrays, headers, out)
    assert out.tolist() == [1, TOO_WIDE, 0]


def test_the_largest_value_of_each_field_still_classifies():
    clf = Classifier.build(Table((Rule(1), Rule(5, {Field.L4_DST: Exact(65535), Field.IP_PROTO: Exact(255)}))))
    headers = np.array([[2**32 - 1, 2**32 - 1, 65535, 65535, 255], [2**32 - 1, 0, 65535, 65534, 255]], np.uint32)
    assert clf.classify(headers).tolist() == [1, 0]


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(10, 4), (10, 6), (5,), (2, 5, 1), ()])
def test_headers_of_the_wrong_shape_are_invalid_naming_headers(shape):
    clf = Classifier.build(Table((Rule(1),)))
    with pytest.raises(Invalid) as e:
        clf.classify(np.zeros(shape, np.uint32))
    assert e.value.field == "headers"


def test_rule_matching_a_field_the_classifier_does_not_cover_is_invalid_naming_that_field():
    on_mac = Rule(1, {Field.ETH_SRC: Exact(0x0242AC110002), Field.L4_DST: Exact(80)})
    with pytest.raises(Invalid) as e:
        Classifier.build(Table((Rule(2), on_mac)))
    assert e.value.field == "eth_src"

    clf = Classifier.build(Table((Rule(2, {Field.L4_DST: Exact(22)}),)))
    headers = np.array([[0, 0, 0, 22, 6], [0, 0, 0, 80, 6]], np.uint32)
    with pytest.raises(Invalid) as e:
        clf.add(on_mac)
    assert e.value.field == "eth_src"
    assert clf.rules == {0: Rule(2, {Field.L4_DST: Exact(22)})}  # nothing half-added
    assert clf.classify(headers).tolist() == [0, -1]


def test_wildcard_on_a_field_the_classifier_does_not_cover_is_accepted():
    rule = Rule(1, {Field.ETH_SRC: ANY, Field.TENANT: Prefix(0, 0), Field.ETH_DST: Masked(0, 0)})
    clf = Classifier.build(Table((rule,)))
    assert clf.classify(np.zeros((1, 5), np.uint32)).tolist() == [0]


def test_removing_an_unknown_rule_is_invalid_naming_rule_id():
    clf = Classifier.build(Table((Rule(1),)))
    for unknown in (1, -1, 99):
        with pytest.raises(Invalid) as e:
            clf.remove(unknown)
        assert e.value.field == "rule_id"
    clf.remove(0)
    with pytest.raises(Invalid) as e:
        clf.remove(0)
    assert e.value.field == "rule_id"


def test_other_impossible_classifiers_are_invalid_naming_the_culprit():
    with pytest.raises(Invalid) as e:
        Classifier({-1: Rule(1)})
    assert e.value.field == "rule_id"
    with pytest.raises(Invalid) as e:
        Classifier({2**31: Rule(1)})
    assert e.value.field == "rule_id"
    with pytest.raises(Invalid) as e:
        Classifier({}, fields=(Field.ETH_SRC, Field.IP_DST))
    assert e.value.field == "fields"
    too_many_boxes = Rule(1, {Field.IP_PROTO: Masked(0, 0x01), Field.L4_SRC: Masked(0, 0xFEFF), Field.L4_DST: Masked(0, 0xFEFF)})
    with pytest.raises(Invalid) as e:
        Classifier.build(Table((too_many_boxes,)))
    assert e.value.field == "matches"
