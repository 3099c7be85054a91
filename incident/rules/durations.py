"""Durations as operators write them in rules files: ``10s``, ``5m``, ``1h30m``, ``90d``.

The syntax is Prometheus's (whole numbers, units largest first, each at most
once) minus the year, whose length is ambiguous.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS: tuple[tuple[str, timedelta], ...] = (
    ("w", timedelta(weeks=1)),
    ("d", timedelta(days=1)),
    ("h", timedelta(hours=1)),
    ("m", timedelta(minutes=1)),
    ("s", timedelta(seconds=1)),
    ("ms", timedelta(milliseconds=1)),
)
_DURATION = re.compile("".join(rf"(?:(?P<{unit}>\d+){unit})?" for unit, _ in _UNITS))
EXAMPLES = "e.g. 30s, 5m, 1h30m, 90d"


def parse_duration(text: str) -> timedelta:
    """``"1h30m"`` → ``timedelta(hours=1, minutes=30)``; ValueError unless positive."""
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"a duration must be positive, got {text!r}")
    parts = _DURATION.fullmatch(stripped)
    if not stripped or parts is None:
        raise ValueError(
            f"invalid duration {text!r}: write whole numbers with units "
            f"w, d, h, m, s or ms, largest first ({EXAMPLES})"
        )
    total = sum(
        (int(amount) * length for (unit, length) in _UNITS if (amount := parts[unit])),
        start=timedelta(0),
    )
    if total <= timedelta(0):
        raise ValueError(f"a duration must be positive, got {text!r}")
    return total


def format_duration(duration: timedelta) -> str:
    """The shortest spelling that parse_duration reads back: ``1h30m``, ``90d``."""
    remaining = duration
    pieces: list[str] = []
    for unit, length in _UNITS:
        # Weeks are skipped so that 14d reads as 14d, the way people wrote it.
        if unit == "w":
            continue
        amount, remaining = divmod(remaining, length)
        if amount:
            pieces.append(f"{amount}{unit}")
    return "".join(pieces) or "0s"
