"""Small, generic test utilities: a recorder of node executions and a one-call flow runner.

Import from a test module with ``from helpers import Recorder, run_flow``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowcraft import Flow, FlowRuntime, NodeContext, NodeResult, WorkflowResult

__all__ = ["ECHO", "NODE_ID", "Call", "Recorder", "run_flow"]


class _Marker:
    """A named sentinel for :meth:`Recorder.node` outputs."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NODE_ID: Any = _Marker("NODE_ID")
"""Output sentinel: the node returns its own node id (the default)."""

ECHO: Any = _Marker("ECHO")
"""Output sentinel: the node returns its input unchanged."""


@dataclass(frozen=True)
class Call:
    """One recorded execution of a node."""

    node_id: str
    input: Any
    iteration: int
    attempt: int
    error: Any = None


@dataclass
class Recorder:
    """Builds node functions that log their executions, in order, into this recorder.

    ``calls`` lists every execution as it started; ``log`` interleaves ``("start", id)`` and
    ``("finish", id)`` entries; ``max_active`` is the largest number of recorded nodes that
    were running at the same moment.
    """

    calls: list[Call] = field(default_factory=list)
    log: list[tuple[str, str]] = field(default_factory=list)
    active: int = 0
    max_active: int = 0

    def node(
        self,
        output: Any = NODE_ID,
        *,
        action: str | Callable[[NodeContext], str | None] | None = None,
        delay: float | Callable[[NodeContext], float] = 0.0,
        yields: int | Callable[[NodeContext], int] = 0,
        error: BaseException | str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Callable[[NodeContext], Any]:
        """A node function that records its call and returns ``NodeResult(output, action)``.

        ``output`` is a value, :data:`NODE_ID` (default), :data:`ECHO`, or a callable taking
        the :class:`NodeContext`. ``action`` is a string or a callable of the context.
        Before returning the node sleeps ``delay`` seconds (a number, or a callable of the
        context), then yields ``yields`` times (likewise) to
        the event loop (``asyncio.sleep(0)``); it then writes ``context`` into the workflow
        context and raises ``error`` (a string becomes ``RuntimeError``) when given.
        """

        async def recorded(ctx: NodeContext) -> NodeResult:
            self.calls.append(Call(ctx.node_id, ctx.input, ctx.iteration, ctx.attempt, ctx.error))
            self.log.append(("start", ctx.node_id))
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            try:
                seconds = delay(ctx) if callable(delay) else delay
                if seconds:
                    await asyncio.sleep(seconds)
                for _ in range(yields(ctx) if callable(yields) else yields):
                    await asyncio.sleep(0)
                for key, value in (context or {}).items():
                    await ctx.context.set(key, value)
                if error is not None:
                    raise RuntimeError(error) if isinstance(error, str) else error
                if output is NODE_ID:
                    out = ctx.node_id
                elif output is ECHO:
                    out = ctx.input
                elif callable(output):
                    out = output(ctx)
                else:
                    out = output
                act = action(ctx) if callable(action) else action
                return NodeResult(out, act)
            finally:
                self.active -= 1
                self.log.append(("finish", ctx.node_id))

        return recorded

    @property
    def order(self) -> list[str]:
        """Node ids in the order their executions started."""
        return [c.node_id for c in self.calls]

    def inputs(self, node_id: str) -> list[Any]:
        """The inputs of every execution of ``node_id``, in order."""
        return [c.input for c in self.calls if c.node_id == node_id]

    def count(self, node_id: str) -> int:
        """How many times ``node_id`` was executed."""
        return sum(1 for c in self.calls if c.node_id == node_id)

    def finished(self) -> list[str]:
        """Node ids in the order their executions finished."""
        return [n for kind, n in self.log if kind == "finish"]


async def run_flow(
    flow: Flow,
    initial: Mapping[str, Any] | None = None,
    *,
    runtime: FlowRuntime | None = None,
    **kwargs: Any,
) -> WorkflowResult:
    """Build ``flow`` and run it with its own registry on ``runtime`` (a fresh one by default)."""
    rt = runtime or FlowRuntime()
    return await rt.run(flow.to_blueprint(), initial, registry=flow.registry, **kwargs)
