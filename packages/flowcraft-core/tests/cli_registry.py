"""Node implementations for ``test_cli.py``; the CLI imports this file via ``--registry``."""

from __future__ import annotations

from typing import Any

from flowcraft import FatalNodeError, NodeContext, NodeResult, create_flow


async def double(ctx: NodeContext) -> NodeResult:
    """Twice the input."""
    return NodeResult(ctx.input * 2)


async def add_one(ctx: NodeContext) -> NodeResult:
    """The input plus one; also records it in the context as ``last``."""
    await ctx.context.set("last", ctx.input + 1)
    return NodeResult(ctx.input + 1)


async def boom(ctx: NodeContext) -> Any:
    """Always fails, without retries."""
    raise FatalNodeError("kaboom")


REGISTRY = {"double": double, "add_one": add_one, "boom": boom}
"""The registry by ``uses`` key, as a plain mapping."""

FLOW = (
    create_flow("flow-registry")
    .node("a", double, uses="double")
    .node("b", add_one, uses="add_one")
    .edge("a", "b")
)
"""The same implementations carried by a Flow (the CLI uses ``FLOW.registry``)."""

NOT_A_REGISTRY = 42
"""Something that is neither a mapping nor a Flow."""
