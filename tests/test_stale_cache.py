"""Numba cache entries of a module are removed once a module its kernels use is newer, and
kept otherwise (dataplane/kernels/stale.py)."""

from __future__ import annotations

import os
import types
from pathlib import Path

from dataplane.kernels.stale import drop_stale_cache


def test_entries_older_than_a_dependency_go_and_newer_ones_stay(tmp_path: Path) -> None:
    kernel, dependency = tmp_path / "pipeline.py", tmp_path / "parse.py"
    kernel.write_text("")
    dependency.write_text("")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    old = [cache / "pipeline.process-40.py311.nbi", cache / "pipeline.process-40.py311.1.nbc"]
    fresh = cache / "pipeline.other-90.py311.nbi"
    unrelated = cache / "parse.parse_frame-10.py311.nbi"
    for f in (*old, fresh, unrelated):
        f.write_text("")
    for f in (*old, unrelated):
        os.utime(f, (1_000_000, 1_000_000))
    os.utime(kernel, (1_000_000, 1_000_000))
    os.utime(dependency, (2_000_000, 2_000_000))
    os.utime(fresh, (3_000_000, 3_000_000))
    drop_stale_cache(str(kernel), types.SimpleNamespace(__file__=str(dependency)))
    assert not any(f.exists() for f in old)
    assert fresh.exists() and unrelated.exists()  # newer than every source; another module's
