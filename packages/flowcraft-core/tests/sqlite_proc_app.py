"""Worker-process side of the SQLite SIGKILL tests (imported by spawned processes)."""

from __future__ import annotations

import asyncio

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
        )

    asyncio.run(main())
