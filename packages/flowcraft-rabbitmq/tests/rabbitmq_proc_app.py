"""Worker-process side of the RabbitMQ SIGKILL tests (imported by spawned processes).

The worker is opened from a backend URL (``FC_WORKER_URL``, an ``amqp://...?postgres=...``
URL) through the ``flowcraft.backends`` entry point, exactly as ``flowcraft worker`` does.
"""

from __future__ import annotations

import asyncio
import os

from flowcraft.distributed.backends import run_worker
from flowcraft.testing.killable import BLUEPRINT, REGISTRY, install_kill_point


def worker_main() -> None:
    """Entry point of a worker process; may SIGKILL itself at a configured step point."""
    install_kill_point()

    async def main() -> None:
        adapter = await run_worker(
            os.environ["FC_WORKER_URL"],
            registry=REGISTRY,
            blueprints=[BLUEPRINT],
            concurrency=4,
            lease_seconds=0.6,
            reconnect_interval=0.2,
        )
        await adapter.aclose()  # type: ignore[attr-defined]

    asyncio.run(main())
