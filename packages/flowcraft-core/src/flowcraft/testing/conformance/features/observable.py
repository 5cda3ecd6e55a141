"""Observable: what a polling client sees matches the in-memory run at every point.

A parent run is ``awaiting`` only while its subflow child awaits something a client can resume
(not as soon as the child starts), and batches under duplicate delivery cost a bounded number
of enqueues.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ....blueprint import load_blueprint
from ....nodes import NodeContext, NodeResult
from .. import scenarios as sc
from ..base import SuiteBase
from ..faults import FaultInjector
from ..helpers import assert_requeues_do_not_multiply, assert_same_result, in_memory

BATCH_ITEMS = 50


def _slow_child_then_wait() -> sc.Scenario:
    """``parent``: one subflow node ``sub`` running ``child``: ``work`` (300 ms) -> ``review``
    (a wait) -> ``done``."""

    async def work(ctx: NodeContext) -> NodeResult:
        await asyncio.sleep(0.3)
        return NodeResult("worked")

    async def done(ctx: NodeContext) -> NodeResult:
        return NodeResult(f"done:{ctx.input}")

    child = {
        "id": "child",
        "nodes": [
            {"id": "work", "uses": "work"},
            {"id": "review", "uses": "wait"},
            {"id": "done", "uses": "done"},
        ],
        "edges": [{"source": "work", "target": "review"}, {"source": "review", "target": "done"}],
    }
    parent = {
        "id": "parent",
        "nodes": [{"id": "sub", "uses": "subflow", "params": {"blueprintId": "child"}}],
        "edges": [],
    }
    return sc.Scenario(
        [load_blueprint(child), load_blueprint(parent)],
        {"work": work, "done": done},
        sc.Probe(),
    )


def _batch() -> tuple[sc.Scenario, list[Any]]:
    """``batch``: 50 items in chunks of 8 over ``item`` (x2), gathered into ``out``; and the
    list of inputs the item worker ran with."""
    ran: list[Any] = []

    async def item(ctx: NodeContext) -> NodeResult:
        ran.append(ctx.input)
        return NodeResult(ctx.input * 2)

    bp = {
        "id": "batch",
        "nodes": [
            {
                "id": "scatter",
                "uses": "batch-scatter",
                "inputs": "nums",
                "params": {"workerUsesKey": "item", "gatherNodeId": "gather", "chunkSize": 8},
            },
            {"id": "gather", "uses": "batch-gather", "params": {"outputKey": "out"}},
        ],
        "edges": [{"source": "scatter", "target": "gather"}],
    }
    return sc.Scenario([load_blueprint(bp)], {"item": item}, sc.Probe()), ran


class ObservableTests(SuiteBase):
    """Status timelines and enqueue costs a client can observe."""

    async def test_parent_awaits_only_once_its_child_awaits(self, backend: Any) -> None:
        """While the child runs its first node the parent is ``running`` (not ``awaiting``);
        it turns ``awaiting`` when the child reaches its wait, ``resume(parent)`` then reaches
        the child, and the parent completes: the timeline a polling client sees is
        running -> awaiting -> (resume) -> completed, as in memory."""
        s = _slow_child_then_wait()
        seen: list[str] = []
        async with self.cluster(backend, s) as c:
            rid = await c.start_run("parent")
            while True:
                st = await c.status(rid)
                if not seen or seen[-1] != st.status:
                    seen.append(st.status)
                if st.status == "awaiting":
                    assert st.node_statuses == {"sub": "awaiting"}
                    break
                assert st.status == "running", seen
                await asyncio.sleep(0.01)
            await c.client.resume(rid, output="ok")
            res = await c.result(rid, timeout=self.scenario_timeout)
        assert seen == ["running", "awaiting"]
        assert res.status == "completed"
        assert res.node_statuses == {"sub": "completed"}
        mem = await in_memory(_slow_child_then_wait(), "parent")
        assert (mem.status, mem.node_statuses) == ("awaiting", {"sub": "awaiting"})

    async def test_running_parent_cannot_be_resumed_yet(self, backend: Any) -> None:
        """A client that resumes too early gets a clear error and the run is unharmed."""
        s = _slow_child_then_wait()
        async with self.cluster(backend, s) as c:
            rid = await c.start_run("parent")
            st = await c.status(rid)
            assert st.status == "running"
            await c.wait_until(rid, lambda x: x.status == "awaiting", "awaiting")
            await c.client.resume(rid, output="ok")
            res = await c.result(rid, timeout=self.scenario_timeout)
        assert res.status == "completed"

    async def test_batch_under_duplicate_delivery_is_bounded(self, backend: Any) -> None:
        """50 items in chunks of 8, every enqueue delivered twice: same result as in memory,
        every item ran (a few at most twice), and duplicates do not multiply enqueues."""
        s, ran = _batch()
        faults = FaultInjector(seed=3).duplicate(2)
        nums = list(range(BATCH_ITEMS))
        kwargs: dict[str, Any] = {
            "lease_seconds": max(self.lease_seconds, self.steady_lease_seconds)
        }
        kwargs.update(self.delivered_duplicates_kwargs())
        async with self.cluster(backend, s, faults=faults, **kwargs) as c:
            res = await c.run("batch", {"nums": nums})
            rounds = c.client.delivery_policy.max_deliveries
        assert res.status == "completed"
        assert res.context["out"] == [n * 2 for n in nums]
        assert sorted(set(ran)) == nums  # at-least-once execution, as in the storm test
        assert len(ran) - len(nums) <= len(nums) // 5, sorted(ran)
        assert_requeues_do_not_multiply((e.job for e in faults.enqueued), rounds)
        assert_same_result(res, await in_memory(_batch()[0], "batch", {"nums": nums}))
