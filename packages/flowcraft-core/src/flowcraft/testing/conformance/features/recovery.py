"""Recovery and control: a lost job found by ``reconcile``, ``reconcile`` of a healthy run,
``cancel``."""

from __future__ import annotations

from typing import Any

import pytest

from ....errors import ResumeError
from .. import scenarios as sc
from ..base import SuiteBase
from ..faults import FaultInjector
from ..helpers import (
    until,
)


class RecoveryTests(SuiteBase):
    """Reconcile and cancel."""

    # == 11. lost jobs and reconcile ============================================================

    async def test_lost_job_is_recovered_by_reconcile(self, backend: Any) -> None:
        """A dropped enqueue stalls the run in ``running``; ``reconcile`` re-enqueues exactly
        the lost node, never the untaken branch (C1), and the run completes."""
        s = sc.lost()
        faults = FaultInjector().drop("b")
        async with self.cluster(backend, s, faults=faults, inline_successors=0) as c:
            rid = await c.start_run("lost")
            st = await c.wait_until(
                rid, lambda st: st.node_statuses.get("a") == "completed", "a completed"
            )
            # The enqueue follows the commit: a status read may see "completed" first.
            await until(lambda: bool(faults.dropped), "b's enqueue to be dropped")
            assert [j.node_id for j in faults.dropped] == ["b"]
            await c.hold(self.lease_seconds * 2)
            st = await c.status(rid)
            assert st.status == "running"
            assert st.node_statuses == {
                "a": "completed",
                "b": "queued",
                "x": "skipped",
                "c": "pending",
            }
            assert await c.client.reconcile(rid) == ["b"]
            res = await c.result(rid)
            assert await c.client.reconcile(rid) == []
        assert res.status == "completed"
        assert res.node_statuses == {
            "a": "completed",
            "b": "completed",
            "x": "skipped",
            "c": "completed",
        }
        assert res.context == {
            "_outputs.a": "A",
            "_outputs.b": "b:A",
            "_outputs.c": {"c got": {"b": "b:A"}},
        }
        assert s.probe.counts() == {"a": 1, "b": 1, "c": 1}

    async def test_reconcile_does_not_duplicate_running_node(self, backend: Any) -> None:
        """``reconcile`` of a healthy run whose node is running (holding its lease) enqueues
        nothing and the node runs once (C2)."""
        s = sc.lost()
        async with self.cluster(backend, s) as c:
            rid = await c.start_run("held")
            await until(s.probe.gate("held-started").is_set, "'held' to start")
            assert await c.client.reconcile(rid) == []
            await c.hold(self.lease_seconds * 1.5)  # longer than the lease: heartbeats
            assert await c.client.reconcile(rid) == []
            s.probe.gate("go").set()
            res = await c.result(rid)
        assert res.status == "completed"
        assert res.context == {
            "_outputs.a": "A",
            "_outputs.held": "HELD",
            "_outputs.c": {"c got": "HELD"},
        }
        assert s.probe.counts() == {"a": 1, "held": 1, "c": 1}

    # == 13. cancel =============================================================================

    async def test_cancel_during_slow_node(self, backend: Any) -> None:
        """``cancel`` makes the run ``cancelled`` for good: the running node is cancelled
        within a second (with a 30 s lease, i.e. long before its next heartbeat) and shows
        ``cancelled`` as in memory, nothing behind it runs, a second cancel returns False."""
        s = sc.cancellable()
        async with self.cluster(backend, s, lease_seconds=30.0) as c:
            rid = await c.start_run("cancellable")
            await until(s.probe.gate("stuck-started").is_set, "'stuck' to start")
            assert await c.client.cancel(rid) is True
            await until(lambda: s.probe.cancelled == ["stuck"], "'stuck' to stop", timeout=1.0)
            res = await c.result(rid)
            assert res.status == "cancelled"
            assert await c.client.cancel(rid) is False
            with pytest.raises(ResumeError):
                await c.client.resume(rid, "stuck")
        final = await c.client.get_result(rid)
        assert final.status == "cancelled"
        assert final.node_statuses == {"s": "completed", "stuck": "cancelled", "after": "pending"}
        assert final.context == {"_outputs.s": "S"}
        assert s.probe.counts() == {"s": 1, "stuck": 1}
        assert c.published[rid] == ["cancelled"]
