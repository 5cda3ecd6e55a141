"""Test support for flowcraft-rabbitmq's tests (and ``integration-tests/test_rabbitmq_store.py``):
one test's slice of the RabbitMQ broker, the PostgreSQL server and the Redis server (unique
queue names, schema and key prefix), deleted afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flowcraft.redis import connect
from flowcraft_rabbitmq import PostgresRunStore, PostgresStoreStats, RabbitMQAdapter


@dataclass
class RabbitBackend:
    """One test's slice of the three servers: unique queue, schema and key prefix."""

    amqp_url: str
    postgres_url: str
    redis_url: str
    tag: str
    stats: PostgresStoreStats = field(default_factory=PostgresStoreStats)
    adapters: list[RabbitMQAdapter] = field(default_factory=list)
    _store: PostgresRunStore | None = None

    @property
    def queue(self) -> str:
        """The test's work-queue name."""
        return f"{self.tag}.jobs"

    @property
    def schema(self) -> str:
        """The test's PostgreSQL schema."""
        return self.tag

    @property
    def prefix(self) -> str:
        """The test's Redis key prefix."""
        return f"{self.tag}:"

    @property
    def store(self) -> PostgresRunStore:
        """The run store shared by the test's adapters (one pool)."""
        if self._store is None:
            self._store = PostgresRunStore(
                self.postgres_url, schema=self.schema, max_size=10, stats=self.stats
            )
        return self._store

    @property
    def commits(self) -> int:
        """Successful commits of every adapter of the test."""
        return self.stats.commits

    @property
    def bytes_written(self) -> int:
        """Bytes those commits wrote."""
        return self.stats.bytes_written

    def adapter(self, amqp_url: str | None = None, **kwargs: Any) -> RabbitMQAdapter:
        """An adapter on this slice, tuned for quick recovery in tests."""
        kw: dict[str, Any] = {
            "postgres": self.store,
            "redis": self.redis_url,
            "queue_name": self.queue,
            "redis_prefix": self.prefix,
            "prefetch": 16,
            "reconnect_interval": 0.2,
            **kwargs,
        }
        a = RabbitMQAdapter(amqp_url or self.amqp_url, **kw)
        self.adapters.append(a)
        return a

    async def cleanup(self) -> None:
        """Close every adapter; delete the queues, the schema and the Redis keys."""
        admin = RabbitMQAdapter(
            self.amqp_url, postgres=self.store, redis=self.redis_url, queue_name=self.queue
        )
        for a in self.adapters:
            await a.aclose()
        with contextlib.suppress(Exception):
            await admin.delete_topology()
        await admin.aclose()
        await self.store.drop_schema()
        await self.store.aclose()
        r = connect(self.redis_url)
        try:
            batch = [k async for k in r.scan_iter(match=f"{self.prefix}*", count=500)]
            if batch:
                await r.unlink(*batch)
        finally:
            await r.aclose()


@pytest.fixture
async def rabbit(
    rabbitmq_url: str, postgres_url: str, redis_url: str, unique_prefix: str
) -> AsyncIterator[RabbitBackend]:
    """A fresh slice of the servers for one test."""
    b = RabbitBackend(rabbitmq_url, postgres_url, redis_url, unique_prefix)
    try:
        yield b
    finally:
        await b.cleanup()


__all__ = ["RabbitBackend", "rabbit"]
