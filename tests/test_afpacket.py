"""AF_PACKET rings (dataplane/io/afpacket.py) against the real kernel: a veth pair in a
namespace each test makes (IPv6 off, so the kernel itself sends nothing on it), frames sent
from tx0 with a TxRing and read on rx0 with an RxRing.

What is proved: every frame arrives byte for byte, in order, with non-decreasing times and no
drop, over more rounds than the ring holds, blocks released and reused; one batch spans many
blocks; a batch's buf is the ring itself and its index arrays are the same memory every time;
the jitted block walker agrees with a plain-Python walk of the same ring; an idle link
delivers nothing and the ring ignores what its own interface sends; an overrun ring counts its
drops; a fanout group shares the frames; the bench's live_rate receives all it sends and
hands every batch to its handler. Each test's namespace is removed afterwards, and the
test process stays in its own namespace throughout.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator

import numpy as np
import pytest
from pyroute2 import netns

from bench.afpacket import RX, RX_MAC, TX, TX_MAC, live_rate, udp_frames, veth_netns
from dataplane.frames import Frames
from dataplane.io.afpacket import (
    BLOCK_DESC_SIZE,
    PACKET_FANOUT_LB,
    TPACKET3_HDRLEN,
    RxRing,
    TxRing,
    walk_blocks,
)
from dataplane.policy import Invalid

pytestmark = pytest.mark.integration

ETHERTYPE = 0x88B5  # IEEE 802 local experimental: the kernel never sends it
# A 512 KiB ring. The retire timeout hands over partly filled blocks: long enough that a
# round of sending on a busy machine does not scatter its frames over more blocks than there are.
SMALL = {"block_size": 1 << 16, "block_nr": 8, "retire_ms": 50}


@pytest.fixture
def ns() -> Iterator[str]:
    """A namespace holding an up veth pair tx0 <-> rx0 with IPv6 disabled; its name."""
    own = os.readlink("/proc/self/ns/net")
    with veth_netns() as space:
        yield space.name
    assert os.readlink("/proc/self/ns/net") == own, "the test process left its namespace"
    assert space.name not in netns.listnetns()


def crafted(n: int, seed: int = 1, sizes: tuple[int, int] = (60, 1514)) -> list[bytes]:
    """`n` frames rx0 would never see otherwise: our MACs and EtherType, a sequence number,
    random payload, sizes drawn from `sizes` (the ends included)."""
    rng = np.random.default_rng(seed)
    head = bytes.fromhex(RX_MAC.replace(":", "") + TX_MAC.replace(":", "")) + ETHERTYPE.to_bytes(2)
    lengths = rng.integers(sizes[0], sizes[1] + 1, n)
    lengths[:2] = sizes  # both ends, always
    return [head + struct.pack(">I", i) + rng.bytes(int(size) - 18)
            for i, size in enumerate(lengths)]  # fmt: skip


def drain(ring: RxRing, want: int, timeout_s: float = 10.0) -> tuple[list[bytes], list[int]]:
    """Poll and release until `want` frames came (or the timeout); their bytes and times."""
    frames: list[bytes] = []
    times: list[int] = []
    deadline = time.monotonic() + timeout_s
    while len(frames) < want and time.monotonic() < deadline:
        batch = ring.poll(0.1)
        frames += [batch.frame(i) for i in range(len(batch))]
        times += batch.times_ns.tolist()
        ring.release()
    return frames, times


def reference_walk(ring: np.ndarray, block_size: int, block_nr: int, first: int, blocks: int
                   ) -> list[tuple[int, int, int]]:  # fmt: skip
    """(offset, length, time_ns) of every frame in `blocks` user-owned blocks from `first`:
    plain struct reads of tpacket_block_desc and tpacket3_hdr, as linux/if_packet.h lays them."""
    out = []
    for k in range(blocks):
        base = (first + k) % block_nr * block_size
        status, num, first_pkt = struct.unpack_from("=3I", ring, base + 8)
        assert status & 1, f"block {(first + k) % block_nr} is not user space's"
        h = base + first_pkt
        for _ in range(num):
            nxt, sec, nsec, snaplen, _len, _status, mac = struct.unpack_from("=6IH", ring, h)
            out.append((h + mac, snaplen, sec * 10**9 + nsec))
            h += nxt
    return out


def test_frames_arrive_intact_in_order_over_more_rounds_than_the_ring_holds(ns: str) -> None:
    rounds, per_round = 12, 300  # ~240 KB a round, ~2.9 MB in all, through a 1 MiB ring
    ring = {**SMALL, "block_nr": 16}
    sent = crafted(rounds * per_round)
    assert sum(map(len, sent)) > 2.5 * ring["block_size"] * ring["block_nr"]
    got: list[bytes] = []
    times: list[int] = []
    block = 0  # where the next batch starts, counted here independently of the ring
    with TxRing(TX, netns=ns) as tx, RxRing(RX, netns=ns, batch_blocks=8, **ring) as rx:
        for r in range(rounds):
            tx.send(Frames.of(sent[r * per_round : (r + 1) * per_round]))
            deadline = time.monotonic() + 10
            while len(got) < (r + 1) * per_round and time.monotonic() < deadline:
                batch = rx.poll(0.1)
                expected = reference_walk(rx.buffer, rx.block_size, rx.block_nr, block,
                                          rx.held_blocks)  # fmt: skip
                assert list(zip(batch.offsets.tolist(), batch.lengths.tolist(),
                                batch.times_ns.tolist())) == expected  # fmt: skip
                block = (block + rx.held_blocks) % rx.block_nr
                got += [batch.frame(i) for i in range(len(batch))]
                times += batch.times_ns.tolist()
                rx.release()
        stats = rx.stats()
    assert len(got) == len(sent)
    assert got == sent  # all of them, byte for byte, in order, and nothing else
    assert stats.drops == 0 and stats.packets == len(sent), stats
    assert np.all(np.diff(np.array(times)) >= 0), "times go backwards"
    assert abs(times[0] - time.time_ns()) < 60 * 10**9, "times are not wall-clock ns"


def test_one_batch_spans_many_blocks(ns: str) -> None:
    sent = crafted(300, seed=2, sizes=(1400, 1514))  # ~450 KB: about 7 of the 64 KiB blocks
    ring = {**SMALL, "block_nr": 16}
    with TxRing(TX, netns=ns) as tx, RxRing(RX, netns=ns, batch_blocks=16, **ring) as rx:
        tx.send(Frames.of(sent))
        time.sleep(0.2)  # the retire timeout (50 ms) hands over the last, partial block
        batch = rx.poll(1.0)
        assert rx.held_blocks >= 6
        assert [batch.frame(i) for i in range(len(batch))] == sent
        rx.release()


def test_a_batch_is_the_ring_itself_and_allocates_nothing(ns: str) -> None:
    with TxRing(TX, netns=ns) as tx, RxRing(RX, netns=ns, batch_blocks=8, **SMALL) as rx:
        seen = []
        for seed in (3, 4):
            sent = crafted(50, seed=seed)
            tx.send(Frames.of(sent))
            time.sleep(0.2)  # every block retired: one batch holds all 50
            batch = rx.poll(1.0)
            assert len(batch) == 50
            assert batch.buf is rx.buffer and batch.buf.base is not None  # a view of the mmap
            assert np.all(batch.offsets % rx.block_size >= BLOCK_DESC_SIZE + TPACKET3_HDRLEN)
            first = int(batch.offsets[0])
            rx.buffer[first + 14] ^= 0xFF  # a write to the ring shows through the batch
            assert batch.frame(0)[14] == sent[0][14] ^ 0xFF
            seen.append((batch.offsets.ctypes.data, batch.lengths.ctypes.data,
                         batch.times_ns.ctypes.data))  # fmt: skip
            rx.release()
        assert seen[0] == seen[1], "each batch must reuse the preallocated index arrays"


def test_an_idle_link_delivers_nothing_and_own_sends_are_ignored(ns: str) -> None:
    with RxRing(RX, netns=ns, **SMALL) as rx, RxRing(RX, netns=ns, ignore_outgoing=False,
                                                    **SMALL) as rx_all:  # fmt: skip
        batch = rx.poll(2.0)  # with IPv6 on, router solicitations and MLD reports come now
        assert len(batch) == 0, [batch.frame(i)[:16].hex() for i in range(len(batch))]
        rx.release()
        # Frames sent by rx0 itself, through the qdisc path (a bypass skips every tap)
        with TxRing(RX, netns=ns, qdisc_bypass=False) as tx_from_rx:
            tx_from_rx.send(Frames.of(crafted(20, seed=5)))
        assert len(rx.poll(0.3)) == 0
        rx.release()
        assert len(drain(rx_all, 20)[0]) == 20  # and they were really sent
        assert rx_all.stats().packets == 20


def test_an_overrun_ring_counts_its_drops(ns: str) -> None:
    sent = crafted(1000, seed=6, sizes=(1514, 1514))  # 1.5 MB into a 256 KiB ring, unread
    with TxRing(TX, netns=ns) as tx, RxRing(RX, netns=ns, **{**SMALL, "block_nr": 4}) as rx:
        tx.send(Frames.of(sent))
        time.sleep(0.1)  # the kernel's receive side is done with every frame
        got, _ = drain(rx, len(sent), timeout_s=0.5)
        stats = rx.stats()
    assert stats.packets == len(sent)
    assert stats.drops > 0 and stats.freezes > 0
    assert len(got) + stats.drops == len(sent)
    assert got == sent[: len(got)]  # what fit is the first frames, intact


def test_a_fanout_group_shares_the_frames(ns: str) -> None:
    sent = crafted(200, seed=7)
    fanout = (0x4A1, PACKET_FANOUT_LB)
    with TxRing(TX, netns=ns) as tx, RxRing(RX, netns=ns, fanout=fanout, **SMALL) as a, \
            RxRing(RX, netns=ns, fanout=fanout, **SMALL) as b:  # fmt: skip
        tx.send(Frames.of(sent))
        time.sleep(0.05)
        got_a, _ = drain(a, 1, timeout_s=1)
        got_b, _ = drain(b, 1, timeout_s=1)
    assert got_a and got_b
    assert sorted(got_a + got_b) == sorted(sent)


def test_misuse_is_refused(ns: str) -> None:
    with pytest.raises(Invalid, match="block_size"):
        RxRing(RX, netns=ns, block_size=5000)
    with pytest.raises(OSError, match="no network namespace"):
        RxRing(RX, netns=ns + "-missing")
    with pytest.raises(OSError):
        RxRing("nosuch0", netns=ns)
    with pytest.raises(OSError):
        TxRing("nosuch0", netns=ns)
    with TxRing(TX, netns=ns) as tx, RxRing(RX, netns=ns, **SMALL) as rx:
        with pytest.raises(Invalid, match="does not fit"):
            tx.send(Frames.of([bytes(2100)]))
        tx.send(Frames.of(crafted(3)))
        assert len(rx.poll(1.0)) > 0
        with pytest.raises(RuntimeError, match="release"):
            rx.poll(0)
        rx.release()
    with pytest.raises(OSError, match="closed"):
        rx.poll(0)


def test_walker_stops_at_a_block_the_kernel_owns() -> None:
    """The walker alone, on a hand-made ring: two user blocks, then a kernel one."""
    block_size, ring = 4096, np.zeros(4 * 4096, np.uint8)
    frames = [(0, [b"a" * 60, b"b" * 61]), (1, [b"c" * 1000])]  # (block, payloads)
    for b, payloads in frames:
        base = b * block_size
        struct.pack_into("=3I", ring, base + 8, 1, len(payloads), BLOCK_DESC_SIZE)
        h = base + BLOCK_DESC_SIZE
        for k, p in enumerate(payloads):
            nxt = (82 + len(p) + 15) // 16 * 16 if k + 1 < len(payloads) else 0
            struct.pack_into("=6IH", ring, h, nxt, 7, 100 + k, len(p), len(p), 1, 82)
            ring[h + 82 : h + 82 + len(p)] = np.frombuffer(p, np.uint8)
            h += nxt
    out = np.zeros(10, np.int64), np.zeros(10, np.int64), np.zeros(10, np.int64)
    n, blocks = walk_blocks(ring.view(np.uint32), block_size, 4, 0, 4, *out)
    assert (n, blocks) == (3, 2)
    assert list(zip(*(a[:n].tolist() for a in out))) == reference_walk(ring, block_size, 4, 0, 2)
    got = Frames(ring, out[0][:n], out[1][:n], out[2][:n])
    assert [got.frame(i) for i in range(n)] == [p for _, ps in frames for p in ps]
    assert out[2][:n].tolist() == [7 * 10**9 + 100, 7 * 10**9 + 101, 7 * 10**9 + 100]


def test_live_rate_receives_what_it_sends_and_cleans_up() -> None:
    before, affinity = set(netns.listnetns()), os.sched_getaffinity(0)
    batches: list[int] = []
    figures = live_rate(udp_frames(256), 0.5, handle=lambda b: batches.append(len(b)))
    assert figures["rx_frames"] == figures["tx_frames"] == sum(batches) > 0
    assert figures["ring_drops"] == 0 and figures["rx_mpps"] > 0 and figures["tx_mpps"] > 0
    assert not [n for n in set(netns.listnetns()) - before if n.endswith("-rate")]  # its own
    assert os.sched_getaffinity(0) == affinity
