"""Durable timers for ``sleep`` nodes: a pluggable timer store and a scheduler that resumes runs.

Every run or resume that ends awaiting on a sleep registers a timer (so a run with two sleeps,
or a sleep inside a loop, keeps being resumed: upstream bug B11). The scheduler claims a due
timer before resuming it, and puts it back if the resume raises.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .runtime import FlowRuntime, WorkflowResult

log = logging.getLogger("flowcraft.scheduler")


@dataclass(frozen=True)
class Timer:
    """A sleeping node of an awaiting run, due at ``wake_at`` (epoch seconds)."""

    execution_id: str
    blueprint_id: str
    node_id: str
    wake_at: float
    state: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        """Identity of the timer: one per (run, node)."""
        return (self.execution_id, self.node_id)


@runtime_checkable
class TimerStore(Protocol):
    """Where timers live; implement it on a database to survive restarts."""

    async def add(self, timer: Timer) -> None:
        """Store (or replace) the timer for ``timer.key``."""
        ...

    async def claim_due(self, now: float, limit: int = 100) -> list[Timer]:
        """Remove and return up to ``limit`` timers due at ``now``, earliest first."""
        ...

    async def remove(self, execution_id: str, node_id: str) -> None:
        """Forget a timer (e.g. the node was resumed by hand)."""
        ...


class InMemoryTimerStore:
    """Process-local :class:`TimerStore` (lost on restart)."""

    def __init__(self) -> None:
        self._timers: dict[tuple[str, str], Timer] = {}

    async def add(self, timer: Timer) -> None:
        """See :meth:`TimerStore.add`."""
        self._timers[timer.key] = timer

    async def claim_due(self, now: float, limit: int = 100) -> list[Timer]:
        """See :meth:`TimerStore.claim_due`."""
        due = sorted(
            (t for t in self._timers.values() if t.wake_at <= now), key=lambda t: t.wake_at
        )
        due = due[:limit]
        for t in due:
            del self._timers[t.key]
        return due

    async def remove(self, execution_id: str, node_id: str) -> None:
        """See :meth:`TimerStore.remove`."""
        self._timers.pop((execution_id, node_id), None)

    def __len__(self) -> int:
        return len(self._timers)


ResultCallback = Callable[["WorkflowResult"], Awaitable[None] | None]


class WorkflowScheduler:
    """Polls a timer store and resumes due sleeps on a runtime.

    Results are kept by execution id; :meth:`result` awaits the final one of a run.
    """

    def __init__(
        self,
        runtime: FlowRuntime,
        *,
        interval: float = 0.5,
        on_result: ResultCallback | None = None,
    ) -> None:
        if runtime.timer_store is None:
            raise ValueError("the runtime needs a timer_store for the scheduler to use")
        self.runtime = runtime
        self.store: TimerStore = runtime.timer_store
        self.interval = interval
        self.on_result = on_result
        self.results: dict[str, WorkflowResult] = {}
        self._waiters: dict[str, list[asyncio.Future[WorkflowResult]]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling in the background."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop polling (a resume in progress finishes first)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("scheduler tick failed")
            await asyncio.sleep(self.interval)

    async def tick(self, now: float | None = None) -> int:
        """Resume every due timer once; returns how many were resumed."""
        timers = await self.store.claim_due(time.time() if now is None else now)
        for t in timers:
            try:
                bp = self.runtime.get_blueprint(t.blueprint_id)
                result = await self.runtime.resume(bp, t.state, t.node_id)
            except Exception:
                log.exception("resuming %s/%s failed; timer kept", t.execution_id, t.node_id)
                await self.store.add(t)
                continue
            self.results[t.execution_id] = result
            if result.status != "awaiting":
                for f in self._waiters.pop(t.execution_id, []):
                    if not f.done():
                        f.set_result(result)
            if self.on_result is not None:
                r = self.on_result(result)
                if r is not None:
                    await r
        return len(timers)

    async def result(self, execution_id: str, timeout: float | None = None) -> WorkflowResult:
        """Wait until the run ``execution_id`` stops awaiting, and return its result."""
        have = self.results.get(execution_id)
        if have is not None and have.status != "awaiting":
            return have
        fut: asyncio.Future[WorkflowResult] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(execution_id, []).append(fut)
        return await asyncio.wait_for(fut, timeout)
