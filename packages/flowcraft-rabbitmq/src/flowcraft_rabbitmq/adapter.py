"""RabbitMQAdapter: Flowcraft workers and clients on RabbitMQ, with run state and node leases
in PostgreSQL and the other coordination keys (markers, counters) in Redis.

All orchestration (routing, joins, exactly-once commits, leases, recovery) and what happens
to a delivered message (:func:`~flowcraft.distributed.delivery.decide`: ack, retry, redeliver,
dead-letter, give back) is the engine's; this module maps it onto RabbitMQ (``aio-pika``,
robust connections) and the stores:

* topology (all durable, on the default exchange, declared idempotently):
  ``<queue>`` the work queue; ``<queue>.dead`` the dead-letter queue; ``<queue>.delay.<ms>``
  delay queues, one per power-of-two delay (``x-message-ttl`` = ms, dead-lettered back to
  ``<queue>`` when the TTL expires). No plugin is needed (Debian's RabbitMQ has no
  delayed-message plugin).
* delayed delivery (retry backoff, durable ``sleep`` timers, requeues): a message due in ``d``
  ms goes to the delay queue of the largest power of two ``<= d`` with an ``x-flowcraft-due``
  header; a worker receiving it early sends it round again for the rest (each hop at least
  halves the remaining time) or, when less than 50 ms remain, holds it until due, so delays of
  any length are exact to about a millisecond. Every message of one delay queue has the same
  TTL, so expiry order is queue order.
* publisher confirms on every publish (``mandatory``: an unroutable message is an error, never
  a silent drop); a publish interrupted by a connection drop waits for the reconnection and is
  retried (at-least-once; the engine deduplicates).
* manual ack after the handler returned, i.e. after the step's commit and its successors'
  confirmed enqueues; ``prefetch`` bounds the jobs in progress per worker.
* crash recovery: a dead worker's unacked deliveries are requeued by the broker when its
  connection closes, at once, while the dead worker's node lease still holds: such a
  redelivery becomes a watchdog copy (below) that re-checks the lease every half lease and
  runs the job once the lease is gone (as a redelivery, so the engine repairs what the dead
  worker left undone); the lease keeps a slow node from running twice.
* long nodes vs. the broker's ``consumer_timeout`` (30 min by default; the broker closes the
  channel of a delivery unacked for longer): after ``handoff_after`` seconds the heartbeat hands
  the delivery off: it publishes a *watchdog* copy of the job (delivered every
  ``watchdog_interval`` s while the node's lease is alive, run normally once the lease is gone,
  i.e. if this worker died) and acks the original.
* redelivery: a message whose handling failed is published again through the delay queues
  (the ``delivery_policy`` backoff, never a hot loop) and the original acked; a message given
  back on shutdown is nacked (requeued at once).
* delivery count (for the ``delivery_policy`` cap): the ``x-flowcraft-deliveries`` header
  carries the deliveries of the job's earlier copies (republished redeliveries, handed-off
  deliveries), plus the broker's redeliveries of this copy (a job that kills its worker),
  counted in the coordination store by message id.
* poison messages go to ``<queue>.dead`` with the reason in the ``x-flowcraft-reason`` header:
  unparseable bodies, jobs the engine rejects, and jobs delivered more than
  ``delivery_policy.max_deliveries`` times.
* reconnection: ``aio_pika.connect_robust`` re-opens channels, QoS and the consumer after a
  broker connection drop; acks of deliveries from the dropped connection are discarded (the
  broker has requeued them and the engine deduplicates the redelivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import aio_pika
import aiormq
import redis.asyncio as aioredis
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from flowcraft.blueprint import NodeDefinition
from flowcraft.distributed import (
    BaseDistributedAdapter,
    Capabilities,
    Decision,
    Delivery,
    Disposition,
    JobHandler,
    JobPayload,
    Option,
    SimulatedCrash,
    parse_url,
)
from flowcraft.distributed.results import PushSource
from flowcraft.redis import RedisCoordinationStore, RedisKeyLayout, connect

from .postgres import PostgresRunContext, PostgresRunStore, PostgresStoreStats

log = logging.getLogger("flowcraft.rabbitmq")

DUE_HEADER: Final = "x-flowcraft-due"
"""Epoch milliseconds at which a delayed message is due."""
WATCHDOG_HEADER: Final = "x-flowcraft-watchdog"
"""Marks a watchdog copy of a job: run once its node lease is gone, re-armed while it lives
(see the module docs). The value is the re-arm interval in milliseconds (1: the adapter's
``watchdog_interval``)."""
DELIVERIES_HEADER: Final = "x-flowcraft-deliveries"
"""How many deliveries of the job's earlier copies count against the delivery cap (a
redelivery and a hand-off publish a new copy of the message)."""
REASON_HEADER: Final = "x-flowcraft-reason"
"""Why a message was dead-lettered."""

MAX_DELAY_BUCKET_MS: Final = 1 << 31
"""The longest single delay-queue TTL (about 24.8 days); longer delays take several hops."""

_TRANSIENT = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    asyncio.TimeoutError,
    RuntimeError,
)


@dataclass(eq=False)
class Received:
    """The RabbitMQ side of a :class:`~flowcraft.distributed.Delivery` (its ``message``): the
    incoming message to ack or nack, and when it arrived (for the hand-off of long nodes)."""

    incoming: AbstractIncomingMessage
    at: float = field(default_factory=time.monotonic)


def delay_bucket_ms(delay_ms: int) -> int:
    """The delay queue for a message due in ``delay_ms`` (>= 1): the largest power of two not
    above it, capped at :data:`MAX_DELAY_BUCKET_MS`."""
    if delay_ms < 1:
        raise ValueError("delay_ms must be >= 1")
    return min(1 << (delay_ms.bit_length() - 1), MAX_DELAY_BUCKET_MS)


class RabbitMQAdapter(BaseDistributedAdapter):
    """A Flowcraft worker (``await adapter.start()``) or client (``start_run``/``result``/...)
    on RabbitMQ + PostgreSQL + Redis.

    ``amqp_url`` is the broker (``amqp://user:pass@host:port/vhost``, aio-pika URL options such
    as ``?heartbeat=30`` allowed). ``postgres`` is a libpq URL or a shared
    :class:`~flowcraft_rabbitmq.postgres.PostgresRunStore`; ``schema`` names its schema
    (created/migrated on first use unless ``migrate=False``). ``redis`` is a Redis URL or a
    ``redis.asyncio`` client; coordination keys live under ``redis_prefix`` (default
    ``flowcraft:<queue_name>:``). ``queue_name`` names the queues (see the module docs).
    ``prefetch`` (alias ``concurrency``) is how many jobs one worker handles at once.

    Long nodes: ``consumer_timeout`` is the broker's (seconds); deliveries are handed off after
    ``handoff_after`` (default: half of it) and watched every ``watchdog_interval`` s.
    ``publish_timeout`` bounds how long a publish waits for a lost connection to come back.
    ``retry_in_process=False`` delegates node retries to the queue (one delivery per attempt,
    backoff through the delay queues). ``inline_successors`` (default 64; 0: every node a
    message): how many successors a delivered job runs itself (docs/distributed.md, "Inline
    successors"); the commit that makes a node ready takes its lease in the same statement.
    Other keyword arguments go to :class:`~flowcraft.distributed.BaseDistributedAdapter`
    (``runtime_options``, ``lease_seconds``, ``delivery_policy`` (delivery cap and
    redelivery backoff), ...).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        delayed_delivery=True,
        multi_process=True,
        redelivery_on_crash=True,
        dead_letter=True,
        max_value_bytes=64 * 1024 * 1024,
        extra={"bytes_counter": True},
    )

    def __init__(
        self,
        amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        postgres: str | PostgresRunStore = "postgresql://127.0.0.1:5432/postgres",
        redis: str | aioredis.Redis = "redis://127.0.0.1:6379/0",
        queue_name: str = "flowcraft",
        schema: str = "flowcraft",
        redis_prefix: str | None = None,
        prefetch: int | None = None,
        concurrency: int | None = None,
        retry_in_process: bool = True,
        consumer_timeout: float = 1800.0,
        handoff_after: float | None = None,
        watchdog_interval: float = 60.0,
        publish_timeout: float = 60.0,
        reconnect_interval: float = 1.0,
        connection_name: str | None = None,
        migrate: bool = True,
        pg_pool_size: int = 8,
        stats: PostgresStoreStats | None = None,
        inline_successors: int = 64,
        **kwargs: Any,
    ) -> None:
        prefetch = prefetch or concurrency or 16
        if prefetch < 1:
            raise ValueError("prefetch must be >= 1")
        self.amqp_url = amqp_url
        self.queue_name = queue_name
        self.dead_queue_name = f"{queue_name}.dead"
        self.prefetch = prefetch
        self.retry_in_process = retry_in_process
        self.consumer_timeout = consumer_timeout
        self.handoff_after = consumer_timeout / 2 if handoff_after is None else handoff_after
        self.watchdog_interval = watchdog_interval
        self.publish_timeout = publish_timeout
        self.local_wait_ms = 50
        """A delayed message arriving at most this many ms early is held until due instead of
        being sent round the delay queues once more."""
        self.reconnect_interval = reconnect_interval
        if isinstance(postgres, PostgresRunStore):
            self.store = postgres
            self._own_store = False
        else:
            self.store = PostgresRunStore(
                postgres,
                schema=schema,
                max_size=pg_pool_size,
                max_value_bytes=self.capabilities.max_value_bytes,
                stats=stats,
            )
            self._own_store = True
        self._migrate = migrate
        self._migrated = False
        if isinstance(redis, str):
            self.redis = connect(redis)
            self._own_redis = True
        else:
            self.redis = redis
            self._own_redis = False
        self.redis_prefix = redis_prefix or f"flowcraft:{queue_name}:"
        kwargs.setdefault(
            "coordination_store",
            RedisCoordinationStore(self.redis, RedisKeyLayout(self.redis_prefix)),
        )
        super().__init__(inline_successors=inline_successors, **kwargs)
        self.connection_name = connection_name or f"flowcraft-{self.worker_id}-{os.getpid()}"
        self._connection: AbstractRobustConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._publisher: AbstractRobustChannel | None = None
        self._declared: set[str] = set()
        self._declare_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.processed = 0
        """Deliveries handled (acked) by this worker."""
        self.dead_lettered = 0
        """Messages this worker moved to the dead-letter queue."""
        self.reconnects = 0
        """How many times the robust connection was re-established after a drop."""
        self.stale_acks = 0
        """Acks dropped because the delivery's connection had closed (the broker requeued
        those deliveries)."""

    # -- resources ------------------------------------------------------------------------------

    async def _ready_store(self) -> PostgresRunStore:
        if self._migrate and not self._migrated:
            await self.store.migrate()
            self._migrated = True
        return self.store

    async def connection(self) -> AbstractRobustConnection:
        """The robust AMQP connection (opened on first use)."""
        if self._connection is None:
            async with self._connect_lock:
                if self._connection is None:
                    conn = await aio_pika.connect_robust(
                        self.amqp_url,
                        client_properties={"connection_name": self.connection_name},
                        reconnect_interval=self.reconnect_interval,
                    )
                    conn.reconnect_callbacks.add(self._on_reconnect)
                    self._connection = conn
        return self._connection

    def _on_reconnect(self, *_: Any) -> None:
        self.reconnects += 1
        log.warning("reconnected to RabbitMQ (%d reconnections so far)", self.reconnects)

    async def _channel(self) -> AbstractRobustChannel:
        if self._publisher is None:
            conn = await self.connection()
            async with self._declare_lock:
                if self._publisher is None:
                    ch = await conn.channel(publisher_confirms=True, on_return_raises=True)
                    await self._declare(ch, self.queue_name)
                    await self._declare(ch, self.dead_queue_name)
                    self._publisher = ch
        assert self._publisher is not None
        return self._publisher

    async def _declare(self, ch: Any, name: str, arguments: dict[str, Any] | None = None) -> None:
        await ch.declare_queue(name, durable=True, arguments=arguments)
        self._declared.add(name)

    def delay_queue_name(self, bucket_ms: int) -> str:
        """The delay queue of ``bucket_ms`` (a power of two)."""
        return f"{self.queue_name}.delay.{bucket_ms}"

    async def _delay_queue(self, ch: AbstractRobustChannel, bucket_ms: int) -> str:
        name = self.delay_queue_name(bucket_ms)
        if name not in self._declared:
            async with self._declare_lock:
                if name not in self._declared:
                    await self._declare(
                        ch,
                        name,
                        {
                            "x-message-ttl": bucket_ms,
                            "x-dead-letter-exchange": "",
                            "x-dead-letter-routing-key": self.queue_name,
                        },
                    )
        return name

    async def declare_topology(self) -> None:
        """Declare the work and dead-letter queues (delay queues are declared on first use)."""
        await self._channel()

    async def delete_topology(self) -> None:
        """Delete every queue of this deployment, with their messages (tests, teardown)."""
        ch = await self._channel()
        names = {self.queue_name, self.dead_queue_name}
        names |= {self.delay_queue_name(1 << i) for i in range(32)}
        for name in sorted(names):
            with contextlib.suppress(Exception):
                await ch.queue_delete(name)
        self._declared.clear()

    async def aclose(self) -> None:
        """Stop (if working) and close the AMQP connection and the stores this adapter owns."""
        await self.stop()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None
            self._publisher = None
        if self._own_store:
            await self.store.aclose()
        if self._own_redis:
            await self.redis.aclose()

    # -- BaseDistributedAdapter ----------------------------------------------------------------

    async def create_context(self, run_id: str) -> PostgresRunContext:
        """The run's rows in PostgreSQL."""
        return (await self._ready_store()).context(run_id)

    async def enqueue_job(
        self, job: JobPayload, *, delay: float = 0.0, options: Mapping[str, Any] | None = None
    ) -> None:
        """Publish ``job`` (persistent, confirmed), deliverable after ``delay`` seconds."""
        await self.publish(job.to_json().encode("utf-8"), delay)

    async def publish_final_result(self, run_id: str, result: Mapping[str, Any]) -> None:
        """Store the result in the run's row and NOTIFY waiting clients."""
        await (await self._ready_store()).put_result(run_id, result)

    def final_source(self) -> PushSource:
        """See BaseDistributedAdapter: the store's NOTIFY announcements (no busy polling)."""
        return self.store.final_source()

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100, *, stale_after: float | None = None
    ) -> tuple[list[str], str | None]:
        """Non-final runs, least recently updated first (paged; ``stale_after``: only runs
        without progress for that long), from the ``runs_active`` index."""
        return await (await self._ready_store()).list_active_runs(
            cursor, limit, stale_after=stale_after
        )

    async def reconcile_all(
        self, stale_after: float = 60.0, page_size: int = 100
    ) -> dict[str, int]:
        """Reconcile every non-final run without progress for ``stale_after`` s; the
        "running and stale" filter runs in SQL on the partial index, page by page."""
        cursor: str | None = None
        scanned = reconciled = enqueued = 0
        while True:
            ids, cursor = await self.list_active_runs(cursor, page_size, stale_after=stale_after)
            for rid in ids:
                scanned += 1
                n = len(await self.reconcile(rid))
                reconciled += 1 if n else 0
                enqueued += n
            if cursor is None:
                break
        return {"scanned": scanned, "reconciled": reconciled, "enqueued": enqueued}

    def should_retry_in_process(self, node: NodeDefinition) -> bool:
        """``retry_in_process`` (constructor option); False delegates attempts to the queue."""
        return self.retry_in_process

    async def extend_delivery(self, delivery: Delivery) -> None:
        """Heartbeat: once the delivery is ``handoff_after`` s old, hand it off (a watchdog
        copy carrying the delivery count, then ack) before the broker's consumer timeout
        closes the channel."""
        r = delivery.message
        if delivery.settled or time.monotonic() - r.at < self.handoff_after:
            return
        every = round(self.watchdog_interval * 1000)
        headers = {WATCHDOG_HEADER: every, DELIVERIES_HEADER: delivery.deliveries}
        await self.publish(r.incoming.body, every / 1000, headers)
        await self._finish(r.incoming, ack=True)
        delivery.settled = True
        log.info(
            "handed off the delivery of long message %s (watchdog armed)", r.incoming.message_id
        )

    # -- publishing -------------------------------------------------------------------------------

    async def publish(
        self, body: bytes, delay: float = 0.0, headers: Mapping[str, Any] | None = None
    ) -> None:
        """Publish ``body`` to the work queue, deliverable after ``delay`` s (through the delay
        queues), with publisher confirms; retried across a reconnection for up to
        ``publish_timeout`` s."""
        hdrs: dict[str, Any] = dict(headers or {})
        delay_ms = math.ceil(delay * 1000) if delay > 0 else 0
        if delay_ms >= 1:
            hdrs[DUE_HEADER] = int(time.time() * 1000) + delay_ms
        await self._send(body, delay_ms, hdrs)

    async def _send(
        self,
        body: bytes,
        delay_ms: int,
        headers: dict[str, Any],
        *,
        dead: bool = False,
        message_id: str | None = None,
        content_type: str | None = "application/json",
    ) -> None:
        msg = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type=content_type,
            message_id=message_id or uuid.uuid4().hex,
            headers=headers or None,
        )
        deadline = time.monotonic() + self.publish_timeout
        while True:
            try:
                ch = await self._channel()
                route = self.dead_queue_name if dead else self.queue_name
                if delay_ms >= 1 and not dead:
                    route = await self._delay_queue(ch, delay_bucket_ms(delay_ms))
                await ch.default_exchange.publish(msg, route, mandatory=True, timeout=10.0)
                return
            except aio_pika.exceptions.PublishError:
                # Unroutable: the queue was deleted under us. Declare it again, then retry.
                log.warning("queue %s missing; declaring it again", route)
                self._declared.discard(route)
                if route in (self.queue_name, self.dead_queue_name):
                    self._publisher = None
            except _TRANSIENT as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("publish failed (%s); retrying after reconnection", exc)
                await asyncio.sleep(min(self.reconnect_interval, 0.5))
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not publish to {self.queue_name!r}")

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Publish the message as received to ``<queue>.dead`` with ``reason`` in the
        ``x-flowcraft-reason`` header (confirmed), then ack it."""
        m = delivery.message.incoming
        headers = {k: v for k, v in delivery.attributes.items() if k not in ("x-death", DUE_HEADER)}
        headers[REASON_HEADER] = reason[:4000]
        await self._send(
            m.body, 0, headers, dead=True, message_id=m.message_id, content_type=m.content_type
        )
        self.dead_lettered += 1
        await self.ack(delivery)

    async def dead_letters(self, limit: int = 1000) -> list[tuple[str, str]]:
        """``(body, reason)`` of up to ``limit`` messages in the dead-letter queue, left in the
        queue (read with ``basic.get`` and requeued)."""
        conn = await self.connection()
        ch = await conn.channel(publisher_confirms=False)
        out: list[tuple[str, str]] = []
        try:
            q = await ch.declare_queue(self.dead_queue_name, durable=True)
            while len(out) < limit:
                m = await q.get(no_ack=False, fail=False)
                if m is None:
                    break
                reason = str((m.headers or {}).get(REASON_HEADER, ""))
                out.append((m.body.decode("utf-8", "replace"), reason))
        finally:
            await ch.close()  # unacked gets go back to the queue
        return out

    # -- consuming ---------------------------------------------------------------------------

    async def process_jobs(self, handler: JobHandler) -> None:
        """Consume the work queue until :meth:`stop` (``prefetch`` jobs at once); each message
        is handled in its own task and settled by :meth:`process_delivery`."""
        if self.stopping:
            return
        stop = self.stop_event()
        await self._ready_store()
        await self.declare_topology()
        conn = await self.connection()
        ch = await conn.channel(publisher_confirms=False)
        await ch.set_qos(prefetch_count=self.prefetch)
        queue = await ch.declare_queue(self.queue_name, durable=True)
        run = self._watchdog(handler)

        async def on_message(message: AbstractIncomingMessage) -> None:
            # Own task, not aiormq's: a connection drop must not cancel a running node.
            t = asyncio.get_running_loop().create_task(self._on_message(run, message))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

        tag = await queue.consume(on_message, no_ack=False)
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            with contextlib.suppress(Exception):
                await ch.close()

    def _watchdog(self, handler: JobHandler) -> JobHandler:
        """``handler``, except for a watchdog copy whose node lease is alive (the node still
        runs): it is re-armed, not run; the delivery number stays. (A broker redelivery whose
        dead worker's lease still runs is the engine's: it requeues it as recovering.)"""

        async def run(job: JobPayload, delivery: Delivery | None) -> None:
            if delivery is not None:
                every = self._rearm_ms(delivery)
                if every and await self._lease_alive(job):
                    body = delivery.message.incoming.body
                    headers = {WATCHDOG_HEADER: every, DELIVERIES_HEADER: delivery.deliveries - 1}
                    await self.publish(body, every / 1000, headers)
                    return
            await handler(job, delivery)

        return run

    def _rearm_ms(self, delivery: Delivery) -> int:
        """How often a watchdog copy re-checks its node's lease (ms); 0 for a plain job."""
        mark = delivery.attributes.get(WATCHDOG_HEADER)
        if mark is not None:
            try:
                every = int(str(mark))
            except ValueError:
                every = 1
            return every if every > 1 else round(self.watchdog_interval * 1000)
        return 0

    async def _on_message(self, handler: JobHandler, message: AbstractIncomingMessage) -> None:
        headers = dict(message.headers or {})
        delivery: Delivery | None = None
        try:
            if await self._early(message, headers):
                return
            delivery = Delivery(
                message.body,
                Received(message),
                deliveries=await self._deliveries(message, headers),
                attributes=headers,
            )
            await self.process_delivery(delivery, handler)
        except SimulatedCrash:
            # A dead process acks nothing; its connection closes and the broker requeues.
            if delivery is None or not delivery.settled:
                await self._finish(message, ack=False)
        except Exception:
            # Something failed around the handler (counting, settling: a store or broker
            # outage): the message goes back to the queue; the engine deduplicates.
            log.exception("handling message %s failed; requeueing it", message.message_id)
            if delivery is None or not delivery.settled:
                await asyncio.sleep(self.delivery_policy.backoff)
                await self._finish(message, ack=False)

    async def _early(self, message: AbstractIncomingMessage, headers: dict[str, Any]) -> bool:
        """True when a delayed message arrived early and was sent round the delay queues once
        more; a message nearly due is held here until it is."""
        due = headers.get(DUE_HEADER)
        if due is None:
            return False
        remaining_ms = int(str(due)) - int(time.time() * 1000)
        if remaining_ms > self.local_wait_ms:  # early (a power-of-two hop): go round
            rest = {k: v for k, v in headers.items() if k != "x-death"}
            await self._send(message.body, remaining_ms, rest)
            await self._finish(message, ack=True)
            return True
        if remaining_ms >= 1:  # nearly due: wait here rather than another hop
            await asyncio.sleep(remaining_ms / 1000)
        return False

    async def _deliveries(self, message: AbstractIncomingMessage, headers: dict[str, Any]) -> int:
        """This delivery's number: the earlier copies' deliveries (header), plus the broker's
        redeliveries of this copy (counted by message id in the coordination store)."""
        try:
            earlier = max(int(str(headers.get(DELIVERIES_HEADER) or 0)), 0)
        except ValueError:
            earlier = 0
        if message.redelivered:
            mid = message.message_id or hashlib.sha1(message.body).hexdigest()
            earlier += await self.coordination.increment(f"rmq-redelivered:{mid}", 24 * 3600.0)
        return earlier + 1

    async def _finish(self, message: AbstractIncomingMessage, *, ack: bool) -> None:
        """Ack, or nack with requeue; a delivery whose channel is gone (connection drop) is
        only counted in :attr:`stale_acks`: the broker has requeued it already."""
        try:
            if ack:
                await message.ack()
            else:
                await message.nack(requeue=True)
        except Exception as exc:
            self.stale_acks += 1
            log.info("could not settle message %s (%s)", message.message_id, exc)

    async def settle(self, delivery: Delivery, decision: Decision) -> None:
        """See :meth:`~flowcraft.distributed.BaseDistributedAdapter.settle`. A requeue (not a
        node attempt) keeps the delivery number of the message it replaces: the broker gives
        a dead worker's message back at once, while the node's lease still holds, and the
        copy that outlives the lease must still be known as a redelivery."""
        if (
            decision.disposition is not Disposition.RETRY
            or decision.native
            or delivery.deliveries < 2
        ):
            await super().settle(delivery, decision)
            return
        assert decision.job is not None
        headers = {DELIVERIES_HEADER: delivery.deliveries - 1}
        await self.publish(decision.job.to_json().encode("utf-8"), decision.delay, headers)
        await self.ack(delivery)
        delivery.settled = True

    async def ack(self, delivery: Delivery) -> None:
        """Ack the message (nothing when it was handed off already)."""
        if not delivery.settled:
            await self._finish(delivery.message.incoming, ack=True)
            self.processed += 1

    async def redeliver(self, delivery: Delivery, delay: float) -> None:
        """After ``delay`` > 0: publish the message again through the delay queues with the
        delivery count, then ack it; ``delay`` 0 (shutdown): nack it, requeued at once. A
        handed-off delivery is left alone: its watchdog copy brings the job back."""
        if delivery.settled:
            return
        message = delivery.message.incoming
        if delay <= 0:
            await self._finish(message, ack=False)
            return
        headers = {k: v for k, v in delivery.attributes.items() if k not in ("x-death", DUE_HEADER)}
        headers[DELIVERIES_HEADER] = delivery.deliveries
        await self.publish(message.body, delay, headers)
        await self._finish(message, ack=True)

    async def _lease_alive(self, job: JobPayload) -> bool:
        key = self._lease_key(job.run_id, job.node_id, job.iteration)
        return await self._lease_held(job.run_id, key)


