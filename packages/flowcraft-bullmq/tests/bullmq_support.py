"""Test support for flowcraft-bullmq's tests: one test's slice of a Redis server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flowcraft.redis import RedisStoreStats, connect
from flowcraft_bullmq import BullMQAdapter


@dataclass
class RedisBackend:
    """One test's slice of Redis: a URL, a unique prefix, shared write counters, and every
    adapter made on it (closed, and the prefix's keys deleted, by :meth:`cleanup`)."""

    url: str
    prefix: str
    stats: RedisStoreStats = field(default_factory=RedisStoreStats)
    adapters: list[BullMQAdapter] = field(default_factory=list)

    @property
    def commits(self) -> int:
        """Successful commits of every adapter of the test."""
        return self.stats.commits

    @property
    def bytes_written(self) -> int:
        """Bytes those commits wrote."""
        return self.stats.bytes_written

    def adapter(self, **kwargs: Any) -> BullMQAdapter:
        """A BullMQ adapter on this slice, tuned for quick crash recovery in tests."""
        kw: dict[str, Any] = {
            "queue_name": "q",
            "prefix": self.prefix,
            "lock_duration": 1.0,
            "stalled_interval": 0.5,
            "stats": self.stats,
            "concurrency": 8,
            **kwargs,
        }
        a = BullMQAdapter(self.url, **kw)
        self.adapters.append(a)
        return a

    async def cleanup(self) -> None:
        """Close every adapter and delete every key of the slice."""
        for a in self.adapters:
            await a.aclose()
        r = connect(self.url)
        try:
            batch = []
            async for k in r.scan_iter(match=f"{self.prefix}:*", count=500):
                batch.append(k)
                if len(batch) >= 500:
                    await r.unlink(*batch)
                    batch = []
            if batch:
                await r.unlink(*batch)
        finally:
            await r.aclose()
