"""The store contract suites against the Cosmos stores of :mod:`flowcraft_azure`, on the Cosmos
server of flowcraft-core's pytest plugin (``cosmos_url``: an env URL, testcontainers with
Microsoft's emulator, or a throwaway ``cosmosdb-server``). Each test gets its own container
(and queues on Azurite, unused here), deleted afterwards; the emulator workaround is named in
``azure_support``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from azure_support import AzureResources, resources
from flowcraft.testing.conformance import CoordinationStoreSuite, RunStoreSuite
from flowcraft_azure import CosmosCoordinationStore, CosmosRunContext, CosmosRunStore


@pytest.fixture
async def azure(azurite_connection_string: str, cosmos_url: str) -> AsyncIterator[AzureResources]:
    """A fresh queue pair and container for one test."""
    async with resources(azurite_connection_string, cosmos_url) as res:
        yield res


class TestCosmosCoordinationStore(CoordinationStoreSuite):
    """Create (409) for set-if-not-exist, patch ``incr`` under an expiry predicate, etag
    deletes; expiry checked on every read and predicate."""

    @pytest.fixture
    def store(self, azure: AzureResources) -> CosmosCoordinationStore:
        """The coordination store on the test's container."""
        return CosmosCoordinationStore(azure.container())


class TestCosmosRunStore(RunStoreSuite):
    """Run items in the test's container; every context from its own store and client (so
    the per-store item cache never hides another handle's commit)."""

    @pytest.fixture
    def context_factory(self, azure: AzureResources) -> Callable[[str], CosmosRunContext]:
        """Contexts on the test's container."""
        return lambda run_id: CosmosRunContext(CosmosRunStore(azure.container()), run_id)
