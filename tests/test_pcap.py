"""dataplane/io/pcap.py: classic pcap files in and out, checked against tcpdump and against a
plain struct reader, and bad files refused with the record that broke."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.frames import Frames
from dataplane.io.pcap import MAGIC_NS, MAGIC_US, read_pcap, write_pcap
from dataplane.policy import Invalid

TCPDUMP = shutil.which("tcpdump")


def udp_frame(sport: int, dport: int, payload: bytes = b"") -> bytes:
    """Ethernet/IPv4/UDP from 198.51.100.1 to 203.0.113.2 (checksums left 0: tcpdump does not care)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     bytes([198, 51, 100, 1]), bytes([203, 0, 113, 2]))  # fmt: skip
    return bytes.fromhex("fa163e000002fa163e0000010800") + ip + udp


def sample() -> Frames:
    frames = [udp_frame(1000 + i, 53, bytes(i * 7)) for i in range(5)]
    times = [1_700_000_000_123_456_789 + i * 1_001 for i in range(5)]
    return Frames.of(frames, times)


def struct_pcap(frames: list[bytes], times_ns: list[int], order: str, nanoseconds: bool,
                linktype: int = 1) -> bytes:  # fmt: skip
    """A pcap file written the obvious way, with Python's struct."""
    magic = MAGIC_NS if nanoseconds else MAGIC_US
    out = [struct.pack(f"{order}IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for frame, t in zip(frames, times_ns):
        frac = t % 10**9 if nanoseconds else (t % 10**9) // 1000
        out.append(struct.pack(f"{order}IIII", t // 10**9, frac, len(frame), len(frame)) + frame)
    return b"".join(out)


def struct_read(data: bytes) -> list[tuple[bytes, int]]:
    """The reference reader: (frame, time in ns) per record, one Python step per record."""
    order = "<" if struct.unpack_from("<I", data)[0] in (MAGIC_US, MAGIC_NS) else ">"
    scale = 1 if struct.unpack_from(f"{order}I", data)[0] == MAGIC_NS else 1000
    at, found = 24, []
    while at < len(data):
        sec, frac, incl, _ = struct.unpack_from(f"{order}IIII", data, at)
        found.append((data[at + 16 : at + 16 + incl], sec * 10**9 + frac * scale))
        at += 16 + incl
    return found


def as_list(frames: Frames) -> list[tuple[bytes, int]]:
    return [(frames.frame(i), int(frames.times_ns[i])) for i in range(len(frames))]


def test_round_trip_keeps_every_byte_and_nanosecond(tmp_path: Path) -> None:
    original = sample()
    write_pcap(tmp_path / "a.pcap", original)
    back = read_pcap(tmp_path / "a.pcap")
    assert as_list(back) == as_list(original)
    assert back.buf.dtype == np.uint8 and back.buf.flags.c_contiguous
    assert (tmp_path / "a.pcap").read_bytes()[:4] == struct.pack("<I", MAGIC_NS)


def test_microsecond_files_keep_microseconds(tmp_path: Path) -> None:
    original = sample()
    write_pcap(tmp_path / "us.pcap", original, nanoseconds=False)
    back = read_pcap(tmp_path / "us.pcap")
    assert [f for f, _ in as_list(back)] == [f for f, _ in as_list(original)]
    assert back.times_ns.tolist() == [t // 1000 * 1000 for t in original.times_ns.tolist()]


def test_an_empty_batch_is_a_header_only_file(tmp_path: Path) -> None:
    write_pcap(tmp_path / "empty.pcap", Frames.of([]))
    assert (tmp_path / "empty.pcap").stat().st_size == 24
    assert len(read_pcap(tmp_path / "empty.pcap")) == 0


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nanoseconds", [True, False])
def test_reads_files_in_either_byte_order_and_precision(tmp_path: Path, order: str, nanoseconds: bool) -> None:
    frames = [udp_frame(7, 9, bytes(n)) for n in (0, 1, 300)]
    times = [5 * 10**9 + 999_999_000, 6 * 10**9, 4_000_000_000 * 10**9]
    path = tmp_path / "s.pcap"
    path.write_bytes(struct_pcap(frames, times, order, nanoseconds))
    assert as_list(read_pcap(path)) == list(zip(frames, times))


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 1600), max_size=40), big=st.booleans(), nano=st.booleans(),
       seed=st.integers(0, 2**32 - 1))  # fmt: skip
def test_the_jitted_walk_agrees_with_a_struct_reader(tmp_path_factory, lengths, big, nano, seed) -> None:
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths]
    units = 10**9 if nano else 10**6  # per second
    times = [int(t) * (10**9 // units) for t in rng.integers(0, 2**32 * units, len(lengths))]
    data = struct_pcap(frames, times, ">" if big else "<", nano)
    path = tmp_path_factory.mktemp("walk") / "w.pcap"
    path.write_bytes(data)
    assert as_list(read_pcap(path)) == struct_read(data)


def test_tcpdump_reads_what_we_write(tmp_path: Path) -> None:
    assert TCPDUMP, "tcpdump is not installed (scripts/setup.sh installs it)"
    write_pcap(tmp_path / "ours.pcap", sample())
    done = subprocess.run([TCPDUMP, "-nn", "-tt", "--time-stamp-precision=nano", "-r",
                           str(tmp_path / "ours.pcap")], capture_output=True, text=True, check=True)  # fmt: skip
    assert "link-type EN10MB (Ethernet)" in done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("1700000000.123456789 IP 198.51.100.1.1000 > 203.0.113.2.53:")
    assert lines[4].startswith("1700000000.123460793 IP 198.51.100.1.1004 > 203.0.113.2.53:")


def test_we_read_what_tcpdump_writes(tmp_path: Path) -> None:
    """tcpdump -w writes its own header (microseconds, this machine's byte order) and records."""
    assert TCPDUMP, "tcpdump is not installed (scripts/setup.sh installs it)"
    original = sample()
    write_pcap(tmp_path / "ours.pcap", original)
    subprocess.run([TCPDUMP, "-r", str(tmp_path / "ours.pcap"), "-w", str(tmp_path / "theirs.pcap")],
                   capture_output=True, check=True)  # fmt: skip
    theirs = read_pcap(tmp_path / "theirs.pcap")
    assert [f for f, _ in as_list(theirs)] == [f for f, _ in as_list(original)]
    assert theirs.times_ns.tolist() == [t // 1000 * 1000 for t in original.times_ns.tolist()]


def test_a_truncated_file_names_the_record_that_broke(tmp_path: Path) -> None:
    write_pcap(tmp_path / "a.pcap", sample())
    data = (tmp_path / "a.pcap").read_bytes()
    record2 = 24 + sum(16 + len(udp_frame(0, 0, bytes(i * 7))) for i in range(2))
    (tmp_path / "data.pcap").write_bytes(data[: record2 + 20])  # inside record 2's data
    with pytest.raises(Invalid, match=rf"record 2 \(at byte {record2}\): the file ends inside its data") as e:
        read_pcap(tmp_path / "data.pcap")
    assert e.value.field == "pcap"
    (tmp_path / "head.pcap").write_bytes(data[: record2 + 10])  # inside record 2's header
    with pytest.raises(Invalid, match=r"record 2 .*ends inside its 16-byte header"):
        read_pcap(tmp_path / "head.pcap")
    (tmp_path / "short.pcap").write_bytes(data[:10])
    with pytest.raises(Invalid, match="shorter than a pcap file header"):
        read_pcap(tmp_path / "short.pcap")


def test_other_files_and_link_types_are_refused(tmp_path: Path) -> None:
    (tmp_path / "cooked.pcap").write_bytes(struct_pcap([b"x" * 20], [0], "<", False, linktype=113))
    with pytest.raises(Invalid, match="link type 113, only Ethernet"):
        read_pcap(tmp_path / "cooked.pcap")
    (tmp_path / "ng.pcapng").write_bytes(struct.pack("<II", 0x0A0D0D0A, 28) + bytes(20))
    with pytest.raises(Invalid, match="is pcapng, not classic pcap"):
        read_pcap(tmp_path / "ng.pcapng")
    (tmp_path / "text.pcap").write_bytes(b"this is not a capture file at all")
    with pytest.raises(Invalid, match="not a pcap magic"):
        read_pcap(tmp_path / "text.pcap")
    huge = struct_pcap([], [], "<", True) + struct.pack("<IIII", 0, 0, 10**6, 10**6) + bytes(64)
    (tmp_path / "huge.pcap").write_bytes(huge)
    with pytest.raises(Invalid, match="record 0 .*over 262144 bytes"):
        read_pcap(tmp_path / "huge.pcap")


def test_frames_that_cannot_be_written_are_refused(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="frame 1 is 70000 bytes, over the snaplen 65535"):
        write_pcap(tmp_path / "big.pcap", Frames.of([b"a" * 60, b"b" * 70_000]))
    with pytest.raises(Invalid, match="times_ns"):
        write_pcap(tmp_path / "neg.pcap", Frames.of([b"a" * 60], [-1]))
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_frames_that_are_views_with_gaps_are_written_as_frames(tmp_path: Path) -> None:
    """A Frames whose frames are not back to back (a ring, or a pcap we read) writes the same."""
    write_pcap(tmp_path / "a.pcap", sample())
    read = read_pcap(tmp_path / "a.pcap")  # offsets skip the record headers
    write_pcap(tmp_path / "b.pcap", read)
    assert (tmp_path / "b.pcap").read_bytes() == (tmp_path / "a.pcap").read_bytes()


def test_a_million_frames_round_trip(tmp_path: Path) -> None:
    n = 1_000_000
    frames = Frames(np.tile(np.frombuffer(udp_frame(1, 2, bytes(18)), np.uint8), n),
                    np.arange(n, dtype=np.int64) * 60, np.full(n, 60, np.int64),
                    np.arange(n, dtype=np.int64) * 67)  # fmt: skip
    write_pcap(tmp_path / "m.pcap", frames)
    back = read_pcap(tmp_path / "m.pcap")
    assert len(back) == n
    assert np.array_equal(back.lengths, frames.lengths) and np.array_equal(back.times_ns, frames.times_ns)
    assert back.frame(n - 1) == frames.frame(n - 1)
