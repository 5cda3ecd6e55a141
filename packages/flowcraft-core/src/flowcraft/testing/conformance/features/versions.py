"""Blueprint versions: a worker without the run's version requeues its jobs; with no capable
worker at all the run fails."""

from __future__ import annotations

from typing import Any

from ....distributed.adapter import BaseDistributedAdapter
from ....distributed.contracts import JobPayload
from .. import scenarios as sc
from ..base import SuiteBase
from ..faults import FaultInjector
from ..helpers import (
    until,
)


class VersionTests(SuiteBase):
    """Blueprint-version routing between workers."""

    # == 17. blueprint versions =================================================================

    async def test_wrong_version_worker_requeues(self, backend: Any) -> None:
        """A worker lacking the run's blueprint version requeues its jobs; a worker with the
        right version runs them."""
        probe = sc.Probe()
        v1 = sc.versioned("1", probe, "v1")
        v2 = sc.versioned("2", probe, "v2")
        requeued: list[JobPayload] = []

        def seen(point: str, job: JobPayload | None, adapter: BaseDistributedAdapter) -> None:
            if point == "after_receive" and job is not None and job.requeues > 0:
                requeued.append(job)

        faults = FaultInjector().observe(seen)
        # A requeue limit no scheduling delay can exhaust: the run must wait for the v2 worker.
        async with self.cluster(
            backend, v2, workers=0, faults=faults, version_requeue_limit=1_000_000
        ) as c:
            await c.add_worker(v1.runtime_options)
            rid = await c.start_run("versioned")
            await until(lambda: bool(requeued), "a requeued job to be delivered again")
            assert probe.calls == []
            await c.add_worker(v2.runtime_options)
            res = await c.result(rid)
        assert res.status == "completed"
        assert res.context == {"_outputs.a": "A", "_outputs.b": "b:A"}
        assert probe.tags("a") == ["v2"]
        assert probe.tags("b") == ["v2"]

    async def test_no_worker_with_the_version_fails_the_run(self, backend: Any) -> None:
        """With no capable worker the run fails after the requeue limit, naming blueprint and
        version."""
        probe = sc.Probe()
        v1 = sc.versioned("1", probe, "v1")
        v2 = sc.versioned("2", probe, "v2")
        async with self.cluster(
            backend,
            v2,
            workers=0,
            version_requeue_limit=2,
        ) as c:
            await c.add_worker(v1.runtime_options)
            res = await c.run("versioned")
        assert res.status == "failed"
        assert len(res.errors) == 1
        msg = res.errors[0].message
        assert "'versioned'" in msg
        assert "version '2'" in msg
        assert probe.calls == []
        assert res.node_statuses == {"a": "queued", "b": "pending"}
