"""Keeping received messages hidden while this worker handles them.

Brokers with a visibility timeout or ack deadline (SQS, Azure Storage Queues, Pub/Sub pull)
hand a message to another worker once it runs out. The engine's heartbeat extends it while a
node runs; the :class:`DeliveryKeeper` covers the rest of the handling (receive to node, commit
to ack, a long group commit), batching every message due into one
:meth:`~flowcraft.distributed.base.EngineBase.extend_deliveries` call. An adapter opts in by
returning its lease from ``delivery_lease_seconds()`` and implementing ``extend_deliveries``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence

from .delivery import Delivery

log = logging.getLogger("flowcraft.distributed")

Extend = Callable[[Sequence[Delivery]], Awaitable[None]]
"""Extends the given messages by the adapter's lease (one batched call where possible)."""


class DeliveryKeeper:
    """Tracks the deliveries being handled and extends every one that has been held for half
    its lease. Runs a task only while something is tracked."""

    def __init__(self, extend: Extend) -> None:
        self._extend = extend
        self._inflight: dict[int, Delivery] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._inflight)

    @contextlib.contextmanager
    def tracking(self, delivery: Delivery, lease: float | None) -> Iterator[None]:
        """Keep ``delivery`` hidden while inside; nothing when ``lease`` is None."""
        if lease is None:
            yield
            return
        self._inflight[id(delivery)] = delivery
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(lease), name="flowcraft-keepalive")
        try:
            yield
        finally:
            self._inflight.pop(id(delivery), None)
            if not self._inflight and self._task is not None:
                self._task.cancel()
                self._task = None

    async def _run(self, lease: float) -> None:
        period = max(lease / 4, 0.2)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            due = [
                d
                for d in self._inflight.values()
                if not d.settled and now - d.extended_at >= lease / 2
            ]
            if not due:
                continue
            for d in due:
                d.extended_at = now
            try:
                await self._extend(due)
            except Exception:
                log.exception("extending the lease of %d message(s) failed", len(due))


async def heartbeat(delivery: Delivery, lease: float | None, extend: Extend) -> None:
    """The node heartbeat's part: extend ``delivery`` when a third of its lease has passed."""
    if lease is None or delivery.settled:
        return
    now = time.monotonic()
    if now - delivery.extended_at >= lease / 3:
        delivery.extended_at = now
        await extend([delivery])
