"""Helpers shared by the conformance suite's feature modules (and usable by adapter tests):
test-side capability requirements, result comparison, polling."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from ...distributed.adapter import BaseDistributedAdapter
from ...distributed.contracts import JobPayload
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


def assert_requeues_do_not_multiply(jobs: Iterable[JobPayload], max_rounds: int) -> None:
    """Duplicates do not multiply enqueues. ``jobs`` are the enqueued jobs
    (``FaultInjector.enqueued``) of runs under duplicate delivery.

    * Round 0 (a job's own enqueues): at most 3 per distinct job. A duplicate of a finished
      node publishes nothing; only a message the broker redelivered republishes (upstream
      re-published every queued successor: 96,723 enqueues for 102 nodes).
    * Requeues of copies that found the node leased by a twin: the engine sends on one per
      round (the others are dropped), for at most ``max_rounds`` rounds (the delivery
      policy's ``max_deliveries``), so no round of a job has more enqueues than the round
      before it; their number grows with how long a twin holds the lease, never with the
      number of copies. Copies a broker redelivered (``recover``) are exempt: they carry a
      recovery duty (and are deduplicated by delivery count instead)."""
    rounds = Counter((j.job_id, j.requeues) for j in jobs if not (j.requeues and j.recover))
    own = {job: n for (job, k), n in rounds.items() if not k}
    assert sum(own.values()) <= 3 * len(own), f"own enqueues per job: {own}"
    grown = sorted(
        (job, k, n, rounds[job, k - 1])
        for (job, k), n in rounds.items()
        if k and n > rounds[job, k - 1]
    )
    assert not grown, (
        "requeue rounds with more enqueues than the round before (job, round, enqueues, "
        f"before): {grown[:10]}"
    )
    too_long = sorted(k for k in rounds if k[1] > max_rounds)
    assert not too_long, f"requeued past {max_rounds} rounds: {too_long[:10]}"


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
