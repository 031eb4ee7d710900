"""Live frames from and to a network interface over AF_PACKET rings, as `Frames` batches.

    RxRing(ifname)   a TPACKET_V3 receive ring: the kernel copies each frame the interface
                     sees into blocks of an mmap'd ring; `poll()` hands the blocks that are
                     ready to user space as one `Frames` whose `buf` IS the ring (no copy),
                     `release()` gives them back to the kernel.
    TxRing(ifname)   a TPACKET_V2 transmit ring: `send()`/`blast()` copy frames into slots
                     and one `send(2)` makes the kernel transmit every filled slot.

Where data goes: frames come from / go to one interface of one network namespace (the
caller's, or the one named by `netns=`: the socket is made there, in a forked helper, and the
calling process never leaves its own namespace). Nothing else is touched.

The C structures are those of linux/if_packet.h (x86_64; all fields are u32/u16 here, so the
layout is the same on any little-endian 64-bit target); the offsets are spelled out below
and walked by the jitted functions `walk_blocks`, `release_blocks` and `fill_tx`.

Ownership rule: a `Frames` from `RxRing.poll()` points into ring blocks the kernel will
overwrite once they are released; use it (or copy what must outlive it) before calling
`release()` (or the next `poll()`, which requires the release). Its offsets/lengths/times
arrays are views of arrays the ring reuses for every batch.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import select
import socket
import struct
import time
from dataclasses import dataclass

import numpy as np
import structlog
from numba import njit, types
from numba.extending import intrinsic
from pyroute2 import netns as pyroute2_netns

from dataplane.frames import Frames
from dataplane.policy import Invalid

log = structlog.get_logger(__name__)

# linux/if_ether.h, linux/socket.h, linux/if_packet.h
ETH_P_ALL = 0x0003
ETH_HLEN = 14
SOL_PACKET = 263
SO_SNDBUFFORCE = 32  # asm-generic/socket.h; root may exceed net.core.wmem_max
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_FANOUT = 18
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
TPACKET_V2 = 1
TPACKET_V3 = 2
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_LB = 1
PACKET_FANOUT_CPU = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_SENDING = 2
TP_STATUS_WRONG_FORMAT = 4
TPACKET_ALIGNMENT = 16
SOCKADDR_LL_SIZE = 20  # struct sockaddr_ll

# struct tpacket_block_desc (48 bytes): u32 version @0, u32 offset_to_priv @4, then
# struct tpacket_hdr_v1 @8: u32 block_status @8, u32 num_pkts @12, u32 offset_to_first_pkt @16,
# u32 blk_len @20, u64 seq_num @24, tpacket_bd_ts ts_first_pkt @32, ts_last_pkt @40.
BLOCK_STATUS = 8
BLOCK_NUM_PKTS = 12
BLOCK_FIRST_PKT = 16
BLOCK_DESC_SIZE = 48
# struct tpacket3_hdr (48 bytes): u32 tp_next_offset @0, tp_sec @4, tp_nsec @8, tp_snaplen @12,
# tp_len @16, tp_status @20, u16 tp_mac @24, u16 tp_net @26, hv1 (rxhash, vlan_tci, vlan_tpid,
# padding) @28..40, u8 tp_padding[8] @40.
TP3_NEXT, TP3_SEC, TP3_NSEC, TP3_SNAPLEN, TP3_MAC = 0, 4, 8, 12, 24
TPACKET3_HDRLEN = 48 + SOCKADDR_LL_SIZE
# A V3 frame takes at least TPACKET_ALIGN(TPACKET3_HDRLEN + 1) = 80 bytes of its block.
MIN_FRAME_FOOTPRINT = 80
# struct tpacket2_hdr (32 bytes): u32 tp_status @0, tp_len @4, tp_snaplen @8, u16 tp_mac @12,
# u16 tp_net @14, u32 tp_sec @16, tp_nsec @20, u16 tp_vlan_tci @24, tp_vlan_tpid @26, pad[4].
# A TX frame's data starts at TPACKET2_HDRLEN - sizeof(sockaddr_ll) = 32 (no PACKET_TX_HAS_OFF).
TP2_STATUS, TP2_LEN = 0, 4
TX_DATA_OFFSET = 32
TPACKET_REQ = struct.Struct("=4I")  # struct tpacket_req: block_size, block_nr, frame_size, frame_nr
TPACKET_REQ3 = struct.Struct("=7I")  # ... + retire_blk_tov (ms), sizeof_priv, feature_req_word
TPACKET_STATS_V3 = struct.Struct("=3I")  # tp_packets (received + dropped), tp_drops, freeze_q_cnt


@intrinsic
def _fence_acquire(typingctx):
    """A compiler barrier with acquire semantics (no instruction on x86): loads written after
    it are not moved before it, so a block's contents are read after its status."""

    def codegen(context, builder, signature, args):
        builder.fence("acquire")

    return types.void(), codegen


