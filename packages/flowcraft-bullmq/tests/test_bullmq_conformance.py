"""The core conformance suite against :class:`flowcraft_bullmq.BullMQAdapter` on a real Redis
(``redis_url`` from flowcraft-core's pytest plugin: an env URL, testcontainers or a throwaway
``redis-server``); each test gets its own BullMQ prefix, so its own queue and state keys.

Declared, not rewritten, where BullMQ does more than the in-memory backend:
``Capabilities.queue_native_retries`` (a delegated retry is BullMQ redelivering ONE job), and
job-id deduplication, which would swallow the suite's injected duplicates of a job, so the
duplicate-delivery tests run with ``deduplicate=False`` (:meth:`duplicate_delivery_kwargs`;
deduplication itself is tested in ``integration-tests/test_bullmq_adapter.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import pytest
from bullmq_support import RedisBackend
from flowcraft.distributed.adapter import BaseDistributedAdapter
from flowcraft.testing.conformance import AdapterConformanceSuite
from flowcraft_bullmq import BullMQAdapter


class TestBullMQConformance(AdapterConformanceSuite):
    """Every conformance scenario on BullMQ + Redis."""

    adapter_class = BullMQAdapter
    scenario_timeout: ClassVar[float] = 30.0

    @pytest.fixture
    async def backend(self, redis_url: str, unique_prefix: str) -> AsyncIterator[RedisBackend]:
        """A fresh prefix on the shared Redis; its keys are deleted afterwards."""
        b = RedisBackend(redis_url, unique_prefix)
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

    def duplicate_delivery_kwargs(self) -> Mapping[str, Any]:
        """BullMQ ids jobs for deduplication: let the injected copies through."""
        return {"deduplicate": False}
