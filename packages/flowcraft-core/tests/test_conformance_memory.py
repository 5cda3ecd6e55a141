"""The adapter conformance suite run against the in-memory backend (``InMemoryAdapter``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from flowcraft.distributed.adapter import BaseDistributedAdapter
from flowcraft.distributed.memory import InMemoryAdapter, MemoryBroker
from flowcraft.testing.conformance import AdapterConformanceSuite


class TestInMemoryConformance(AdapterConformanceSuite):
    """Every conformance scenario on a fresh :class:`MemoryBroker` per test."""

    adapter_class = InMemoryAdapter

    @pytest.fixture
    async def backend(self) -> AsyncIterator[MemoryBroker]:
        """A fresh broker with a short visibility timeout (crashes recover quickly)."""
        yield MemoryBroker(visibility_timeout=0.3)

    async def make_worker(
        self, backend: Any, runtime_options: dict[str, Any], **adapter_kwargs: Any
    ) -> BaseDistributedAdapter:
        """An in-memory worker on ``backend``."""
        return InMemoryAdapter(backend, runtime_options=runtime_options, **adapter_kwargs)

    async def enqueue_raw(self, backend: Any, body: str) -> bool:
        """Put ``body`` on the broker's queue as is."""
        await backend.put(body)
        return True

    async def dead_letters(self, backend: Any) -> list[str] | None:
        """The broker's dead letters as ``body + reason`` text."""
        return [f"{body} {reason}" for body, reason in backend.dead_letters]


class TestInMemoryInlineConformance(TestInMemoryConformance):
    """The same scenarios with inline successors: a worker runs the nodes its commit made ready
    itself (up to 8 per delivered job) instead of sending them through the queue."""

    worker_kwargs = {"inline_successors": 8}
