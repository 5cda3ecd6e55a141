"""The store contract suites against the companion Worker's Durable Objects on workerd
(Miniflare), each test in a namespace of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from cf_support import CloudflareResources, resources
from flowcraft.testing.conformance import CoordinationStoreSuite, RunStoreSuite
from flowcraft_cloudflare import WorkerCoordinationStore, WorkerRunContext, WorkerRunStore

pytestmark = pytest.mark.needs_services


@pytest.fixture
async def cf() -> AsyncIterator[CloudflareResources]:
    """A fresh namespace for one test."""
    async with resources() as res:
        yield res


class TestWorkerCoordinationStore(CoordinationStoreSuite):
    """Coordination keys in the Worker's shard Durable Objects (one SQL sequence per
    operation, expiry checked on every read)."""

    @pytest.fixture
    def store(self, cf: CloudflareResources) -> WorkerCoordinationStore:
        """The coordination store in the test's namespace."""
        return WorkerCoordinationStore(cf.client())


class TestWorkerRunStore(RunStoreSuite):
    """One Durable Object per run; every context on its own HTTP client."""

    @pytest.fixture
    def context_factory(self, cf: CloudflareResources) -> Callable[[str], WorkerRunContext]:
        """Contexts in the test's namespace."""
        return lambda run_id: WorkerRunContext(WorkerRunStore(cf.client()), run_id)
