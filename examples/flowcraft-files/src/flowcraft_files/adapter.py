"""The adapter: queue and stores put together on ``BaseDistributedAdapter``, and ``from_url``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

from flowcraft.distributed import (
    BaseDistributedAdapter,
    Capabilities,
    Delivery,
    JobHandler,
    JobPayload,
    PollingConsumer,
    parse_url,
)

from .queue import FileQueue
from .store import (
    FileCoordinationStore,
    FileRunContext,
    active_runs,
    layout,
    run_path,
    write_atomic,
)


class FilesAdapter(BaseDistributedAdapter):
    """A worker (or client) on a backend directory; one per process, any number of processes
    on one machine (a local filesystem: ``flock`` and ``rename`` must be reliable)."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        delayed_delivery=True,  # a message's visible-at time is in its file name
        multi_process=True,
        redelivery_on_crash=True,  # a claim runs out after the visibility timeout
        dead_letter=True,  # dead/<id>.json
    )

    def __init__(
        self,
        root: str | Path,
        *,
        concurrency: int = 8,
        visibility_timeout: float = 30.0,
        poll_interval: tuple[float, float] = (0.005, 0.1),
        **kwargs: Any,
    ) -> None:
        self.root = layout(root)
        self.queue = FileQueue(self.root, visibility_timeout)
        kwargs.setdefault("coordination_store", FileCoordinationStore(self.root))
        super().__init__(**kwargs)
        self.concurrency = concurrency
        self.poll_interval = poll_interval

    async def create_context(self, run_id: str) -> FileRunContext:
        """See BaseDistributedAdapter."""
        return FileRunContext(self.root, run_id)

    async def enqueue_job(
        self, job: JobPayload, *, delay: float = 0.0, options: Mapping[str, Any] | None = None
    ) -> None:
        """See BaseDistributedAdapter."""
        await asyncio.to_thread(self.queue.put, job.to_json(), delay)

    async def publish_final_result(self, run_id: str, result: Mapping[str, Any]) -> None:
        """Keep the result in ``results/`` (clients wait by reading the run's status)."""
        text = json.dumps(dict(result), ensure_ascii=False)
        path = run_path(self.root, run_id, folder="results")
        await asyncio.to_thread(write_atomic, self.root, path, text)

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """See BaseDistributedAdapter (reads every run file)."""
        ids = await asyncio.to_thread(active_runs, self.root, cursor or "", limit + 1)
        return ids[:limit], (ids[limit - 1] if len(ids) > limit else None)

    async def process_jobs(self, handler: JobHandler) -> None:
        """Claim and handle jobs until :meth:`stop`, up to ``concurrency`` at once."""
        await PollingConsumer(
            self,
            self._receive,
            concurrency=self.concurrency,
            idle=self.poll_interval,
            handler=handler,
        ).run()

    async def _receive(self, n: int) -> list[Delivery]:
        claimed = await asyncio.to_thread(self.queue.claim, n)
        return [Delivery(body, claim, count) for claim, body, count in claimed]

    # The delivery primitives: the engine decides what happens to a message, these do it.

    def delivery_lease_seconds(self) -> float:
        """How long a claimed message stays hidden: the engine keeps the ones it handles so."""
        return self.queue.visibility_timeout

    async def extend_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        """Keep these messages hidden (the engine's heartbeat and keeper call this)."""
        for d in deliveries:
            await asyncio.to_thread(self.queue.move, d.message, self.queue.visibility_timeout)

    async def ack(self, delivery: Delivery) -> None:
        """Delete the message."""
        await asyncio.to_thread(self.queue.ack, delivery.message)

    async def redeliver(self, delivery: Delivery, delay: float) -> None:
        """Make the message visible again after ``delay`` seconds."""
        await asyncio.to_thread(self.queue.move, delivery.message, delay)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to ``dead/`` with ``reason``."""
        body = delivery.body
        raw = body if isinstance(body, bytes) else str(body).encode("utf-8")
        await asyncio.to_thread(self.queue.dead_letter, delivery.message, raw, reason)


def from_url(url: str, **kwargs: Any) -> FilesAdapter:
    """The ``files`` scheme of ``--backend`` (entry point in the ``flowcraft.backends`` group):
    ``files:///path/to/dir?concurrency=4&visibility_timeout=30``; the query wins over
    ``kwargs``."""
    u = parse_url(
        url,
        {"concurrency": ("concurrency", int), "visibility_timeout": ("visibility_timeout", float)},
        schemes={"files": "files"},
        passthrough=False,
        kwargs=kwargs,
    )
    if u.netloc or not u.path:
        raise ValueError(f"backend URL {url!r}: expected files:///absolute/path or files:path")
    return FilesAdapter(unquote(u.path), **u.kwargs)
