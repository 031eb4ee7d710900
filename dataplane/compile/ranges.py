"""Port ranges as value/mask matches: the fewest prefix blocks that cover a range exactly.

OpenFlow matches a transport port by value and mask, not by range, so a rule "ports 1000-1999"
must become several value/mask matches. Cutting the range into the largest aligned power-of-two
blocks, greedily from the low end, gives the minimum number of prefix matches (at most
2 * 16 - 2 for a 16-bit field), the method Neutron's port_rule_masking uses; a naive
expansion takes one flow per port.
"""

from __future__ import annotations


def prefix_blocks(lo: int, hi: int, width: int = 16) -> list[tuple[int, int]]:
    """(value, mask) pairs whose matches together accept exactly lo..hi (inclusive)."""
    top = (1 << width) - 1
    if not 0 <= lo <= hi <= top:
        raise ValueError(f"range {lo}..{hi} is not inside 0..{top}")
    blocks = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << width  # the largest block aligned at lo ...
        while size > hi - lo + 1:  # ... that still fits in what is left
            size >>= 1
        blocks.append((lo, top & ~(size - 1)))
        lo += size
    return blocks


def match_text(field: str, lo: int, hi: int, width: int = 16) -> list[str]:
    """The blocks as ovs-ofctl match terms, e.g. ["tp_dst=0x3e8/0xfff8", ...]: a single value
    is written without mask, and the whole field (0..top) is [""], one match with no term."""
    top = (1 << width) - 1
    return [
        "" if mask == 0 else f"{field}={value}" if mask == top else f"{field}={value:#x}/{mask:#x}"
        for value, mask in prefix_blocks(lo, hi, width)
    ]
