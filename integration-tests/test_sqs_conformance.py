"""The core conformance suite against :class:`flowcraft_sqs.SqsAdapter` on moto_server (SQS and
DynamoDB), twice: with long-running polling workers, and with workers that feed every received
batch through the Lambda entry point (:class:`flowcraft_sqs.SqsLambdaHandler`), the way an SQS
event source mapping invokes a function.

moto comes from the service layer (``FLOWCRAFT_TEST_MOTO_URL``, testcontainers, or a throwaway
``moto_server`` on a free port). Each test creates its own queue, DLQ and table.

Differences from the in-memory run, both because SQS does more, not less:

* SQS delays and visibility timeouts are whole seconds: sub-second delays (late duplicates,
  requeues) are rounded up, never down, and a crashed worker's message returns after the 2 s
  visibility timeout used here; the scenarios therefore get a longer hard timeout.
* The node lease is 3 s instead of 0.3 s: moto answers in milliseconds to tens of milliseconds
  per request (more on a busy machine), and the engine's lease must outlast the slowest
  receive-load-commit-publish sequence (a lease that expires under a job that is still loading
  or finalizing lets a second delivery run the node, or publish the result, again).
* Queue-delegated retries are SQS-native: a failed attempt makes the SAME message visible again
  after the backoff, and the attempt number comes from ``ApproximateReceiveCount``; so the retry
  tests check the delivered payloads (attempt, isLastAttempt) and that exactly one message was
  sent, instead of one enqueue per attempt.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from flowcraft.distributed.adapter import BaseDistributedAdapter
from flowcraft.distributed.contracts import JobPayload
from flowcraft.testing.conformance import AdapterConformanceSuite, FaultInjector
from flowcraft.testing.conformance import scenarios as sc
from flowcraft_sqs import SqsAdapter
from services import require_service
from sqs_support import SqsResources, make_resources


@pytest.fixture(scope="session")
def moto_url() -> str:
    """URL of a moto server (env URL, testcontainers or a throwaway local moto_server)."""
    return require_service("moto").url


def _queue_retries(adapter: BaseDistributedAdapter) -> None:
    adapter.should_retry_in_process = lambda node: False  # type: ignore[method-assign]


class TestSqsConformance(AdapterConformanceSuite):
    """Every conformance scenario on SQS + DynamoDB with long-polling workers."""

    adapter_class = SqsAdapter
    scenario_timeout: ClassVar[float] = 60.0
    load_runs: ClassVar[int] = 10
    lease_seconds: ClassVar[float] = 3.0
    lambda_style: ClassVar[bool] = False

    @pytest.fixture
    async def backend(self, moto_url: str) -> AsyncIterator[SqsResources]:
        """A fresh queue, DLQ and table on the moto server."""
        res = await make_resources(moto_url, lambda_style=self.lambda_style)
        try:
            yield res
        finally:
            await res.cleanup()

    async def make_worker(
        self, backend: Any, runtime_options: dict[str, Any], **adapter_kwargs: Any
    ) -> BaseDistributedAdapter:
        """A worker (or the client) on the test's resources."""
        return backend.adapter(runtime_options=runtime_options, **adapter_kwargs)

    async def enqueue_raw(self, backend: Any, body: str) -> bool:
        """``SendMessage`` of ``body`` as is."""
        assert backend.admin is not None
        await backend.admin.sqs("send_message", QueueUrl=backend.queue_url, MessageBody=body)
        return True

    async def dead_letters(self, backend: Any) -> list[str] | None:
        """The DLQ's messages as ``body + reason`` text."""
        return [f"{b} {r}" for b, r in await backend.adapter().dead_letters()]

    # -- SQS-native delegated retries --------------------------------------------------------

    async def test_queue_delegated_retries(self, backend: Any) -> None:
        """With queue-delegated retries SQS redelivers ONE message: the engine sees attempts
        1, 2, 3 (from ``ApproximateReceiveCount``) with ``isLastAttempt`` only on 3, and the
        node succeeds on attempt 3 (A1)."""
        s = sc.retries()
        delivered: list[tuple[int, bool | None]] = []

        def seen(point: str, job: JobPayload | None, adapter: BaseDistributedAdapter) -> None:
            if point == "after_receive" and job is not None and job.node_id == "flaky":
                delivered.append((job.attempt, job.is_last_attempt))

        faults = FaultInjector().observe(seen)
        async with self.cluster(backend, s, faults=faults, configure=_queue_retries) as c:
            res = await c.run("retry-flaky")
        assert res.status == "completed"
        assert res.context == {"_outputs.flaky": "ok on 3", "_outputs.after": "ok on 3"}
        assert s.probe.attempts("flaky") == [1, 2, 3]
        assert delivered == [(1, False), (2, False), (3, True)]
        assert [(j.attempt, j.is_last_attempt) for j in faults.jobs_for("flaky")] == [(1, False)]

    async def test_queue_delegated_retries_exhausted(self, backend: Any) -> None:
        """maxRetries=2 exhausted through SQS: 2 deliveries of one message, the run fails
        once."""
        s = sc.retries()
        faults = FaultInjector()
        async with self.cluster(backend, s, faults=faults, configure=_queue_retries) as c:
            res = await c.run("retry-exhausted")
        assert res.status == "failed"
        assert res.node_statuses == {"hopeless": "failed", "after": "pending"}
        assert [(e.node_id, e.message) for e in res.errors] == [("hopeless", "never works")]
        assert s.probe.attempts("hopeless") == [1, 2]
        assert [j.attempt for j in faults.jobs_for("hopeless")] == [1]
        assert s.probe.count("after") == 0
        assert c.published[res.execution_id] == ["failed"]


class TestSqsLambdaConformance(TestSqsConformance):
    """Every conformance scenario with workers that hand each received batch to the Lambda
    handler (``handle_job`` per record, partial batch responses)."""

    lambda_style: ClassVar[bool] = True
