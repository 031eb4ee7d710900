"""The engine's read-only hash map: every key found, misses missing, and keys that differ
only in their top bits (a network number above a MAC, as the forwarding map's keys do) spread
over the table instead of piling into one run of slots."""

from __future__ import annotations

import random

import numpy as np
import pytest

from dataplane.kernels import hashmap
from dataplane.policy import Invalid


def _longest_run(keys: np.ndarray) -> int:
    """The longest run of occupied slots (what a lookup may probe), wrapping around."""
    used = np.concatenate([keys, keys]) != hashmap.EMPTY
    longest = run = 0
    for u in used:
        run = run + 1 if u else 0
        longest = max(longest, run)
    return min(longest, len(keys))


@pytest.mark.parametrize("shape", ["random", "top bits", "low bits"])
def test_every_key_is_found_and_runs_stay_short(shape: str) -> None:
    rng = random.Random(1)
    count = 20_000
    if shape == "random":
        entries = {rng.getrandbits(63): i for i in range(count)}
    elif shape == "top bits":
        entries = {(n << 48) | 0xFA163E000001: n for n in range(count)}
    else:
        entries = {n: n for n in range(count)}
    keys, values = hashmap.build(entries)
    assert all(hashmap.get(keys, values, np.uint64(k)) == v for k, v in entries.items())
    misses = [k + 1 for k in list(entries)[:2000] if k + 1 not in entries]
    assert all(hashmap.get(keys, values, np.uint64(k)) == hashmap.MISSING for k in misses)
    assert _longest_run(keys) < 64  # half full: runs of a few dozen at most, never thousands
    assert not keys.flags.writeable and not values.flags.writeable


def test_an_empty_map_answers_missing_and_bad_keys_are_refused() -> None:
    keys, values = hashmap.build({})
    assert hashmap.get(keys, values, np.uint64(5)) == hashmap.MISSING
    with pytest.raises(Invalid, match="key"):
        hashmap.build({-1: 0})