@intrinsic
def _fence_release(typingctx):
    """A compiler barrier with release semantics (no instruction on x86): stores written before
    it are not moved after it, so the kernel sees a slot's data before its new status."""

    def codegen(context, builder, signature, args):
        builder.fence("release")

    return types.void(), codegen


@njit(cache=True, nogil=True)
def walk_blocks(ring32, block_size, block_nr, first, max_blocks, offsets, lengths, times_ns):
    """Walk the blocks user space owns (block_status & TP_STATUS_USER), from block `first`
    on, at most `max_blocks`, stopping at the first the kernel still owns or whose frames
    would not fit in `offsets`. Frame k's offset into the ring (bytes), its captured length
    and its time (tp_sec, tp_nsec) go to offsets[k], lengths[k], times_ns[k].
    Returns (frames, blocks). `ring32` is the ring viewed as uint32."""
    n = 0
    blocks = 0
    b = first
    while blocks < max_blocks:
        base = b * block_size
        if ring32[(base + BLOCK_STATUS) >> 2] & TP_STATUS_USER == 0:
            break
        _fence_acquire()
        num = ring32[(base + BLOCK_NUM_PKTS) >> 2]
        if n + num > len(offsets):
            break
        h = base + ring32[(base + BLOCK_FIRST_PKT) >> 2]
        for _ in range(num):
            w = h >> 2
            offsets[n] = h + (ring32[w + (TP3_MAC >> 2)] & 0xFFFF)
            lengths[n] = ring32[w + (TP3_SNAPLEN >> 2)]
            times_ns[n] = np.int64(ring32[w + (TP3_SEC >> 2)]) * 1_000_000_000 + np.int64(
                ring32[w + (TP3_NSEC >> 2)]
            )
            n += 1
            h += ring32[w + (TP3_NEXT >> 2)]
        blocks += 1
        b += 1
        if b == block_nr:
            b = 0
    return n, blocks


@njit(cache=True, nogil=True)
def release_blocks(ring32, block_size, block_nr, first, count):
    """Hand `count` blocks from `first` on back to the kernel (block_status = TP_STATUS_KERNEL)."""
    _fence_release()
    b = first
    for _ in range(count):
        ring32[(b * block_size + BLOCK_STATUS) >> 2] = TP_STATUS_KERNEL
        b += 1
        if b == block_nr:
            b = 0


@njit(cache=True, nogil=True)
def fill_tx(ring, ring32, frame_size, frame_nr, head, buf, offsets, lengths, start, count):
    """Copy frames start, start+1, ... (modulo len(offsets)), at most `count`, into the TX
    ring's free slots from slot `head` on, each marked TP_STATUS_SEND_REQUEST; stops at the
    first slot the kernel has not given back. Returns (frames queued, new head), or
    (-1 - slot, head) if a slot holds TP_STATUS_WRONG_FORMAT (the kernel refused a frame)."""
    n = len(offsets)
    i = start
    queued = 0
    while queued < count:
        slot = head * frame_size
        status = ring32[(slot + TP2_STATUS) >> 2]
        if status != TP_STATUS_AVAILABLE:
            if status & TP_STATUS_WRONG_FORMAT:
                return -1 - head, head
            break
        _fence_acquire()
        length = lengths[i]
        src = offsets[i]
        dst = slot + TX_DATA_OFFSET
        for k in range(length):
            ring[dst + k] = buf[src + k]
        ring32[(slot + TP2_LEN) >> 2] = length
        _fence_release()
        ring32[(slot + TP2_STATUS) >> 2] = TP_STATUS_SEND_REQUEST
        queued += 1
        i += 1
        if i == n:
            i = 0
        head += 1
        if head == frame_nr:
            head = 0
    return queued, head


