"""Structured events: every event names its run, carries a timestamp and a per-run sequence."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

log = logging.getLogger("flowcraft.events")

EVENT_TYPES: Final = (
    "workflow:start",
    "workflow:resume",
    "workflow:stall",
    "workflow:pause",
    "workflow:finish",
    "node:start",
    "node:finish",
    "node:error",
    "node:fallback",
    "node:retry",
    "node:skipped",
    "node:awaiting",
    "edge:evaluate",
    "context:change",
    "batch:start",
    "batch:finish",
    "job:enqueued",
    "job:processed",
    "job:failed",
)
"""Every event type the engine and the distributed adapters emit."""


@dataclass(frozen=True, slots=True)
class FlowcraftEvent:
    """One event: ``type`` (e.g. ``node:finish``), its ``payload``, and where/when it happened."""

    type: str
    payload: dict[str, Any]
    execution_id: str
    timestamp: float
    seq: int
    blueprint_id: str = ""

    def to_wire(self) -> dict[str, Any]:
        """JSON form: ``{type, payload}`` with executionId/timestamp/seq in the payload too."""
        return {
            "type": self.type,
            "seq": self.seq,
            "timestamp": self.timestamp,
            "payload": {
                "executionId": self.execution_id,
                "blueprintId": self.blueprint_id,
                **self.payload,
            },
        }


@runtime_checkable
class EventBus(Protocol):
    """Receives events; ``emit`` may return an awaitable, which the engine awaits."""

    def emit(self, event: FlowcraftEvent) -> Awaitable[None] | None:
        """Handle one event. Exceptions are logged by the engine and never fail a run."""
        ...


Listener = Callable[[FlowcraftEvent], Awaitable[None] | None]


@dataclass
class ListenerBus:
    """An :class:`EventBus` that fans each event out to subscribed callables."""

    listeners: list[Listener] = field(default_factory=list)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; returns a function that removes it."""
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    async def emit(self, event: FlowcraftEvent) -> None:
        """Call every listener in subscription order; a failing listener is logged."""
        for fn in list(self.listeners):
            try:
                r = fn(event)
                if r is not None:
                    await r
            except Exception:
                log.exception("event listener failed on %s", event.type)
