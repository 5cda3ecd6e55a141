"""At-least-once delivery: duplicated, late and reordered jobs, worker crashes at every step
point (also inside inline successors), a slow node keeping its lease."""

from __future__ import annotations

from typing import Any

import pytest

from ....distributed.adapter import BaseDistributedAdapter
from ....distributed.contracts import JobPayload
from .. import scenarios as sc
from ..base import SuiteBase
from ..faults import STEP_POINTS, FaultInjector
from ..helpers import (
    DELIVERY_POINTS,
    INLINE_POINTS,
    assert_same_result,
    in_memory,
    requires,
    until,
)


class FaultTests(SuiteBase):
    """Duplicates, late delivery, crashes and leases."""

    # == 7/8. duplicate and late delivery =======================================================

    async def _duplicated_fan(self, backend: Any, faults: FaultInjector, times: int) -> None:
        """Run ``fan`` with ``faults`` duplicating jobs ``times`` times (every copy delivered:
        :meth:`~SuiteBase.duplicate_delivery_kwargs`); the result must be exact."""
        s = sc.fan(count_keys=True)
        deliveries: dict[str, int] = {}

        def seen(point: str, job: JobPayload | None, adapter: BaseDistributedAdapter) -> None:
            if point == "after_receive" and job is not None:
                deliveries[job.node_id] = deliveries.get(job.node_id, 0) + 1

        faults.observe(seen)
        kwargs = self.delivered_duplicates_kwargs()
        async with self.cluster(backend, s, faults=faults, **kwargs) as c:
            res = await c.run("fan")
            # Let late copies arrive: they must change nothing. (Nodes run as inline
            # successors had no job of their own.)
            await until(
                lambda: all(deliveries.get(e.job.node_id, 0) >= times for e in faults.enqueued),
                f"{times} deliveries of every job",
            )
        assert res.status == "completed"
        assert res.node_statuses == {n: "completed" for n in sc.FAN_NODES}
        assert res.context == {**sc.FAN_CONTEXT, **{f"ran.{n}": 1 for n in sc.FAN_NODES}}
        assert s.probe.counts() == {n: 1 for n in sc.FAN_NODES}
        final = await c.client.get_result(res.execution_id)
        assert final.context == res.context
        assert final.node_statuses == res.node_statuses
        assert c.published[res.execution_id] == ["completed"]
        assert_same_result(res, await in_memory(sc.fan(count_keys=True), "fan"))

    @pytest.mark.parametrize(("times", "latency"), [(2, 0.0), (3, 0.0), (2, 0.02), (3, 0.02)])
    async def test_duplicate_delivery(self, backend: Any, times: int, latency: float) -> None:
        """Every job enqueued 2 or 3 times (also with a slow run store, which widens the gap
        between reading a run and acting on it): same result, every node and join ran once."""
        faults = FaultInjector(seed=times).duplicate(times)
        if latency:
            faults.latency(latency)
        await self._duplicated_fan(backend, faults, times)

    @pytest.mark.parametrize("seed", [1, 2])
    async def test_late_reordered_duplicates(self, backend: Any, seed: int) -> None:
        """Jobs and their duplicates delivered late and out of order: same result."""
        await self._duplicated_fan(backend, FaultInjector(seed=seed).late(0.15, times=2), 2)

    # == 9. crashes =============================================================================

    @requires("redelivery_on_crash")
    @pytest.mark.parametrize("point", STEP_POINTS)
    async def test_crash_at_step_point(self, backend: Any, point: str) -> None:
        """A worker dies at ``point`` while processing the fan-in node ``mid``: the run
        completes exactly; ``mid`` ran twice only when it died between executing and
        committing, and every node's context writes were committed exactly once."""
        s = sc.crashy()
        faults = FaultInjector().crash("mid", point)
        # Receiving and enqueueing are steps of a delivered job: make ``mid`` one.
        jobs_only: dict[str, Any] = {"inline_successors": 0} if point in DELIVERY_POINTS else {}
        async with self.cluster(backend, s, faults=faults, **jobs_only) as c:
            res = await c.run("crashy")
        assert [(p, n) for p, n, _ in faults.crashes] == [(point, "mid")]
        assert res.status == "completed"
        assert res.node_statuses == {n: "completed" for n in sc.CRASH_NODES}
        assert res.context == sc.CRASHY_CONTEXT
        twice = point in ("after_execute", "before_commit")
        assert s.probe.counts() == {n: 2 if n == "mid" and twice else 1 for n in sc.CRASH_NODES}
        assert c.published[res.execution_id] == ["completed"]
        assert_same_result(res, await in_memory(sc.crashy(), "crashy"))

    @requires("redelivery_on_crash")
    async def test_crash_after_final_commit_still_publishes(self, backend: Any) -> None:
        """The worker committing the run's final state dies before publishing: the redelivery
        publishes the result (once) and waiting clients get it."""
        s = sc.crashy()
        faults = FaultInjector().crash("end", "after_commit")
        async with self.cluster(backend, s, faults=faults) as c:
            res = await c.run("crashy")
            # A client polling the store may see the final status before the repair publishes.
            await until(lambda: res.execution_id in c.published, "the result to be published")
        assert [(p, n) for p, n, _ in faults.crashes] == [("after_commit", "end")]
        assert res.status == "completed"
        assert res.context == sc.CRASHY_CONTEXT
        assert s.probe.counts() == {n: 1 for n in sc.CRASH_NODES}
        assert c.published[res.execution_id] == ["completed"]

    @requires("redelivery_on_crash")
    async def test_crash_after_commit_keeps_routing(self, backend: Any) -> None:
        """A node routed by an action dies after its commit: the redelivery enqueues only the
        branch the committed action chose (the action is not lost on replay: A6)."""
        s = sc.branches()
        faults = FaultInjector().crash("check", "after_commit")
        # Every node a job: an inline successor's lease, taken with the commit, would be
        # held by the dead delivery (test_crash_in_inline_successor covers that).
        async with self.cluster(backend, s, faults=faults, inline_successors=0) as c:
            res = await c.run("branches", {"route": "no"})
        assert [(p, n) for p, n, _ in faults.crashes] == [("after_commit", "check")]
        assert res.status == "completed"
        assert res.node_statuses == {
            "check": "completed",
            "yes": "skipped",
            "yes_end": "skipped",
            "no": "completed",
            "no_end": "completed",
        }
        assert s.probe.counts() == {"check": 1, "no": 1, "no_end": 1}
        # The crash came before the enqueue: only the redelivery's repair sent 'no'.
        assert [j.node_id for j in faults.jobs_for("no")] == ["no"]
        assert faults.jobs_for("yes") == []

    @requires("redelivery_on_crash")
    @pytest.mark.parametrize("point", INLINE_POINTS)
    async def test_crash_in_inline_successor(self, backend: Any, point: str) -> None:
        """A worker dies at ``point`` while running ``b`` as an inline successor of ``a``'s
        job: the redelivered job of ``a`` finds the queued work behind the finished nodes and
        the run completes exactly (``b`` ran twice only when it died before committing)."""
        s = sc.linear()
        faults = FaultInjector().crash("b", point)
        async with self.cluster(backend, s, faults=faults, inline_successors=8) as c:
            res = await c.run("linear", {"start": 0})
        assert [(p, n) for p, n, _ in faults.crashes] == [(point, "b")]
        assert res.status == "completed"
        assert res.context["_outputs.c"] == "c:2"
        assert res.context["b.seen"] is True
        twice = point in ("after_execute", "before_commit")
        assert s.probe.counts() == {"a": 1, "b": 2 if twice else 1, "c": 1}
        assert c.published[res.execution_id] == ["completed"]
        assert_same_result(res, await in_memory(sc.linear(), "linear", {"start": 0}))

    # == 10. slow node ==========================================================================

    async def test_slow_node_keeps_its_lease(self, backend: Any) -> None:
        """A node running longer than its lease keeps it by heartbeat: duplicates of its job
        delivered meanwhile never run it a second time."""
        s = sc.slow(seconds=max(0.8, self.lease_seconds * 3))
        deliveries: list[str] = []

        def seen(point: str, job: JobPayload | None, adapter: BaseDistributedAdapter) -> None:
            if point == "after_receive" and job is not None and job.node_id == "slow":
                deliveries.append(adapter.worker_id)

        faults = (
            FaultInjector(seed=3)
            .late(self.lease_seconds * 2, times=3, nodes=["slow"], delay_original=False)
            .observe(seen)
        )
        kwargs = self.delivered_duplicates_kwargs()
        async with self.cluster(backend, s, faults=faults, inline_successors=0, **kwargs) as c:
            res = await c.run("slow")
        assert res.status == "completed"
        assert res.context == {
            "_outputs.s": "S",
            "_outputs.slow": "SLOW",
            "_outputs.after": "after:SLOW",
        }
        assert s.probe.counts() == {"s": 1, "slow": 1, "after": 1}
        assert len(deliveries) >= 3
