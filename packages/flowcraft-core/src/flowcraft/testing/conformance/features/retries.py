"""Retries in the worker and delegated to the queue (in the form the adapter declares with
``Capabilities.queue_native_retries``), and fallback nodes."""

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
    queue_retries,
)


class RetryTests(SuiteBase):
    """In-process and queue-delegated retries, fallback nodes."""

    # == 5. retries =============================================================================

    async def test_retries_in_process(self, backend: Any) -> None:
        """A flaky node succeeds on attempt 3 of maxRetries=3: exactly 3 calls, one job."""
        s = sc.retries()
        faults = FaultInjector()
        async with self.cluster(backend, s, faults=faults) as c:
            res = await c.run("retry-flaky")
        assert res.status == "completed"
        assert res.node_statuses == {"flaky": "completed", "after": "completed"}
        assert res.context == {"_outputs.flaky": "ok on 3", "_outputs.after": "ok on 3"}
        assert s.probe.attempts("flaky") == [1, 2, 3]
        assert faults.enqueue_count("flaky") == 1

    async def test_queue_delegated_retries(self, backend: Any) -> None:
        """With ``should_retry_in_process`` False each attempt is delivered by the queue (A1):
        the node sees attempts 1, 2, 3 and succeeds; the delivered jobs carry ``attempt`` and
        ``isLastAttempt`` (only on 3). One enqueue per attempt, or with
        ``Capabilities.queue_native_retries`` ONE job the queue redelivers."""
        s = sc.retries()
        delivered: list[tuple[int, bool | None]] = []

        def seen(point: str, job: JobPayload | None, adapter: BaseDistributedAdapter) -> None:
            if point == "after_receive" and job is not None and job.node_id == "flaky":
                delivered.append((job.attempt, job.is_last_attempt))

        faults = FaultInjector().observe(seen)
        async with self.cluster(backend, s, faults=faults, configure=queue_retries) as c:
            res = await c.run("retry-flaky")
        assert res.status == "completed"
        assert res.context == {"_outputs.flaky": "ok on 3", "_outputs.after": "ok on 3"}
        assert s.probe.attempts("flaky") == [1, 2, 3]
        assert delivered == [(1, False), (2, False), (3, True)]
        jobs = [(j.attempt, j.is_last_attempt) for j in faults.jobs_for("flaky")]
        if self.native_retries:
            assert jobs == [(1, False)]
        else:
            assert jobs == [(1, False), (2, False), (3, True)]

    async def test_queue_delegated_class_fallback_only_on_last_attempt(self, backend: Any) -> None:
        """A class node retried through the queue runs ``exec`` on attempts 1-3 and its
        ``fallback`` only on attempt 3."""
        s = sc.retries()
        async with self.cluster(backend, s, configure=queue_retries) as c:
            res = await c.run("retry-class")
        assert res.status == "completed"
        assert res.node_statuses == {"klass": "completed", "after": "completed"}
        out = "fb after exec attempt 3 failed"
        assert res.context == {"_outputs.klass": out, "_outputs.after": out}
        assert [(x.tag, x.attempt) for x in s.probe.calls if x.node_id == "klass"] == [
            ("exec", 1),
            ("exec", 2),
            ("exec", 3),
            ("fallback", 3),
        ]

    async def test_queue_delegated_retries_exhausted(self, backend: Any) -> None:
        """maxRetries=2 exhausted through the queue: 2 attempts, the run fails (once). One
        enqueue per attempt, or with ``Capabilities.queue_native_retries`` one job."""
        s = sc.retries()
        faults = FaultInjector()
        async with self.cluster(backend, s, faults=faults, configure=queue_retries) as c:
            res = await c.run("retry-exhausted")
        assert res.status == "failed"
        assert res.node_statuses == {"hopeless": "failed", "after": "pending"}
        assert [(e.node_id, e.message) for e in res.errors] == [("hopeless", "never works")]
        assert s.probe.attempts("hopeless") == [1, 2]
        enqueued = [j.attempt for j in faults.jobs_for("hopeless")]
        assert enqueued == ([1] if self.native_retries else [1, 2])
        assert s.probe.count("after") == 0
        assert c.published[res.execution_id] == ["failed"]

    # == 6. fallback node =======================================================================

    async def test_fallback_node(self, backend: Any) -> None:
        """The fallback runs with the failing node's input and error; the owner is
        ``recovered`` and its successors get the fallback's output."""
        s = sc.fallback()
        async with self.cluster(backend, s) as c:
            res = await c.run("fallback")
        assert res.status == "completed"
        assert res.node_statuses == {
            "s": "completed",
            "risky": "recovered",
            "fb": "completed",
            "after": "completed",
        }
        assert s.probe.inputs("fb") == ["S"]
        assert s.probe.errors == [("risky", "risky broke")]
        assert res.context == {
            "_outputs.s": "S",
            "_outputs.fb": "fb:S",
            "_outputs.risky": "fb:S",
            "_outputs.after": "after:fb:S",
        }
        assert s.probe.counts() == {"s": 1, "risky": 1, "fb": 1, "after": 1}
        assert_same_result(res, await in_memory(sc.fallback(), "fallback"))
