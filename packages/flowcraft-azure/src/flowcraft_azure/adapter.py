"""AzureAdapter: Flowcraft workers and clients on an Azure Storage Queue, with run state and
coordination in Cosmos DB.

All orchestration and every delivery decision is the engine's; this module maps them onto the
queue:

* receiving: ``receive_messages`` (up to 32 per call, never more than the free concurrency) in
  a :class:`~flowcraft.distributed.PollingConsumer`; an empty queue is polled with a pause that
  doubles from ``poll_interval[0]`` to ``poll_interval[1]`` (no busy loop);
* the job lease: each message is invisible for ``visibility_timeout`` seconds; the engine keeps
  it so while it is handled (:mod:`flowcraft.distributed.keepalive`) through
  :meth:`AzureAdapter.extend_deliveries`: ``update_message``, keeping the NEW pop receipt
  under the message's lock;
* ack: ``delete_message``; redeliver after ``delay``: ``update_message(visibility_timeout=
  delay)``; give back on shutdown: visibility 0; a dead worker's message returns when its
  visibility ends, with a higher ``dequeue_count`` (``Delivery.deliveries``);
* delays: the ``visibility_timeout`` of ``send_message`` (whole seconds, rounded up, at most 7
  days; the engine re-arms longer sleeps), with messages that never expire (``time_to_live=-1``);
* dead letters: a message that is not a valid job, one the engine rejects, or one delivered
  more than ``delivery_policy.max_deliveries`` times goes to ``<queue>-poison`` (the Azure
  Functions convention) in an envelope with the reason, then is deleted.

The Azure Functions entry point (:mod:`flowcraft_azure.functions`) goes through the same
``process_delivery``; its messages belong to the Functions host (``AzureMessage.host``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.queue.aio import QueueClient
from flowcraft.distributed import (
    BaseDistributedAdapter,
    Capabilities,
    Delivery,
    JobHandler,
    JobPayload,
    Option,
    PollingConsumer,
    parse_url,
)
from flowcraft.distributed.results import FinalSource, PullSource, one_by_one

from .coordination import CosmosCoordinationStore
from .cosmos import ApiStats, CosmosConfig, CosmosContainer
from .queue import (
    MAX_DELAY_SECONDS,
    AzureMessage,
    StorageConfig,
    decode_content,
    encode_content,
    poison_envelope,
    poison_queue_name,
    read_poison,
    visibility_seconds,
)
from .runstore import MAX_VALUE_BYTES, CosmosRunContext, CosmosRunStore

log = logging.getLogger("flowcraft.azure")

__all__ = ["MAX_RECEIVE", "AzureAdapter", "from_url", "message_delivery"]

MAX_RECEIVE: Final = 32
"""Most messages one ``receive_messages`` call returns."""


def message_delivery(
    message_id: str,
    pop_receipt: str | None,
    content: str | bytes | None,
    dequeue_count: int | None,
    *,
    host: bool = False,
    decoded: str | None = None,
) -> Delivery:
    """A delivery for a queue message: the decoded text as body, ``dequeue_count`` as
    ``deliveries``, an :class:`AzureMessage` handle. ``decoded`` is the body when someone
    (the Functions host) already base64-decoded it."""
    raw = content.decode("utf-8", "replace") if isinstance(content, bytes) else (content or "")
    body = decoded if decoded is not None else decode_content(raw)
    count = max(int(dequeue_count or 1), 1)
    handle = AzureMessage(message_id, pop_receipt, count, raw, host=host)
    return Delivery(body, handle, deliveries=count)


def _code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", "") or "")


class AzureAdapter(BaseDistributedAdapter):
    """A Flowcraft worker (``await adapter.start()``), Functions back end (see
    :class:`~flowcraft_azure.functions.QueueTriggerHandler`) or client
    (``start_run``/``result``/...) on Azure Storage Queues and Cosmos DB.

    ``queue`` is the job queue's name (its poison queue is ``<queue>-poison``); ``storage``
    (:class:`StorageConfig`) and ``cosmos`` (:class:`CosmosConfig`) say where the account and
    the container are. ``visibility_timeout`` (whole seconds) is the job lease on the queue
    (extended while the job runs); ``poll_interval`` is the (first, longest) pause after an
    empty receive. Other keyword arguments go to
    :class:`~flowcraft.distributed.BaseDistributedAdapter` (``runtime_options``,
    ``lease_seconds``, ``delivery_policy``, ...).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        delayed_delivery=True,  # send_message's visibility_timeout, messages never expire
        multi_process=True,
        redelivery_on_crash=True,  # the visibility timeout runs out
        dead_letter=True,  # <queue>-poison
        max_delay_seconds=MAX_DELAY_SECONDS,
        max_value_bytes=MAX_VALUE_BYTES,
        extra={"functions_handler": True, "bytes_counter": True},
    )

    def __init__(
        self,
        *,
        queue: str,
        storage: StorageConfig,
        cosmos: CosmosConfig | CosmosContainer,
        concurrency: int = 8,
        visibility_timeout: int = 30,
        poll_interval: tuple[float, float] = (0.02, 2.0),
        active_shards: int = 4,
        stats: ApiStats | None = None,
        **kwargs: Any,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not 1 <= visibility_timeout <= MAX_DELAY_SECONDS:
            raise ValueError(f"visibility_timeout must be between 1 and {MAX_DELAY_SECONDS}")
        if isinstance(cosmos, CosmosContainer):
            self.cosmos = cosmos
            self._owns_cosmos = False
        else:
            self.cosmos = CosmosContainer(cosmos, stats)
            self._owns_cosmos = True
        self.stats = self.cosmos.stats
        self.queue = queue
        self.poison_queue = poison_queue_name(queue)
        self.storage = storage
        self.concurrency = concurrency
        self.visibility_timeout = int(visibility_timeout)
        self.poll_interval = poll_interval
        self.store = CosmosRunStore(self.cosmos, active_shards=active_shards)
        kwargs.setdefault("coordination_store", CosmosCoordinationStore(self.cosmos))
        super().__init__(**kwargs)
        self._clients: dict[str, QueueClient] = {}
        self.max_status_poll = 0.5
        """Longest pause (seconds) between two status polls of :meth:`wait_for_final`."""

    # -- clients -------------------------------------------------------------------------------

    def _client(self, name: str) -> QueueClient:
        c = self._clients.get(name)
        if c is None:
            c = self._clients[name] = self.storage.queue_client(name)
        return c

    def _call(self, op: str) -> None:
        self.stats.calls[f"queue.{op}"] += 1

    def _count_commit(self, sent: int) -> None:
        self.stats.commits += 1
        self.stats.bytes_written += sent

    # -- BaseDistributedAdapter ----------------------------------------------------------------

    async def create_context(self, run_id: str) -> CosmosRunContext:
        """The run's item in Cosmos."""
        return CosmosRunContext(self.store, run_id, self._count_commit)

    async def enqueue_job(
        self, job: JobPayload, *, delay: float = 0.0, options: Mapping[str, Any] | None = None
    ) -> None:
        """``send_message`` (base64 JSON), invisible for ``delay`` (whole seconds, rounded up,
        at most 7 days); the message never expires."""
        vis = visibility_seconds(
            delay, int(self.capabilities.max_delay_seconds or MAX_DELAY_SECONDS)
        )
        self._call("send")
        await self._client(self.queue).send_message(
            encode_content(job.to_json()), visibility_timeout=vis or None, time_to_live=-1
        )

    async def publish_final_result(self, run_id: str, result: Mapping[str, Any]) -> None:
        """Nothing to announce: clients read the final status from the run's item."""

    def final_source(self) -> FinalSource:
        """See BaseDistributedAdapter: one poller reads the waited-for runs' statuses (a point
        read each), backing off from 20 ms to ``max_status_poll`` while nothing ends."""
        src: FinalSource | None = getattr(self, "_final_source", None)
        if src is None:
            src = PullSource(
                one_by_one(self.store.run_status), min_delay=0.02, max_delay=self.max_status_poll
            )
            self._final_source = src
        return src

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """Non-final runs from the active-run index (a few single-partition queries)."""
        return await self.store.list_active_runs(cursor, limit)

    async def delete_run(self, run_id: str) -> int:
        """Delete a run's items (retention is the caller's)."""
        return await self.store.delete_run(run_id)

    # -- visibility ----------------------------------------------------------------------------

    async def _set_visibility(self, m: AzureMessage, seconds: int) -> None:
        """``update_message`` under the message's lock, keeping the new pop receipt."""
        async with m.lock:
            if m.acked or m.pop_receipt is None:
                return
            self._call("update")
            try:
                r = await self._client(self.queue).update_message(
                    m.id, m.pop_receipt, visibility_timeout=max(0, seconds)
                )
            except (ResourceNotFoundError, HttpResponseError) as exc:
                # Deleted, or its visibility ran out and another worker holds it now.
                log.warning("cannot update message %s: %s", m.id, _code(exc) or exc)
                m.pop_receipt = None
                return
            m.pop_receipt = r.pop_receipt

    def delivery_lease_seconds(self) -> float:
        """The messages' visibility timeout: the engine keeps every message it handles
        invisible (see :mod:`flowcraft.distributed.keepalive`)."""
        return float(self.visibility_timeout)

    async def extend_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        """``update_message`` for each (the queue has no batch update); messages of the
        Functions host are the host's to renew."""
        for d in deliveries:
            m = d.message
            if isinstance(m, AzureMessage) and not m.host:
                try:
                    await self._set_visibility(m, self.visibility_timeout)
                except Exception:
                    log.exception("extending message visibility failed")

    # -- the delivery primitives ---------------------------------------------------------------

    async def ack(self, delivery: Delivery) -> None:
        """``delete_message`` with the current pop receipt (a host message is only marked:
        the Functions host deletes it when the function returns)."""
        m = delivery.message
        assert isinstance(m, AzureMessage)
        if m.host:
            m.acked = True
            return
        async with m.lock:
            if m.acked:
                return
            m.acked = True
            if m.pop_receipt is None:
                log.warning("message %s was redelivered before its ack", m.id)
                return
            self._call("delete")
            try:
                await self._client(self.queue).delete_message(m.id, m.pop_receipt)
            except (ResourceNotFoundError, HttpResponseError) as exc:
                log.warning("message %s was already deleted or redelivered: %s", m.id, _code(exc))

    async def redeliver(self, delivery: Delivery, delay: float) -> None:
        """Make the message visible again after ``delay`` (whole seconds, rounded up; 0 at
        once). A host message stays unacked: the Functions handler raises, and the host
        retries it."""
        m = delivery.message
        assert isinstance(m, AzureMessage)
        if m.host:
            return
        await self._set_visibility(m, visibility_seconds(delay))

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Send the body and ``reason`` to ``<queue>-poison``, then delete the message (a host
        message: the host deletes it when the function returns)."""
        m = delivery.message
        assert isinstance(m, AzureMessage)
        body = delivery.body if isinstance(delivery.body, str) else str(delivery.body)
        self._call("send")
        await self._client(self.poison_queue).send_message(
            poison_envelope(body, reason, m.id, m.dequeue_count, self.queue), time_to_live=-1
        )
        await self.ack(delivery)

    async def dead_letters(self, max_messages: int = 32) -> list[tuple[str, str]]:
        """Peek at the poison queue: ``(body, reason)`` of up to 32 messages (they stay
        there). For inspection and tests."""
        self._call("peek")
        msgs = await self._client(self.poison_queue).peek_messages(
            max_messages=max(1, min(max_messages, 32))
        )
        return [read_poison(str(m.content)) for m in msgs]

    # -- the polling worker --------------------------------------------------------------------

    async def receive(self, n: int) -> list[Delivery]:
        """Receive up to ``n`` (at most 32) messages, each invisible for the visibility
        timeout."""
        self._call("receive")
        pages = self._client(self.queue).receive_messages(
            messages_per_page=max(1, min(n, MAX_RECEIVE)),
            max_messages=max(1, min(n, MAX_RECEIVE)),
            visibility_timeout=self.visibility_timeout,
        )
        return [
            message_delivery(m.id, m.pop_receipt, m.content, m.dequeue_count) async for m in pages
        ]

    async def process_jobs(self, handler: JobHandler) -> None:
        """Poll the queue and handle up to ``concurrency`` jobs at once until :meth:`stop`
        (jobs in progress finish first)."""
        consumer = PollingConsumer(
            self,
            self.receive,
            concurrency=self.concurrency,
            batch=min(self.concurrency, MAX_RECEIVE),
            idle=self.poll_interval,
            handler=handler,
        )
        await consumer.run()

    async def aclose(self) -> None:
        """Stop and close the queue clients and (unless passed in) the Cosmos client."""
        await self.stop()
        await self.final_source().aclose()
        for c in list(self._clients.values()):
            with contextlib.suppress(Exception):
                await c.close()
        self._clients.clear()
        if self._owns_cosmos:
            await self.cosmos.aclose()


_URL_OPTIONS: Final = {
    "cosmos": Option("cosmos_endpoint"),
    "database": Option("database"),
    "container": Option("container"),
    "account": Option("account_url"),
    "concurrency": Option("concurrency", int),
    "visibility": Option("visibility_timeout", int),
    "verify": Option("cosmos_verify", bool),
}


def from_url(url: str, **kwargs: Any) -> AzureAdapter:
    """Entry point of the ``azure`` backend scheme:
    ``azure://QUEUE?cosmos=https://ACCOUNT.documents.azure.com:443/&database=DB&container=C``
    (also ``account`` = the queue account URL, ``concurrency``, ``visibility``, and
    ``verify=false`` to accept the Cosmos emulator's self-signed certificate).

    Credentials: ``AZURE_STORAGE_CONNECTION_STRING`` for the queue (else ``account`` with
    ``DefaultAzureCredential``), ``AZURE_COSMOS_KEY`` for Cosmos (else
    ``DefaultAzureCredential``). Query options override keyword arguments."""
    import os

    b = parse_url(url, _URL_OPTIONS, schemes={"azure": "azure"}, passthrough=False, kwargs=kwargs)
    kw = b.kwargs
    endpoint = kw.pop("cosmos_endpoint", None)
    database = kw.pop("database", "flowcraft")
    container = kw.pop("container", "flowcraft")
    account = kw.pop("account_url", None)
    verify = kw.pop("cosmos_verify", True)
    if "cosmos" not in kw:
        if not endpoint:
            raise ValueError(f"backend URL {url!r}: the cosmos=<endpoint> option is required")
        kw["cosmos"] = CosmosConfig(
            endpoint,
            database,
            container,
            key=os.environ.get("AZURE_COSMOS_KEY"),
            client_kwargs={} if verify else {"connection_verify": False},
        )
    if "storage" not in kw:
        cs = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if not cs and not account:
            raise ValueError(
                f"backend URL {url!r}: set AZURE_STORAGE_CONNECTION_STRING or account=<url>"
            )
        kw["storage"] = StorageConfig(connection_string=cs, account_url=account)
    return AzureAdapter(queue=b.name or "flowcraft", **kw)
