"""The core conformance suite against :class:`flowcraft_gcp.GcpAdapter` on the Pub/Sub and
Firestore emulators (``pubsub_host``/``firestore_host`` from flowcraft-core's pytest plugin:
env, testcontainers or throwaway local emulators), twice: with pull workers, and with workers
that are push deployments (:class:`flowcraft_gcp.PubSubPushApp` served over real HTTP, fed
Pub/Sub push envelopes; see ``gcp_support`` for why a relay plays Pub/Sub's push side).

Tuned by class attributes: a crashed worker's message returns when its 2 s ack deadline runs
out, and delayed jobs are held in whole seconds, so scenarios get a longer hard timeout; the
node lease is 3 s, longer than the emulators' slowest receive-load-commit-publish sequence on
a busy 2-core machine; fewer load runs and generated differential cases than in memory
(each Firestore transaction costs a few milliseconds on the emulator) keep the package's
tests within minutes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from flowcraft.distributed.adapter import BaseDistributedAdapter
from flowcraft.testing.conformance import AdapterConformanceSuite
from flowcraft_gcp import GcpAdapter
from gcp_support import GcpBackend, make_backend


class TestGcpConformance(AdapterConformanceSuite):
    """Every conformance scenario on Pub/Sub + Firestore with pull workers."""

    adapter_class = GcpAdapter
    scenario_timeout: ClassVar[float] = 60.0
    load_runs: ClassVar[int] = 10
    lease_seconds: ClassVar[float] = 3.0
    # 20 examples of 10 concurrent cases: 200 generated workflows per differential test (about
    # 0.5 min without and 2 min with duplicate delivery here); 50 ms client polls
    differential_examples: ClassVar[int] = 20
    differential_batch: ClassVar[int] = 10
    differential_poll_seconds: ClassVar[float] = 0.05
    differential_slow_examples: ClassVar[int] = 100

    @pytest.fixture
    async def backend(self, pubsub_host: str, firestore_host: str) -> AsyncIterator[GcpBackend]:
        """Fresh topics, subscriptions and collection prefix; push-style workers when the
        class requires the push entry point."""
        push = "extra:push_handler" in self.required_capabilities
        b = await make_backend(pubsub_host, firestore_host, push_style=push)
        try:
            yield b
        finally:
            await b.cleanup()

    async def make_worker(
        self, backend: Any, runtime_options: dict[str, Any], **adapter_kwargs: Any
    ) -> BaseDistributedAdapter:
        """A worker (or the client) on the test's resources."""
        return backend.adapter(runtime_options=runtime_options, **adapter_kwargs)

    async def enqueue_raw(self, backend: Any, body: str) -> bool:
        """Publish ``body`` as is."""
        a = backend.adapter()
        await a.publish(a.topic, body.encode(), {})
        return True

    async def dead_letters(self, backend: Any) -> list[str] | None:
        """The dead-letter topic's messages as ``body + reason`` text."""
        return [f"{b} {r}" for b, r in await backend.dead_letters()]


class TestGcpPushConformance(TestGcpConformance):
    """Every conformance scenario with workers that are push deployments (the ASGI app over
    HTTP, ack on 2xx, redelivery otherwise); runs while the adapter declares it."""

    required_capabilities: ClassVar[tuple[str, ...]] = ("extra:push_handler",)
    # Half the generated differential cases of the pull run: the engine path is the same, and
    # every delivery here is an HTTP request through the relay (about twice the time per case).
    differential_examples: ClassVar[int] = 5
