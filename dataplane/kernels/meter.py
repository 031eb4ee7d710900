"""Per-tenant policers: RFC 2697 single-rate and RFC 2698 two-rate three-colour markers.

`mark` colours one packet on one meter and updates that meter's buckets; it is small and
inlined into the packet engine's loop (parse -> classify -> meter). `mark_batch` is the
thin loop around it for the tests and the benchmark. The arrays are built and changed
from Python values by dataplane/meters.py; tests/test_meter.py checks every colour and
every bucket against a plain-Python reading of the two RFCs.

Arithmetic is integer only, so a colour never depends on rounding: a bucket holds tokens
in byte-nanoseconds (bytes * NS), a refill over dt ns at R bytes/s adds exactly R * dt,
and a packet of B bytes needs B * NS. With rates up to MAX_RATE and bursts up to
MAX_BURST nothing overflows int64: a bucket holds at most 2**30 * 1e9 ~ 1.07e18, and a
refill is taken as "full" once dt reaches the bucket's fill time (precomputed per meter),
so a product R * dt is never larger than what fills the buckets from empty (2.15e18).

Decisions the RFCs leave open (tests/test_meter.py holds each one):
- Refill is continuous at nanosecond resolution (the RFCs' "incremented by one CIR times
  per second" in the limit): after 1.5 ms at 1000 B/s a bucket has gained 1.5 bytes.
- Buckets start full (RFC: Tc(0) = CBS, Te(0) = EBS, Tp(0) = PBS); ST_LAST_NS starts at
  the time the meter was built (meters.meter_arrays' now_ns, 0 by default).
- Time going backwards (now_ns < ST_LAST_NS) adds nothing, and ST_LAST_NS never goes
  back, so no interval is ever refilled twice.
- A packet marked red still advances the meter's clock (a refill is the same whether it
  is done in one step or several, so this changes no colour).
- In colour-aware mode any input colour other than GREEN or YELLOW counts as RED;
  in colour-blind mode the input colour is ignored.
- UNLIMITED is a meter with infinite buckets: GREEN when colour-blind, the input colour
  when colour-aware (a packet pre-coloured red stays red); its state is never touched.
- srTCM keeps its excess bucket in ST_TE_TP and has no second rate (CFG_PIR is 0).

Cost (trTCM, 65,536 meters, a random meter per packet, one core): about 9-10 ns a
packet in mark_batch. Three things matter, each measured: `mark` inlined into the loop
(17 ns when called instead), no data-dependent branch (see mark), and the rows of the
meter PREFETCH_AHEAD packets ahead already on their way (18.5 ns without). An engine
loop that inlines `mark` should call `prefetch` the same way.

The arrays belong to the one thread that marks packets on them: nothing here is atomic,
so change a meter (meters.set_meter) between batches, from that thread.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from dataplane.kernels import prefetch as _prefetch
from dataplane.kernels.prefetch import prefetch_row
from dataplane.kernels.stale import drop_stale_cache

drop_stale_cache(__file__, _prefetch)

# Colours.
GREEN, YELLOW, RED = 0, 1, 2
# Modes.
UNLIMITED, SRTCM, TRTCM = 0, 1, 2

NS = 1_000_000_000  # a token of one byte is NS byte-nanoseconds
MAX_RATE = 125_000_000_000  # bytes/s: 1 Tbit/s
MAX_BURST = 1 << 30  # bytes
NEVER = np.iinfo(np.int64).max  # the fill time of a bucket whose rate is 0

# Columns of MeterArrays.config (int64). CFG_MODE .. CFG_EBS_PBS are the meter's
# parameters as given; the fill times are derived from them by meters.config_row.
CFG_MODE = 0  # UNLIMITED, SRTCM or TRTCM
CFG_AWARE = 1  # 1: colour-aware, 0: colour-blind
CFG_CIR = 2  # bytes/s
CFG_CBS = 3  # bytes
CFG_PIR = 4  # bytes/s: trTCM's PIR; 0 for srTCM
CFG_EBS_PBS = 5  # bytes: srTCM's EBS or trTCM's PBS
# ns after which a refill leaves the bucket(s) full whatever they held, ceil(size*NS/rate)
# (NEVER for a rate of 0). srTCM: both buckets from empty at CIR, ceil((CBS+EBS)*NS/CIR).
# trTCM: Tc at CIR and Tp at PIR. Unused: 0.
CFG_FILL_C = 6
CFG_FILL_EP = 7
CONFIG_COLS = 8  # one 64-byte cache line per meter

# Columns of MeterArrays.state (int64).
ST_TC = 0  # committed bucket Tc, byte-nanoseconds
ST_TE_TP = 1  # srTCM's excess bucket Te or trTCM's peak bucket Tp, byte-nanoseconds
ST_LAST_NS = 2  # time of the last refill, ns (never decreases)
STATE_COLS = 4  # one column spare: two meters per cache line


class MeterArrays(NamedTuple):
    """All meters of one engine, one row each (both arrays 64-byte aligned)."""

    config: np.ndarray  # int64 (M, CONFIG_COLS), CFG_* above: read-only to the kernels
    state: np.ndarray  # int64 (M, STATE_COLS), ST_* above: updated by every mark


# Compiled without reference counting, as in kernels/classify.py: these kernels allocate
# nothing, and counting would cost an increment and a decrement per array per call.
_kernel = njit(cache=True, nogil=True, _nrt=False)
_inline_kernel = njit(cache=True, nogil=True, _nrt=False, inline="always")


@_inline_kernel
def _min(a: int, b: int) -> int:
    """min(a, b) without a jump, for |a - b| < 2**63."""
    d = a - b
    return b + (d & (d >> 63))


@_inline_kernel
def mark(meters: MeterArrays, m: int, now_ns: int, nbytes: int, colour_in: int) -> int:
    """The colour of one packet of `nbytes` bytes arriving on meter m at now_ns (RFC 2697
    or RFC 2698 section 3), having refilled the meter's buckets up to now_ns and taken the
    packet's tokens from them. `colour_in` counts only for a colour-aware meter.
    now_ns is a monotonic clock, 0 <= now_ns < 2**63; any integer types will do (they
    are taken as int64, so an unsigned size or time cannot turn the arithmetic float)."""
    cfg, st = meters.config, meters.state
    now_ns, b = np.int64(now_ns), np.int64(nbytes) * NS
    mode = cfg[m, CFG_MODE]
    # No branch below but the mode's (one mode per deployment predicts well): masks
    # instead of ifs, and instead of the min/max that LLVM turned into jumps. The meters
    # and colours of consecutive packets are random, so a branch on them was mispredicted
    # often: 4096 trTCM meters (all in L2), random input colours, 16.6 ns a packet with
    # ifs, 7.2 with masks.
    c = colour_in if colour_in == GREEN or colour_in == YELLOW else RED
    c = c if cfg[m, CFG_AWARE] else GREEN
    if mode == UNLIMITED:
        return c

    # Refill over dt, cut to the fill time so that rate * dt cannot overflow (and an
    # interval that fills the buckets leaves them full): Tc at CIR up to CBS, then
    # srTCM's overflow into Te up to EBS, or trTCM's Tp at PIR up to PBS.
    tc, t2 = st[m, ST_TC], st[m, ST_TE_TP]
    full_c, full_2 = cfg[m, CFG_CBS] * NS, cfg[m, CFG_EBS_PBS] * NS
    last = st[m, ST_LAST_NS]
    dt = max(now_ns - last, 0)
    st[m, ST_LAST_NS] = max(now_ns, last)
    tc += cfg[m, CFG_CIR] * min(dt, cfg[m, CFG_FILL_C])
    over = tc - full_c
    over &= ~(over >> 63)  # max(tc - full_c, 0)
    tc -= over
    pre_yellow = np.int64(c != GREEN)
    pre_red = np.int64(c == RED)
    if mode == SRTCM:
        t2 += over
        t2 = _min(t2, full_2)
        # GREEN if pre-green and Tc >= B; else YELLOW if not pre-red and Te >= B; else RED.
        not_green = pre_yellow | (tc < b)
        red = pre_red | (not_green & (t2 < b))
        colour = not_green + red
        tc -= b & (not_green - 1)
        t2 -= b & (-(not_green & (red ^ 1)))
    else:  # trTCM
        t2 += cfg[m, CFG_PIR] * min(dt, cfg[m, CFG_FILL_EP])
        t2 = _min(t2, full_2)
        # RED if pre-red or Tp < B; else YELLOW if pre-yellow or Tc < B; else GREEN.
        red = pre_red | (t2 < b)
        not_green = pre_yellow | (tc < b) | red
        colour = not_green + red
        t2 -= b & (red - 1)
        tc -= b & (not_green - 1)
    st[m, ST_TC] = tc
    st[m, ST_TE_TP] = t2
    return colour


@_inline_kernel
def prefetch(meters: MeterArrays, m: int) -> None:
    """Start loading meter m's two rows, PREFETCH_AHEAD packets before marking on it: with
    64k meters the rows are not in L2, and waiting for them is most of a mark's cost."""
    prefetch_row(meters.config, m)
    prefetch_row(meters.state, m)


PREFETCH_AHEAD = 8  # packets; 64k trTCM meters, ns a packet: none 18.5, 4: 10.7, 8: 9.2, 16: 9.6


@_kernel
def mark_batch(meters: MeterArrays, meter_ids: np.ndarray, times_ns: np.ndarray, sizes: np.ndarray,
               colours_in: np.ndarray, out: np.ndarray) -> None:
    """mark() for each packet i in order: meter meter_ids[i], at times_ns[i] (int64), of
    sizes[i] bytes, input colour colours_in[i]; its colour goes to out[i]."""
    n = meter_ids.shape[0]
    for i in range(n):
        if i + PREFETCH_AHEAD < n:
            prefetch(meters, meter_ids[i + PREFETCH_AHEAD])
        out[i] = mark(meters, meter_ids[i], times_ns[i], sizes[i], colours_in[i])


@_kernel
def refill(meters: MeterArrays, m: int, now_ns: int) -> None:
    """Bring meter m's buckets up to now_ns without marking a packet (meters.set_meter
    does this under the old parameters before writing new ones)."""
    if meters.config[m, CFG_MODE] != UNLIMITED:
        mark(meters, m, now_ns, 0, GREEN)  # a packet of 0 bytes takes no tokens
