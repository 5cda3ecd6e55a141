"""The core conformance suite against :class:`flowcraft_sqs.SqsAdapter` on moto_server (SQS and
DynamoDB; ``moto_url`` from flowcraft-core's pytest plugin: an env URL, testcontainers or a
throwaway ``moto_server``), twice: with long-polling workers, and with workers that feed every
received batch through the Lambda entry point (:class:`flowcraft_sqs.SqsLambdaHandler`), the
way an SQS event source mapping invokes a function. Each test creates its own queue, DLQ and
table (:mod:`sqs_support`, which also names the moto deviation it works around).

Declared, not rewritten: ``Capabilities.queue_native_retries`` (a failed delegated attempt makes
the SAME message visible again; the attempt number comes from ``ApproximateReceiveCount``).
Tuned by class attributes: SQS delays and visibility timeouts are whole seconds (a crashed
worker's message returns after the 2 s visibility timeout used here), so scenarios get a longer
hard timeout; the node lease is 3 s, longer than moto's slowest receive-load-commit-publish
sequence on a busy machine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from flowcraft.distributed.adapter import BaseDistributedAdapter
from flowcraft.testing.conformance import AdapterConformanceSuite
from flowcraft_sqs import SqsAdapter
from sqs_support import SqsResources, make_resources


class TestSqsConformance(AdapterConformanceSuite):
    """Every conformance scenario on SQS + DynamoDB with long-polling workers."""

    adapter_class = SqsAdapter
    scenario_timeout: ClassVar[float] = 60.0
    load_runs: ClassVar[int] = 10
    lease_seconds: ClassVar[float] = 3.0
    # 10 examples of 10 concurrent cases: 100 generated workflows per differential test
    # (about 3.5 min without and 8 min with duplicate delivery here). Clients poll every
    # 250 ms: moto runs DynamoDB requests one at a time (sqs_support), and ten clients
    # polling every 50 ms queued the workers' requests behind theirs. Messages stay invisible
    # for 10 s, not 2: under that load a visibility extension could arrive after the message
    # had returned, and its redelivery ran a node twice (at-least-once, but the oracle
    # compares execution counts exactly when nothing is duplicated on purpose).
    differential_examples: ClassVar[int] = 10
    differential_batch: ClassVar[int] = 10
    differential_poll_seconds: ClassVar[float] = 0.25
    differential_adapter_kwargs: ClassVar[dict[str, Any]] = {"visibility_timeout": 10}
    differential_slow_examples: ClassVar[int] = 100

    @pytest.fixture
    async def backend(self, moto_url: str) -> AsyncIterator[SqsResources]:
        """A fresh queue, DLQ and table on the moto server; Lambda-style workers when the
        class requires the adapter's Lambda entry point."""
        lambda_style = "extra:lambda_handler" in self.required_capabilities
        res = await make_resources(moto_url, lambda_style=lambda_style)
        try:
            yield res
        finally:
            await res.cleanup()

    async def check_cases(
        self, backend: Any, cases: tuple[Any, ...], *, duplicates: bool = False
    ) -> list[Any]:
        """The suite's check on fresh resources per batch of generated cases: moto copies
        every DynamoDB table for each ``TransactWriteItems``, so one table holding the runs
        of all the examples of a test made each transaction slower than the last (and the
        server grew to 12 GB)."""
        res = await make_resources(backend.endpoint, lambda_style=backend.lambda_style)
        try:
            return await super().check_cases(res, cases, duplicates=duplicates)
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


class TestSqsLambdaConformance(TestSqsConformance):
    """Every conformance scenario with workers that hand each received batch to the Lambda
    handler (``handle_job`` per record, partial batch responses); runs only while the adapter
    declares its Lambda entry point."""

    required_capabilities: ClassVar[tuple[str, ...]] = ("extra:lambda_handler",)
    differential_examples: ClassVar[int] = 2  # 20 per test: the delivery path differs only
