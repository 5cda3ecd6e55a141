"""Values: ``None`` and awkward keys round-trip, unstorable values fail their node, commits
write only deltas."""

from __future__ import annotations

from typing import Any

from ....distributed.adapter import BaseDistributedAdapter
from ....distributed.contracts import JobPayload
from .. import scenarios as sc
from ..base import SuiteBase
from ..faults import FaultInjector
from ..helpers import (
    assert_same_result,
    in_memory,
    requires,
)


class ValueTests(SuiteBase):
    """Value round-trips, unstorable values, delta persistence."""

    # == 19. values ==============================================================================

    async def test_none_values_and_awkward_keys_round_trip(self, backend: Any) -> None:
        """``None`` outputs and values, keys with dots, slashes and non-ASCII round-trip."""
        s = sc.values()
        async with self.cluster(backend, s) as c:
            res = await c.run("values", {"in.put/key": None})
        assert res.status == "completed"
        assert res.node_statuses == {"w": "completed", "r": "completed"}
        assert res.context == {
            "in.put/key": None,
            **sc.VALUE_WRITES,
            "_outputs.w": None,
            "_outputs.r": {"input": None, "read": sc.VALUE_WRITES},
        }
        assert_same_result(res, await in_memory(sc.values(), "values", {"in.put/key": None}))

    async def test_unstorable_value_fails_the_node(self, backend: Any) -> None:
        """A value the backend cannot store fails its node with an error naming the key;
        the job is not retried forever."""
        s = sc.values()
        async with self.cluster(backend, s) as c:
            res = await c.run("unstorable")
            await c.hold(self.lease_seconds * 2)
        assert res.status == "failed"
        assert res.node_statuses == {"bad": "failed", "after": "pending"}
        assert len(res.errors) == 1
        assert res.errors[0].node_id == "bad"
        assert "bad.key" in res.errors[0].message
        assert res.context == {}
        assert s.probe.counts() == {"bad": 1}

    # == 21. delta persistence ==================================================================

    @requires("extra:bytes_counter")
    async def test_commits_write_only_deltas(self, backend: Any) -> None:
        """A 100 kB value written once is not re-written by later nodes' commits."""
        s = sc.big_context()
        per_commit: dict[str, list[int]] = {}
        before: dict[str, tuple[int, int]] = {}

        def seen(point: str, job: JobPayload | None, adapter: BaseDistributedAdapter) -> None:
            if job is None:
                return
            if point == "before_commit":
                before[job.node_id] = self.write_counters(backend)
            elif point == "after_commit":
                commits, written = self.write_counters(backend)
                c0, b0 = before[job.node_id]
                per_commit[job.node_id] = [commits - c0, written - b0]

        self.checked_write_counters(backend)  # a missing hook fails here, named, not in a worker
        async with self.cluster(backend, s, faults=FaultInjector().observe(seen)) as c:
            res = await c.run("big-context")
        assert res.status == "completed"
        assert res.context["blob"] == "x" * sc.BIG_VALUE_BYTES
        assert set(per_commit) == {"big", "n1", "n2", "n3", "n4"}
        assert per_commit["big"][0] == 1
        assert per_commit["big"][1] >= sc.BIG_VALUE_BYTES
        for n in ("n1", "n2", "n3", "n4"):
            commits, written = per_commit[n]
            assert commits == 1
            assert written < sc.BIG_VALUE_BYTES // 20, (n, written)
