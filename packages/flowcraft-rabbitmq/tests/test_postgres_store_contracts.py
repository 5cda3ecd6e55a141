"""The run-store contract suite against :class:`flowcraft_rabbitmq.PostgresRunStore`, on the
PostgreSQL server of flowcraft-core's pytest plugin (``postgres_url``: an env URL,
testcontainers or a throwaway local cluster). Each test uses its own schema, dropped
afterwards. (RabbitMQ deployments keep coordination in Redis: see
``packages/flowcraft-core/tests/test_redis_store_contracts.py``.)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from flowcraft.testing.conformance import RunStoreSuite
from flowcraft_rabbitmq import PostgresRunStore
from flowcraft_rabbitmq.postgres import PostgresRunContext


class TestPostgresRunStore(RunStoreSuite):
    """Run contexts in PostgreSQL; every context from its own store (own pool, own
    in-process commit gates), so concurrent commits meet in the database."""

    @pytest.fixture
    async def context_factory(
        self, postgres_url: str, unique_prefix: str
    ) -> AsyncIterator[Callable[[str], PostgresRunContext]]:
        """Contexts on a fresh, migrated schema."""
        stores = [PostgresRunStore(postgres_url, schema=unique_prefix, max_size=2)]
        await stores[0].migrate()

        def context(run_id: str) -> PostgresRunContext:
            s = PostgresRunStore(postgres_url, schema=unique_prefix, min_size=0, max_size=1)
            stores.append(s)
            return s.context(run_id)

        try:
            yield context
        finally:
            for s in stores[1:]:
                await s.aclose()
            await stores[0].drop_schema()
            await stores[0].aclose()