_URL_OPTIONS: Final = {
    "postgres": Option("postgres"),
    "redis": Option("redis"),
    "queue": Option("queue_name"),
    "schema": Option("schema"),
    "prefetch": Option("prefetch", int),
    "redis_prefix": Option("redis_prefix"),
    "inline": Option("inline_successors", int),
}


def from_url(url: str, **kwargs: Any) -> RabbitMQAdapter:
    """Entry point of the ``amqp``/``amqps``/``rabbitmq`` backend schemes:
    ``amqp://user:pass@host:port/vhost?postgres=URL&redis=URL&queue=NAME&schema=S&prefetch=N``
    (and ``inline=N``: inline successors)
    (URL-encode the nested URLs). Without ``postgres``/``redis`` the environment variables
    ``FLOWCRAFT_POSTGRES_URL`` / ``FLOWCRAFT_REDIS_URL`` are used, else local defaults.
    ``rabbitmq://`` is an alias of ``amqp://``; other query options go to aio-pika."""
    u = parse_url(
        url,
        _URL_OPTIONS,
        schemes={"amqp": "amqp", "amqps": "amqps", "rabbitmq": "amqp"},
        kwargs=kwargs,
    )
    for name, env in (("postgres", "FLOWCRAFT_POSTGRES_URL"), ("redis", "FLOWCRAFT_REDIS_URL")):
        if name not in u.kwargs and os.environ.get(env):
            u.kwargs[name] = os.environ[env]
    return RabbitMQAdapter(u.url, **u.kwargs)


__all__ = [
    "DELIVERIES_HEADER",
    "DUE_HEADER",
    "MAX_DELAY_BUCKET_MS",
    "REASON_HEADER",
    "WATCHDOG_HEADER",
    "RabbitMQAdapter",
    "Received",
    "delay_bucket_ms",
    "from_url",
]
