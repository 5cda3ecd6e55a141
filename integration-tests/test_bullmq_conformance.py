"""The core conformance suite against :class:`flowcraft_bullmq.BullMQAdapter` on a real Redis.

Each test gets its own BullMQ prefix (so its own queue and state keys) on the Redis from the
service layer (``FLOWCRAFT_TEST_REDIS_URL``, testcontainers, or a throwaway ``redis-server``).

Two deliberate differences from the in-memory run, both because BullMQ does more, not less:

* Injected duplicates: the fault injector re-enqueues the *same* job; with job-id
  deduplication on (the default) BullMQ keeps one job, so the tests that need the copies to be
  *delivered* (duplicate/late delivery, duplicates of a slow node) run with
  ``deduplicate=False``. Deduplication itself is tested in ``test_bullmq_adapter.py``.
* Queue-delegated retries are BullMQ-native: one job whose attempts BullMQ redelivers with its
  backoff, so the retry tests check the delivered payloads (attempt, isLastAttempt) and that
  exactly one job was enqueued, instead of one enqueue per attempt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from flowcraft.distributed.adapter import BaseDistributedAdapter
from flowcraft.distributed.contracts import JobPayload
from flowcraft.redis import RedisStoreStats, connect
from flowcraft.testing.conformance import AdapterConformanceSuite, FaultInjector
from flowcraft.testing.conformance import scenarios as sc
from flowcraft_bullmq import BullMQAdapter

DELIVER_DUPLICATES = frozenset(
    {"test_duplicate_delivery", "test_late_reordered_duplicates", "test_slow_node_keeps_its_lease"}
)


@dataclass
class RedisBackend:
    """One test's slice of Redis: a URL, a unique prefix, shared write counters."""

    url: str
    prefix: str
    deduplicate: bool = True
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
            "deduplicate": self.deduplicate,
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


class TestBullMQConformance(AdapterConformanceSuite):
    """Every conformance scenario on BullMQ + Redis."""

    adapter_class = BullMQAdapter
    scenario_timeout: ClassVar[float] = 30.0

    @pytest.fixture
    async def backend(
        self, redis_url: str, unique_prefix: str, request: pytest.FixtureRequest
    ) -> AsyncIterator[RedisBackend]:
        """A fresh prefix on the shared Redis; duplicate-delivery tests without dedupe."""
        b = RedisBackend(
            redis_url,
            unique_prefix,
            deduplicate=request.function.__name__ not in DELIVER_DUPLICATES,
        )
        try:
            yield b
        finally:
            await b.cleanup()

    async def make_worker(
        self, backend: Any, runtime_options: dict[str, Any], **adapter_kwargs: Any
    ) -> BaseDistributedAdapter:
        """A BullMQ worker on the test's prefix."""
        return backend.adapter(runtime_options=runtime_options, **adapter_kwargs)

    async def enqueue_raw(self, backend: Any, body: str) -> bool:
        """Add ``body`` as a BullMQ job's data, as is."""
        await backend.adapter().queue.add("raw", body, {})
        return True

    async def dead_letters(self, backend: Any) -> list[str] | None:
        """BullMQ's failed set: job data and failure reason."""
        return [f"{d} {r}" for d, r in await backend.adapter().dead_letters()]

    # -- BullMQ-native delegated retries ---------------------------------------------------

    async def test_queue_delegated_retries(self, backend: Any) -> None:
        """With queue-delegated retries BullMQ redelivers ONE job: the engine sees attempts
        1, 2, 3 with ``isLastAttempt`` only on 3, and the node succeeds on attempt 3 (A1)."""
        s = sc.retries()
        delivered: list[tuple[int, bool | None]] = []

        def seen(point: str, job: JobPayload | None, adapter: BaseDistributedAdapter) -> None:
            if point == "after_receive" and job is not None and job.node_id == "flaky":
                delivered.append((job.attempt, job.is_last_attempt))

        faults = FaultInjector().observe(seen)
        async with self.cluster(backend, s, faults=faults, retry_in_process=False) as c:
            res = await c.run("retry-flaky")
        assert res.status == "completed"
        assert res.context == {"_outputs.flaky": "ok on 3", "_outputs.after": "ok on 3"}
        assert s.probe.attempts("flaky") == [1, 2, 3]
        assert delivered == [(1, False), (2, False), (3, True)]
        assert [(j.attempt, j.is_last_attempt) for j in faults.jobs_for("flaky")] == [(1, False)]

    async def test_queue_delegated_retries_exhausted(self, backend: Any) -> None:
        """maxRetries=2 exhausted through BullMQ: 2 attempts of one job, the run fails once."""
        s = sc.retries()
        faults = FaultInjector()
        async with self.cluster(backend, s, faults=faults, retry_in_process=False) as c:
            res = await c.run("retry-exhausted")
        assert res.status == "failed"
        assert res.node_statuses == {"hopeless": "failed", "after": "pending"}
        assert [(e.node_id, e.message) for e in res.errors] == [("hopeless", "never works")]
        assert s.probe.attempts("hopeless") == [1, 2]
        assert [j.attempt for j in faults.jobs_for("hopeless")] == [1]
        assert s.probe.count("after") == 0
        assert c.published[res.execution_id] == ["failed"]
