"""Tenant tags and conntrack zones: durable, stable, not reused at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.network import numbers
from agent.network.numbers import Numbers, NumbersFull


def test_numbers_are_stable_across_a_restart_and_freed_ones_are_not_reused_at_once(
    tmp_path: Path,
) -> None:
    first = Numbers(tmp_path).assign("tenant_tags", ["t-b", "t-a"])
    assert first == {"t-a": 1, "t-b": 2}
    again = Numbers(tmp_path)  # as after a restart: read back from the file
    assert again.assign("tenant_tags", ["t-a", "t-b", "t-c"]) == {"t-a": 1, "t-b": 2, "t-c": 3}
    assert again.assign("tenant_tags", ["t-b", "t-c"]) == {"t-b": 2, "t-c": 3}  # t-a freed
    assert again.assign("tenant_tags", ["t-b", "t-c", "t-d"])["t-d"] == 4  # not t-a's 1
    assert Numbers(tmp_path).assign("ct_zones", ["n1"]) == {"n1": 1}  # ranges are separate


def test_a_full_range_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(numbers.RANGES, "ct_zones", (1, 3))
    n = Numbers(tmp_path)
    assert n.assign("ct_zones", ["a", "b", "c"]) == {"a": 1, "b": 2, "c": 3}
    with pytest.raises(NumbersFull, match="all 3 numbers from 1 to 3 are in use"):
        n.assign("ct_zones", ["a", "b", "c", "d"])
