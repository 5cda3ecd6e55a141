"""The store contract suites against the DynamoDB stores of :mod:`flowcraft_sqs.dynamodb`, on
the moto server of flowcraft-core's pytest plugin (``moto_url``: an env URL, testcontainers or
a throwaway ``moto_server``). Each test gets its own table, deleted afterwards.

Emulator deviation (as in every SQS test, see ``sqs_support``): moto executes DynamoDB requests
in parallel threads without the per-request atomicity real DynamoDB has, so the stores' clients
send DynamoDB requests one at a time (:class:`sqs_support.SerializedDynamoDB`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import ClassVar

import pytest
from flowcraft.testing.conformance import CoordinationStoreSuite, RunStoreSuite
from flowcraft_sqs import DynamoCoordinationStore, DynamoRunStore
from flowcraft_sqs.dynamodb import DynamoRunContext
from sqs_support import SqsResources, make_resources


@pytest.fixture
async def aws(moto_url: str) -> AsyncIterator[SqsResources]:
    """A fresh queue pair and table on the moto server (only the table is used here)."""
    res = await make_resources(moto_url)
    try:
        yield res
    finally:
        await res.cleanup()


class TestDynamoCoordinationStore(CoordinationStoreSuite):
    """Conditional writes and ``ADD`` counters; expiry checked on every read and condition."""

    # moto_server answers in tens of ms, but hundreds under a loaded CI machine: three
    # requests must fit in the TTL of the keys the expiry tests wait out (CI saw a 0.5 s key
    # expire before it was read back).
    short_ttl: ClassVar[float] = 2.0
    expiry_margin: ClassVar[float] = 0.5

    @pytest.fixture
    def store(self, aws: SqsResources) -> DynamoCoordinationStore:
        """The coordination store on the test's table."""
        return DynamoCoordinationStore(aws.clients_for_test(), aws.table)


class TestDynamoRunStore(RunStoreSuite):
    """Run contexts in the test's table; every context from its own store and clients."""

    @pytest.fixture
    def context_factory(self, aws: SqsResources) -> Callable[[str], DynamoRunContext]:
        """Contexts on the test's table."""
        return lambda run_id: DynamoRunContext(
            DynamoRunStore(aws.clients_for_test(), aws.table), run_id
        )
