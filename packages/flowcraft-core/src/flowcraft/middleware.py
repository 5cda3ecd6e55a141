"""Middleware: hooks around every node execution.

Order for ``middleware=[m1, m2]`` (an onion, the first registered outermost)::

    m1.around(in) -> m2.around(in) -> m1.before -> m2.before -> node (all attempts)
      -> m1.after -> m2.after -> m2.around(out) -> m1.around(out)

``before_node``/``after_node`` run inside the innermost ``around_node``, in registration order;
``after_node`` always runs, with the result or the error. An ``around_node`` may return a
different result than ``call_next()`` gave, may catch an error from ``call_next()`` and return a
result instead, or may return without calling ``call_next()`` at all (short-circuit).
Hooks run once per node execution; retries happen inside them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .nodes import NodeContext, NodeResult

CallNext = Callable[[], Awaitable[NodeResult]]


class Middleware:
    """Base class with no-op hooks; override the ones you need."""

    async def before_node(self, ctx: NodeContext) -> None:
        """Called before the node runs."""

    async def after_node(
        self, ctx: NodeContext, result: NodeResult | None, error: BaseException | None
    ) -> None:
        """Called after the node ran, with its result or its error."""

    async def around_node(self, ctx: NodeContext, call_next: CallNext) -> NodeResult:
        """Wrap the node; return ``await call_next()`` or a replacement result."""
        return await call_next()


def _overrides(mw: Any, name: str) -> bool:
    fn = getattr(mw, name, None)
    if fn is None:
        return False
    base = getattr(Middleware, name)
    return getattr(fn, "__func__", None) is not base


def compose(
    middleware: Sequence[Any], run: Callable[[NodeContext], Awaitable[NodeResult]]
) -> Callable[[NodeContext], Awaitable[NodeResult]]:
    """Wrap ``run`` in the middleware chain; returns ``run`` itself when there is none.

    Any object with some of the three hook methods works (duck typing).
    """
    if not middleware:
        return run
    befores = [m.before_node for m in middleware if _overrides(m, "before_node")]
    afters = [m.after_node for m in middleware if _overrides(m, "after_node")]
    arounds = [m.around_node for m in middleware if _overrides(m, "around_node")]

    async def core(ctx: NodeContext) -> NodeResult:
        for b in befores:
            await b(ctx)
        result: NodeResult | None = None
        error: BaseException | None = None
        try:
            result = await run(ctx)
            return result
        except BaseException as exc:
            error = exc
            raise
        finally:
            for a in afters:
                await a(ctx, result, error)

    chain: Callable[[NodeContext], Awaitable[NodeResult]] = core
    for around in reversed(arounds):
        chain = _wrap(around, chain)
    return chain


def _wrap(
    around: Callable[[NodeContext, CallNext], Awaitable[NodeResult]],
    inner: Callable[[NodeContext], Awaitable[NodeResult]],
) -> Callable[[NodeContext], Awaitable[NodeResult]]:
    async def layer(ctx: NodeContext) -> NodeResult:
        return await around(ctx, lambda: inner(ctx))

    return layer
