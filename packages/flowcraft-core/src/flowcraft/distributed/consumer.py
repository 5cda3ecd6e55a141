"""The consume loop of a pull queue, written once: concurrency slots, batched receives, idle
and error backoff, and a draining shutdown.

An adapter for a queue that is polled (SQLite, SQS, Azure Storage Queues, a Pub/Sub pull
subscription, an HTTP pull API) supplies only ``receive(n)``: up to ``n`` messages as
:class:`~flowcraft.distributed.delivery.Delivery` objects. Each one is handled in its own
task with :meth:`~flowcraft.distributed.worker.WorkerLayer.process_delivery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .delivery import Delivery, JobHandler

if TYPE_CHECKING:
    from .adapter import BaseDistributedAdapter

log = logging.getLogger("flowcraft.distributed")

Receive = Callable[[int], Awaitable[Sequence[Delivery]]]
"""Receive up to ``n`` messages (may wait for them; may return none)."""


class PollingConsumer:
    """Consume a pull queue for ``engine`` until it stops.

    ``receive(n)`` is asked for at most ``min(free slots, batch)`` messages. ``idle`` is the
    (first, longest) pause after an empty receive, doubling in between (use ``(0, 0)`` when
    ``receive`` waits for messages itself, as a long poll does). ``error_backoff`` is the same
    for a receive that raised (a broker or database outage): logged, then retried, never a hot
    loop. ``cancel_on_stop``: a long poll in progress is cancelled by :meth:`engine.stop()
    <flowcraft.distributed.base.EngineBase.stop>` instead of running out. ``wake``: an event the
    adapter sets when work may have arrived (a notification, a doorbell); an idle pause ends
    at once when it is set, so the idle poll is only a safety net.
    """

    def __init__(
        self,
        engine: BaseDistributedAdapter,
        receive: Receive,
        *,
        concurrency: int,
        batch: int | None = None,
        idle: tuple[float, float] = (0.0, 0.0),
        error_backoff: tuple[float, float] = (0.05, 5.0),
        cancel_on_stop: bool = False,
        handler: JobHandler | None = None,
        wake: asyncio.Event | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.engine = engine
        self.receive = receive
        self.concurrency = concurrency
        self.batch = max(1, min(batch or concurrency, concurrency))
        self.idle = idle
        self.error_backoff = error_backoff
        self.cancel_on_stop = cancel_on_stop
        self.handler = handler
        self.wake = wake
        self.tasks: set[asyncio.Task[Any]] = set()
        self.receive_errors = 0
        """Receives that raised, in a row (0 after a good one)."""

    async def run(self) -> None:
        """Receive and handle messages until the engine stops; then wait for the jobs in
        progress. Cancelling this coroutine cancels them too (a forced shutdown)."""
        engine = self.engine
        free = asyncio.Semaphore(self.concurrency)
        stop = engine.stop_event()
        pause = self.idle[0]
        try:
            while not engine.stopping:
                await free.acquire()
                slots = 1
                while slots < self.batch and not free.locked():
                    await free.acquire()
                    slots += 1
                try:
                    msgs = await self._receive(slots, stop)
                except Exception as exc:
                    for _ in range(slots):
                        free.release()
                    self.receive_errors += 1
                    lo, hi = self.error_backoff
                    wait = min(lo * 2 ** min(self.receive_errors - 1, 30), hi)
                    log.warning("receiving jobs failed (%s); retrying in %.2f s", exc, wait)
                    await self._sleep(wait, stop)
                    continue
                self.receive_errors = 0
                for _ in range(slots - len(msgs)):
                    free.release()
                if not msgs:
                    if pause > 0:
                        woken = await self._idle(pause, stop)
                        pause = self.idle[0] if woken else min(pause * 2, self.idle[1])
                    continue
                pause = self.idle[0]
                for d in msgs:
                    self._start(d, free)
            if self.tasks:
                await asyncio.gather(*list(self.tasks), return_exceptions=True)
        except asyncio.CancelledError:
            for t in list(self.tasks):
                t.cancel()
            raise

    async def _receive(self, n: int, stop: asyncio.Event) -> Sequence[Delivery]:
        if not self.cancel_on_stop:
            return await self.receive(n)
        poll = asyncio.ensure_future(self.receive(n))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({poll, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if poll.done():
            return poll.result()
        poll.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await poll
        return ()

    async def _idle(self, seconds: float, stop: asyncio.Event) -> bool:
        """Pause after an empty receive; True when :attr:`wake` ended it early."""
        wake = self.wake
        if wake is None:
            await self._sleep(seconds, stop)
            return False
        if not wake.is_set():
            waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
            try:
                await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        woken = wake.is_set()
        wake.clear()
        return woken

    @staticmethod
    async def _sleep(seconds: float, stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    def _start(self, d: Delivery, free: asyncio.Semaphore) -> None:
        t = asyncio.create_task(self.engine.process_delivery(d, self.handler))
        self.tasks.add(t)

        def done(t: asyncio.Task[Any]) -> None:
            self.tasks.discard(t)
            free.release()
            if not t.cancelled() and t.exception() is not None:
                # e.g. SimulatedCrash: the job died unsettled; the broker redelivers it.
                log.warning("job task died: %r", t.exception())

        t.add_done_callback(done)


__all__ = ["PollingConsumer", "Receive"]
