"""flowcraft-files against the adapter conformance suite of flowcraft-core (every scenario)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flowcraft.testing.conformance import AdapterConformanceSuite
from flowcraft_files import FileQueue, FilesAdapter, layout


class TestFilesConformance(AdapterConformanceSuite):
    """One fresh backend directory per test; workers are adapters on that directory."""

    adapter_class = FilesAdapter

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Path:
        """The test's backend directory (the adapters share it, as worker processes would)."""
        return layout(tmp_path / "backend")

    async def make_worker(
        self, backend: Path, runtime_options: dict[str, Any], **adapter_kwargs: Any
    ) -> FilesAdapter:
        """A worker with a short visibility timeout, so crashed jobs come back quickly."""
        return FilesAdapter(
            backend,
            runtime_options=runtime_options,
            visibility_timeout=0.3,
            poll_interval=(0.002, 0.02),
            **adapter_kwargs,
        )

    async def enqueue_raw(self, backend: Path, body: str) -> bool:
        """Put ``body`` on the queue as it is."""
        FileQueue(backend, 0.3).put(body)
        return True

    async def dead_letters(self, backend: Path) -> list[str]:
        """Every dead letter as ``body reason``."""
        return [f"{d['body']} {d['reason']}" for d in FileQueue(backend, 0.3).dead_letters()]
