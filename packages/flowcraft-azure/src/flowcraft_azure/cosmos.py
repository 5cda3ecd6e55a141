"""Cosmos DB access shared by the run store and the coordination store: connection settings,
the one container both stores use, item keys, and request counters.

One container (partition key path ``/pk``, ``default_ttl=-1``: items live until deleted unless
they carry a ``ttl``) holds three kinds of items, told apart by the prefix of their partition
key, so no two kinds ever share a logical partition:

=====================  ==========================  ===========================================
partition key          id                          what
=====================  ==========================  ===========================================
``r:<run>``            ``r:<run>``                 one run: version, status, every context key
``k:<key>``            ``k:<key>``                 one coordination key: value or counter,
                                                   expiry, ``ttl`` (cleanup)
``a:<shard>``          ``<run>``                   the run is not final (the active-run index)
=====================  ==========================  ===========================================

Every id is unique in the container (an id equal to its partition key, or an escaped run id,
which never holds ``:``). ``<run>`` and ``<key>`` are escaped by :func:`safe_key` (Cosmos ids
may not hold ``/``, ``\\``, ``?`` or ``#``; long ones are hashed).

Throttling (HTTP 429) is retried by the SDK itself, after the server's ``x-ms-retry-after-ms``
(``CosmosConfig.throttle_retries`` attempts, at most ``throttle_max_wait`` seconds in all).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.credentials_async import AsyncTokenCredential
from azure.cosmos import PartitionKey, exceptions
from azure.cosmos.aio import ContainerProxy, CosmosClient

__all__ = [
    "ApiStats",
    "CosmosConfig",
    "CosmosContainer",
    "create_container",
    "delete_database",
    "is_status",
    "safe_key",
]

_MAX_PLAIN: Final = 200


def safe_key(text: str) -> str:
    """``text`` as a Cosmos id or partition-key value: every character except ASCII letters,
    digits and ``_.-~`` percent-escaped with ``!`` instead of ``%`` (so the result holds none of
    the characters Cosmos refuses in ids); longer than 200 characters, ``=`` and the SHA-256 of
    the text (``=`` never appears in an escaped key, so the two forms cannot collide)."""
    esc = quote(text, safe="-_.~").replace("%", "!")
    if len(esc) <= _MAX_PLAIN:
        return esc
    return "=" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def is_status(exc: BaseException, *codes: int) -> bool:
    """True when ``exc`` is a Cosmos HTTP error with one of ``codes``."""
    return isinstance(exc, exceptions.CosmosHttpResponseError) and exc.status_code in codes


@dataclass
class ApiStats:
    """Request counters shared by every store and client given the same object (benchmarks,
    cost estimates)."""

    calls: Counter[str] = field(default_factory=Counter)
    """Requests by ``service.operation`` (``cosmos.read``, ``cosmos.patch``, ``queue.receive``,
    ...)."""
    request_units: float = 0.0
    """Request units Cosmos charged (``x-ms-request-charge``; 0 where the server omits it)."""
    commits: int = 0
    """Successful run-store commits."""
    bytes_written: int = 0
    """Bytes of keys and JSON values those commits sent (whole items for a replace)."""

    @property
    def total_calls(self) -> int:
        """All requests so far."""
        return sum(self.calls.values())

    def snapshot(self) -> dict[str, int]:
        """A copy of :attr:`calls`."""
        return dict(self.calls)


@dataclass(frozen=True)
class CosmosConfig:
    """Where the Cosmos DB (SQL API) account is and how to authenticate: ``key`` (the
    account key), ``credential`` (an async token credential, e.g.
    ``azure.identity.aio.DefaultAzureCredential()``), or neither, which uses
    ``DefaultAzureCredential``. ``client_kwargs`` go to ``CosmosClient`` as they are (e.g.
    ``connection_verify``, ``consistency_level``, ``transport``)."""

    endpoint: str
    database: str = "flowcraft"
    container: str = "flowcraft"
    key: str | None = None
    credential: AsyncTokenCredential | None = None
    throttle_retries: int = 9
    """Attempts after a 429 (each waits the server's retry-after)."""
    throttle_max_wait: int = 30
    """Longest total wait (seconds) on throttled requests before the error surfaces."""
    client_kwargs: dict[str, Any] = field(default_factory=dict)
    transport: Callable[[], Any] | None = None
    """Makes the HTTP transport of each client (one per client: a client closes its own);
    None: azure-core's default."""


class CosmosContainer:
    """The container both stores use (opened lazily), with every request counted in
    :attr:`stats`. ``aclose`` closes the client when this object created it."""

    def __init__(self, config: CosmosConfig, stats: ApiStats | None = None) -> None:
        self.config = config
        self.stats = stats or ApiStats()
        self._client: CosmosClient | None = None
        self._container: ContainerProxy | None = None
        self._owned_credential: Any = None

    def _make_client(self) -> CosmosClient:
        c = self.config
        cred: Any
        if c.key is not None:
            cred = c.key
        elif c.credential is not None:
            cred = c.credential
        else:
            from azure.identity.aio import DefaultAzureCredential

            cred = self._owned_credential = DefaultAzureCredential()
        return CosmosClient(
            c.endpoint,
            credential=cred,
            retry_throttle_total=c.throttle_retries,
            retry_throttle_backoff_max=c.throttle_max_wait,
            **c.client_kwargs,
            **({"transport": c.transport()} if c.transport is not None else {}),
        )

    @property
    def client(self) -> CosmosClient:
        """The Cosmos client (created on first use)."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    @property
    def container(self) -> ContainerProxy:
        """The container proxy (no request is made to get it)."""
        if self._container is None:
            db = self.client.get_database_client(self.config.database)
            self._container = db.get_container_client(self.config.container)
        return self._container

    def _count(self, op: str, result: Any = None) -> None:
        self.stats.calls[f"cosmos.{op}"] += 1
        headers = getattr(result, "get_response_headers", None)
        if headers is not None:
            try:
                self.stats.request_units += float(headers().get("x-ms-request-charge", 0) or 0)
            except (TypeError, ValueError):
                pass

    async def read(self, pk: str, item_id: str) -> dict[str, Any] | None:
        """Point read; None when the item does not exist."""
        try:
            r = await self.container.read_item(item_id, partition_key=pk)
        except exceptions.CosmosResourceNotFoundError:
            self._count("read")
            return None
        self._count("read", r)
        return dict(r)

    async def create(self, item: dict[str, Any]) -> dict[str, Any] | None:
        """Create; None when an item with that id exists in the partition (409)."""
        try:
            r = await self.container.create_item(item)
        except exceptions.CosmosResourceExistsError:
            self._count("create")
            return None
        self._count("create", r)
        return dict(r)

    async def upsert(self, item: dict[str, Any]) -> None:
        """Create or replace unconditionally."""
        r = await self.container.upsert_item(item, no_response=True)
        self._count("upsert", r)

    async def replace(self, item: dict[str, Any], etag: str) -> dict[str, Any] | None:
        """Replace only while the stored item has ``etag``; None on 412 (or 404)."""
        try:
            r = await self.container.replace_item(
                item["id"], item, etag=etag, match_condition=MatchConditions.IfNotModified
            )
        except exceptions.CosmosHttpResponseError as exc:
            self._count("replace")
            if exc.status_code in (404, 412):
                return None
            raise
        self._count("replace", r)
        return dict(r)

    async def patch(
        self, pk: str, item_id: str, ops: list[dict[str, Any]], predicate: str | None = None
    ) -> dict[str, Any] | None:
        """Patch (at most 10 operations); None when the item is missing (404) or the
        ``predicate`` (``from c where ...``) is false (412)."""
        try:
            r = await self.container.patch_item(
                item_id, partition_key=pk, patch_operations=ops, filter_predicate=predicate
            )
        except exceptions.CosmosHttpResponseError as exc:
            self._count("patch")
            if exc.status_code in (404, 412):
                return None
            raise
        self._count("patch", r)
        return dict(r)

    async def delete(self, pk: str, item_id: str, etag: str | None = None) -> bool:
        """Delete (only while it has ``etag``, when given); False when it was missing or its
        etag changed."""
        kw: dict[str, Any] = {}
        if etag is not None:
            kw = {"etag": etag, "match_condition": MatchConditions.IfNotModified}
        try:
            await self.container.delete_item(item_id, partition_key=pk, **kw)
        except exceptions.CosmosHttpResponseError as exc:
            self._count("delete")
            if exc.status_code in (404, 412):
                return False
            raise
        self._count("delete")
        return True

    async def query_partition(
        self, pk: str, sql: str, parameters: list[dict[str, Any]], limit: int
    ) -> list[dict[str, Any]]:
        """A single-partition query (the SQL must also filter ``c.pk = @pk``, which it binds),
        at most ``limit`` results."""
        params = [*parameters, {"name": "@pk", "value": pk}]
        out: list[dict[str, Any]] = []
        pages = self.container.query_items(
            sql, parameters=params, partition_key=pk, max_item_count=limit
        ).by_page()
        async for page in pages:
            self._count("query")
            async for item in page:
                out.append(dict(item))
                if len(out) >= limit:
                    return out
        return out

    async def aclose(self) -> None:
        """Close the client (and a credential this object created)."""
        if self._client is not None:
            await self._client.close()
            self._client = None
            self._container = None
        if self._owned_credential is not None:
            await self._owned_credential.close()
            self._owned_credential = None


async def create_container(
    config: CosmosConfig, *, throughput: int | None = None, stats: ApiStats | None = None
) -> None:
    """Create the database and the container of ``config`` if missing (partition key
    ``/pk``, ``default_ttl=-1`` so coordination items expire by their own ``ttl``).
    ``throughput``: manual RU/s of the container (None: the account's default / serverless).
    Needs a key or a control-plane role (data-plane RBAC roles cannot create resources)."""
    c = CosmosContainer(config, stats)
    try:
        db = await c.client.create_database_if_not_exists(config.database)
        await db.create_container_if_not_exists(
            config.container,
            partition_key=PartitionKey(path="/pk"),
            default_ttl=-1,
            offer_throughput=throughput,
        )
    finally:
        await c.aclose()


async def delete_database(config: CosmosConfig) -> None:
    """Delete the database of ``config`` (tests; missing is fine)."""
    c = CosmosContainer(config)
    try:
        await c.client.delete_database(config.database)
    except exceptions.CosmosResourceNotFoundError:
        pass
    finally:
        await c.aclose()
