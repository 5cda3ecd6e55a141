"""The run-store contract suite against :class:`flowcraft_kafka.cassandra.CassandraRunStore`.

Needs Cassandra >= 2.0 (lightweight transactions, static columns): ``FLOWCRAFT_TEST_CASSANDRA_URL``
or a testcontainers ``cassandra:5.0``; the GitHub job ``kafka-cassandra`` runs it. Without
either it is skipped, saying so (a failure under ``CI`` on a machine with Docker).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from flowcraft.testing.conformance import RunStoreSuite
from flowcraft_kafka.cassandra import CassandraRunContext, CassandraRunStore
from kafka_support import cassandra_contact

pytestmark = pytest.mark.needs_services


@pytest.fixture(scope="module")
def cassandra_hostport() -> Iterator[tuple[str, int]]:
    """A Cassandra >= 2.0 for this module (see :func:`kafka_support.cassandra_contact`)."""
    hostport, stop = cassandra_contact()
    yield hostport
    if stop is not None:
        stop()


class TestCassandraRunStore(RunStoreSuite):
    """Lightweight-transaction commits on one partition per run."""

    @pytest.fixture
    async def context_factory(
        self, cassandra_hostport: tuple[str, int], unique_prefix: str
    ) -> AsyncIterator[Callable[[str], CassandraRunContext]]:
        """Contexts of runs in fresh tables (prefix per test)."""
        host, port = cassandra_hostport
        store = await CassandraRunStore.connect(
            [host], "flowcraft_test", port=port, prefix=unique_prefix
        )
        try:
            yield store.context
        finally:
            await store.aclose()


async def test_active_runs_are_listed_by_shard_without_filtering(
    cassandra_hostport: tuple[str, int], unique_prefix: str
) -> None:
    """Runs committed with a running status are listed (paged), final ones are not."""
    from flowcraft import PatchOperation

    host, port = cassandra_hostport
    store = await CassandraRunStore.connect(
        [host], "flowcraft_test", port=port, prefix=unique_prefix, shards=4
    )
    try:
        ids = [f"run-{i}" for i in range(7)]
        for rid in ids:
            assert await store.context(rid).commit([PatchOperation("set", "x", 1)], 0, "running")
        assert await store.context("run-3").commit([], 1, "completed")
        seen: list[str] = []
        cursor: Any = None
        while True:
            page, cursor = await store.list_active_runs(cursor, 2)
            seen.extend(page)
            if cursor is None:
                break
        assert sorted(seen) == sorted(r for r in ids if r != "run-3")
        assert await store.read_status("run-3") == "completed"
        assert await store.read_status("nope") is None
    finally:
        await store.aclose()
