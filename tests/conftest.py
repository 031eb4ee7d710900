"""Fixtures shared by the tests: where the ClassBench data lives.

The ClassBench rule sets and traces are not in this repository; they sit beside it in
`../shared/classbench` (see its README.md), or wherever ANDROMEDE_CLASSBENCH points.
Missing data is a failure, never a skip: a suite that silently skips its data-driven tests
would report green while proving nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def classbench_path() -> Path:
    """The ClassBench directory: $ANDROMEDE_CLASSBENCH, else <repo>/../shared/classbench."""
    return Path(os.environ.get("ANDROMEDE_CLASSBENCH", REPO.parent / "shared" / "classbench"))


@pytest.fixture(scope="session")
def classbench_dir() -> Path:
    path = classbench_path()
    if not (path / "acl1_1k").is_file():
        pytest.fail(
            f"ClassBench data not found in {path} (no acl1_1k there). Put the rule sets and "
            f"traces in {REPO.parent / 'shared' / 'classbench'} (format: README.md there), or "
            f"set ANDROMEDE_CLASSBENCH to the directory that holds them.",
            pytrace=False,
        )
    return path
