"""The core conformance suite against :class:`flowcraft_cloudflare.CloudflareAdapter` and the
companion Worker on workerd (Miniflare's Node API, service ``cloudflare``), each test in its
own namespace of the shared Worker (``cf_support``).

Tuned by class attributes: every store operation is an HTTP request to workerd on a busy
2-core machine (a few ms each), so the node lease is 1 s and scenarios get a longer hard
timeout; a crashed worker's message returns after the 1 s visibility timeout."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from cf_support import CloudflareResources, resources
from flowcraft.distributed.adapter import BaseDistributedAdapter
from flowcraft.testing.conformance import AdapterConformanceSuite
from flowcraft_cloudflare import MAX_MESSAGE_BYTES, CloudflareAdapter

pytestmark = pytest.mark.needs_services


class TestCloudflareConformance(AdapterConformanceSuite):
    """Every conformance scenario with polling workers on the companion Worker."""

    adapter_class = CloudflareAdapter
    scenario_timeout: ClassVar[float] = 60.0
    lease_seconds: ClassVar[float] = 1.0
    load_runs: ClassVar[int] = 20
    # 20 examples of 10 concurrent cases: 200 generated workflows per differential test (about
    # 1 min without and 1.5 min with duplicate delivery here); 50 ms client polls
    differential_examples: ClassVar[int] = 20
    differential_batch: ClassVar[int] = 10
    differential_poll_seconds: ClassVar[float] = 0.05
    differential_slow_examples: ClassVar[int] = 200

    @pytest.fixture
    async def backend(self) -> AsyncIterator[CloudflareResources]:
        """A fresh namespace on the test Worker."""
        async with resources() as res:
            yield res

    async def make_worker(
        self, backend: Any, runtime_options: dict[str, Any], **adapter_kwargs: Any
    ) -> BaseDistributedAdapter:
        """A worker (or the client) in the test's namespace."""
        return backend.adapter(runtime_options=runtime_options, **adapter_kwargs)

    async def enqueue_raw(self, backend: Any, body: str) -> bool:
        """``messages`` with ``body`` as it is. False for a body over the inbox's 128 KiB
        message limit (Cloudflare Queues' limit; the Worker refuses it with a 400), which can
        never reach a worker."""
        if len(body.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
            return False
        await backend.send_raw(body)
        return True

    async def dead_letters(self, backend: Any) -> list[str] | None:
        """The inbox's dead letters as ``body reason`` text."""
        return [f"{b} {r}" for b, r in await backend.adapter().dead_letters(1000)]
