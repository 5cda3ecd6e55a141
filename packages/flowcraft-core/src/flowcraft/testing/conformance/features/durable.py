"""Durable primitives: wait and resume, sleep timers, subflows as child runs, batches, loops."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ....errors import ResumeError
from ....runtime import FlowRuntime
from ....state import FINAL_STATUSES
from .. import scenarios as sc
from ..base import SuiteBase
from ..faults import FaultInjector
from ..helpers import (
    assert_same_result,
    in_memory,
    requires,
    until,
)


class DurableTests(SuiteBase):
    """Wait/resume, sleep, subflows, batches, loops."""

    # == 12. wait and resume ====================================================================

    @pytest.mark.parametrize(
        ("action", "taken", "untaken"),
        [("approve", "approve", "reject"), ("reject", "reject", "approve")],
    )
    async def test_wait_resume_routes_on_action(
        self, backend: Any, action: str, taken: str, untaken: str
    ) -> None:
        """``resume(run, node, output, action)`` routes on the action (A7); resuming a run
        that is not awaiting, or a node that is not awaiting, raises ResumeError."""
        s = sc.hitl()
        async with self.cluster(backend, s) as c:
            rid = await c.start_run("hitl")
            st = await c.wait_until(rid, lambda st: st.status == "awaiting", "awaiting")
            assert list(st.awaiting) == ["review"]
            assert st.node_statuses == {
                "s": "completed",
                "review": "awaiting",
                "approve": "pending",
                "reject": "pending",
            }
            with pytest.raises(ResumeError):
                await c.client.resume(rid, "s", output="x")
            await c.client.resume(rid, "review", output="ok", action=action)
            res = await c.result(rid)
            with pytest.raises(ResumeError):
                await c.client.resume(rid, "review", output="again", action=action)
        assert res.status == "completed"
        assert res.node_statuses == {
            "s": "completed",
            "review": "completed",
            taken: "completed",
            untaken: "skipped",
        }
        assert res.context == {
            "_outputs.s": "draft",
            "_outputs.review": "ok",
            f"_outputs.{taken}": {"approve": "approved:ok", "reject": "rejected:ok"}[taken],
        }
        assert s.probe.counts() == {"s": 1, taken: 1}
        mem_s = sc.hitl()
        rt = FlowRuntime(registry=mem_s.registry, blueprints=mem_s.blueprints)
        bp = rt.get_blueprint("hitl")
        mem = await rt.run(bp)
        mem = await rt.resume(bp, mem, "review", output="ok", action=action)
        assert_same_result(res, mem)

    # == 14. sleep ==============================================================================

    @requires("delayed_delivery")
    async def test_sleep_is_a_durable_timer(self, backend: Any) -> None:
        """A 200 ms sleep node awaits a timer and completes without any client action."""
        s = sc.napping(ms=200)
        async with self.cluster(backend, s) as c:
            rid = await c.start_run("napping")
            st = await c.wait_until(rid, lambda st: st.status == "awaiting", "awaiting")
            assert st.awaiting["nap"]["reason"] == "timer"
            assert st.node_statuses == {"s": "completed", "nap": "awaiting", "after": "pending"}
            res = await c.result(rid)
        assert res.status == "completed"
        assert res.node_statuses == {"s": "completed", "nap": "completed", "after": "completed"}
        assert res.context == {"_outputs.s": "S", "_outputs.nap": "S", "_outputs.after": "after:S"}
        assert s.probe.counts() == {"s": 1, "after": 1}

    # == 15. subflows ===========================================================================

    async def _run_parent(self, backend: Any, s: sc.Scenario, bp: str, order: str) -> Any:
        """Run ``bp`` with the child finishing before (``child-first``: the parent's job is
        held before its commit) or after (``parent-first``) the parent node awaits it."""
        gate = asyncio.Event()
        faults = FaultInjector()
        if order == "child-first":
            faults.hold("sub", "before_commit", gate)
        async with self.cluster(backend, s, faults=faults) as c:
            rid = await c.start_run(bp)
            child_id = f"{rid}/sub@0"
            if order == "child-first":
                s.probe.gate("child-go").set()
                await until(lambda: s.probe.count("c1") == 1, "the child to start")
                await c.wait_until(child_id, lambda st: st.status in FINAL_STATUSES, "final")
                gate.set()
            else:
                # The parent node records that it awaits the child (the run itself stays
                # 'running' while the child runs, as in memory).
                for _ in range(2000):
                    stored = (await c.client.get_result(rid)).awaiting.get("sub")
                    if stored is not None:
                        break
                    await asyncio.sleep(0.01)
                assert stored is not None and stored["childRunId"] == child_id
                st = await c.status(rid)
                assert (st.status, st.node_statuses["sub"]) == ("running", "running")
                s.probe.gate("child-go").set()
            res = await c.result(rid)
            child = await c.client.get_result(child_id)
        return res, child

    @pytest.mark.parametrize("order", ["parent-first", "child-first"])
    async def test_subflow_runs_as_child_run(self, backend: Any, order: str) -> None:
        """A subflow node starts a child run; the child's output becomes the node's output,
        whether the child ends before or after the parent node is recorded as awaiting."""
        s = sc.subflows()
        res, child = await self._run_parent(backend, s, "parent", order)
        assert res.status == "completed"
        assert res.node_statuses == {"p1": "completed", "sub": "completed", "p2": "completed"}
        assert res.context == {"_outputs.p1": 5, "_outputs.sub": 51, "_outputs.p2": "p2:51"}
        assert res.awaiting == {}
        assert child.status == "completed"
        assert child.context == {"child.c1": True, "_outputs.c1": 50, "_outputs.c2": 51}
        assert s.probe.counts() == {"p1": 1, "c1": 1, "c2": 1, "p2": 1}
        mem_s = sc.subflows()
        mem_s.probe.gate("child-go").set()
        assert_same_result(res, await in_memory(mem_s, "parent"))

    @pytest.mark.parametrize("order", ["parent-first", "child-first"])
    async def test_subflow_failure_fails_parent(self, backend: Any, order: str) -> None:
        """A failing child run fails the parent's subflow node and the parent run."""
        s = sc.subflows()
        res, child = await self._run_parent(backend, s, "parent-bad", order)
        assert child.status == "failed"
        assert res.status == "failed"
        assert res.node_statuses == {"p1": "completed", "sub": "failed", "p2": "pending"}
        assert res.awaiting == {}
        assert len(res.errors) == 1
        assert res.errors[0].node_id == "sub"
        assert "child exploded" in res.errors[0].message
        assert "child-bad" in res.errors[0].message
        assert s.probe.counts() == {"p1": 1, "c1": 1}

    # == 16. batches and loops ==================================================================

    async def test_batch_items_run_as_jobs(self, backend: Any) -> None:
        """Each batch item is its own job (``scatter[i]``); results keep item order."""
        s = sc.batch_and_loop()
        faults = FaultInjector()
        async with self.cluster(backend, s, faults=faults, inline_successors=0) as c:
            res = await c.run("batch", {"nums": [1, 2, 3]})
        assert res.status == "completed"
        assert res.node_statuses == {
            "scatter": "completed",
            "gather": "completed",
            "after": "completed",
        }
        assert res.context == {
            "nums": [1, 2, 3],
            "_outputs.scatter": [10, 20, 30],
            "out": [10, 20, 30],
            "_outputs.gather": [10, 20, 30],
            "_outputs.after": [10, 20, 30],
        }
        items = sorted((x.node_id, x.input) for x in s.probe.calls if x.node_id != "after")
        assert items == [("scatter[0]", 1), ("scatter[1]", 2), ("scatter[2]", 3)]
        assert sorted(e.job.node_id for e in faults.enqueued if "[" in e.job.node_id) == [
            "scatter[0]",
            "scatter[1]",
            "scatter[2]",
        ]
        assert_same_result(res, await in_memory(sc.batch_and_loop(), "batch", {"nums": [1, 2, 3]}))

    async def test_loop_iterations(self, backend: Any) -> None:
        """A loop body runs 3 times (iterations 0, 1, 2): iteration ids keep deduplication
        from swallowing later iterations."""
        s = sc.batch_and_loop()
        async with self.cluster(backend, s) as c:
            res = await c.run("loop", {"count": 0})
        assert res.status == "completed"
        assert res.node_statuses == {
            "init": "completed",
            "body": "completed",
            "lp": "completed",
            "done": "completed",
        }
        assert [(x.iteration, x.input) for x in s.probe.calls if x.node_id == "body"] == [
            (0, []),
            (1, [0]),
            (2, [0, 1]),
        ]
        assert res.context["count"] == 3
        assert res.context["_outputs.done"] == {"final": [0, 1, 2]}
        assert s.probe.counts() == {"init": 1, "body": 3, "done": 1}
        assert_same_result(res, await in_memory(sc.batch_and_loop(), "loop", {"count": 0}))
