"""Running one node: attempts, per-attempt timeouts, backoff, and the class-node lifecycle."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from .blueprint import NodeConfig
from .errors import FlowcraftError, InvalidNodeResultError, NodeTimeoutError
from .nodes import BaseNode, NodeContext, NodeResult, coerce_result

log = logging.getLogger("flowcraft.executor")

OnRetry = Callable[[int, float, BaseException], None]
Sleep = Callable[[float], Awaitable[None]]


def retry_delay(config: NodeConfig, failed_attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failed_attempt`` failed: backoff from ``retryDelay``, capped,
    with proportional jitter."""
    base = config.retry_delay / 1000.0
    if base <= 0:
        return 0.0
    d = base * (2 ** (failed_attempt - 1)) if config.backoff == "exponential" else base
    cap = config.max_retry_delay / 1000.0
    d = min(d, cap)
    if config.jitter:
        r = (rng or random).uniform(-config.jitter, config.jitter)
        d = min(max(d * (1.0 + r), 0.0), cap)
    return d


def is_fatal(exc: BaseException) -> bool:
    """Errors that must not be retried: fatal Flowcraft errors and invalid node results."""
    return isinstance(exc, InvalidNodeResultError) or (
        isinstance(exc, FlowcraftError) and exc.is_fatal
    )


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    r = fn(*args)
    if inspect.isawaitable(r):
        r = await r
    return r


async def _attempts(
    ctx: NodeContext,
    config: NodeConfig,
    call: Callable[[], Awaitable[Any]],
    first: int,
    last: int,
    on_retry: OnRetry | None,
    sleep: Sleep,
) -> Any:
    timeout = config.timeout / 1000.0 if config.timeout else None
    attempt = first
    while True:
        ctx.attempt = attempt
        try:
            if timeout is None:
                return await call()
            try:
                async with asyncio.timeout(timeout) as cm:
                    return await call()
            except TimeoutError as exc:
                if cm.expired():
                    raise NodeTimeoutError(
                        f"node {ctx.node_id!r} attempt {attempt} timed out after "
                        f"{config.timeout:g} ms",
                        node_id=ctx.node_id,
                    ) from exc
                raise
        except Exception as exc:
            if is_fatal(exc) or attempt >= last:
                raise
            delay = retry_delay(config, attempt)
            if on_retry is not None:
                on_retry(attempt, delay, exc)
            if delay > 0:
                await sleep(delay)
            attempt += 1


async def run_function(
    fn: Callable[[NodeContext], Any],
    ctx: NodeContext,
    config: NodeConfig,
    *,
    first_attempt: int = 1,
    last_attempt: int | None = None,
    on_retry: OnRetry | None = None,
    sleep: Sleep = asyncio.sleep,
) -> NodeResult:
    """Call a function node, retrying the whole call; returns its coerced result."""
    last = config.max_retries if last_attempt is None else last_attempt
    raw = await _attempts(ctx, config, lambda: _call(fn, ctx), first_attempt, last, on_retry, sleep)
    return coerce_result(raw, ctx.node_id)


async def run_class(
    cls: type[BaseNode],
    ctx: NodeContext,
    config: NodeConfig,
    *,
    first_attempt: int = 1,
    last_attempt: int | None = None,
    on_retry: OnRetry | None = None,
    sleep: Sleep = asyncio.sleep,
) -> NodeResult:
    """Run a class node: ``prep`` once, ``exec`` with retries, ``fallback`` after the final
    attempt (only when this is the node's last allowed attempt), then ``post``; ``recover`` on
    an unrecovered error."""
    last = config.max_retries if last_attempt is None else last_attempt
    inst = cls(ctx.params, ctx.node_id)
    try:
        prep = await inst.prep(ctx)
        try:
            res = await _attempts(
                ctx, config, lambda: inst.exec(prep, ctx), first_attempt, last, on_retry, sleep
            )
        except Exception as exc:
            if is_fatal(exc) or ctx.attempt < ctx.max_attempts:
                raise  # fatal: no recovery; non-final: a queue will retry

            res = await inst.fallback(exc, ctx)
        return coerce_result(await inst.post(res, ctx), ctx.node_id)
    except Exception as exc:
        try:
            await inst.recover(exc, ctx)
        except Exception:
            log.exception("recover() of node %r raised", ctx.node_id)
        raise
