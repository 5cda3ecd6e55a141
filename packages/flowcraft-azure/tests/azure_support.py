"""Shared helpers of the Azure tests and benchmark: per-test resources on Azurite (queues) and a
Cosmos server (one container per test), and every emulator workaround, each named here.

The Cosmos server is Microsoft's emulator where Docker exists (CI) or ``@vercel/cosmosdb-server``
on 127.0.0.1 (``cosmos_url`` from flowcraft-core's pytest plugin); both take the emulator's
well-known key, :data:`COSMOS_KEY`, over HTTPS with a self-signed certificate.

Emulator deviations worked around (only here, never in the adapter):

* ``MissingItem500``: ``cosmosdb-server`` answers a point read of a missing item with HTTP 500
  ``Cannot read properties of undefined`` instead of 404 (and azure-core would then retry the
  500 with backoff). :class:`EmulatorTransport` turns exactly that response into a 404, which
  the adapter handles as Cosmos specifies.

* ``AdvertisedEndpoint``: Microsoft's vNext emulator container (the CI path) lists its
  in-container address and port as the account's read/write locations; with endpoint
  discovery on, the SDK would follow them instead of the port testcontainers mapped. The test
  clients turn discovery off (``enable_endpoint_discovery=False``), so every request goes to
  the URL given; a real multi-region account keeps discovery on.
* Self-signed certificates (both servers): the test clients do not verify TLS
  (``connection_verify=False``).

Deviations that need no workaround because the adapter does not rely on them: transactional
batch (500; the adapter does not use batches), ``query_items(partition_key=...)`` ignoring the
partition unless the SQL filters on it (the adapter's queries always filter ``c.pk = @pk``),
``default_ttl`` not enforced (expiry is checked on the ``exp`` field), bare-UUID etags (passed
through opaque).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from azure.core.pipeline.transport import AioHttpTransport
from azure.storage.queue.aio import QueueClient
from flowcraft_azure import (
    ApiStats,
    AzureAdapter,
    CosmosConfig,
    StorageConfig,
    create_container,
    create_queues,
    delete_queues,
)
from flowcraft_azure.cosmos import CosmosContainer

COSMOS_KEY = (
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
)
"""The Cosmos emulator's well-known account key (public; also accepted by cosmosdb-server)."""

TEST_DATABASE = "flowcraft-tests"


class EmulatorTransport(AioHttpTransport):  # type: ignore[misc]
    """Workaround ``MissingItem500`` (see the module docstring): a 500 whose body says the
    server could not read the item (``Cannot read properties of undefined``) on a GET of one
    document becomes the 404 real Cosmos sends."""

    async def send(self, request: Any, **kwargs: Any) -> Any:
        """See AioHttpTransport.send."""
        response = await super().send(request, **kwargs)
        if response.status_code == 500 and request.method == "GET" and "/docs/" in request.url:
            await response.load_body()
            if b"Cannot read properties of undefined" in (response.body() or b""):
                response.status_code = 404
                response.reason = "Not Found"
        return response


def cosmos_config(url: str, container: str, **kwargs: Any) -> CosmosConfig:
    """Settings for the test container ``container`` on the Cosmos server at ``url``."""
    return CosmosConfig(
        endpoint=url,
        database=TEST_DATABASE,
        container=container,
        key=COSMOS_KEY,
        # AdvertisedEndpoint: a containerized emulator advertises its in-container address
        # in the account's locations, which the SDK would follow instead of the mapped port.
        client_kwargs={"connection_verify": False, "enable_endpoint_discovery": False},
        transport=EmulatorTransport,
        **kwargs,
    )


@dataclass
class AzureResources:
    """One test's queue (and poison queue) on Azurite and container on the Cosmos server, and
    every adapter made on them."""

    connection_string: str
    cosmos_url: str
    name: str
    stats: ApiStats = field(default_factory=ApiStats)
    adapters: list[AzureAdapter] = field(default_factory=list)
    containers: list[CosmosContainer] = field(default_factory=list)
    visibility_timeout: int = 2
    functions_style: bool = False

    @property
    def storage(self) -> StorageConfig:
        """The Azurite account."""
        return StorageConfig(connection_string=self.connection_string)

    @property
    def cosmos(self) -> CosmosConfig:
        """The test's container."""
        return cosmos_config(self.cosmos_url, self.name)

    @property
    def commits(self) -> int:
        """Commits of every adapter of the test."""
        return self.stats.commits

    @property
    def bytes_written(self) -> int:
        """Bytes those commits sent."""
        return self.stats.bytes_written

    async def create(self) -> AzureResources:
        """Create the queues and the container."""
        await create_queues(self.storage, self.name)
        await create_container(self.cosmos)
        return self

    def container(self) -> CosmosContainer:
        """A new Cosmos client on the test's container (closed by :meth:`cleanup`)."""
        c = CosmosContainer(self.cosmos, self.stats)
        self.containers.append(c)
        return c

    def adapter(self, **kwargs: Any) -> AzureAdapter:
        """A worker/client adapter on these resources (short visibility timeout, so crashed
        jobs come back quickly)."""
        from functions_host import FunctionsHostAdapter

        cls = FunctionsHostAdapter if self.functions_style else AzureAdapter
        kw: dict[str, Any] = {
            "queue": self.name,
            "storage": self.storage,
            "cosmos": self.cosmos,
            "stats": self.stats,
            "visibility_timeout": self.visibility_timeout,
            "poll_interval": (0.01, 0.2),
            "concurrency": 8,
            **kwargs,
        }
        a = cls(**kw)
        self.adapters.append(a)
        return a

    def queue_client(self, name: str | None = None) -> QueueClient:
        """A raw queue client (no encode policy) on the test's queue or ``name``."""
        return QueueClient.from_connection_string(self.connection_string, name or self.name)

    async def send_raw(self, body: str) -> None:
        """Put ``body`` on the job queue, base64-encoded as every SDK producer does."""
        async with self.queue_client() as q:
            await q.send_message(base64.b64encode(body.encode("utf-8")).decode("ascii"))

    async def cleanup(self) -> None:
        """Close every adapter and client, delete the queues and the container."""
        for a in self.adapters:
            with contextlib.suppress(Exception):
                await a.aclose()
        for c in self.containers:
            with contextlib.suppress(Exception):
                await c.aclose()
        with contextlib.suppress(Exception):
            await delete_queues(self.storage, self.name, f"{self.name}-poison")
        admin = CosmosContainer(self.cosmos)
        with contextlib.suppress(Exception):
            await admin.client.get_database_client(TEST_DATABASE).delete_container(self.name)
        with contextlib.suppress(Exception):
            await admin.aclose()


async def make_resources(connection_string: str, cosmos_url: str, **kwargs: Any) -> AzureResources:
    """Fresh, uniquely named resources (queue names: 3-63 lowercase letters, digits, dashes)."""
    res = AzureResources(connection_string, cosmos_url, f"fct-{uuid.uuid4().hex[:12]}", **kwargs)
    return await res.create()


async def settle_tasks() -> None:
    """Let pending callbacks run (a few loop iterations)."""
    for _ in range(3):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def resources(
    connection_string: str, cosmos_url: str, **kwargs: Any
) -> AsyncIterator[AzureResources]:
    """Fresh resources for one test, cleaned up afterwards (for the modules' fixtures)."""
    res = await make_resources(connection_string, cosmos_url, **kwargs)
    try:
        yield res
    finally:
        await res.cleanup()
