"""Small numbers the agent hands out and must never change while in use: each tenant's 24-bit
tag (in flow cookies and meter ids) and each network's 16-bit conntrack zone.

They live in one JSON file in the state directory, rewritten atomically (write, fsync, rename,
fsync the directory) before any flow that uses a new number is installed, so after a crash or
a restart every tenant and network gets the number it had: cookies keep meaning the same
tenant (usage from flow statistics stays right) and conntrack entries stay in their zone.
A number is freed when its owner is gone from the desired state, and then reused only after
every other number of its range has been handed out at least once (lowest free above the last
one given), so a freed number is not reused by the next newcomer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

FILENAME = "network-numbers.json"
RANGES = {"tenant_tags": (1, (1 << 24) - 1), "ct_zones": (1, (1 << 16) - 1)}


class NumbersFull(RuntimeError):
    """Every number of a range is in use."""


class Numbers:
    """The numbers of one state directory. One writer (the network reconciler's thread)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / FILENAME
        self._data: dict[str, dict] = {name: {"given": {}, "last": 0} for name in RANGES}
        if self.path.exists():
            stored = json.loads(self.path.read_text())
            for name in RANGES:
                if name in stored:
                    self._data[name] = {"given": dict(stored[name]["given"]),
                                        "last": int(stored[name]["last"])}  # fmt: skip

    def assign(self, name: str, owners: Iterable[str]) -> Mapping[str, int]:
        """The number of each owner in range `name`, giving new ones to newcomers and freeing
        those of owners no longer listed; durable before it returns if anything changed."""
        low, high = RANGES[name]
        wanted = set(owners)
        # Work on copies: a full range changes nothing, in memory or on disk.
        given = {o: n for o, n in self._data[name]["given"].items() if o in wanted}
        last = self._data[name]["last"]
        used = set(given.values())
        for owner in sorted(wanted - given.keys()):
            last = self._next_free(last, used, low, high)
            given[owner] = last
            used.add(last)
        if given != self._data[name]["given"]:
            self._data[name] = {"given": given, "last": last}
            self._save()
            log.info("network.numbers", range=name, in_use=len(given))
        return given

    def assigned(self, name: str) -> Mapping[str, int]:
        """The numbers in use in range `name`, as last saved."""
        return dict(self._data[name]["given"])

    @staticmethod
    def _next_free(last: int, used: set[int], low: int, high: int) -> int:
        size = high - low + 1
        for step in range(1, size + 1):
            number = low + (last - low + step) % size
            if number not in used:
                return number
        raise NumbersFull(f"all {size} numbers from {low} to {high} are in use")

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(self._data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
