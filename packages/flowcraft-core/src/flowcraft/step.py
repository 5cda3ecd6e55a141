"""One step of a run, shared by the in-memory runtime and the distributed engine.

A step executes one :class:`~flowcraft.kernel.Activation` (``FlowRuntime.execute_step``) and
applies its outcome with the kernel (``FlowRuntime.apply_outcome``). The runtime drives steps in
one process; the distributed engine runs one step per job and commits what it changed. Both use
the same :class:`RunFrame` and outcome tags defined here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .context import InMemoryContext, PatchOperation
from .events import EventBus, FlowcraftEvent
from .kernel import Activation, Kernel
from .nodes import NodeImplementation
from .plan import Plan
from .state import RunState

log = logging.getLogger("flowcraft.runtime")

OK, ERR, AWAIT, SCATTER = 0, 1, 2, 3
"""Outcome tags of executing one activation: ``(OK, NodeResult)``, ``(ERR, error record)``,
``(AWAIT, awaiting details)``, ``(SCATTER, batch scatter)``."""


@dataclass(slots=True)
class ServedOutcome:
    """A recorded outcome used in place of running a node (:func:`flowcraft.replay.replay_from`).

    ``kind`` ``finish`` (``value`` is a :class:`NodeResult`), ``error`` (an error record dict),
    ``awaiting`` (the awaiting details) or ``input`` (the node does run, with ``value`` as its
    input). ``writes`` are ``(op, key, value)`` context changes re-applied before the outcome.
    """

    kind: Literal["finish", "error", "awaiting", "input"]
    value: Any = None
    writes: list[tuple[str, str, Any]] = field(default_factory=list)


Serve = Callable[[Activation], ServedOutcome | None]
"""Hook asked before each activation executes; None means "execute it normally"."""


class RunFrame:
    """Mutable bookkeeping of one run while steps execute: plan, state, context, kernel,
    registry, events, and what the distributed engine records (context deltas, the attempt
    window of a queue-delegated retry)."""

    __slots__ = (
        "attempt_window",
        "blueprint",
        "bus",
        "cancel_requested",
        "concurrency",
        "ctx",
        "deltas",
        "deps",
        "driver",
        "kernel",
        "pending",
        "plain",
        "plan",
        "registry",
        "running",
        "serve",
        "state",
        "stop_at",
        "via",
    )

    def __init__(
        self,
        plan: Plan,
        state: RunState,
        ctx: InMemoryContext,
        registry: Mapping[str, NodeImplementation],
        bus: EventBus | None,
        concurrency: int,
        deps: Mapping[str, Any],
    ) -> None:
        self.plan = plan
        self.blueprint = plan.blueprint
        self.state = state
        self.ctx = ctx
        self.registry = registry
        self.bus = bus
        self.concurrency = concurrency
        self.deps = deps
        self.pending: list[Awaitable[None]] = []
        self.kernel = Kernel(plan, state, ctx.data, self.emit if bus is not None else None)
        self.running: dict[asyncio.Task[Any], Activation] = {}
        self.cancel_requested = False
        self.driver: asyncio.Task[Any] | None = None
        self.stop_at: frozenset[str] = frozenset()
        # Distributed mode: record every context write as a delta to commit atomically.
        self.deltas: dict[str, PatchOperation] | None = None
        # Nothing observes node executions (no bus, middleware, deltas, attempt window): the
        # runtime sets this for its own runs; other users of RunFrame keep the general path.
        self.plain = False
        # Distributed queue-retry mode: run exactly these attempts (first, last).
        self.attempt_window: tuple[int, int] | None = None
        # replay_from: recorded outcomes served instead of executing nodes.
        self.serve: Serve | None = None
        # Built-in node id -> the executions that activated it (NodeContext.predecessors).
        self.via: dict[str, tuple[str, ...]] = {}

    def write(self, key: str, value: Any, source: str) -> None:
        """A context write made by the engine on behalf of node ``source``."""
        self.ctx.data[key] = value
        if self.deltas is not None:
            self.deltas.pop(key, None)
            self.deltas[key] = PatchOperation("set", key, value)
        if self.bus is not None:
            self.emit(
                "context:change", {"sourceNode": source, "key": key, "op": "set", "value": value}
            )

    def emit(self, type_: str, payload: dict[str, Any]) -> None:
        bus = self.bus
        if bus is None:
            return
        st = self.state
        st.seq += 1
        ev = FlowcraftEvent(type_, payload, st.execution_id, time.time(), st.seq, st.blueprint_id)
        try:
            r = bus.emit(ev)
        except Exception:
            log.exception("event bus failed on %s", type_)
            return
        if r is not None:
            self.pending.append(r)

    async def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, []
            for aw in batch:
                try:
                    await aw
                except Exception:
                    log.exception("event bus failed")


__all__ = ["AWAIT", "ERR", "OK", "SCATTER", "RunFrame", "Serve", "ServedOutcome"]
