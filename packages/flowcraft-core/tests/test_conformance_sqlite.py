"""The adapter conformance suite run against the SQLite backend (``SqliteAdapter``).

Workers here are in-process adapters, each with its own connection to the database file; the
SIGKILL tests with real processes are in ``test_sqlite_processes.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flowcraft.distributed.adapter import BaseDistributedAdapter
from flowcraft.distributed.sqlite import SqliteAdapter, SqliteBackend
from flowcraft.testing.conformance import AdapterConformanceSuite


@dataclass
class SqliteFile:
    """One test's database file and the backends (connections) opened on it."""

    path: str
    backends: list[SqliteBackend] = field(default_factory=list)

    def open(self) -> SqliteBackend:
        b = SqliteBackend(self.path, visibility_timeout=0.3)
        self.backends.append(b)
        return b


class TestSqliteConformance(AdapterConformanceSuite):
    """Every conformance scenario on a fresh database file per test, every node a queued job
    (``inline_successors=0``; the class below runs them with inline successors)."""

    adapter_class = SqliteAdapter
    worker_kwargs = {"inline_successors": 0}

    @pytest.fixture
    async def backend(self, tmp_path: Path) -> AsyncIterator[SqliteFile]:
        """A fresh database file; every connection opened on it is closed afterwards."""
        f = SqliteFile(str(tmp_path / "flowcraft.db"))
        yield f
        for b in f.backends:
            b.close()

    async def make_worker(
        self, backend: Any, runtime_options: dict[str, Any], **adapter_kwargs: Any
    ) -> BaseDistributedAdapter:
        """A worker with its own connection to the test's database file."""
        return SqliteAdapter(
            backend.open(),
            runtime_options=runtime_options,
            poll_interval=0.002,
            max_poll_interval=0.02,
            **adapter_kwargs,
        )

    async def enqueue_raw(self, backend: Any, body: str) -> bool:
        """Insert ``body`` into the queue table as is."""
        await backend.open().put(body)
        return True

    async def dead_letters(self, backend: Any) -> list[str] | None:
        """Rows of ``fc_dead`` as ``body + reason`` text."""
        return [f"{body} {reason}" for body, reason in await backend.open().dead_letters()]

    def write_counters(self, backend: Any) -> tuple[int, int]:
        """Commits and bytes written, summed over every connection of the test."""
        return (
            sum(b.commits for b in backend.backends),
            sum(b.bytes_written for b in backend.backends),
        )


class TestSqliteInlineConformance(TestSqliteConformance):
    """The same scenarios with inline successors (up to 8 per delivered job): the commit takes
    the successor's lease in the same transaction, and the worker runs it next."""

    worker_kwargs = {"inline_successors": 8}
