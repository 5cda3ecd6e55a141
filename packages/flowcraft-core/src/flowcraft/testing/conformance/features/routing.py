"""Routing and joins: fan-out/fan-in, conditional branches, failures and how they poison
joins."""

from __future__ import annotations

from typing import Any

import pytest

from .. import scenarios as sc
from ..base import SuiteBase
from ..helpers import (
    assert_same_result,
    in_memory,
    until,
)


class RoutingTests(SuiteBase):
    """Fan-out/fan-in, conditional branches, failures."""

    # == 2. fan-out / fan-in ====================================================================

    async def test_fan_out_fan_in(self, backend: Any) -> None:
        """``all`` join gets a dict keyed by predecessor; ``any`` join runs exactly once."""
        s = sc.fan()
        async with self.cluster(backend, s) as c:
            res = await c.run("fan")
        assert res.status == "completed"
        assert res.node_statuses == {n: "completed" for n in sc.FAN_NODES}
        assert res.context == sc.FAN_CONTEXT
        assert s.probe.inputs("all_j") == [{"a": "A", "b": "B", "c": "C"}]
        assert s.probe.count("any_j") == 1
        assert s.probe.inputs("any_j")[0] in ("A", "B", "C")
        assert s.probe.inputs("t") == [{"all_j": {"a": "A", "b": "B", "c": "C"}, "any_j": "any"}]
        assert s.probe.counts() == {n: 1 for n in sc.FAN_NODES}
        assert_same_result(res, await in_memory(sc.fan(), "fan"))

    # == 3. conditional branches ================================================================

    @pytest.mark.parametrize(
        ("route", "statuses", "context"),
        [
            (
                "yes",
                {"yes": "completed", "yes_end": "completed", "no": "skipped", "no_end": "skipped"},
                {"_outputs.yes": "yes:checked", "_outputs.yes_end": "YES"},
            ),
            (
                "no",
                {"yes": "skipped", "yes_end": "skipped", "no": "completed", "no_end": "completed"},
                {"_outputs.no": "no:checked", "_outputs.no_end": "NO"},
            ),
            (
                "maybe",
                {"yes": "skipped", "yes_end": "skipped", "no": "skipped", "no_end": "skipped"},
                {},
            ),
        ],
    )
    async def test_conditional_branches(
        self,
        backend: Any,
        route: str,
        statuses: dict[str, str],
        context: dict[str, Any],
    ) -> None:
        """Exclusive branches ending in different terminals complete (A2/A3); the untaken
        branch is skipped; an action no edge carries runs nothing behind it."""
        s = sc.branches()
        async with self.cluster(backend, s) as c:
            res = await c.run("branches", {"route": route})
        assert res.status == "completed"
        assert res.node_statuses == {"check": "completed", **statuses}
        assert res.context == {"route": route, "_outputs.check": "checked", **context}
        ran = {n for n, st in statuses.items() if st == "completed"}
        assert s.probe.counts() == {"check": 1, **{n: 1 for n in ran}}
        assert c.published[res.execution_id] == ["completed"]
        assert_same_result(res, await in_memory(sc.branches(), "branches", {"route": route}))

    # == 4. failures ============================================================================

    async def test_failing_node_fails_run_promptly(self, backend: Any) -> None:
        """A failure fails the run at once (error names the node) while another branch is
        still running; the running node is cancelled and nothing runs behind either."""
        s = sc.failures()
        async with self.cluster(backend, s, lease_seconds=30.0) as c:
            res = await c.run("fail-fast")
            assert "slow" not in s.probe.finished  # the run failed while 'slow' still ran
            assert res.status == "failed"
            assert [(e.node_id, e.message) for e in res.errors] == [("bad", "boom")]
            # within a second, long before the 30 s lease's next heartbeat
            await until(lambda: s.probe.cancelled == ["slow"], "'slow' to stop", timeout=1.0)
        final = await c.client.get_result(res.execution_id)
        assert final.status == "failed"
        assert final.node_statuses == {
            "s": "completed",
            "bad": "failed",
            "slow": "queued",
            "after": "pending",
        }
        assert final.context == {"_outputs.s": "S"}
        assert s.probe.counts() == {"s": 1, "bad": 1, "slow": 1}
        assert c.published[res.execution_id] == ["failed"]

    async def test_failed_predecessor_poisons_any_and_all_joins(self, backend: Any) -> None:
        """Seed example: A fails, then B succeeds and A2 fails: the run stays ``failed`` with
        A's error only, C (``any`` of A, B) and D (``all`` of A, B, A2) never run, and later
        completions/failures neither overwrite the status nor publish again (A5)."""
        s = sc.failures()
        g = s.probe.gate
        # A long lease: the heartbeat must not cancel B before its late completion is tried.
        async with self.cluster(backend, s, lease_seconds=5.0) as c:
            rid = await c.start_run("fail-join")
            await until(lambda: g("B-started").is_set() and g("A2-started").is_set(), "B, A2")
            g("A-go").set()
            await c.wait_until(rid, lambda st: st.status == "failed", "failed")
            g("b-go").set()
            await until(lambda: "B" in s.probe.finished and "A2" in s.probe.failed, "B and A2")
        res = await c.client.get_result(rid)
        assert res.status == "failed"
        assert [(e.node_id, e.message) for e in res.errors] == [("A", "A failed")]
        assert res.node_statuses == {
            "A": "failed",
            "A2": "queued",
            "B": "queued",
            "C": "pending",
            "D": "pending",
        }
        assert res.context == {}
        assert s.probe.counts() == {"A": 1, "A2": 1, "B": 1}
        assert c.published[rid] == ["failed"]
