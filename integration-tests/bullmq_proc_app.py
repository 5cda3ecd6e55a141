"""Worker-process side of the BullMQ SIGKILL tests (imported by spawned processes).

The workflow, its nodes and the kill switches (environment variables) are
:mod:`flowcraft.testing.killable`.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from flowcraft.distributed.backends import run_worker
from flowcraft.testing.killable import BLUEPRINT, REGISTRY, install_kill_point

ADAPTER_OPTIONS: dict[str, Any] = {
    "lease_seconds": 0.6,
    "lock_duration": 1.0,
    "stalled_interval": 0.5,
}
"""Short leases and locks so a killed worker's job is redelivered within about 2 s."""


def worker_main(url: str) -> None:
    """Entry point of a worker process: ``run_worker`` on the ``redis://`` backend URL (the
    entry point of flowcraft-bullmq), SIGKILLing itself at the configured step point. Writes
    ``ready-<pid>`` once SIGTERM means "stop gracefully"."""
    install_kill_point()

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        (Path(os.environ["FC_TEST_DIR"]) / f"ready-{os.getpid()}").touch()
        await run_worker(
            url,
            registry=REGISTRY,
            blueprints=[BLUEPRINT],
            concurrency=4,
            stop=stop,
            **ADAPTER_OPTIONS,
        )

    asyncio.run(main())
