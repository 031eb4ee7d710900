"""dataplane.kernels.meter and dataplane.meters: the policers colour every packet, and leave
every bucket, exactly as RFC 2697 (srTCM) and RFC 2698 (trTCM) say, read as continuous
refill at nanosecond resolution; at the largest rates and bursts nothing overflows; a meter
can be changed without touching the others; a bad parameter names itself."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.kernels.meter import (
    CFG_MODE,
    GREEN,
    MAX_BURST,
    MAX_RATE,
    RED,
    ST_LAST_NS,
    ST_TC,
    ST_TE_TP,
    YELLOW,
    mark,
    mark_batch,
)
from dataplane.meters import MeterSpec, Mode, config_row, meter_arrays, set_meter
from dataplane.policy import Invalid

SECOND = 10**9  # ns
INT64_MAX = 2**63 - 1
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the references: the RFCs' text, tokens as exact fractions of a byte ------------------


class SrTCM:
    """RFC 2697 section 3, tokens in bytes (Fractions), time in ns."""

    def __init__(self, cir: int, cbs: int, ebs: int, aware: bool, t0: int = 0) -> None:
        self.cir, self.cbs, self.ebs, self.aware = cir, cbs, ebs, aware
        self.tc, self.te = Fraction(cbs), Fraction(ebs)  # "Tc(0) = CBS and Te(0) = EBS"
        self.t = t0

    def update(self, now: int) -> None:
        """"The token count Tc is incremented by one CIR times per second up to CBS, and
        if Tc is full then Te is incremented by one up to EBS" (continuously). Time that
        goes backwards brings no tokens."""
        if now <= self.t:
            return
        tokens = Fraction(self.cir * (now - self.t), SECOND)
        self.t = now
        into_tc = min(tokens, self.cbs - self.tc)
        self.tc += into_tc
        self.te = min(Fraction(self.ebs), self.te + (tokens - into_tc))

    def mark(self, now: int, b: int, colour: int) -> int:
        self.update(now)
        if not self.aware:  # colour-blind mode
            if self.tc - b >= 0:
                self.tc -= b
                return GREEN
            if self.te - b >= 0:
                self.te -= b
                return YELLOW
            return RED
        # colour-aware mode
        if colour == GREEN and self.tc - b >= 0:
            self.tc -= b
            return GREEN
        if colour in (GREEN, YELLOW) and self.te - b >= 0:
            self.te -= b
            return YELLOW
        return RED

    def buckets(self) -> tuple[Fraction, Fraction]:
        return self.tc, self.te


class TrTCM:
    """RFC 2698 section 3, tokens in bytes (Fractions), time in ns."""

    def __init__(self, cir: int, cbs: int, pir: int, pbs: int, aware: bool, t0: int = 0) -> None:
        self.cir, self.cbs, self.pir, self.pbs, self.aware = cir, cbs, pir, pbs, aware
        self.tp, self.tc = Fraction(pbs), Fraction(cbs)  # "Tp(0) = PBS and Tc(0) = CBS"
        self.t = t0

    def update(self, now: int) -> None:
        """"The token count Tp is incremented by one PIR times per second up to PBS and
        the token count Tc is incremented by one CIR times per second up to CBS."""
        if now <= self.t:
            return
        dt = now - self.t
        self.t = now
        self.tp = min(Fraction(self.pbs), self.tp + Fraction(self.pir * dt, SECOND))
        self.tc = min(Fraction(self.cbs), self.tc + Fraction(self.cir * dt, SECOND))

    def mark(self, now: int, b: int, colour: int) -> int:
        self.update(now)
        if not self.aware:  # colour-blind mode
            if self.tp - b < 0:
                return RED
            if self.tc - b < 0:
                self.tp -= b
                return YELLOW
            self.tp -= b
            self.tc -= b
            return GREEN
        # colour-aware mode
        if colour == RED or self.tp - b < 0:
            return RED
        if colour == YELLOW or self.tc - b < 0:
            self.tp -= b
            return YELLOW
        self.tp -= b
        self.tc -= b
        return GREEN

    def buckets(self) -> tuple[Fraction, Fraction]:
        return self.tc, self.tp


class Unlimited:
    """No buckets: blind, every packet green; aware, every packet keeps its colour."""

    def __init__(self, aware: bool, t0: int = 0) -> None:
        self.aware, self.t = aware, t0

    def mark(self, now: int, b: int, colour: int) -> int:
        return colour if self.aware else GREEN

    def buckets(self) -> tuple[Fraction, Fraction]:
        return Fraction(0), Fraction(0)


def reference(spec: MeterSpec, t0: int = 0):
    if spec.mode == Mode.SRTCM:
        return SrTCM(spec.cir, spec.cbs, spec.ebs, spec.colour_aware, t0)
    if spec.mode == Mode.TRTCM:
        return TrTCM(spec.cir, spec.cbs, spec.pir, spec.pbs, spec.colour_aware, t0)
    return Unlimited(spec.colour_aware, t0)


def kernel_buckets(meters, m: int) -> tuple[Fraction, Fraction]:
    """Meter m's two buckets in bytes, from the kernel's byte-nanoseconds."""
    return Fraction(int(meters.state[m, ST_TC]), SECOND), Fraction(int(meters.state[m, ST_TE_TP]), SECOND)


def assert_same_state(meters, m: int, model) -> None:
    assert kernel_buckets(meters, m) == model.buckets()
    assert int(meters.state[m, ST_LAST_NS]) == model.t


# --- strategies: parameters across the legal range, arrivals that drain and refill -------

rates = st.one_of(
    st.sampled_from([0, 1, 1000, MAX_RATE - 1, MAX_RATE]),
    st.integers(1, 10**5),  # slow enough that gaps of microseconds to seconds matter
    st.integers(10**5, 10**9),
    st.integers(0, MAX_RATE),
)
bursts = st.one_of(
    st.sampled_from([1, 64, 1500, 9000, MAX_BURST - 1, MAX_BURST]),
    st.integers(1, 30_000),  # a few packets' worth: colours change often
    st.integers(0, MAX_BURST),
)


@st.composite
def specs(draw) -> MeterSpec:
    mode = draw(st.sampled_from(list(Mode)))
    aware = draw(st.booleans())
    if mode == Mode.UNLIMITED:
        return MeterSpec.unlimited(aware)
    if mode == Mode.SRTCM:
        cbs, ebs = draw(bursts), draw(bursts)
        if cbs == ebs == 0:
            cbs = 1
        return MeterSpec.srtcm(draw(rates), cbs, ebs, aware)
    cir, pir = sorted((draw(rates), draw(rates)))
    return MeterSpec.trtcm(cir, max(draw(bursts), 1), pir, max(draw(bursts), 1), aware)


gaps = st.one_of(
    st.integers(0, 1000),
    st.integers(0, 10**6),
    st.integers(0, SECOND),
    st.integers(0, 5 * SECOND),
    st.integers(-10**6, -1),  # time going backwards now and then
)
packets = st.tuples(st.integers(0, 3), gaps, st.integers(64, 9000), st.sampled_from([GREEN, YELLOW, RED]))


# --- the property: colour for colour, bucket for bucket ----------------------------------


@PROPERTY
@given(st.lists(specs(), min_size=1, max_size=4), st.integers(0, 10**12), st.lists(packets, min_size=1, max_size=60))
def test_every_colour_and_bucket_is_the_rfcs(meter_specs, t0, arrivals):
    meters = meter_arrays(meter_specs, now_ns=t0)
    models = [reference(s, t0) for s in meter_specs]
    ids, times, sizes, colours, expected = [], [], [], [], []
    now = t0
    for which, gap, size, colour in arrivals:
        m = which % len(meter_specs)
        now += gap
        want = models[m].mark(now, size, colour)
        got = mark(meters, m, now, size, colour)
        assert got == want, f"packet {len(expected)} on meter {m} ({meter_specs[m]})"
        assert_same_state(meters, m, models[m])
        ids.append(m), times.append(now), sizes.append(size), colours.append(colour), expected.append(want)

    # The batch loop (with its prefetches) says the same, and ends in the same state.
    again = meter_arrays(meter_specs, now_ns=t0)
    out = np.full(len(ids), 99, dtype=np.uint8)
    mark_batch(again, np.array(ids, np.int32), np.array(times, np.int64), np.array(sizes, np.int32),
               np.array(colours, np.uint8), out)
    assert out.tolist() == expected
    assert np.array_equal(again.state, meters.state)


# --- the RFCs' definitions, case by case -------------------------------------------------


def drained(meters, m: int, now: int) -> None:
    """Meter m has passed packets of 64 bytes at `now` until one came out red."""
    for _ in range(10**5):
        if mark(meters, m, now, 64, GREEN) == RED:
            return
    raise AssertionError(f"meter {m} never turned red")


def one_meter(spec: MeterSpec, t0: int = 0):
    return meter_arrays([spec], now_ns=t0)


@pytest.mark.parametrize("aware", [False, True])
def test_srtcm_burst_of_exactly_cbs_is_green_one_byte_more_is_not(aware):
    spec = MeterSpec.srtcm(cir=1000, cbs=1500, ebs=3000, colour_aware=aware)
    assert mark(one_meter(spec), 0, 0, 1500, GREEN) == GREEN
    assert mark(one_meter(spec), 0, 0, 1501, GREEN) == YELLOW  # Te has room for it
    assert mark(one_meter(spec), 0, 0, 3001, GREEN) == RED
    meters = one_meter(spec)
    assert mark(meters, 0, 0, 1500, GREEN) == GREEN
    assert mark(meters, 0, 0, 1, GREEN) == YELLOW  # Tc is empty
    assert mark(meters, 0, 0, 2999, GREEN) == YELLOW
    assert mark(meters, 0, 0, 1, GREEN) == RED  # both are
    no_excess = MeterSpec.srtcm(cir=1000, cbs=1500, ebs=0, colour_aware=aware)
    assert mark(one_meter(no_excess), 0, 0, 1501, GREEN) == RED


@pytest.mark.parametrize("aware", [False, True])
def test_trtcm_burst_of_exactly_cbs_is_green_one_byte_more_is_not(aware):
    spec = MeterSpec.trtcm(cir=1000, cbs=1500, pir=2000, pbs=3000, colour_aware=aware)
    assert mark(one_meter(spec), 0, 0, 1500, GREEN) == GREEN
    assert mark(one_meter(spec), 0, 0, 1501, GREEN) == YELLOW
    assert mark(one_meter(spec), 0, 0, 3000, GREEN) == YELLOW
    assert mark(one_meter(spec), 0, 0, 3001, GREEN) == RED
    meters = one_meter(spec)
    assert mark(meters, 0, 0, 1500, GREEN) == GREEN  # Tc 0, Tp 1500
    assert mark(meters, 0, 0, 1500, GREEN) == YELLOW  # Tp 0
    assert mark(meters, 0, 0, 1, GREEN) == RED


@pytest.mark.parametrize("spec", [
    MeterSpec.srtcm(cir=1000, cbs=1500, ebs=3000),
    MeterSpec.trtcm(cir=1000, cbs=1500, pir=2000, pbs=3000),
])
def test_after_an_idle_period_the_buckets_are_full_and_no_fuller(spec):
    meters = one_meter(spec)
    drained(meters, 0, 0)
    hour = 3600 * SECOND
    mark(meters, 0, hour, 0, GREEN)  # a packet of 0 bytes takes nothing
    assert meters.state[0, ST_TC] == 1500 * SECOND
    assert meters.state[0, ST_TE_TP] == 3000 * SECOND
    assert mark(meters, 0, hour, 1500, GREEN) == GREEN
    assert mark(meters, 0, hour, 1, GREEN) == YELLOW


def test_refill_is_exact_to_the_nanosecond():
    meters = one_meter(MeterSpec.srtcm(cir=1000, cbs=1500, ebs=0))  # one byte per ms
    assert mark(meters, 0, 0, 1500, GREEN) == GREEN
    assert mark(meters, 0, 1_500_000, 2, GREEN) == RED  # 1.5 bytes so far
    assert meters.state[0, ST_TC] == 1_500_000_000  # 1.5 bytes, in byte-nanoseconds
    assert mark(meters, 0, 1_500_000, 1, GREEN) == GREEN
    assert mark(meters, 0, 1_999_999, 1, GREEN) == RED  # 0.999999 bytes
    assert mark(meters, 0, 2_000_000, 1, GREEN) == GREEN
    assert meters.state[0, ST_TC] == 0


def test_srtcm_overflow_from_tc_goes_to_te():
    meters = one_meter(MeterSpec.srtcm(cir=1000, cbs=100, ebs=100))
    assert mark(meters, 0, 0, 100, GREEN) == GREEN
    assert mark(meters, 0, 0, 100, GREEN) == YELLOW  # both empty now
    mark(meters, 0, 150 * 10**6, 0, GREEN)  # 150 bytes: 100 fill Tc, 50 go to Te
    assert kernel_buckets(meters, 0) == (100, 50)


@pytest.mark.parametrize("spec", [
    MeterSpec.srtcm(cir=1000, cbs=1500, ebs=3000, colour_aware=True),
    MeterSpec.trtcm(cir=1000, cbs=1500, pir=2000, pbs=3000, colour_aware=True),
    MeterSpec.unlimited(colour_aware=True),
])
def test_precoloured_red_stays_red_and_takes_no_tokens(spec):
    meters = one_meter(spec)
    before = meters.state.copy()
    for size in (64, 1500, 9000):
        assert mark(meters, 0, 0, size, RED) == RED
    assert np.array_equal(meters.state, before)


@pytest.mark.parametrize("spec", [
    MeterSpec.srtcm(cir=1000, cbs=1500, ebs=3000, colour_aware=True),
    MeterSpec.trtcm(cir=1000, cbs=1500, pir=2000, pbs=3000, colour_aware=True),
])
def test_precoloured_yellow_is_never_green_and_leaves_tc_alone(spec):
    meters = one_meter(spec)
    assert mark(meters, 0, 0, 1000, YELLOW) == YELLOW
    assert meters.state[0, ST_TC] == 1500 * SECOND
    assert meters.state[0, ST_TE_TP] == 2000 * SECOND
    assert mark(meters, 0, 0, 2001, YELLOW) == RED  # Te/Tp short, Tc full: still red
    assert mark(meters, 0, 0, 1000, GREEN) == GREEN


@pytest.mark.parametrize("spec", [
    MeterSpec.srtcm(cir=1000, cbs=1500, ebs=3000),
    MeterSpec.trtcm(cir=1000, cbs=1500, pir=2000, pbs=3000),
    MeterSpec.unlimited(),
])
def test_colour_blind_meter_ignores_the_input_colour(spec):
    for colour in (GREEN, YELLOW, RED, 7):
        assert mark(one_meter(spec), 0, 0, 1000, colour) == GREEN


@pytest.mark.parametrize("colour", [3, 7, 255])
def test_colour_aware_meter_counts_an_unknown_colour_as_red(colour):
    for spec in (MeterSpec.srtcm(1000, 1500, 3000, True), MeterSpec.trtcm(1000, 1500, 2000, 3000, True),
                 MeterSpec.unlimited(True)):
        assert mark(one_meter(spec), 0, 0, 64, colour) == RED


def test_unlimited_meter_is_always_green_and_has_no_state():
    meters = meter_arrays([MeterSpec.unlimited()])
    sizes = np.full(1000, 9000, np.int32)
    out = np.full(1000, 99, np.uint8)
    mark_batch(meters, np.zeros(1000, np.int32), np.zeros(1000, np.int64), sizes, np.full(1000, RED, np.uint8), out)
    assert (out == GREEN).all()
    assert not meters.state.any()


@pytest.mark.parametrize("spec", [
    MeterSpec.srtcm(cir=1000, cbs=1500, ebs=3000),
    MeterSpec.trtcm(cir=1000, cbs=1500, pir=2000, pbs=3000),
])
def test_time_going_backwards_adds_nothing_and_is_not_counted_twice(spec):
    meters = one_meter(spec, t0=10 * SECOND)
    model = reference(spec, 10 * SECOND)
    for now, size in [(10 * SECOND, 4500), (10 * SECOND + 10**6, 1), (9 * SECOND, 1), (0, 1),
                      (10 * SECOND + 2 * 10**6, 1), (10 * SECOND + 3 * 10**6, 3)]:
        assert mark(meters, 0, now, size, GREEN) == model.mark(now, size, GREEN)
        assert_same_state(meters, 0, model)
    assert meters.state[0, ST_LAST_NS] == 10 * SECOND + 3 * 10**6  # never went back


# --- the extremes: the largest values, the longest gaps ----------------------------------

EXTREMES = [
    MeterSpec.srtcm(MAX_RATE, MAX_BURST, MAX_BURST),
    MeterSpec.srtcm(1, MAX_BURST, MAX_BURST),
    MeterSpec.srtcm(0, MAX_BURST, MAX_BURST),
    MeterSpec.srtcm(MAX_RATE, 1, 0),
    MeterSpec.trtcm(MAX_RATE, MAX_BURST, MAX_RATE, MAX_BURST),
    MeterSpec.trtcm(1, MAX_BURST, MAX_RATE, MAX_BURST),
    MeterSpec.trtcm(0, MAX_BURST, 0, MAX_BURST),
    MeterSpec.trtcm(1, 1, 1, 1),
]


@pytest.mark.parametrize("spec", EXTREMES)
def test_largest_rates_and_bursts_with_long_idle_gaps_do_not_overflow(spec):
    meters = one_meter(spec)
    model = reference(spec)
    fill = max(int(meters.config[0, 6]), int(meters.config[0, 7]))  # CFG_FILL_*
    now = 0
    for gap in [0, 1, 2**20, 2**40, 2**62, min(fill, 2**62) - 1, 1, min(fill, 2**62), 2**62 - 1]:
        # drain what a big packet can, then wait
        for size in (MAX_BURST, 9000, 64):
            assert mark(meters, 0, now, size, GREEN) == model.mark(now, size, GREEN)
            assert_same_state(meters, 0, model)
        now = min(now + gap, INT64_MAX)
        assert mark(meters, 0, now, 0, GREEN) == model.mark(now, 0, GREEN)
        assert_same_state(meters, 0, model)
        assert 0 <= meters.state[0, ST_TC] <= MAX_BURST * SECOND
        assert 0 <= meters.state[0, ST_TE_TP] <= MAX_BURST * SECOND
    assert mark(meters, 0, INT64_MAX, 64, GREEN) == model.mark(INT64_MAX, 64, GREEN)
    assert_same_state(meters, 0, model)


def test_fastest_meter_just_before_and_at_its_fill_time():
    spec = MeterSpec.srtcm(MAX_RATE - 1, MAX_BURST, MAX_BURST)
    meters, model = one_meter(spec), reference(spec)
    for _ in range(2):
        assert mark(meters, 0, 0, MAX_BURST, GREEN) == model.mark(0, MAX_BURST, GREEN)
    fill = int(meters.config[0, 6])
    for now in (fill - 1, fill, fill + 1):
        assert mark(meters, 0, now, 0, GREEN) == model.mark(now, 0, GREEN)
        assert_same_state(meters, 0, model)
    assert kernel_buckets(meters, 0) == (MAX_BURST, MAX_BURST)


# --- building and changing meters --------------------------------------------------------


def test_meter_arrays_start_full_with_one_cache_line_per_meter():
    specs = [MeterSpec.srtcm(1000, 1500, 3000), MeterSpec.trtcm(1000, 1500, 2000, 4000), MeterSpec.unlimited()]
    meters = meter_arrays(specs, now_ns=123)
    assert meters.config.dtype == meters.state.dtype == np.int64
    assert meters.config.flags.c_contiguous and meters.state.flags.c_contiguous
    assert meters.config.ctypes.data % 64 == 0 and meters.config.strides[0] == 64
    assert [kernel_buckets(meters, m) for m in range(3)] == [(1500, 3000), (1500, 4000), (0, 0)]
    assert meters.state[:2, ST_LAST_NS].tolist() == [123, 123]
    assert [row.tolist() for row in meters.config] == [config_row(s) for s in specs]
    big = meter_arrays([MeterSpec.unlimited()] * 65536)
    assert big.config.shape == (65536, 8) and big.state.shape == (65536, 4)
    assert big.config.ctypes.data % 64 == 0 and not big.state.any()


def test_set_meter_changes_one_meter_and_leaves_the_others():
    specs = [MeterSpec.srtcm(1000, 1500, 3000), MeterSpec.trtcm(1000, 1500, 2000, 3000),
             MeterSpec.trtcm(5000, 9000, 6000, 9000, True)]
    meters = meter_arrays(specs)
    mark(meters, 0, 10, 700, GREEN)
    mark(meters, 2, 20, 800, GREEN)
    others_config, others_state = meters.config[[0, 2]].copy(), meters.state[[0, 2]].copy()
    mark(meters, 1, 0, 1000, GREEN)  # Tc 500, Tp 2000
    # 1 ms later under the old rates: Tc 501, Tp 2002; cut down to the new sizes
    set_meter(meters, 1, MeterSpec.trtcm(10_000, 400, 20_000, 5000), now_ns=10**6)
    assert np.array_equal(meters.config[[0, 2]], others_config)
    assert np.array_equal(meters.state[[0, 2]], others_state)
    assert meters.config[1].tolist() == config_row(MeterSpec.trtcm(10_000, 400, 20_000, 5000))
    assert kernel_buckets(meters, 1) == (400, 2002)  # no fresh burst for a bigger PBS
    assert meters.state[1, ST_LAST_NS] == 10**6
    # and from now on the new rates
    mark(meters, 1, 2 * 10**6, 0, GREEN)
    assert kernel_buckets(meters, 1) == (400, 2022)


def test_set_meter_starts_full_on_reset_or_a_new_mode():
    meters = meter_arrays([MeterSpec.srtcm(1000, 1500, 3000)])
    drained(meters, 0, 0)
    set_meter(meters, 0, MeterSpec.srtcm(1000, 2000, 1000), now_ns=0, reset=True)
    assert kernel_buckets(meters, 0) == (2000, 1000)
    drained(meters, 0, 0)
    set_meter(meters, 0, MeterSpec.trtcm(1000, 1500, 2000, 3000), now_ns=5)
    assert kernel_buckets(meters, 0) == (1500, 3000)
    assert meters.state[0, ST_LAST_NS] == 5
    set_meter(meters, 0, MeterSpec.unlimited(), now_ns=6)
    assert meters.config[0, CFG_MODE] == Mode.UNLIMITED
    assert mark(meters, 0, 7, 10**6, GREEN) == GREEN
    set_meter(meters, 0, MeterSpec.srtcm(1000, 100, 0), now_ns=8)
    assert kernel_buckets(meters, 0) == (100, 0) and meters.state[0, ST_LAST_NS] == 8


def test_set_meter_rejects_a_meter_that_does_not_exist():
    meters = meter_arrays([MeterSpec.unlimited()])
    with pytest.raises(Invalid) as e:
        set_meter(meters, 1, MeterSpec.unlimited(), now_ns=0)
    assert e.value.field == "meter"


@pytest.mark.parametrize(("make", "field"), [
    (lambda: MeterSpec.srtcm(-1, 1500, 0), "cir"),
    (lambda: MeterSpec.srtcm(MAX_RATE + 1, 1500, 0), "cir"),
    (lambda: MeterSpec.srtcm(1000, MAX_BURST + 1, 0), "cbs"),
    (lambda: MeterSpec.srtcm(1000, 1500, -1), "ebs"),
    (lambda: MeterSpec.srtcm(1000, 0, 0), "cbs"),
    (lambda: MeterSpec.srtcm(1000.0, 1500, 0), "cir"),
    (lambda: MeterSpec.srtcm(True, 1500, 0), "cir"),
    (lambda: MeterSpec(Mode.SRTCM, cir=1000, cbs=1500, pir=2000), "pir"),
    (lambda: MeterSpec.trtcm(2000, 1500, 1000, 3000), "pir"),
    (lambda: MeterSpec.trtcm(1000, 0, 2000, 3000), "cbs"),
    (lambda: MeterSpec.trtcm(1000, 1500, 2000, 0), "pbs"),
    (lambda: MeterSpec.trtcm(1000, 1500, MAX_RATE + 1, 3000), "pir"),
    (lambda: MeterSpec(Mode.TRTCM, cir=1000, cbs=1500, ebs=5, pir=2000, pbs=3000), "ebs"),
    (lambda: MeterSpec(Mode.UNLIMITED, cir=1000), "cir"),
    (lambda: MeterSpec(2), "mode"),
    (lambda: MeterSpec.unlimited(colour_aware=1), "colour_aware"),
])
def test_bad_parameters_are_rejected_naming_the_field(make, field):
    with pytest.raises(Invalid) as e:
        make()
    assert e.value.field == field


def test_unsigned_and_narrow_input_types_give_the_same_colours():
    spec = MeterSpec.trtcm(10**6, 3000, 2 * 10**6, 6000, colour_aware=True)
    rng = np.random.default_rng(7)
    ids, times = rng.integers(0, 3, 500), np.cumsum(rng.integers(0, 10**6, 500))
    sizes, colours = rng.integers(64, 1501, 500), rng.integers(0, 3, 500)
    results = []
    for types_ in [(np.int64, np.int64, np.int64, np.int64), (np.uint32, np.uint64, np.uint16, np.uint8)]:
        meters, out = meter_arrays([spec] * 3), np.zeros(500, np.uint8)
        mark_batch(meters, *(a.astype(t) for a, t in zip((ids, times, sizes, colours), types_)), out)
        results.append((out.tolist(), meters.state.tolist()))
    assert results[0] == results[1]
    assert len(set(results[0][0])) == 3
