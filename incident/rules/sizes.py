"""Sizes as operators write them in rules files: ``100MiB``, ``1GiB``, ``500MB``."""

from __future__ import annotations

import re

_UNITS = {
    "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip
_SIZE = re.compile(r"(?P<amount>\d+)\s*(?P<unit>[A-Za-z]+)")
EXAMPLES = "e.g. 512KiB, 100MiB, 1GiB or 500MB"


def parse_size(text: str) -> int:
    """``"100MiB"`` → ``104857600``; ValueError unless a positive whole number with a unit."""
    parts = _SIZE.fullmatch(text.strip())
    unit = _UNITS.get(parts["unit"].lower()) if parts else None
    if parts is None or unit is None:
        raise ValueError(
            f"invalid size {text!r}: write a whole number with a unit "
            f"B, KB, MB, GB, TB, KiB, MiB, GiB or TiB ({EXAMPLES})"
        )
    size = int(parts["amount"]) * unit
    if size <= 0:
        raise ValueError(f"a size must be positive, got {text!r}")
    return size
