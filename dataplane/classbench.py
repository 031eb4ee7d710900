"""Read ClassBench rule sets and traces (format: ../shared/classbench/README.md).

Rules become a `policy.Table` over the five-tuple: line order is priority (the first
line wins), the TCP-flags column is ignored, as DPDK's test-acl and the usual 5-tuple
semantics do. Traces become an (N, 5) uint32 array in `FIVE_TUPLE` column order.
Malformed input raises `ClassBenchError` naming the file, the line and the problem.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dataplane.policy import MAX_PRIORITY, Field, Invalid, Masked, Prefix, Range, Rule, Table, Wildcard

FIVE_TUPLE = (Field.IP_SRC, Field.IP_DST, Field.L4_SRC, Field.L4_DST, Field.IP_PROTO)


class ClassBenchError(ValueError):
    def __init__(self, path: Path | str, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path, self.line, self.problem = str(path), line, problem


_RULE = re.compile(
    r"@(?P<src>\S+)/(?P<slen>\d+)\s+(?P<dst>\S+)/(?P<dlen>\d+)\s+"
    r"(?P<slo>\d+)\s*:\s*(?P<shi>\d+)\s+(?P<dlo>\d+)\s*:\s*(?P<dhi>\d+)\s+"
    r"(?P<proto>0x[0-9a-fA-F]+)/(?P<pmask>0x[0-9a-fA-F]+)(?:\s+\S+)?\s*$"
)


def _ipv4(text: str, what: str) -> int:
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise ValueError(f"{what} {text!r} is not a dotted IPv4 address")
    a, b, c, d = (int(p) for p in parts)
    return (a << 24) | (b << 16) | (c << 8) | d


def _prefix(addr: int, length: int, what: str) -> Prefix | Wildcard:
    if length > 32:
        raise ValueError(f"{what} prefix length {length} is over 32")
    if length == 0:
        return Wildcard()
    # ClassBench writes host bits after the prefix; they carry no meaning, drop them.
    return Prefix(addr & ~((1 << (32 - length)) - 1) & 0xFFFFFFFF, length)


def parse_rule(line: str, priority: int) -> Rule:
    m = _RULE.match(line.strip())
    if not m:
        raise ValueError("expected '@src/len dst/len lo : hi lo : hi proto/mask [flags/mask]'")
    g = m.groupdict()
    matches = {
        Field.IP_SRC: _prefix(_ipv4(g["src"], "source"), int(g["slen"]), "source"),
        Field.IP_DST: _prefix(_ipv4(g["dst"], "destination"), int(g["dlen"]), "destination"),
        Field.L4_SRC: Range(int(g["slo"]), int(g["shi"])),
        Field.L4_DST: Range(int(g["dlo"]), int(g["dhi"])),
    }
    proto, pmask = int(g["proto"], 16), int(g["pmask"], 16)
    if proto > 0xFF or pmask > 0xFF:
        raise ValueError(f"protocol {g['proto']}/{g['pmask']} is wider than 8 bits")
    if pmask:
        matches[Field.IP_PROTO] = Masked(proto & pmask, pmask)
    return Rule(priority, {f: m for f, m in matches.items() if not isinstance(m, Wildcard)})


def read_rules(path: Path | str) -> Table:
    path = Path(path)
    lines = [ln for ln in path.read_text().splitlines()]
    numbered = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip()]
    if len(numbered) > MAX_PRIORITY + 1:
        raise ClassBenchError(path, numbered[-1][0], f"more than {MAX_PRIORITY + 1} rules")
    rules = []
    for position, (lineno, line) in enumerate(numbered):
        try:
            rules.append(parse_rule(line, MAX_PRIORITY - position))
        except (ValueError, Invalid) as e:
            raise ClassBenchError(path, lineno, str(e)) from None
    return Table(tuple(rules), name=path.name)


class Trace(NamedTuple):
    headers: np.ndarray  # (N, 5) uint32, columns in FIVE_TUPLE order
    filters: np.ndarray  # (N,) int64: the rule each header was generated from (not the answer)


_TRACE_LIMITS = (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFF, 0xFFFF, 0xFF)
_TRACE_NAMES = ("source address", "destination address", "source port", "destination port", "protocol")


def read_trace(path: Path | str) -> Trace:
    path = Path(path)
    headers, filters = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        cols = line.split()
        if not cols:
            continue
        if len(cols) < 5:
            raise ClassBenchError(path, lineno, f"expected at least 5 columns, got {len(cols)}")
        try:
            values = [int(c) for c in cols[:5]]
        except ValueError:
            raise ClassBenchError(path, lineno, f"non-integer column in {line.strip()!r}") from None
        for v, limit, name in zip(values, _TRACE_LIMITS, _TRACE_NAMES):
            if not 0 <= v <= limit:
                raise ClassBenchError(path, lineno, f"{name} {v} is out of range 0..{limit}")
        headers.append(values)
        filters.append(int(cols[6]) if len(cols) > 6 and cols[6].lstrip("-").isdigit() else -1)
    return Trace(np.array(headers, dtype=np.uint32).reshape(-1, 5), np.array(filters, dtype=np.int64))


def write_trace(path: Path | str, headers: np.ndarray) -> None:
    """Write headers in ClassBench trace format (flags 0, filter -1), e.g. for dpdk-test-acl."""
    with open(path, "w") as out:
        for s, d, sp, dp, pr in np.asarray(headers, dtype=np.uint64).tolist():
            out.write(f"{s}\t{d}\t{sp}\t{dp}\t{pr}\t0\t-1\n")
