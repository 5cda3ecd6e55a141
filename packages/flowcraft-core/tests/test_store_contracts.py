"""The store contract suites against the embedded stores: in memory
(:mod:`flowcraft.distributed.memory`) and SQLite (:mod:`flowcraft.distributed.sqlite`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from flowcraft.distributed.memory import InMemoryCoordinationStore, MemoryBroker, MemoryRunContext
from flowcraft.distributed.sqlite import SqliteBackend, SqliteCoordinationStore, SqliteRunContext
from flowcraft.testing.conformance import CoordinationStoreSuite, RunStoreSuite


class TestInMemoryCoordinationStore(CoordinationStoreSuite):
    """The coordination store of the in-memory backend."""

    @pytest.fixture
    def store(self) -> InMemoryCoordinationStore:
        """A fresh store."""
        return InMemoryCoordinationStore()


class TestInMemoryRunStore(RunStoreSuite):
    """Run contexts in a :class:`MemoryBroker`."""

    @pytest.fixture
    def context_factory(self) -> Callable[[str], MemoryRunContext]:
        """Contexts of one fresh broker."""
        broker = MemoryBroker()
        return lambda run_id: MemoryRunContext(broker, run_id)


@pytest.fixture
def sqlite_connections(tmp_path: Path) -> Iterator[Callable[[], SqliteBackend]]:
    """Opens connections to one fresh database file; all are closed afterwards."""
    opened: list[SqliteBackend] = []

    def connect() -> SqliteBackend:
        b = SqliteBackend(tmp_path / "stores.db")
        opened.append(b)
        return b

    yield connect
    for b in opened:
        b.close()


class TestSqliteCoordinationStore(CoordinationStoreSuite):
    """The coordination table of a SQLite database."""

    @pytest.fixture
    async def store(
        self, sqlite_connections: Callable[[], SqliteBackend]
    ) -> AsyncIterator[SqliteCoordinationStore]:
        """A store on a fresh database file."""
        yield SqliteCoordinationStore(sqlite_connections())


class TestSqliteRunStore(RunStoreSuite):
    """Run contexts in a SQLite database, one connection per context."""

    @pytest.fixture
    def context_factory(
        self, sqlite_connections: Callable[[], SqliteBackend]
    ) -> Callable[[str], SqliteRunContext]:
        """Each context on its own connection to a fresh database file."""
        return lambda run_id: SqliteRunContext(sqlite_connections(), run_id)
