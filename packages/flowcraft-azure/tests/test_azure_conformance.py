"""The core conformance suite against :class:`flowcraft_azure.AzureAdapter` on Azurite (queues)
and a Cosmos server (run store and coordination), twice: with polling workers, and with workers
whose every message goes through the Azure Functions entry point
(:class:`flowcraft_azure.QueueTriggerHandler`) the way the Functions host invokes a
queue-triggered function (``functions_host``). Each test creates its own queue, poison queue
and container (``azure_support``, which also names the emulator workaround).

Tuned by class attributes: visibility timeouts and delays are whole seconds on Azure Storage
Queues (a crashed worker's message returns after the 2 s visibility timeout used here, and
every delayed retry waits at least 1 s), so scenarios get a longer hard timeout; the node lease
is 3 s, longer than the slowest receive-load-commit sequence against the emulators on a busy
2-core machine; fewer load runs than in memory keep the package's tests within a few minutes.
Generated differential cases run ten at a time (200 per test; 50 through the Functions host).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from azure_support import AzureResources, make_resources
from flowcraft.distributed.adapter import BaseDistributedAdapter
from flowcraft.testing.conformance import AdapterConformanceSuite
from flowcraft_azure import AzureAdapter
from flowcraft_azure.queue import MAX_MESSAGE_CHARS, encode_content


class TestAzureConformance(AdapterConformanceSuite):
    """Every conformance scenario on Storage Queues + Cosmos with polling workers."""

    adapter_class = AzureAdapter
    scenario_timeout: ClassVar[float] = 60.0
    load_runs: ClassVar[int] = 10
    lease_seconds: ClassVar[float] = 3.0
    # 20 examples of 10 concurrent cases: 200 generated workflows per differential test (about
    # 1 min without and 2.5 min with duplicate delivery here); polling every 50 ms, not 5 ms,
    # keeps 10 waiting clients from crowding out the workers on two cores
    differential_examples: ClassVar[int] = 20
    differential_batch: ClassVar[int] = 10
    differential_poll_seconds: ClassVar[float] = 0.05
    differential_slow_examples: ClassVar[int] = 100

    @pytest.fixture
    async def backend(
        self, azurite_connection_string: str, cosmos_url: str
    ) -> AsyncIterator[AzureResources]:
        """A fresh queue pair and container; Functions-style workers when the class requires
        the adapter's Functions entry point."""
        functions_style = "extra:functions_handler" in self.required_capabilities
        res = await make_resources(
            azurite_connection_string, cosmos_url, functions_style=functions_style
        )
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
        """``send_message`` of ``body`` (base64, as SDK producers and the Functions trigger
        expect). False for a body over the service's 64 KiB message limit (the 200k-deep
        poison payloads): Azure refuses such a message (``RequestBodyTooLarge``), so it can
        never reach a worker."""
        if len(encode_content(body)) > MAX_MESSAGE_CHARS:
            return False
        await backend.send_raw(body)
        return True

    async def dead_letters(self, backend: Any) -> list[str] | None:
        """The poison queue's messages as ``body + reason`` text."""
        return [f"{b} {r}" for b, r in await backend.adapter().dead_letters()]


class TestAzureFunctionsConformance(TestAzureConformance):
    """Every conformance scenario with workers that hand each message to the Functions
    queue-trigger handler (the host emulated in ``functions_host``); runs only while the adapter
    declares its Functions entry point."""

    required_capabilities: ClassVar[tuple[str, ...]] = ("extra:functions_handler",)
    # the same engine path as the polling class: 50 generated workflows per test here
    differential_examples: ClassVar[int] = 5
