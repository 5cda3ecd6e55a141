"""CloudflareAdapter: Flowcraft workers and clients in Python that pull jobs from the companion
Worker's inbox and keep run state and coordination keys in its Durable Objects.

All orchestration and every delivery decision is the engine's; this module maps them onto the
inbox routes, which are shaped like Cloudflare Queues' HTTP pull consumer:

* receiving: ``messages/pull`` (``batch_size`` up to 100, never more than the free
  concurrency, ``visibility_timeout_ms``) in a :class:`~flowcraft.distributed.PollingConsumer`;
  an empty inbox is polled with a pause that doubles from ``poll_interval[0]`` to
  ``poll_interval[1]``;
* the job lease: a pulled message is invisible for ``visibility_timeout`` seconds; the engine
  keeps it so while it is handled (:mod:`flowcraft.distributed.keepalive`) through
  :meth:`CloudflareAdapter.extend_deliveries`: ONE ``messages/ack`` call with ``extends``
  (an addition to Cloudflare's API) for all of them;
* ack: ``acks``; redeliver after ``delay``: ``retries`` with ``delay_seconds``; dead letter:
  ``dead_letters`` with the reason (an addition: Cloudflare moves messages to a dead-letter
  queue by its own retry count; here the engine decides). A message whose lease ran out
  returns with ``attempts`` + 1 (``Delivery.deliveries``);
* delays: ``delay_seconds`` of ``messages`` (at most 12 hours, Cloudflare Queues' cap; the
  engine chains longer sleeps).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

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
from flowcraft.distributed.results import FinalSource, PullSource

from .client import WorkerClient, WorkerStats
from .stores import MAX_VALUE_BYTES, WorkerCoordinationStore, WorkerRunContext, WorkerRunStore

log = logging.getLogger("flowcraft.cloudflare")

__all__ = [
    "MAX_BATCH",
    "MAX_DELAY_SECONDS",
    "MAX_MESSAGE_BYTES",
    "CloudflareAdapter",
    "InboxMessage",
    "from_url",
]

MAX_BATCH: Final = 100
"""Most messages one pull returns (Cloudflare Queues' limit, kept by the Worker)."""
MAX_DELAY_SECONDS: Final = 12 * 3600
"""Longest delay of an enqueue or a retry (Cloudflare Queues' cap, kept by the Worker)."""
MAX_MESSAGE_BYTES: Final = 128 * 1024
"""Largest message body the inbox accepts (Cloudflare Queues' limit, kept by the Worker)."""


@dataclass(frozen=True)
class InboxMessage:
    """The handle of a pulled message: its id and the lease of this delivery."""

    id: str
    lease_id: str


class CloudflareAdapter(BaseDistributedAdapter):
    """A Flowcraft worker (``await adapter.start()``) or client (``start_run``/``result``/...)
    on the companion Worker at ``url`` (its ``FLOWCRAFT_SECRET`` is ``secret``).

    ``queue`` names the inbox (letters, digits, ``-``, ``_``); ``namespace`` separates
    deployments sharing one Worker (see :class:`WorkerClient`); ``visibility_timeout``
    (seconds) is the job lease (extended while the job runs); ``poll_interval`` is the
    (first, longest) pause after an empty pull. Other keyword arguments go to
    :class:`~flowcraft.distributed.BaseDistributedAdapter` (``runtime_options``,
    ``lease_seconds``, ``delivery_policy``, ...). ``client`` shares one HTTP client (then
    ``url``/``secret`` are ignored and :meth:`aclose` leaves it open).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        delayed_delivery=True,  # the inbox's visible-at time, stored in the Durable Object
        multi_process=True,
        redelivery_on_crash=True,  # a lease runs out after the visibility timeout
        dead_letter=True,  # the inbox's dead-letter table (``dead`` route)
        max_delay_seconds=MAX_DELAY_SECONDS,
        max_value_bytes=MAX_VALUE_BYTES,
        extra={"bytes_counter": True},
    )

    def __init__(
        self,
        *,
        url: str = "",
        secret: str = "",
        queue: str = "flowcraft",
        namespace: str = "",
        concurrency: int = 8,
        visibility_timeout: float = 30.0,
        poll_interval: tuple[float, float] = (0.02, 1.0),
        client: WorkerClient | None = None,
        stats: WorkerStats | None = None,
        **kwargs: Any,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not 0.001 <= visibility_timeout <= MAX_DELAY_SECONDS:
            raise ValueError(f"visibility_timeout must be between 0.001 and {MAX_DELAY_SECONDS}")
        if client is None:
            if not url:
                raise ValueError("the companion Worker's url is required")
            client = WorkerClient(url, secret, namespace=namespace, stats=stats)
            self._owns_client = True
        else:
            self._owns_client = False
        self.client = client
        self.stats = client.stats
        self.queue = queue
        self.concurrency = concurrency
        self.visibility_timeout = float(visibility_timeout)
        self.poll_interval = poll_interval
        self.store = WorkerRunStore(client, on_commit=self._count_commit)
        kwargs.setdefault("coordination_store", WorkerCoordinationStore(client))
        super().__init__(**kwargs)
        self.max_status_poll = 0.5
        """Longest pause (seconds) between two status polls of :meth:`wait_for_final`."""

    def _count_commit(self, sent: int) -> None:
        self.stats.commits += 1
        self.stats.bytes_written += sent

    # -- BaseDistributedAdapter ----------------------------------------------------------------

    async def create_context(self, run_id: str) -> WorkerRunContext:
        """The run's Durable Object."""
        return WorkerRunContext(self.store, run_id)

    async def enqueue_job(
        self, job: JobPayload, *, delay: float = 0.0, options: Mapping[str, Any] | None = None
    ) -> None:
        """``messages`` with the job's JSON, deliverable after ``delay`` (at most 12 h)."""
        await self.client.queue(
            self.queue,
            "messages",
            {"body": job.to_json(), "delay_seconds": min(max(delay, 0.0), MAX_DELAY_SECONDS)},
        )

    async def enqueue_jobs(
        self, jobs: Sequence[tuple[JobPayload, Mapping[str, Any] | None]]
    ) -> None:
        """``messages/batch``: up to 100 jobs per request."""
        for i in range(0, len(jobs), MAX_BATCH):
            chunk = jobs[i : i + MAX_BATCH]
            await self.client.queue(
                self.queue,
                "messages/batch",
                {"messages": [{"body": job.to_json()} for job, _ in chunk]},
            )

    async def publish_final_result(self, run_id: str, result: Mapping[str, Any]) -> None:
        """Nothing to announce: clients read the final status from the run's Durable Object."""

    def final_source(self) -> FinalSource:
        """See BaseDistributedAdapter: one poller reads the statuses of every waited-for run in
        one request per round, backing off from 20 ms to ``max_status_poll``."""
        src: FinalSource | None = getattr(self, "_final_source", None)
        if src is None:
            src = PullSource(
                self.store.statuses, min_delay=0.02, max_delay=self.max_status_poll, batch=1000
            )
            self._final_source = src
        return src

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """Non-final runs from the Worker's active-run index, paged by run id."""
        return await self.store.list_active_runs(cursor, limit)

    async def delete_run(self, run_id: str) -> int:
        """Delete a run's Durable Object data and index entry (retention is the caller's)."""
        return await self.store.delete_run(run_id)

    # -- the delivery primitives ---------------------------------------------------------------

    async def _inbox_ack(self, field: str, entries: list[dict[str, Any]]) -> None:
        r = await self.client.queue(self.queue, "messages/ack", {field: entries})
        for w in r.get("warnings", []):
            # A lease that ran out: the message went back to the inbox (or another worker
            # holds it now), and its next delivery is handled there.
            log.warning("inbox %s: %s", self.queue, w)

    @staticmethod
    def _lease(delivery: Delivery) -> str:
        m = delivery.message
        assert isinstance(m, InboxMessage)
        return m.lease_id

    def delivery_lease_seconds(self) -> float:
        """The pull's visibility timeout: the engine keeps every message it handles invisible
        (see :mod:`flowcraft.distributed.keepalive`)."""
        return self.visibility_timeout

    async def extend_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        """One ``messages/ack`` call extending every lease by the visibility timeout."""
        ms = int(self.visibility_timeout * 1000) or 1
        entries = [
            {"lease_id": self._lease(d), "visibility_timeout_ms": ms}
            for d in deliveries
            if isinstance(d.message, InboxMessage)
        ]
        for i in range(0, len(entries), 1000):
            await self._inbox_ack("extends", entries[i : i + 1000])

    async def ack(self, delivery: Delivery) -> None:
        """Delete the message (``acks``)."""
        await self._inbox_ack("acks", [{"lease_id": self._lease(delivery)}])

    async def redeliver(self, delivery: Delivery, delay: float) -> None:
        """Make the message visible again after ``delay`` seconds (``retries``)."""
        d = min(max(delay, 0.0), MAX_DELAY_SECONDS)
        await self._inbox_ack("retries", [{"lease_id": self._lease(delivery), "delay_seconds": d}])

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message and ``reason`` to the inbox's dead letters, in one transaction."""
        await self._inbox_ack(
            "dead_letters", [{"lease_id": self._lease(delivery), "reason": reason}]
        )

    async def dead_letters(self, limit: int = 100) -> list[tuple[str, str]]:
        """``(body, reason)`` of up to ``limit`` dead letters, oldest first (they stay)."""
        r = await self.client.queue(self.queue, "dead", {"limit": max(1, min(limit, 1000))})
        return [(str(m["body"]), str(m["reason"])) for m in r["messages"]]

    # -- the polling worker --------------------------------------------------------------------

    async def receive(self, n: int) -> list[Delivery]:
        """Pull up to ``n`` (at most 100) messages, each invisible for the visibility
        timeout."""
        r = await self.client.queue(
            self.queue,
            "messages/pull",
            {
                "batch_size": max(1, min(n, MAX_BATCH)),
                "visibility_timeout_ms": int(self.visibility_timeout * 1000) or 1,
            },
        )
        return [
            Delivery(
                m["body"],
                InboxMessage(str(m["id"]), str(m["lease_id"])),
                deliveries=max(int(m["attempts"]), 1),
            )
            for m in r["messages"]
        ]

    async def process_jobs(self, handler: JobHandler) -> None:
        """Pull and handle up to ``concurrency`` jobs at once until :meth:`stop` (jobs in
        progress finish first)."""
        consumer = PollingConsumer(
            self,
            self.receive,
            concurrency=self.concurrency,
            batch=min(self.concurrency, MAX_BATCH),
            idle=self.poll_interval,
            handler=handler,
        )
        await consumer.run()

    async def aclose(self) -> None:
        """Stop, and close the HTTP client (unless it was passed in)."""
        await self.stop()
        await self.final_source().aclose()
        if self._owns_client:
            await self.client.aclose()


_URL_OPTIONS: Final = {
    "queue": Option("queue"),
    "namespace": Option("namespace"),
    "concurrency": Option("concurrency", int),
    "visibility": Option("visibility_timeout", float),
}


def from_url(url: str, **kwargs: Any) -> CloudflareAdapter:
    """Entry point of the ``cloudflare`` backend scheme:
    ``cloudflare://flowcraft.ACCOUNT.workers.dev?queue=jobs`` (HTTPS) or
    ``cloudflare+http://127.0.0.1:8787`` (plain HTTP, for a local Worker); options ``queue``,
    ``namespace``, ``concurrency``, ``visibility``. The secret comes from ``FLOWCRAFT_SECRET``
    (or the ``secret`` keyword). Query options override keyword arguments."""
    import os

    b = parse_url(
        url,
        _URL_OPTIONS,
        schemes={"cloudflare": "https", "cloudflare+http": "http", "cloudflare+https": "https"},
        passthrough=False,
        kwargs=kwargs,
    )
    kw = dict(b.kwargs)
    if "client" not in kw:
        if not b.netloc:
            raise ValueError(f"backend URL {url!r}: expected cloudflare://HOST[:PORT][/PATH]")
        kw["url"] = f"{b.scheme}://{b.netloc}{b.path}"
        secret = kw.pop("secret", None) or os.environ.get("FLOWCRAFT_SECRET", "")
        if not secret:
            raise ValueError(f"backend URL {url!r}: set FLOWCRAFT_SECRET to the Worker's secret")
        kw["secret"] = secret
    return CloudflareAdapter(**kw)
