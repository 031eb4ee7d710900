"""Live packet rates over AF_PACKET rings on a veth pair: what the metering engine can be fed.

`live_rate(frames, seconds, handle)` makes a namespace holding a veth pair tx0 <-> rx0 (IPv6
off, so only our frames cross it), starts a sender process pinned to the first CPU this
process may use, which cycles `frames` through a TxRing on tx0 for `seconds`, and receives on
rx0 with an RxRing in this process, pinned to the second CPU, calling `handle(batch)` on each
batch before releasing it (the engine's process function; None: receive only). Everything it
made is removed afterwards, and this process gets its CPU affinity back.

On a veth the kernel's receive work (including the copy into the RX ring) runs on the
sending CPU, in its softirq, unless `rps=True` steers it to the receiving CPU (RPS on rx0).

Figures: rx_mpps (frames received over the receiving time: from the start of sending until
the last batch), tx_mpps (frames sent over the sending time), rx_frames, tx_frames,
ring_drops and ring_freezes (PACKET_STATISTICS), link_drops (the veths' own drop counters:
rx0 rx_dropped + tx0 tx_dropped; the kernel sends such a frame again), seconds (the receiving
time), handle_s (time in `handle`), rx_busy (the receiving thread's CPU time over `seconds`).

`udp_frames(count, size)` makes a batch of distinct IPv4/UDP frames from TEST-NET addresses.
By hand: .venv/bin/python -c "from bench.afpacket import *; print(live_rate(udp_frames(4096), 5))"
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import struct
import time
from collections.abc import Callable, Iterator

import numpy as np

from agent.lab.hosts import _Namespace, new_prefix
from dataplane.frames import Frames
from dataplane.io.afpacket import RxRing, TxRing

TX, RX = "tx0", "rx0"
TX_MAC, RX_MAC = "02:00:5e:00:00:01", "02:00:5e:00:00:02"
READY_TIMEOUT_S = 60.0  # the sender's start: a spawned interpreter, imports, cached jit


@contextlib.contextmanager
def veth_netns(tag: str = "afp") -> Iterator[_Namespace]:
    """A fresh namespace `<prefix>-<tag>` with an up veth pair tx0 <-> rx0 (MACs TX_MAC,
    RX_MAC; IPv6 disabled: no router solicitations or MLD reports); removed on exit."""
    space = _Namespace(f"{new_prefix()}-{tag}")
    try:
        space.create()
        space.exec(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1"])  # fmt: skip
        ipr = space.ipr
        ipr.link("add", ifname=TX, kind="veth", peer={"ifname": RX})
        for name, mac in ((TX, TX_MAC), (RX, RX_MAC)):
            ipr.link("set", index=space.index(name), address=mac, state="up")
        deadline = time.monotonic() + 5
        while any(ipr.get_links(space.index(n))[0].get_attr("IFLA_OPERSTATE") != "UP"
                  for n in (TX, RX)):  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError(f"veth pair in {space.name} not up within 5 s")
            time.sleep(0.01)
        yield space
    finally:
        space.close()


def udp_frames(count: int, size: int = 64, seed: int = 0) -> Frames:
    """`count` distinct IPv4/UDP frames of `size` bytes (no FCS) to RX_MAC, from 198.18.x.y to
    203.0.113.z with random ports; the IPv4 checksum is left 0 (nothing here checks it)."""
    if size < 42:
        raise ValueError(f"size: an IPv4/UDP frame has at least 42 bytes, got {size}")
    rng = np.random.default_rng(seed)
    eth = bytes.fromhex(RX_MAC.replace(":", "") + TX_MAC.replace(":", "")) + b"\x08\x00"
    out = []
    for i in range(count):
        src = bytes((198, 18, (i >> 8) & 0xFF, i & 0xFF))
        dst = bytes((203, 0, 113, int(rng.integers(1, 255))))
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, size - 14, i & 0xFFFF, 0, 64, 17, 0, src, dst)
        sport, dport = (int(p) for p in rng.integers(1024, 65536, 2))
        udp = struct.pack(">HHHH", sport, dport, size - 34, 0)
        out.append(eth + ip + udp + bytes(size - 42))
    return Frames.of(out)


def _sender(ns: str, buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, seconds: float,
            cpu: int, conn) -> None:  # fmt: skip
    """The sending process: pinned to `cpu`, TxRing on tx0; says "ready", waits for "go",
    sends for `seconds`, answers (frames sent, seconds)."""
    os.sched_setaffinity(0, {cpu})
    frames = Frames(buf, offsets, lengths, np.zeros(len(offsets), np.int64))
    with TxRing(TX, netns=ns) as tx:
        tx.queue(frames, 0, 0)  # loads the jitted code before the clock starts
        conn.send("ready")
        conn.recv()
        started = time.perf_counter()
        sent = tx.blast(frames, seconds)
        conn.send((sent, time.perf_counter() - started))


def _link_drops(space: _Namespace) -> int:
    def stat(ifname: str, key: str) -> int:
        return int(space.ipr.get_links(space.index(ifname))[0].get_attr("IFLA_STATS64")[key])

    return stat(RX, "rx_dropped") + stat(TX, "tx_dropped")


def live_rate(frames: Frames, seconds: float, handle: Callable[[Frames], object] | None = None,
              *, rps: bool = False, block_size: int = 1 << 20, block_nr: int = 64,
              batch_blocks: int | None = None) -> dict:  # fmt: skip
    """Send `frames` in a loop for `seconds` across a fresh veth pair and receive them, calling
    `handle` on each batch; the figures listed in the module's docstring."""
    cpus = sorted(os.sched_getaffinity(0))
    tx_cpu, rx_cpu = cpus[0], cpus[1 % len(cpus)]
    affinity = os.sched_getaffinity(0)
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    sender = None
    with veth_netns("rate") as space:
        try:
            if rps:
                rps_cpus = f"/sys/class/net/{RX}/queues/rx-0/rps_cpus"
                space.exec(["sh", "-c", f"echo {1 << rx_cpu:x} > {rps_cpus}"])
            with RxRing(RX, netns=space.name, block_size=block_size, block_nr=block_nr,
                        batch_blocks=batch_blocks) as rx:  # fmt: skip
                args = (space.name, frames.buf, frames.offsets, frames.lengths, seconds, tx_cpu,
                        theirs)  # fmt: skip
                sender = ctx.Process(target=_sender, args=args, daemon=True)
                sender.start()
                if not ours.poll(READY_TIMEOUT_S):
                    raise RuntimeError(f"the sender (pid {sender.pid}) did not start within "
                                       f"{READY_TIMEOUT_S} s")  # fmt: skip
                ours.recv()
                os.sched_setaffinity(0, {rx_cpu})
                received = 0
                handle_s = 0.0
                result = None
                ours.send("go")
                started = last = time.perf_counter()
                cpu_started = time.thread_time()
                while True:
                    batch = rx.poll(0.05)
                    if len(batch):
                        received += len(batch)
                        if handle is not None:
                            h = time.perf_counter()
                            handle(batch)
                            handle_s += time.perf_counter() - h
                        last = time.perf_counter()
                    rx.release()
                    if result is None and ours.poll():
                        result = ours.recv()
                    elif result is not None and not len(batch):
                        break
                    if result is None and not sender.is_alive() and not ours.poll():
                        raise RuntimeError(f"the sender (pid {sender.pid}) died, exit code "
                                           f"{sender.exitcode}: its traceback is on stderr")
                    if time.perf_counter() - started > seconds + 30:
                        raise RuntimeError("the sender did not finish within 30 s of its time")
                rx_cpu_s = time.thread_time() - cpu_started
                stats = rx.stats()
            sent, send_s = result
            return {
                "rx_mpps": received / (last - started) / 1e6 if last > started else 0.0,
                "tx_mpps": sent / send_s / 1e6,
                "rx_frames": received,
                "tx_frames": sent,
                "ring_drops": stats.drops,
                "ring_freezes": stats.freezes,
                "link_drops": _link_drops(space),
                "seconds": last - started,
                "handle_s": handle_s,
                "rx_busy": rx_cpu_s / (last - started) if last > started else 0.0,
                "tx_cpu": tx_cpu,
                "rx_cpu": rx_cpu,
                "rps": rps,
            }
        finally:
            os.sched_setaffinity(0, affinity)
            if sender is not None and sender.pid is not None:  # it started
                sender.join(5)
                if sender.is_alive():
                    sender.kill()  # by its pid
                    sender.join(5)
            ours.close()
            theirs.close()
