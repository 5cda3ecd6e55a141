"""Basics: a linear chain, and inline successors (the worker that commits a node runs the
nodes its commit made ready itself)."""

from __future__ import annotations

from typing import Any

from .. import scenarios as sc
from ..base import SuiteBase
from ..faults import FaultInjector
from ..helpers import (
    assert_same_result,
    in_memory,
)


class BasicsTests(SuiteBase):
    """A linear chain and inline successors."""

    # == 1. linear chain ========================================================================

    async def test_linear_chain(self, backend: Any) -> None:
        """a -> b -> c: exact context, statuses, one execution each; same as in memory."""
        s = sc.linear()
        async with self.cluster(backend, s) as c:
            res = await c.run("linear", {"start": 0})
        assert res.status == "completed"
        assert res.node_statuses == {"a": "completed", "b": "completed", "c": "completed"}
        assert res.context == sc.LINEAR_CONTEXT
        assert res.errors == []
        assert s.probe.counts() == {"a": 1, "b": 1, "c": 1}
        assert c.published[res.execution_id] == ["completed"]
        assert_same_result(res, await in_memory(sc.linear(), "linear", {"start": 0}))

    # == 9b. inline successors ================================================================

    async def test_inline_successors_run_in_the_delivering_worker(self, backend: Any) -> None:
        """With ``inline_successors``, the worker that commits a node runs the node it made
        ready itself: a chain needs one job, with the exact result and one execution each."""
        s = sc.linear()
        faults = FaultInjector()
        async with self.cluster(backend, s, faults=faults, inline_successors=8) as c:
            res = await c.run("linear", {"start": 0})
        assert res.status == "completed"
        assert res.context == sc.LINEAR_CONTEXT
        assert s.probe.counts() == {"a": 1, "b": 1, "c": 1}
        assert [e.job.node_id for e in faults.enqueued] == ["a"]
        assert c.published[res.execution_id] == ["completed"]

    async def test_inline_budget_sends_the_rest_through_the_queue(self, backend: Any) -> None:
        """One inline successor per delivered job at most (``inline_successors=1``): the
        chain alternates a queued job and an inline node."""
        s = sc.linear()
        faults = FaultInjector()
        async with self.cluster(backend, s, faults=faults, inline_successors=1) as c:
            res = await c.run("linear", {"start": 0})
        assert res.status == "completed"
        assert res.context["_outputs.c"] == "c:2"
        assert s.probe.counts() == {"a": 1, "b": 1, "c": 1}
        assert [e.job.node_id for e in faults.enqueued] == ["a", "c"]
