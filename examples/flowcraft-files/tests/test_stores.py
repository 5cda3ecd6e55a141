"""The run store and the coordination store of flowcraft-files against the store contract
suites of flowcraft-core (no queue, no workers)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flowcraft.testing.conformance import CoordinationStoreSuite, RunStoreSuite
from flowcraft_files import FileCoordinationStore, FileRunContext, layout


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh backend directory."""
    return layout(tmp_path / "backend")


class TestFileCoordinationStore(CoordinationStoreSuite):
    """Coordination keys as files under one lock."""

    @pytest.fixture
    def store(self, root: Path) -> FileCoordinationStore:
        """A store on a fresh directory."""
        return FileCoordinationStore(root)


class TestFileRunStore(RunStoreSuite):
    """One JSON file per run, committed under the run's lock."""

    @pytest.fixture
    def context_factory(self, root: Path) -> Callable[[str], FileRunContext]:
        """Contexts of runs in a fresh directory."""
        return lambda run_id: FileRunContext(root, run_id)