@njit(cache=True, nogil=True)
def pending_tx(ring32, frame_size, frame_nr):
    """How many TX slots the kernel has not given back yet (status other than AVAILABLE)."""
    busy = 0
    for s in range(frame_nr):
        if ring32[(s * frame_size + TP2_STATUS) >> 2] != TP_STATUS_AVAILABLE:
            busy += 1
    return busy


@dataclass(frozen=True, slots=True)
class RingStats:
    """PACKET_STATISTICS added up since the socket was opened (the kernel zeroes its counters
    at each read). `packets` counts every frame the socket saw, dropped ones included."""

    packets: int
    drops: int
    freezes: int  # times the ring was full (every block owned by user space)


def _packet_socket(netns: str | None) -> socket.socket:
    """An AF_PACKET SOCK_RAW socket listening to nothing yet (protocol 0: bind() names the
    interface and the protocol, so no frame of another interface is ever queued), made in
    `netns` if given (by a forked helper: this process stays in its own namespace)."""
    if netns is None:
        return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    if netns not in pyroute2_netns.listnetns():
        raise OSError(f"no network namespace {netns!r} (ip netns list)")
    return pyroute2_netns.create_socket(netns, socket.AF_PACKET, socket.SOCK_RAW, 0, flags=0)


def _check(field: str, value: int, low: int, multiple: int = 1) -> None:
    if not isinstance(value, int) or value < low or value % multiple:
        rule = f">= {low}" + (f" and a multiple of {multiple}" if multiple > 1 else "")
        raise Invalid(field, f"must be an integer {rule}, got {value!r}")


