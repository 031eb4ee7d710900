"""A read-only hash map of uint64 keys to int64 values, for lookups from jitted loops.

Open addressing with linear probing over a power-of-two table at most half full, so a
miss ends at the first empty slot after about two probes. Keys and values are two plain
arrays; `build` makes them in Python once per policy, `get` runs per packet. EMPTY (all
ones) marks a free slot and is never a key.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numba import njit

from dataplane.policy import Invalid

EMPTY = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
MISSING = -1


@njit(cache=True, nogil=True, inline="always")
def slot_of(key: np.uint64, mask: int) -> int:
    """The home slot of `key`: splitmix64's finalizer, so keys that differ only in their top
    bits (a network number above a MAC) spread over every slot."""
    x = np.uint64(key)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58_476D_1CE4_E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D0_49BB_1331_11EB)
    x = x ^ (x >> np.uint64(31))
    return np.int64(x & np.uint64(mask))


def build(entries: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The (keys, values) arrays holding `entries` (values >= 0)."""
    size = 8
    while size < 2 * len(entries):
        size *= 2
    keys = np.full(size, EMPTY, np.uint64)
    values = np.full(size, MISSING, np.int64)
    for key, value in entries.items():
        if not 0 <= key < int(EMPTY):
            raise Invalid("key", f"must be 0..2**64-2, got {key}")
        slot = slot_of(np.uint64(key), size - 1)
        while keys[slot] != EMPTY:
            slot = (slot + 1) & (size - 1)
        keys[slot] = key
        values[slot] = value
    keys.flags.writeable = values.flags.writeable = False
    return keys, values


@njit(cache=True, nogil=True, inline="always")
def get(keys: np.ndarray, values: np.ndarray, key: np.uint64) -> int:
    """The value of `key`, or MISSING."""
    mask = keys.shape[0] - 1
    slot = slot_of(key, mask)
    while True:
        k = keys[slot]
        if k == key:
            return values[slot]
        if k == EMPTY:
            return MISSING
        slot = (slot + 1) & mask
