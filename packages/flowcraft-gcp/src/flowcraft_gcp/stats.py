"""API call and write counters (benchmarks and the conformance suite's delta check)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["ApiStats"]


@dataclass
class ApiStats:
    """Counters shared by every adapter and store given the same object."""

    calls: Counter[str] = field(default_factory=Counter)
    """API calls by ``service.operation`` (e.g. ``firestore.commit``, ``pubsub.pull``)."""
    commits: int = 0
    """Successful run-store commits."""
    bytes_written: int = 0
    """Bytes of field names and JSON values written by those commits."""

    def count(self, call: str, n: int = 1) -> None:
        """Record ``n`` calls of ``call``."""
        self.calls[call] += n

    def count_commit(self, written: int) -> None:
        """Record a successful commit that wrote ``written`` bytes."""
        self.commits += 1
        self.bytes_written += written

    @property
    def total_calls(self) -> int:
        """All API calls so far."""
        return sum(self.calls.values())
