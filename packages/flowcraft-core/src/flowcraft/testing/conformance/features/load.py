"""Differential and load: random DAGs end exactly as in memory; many concurrent runs complete
exactly."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, note, settings

from ....runtime import FlowRuntime
from .. import scenarios as sc
from ..base import SuiteBase
from ..helpers import (
    assert_same_result,
)


class LoadTests(SuiteBase):
    """Random DAGs against the in-memory runtime, and a load smoke test."""

    # == 20. differential =======================================================================

    @settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.differing_executors,  # one test body, one subclass per adapter
        ],
    )
    @given(raw=sc.random_dags())
    async def test_random_dags_match_in_memory(self, backend: Any, raw: dict[str, Any]) -> None:
        """Random DAGs (random joins, actions, conditions) end identically in memory and
        distributed: same status, context and node statuses; every node ran at most once."""
        note(repr(raw))
        mem_reg, _ = sc.dag_registry()
        rt = FlowRuntime(registry=mem_reg)
        mem = await rt.run(raw)
        reg, probe = sc.dag_registry()
        opts = {"registry": reg, "blueprints": [raw]}
        async with self.cluster(backend, opts) as c:
            res = await c.run("random-dag")
        assert_same_result(res, mem)
        assert all(n == 1 for n in probe.counts().values())
        assert set(probe.counts()) == {
            n for n, st in res.node_statuses.items() if st == "completed"
        }

    # == load smoke =============================================================================

    async def test_load_smoke(self, backend: Any) -> None:
        """Many concurrent runs of a 10-node fan-out/fan-in: all complete with the exact result,
        every node of every run committed exactly once and executed at least once (a few at
        most twice: a message whose visibility runs out while its job waits on a contended
        commit on a loaded machine is delivered again; CI once saw this on SQS)."""
        s = sc.wide()
        nodes = {"s", "j", *(f"w{i}" for i in range(1, sc.LOAD_WIDTH + 1))}
        async with self.cluster(backend, s) as c:
            rids = await asyncio.gather(*(c.start_run("wide") for _ in range(self.load_runs)))
            results = await asyncio.gather(*(c.result(r) for r in rids))
        total = sum(range(1, sc.LOAD_WIDTH + 1))
        for res in results:
            assert res.status == "completed"
            assert res.node_statuses == {n: "completed" for n in nodes}
            outputs = {k for k in res.context if k.startswith("_outputs.")}
            assert outputs == {f"_outputs.{n}" for n in nodes}
            assert res.context["_outputs.j"] == total
        per_run: dict[tuple[str, str], int] = {}
        for x in s.probe.calls:
            per_run[(x.run_id, x.node_id)] = per_run.get((x.run_id, x.node_id), 0) + 1
        assert len(per_run) == self.load_runs * len(nodes)
        assert set(per_run.values()) <= {1, 2}
        repeated = sum(1 for v in per_run.values() if v > 1)
        assert repeated <= max(1, len(per_run) // 20), repeated
        assert {r: c.published[r] for r in rids} == {r: ["completed"] for r in rids}
