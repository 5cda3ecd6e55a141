"""The core conformance suite against :class:`flowcraft_rabbitmq.RabbitMQAdapter` on a real
RabbitMQ broker, PostgreSQL server and Redis server (the service fixtures of flowcraft-core's
pytest plugin: env URLs, testcontainers or throwaway local servers). Each test gets its own
queue names, PostgreSQL schema and Redis key prefix, deleted afterwards. Broker connection
drops and SIGKILLed worker processes: ``test_rabbitmq_connections.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from flowcraft.distributed.adapter import BaseDistributedAdapter
from flowcraft.testing.conformance import AdapterConformanceSuite
from flowcraft_rabbitmq import RabbitMQAdapter
from rabbitmq_support import RabbitBackend


class TestRabbitMQConformance(AdapterConformanceSuite):
    """Every conformance scenario on RabbitMQ + PostgreSQL + Redis."""

    adapter_class = RabbitMQAdapter
    scenario_timeout: ClassVar[float] = 30.0

    @pytest.fixture
    async def backend(
        self, rabbitmq_url: str, postgres_url: str, redis_url: str, unique_prefix: str
    ) -> AsyncIterator[RabbitBackend]:
        """A fresh queue / schema / key prefix per test."""
        b = RabbitBackend(rabbitmq_url, postgres_url, redis_url, unique_prefix)
        try:
            yield b
        finally:
            await b.cleanup()

    async def make_worker(
        self, backend: Any, runtime_options: dict[str, Any], **adapter_kwargs: Any
    ) -> BaseDistributedAdapter:
        """A worker (or the client) with its own AMQP connection."""
        return backend.adapter(runtime_options=runtime_options, **adapter_kwargs)

    async def enqueue_raw(self, backend: Any, body: str) -> bool:
        """Publish ``body`` to the work queue as is."""
        await backend.adapter().publish(body.encode("utf-8"))
        return True

    async def dead_letters(self, backend: Any) -> list[str] | None:
        """The dead-letter queue's messages as ``body + reason`` text."""
        return [f"{b} {r}" for b, r in await backend.adapter().dead_letters()]
