"""Classic libpcap files <-> `Frames`: what the engine benchmark feeds both engines.

`read_pcap(path)` reads a whole file into one `Frames` without copying a frame: `buf` is the
file's bytes as they are (headers included) and each frame's offset points past its record
header, so frame i is buf[offsets[i] : offsets[i] + lengths[i]] as `Frames` promises, with the
16-byte record headers as gaps between frames. The records are indexed by a small jitted
walk over the buffer (two passes: count, then fill), so a file of millions of frames costs
its read from disk and a few ms, with no Python object per frame.

Read: both byte orders, both timestamp precisions (magic 0xa1b2c3d4: microseconds,
0xa1b23c4d: nanoseconds), link type Ethernet (LINKTYPE_ETHERNET, 1) only; the upper bits of
the link-type field (FCS length, per the pcap draft) are ignored. `times_ns` are the records'
timestamps in nanoseconds since the epoch. A file that is not pcap, has another link type,
or ends inside a record raises `Invalid("pcap", ...)` naming the file, the record and the
byte where it broke. pcapng (tcpdump's `-w` writes classic pcap; Wireshark's default is
pcapng) is refused with a message that says how to convert it.

Write: `write_pcap(path, frames)` writes little-endian, nanosecond magic (0xa1b23c4d),
snaplen 65535, link type Ethernet: nanoseconds keep `times_ns` exactly, and tcpdump, libpcap
(>= 1.5) and DPDK's pcap driver read it. Pass `nanoseconds=False` for the microsecond magic
that very old readers need (times are then truncated to microseconds). Frames are written as
they are, without an FCS (as capture tools write them): a "64-byte" Ethernet frame is 60
bytes in a pcap.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from numba import njit

from dataplane.frames import Frames
from dataplane.policy import Invalid

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D
PCAPNG_MAGIC = 0x0A0D0D0A
LINKTYPE_ETHERNET = 1
SNAPLEN = 65535
GLOBAL_HEADER = 24
RECORD_HEADER = 16
MAX_RECORD = 262_144  # libpcap's own bound on a record (MAXIMUM_SNAPLEN): above it, corrupt

# What the record walk found: ok, or where it broke (then `at` is the record and its byte).
_OK, _SHORT_HEADER, _SHORT_DATA, _TOO_LONG = 0, 1, 2, 3


@njit(cache=True, nogil=True)
def _u32(buf: np.ndarray, at: int, swapped: bool) -> int:
    b0, b1, b2, b3 = np.uint32(buf[at]), np.uint32(buf[at + 1]), np.uint32(buf[at + 2]), np.uint32(buf[at + 3])
    if swapped:
        return (b0 << 24) | (b1 << 16) | (b2 << 8) | b3
    return b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)


@njit(cache=True, nogil=True)
def _walk(buf: np.ndarray, swapped: bool, frac_ns: int, offsets: np.ndarray, lengths: np.ndarray,
          times_ns: np.ndarray, fill: bool) -> tuple[int, int, int, int]:  # fmt: skip
    """Walk the records after the global header: (status, records, record at fault, its
    byte). With `fill`, write each record's data offset, length and time (arrays sized by a
    first walk without `fill`)."""
    n = len(buf)
    at = GLOBAL_HEADER
    i = 0
    while at < n:
        if at + RECORD_HEADER > n:
            return _SHORT_HEADER, i, i, at
        incl = _u32(buf, at + 8, swapped)
        if incl > MAX_RECORD:
            return _TOO_LONG, i, i, at
        if at + RECORD_HEADER + incl > n:
            return _SHORT_DATA, i, i, at
        if fill:
            offsets[i] = at + RECORD_HEADER
            lengths[i] = incl
            times_ns[i] = np.int64(_u32(buf, at, swapped)) * 1_000_000_000 + np.int64(
                _u32(buf, at + 4, swapped)) * frac_ns
        at += RECORD_HEADER + incl
        i += 1
    return _OK, i, -1, -1


def read_pcap(path: str | os.PathLike) -> Frames:
    """Every frame of the classic pcap file at `path`, in one contiguous buffer (the file's)."""
    path = Path(path)
    buf = np.fromfile(path, dtype=np.uint8)
    if len(buf) < GLOBAL_HEADER:
        raise Invalid("pcap", f"{path}: {len(buf)} bytes, shorter than a pcap file header "
                              f"({GLOBAL_HEADER}): not a pcap file, or truncated")  # fmt: skip
    raw = int.from_bytes(buf[:4].tobytes(), "little")
    swapped_magic = int.from_bytes(buf[:4].tobytes(), "big")
    if raw in (MAGIC_US, MAGIC_NS):
        swapped, magic = False, raw
    elif swapped_magic in (MAGIC_US, MAGIC_NS):
        swapped, magic = True, swapped_magic
    elif raw == PCAPNG_MAGIC:
        raise Invalid("pcap", f"{path} is pcapng, not classic pcap: convert it with "
                              f"`editcap -F pcap {path.name} out.pcap` (Wireshark's editcap) "
                              f"or `tcpdump -r {path.name} -w out.pcap`")  # fmt: skip
    else:
        raise Invalid("pcap", f"{path}: magic {raw:#010x} is not a pcap magic "
                              f"({MAGIC_US:#x} or {MAGIC_NS:#x}, either byte order)")  # fmt: skip
    order = ">" if swapped else "<"
    linktype = int(np.frombuffer(buf[20:24].tobytes(), f"{order}u4")[0]) & 0xFFFF
    if linktype != LINKTYPE_ETHERNET:
        raise Invalid("pcap", f"{path}: link type {linktype}, only Ethernet ({LINKTYPE_ETHERNET}) "
                              f"is read; capture on an Ethernet interface (tcpdump -i <dev>, not "
                              f"-i any, which writes Linux cooked captures, 113)")  # fmt: skip
    frac_ns = 1 if magic == MAGIC_NS else 1000
    empty = np.zeros(0, np.int64)
    status, count, record, byte = _walk(buf, swapped, frac_ns, empty, empty, empty, False)
    if status != _OK:
        what = {_SHORT_HEADER: "the file ends inside its 16-byte header",
                _SHORT_DATA: "the file ends inside its data",
                _TOO_LONG: f"its length is over {MAX_RECORD} bytes (a corrupt file)"}[status]  # fmt: skip
        raise Invalid("pcap", f"{path}: record {record} (at byte {byte}): {what}; "
                              f"{record} records before it are whole (truncated copy?)")  # fmt: skip
    offsets = np.empty(count, np.int64)
    lengths = np.empty(count, np.int64)
    times = np.empty(count, np.int64)
    _walk(buf, swapped, frac_ns, offsets, lengths, times, True)
    return Frames(buf, offsets, lengths, times)


@njit(cache=True, nogil=True)
def _put_u32(out: np.ndarray, at: int, value: int) -> None:
    for b in range(4):
        out[at + b] = (value >> (8 * b)) & 0xFF


@njit(cache=True, nogil=True)
def _fill(out: np.ndarray, src: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
          secs: np.ndarray, fracs: np.ndarray) -> None:  # fmt: skip
    """Write each frame's record (little-endian header, then its bytes) after the global header."""
    at = GLOBAL_HEADER
    for i in range(len(offsets)):
        length = lengths[i]
        _put_u32(out, at, secs[i])
        _put_u32(out, at + 4, fracs[i])
        _put_u32(out, at + 8, length)  # captured
        _put_u32(out, at + 12, length)  # on the wire (without FCS, as captured)
        at += RECORD_HEADER
        start = offsets[i]
        out[at : at + length] = src[start : start + length]
        at += length


def write_pcap(path: str | os.PathLike, frames: Frames, *, nanoseconds: bool = True) -> None:
    """Write `frames` to `path` as a classic pcap file (see the module docstring for the format)."""
    path = Path(path)
    n = len(frames)
    if n and int(frames.lengths.max()) > SNAPLEN:
        i = int(np.argmax(frames.lengths))
        raise Invalid("frames", f"frame {i} is {int(frames.lengths[i])} bytes, over the snaplen {SNAPLEN}")
    if n and (int(frames.times_ns.min()) < 0 or int(frames.times_ns.max()) >= (1 << 32) * 1_000_000_000):
        raise Invalid("times_ns", "pcap times are 0 .. 2**32 s after the epoch")
    secs = frames.times_ns // 1_000_000_000
    fracs = frames.times_ns % 1_000_000_000
    if not nanoseconds:
        fracs = fracs // 1000
    version = 2 | (4 << 16)  # 2.4: major then minor, two little-endian u16
    header = np.array([MAGIC_NS if nanoseconds else MAGIC_US, version, 0, 0, SNAPLEN,
                       LINKTYPE_ETHERNET], "<u4").view(np.uint8)  # fmt: skip
    total = GLOBAL_HEADER + RECORD_HEADER * n + int(frames.lengths.sum())
    out = np.empty(total, np.uint8)
    out[:GLOBAL_HEADER] = header
    _fill(out, frames.buf, frames.offsets, frames.lengths, secs, fracs)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        out.tofile(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
