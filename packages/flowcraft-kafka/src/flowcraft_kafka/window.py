"""In-flight tracking per partition: which offsets a worker has taken and not finished, and how
far the group's committed offset may advance.

Kafka commits a position per partition, not per message. A worker runs many messages of one
partition at once, finishing them in any order, so it commits only up to the lowest offset it
has not finished: a crash then redelivers exactly the unfinished messages (and some finished
ones after them, which the engine recognises as duplicates). Each partition's window is
bounded; a full window pauses the partition (back-pressure) until a message finishes.

Pure bookkeeping under one lock: the consumer thread takes and commits, the event loop
finishes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

TopicPartitionKey = tuple[str, int]
"""``(topic, partition)``."""


@dataclass(eq=False)
class PartitionWindow:
    """The in-flight offsets of one assigned partition."""

    topic: str
    partition: int
    limit: int
    """At most this many unfinished messages; then the partition is paused."""
    suspect_below: int = -1
    """Offsets below this (the high watermark when the partition was assigned) may have been
    delivered to a previous owner; their deliveries are counted in the coordination store."""
    pending: set[int] = field(default_factory=set)
    next: int | None = None
    """The offset after the highest one taken."""
    committed: int | None = None
    revoked: bool = False
    paused: bool = False

    @property
    def key(self) -> TopicPartitionKey:
        """``(topic, partition)``."""
        return (self.topic, self.partition)

    def position(self) -> int | None:
        """The offset to commit: the lowest unfinished one, else the one after the highest
        taken (None before the first message)."""
        return min(self.pending) if self.pending else self.next

    @property
    def full(self) -> bool:
        """True when the window holds :attr:`limit` unfinished messages."""
        return len(self.pending) >= self.limit


@dataclass(eq=False)
class Record:
    """One consumed message, as the adapter handles it."""

    window: PartitionWindow
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    suspect: bool
    """May have been delivered before (see :attr:`PartitionWindow.suspect_below`)."""
    local_redeliveries: int = 0
    """Times this worker handed the message out again after a handling died unsettled."""
    done: bool = False
    """Set once the message was acknowledged, re-produced or dead-lettered."""
    running: bool = False
    """The engine is handling it (it holds a concurrency slot)."""
    task: Any = None

    @property
    def topic(self) -> str:
        """The message's topic."""
        return self.window.topic

    @property
    def partition(self) -> int:
        """The message's partition."""
        return self.window.partition

    def __repr__(self) -> str:
        return f"Record({self.topic}/{self.partition}@{self.offset})"


class Windows:
    """Every assigned partition's :class:`PartitionWindow` (thread-safe)."""

    def __init__(self, limits: dict[str, int]) -> None:
        self._lock = threading.Lock()
        self._limits = limits
        self.windows: dict[TopicPartitionKey, PartitionWindow] = {}

    def assign(self, parts: Iterable[tuple[str, int, int]]) -> None:
        """Start windows for newly assigned ``(topic, partition, suspect_below)``."""
        with self._lock:
            for topic, partition, high in parts:
                w = PartitionWindow(topic, partition, self._limits.get(topic, 64), high)
                self.windows[w.key] = w

    def take(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes,
        headers: dict[str, str],
    ) -> Record | None:
        """Register a consumed message; None when its partition is not (or no longer)
        assigned, or the offset was taken already."""
        with self._lock:
            w = self.windows.get((topic, partition))
            if w is None or offset in w.pending or (w.next is not None and offset < w.next):
                return None
            w.pending.add(offset)
            w.next = offset + 1
            return Record(w, offset, key, value, headers, offset < w.suspect_below)

    def finish(self, rec: Record) -> None:
        """The message is done: its offset no longer holds the commit back."""
        with self._lock:
            rec.window.pending.discard(rec.offset)

    def to_commit(self) -> list[tuple[str, int, int]]:
        """``(topic, partition, position)`` of every window whose position advanced since its
        last commit (marked committed)."""
        out = []
        with self._lock:
            for w in self.windows.values():
                pos = w.position()
                if pos is not None and pos != w.committed:
                    w.committed = pos
                    out.append((w.topic, w.partition, pos))
        return out

    def revoke(self, keys: Iterable[TopicPartitionKey]) -> list[tuple[str, int, int]]:
        """Drop the windows of revoked partitions; their final positions to commit."""
        out = []
        with self._lock:
            for k in keys:
                w = self.windows.pop(k, None)
                if w is None:
                    continue
                w.revoked = True
                pos = w.position()
                if pos is not None:
                    out.append((w.topic, w.partition, pos))
        return out

    def pause_plan(
        self, hold_back: set[str]
    ) -> tuple[list[PartitionWindow], list[PartitionWindow]]:
        """Partitions to pause (full, or of a topic in ``hold_back``) and to resume."""
        pause, resume = [], []
        with self._lock:
            for w in self.windows.values():
                want = w.full or w.topic in hold_back
                if want and not w.paused:
                    w.paused = True
                    pause.append(w)
                elif not want and w.paused:
                    w.paused = False
                    resume.append(w)
        return pause, resume

    def in_flight(self) -> int:
        """Unfinished messages over every window."""
        with self._lock:
            return sum(len(w.pending) for w in self.windows.values())


__all__ = ["PartitionWindow", "Record", "TopicPartitionKey", "Windows"]
