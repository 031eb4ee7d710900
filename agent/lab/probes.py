"""What the lab and its tests observe with: pings from a stand-in VM, and packet captures on
the underlay (or anywhere in a lab namespace), each bounded by a count and a timeout.

Where data comes from: `ping` and `tcpdump` run inside a lab namespace (through the `popen`
of a Wire, SimulatedHost or StandInVM, see hosts.py); their text output is parsed here into
small values. Every process started here is ended here, by its pid.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.lab.hosts import LabError, stop_pid

# iputils' and busybox's (the test guest's) summaries.
_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_RTT = re.compile(r"(?:rtt|round-trip) min/avg/max(?:/mdev)? = [\d.]+/([\d.]+)/")
_TIMESTAMP = re.compile(r"^\d\d:\d\d:\d\d\.\d+ ")


class Runner(Protocol):
    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen: ...


@dataclass(frozen=True, slots=True)
class PingResult:
    sent: int
    received: int
    rtt_avg_ms: float | None  # None when nothing came back
    output: str

    @property
    def lost(self) -> int:
        return self.sent - self.received


def parse_ping(output: str) -> PingResult:
    summary = _SUMMARY.search(output)
    if summary is None:
        raise LabError(f"ping printed no summary: {output.strip()[-300:]}")
    rtt = _RTT.search(output)
    return PingResult(int(summary.group(1)), int(summary.group(2)),
                      float(rtt.group(1)) if rtt else None, output)  # fmt: skip


def ping(source: Runner, destination: str, *, count: int = 3, interval: float = 0.2,
         wait: float = 1.0) -> PingResult:  # fmt: skip
    """`count` pings from `source` to `destination`, `interval` apart; each reply waited for
    `wait` seconds at most."""
    proc = source.popen(["ping", "-n", "-q", "-c", str(count), "-i", str(interval),
                         "-W", str(wait), destination],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=count * interval + wait + 5)
    except subprocess.TimeoutExpired:
        stop_pid(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise LabError(f"ping {destination} did not finish") from None
    return parse_ping(out)


class FloodPing:
    """`ping -f -c count` from `source` in the background; `result()` waits for its summary.
    A flood ping sends the next request as soon as the last reply came (or every 10 ms), so
    a loss shows as soon as it happens."""

    def __init__(self, source: Runner, destination: str, count: int, *, wait: float = 1.0) -> None:
        self.destination = destination
        self.proc = source.popen(["ping", "-n", "-q", "-f", "-c", str(count), "-W", str(wait),
                                  destination],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip

    def running(self) -> bool:
        return self.proc.poll() is None

    def result(self, timeout: float = 30.0) -> PingResult:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise LabError(f"flood ping to {self.destination} did not end in {timeout} s") from None
        return parse_ping(out)

    def close(self) -> None:
        if self.proc.poll() is None:
            stop_pid(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()


class Capture:
    """tcpdump on `interface` inside `where`'s namespace: at most `count` packets matching
    `bpf`, for at most `timeout` seconds after it listens. A context manager: on enter it
    returns once tcpdump listens; `packets()` waits for `count` packets or the timeout and
    returns one line per packet (tcpdump's lines for a tunnelled inner packet joined with
    " | ")."""

    def __init__(self, where: Runner, interface: str, bpf: str, *, count: int = 10,
                 timeout: float = 5.0) -> None:  # fmt: skip
        self.where, self.interface, self.bpf = where, interface, bpf
        self.count, self.timeout = count, timeout
        self.proc: subprocess.Popen | None = None
        self._stderr = ""
        self._deadline = 0.0

    def __enter__(self) -> Capture:
        self.proc = self.where.popen(
            ["tcpdump", "-l", "-n", "-i", self.interface, "-c", str(self.count), self.bpf],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # `ip netns exec` and `env` exec: this pid is tcpdump's
        deadline = time.monotonic() + 5.0
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stderr, selectors.EVENT_READ)
            while "listening on" not in self._stderr:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    self.close()
                    raise LabError(f"tcpdump on {self.interface} did not start: {self._stderr}")
                if sel.select(left):  # raw reads: a buffered readline could hide a line
                    chunk = os.read(self.proc.stderr.fileno(), 4096)
                    self._stderr += chunk.decode(errors="replace")
        self._deadline = time.monotonic() + self.timeout
        return self

    def packets(self) -> list[str]:
        assert self.proc is not None, "use Capture as a context manager"
        try:
            out, _ = self.proc.communicate(timeout=max(0.0, self._deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # fewer than `count` packets: stop it, keep them
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                out, _ = self.proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                self.close()
                raise LabError(f"tcpdump on {self.interface} did not stop") from None
        packets: list[str] = []
        for line in out.splitlines():  # a decoded inner packet continues its outer one
            if _TIMESTAMP.match(line) or not packets:
                packets.append(line)
            elif line.strip():
                packets[-1] += " | " + line.strip()
        return packets

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_pid(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()

    def __exit__(self, *exc: object) -> None:
        self.close()
