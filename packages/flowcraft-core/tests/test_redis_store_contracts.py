"""The store contract suites against the shared Redis stores of :mod:`flowcraft.redis`
(``RedisCoordinationStore`` and ``RedisRunContext``), on the Redis server of flowcraft-core's
pytest plugin (``redis_url``: an env URL, testcontainers or a throwaway ``redis-server``).
Every test uses its own key prefix and deletes its keys afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from flowcraft.redis import RedisCoordinationStore, RedisRunContext, RedisStateStore, connect
from flowcraft.testing.conformance import CoordinationStoreSuite, RunStoreSuite


@pytest.fixture
async def redis_stores(
    redis_url: str, unique_prefix: str
) -> AsyncIterator[Callable[[], RedisStateStore]]:
    """Makes state stores (each a separate "worker": its own run cache) on one fresh prefix;
    closes them and deletes the prefix's keys afterwards."""
    client = connect(redis_url)
    made: list[RedisStateStore] = []

    def make() -> RedisStateStore:
        s = RedisStateStore(client, prefix=f"{unique_prefix}:", shards=2)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            await s.aclose()
        keys: list[Any] = [k async for k in client.scan_iter(match=f"{unique_prefix}:*")]
        if keys:
            await client.unlink(*keys)
        await client.aclose()


class TestRedisCoordinationStore(CoordinationStoreSuite):
    """``SET NX PX``, ``INCR`` + ``PEXPIRE`` and compare-and-delete scripts."""

    @pytest.fixture
    def store(self, redis_stores: Callable[[], RedisStateStore]) -> RedisCoordinationStore:
        """The coordination store of a fresh prefix."""
        return redis_stores().coordination


class TestRedisRunStore(RunStoreSuite):
    """A run's hash, committed by a compare-and-set script on its version field."""

    @pytest.fixture
    def context_factory(
        self, redis_stores: Callable[[], RedisStateStore]
    ) -> Callable[[str], RedisRunContext]:
        """Each context from its own store (own run cache) on one fresh prefix."""
        return lambda run_id: redis_stores().context(run_id)
