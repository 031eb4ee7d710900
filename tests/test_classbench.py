"""dataplane.classbench: every ClassBench file reads into the policy form with the README's
semantics, and malformed input is an error that names the file and the line."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dataplane.classbench import FIVE_TUPLE, ClassBenchError, parse_rule, read_rules, read_trace, write_trace
from dataplane.compile.classifier import brute_force
from dataplane.policy import MAX_PRIORITY, Field, Masked, Prefix, Range, Table

SETS_1K = [f"{family}_1k" for family in
           ("acl1", "acl2", "acl3", "acl4", "acl5", "fw1", "fw2", "fw3", "fw4", "fw5", "ipc1", "ipc2")]
# The sizes the README states (ClassBench drops redundant rules, so nominal sizes are not exact).
STATED_COUNTS = {"acl1_1k": 878, "acl1_10k": 9761, "fw1_10k": 9416, "ipc1_10k": 8739, "acl5_10k": 4834}

GOOD = "@198.51.100.0/24\t203.0.0.0/16\t0 : 65535\t80 : 80\t0x06/0xFF\t0x0000/0x0200"


def rule_lines(path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


# --- the real files ------------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS_1K)
def test_every_1k_rule_set_reads_one_rule_per_line_in_priority_order(classbench_dir, name):
    table = read_rules(classbench_dir / name)
    assert len(table) == rule_lines(classbench_dir / name) > 0
    assert table.name == name
    assert [r.priority for r in table.rules] == list(range(MAX_PRIORITY, MAX_PRIORITY - len(table), -1))
    assert all(r.matches.keys() <= set(FIVE_TUPLE) for r in table.rules)


@pytest.mark.parametrize(("name", "count"), sorted(STATED_COUNTS.items()))
def test_rule_sets_have_the_sizes_the_readme_states(classbench_dir, name, count):
    assert len(read_rules(classbench_dir / name)) == count


@pytest.mark.parametrize("name", SETS_1K)
def test_every_1k_trace_reads_and_each_header_first_matches_at_or_before_its_filter(classbench_dir, name):
    table = read_rules(classbench_dir / name)
    trace = read_trace(classbench_dir / f"{name}_trace")
    assert trace.headers.dtype == np.uint32 and trace.filters.dtype == np.int64
    assert trace.headers.shape == (rule_lines(classbench_dir / f"{name}_trace"), 5)
    assert len(trace.filters) == len(trace.headers)
    assert trace.filters.min() >= 0 and trace.filters.max() < len(table)
    truth = brute_force(table, trace.headers)
    # Each header is a corner of its filter#, so it matches that rule or an earlier one.
    assert (truth >= 0).all() and (truth <= trace.filters).all()


def test_acl1_1k_trace_answer_equals_filter_for_about_96_percent(classbench_dir):
    table = read_rules(classbench_dir / "acl1_1k")
    trace = read_trace(classbench_dir / "acl1_1k_trace")
    same = (brute_force(table, trace.headers) == trace.filters).mean()
    assert 0.96 <= same <= 0.97  # the README: about 96.5%


@pytest.mark.parametrize("name", ["acl1_10k", "fw5_10k"])  # two of the regenerated traces
def test_10k_traces_read_about_ten_headers_per_rule(classbench_dir, name):
    rules = rule_lines(classbench_dir / name)
    trace = read_trace(classbench_dir / f"{name}_trace")
    assert trace.headers.shape == (rule_lines(classbench_dir / f"{name}_trace"), 5)
    assert 5 * rules <= len(trace.headers) <= 15 * rules
    assert trace.filters.min() >= 0 and trace.filters.max() < rules


# --- semantics of one rule -------------------------------------------------------------------


def packet(src, dst, sport, dport, proto):
    return dict(zip(FIVE_TUPLE, (src, dst, sport, dport, proto)))


def test_a_parsed_rule_has_the_readme_meaning():
    rule = parse_rule("@237.73.3.4/32\t67.236.63.210/32\t0 : 65535\t1711 : 1711\t0x06/0xFF\t0x0000/0x0200", 7)
    assert rule.priority == 7
    assert rule.match(Field.IP_SRC) == Prefix(0xED490304, 32)
    assert rule.match(Field.IP_DST) == Prefix(0x43EC3FD2, 32)
    assert rule.match(Field.L4_SRC).ranges(Field.L4_SRC) == [(0, 65535)]
    assert rule.match(Field.L4_DST) == Range(1711, 1711)
    assert rule.match(Field.IP_PROTO) == Masked(6, 0xFF)
    assert rule.matches_packet(packet(0xED490304, 0x43EC3FD2, 12345, 1711, 6))
    assert not rule.matches_packet(packet(0xED490304, 0x43EC3FD2, 12345, 1711, 17))
    assert not rule.matches_packet(packet(0xED490305, 0x43EC3FD2, 12345, 1711, 6))
    assert not rule.matches_packet(packet(0xED490304, 0x43EC3FD2, 12345, 1712, 6))


def test_prefix_zero_and_proto_zero_mask_match_anything():
    rule = parse_rule("@0.0.0.0/0\t0.0.0.0/0\t0 : 65535\t0 : 65535\t0x00/0x00\t0x0000/0x0000", 1)
    for p in (packet(0, 0, 0, 0, 0), packet(0xFFFFFFFF, 0xFFFFFFFF, 65535, 65535, 255), packet(1, 2, 3, 4, 6)):
        assert rule.matches_packet(p)
    # Host bits after a /0 and a protocol under a zero mask mean nothing either.
    assert parse_rule("@1.2.3.4/0\t5.6.7.8/0\t0 : 65535\t0 : 65535\t0x06/0x00\t0x0000/0x0000", 1) == rule


def test_prefix_host_bits_are_dropped_and_ports_are_inclusive():
    rule = parse_rule("@198.51.100.3/8\t203.0.7.7/16\t1024 : 2047\t80 : 80\t0x11/0xFF", 1)
    assert rule.match(Field.IP_SRC) == Prefix(0xC6000000, 8)
    assert rule.match(Field.IP_DST) == Prefix(0xCB000000, 16)
    table = Table((rule,))
    assert table.first_match(packet(0xC6FFFFFF, 0xCB00FFFF, 1024, 80, 17)) == 0
    assert table.first_match(packet(0xC6000000, 0xCB000000, 2047, 80, 17)) == 0
    assert table.first_match(packet(0xC5FFFFFF, 0xCB000000, 1024, 80, 17)) == -1
    assert table.first_match(packet(0xC6000000, 0xCB000000, 2048, 80, 17)) == -1
    assert table.first_match(packet(0xC6000000, 0xCB000000, 1023, 80, 17)) == -1


def test_proto_mask_matches_when_packet_and_rule_agree_under_the_mask():
    rule = parse_rule("@0.0.0.0/0\t0.0.0.0/0\t0 : 65535\t0 : 65535\t0x06/0x0F\t0x0000/0x0000", 1)
    accepted = [p for p in range(256) if rule.matches_packet(packet(0, 0, 0, 0, p))]
    assert accepted == [p for p in range(256) if p & 0x0F == 0x06]


@pytest.mark.parametrize(
    "flags", ["\t0x0000/0x0200", "\t0xFFFF/0xFFFF", "\t0x0010/0x0010\t", " 0x1234/0x0000", "", "\t"]
)
def test_flags_column_is_ignored(flags):
    base = "@198.51.100.0/24\t203.0.0.0/16\t0 : 65535\t80 : 80\t0x06/0xFF"
    assert parse_rule(base + flags, 3) == parse_rule(base, 3)


def test_first_line_has_the_highest_priority_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "rules"
    path.write_text("\n".join([GOOD, "", GOOD.replace("80 : 80", "22 : 22"), "  ", GOOD]) + "\n")
    table = read_rules(path)
    assert [r.priority for r in table.rules] == [MAX_PRIORITY, MAX_PRIORITY - 1, MAX_PRIORITY - 2]
    assert table.first_match(packet(0xC6336403, 0xCB000101, 5, 80, 6)) == 0


# --- malformed rule files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("@198.51.100.256/24\t203.0.0.0/16\t0 : 65535\t80 : 80\t0x06/0xFF\t0x0000/0x0200", "octet over 255"),
        ("@198.51.100/24\t203.0.0.0/16\t0 : 65535\t80 : 80\t0x06/0xFF\t0x0000/0x0200", "three octets"),
        ("@198.51.100.0.7/24\t203.0.0.0/16\t0 : 65535\t80 : 80\t0x06/0xFF\t0x0000/0x0200", "five octets"),
        ("@198.51.x.0/24\t203.0.0.0/16\t0 : 65535\t80 : 80\t0x06/0xFF\t0x0000/0x0200", "letter"),
        ("@198.51.100.0/33\t203.0.0.0/16\t0 : 65535\t80 : 80\t0x06/0xFF\t0x0000/0x0200", "source /33"),
        ("@198.51.100.0/24\t203.0.0.0/33\t0 : 65535\t80 : 80\t0x06/0xFF\t0x0000/0x0200", "destination /33"),
        ("@198.51.100.0/24\t0 : 65535\t80 : 80\t0x06/0xFF\t0x0000/0x0200", "missing address"),
        ("@198.51.100.0/24\t203.0.0.0/16\t0 : 65535\t0x06/0xFF\t0x0000/0x0200", "missing port range"),
        ("@198.51.100.0/24\t203.0.0.0/16\t0 : 65535\t80 : 80\t0x0000/0x0200", "missing protocol"),
        ("198.51.100.0/24\t203.0.0.0/16\t0 : 65535\t80 : 80\t0x06/0xFF\t0x0000/0x0200", "no @"),
        ("@198.51.100.0/24\t203.0.0.0/16\t0 : 65536\t80 : 80\t0x06/0xFF\t0x0000/0x0200", "source port 65536"),
        ("@198.51.100.0/24\t203.0.0.0/16\t0 : 65535\t80 : 99999\t0x06/0xFF\t0x0000/0x0200", "destination port 99999"),
        ("@198.51.100.0/24\t203.0.0.0/16\t0 : 65535\t81 : 80\t0x06/0xFF\t0x0000/0x0200", "empty port range"),
        ("@198.51.100.0/24\t203.0.0.0/16\t0 : 65535\t80 : 80\t0xZZ/0xFF\t0x0000/0x0200", "non-hex proto"),
        ("@198.51.100.0/24\t203.0.0.0/16\t0 : 65535\t80 : 80\t6/0xFF\t0x0000/0x0200", "proto without 0x"),
        ("@198.51.100.0/24\t203.0.0.0/16\t0 : 65535\t80 : 80\t0x06/0xG0\t0x0000/0x0200", "non-hex mask"),
        ("@198.51.100.0/24\t203.0.0.0/16\t0 : 65535\t80 : 80\t0x06/0x1FF\t0x0000/0x0200", "mask over 8 bits"),
        ("@198.51.100.0/24\t203.0.0.0/16\t0 : 65535\t80 : 80\t0x06/0xFF\t0x0/0x0\textra", "extra column"),
    ],
)
def test_malformed_rule_is_an_error_naming_file_and_line(tmp_path, bad, why):
    path = tmp_path / "rules"
    path.write_text(f"{GOOD}\n\n{bad}\n{GOOD}\n")  # line 3: blank lines count
    with pytest.raises(ClassBenchError) as e:
        read_rules(path)
    assert (e.value.path, e.value.line) == (str(path), 3), why
    assert str(e.value).startswith(f"{path}:3: "), why
    assert e.value.problem


@pytest.mark.parametrize("proto", ["0x106/0xFF", "0x100/0xFF", "0xFFFF/0xFF"])
def test_protocol_value_over_8_bits_is_an_error(tmp_path, proto):
    # A port over 65535 is an error; a protocol over 0xFF must be one too, not silently
    # truncated to its low byte (0x100/0xFF would otherwise match protocol 0).
    path = tmp_path / "rules"
    path.write_text(f"@198.51.100.0/24\t203.0.0.0/16\t0 : 65535\t80 : 80\t{proto}\t0x0000/0x0200\n")
    with pytest.raises(ClassBenchError) as e:
        read_rules(path)
    assert e.value.line == 1


# --- malformed traces ---------------------------------------------------------------------------

GOOD_TRACE = "1923697128\t2273746465\t0\t1221\t6\t4294967295\t261"


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("1923697128\t2273746465\t0\t1221", "four columns"),
        ("1923697128\t2273746465\tzero\t1221\t6\t0\t261", "word"),
        ("1923697128\t2273746465\t0\t1221\t6.0\t0\t261", "decimal point"),
        ("0x10\t2273746465\t0\t1221\t6\t0\t261", "hex"),
        ("4294967296\t2273746465\t0\t1221\t6\t0\t261", "source address over 32 bits"),
        ("1923697128\t4294967296\t0\t1221\t6\t0\t261", "destination address over 32 bits"),
        ("1923697128\t2273746465\t65536\t1221\t6\t0\t261", "source port over 16 bits"),
        ("1923697128\t2273746465\t0\t65536\t6\t0\t261", "destination port over 16 bits"),
        ("1923697128\t2273746465\t0\t1221\t256\t0\t261", "protocol over 8 bits"),
        ("-1\t2273746465\t0\t1221\t6\t0\t261", "negative"),
    ],
)
def test_malformed_trace_line_is_an_error_naming_file_and_line(tmp_path, bad, why):
    path = tmp_path / "trace"
    path.write_text(f"{GOOD_TRACE}\n{GOOD_TRACE}\n\n{bad}\n{GOOD_TRACE}\n")  # line 4
    with pytest.raises(ClassBenchError) as e:
        read_trace(path)
    assert (e.value.path, e.value.line) == (str(path), 4), why
    assert str(e.value).startswith(f"{path}:4: "), why


def test_trace_reads_five_columns_and_the_filter_and_tolerates_missing_extras(tmp_path):
    path = tmp_path / "trace"
    path.write_text(f"{GOOD_TRACE}\n4294967295 4294967295 65535 65535 255\n0 0 0 0 0 0\n")
    trace = read_trace(path)
    np.testing.assert_array_equal(trace.headers, [[1923697128, 2273746465, 0, 1221, 6],
                                                  [0xFFFFFFFF, 0xFFFFFFFF, 65535, 65535, 255],
                                                  [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(trace.filters, [261, -1, -1])


# --- writing traces -------------------------------------------------------------------------------

@st.composite
def trace_headers(draw):
    n = draw(st.integers(0, 40))
    columns = [
        draw(arrays(np.uint32, n, elements=st.one_of(st.sampled_from([0, (1 << f.width) - 1]), st.integers(0, (1 << f.width) - 1))))
        for f in FIVE_TUPLE
    ]
    return np.stack(columns, axis=1).reshape(n, 5).astype(np.uint32)


@settings(max_examples=100)
@given(headers=trace_headers())
def test_write_trace_then_read_trace_gives_back_the_headers(tmp_path_factory, headers):
    path = tmp_path_factory.mktemp("trace") / "trace"
    write_trace(path, headers)
    trace = read_trace(path)
    assert trace.headers.dtype == np.uint32 and trace.headers.shape == (len(headers), 5)
    np.testing.assert_array_equal(trace.headers, headers)
    np.testing.assert_array_equal(trace.filters, np.full(len(headers), -1))


def test_written_trace_of_a_real_set_round_trips(classbench_dir, tmp_path):
    headers = read_trace(classbench_dir / "acl1_1k_trace").headers
    write_trace(tmp_path / "copy", headers)
    np.testing.assert_array_equal(read_trace(tmp_path / "copy").headers, headers)