class RxRing:
    """A TPACKET_V3 receive ring on `ifname` (in namespace `netns`, default this process's).

    Every frame the interface receives (not those it sends, unless `ignore_outgoing` is
    False) lands in `block_nr` blocks of `block_size` bytes; the kernel hands a block to user
    space when it is full, or `retire_ms` after it was opened. `poll()` returns the frames of
    up to `batch_blocks` ready blocks (default a quarter of the ring, so the kernel keeps room
    while a batch is processed), `release()` returns them. `fanout=(group, mode)` joins a
    PACKET_FANOUT group (mode PACKET_FANOUT_HASH, _LB, _CPU ...): the group's sockets on the
    interface share its frames. A context manager; `close()` closes the socket and unmaps.
    """

    def __init__(self, ifname: str, *, netns: str | None = None, block_size: int = 1 << 20,
                 block_nr: int = 64, frame_size: int = 2048, retire_ms: int = 10,
                 batch_blocks: int | None = None, fanout: tuple[int, int] | None = None,
                 ignore_outgoing: bool = True) -> None:  # fmt: skip
        _check("block_size", block_size, mmap.PAGESIZE, mmap.PAGESIZE)
        _check("block_nr", block_nr, 1)
        _check("frame_size", frame_size, TPACKET3_HDRLEN, TPACKET_ALIGNMENT)
        _check("retire_ms", retire_ms, 1)
        if frame_size > block_size:
            raise Invalid("frame_size", f"must be at most block_size ({block_size})")
        batch_blocks = max(1, block_nr // 4) if batch_blocks is None else batch_blocks
        _check("batch_blocks", batch_blocks, 1)
        self.ifname = ifname
        self.block_size = block_size
        self.block_nr = block_nr
        self.batch_blocks = min(batch_blocks, block_nr)
        self._log = log.bind(ifname=ifname, netns=netns)
        self._totals = [0, 0, 0]
        self._held = 0
        self._sock: socket.socket | None = _packet_socket(netns)
        self._map: mmap.mmap | None = None
        try:
            s = self._sock
            s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            if ignore_outgoing:
                s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            frame_nr = (block_size // frame_size) * block_nr
            req = TPACKET_REQ3.pack(block_size, block_nr, frame_size, frame_nr, retire_ms, 0, 0)
            s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self._map = mmap.mmap(s.fileno(), block_size * block_nr, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
            s.bind((ifname, ETH_P_ALL))
            if fanout is not None:
                group, mode = fanout
                s.setsockopt(SOL_PACKET, PACKET_FANOUT, (group & 0xFFFF) | (mode << 16))
        except BaseException:
            self.close()
            raise
        self.buffer = np.frombuffer(self._map, np.uint8)  # the ring: every batch's `buf`
        self._ring32 = self.buffer.view(np.uint32)
        capacity = self.batch_blocks * ((block_size - BLOCK_DESC_SIZE) // MIN_FRAME_FOOTPRINT + 1)
        self._offsets = np.zeros(capacity, np.int64)
        self._lengths = np.zeros(capacity, np.int64)
        self._times = np.zeros(capacity, np.int64)
        self._next = 0  # the next block the kernel will hand over (it fills them in order)
        self._held = 0  # blocks of the current batch, from _next - _held on
        self._poller = select.poll()
        self._poller.register(self._sock.fileno(), select.POLLIN | select.POLLERR)
        self._log.debug("afpacket.rx_open", block_size=block_size, block_nr=block_nr)

    @property
    def held_blocks(self) -> int:
        """How many blocks the current (unreleased) batch spans."""
        return self._held

    def poll(self, timeout_s: float = 1.0) -> Frames:
        """The frames of the blocks ready now, waiting up to `timeout_s` for one (an empty
        batch if none came). The batch stays valid until `release()`."""
        if self._sock is None:
            raise OSError(f"RxRing on {self.ifname} is closed")
        if self._held:
            raise RuntimeError("release() the previous batch before polling again")
        deadline = time.monotonic() + timeout_s
        while True:
            n, blocks = walk_blocks(self._ring32, self.block_size, self.block_nr, self._next,
                                    self.batch_blocks, self._offsets, self._lengths,
                                    self._times)  # fmt: skip
            if blocks:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._poller.poll(max(1, int(left * 1000)))
        self._held = blocks
        self._next = (self._next + blocks) % self.block_nr
        return Frames(self.buffer, self._offsets[:n], self._lengths[:n], self._times[:n])

    def release(self) -> None:
        """Give the current batch's blocks back to the kernel; its Frames is dead after this."""
        if self._held and self._sock is not None:
            first = (self._next - self._held) % self.block_nr
            release_blocks(self._ring32, self.block_size, self.block_nr, first, self._held)
        self._held = 0

    def stats(self) -> RingStats:
        """Frames seen, dropped (ring full) and ring freezes since the socket was opened."""
        if self._sock is not None:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, TPACKET_STATS_V3.size)
            for i, v in enumerate(TPACKET_STATS_V3.unpack(raw)):
                self._totals[i] += v
        return RingStats(*self._totals)

    def fileno(self) -> int:
        return -1 if self._sock is None else self._sock.fileno()

    def close(self) -> None:
        """Close the socket and unmap the ring. If a batch's arrays are still referenced, the
        mapping lives on until they are gone (never unmapped under a live array)."""
        if self._sock is not None:
            self.stats()
            self._sock.close()
            self._sock = None
        self._held = 0
        self.buffer = self._ring32 = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                self._log.debug("afpacket.ring_kept", why="a batch still references the ring")
            self._map = None

    def __enter__(self) -> RxRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TxRing:
    """A TPACKET_V2 transmit ring on `ifname` (in namespace `netns`, default this process's):
    `frame_nr` slots of `frame_size` bytes (a frame may be up to frame_size - 32 bytes, and at
    most the interface's MTU + 14). `qdisc_bypass` hands frames straight to the driver.

    `send(frames)` transmits a batch once, in order; `blast(frames, seconds)` cycles it for
    that long; both return once the kernel has every frame (`flush`). A context manager.
    """

    def __init__(self, ifname: str, *, netns: str | None = None, frame_size: int = 2048,
                 frame_nr: int = 4096, qdisc_bypass: bool = True,
                 sndbuf: int = 1 << 22) -> None:  # fmt: skip
        _check("frame_size", frame_size, TX_DATA_OFFSET + ETH_HLEN, TPACKET_ALIGNMENT)
        _check("frame_nr", frame_nr, 1)
        # Blocks of whole pages holding whole frames, so that slot i is at i * frame_size.
        page = mmap.PAGESIZE
        if (page % frame_size if frame_size < page else frame_size % page) != 0:
            raise Invalid("frame_size", f"must divide or be a multiple of {page}, got {frame_size}")
        block_size = max(page, frame_size)
        per_block = block_size // frame_size
        frame_nr = -(-frame_nr // per_block) * per_block  # whole blocks
        self.ifname = ifname
        self.frame_size = frame_size
        self.frame_nr = frame_nr
        self.sent = 0  # frames handed to the kernel so far
        self.device_drops = 0  # kicks answered ENOBUFS (the device dropped a frame, sent again)
        self._sock: socket.socket | None = _packet_socket(netns)
        self._map: mmap.mmap | None = None
        try:
            s = self._sock
            s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            if qdisc_bypass:
                s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, sndbuf)  # frames in flight count
            req = TPACKET_REQ.pack(block_size, frame_nr // per_block, frame_size, frame_nr)
            s.setsockopt(SOL_PACKET, PACKET_TX_RING, req)
            self._map = mmap.mmap(s.fileno(), frame_size * frame_nr, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
            s.bind((ifname, 0))  # protocol 0: this socket receives nothing
        except BaseException:
            self.close()
            raise
        self._ring = np.frombuffer(self._map, np.uint8)
        self._ring32 = self._ring.view(np.uint32)
        self._head = 0
        self._poller = select.poll()
        self._poller.register(self._sock.fileno(), select.POLLOUT | select.POLLERR)

    def _check_frames(self, frames: Frames) -> None:
        if len(frames) == 0:
            return
        longest = int(frames.lengths.max())
        if longest > self.frame_size - TX_DATA_OFFSET:
            raise Invalid("frames", f"a frame of {longest} bytes does not fit a slot of "
                          f"{self.frame_size} (TxRing(frame_size=...))")  # fmt: skip
        if int(frames.lengths.min()) < ETH_HLEN:
            raise Invalid("frames", f"every frame needs at least an Ethernet header ({ETH_HLEN})")

    def queue(self, frames: Frames, start: int = 0, count: int | None = None) -> int:
        """Copy frames start, start+1, ... (wrapping around), at most `count` (default up to
        the end of the batch), into free slots; returns how many. `kick()` sends them."""
        if self._sock is None:
            raise OSError(f"TxRing on {self.ifname} is closed")
        count = len(frames) - start if count is None else count
        if count <= 0 or len(frames) == 0:
            return 0
        queued, self._head = fill_tx(self._ring, self._ring32, self.frame_size, self.frame_nr,
                                     self._head, frames.buf, frames.offsets, frames.lengths,
                                     start, count)  # fmt: skip
        if queued < 0:
            raise OSError(f"the kernel refused the frame in TX slot {-1 - queued} on "
                          f"{self.ifname} (wrong format: longer than the MTU?)")  # fmt: skip
        self.sent += queued
        return queued

    def kick(self) -> None:
        """Ask the kernel to transmit every queued slot (without waiting for it)."""
        try:
            self._sock.send(b"", socket.MSG_DONTWAIT)
        except BlockingIOError:
            return  # send buffer full: the frames left go with the next kick
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            # The device dropped a frame (a full backlog, counted in its drop counters): the
            # kernel leaves that slot queued and stops there; the next kick sends it again.
            self.device_drops += 1

    def _wait(self, timeout_ms: int = 1) -> None:
        self._poller.poll(timeout_ms)

    def send(self, frames: Frames, timeout_s: float = 10.0) -> None:
        """Transmit every frame of `frames` once, in order, and wait until the kernel has them."""
        self._check_frames(frames)
        deadline = time.monotonic() + timeout_s
        done = 0
        while done < len(frames):
            queued = self.queue(frames, done)
            done += queued
            self.kick()
            if queued == 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.ifname}: {len(frames) - done} frames not sent "
                                       f"within {timeout_s} s (link down?)")  # fmt: skip
                self._wait()
        self.flush(max(0.1, deadline - time.monotonic()))

    def blast(self, frames: Frames, seconds: float) -> int:
        """Send `frames` over and over for `seconds`; returns how many frames were sent."""
        self._check_frames(frames)
        if len(frames) == 0:
            return 0
        before = self.sent
        end = time.perf_counter() + seconds
        i = 0
        batch = min(self.frame_nr // 2 or 1, 1024)
        while time.perf_counter() < end:
            queued = self.queue(frames, i, batch)
            i = (i + queued) % len(frames)
            self.kick()
            if queued == 0:
                self._wait()
        self.flush()
        return self.sent - before

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until the kernel has sent every queued frame (every slot free again)."""
        deadline = time.monotonic() + timeout_s
        while pending_tx(self._ring32, self.frame_size, self.frame_nr):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.ifname}: TX ring not drained within {timeout_s} s")
            self.kick()
            self._wait()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._ring = self._ring32 = None
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a batch still points into it: freed with the batch
                self._map.close()
            self._map = None

    def __enter__(self) -> TxRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
