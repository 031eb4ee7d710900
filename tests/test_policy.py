"""dataplane.policy: the policy form validates itself, matches mean what they say, and a
table picks the first rule by priority, then by position."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.policy import (
    ANY,
    Allow,
    Drop,
    Exact,
    Field,
    Invalid,
    Masked,
    Meter,
    Output,
    Prefix,
    Range,
    Rule,
    Table,
    Wildcard,
)

# --- validation: a bad value cannot exist, and the error names the field ----------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Rule(65536), "priority"),
        (lambda: Rule(-1), "priority"),
        (lambda: Rule(True), "priority"),
        (lambda: Rule("7"), "priority"),
        (lambda: Rule(1, {Field.IP_SRC: Prefix(0, 33)}), "ip_src.length"),
        (lambda: Rule(1, {Field.L4_DST: Prefix(0, 17)}), "l4_dst.length"),
        (lambda: Rule(1, {Field.IP_DST: Prefix(0, -1)}), "ip_dst.length"),
        (lambda: Rule(1, {Field.IP_SRC: Prefix(0x0A000001, 8)}), "ip_src"),
        (lambda: Rule(1, {Field.IP_PROTO: Prefix(0x01, 7)}), "ip_proto"),
        (lambda: Rule(1, {Field.L4_SRC: Range(81, 80)}), "l4_src"),
        (lambda: Rule(1, {Field.L4_SRC: Range(0, 65536)}), "l4_src.hi"),
        (lambda: Rule(1, {Field.L4_DST: Range(-1, 5)}), "l4_dst.lo"),
        (lambda: Rule(1, {Field.IP_PROTO: Masked(0x11, 0x0F)}), "ip_proto"),
        (lambda: Rule(1, {Field.IP_PROTO: Masked(0x06, 0x1FF)}), "ip_proto.mask"),
        (lambda: Rule(1, {Field.IP_PROTO: Exact(256)}), "ip_proto"),
        (lambda: Rule(1, {Field.L4_DST: Exact(65536)}), "l4_dst"),
        (lambda: Rule(1, {Field.IP_DST: Exact(1 << 32)}), "ip_dst"),
        (lambda: Rule(1, {Field.TENANT: Exact(1 << 24)}), "tenant"),
        (lambda: Rule(1, {Field.ETH_SRC: Exact(1 << 48)}), "eth_src"),
        (lambda: Rule(1, {Field.IP_SRC: Exact(-1)}), "ip_src"),
        (lambda: Rule(1, {Field.IP_SRC: Exact(1.0)}), "ip_src"),
        (lambda: Rule(1, {Field.IP_SRC: Exact(True)}), "ip_src"),
        (lambda: Rule(1, {Field.IP_SRC: (0, 5)}), "ip_src"),
        (lambda: Output(-1), "output.port"),
        (lambda: Meter(1 << 32), "meter"),
        (lambda: Table((Rule(1), "not a rule")), "rules[1]"),
    ],
)
def test_invalid_values_raise_invalid_naming_the_field(make, field):
    with pytest.raises(Invalid) as e:
        make()
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: ")


def test_largest_legal_values_are_accepted():
    rule = Rule(
        65535,
        {
            Field.IP_SRC: Prefix(0xFFFFFFFF, 32),
            Field.IP_DST: Prefix(0, 0),
            Field.L4_SRC: Range(0, 65535),
            Field.L4_DST: Exact(65535),
            Field.IP_PROTO: Masked(0xFF, 0xFF),
            Field.ETH_SRC: Exact((1 << 48) - 1),
        },
    )
    assert rule.priority == 65535 and Rule(0).priority == 0


def test_mask_too_scattered_to_expand_is_invalid_naming_the_field():
    with pytest.raises(Invalid) as e:
        Masked(0, 0x1).ranges(Field.IP_SRC)  # 31 free bits above the lowest mask bit
    assert e.value.field == "ip_src"


# --- what each match kind accepts ----------------------------------------------------------


def runs(values: list[int]) -> list[tuple[int, int]]:
    """Sorted values as maximal runs of consecutive integers."""
    out: list[tuple[int, int]] = []
    for v in values:
        if out and out[-1][1] == v - 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out


@st.composite
def masked_8bit(draw, masks=st.integers(0, 255)):
    mask = draw(masks)
    return Masked(draw(st.integers(0, 255)) & mask, mask)


CONTIGUOUS_MASKS = st.integers(0, 8).map(lambda n: (0xFF << (8 - n)) & 0xFF)  # 0x00, 0x80, ... 0xFF


@settings(max_examples=200)
@given(m=masked_8bit(CONTIGUOUS_MASKS))
def test_masked_ranges_with_contiguous_mask_is_one_run_of_the_accepted_values(m):
    accepted = [v for v in range(256) if v & m.mask == m.value]
    assert m.ranges(Field.IP_PROTO) == runs(accepted)
    assert len(m.ranges(Field.IP_PROTO)) == 1


@settings(max_examples=300)
@given(m=masked_8bit())
def test_masked_ranges_are_exactly_the_accepted_values_for_any_mask(m):
    accepted = [v for v in range(256) if v & m.mask == m.value]
    assert m.ranges(Field.IP_PROTO) == runs(accepted)


@settings(max_examples=50)
@given(mask=st.sampled_from([0xFFFF, 0xFF00, 0xFFFE, 0x7FFF, 0xFEFF, 0x00FF, 0x0F0F, 0x0000]), value=st.integers(0, 0xFFFF))
def test_masked_ranges_are_exactly_the_accepted_values_on_a_16_bit_field(mask, value):
    m = Masked(value & mask, mask)
    accepted = [v for v in range(1 << 16) if v & mask == m.value]
    assert m.ranges(Field.L4_DST) == runs(accepted)


@settings(max_examples=200)
@given(length=st.integers(0, 8), value=st.integers(0, 255))
def test_prefix_ranges_are_exactly_the_accepted_values(length, value):
    p = Prefix(value & ~((1 << (8 - length)) - 1) & 0xFF, length)
    accepted = [v for v in range(256) if v >> (8 - length) == p.value >> (8 - length)]
    assert p.ranges(Field.IP_PROTO) == runs(accepted)


def test_other_match_kinds_describe_their_values_as_ranges():
    assert Wildcard().ranges(Field.L4_SRC) == [(0, 65535)]
    assert ANY.ranges(Field.IP_SRC) == [(0, 0xFFFFFFFF)]
    assert Exact(80).ranges(Field.L4_DST) == [(80, 80)]
    assert Range(1024, 65535).ranges(Field.L4_DST) == [(1024, 65535)]
    assert Prefix(0x0A000000, 8).ranges(Field.IP_DST) == [(0x0A000000, 0x0AFFFFFF)]
    assert Prefix(0, 0).ranges(Field.IP_DST) == [(0, 0xFFFFFFFF)]


# --- rules are values ---------------------------------------------------------------------


def test_rules_with_the_same_contents_are_equal_and_hash_equal_whatever_the_mapping_order():
    a = Rule(7, {Field.IP_SRC: Prefix(0x0A000000, 8), Field.L4_DST: Range(80, 443)}, (Drop(),))
    b = Rule(7, {Field.L4_DST: Range(80, 443), Field.IP_SRC: Prefix(0x0A000000, 8)}, [Drop()])
    c = Rule(7, {int(Field.L4_DST): Range(80, 443), int(Field.IP_SRC): Prefix(0x0A000000, 8)}, (Drop(),))
    assert a == b == c
    assert hash(a) == hash(b) == hash(c)
    assert len({a, b, c}) == 1
    assert b.actions == (Drop(),)


@pytest.mark.parametrize(
    "other",
    [
        Rule(8, {Field.IP_SRC: Prefix(0x0A000000, 8)}),
        Rule(7, {Field.IP_SRC: Prefix(0x0A000000, 9)}),
        Rule(7, {Field.IP_DST: Prefix(0x0A000000, 8)}),
        Rule(7, {Field.IP_SRC: Prefix(0x0A000000, 8)}, (Drop(),)),
        Rule(7, {Field.IP_SRC: Prefix(0x0A000000, 8), Field.L4_DST: Exact(80)}),
    ],
)
def test_rules_differing_in_priority_matches_or_actions_are_unequal(other):
    assert Rule(7, {Field.IP_SRC: Prefix(0x0A000000, 8)}) != other


def test_rule_matches_cannot_be_changed_after_construction():
    given_matches = {Field.L4_DST: Exact(80)}
    rule = Rule(1, given_matches)
    given_matches[Field.L4_DST] = Exact(22)  # the caller's dict is not shared
    assert rule.match(Field.L4_DST) == Exact(80)
    with pytest.raises(TypeError):
        rule.matches[Field.L4_DST] = Exact(22)
    with pytest.raises(TypeError):
        rule.matches.update({Field.L4_SRC: Exact(1)})
    with pytest.raises(AttributeError):  # frozen dataclass
        rule.priority = 2  # type: ignore[misc]
    assert rule.match(Field.IP_SRC) == ANY and rule.actions == (Allow(),)


# --- first match --------------------------------------------------------------------------

WEB = {Field.IP_SRC: 0x0A000001, Field.IP_DST: 0xC0A80001, Field.L4_SRC: 40000, Field.L4_DST: 80, Field.IP_PROTO: 6}


def test_first_match_wins_by_priority_over_position():
    table = Table((
        Rule(10, {Field.L4_DST: Exact(80)}),
        Rule(20, {Field.IP_SRC: Prefix(0x0A000000, 8)}),
        Rule(30, {Field.L4_DST: Exact(22)}),
    ))
    assert table.first_match(WEB) == 1
    assert table.search_order() == [2, 1, 0]


def test_first_match_among_equal_priorities_is_the_earliest_in_the_table():
    table = Table((
        Rule(5, {Field.L4_DST: Exact(22)}),
        Rule(5, {Field.L4_DST: Exact(80)}),
        Rule(5, {Field.IP_PROTO: Exact(6)}),
        Rule(5, {Field.L4_DST: Exact(80)}),
        Rule(4),
    ))
    assert table.first_match(WEB) == 1
    assert table.first_match({**WEB, Field.L4_DST: 443}) == 2
    assert table.first_match({**WEB, Field.L4_DST: 443, Field.IP_PROTO: 17}) == 4


def test_first_match_is_minus_one_when_no_rule_matches():
    table = Table((Rule(5, {Field.L4_DST: Exact(22)}), Rule(1, {Field.IP_PROTO: Exact(17)})))
    assert table.first_match(WEB) == -1
    assert Table().first_match(WEB) == -1


def test_a_field_the_packet_lacks_matches_only_a_wildcard():
    table = Table((Rule(9, {Field.TENANT: Exact(5)}), Rule(8, {Field.TENANT: ANY, Field.L4_DST: Exact(80)})))
    assert table.first_match(WEB) == 1
    assert table.first_match({**WEB, Field.TENANT: 5}) == 0


RULES = st.builds(
    Rule,
    priority=st.sampled_from([0, 1, 1, 2, 65535]),
    matches=st.dictionaries(
        st.sampled_from([Field.L4_DST, Field.IP_PROTO]),
        st.one_of(st.builds(Exact, st.integers(0, 3)), st.builds(Range, st.just(0), st.integers(0, 3)), st.just(ANY)),
    ),
)


@settings(max_examples=200)
@given(rules=st.lists(RULES, max_size=8), port=st.integers(0, 4), proto=st.integers(0, 4))
def test_first_match_is_the_highest_priority_matching_rule_earliest_first(rules, port, proto):
    packet = {Field.L4_DST: port, Field.IP_PROTO: proto}
    matching = [i for i, r in enumerate(rules) if r.matches_packet(packet)]
    expected = min(matching, key=lambda i: (-rules[i].priority, i), default=-1)
    assert Table(tuple(rules)).first_match(packet) == expected
