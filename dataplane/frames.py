"""A batch of raw Ethernet frames: one contiguous byte buffer and where each frame lies in it.

Every part of the engine speaks this form: pcap files and AF_PACKET rings fill it (a ring's
frames are views into the mmap'd ring itself, no copy), the jitted kernels walk it, and the
pcap writer writes it. Frame i is buf[offsets[i] : offsets[i] + lengths[i]]; the kernels
never read outside that slice. `times_ns` are arrival times (pcap timestamps, ring
timestamps, or the time a batch was read), which the meters need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataplane.policy import Invalid


@dataclass(frozen=True, slots=True, eq=False)
class Frames:
    buf: np.ndarray  # uint8, contiguous
    offsets: np.ndarray  # int64, one per frame
    lengths: np.ndarray  # int64, one per frame
    times_ns: np.ndarray  # int64, one per frame

    def __post_init__(self) -> None:
        for name, dtype in (("buf", np.uint8), ("offsets", np.int64), ("lengths", np.int64),
                            ("times_ns", np.int64)):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != 1:
                raise Invalid(name, f"must be a 1-D {np.dtype(dtype).name} array")
        n = len(self.offsets)
        if len(self.lengths) != n or len(self.times_ns) != n:
            raise Invalid("lengths", f"offsets, lengths and times_ns must have one entry per frame ({n})")
        if n and (self.offsets.min() < 0 or self.lengths.min() < 0
                  or int((self.offsets + self.lengths).max()) > len(self.buf)):  # fmt: skip
            raise Invalid("offsets", "every frame must lie inside buf")

    def __len__(self) -> int:
        return len(self.offsets)

    def frame(self, i: int) -> bytes:
        """Frame i as bytes (for tests and tools, not for hot loops)."""
        start = int(self.offsets[i])
        return self.buf[start : start + int(self.lengths[i])].tobytes()

    def batch(self, start: int, stop: int) -> Frames:
        """Frames start..stop-1, on the same buffer (no copy)."""
        return Frames(self.buf, self.offsets[start:stop], self.lengths[start:stop], self.times_ns[start:stop])

    @classmethod
    def of(cls, frames: list[bytes], times_ns: list[int] | np.ndarray | None = None) -> Frames:
        """A batch holding copies of `frames`, back to back."""
        lengths = np.array([len(f) for f in frames], np.int64)
        offsets = np.zeros(len(frames), np.int64)
        if len(frames) > 1:
            offsets[1:] = np.cumsum(lengths[:-1])
        buf = np.frombuffer(b"".join(frames), np.uint8).copy()
        times = np.zeros(len(frames), np.int64) if times_ns is None else np.asarray(times_ns, np.int64)
        return cls(buf, offsets, lengths, times)
