"""Helpers shared by the conformance suite's feature modules (and usable by adapter tests):
test-side capability requirements, result comparison, polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ...distributed.adapter import BaseDistributedAdapter
from ...runtime import FlowRuntime, WorkflowResult
from . import scenarios as sc
from .faults import STEP_POINTS

F = TypeVar("F", bound=Callable[..., Any])

REQUIRES_ATTR = "__conformance_requires__"
"""Attribute :func:`requires` sets on a test function: the capabilities it needs."""

DELIVERY_POINTS = ("after_receive", "between_enqueues")
"""Step points of a delivered job only (an inline successor is not received or enqueued)."""

INLINE_POINTS = tuple(p for p in STEP_POINTS if p not in DELIVERY_POINTS)
"""Step points a node running as an inline successor passes."""


def requires(*capabilities: str) -> Callable[[F], F]:
    """Mark a test as needing ``Capabilities`` fields (truthy) or, written ``extra:<flag>``,
    a truthy ``Capabilities.extra[<flag>]``; it is skipped otherwise."""

    def deco(fn: F) -> F:
        setattr(fn, REQUIRES_ATTR, (*getattr(fn, REQUIRES_ATTR, ()), *capabilities))
        return fn

    return deco


def missing_capabilities(adapter_class: type[Any], needs: tuple[str, ...]) -> list[str]:
    """The entries of ``needs`` (``field`` or ``extra:<flag>``) that ``adapter_class``'s
    ``capabilities`` do not declare, written as ``Capabilities.<field>`` /
    ``Capabilities.extra['<flag>']``."""
    caps = adapter_class.capabilities
    missing = []
    for need in needs:
        if need.startswith("extra:"):
            flag = need[len("extra:") :]
            if not (caps.extra or {}).get(flag):
                missing.append(f"Capabilities.extra[{flag!r}]")
        elif not getattr(caps, need):
            missing.append(f"Capabilities.{need}")
    return missing


def assert_same_result(actual: WorkflowResult, expected: WorkflowResult) -> None:
    """Distributed and in-memory results agree on status, context, node statuses, errors."""
    assert actual.status == expected.status
    assert actual.node_statuses == expected.node_statuses
    assert actual.context == expected.context
    assert [(e.node_id, e.message) for e in actual.errors] == [
        (e.node_id, e.message) for e in expected.errors
    ]


async def in_memory(
    scenario: sc.Scenario, blueprint_id: str, initial: Mapping[str, Any] | None = None
) -> WorkflowResult:
    """Run ``blueprint_id`` of ``scenario`` with the in-memory :class:`FlowRuntime`."""
    rt = FlowRuntime(registry=scenario.registry, blueprints=scenario.blueprints)
    return await rt.run(rt.get_blueprint(blueprint_id), dict(initial or {}))


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` every 5 ms; AssertionError naming ``what`` after ``timeout`` s."""
    limit = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > limit:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.005)


def queue_retries(adapter: BaseDistributedAdapter) -> None:
    """A ``Cluster(configure=...)`` function delegating every node's retries to the queue
    (``should_retry_in_process`` False), whatever the adapter's constructor options."""
    adapter.should_retry_in_process = lambda node: False  # type: ignore[method-assign]


__all__ = [
    "DELIVERY_POINTS",
    "INLINE_POINTS",
    "REQUIRES_ATTR",
    "assert_same_result",
    "in_memory",
    "missing_capabilities",
    "queue_retries",
    "requires",
    "until",
]
