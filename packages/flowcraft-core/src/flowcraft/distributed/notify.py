"""Waiting for runs to end without polling: one backend subscription fanned out to waiters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator

log = logging.getLogger("flowcraft.distributed")


class FinalResultWatcher(ABC):
    """Fans one subscription (Redis pub/sub, PostgreSQL LISTEN, ...) out to the tasks waiting
    for particular runs to become final.

    Subclasses implement :meth:`listen`: one subscription session that sets ``ready`` once
    subscribed and calls :meth:`notify` per announced run id, raising when the connection is
    lost. The watcher resubscribes and wakes every waiter so it re-checks the run's status.
    """

    ready_timeout: float = 10.0

    def __init__(self) -> None:
        self._waiting: dict[str, list[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None

    @abstractmethod
    async def listen(self, ready: asyncio.Event) -> None:
        """Subscribe, set ``ready``, then call :meth:`notify` for every announced run."""

    def notify(self, run_id: str) -> None:
        """Wake the waiters of ``run_id``."""
        for ev in self._waiting.get(run_id, ()):
            ev.set()

    @contextlib.asynccontextmanager
    async def watch(self, run_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set when ``run_id`` may have become final (re-check its status)."""
        ev = asyncio.Event()
        self._waiting.setdefault(run_id, []).append(ev)
        try:
            if self._task is None or self._task.done():
                self._ready = asyncio.Event()
                self._task = asyncio.create_task(self._run(self._ready), name="flowcraft-final")
            assert self._ready is not None
            await asyncio.wait_for(self._ready.wait(), self.ready_timeout)
            yield ev
        finally:
            evs = self._waiting.get(run_id, [])
            if ev in evs:
                evs.remove(ev)
            if not evs:
                self._waiting.pop(run_id, None)

    async def _run(self, ready: asyncio.Event) -> None:
        while True:
            try:
                await self.listen(ready)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("final-result subscription lost; resubscribing", exc_info=True)
            for evs in self._waiting.values():
                for ev in evs:
                    ev.set()  # waiters re-check the run's status
            await asyncio.sleep(0.2)

    async def aclose(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
