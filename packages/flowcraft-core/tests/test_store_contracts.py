"""The store contract suites against the embedded stores: in memory
(:mod:`flowcraft.distributed.memory`) and SQLite (:mod:`flowcraft.distributed.sqlite`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from flowcraft.context import PatchOperation
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


def _set(key: str, value: object) -> PatchOperation:
    return PatchOperation("set", key, value)


async def test_sqlite_reads_only_the_rows_written_since_a_version(
    sqlite_connections: Callable[[], SqliteBackend],
) -> None:
    """A reader that saw version N gets exactly the keys written or deleted after it; a
    reader of version 0 (or of a version the run never reached) gets every live key; the
    lease is taken with the read, and a held lease reads nothing."""
    ctx = SqliteRunContext(sqlite_connections(), "r")
    assert await ctx.commit([_set("a", 1), _set("b", [1]), _set("c", "x")], 0)
    full = await ctx.load_since(0, "", ("L", "t1", 30.0))
    assert full is not None
    assert (full.version, full.full, full.sets, full.deletes) == (
        1,
        True,
        {"a": 1, "b": [1], "c": "x"},
        (),
    )
    assert await ctx.load_since(0, "", ("L", "t2", 30.0)) is None  # held by t1
    assert await ctx.commit([_set("b", [1, 2]), PatchOperation("delete", "c")], 1)
    assert await ctx.commit([_set("d", None), PatchOperation("delete", "never")], 2)
    ch = await ctx.load_since(1, "")
    assert ch is not None
    assert (ch.version, ch.full, ch.sets, ch.deletes) == (
        3,
        False,
        {"b": [1, 2], "d": None},
        ("c",),
    )
    same = await ctx.load_since(3, "")
    assert same is not None
    assert (same.full, same.sets, same.deletes) == (False, {}, ())
    ahead = await ctx.load_since(9, "")
    assert ahead is not None
    assert (ahead.full, ahead.sets) == (True, {"a": 1, "b": [1, 2], "d": None})
    assert (await ctx.load()).data == {"a": 1, "b": [1, 2], "d": None}
    assert not await ctx.has("c")
    assert await ctx.get("c", "gone") == "gone"
    # a deleted key written again is live again
    assert await ctx.commit([_set("c", "back")], 3)
    again = await ctx.load_since(3, "")
    assert again is not None
    assert (again.sets, again.deletes) == ({"c": "back"}, ())


async def test_sqlite_file_of_an_earlier_version_is_migrated(tmp_path: Path) -> None:
    """A database whose ``fc_ctx`` has no ``ver`` column gains it when opened; its runs read
    whole, and later commits are read incrementally."""
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE fc_ctx (run_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, "
        "PRIMARY KEY (run_id, key)) WITHOUT ROWID;"
        "CREATE TABLE fc_runs (run_id TEXT PRIMARY KEY, version INTEGER NOT NULL, "
        "status TEXT NOT NULL, updated_at REAL NOT NULL);"
        "INSERT INTO fc_ctx VALUES ('old', 'a', '1'), ('old', 'b', '2');"
        "INSERT INTO fc_runs VALUES ('old', 4, 'running', 0);"
    )
    conn.commit()
    conn.close()
    backend = SqliteBackend(path)
    try:
        ctx = SqliteRunContext(backend, "old")
        whole = await ctx.load_since(0, "")
        assert whole is not None
        assert (whole.version, whole.full, whole.sets) == (4, True, {"a": 1, "b": 2})
        assert await ctx.commit([_set("c", 3)], 4)
        later = await ctx.load_since(4, "")
        assert later is not None
        assert (later.version, later.full, later.sets) == (5, False, {"c": 3})
    finally:
        backend.close()


async def test_sqlite_file_of_a_newer_layout_is_refused(tmp_path: Path) -> None:
    """A process whose code knows an older layout than the file's stops with an error naming
    both versions instead of misreading what newer processes wrote."""
    import sqlite3

    from flowcraft.distributed.sqlite import SCHEMA_VERSION

    path = tmp_path / "newer.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    backend = SqliteBackend(path)
    try:
        with pytest.raises(RuntimeError, match=f"layout version {SCHEMA_VERSION + 1} is newer"):
            await SqliteRunContext(backend, "r").load()
    finally:
        backend.close()
