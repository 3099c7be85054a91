"""SEV1 (worst) to SEV4."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Severity(StrEnum):
    SEV1 = "SEV1"
    SEV2 = "SEV2"
    SEV3 = "SEV3"
    SEV4 = "SEV4"

    @property
    def rank(self) -> int:
        """1 for SEV1 (worst) … 4 for SEV4."""
        return int(self.value[3])

    def is_worse_than(self, other: Severity) -> bool:
        return self.rank < other.rank

    def raised(self) -> Severity:
        """One step worse; SEV1 stays SEV1."""
        return Severity(f"SEV{max(1, self.rank - 1)}")

    @classmethod
    def worst(cls, severities: Iterable[Severity]) -> Severity | None:
        return min(severities, key=lambda s: s.rank, default=None)
