"""Worker-process side of the SQLite SIGKILL tests (imported by spawned processes)."""

from __future__ import annotations

import asyncio
import os

from flowcraft.distributed.backends import run_worker
from flowcraft.testing.killable import BLUEPRINT, REGISTRY, install_kill_point


def worker_main(db: str) -> None:
    """Entry point of a worker process; may SIGKILL itself at a configured commit point."""
    install_kill_point()

    async def main() -> None:
        await run_worker(
            f"sqlite:{db}",
            registry=REGISTRY,
            blueprints=[BLUEPRINT],
            concurrency=4,
            stop=asyncio.Event(),
            lease_seconds=0.6,
            visibility_timeout=0.8,
            # every node a queued job unless a test asks for inline successors: the commit
            # points under test are those of queued deliveries
            inline_successors=int(os.environ.get("FC_INLINE", "0")),
        )

    asyncio.run(main())
