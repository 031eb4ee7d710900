"""Numba's on-disk cache, made safe for kernels that call into other modules.

Numba checks only the source file of a cached function itself: a kernel that inlines a
function (or reads a constant) of another module keeps the old code after that module
changes, and may then read new arrays with old offsets (a segfault, or wrong answers). A
module whose kernels do so calls `drop_stale_cache(__file__, *the modules it uses)` before
defining them: its cache entries older than any of those modules' sources are removed, and
the kernels are compiled again on their first call.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType


def drop_stale_cache(module_file: str, *dependencies: ModuleType) -> None:
    source = Path(module_file)
    newest = max([Path(d.__file__).stat().st_mtime for d in dependencies] + [source.stat().st_mtime])
    for entry in (source.parent / "__pycache__").glob(f"{source.stem}.*.nb[ic]"):
        try:
            if entry.stat().st_mtime < newest:
                entry.unlink()
        except FileNotFoundError:  # another process removed it first
            continue
