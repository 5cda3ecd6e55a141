"""Worker-process side of the Kafka SIGKILL tests (imported by spawned processes).

The worker is opened from a backend URL (``FC_WORKER_URL``, a ``kafka://...?redis=...`` URL)
through the ``flowcraft.backends`` entry point, exactly as ``flowcraft worker`` does.
"""

from __future__ import annotations

import asyncio
import os

from flowcraft.distributed.backends import run_worker
from flowcraft.testing.killable import BLUEPRINT, REGISTRY, install_kill_point
from kafka_support import fast_consumer_config


def worker_main() -> None:
    """Entry point of a worker process; may SIGKILL itself at a configured step point."""
    install_kill_point()
    if os.environ.get("FC_WORKER_LOG"):  # debugging: one log file per worker process
        import logging

        logging.basicConfig(
            filename=os.path.join(os.environ["FC_TEST_DIR"], f"worker-{os.getpid()}.log"),
            level=logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )

    async def main() -> None:
        adapter = await run_worker(
            os.environ["FC_WORKER_URL"],
            registry=REGISTRY,
            blueprints=[BLUEPRINT],
            concurrency=4,
            lease_seconds=0.6,
            consumer_config=fast_consumer_config(),
            redelivery_timeout=0.5,
            revoke_timeout=2.0,
        )
        await adapter.aclose()  # type: ignore[attr-defined]

    asyncio.run(main())
