"""RabbitMQAdapter: Flowcraft workers and clients on RabbitMQ, with run state in PostgreSQL
and coordination (node leases) in Redis.

All orchestration (routing, joins, exactly-once commits, leases, recovery) is
:class:`~flowcraft.distributed.adapter.BaseDistributedAdapter`'s; this module maps it onto
RabbitMQ (``aio-pika``, robust connections) and the stores:

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
  connection closes; the node lease in Redis keeps a slow node from running twice.
* long nodes vs. the broker's ``consumer_timeout`` (30 min by default; the broker closes the
  channel of a delivery unacked for longer): after ``handoff_after`` seconds the heartbeat hands
  the delivery off: it publishes a *watchdog* copy of the job (delivered every
  ``watchdog_interval`` s while the node's lease is alive, run normally once the lease is gone,
  i.e. if this worker died) and acks the original.
* poison messages go to ``<queue>.dead`` with the reason in the ``x-flowcraft-reason`` header:
  unparseable bodies, jobs the engine rejects, messages whose handling raised
  ``max_failures`` times (each failure is retried with backoff through a delay queue, never in
  a hot loop), and messages redelivered more than ``max_redeliveries`` times (a job that kills
  its worker every time).
* reconnection: ``aio_pika.connect_robust`` re-opens channels, QoS and the consumer after a
  broker connection drop; acks of deliveries from the dropped connection are discarded (the
  broker has requeued them and the engine deduplicates the redelivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
import aiormq
import redis.asyncio as aioredis
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from flowcraft.blueprint import NodeDefinition
from flowcraft.distributed.adapter import BaseDistributedAdapter, JobHandler, RetryJob
from flowcraft.distributed.contracts import (
    Capabilities,
    InvalidJobError,
    JobPayload,
    SimulatedCrash,
)
from flowcraft.distributed.results import PushSource
from flowcraft.redis import RedisCoordinationStore, RedisKeyLayout, connect

from .postgres import PostgresRunContext, PostgresRunStore, PostgresStoreStats

log = logging.getLogger("flowcraft.rabbitmq")

DUE_HEADER: Final = "x-flowcraft-due"
"""Epoch milliseconds at which a delayed message is due."""
WATCHDOG_HEADER: Final = "x-flowcraft-watchdog"
"""Marks the watchdog copy of a job whose delivery was handed off (see the module docs)."""
FAILURES_HEADER: Final = "x-flowcraft-failures"
"""How many times handling this message raised (infrastructure errors, not node failures)."""
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


@dataclass
class _Delivery:
    """The delivery a job task is handling (inherited by its heartbeat task)."""

    message: AbstractIncomingMessage
    received: float = field(default_factory=time.monotonic)
    settled: bool = False


_CURRENT: contextvars.ContextVar[_Delivery | None] = contextvars.ContextVar(
    "flowcraft_rabbitmq_delivery", default=None
)


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
    ``handoff_after`` (default: half of it) and watched every ``watchdog_interval`` s. Poison:
    ``max_failures`` failed handlings or ``max_redeliveries`` redeliveries dead-letter a
    message. ``publish_timeout`` bounds how long a publish waits for a lost connection to come
    back. ``retry_in_process=False`` delegates node retries to the queue (one delivery per
    attempt, backoff through the delay queues). Other keyword arguments go to
    :class:`~flowcraft.distributed.adapter.BaseDistributedAdapter`.
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
        max_failures: int = 10,
        max_redeliveries: int = 20,
        publish_timeout: float = 60.0,
        reconnect_interval: float = 1.0,
        connection_name: str | None = None,
        migrate: bool = True,
        pg_pool_size: int = 8,
        stats: PostgresStoreStats | None = None,
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
        self.max_failures = max_failures
        self.max_redeliveries = max_redeliveries
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
        super().__init__(**kwargs)
        self.connection_name = connection_name or f"flowcraft-{self.worker_id}-{os.getpid()}"
        self._connection: AbstractRobustConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._publisher: AbstractRobustChannel | None = None
        self._declared: set[str] = set()
        self._declare_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._stopping = False
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

    async def extend_job_lease(self, job: JobPayload) -> None:
        """Heartbeat: once the delivery is ``handoff_after`` s old, hand it off (watchdog copy
        + ack) before the broker's consumer timeout closes the channel."""
        d = _CURRENT.get()
        if d is None or d.settled or time.monotonic() - d.received < self.handoff_after:
            return
        headers = {WATCHDOG_HEADER: 1}
        await self.publish(d.message.body, self.watchdog_interval, headers)
        await self._settle_delivery(d, "ack")
        log.info("handed off the delivery of long job %s (watchdog armed)", job.job_id)

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

    async def _send(self, body: bytes, delay_ms: int, headers: dict[str, Any]) -> None:
        msg = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=uuid.uuid4().hex,
            headers=headers or None,
        )
        deadline = time.monotonic() + self.publish_timeout
        while True:
            try:
                ch = await self._channel()
                route = self.queue_name
                if delay_ms >= 1:
                    route = await self._delay_queue(ch, delay_bucket_ms(delay_ms))
                await ch.default_exchange.publish(msg, route, mandatory=True, timeout=10.0)
                return
            except aio_pika.exceptions.PublishError:
                # Unroutable: the queue was deleted under us. Declare it again, then retry.
                log.warning("queue %s missing; declaring it again", route)
                self._declared.discard(route)
                if route == self.queue_name:
                    self._publisher = None
            except _TRANSIENT as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("publish failed (%s); retrying after reconnection", exc)
                await asyncio.sleep(min(self.reconnect_interval, 0.5))
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not publish to {self.queue_name!r}")

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        log.error("dead-lettering message %s: %s", message.message_id, reason)
        headers = {
            k: v for k, v in (message.headers or {}).items() if k not in ("x-death", DUE_HEADER)
        }
        headers[REASON_HEADER] = reason[:4000]
        msg = aio_pika.Message(
            message.body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type=message.content_type,
            message_id=message.message_id,
            headers=headers,
        )
        deadline = time.monotonic() + self.publish_timeout
        while True:
            try:
                ch = await self._channel()
                await ch.default_exchange.publish(
                    msg, self.dead_queue_name, mandatory=True, timeout=10.0
                )
                break
            except _TRANSIENT:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(min(self.reconnect_interval, 0.5))
        self.dead_lettered += 1

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

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping

    async def stop(self) -> None:
        """Stop consuming; jobs in progress finish (and are acked) first."""
        self._stopping = True
        self._stop.set()

    async def process_jobs(self, handler: JobHandler) -> None:
        """Consume the work queue until :meth:`stop` (``prefetch`` jobs at once)."""
        if self._stopping:
            return
        await self._ready_store()
        await self.declare_topology()
        conn = await self.connection()
        ch = await conn.channel(publisher_confirms=False)
        await ch.set_qos(prefetch_count=self.prefetch)
        queue = await ch.declare_queue(self.queue_name, durable=True)

        async def on_message(message: AbstractIncomingMessage) -> None:
            # Own task, not aiormq's: a connection drop must not cancel a running node.
            t = asyncio.get_running_loop().create_task(self._on_message(handler, message))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

        tag = await queue.consume(on_message, no_ack=False)
        try:
            await self._stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            with contextlib.suppress(Exception):
                await ch.close()

    async def _settle_delivery(self, d: _Delivery, how: str) -> None:
        if d.settled:
            return
        d.settled = True
        try:
            if how == "ack":
                await d.message.ack()
            else:
                await d.message.nack(requeue=True)
        except Exception as exc:
            # The delivery's channel is gone (connection drop): the broker requeued it.
            self.stale_acks += 1
            log.info("could not %s message %s (%s)", how, d.message.message_id, exc)

    async def _on_message(self, handler: JobHandler, message: AbstractIncomingMessage) -> None:
        d = _Delivery(message)
        headers = dict(message.headers or {})
        try:
            due = headers.get(DUE_HEADER)
            if due is not None:
                remaining_ms = int(str(due)) - int(time.time() * 1000)
                if remaining_ms > self.local_wait_ms:  # early (a power-of-two hop): go round
                    rest = {k: v for k, v in headers.items() if k not in ("x-death",)}
                    await self._send(message.body, remaining_ms, rest)
                    await self._settle_delivery(d, "ack")
                    return
                if remaining_ms >= 1:  # nearly due: wait here rather than another hop
                    await asyncio.sleep(remaining_ms / 1000)
            try:
                job = JobPayload.parse(message.body.decode("utf-8"))
            except (InvalidJobError, UnicodeDecodeError) as exc:
                await self._dead_letter(message, f"{exc}")
                await self._settle_delivery(d, "ack")
                return
            if headers.get(WATCHDOG_HEADER) and await self._lease_alive(job):
                await self.publish(message.body, self.watchdog_interval, {WATCHDOG_HEADER: 1})
                await self._settle_delivery(d, "ack")
                return
            if message.redelivered and await self._too_many_redeliveries(message):
                await self._dead_letter(
                    message, f"redelivered more than {self.max_redeliveries} times"
                )
                await self._settle_delivery(d, "ack")
                return
            await self._run(handler, d, job, headers)
        except Exception:
            # Something failed around the handler (a store or broker outage): the delivery goes
            # back to the queue; the engine deduplicates whatever was done already.
            log.exception("handling message %s failed; requeueing it", message.message_id)
            await asyncio.sleep(0.05)
            await self._settle_delivery(d, "nack")

    async def _run(
        self, handler: JobHandler, d: _Delivery, job: JobPayload, headers: dict[str, Any]
    ) -> None:
        token = _CURRENT.set(d)
        try:
            await handler(job)
        except RetryJob as exc:
            await self.enqueue_job(exc.job, delay=exc.delay)
        except InvalidJobError as exc:
            await self._dead_letter(d.message, str(exc))
        except SimulatedCrash:
            # A dead process acks nothing; its connection closes and the broker requeues.
            await self._settle_delivery(d, "nack")
            return
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._stopping or task is None:
                await self._settle_delivery(d, "nack")
                raise
            task.uncancel()
            log.info("job %s cancelled with its run", job.job_id)
        except Exception as exc:
            failures = int(headers.get(FAILURES_HEADER) or 0) + 1
            if failures >= self.max_failures:
                await self._dead_letter(d.message, f"handling failed {failures} times: {exc!r}")
            else:
                delay = min(0.05 * 2 ** (failures - 1), 30.0)
                log.exception("job %s failed; redelivering in %.2f s", job.job_id, delay)
                rest = {k: v for k, v in headers.items() if k not in ("x-death", DUE_HEADER)}
                rest[FAILURES_HEADER] = failures
                await self.publish(d.message.body, delay, rest)
        finally:
            _CURRENT.reset(token)
        await self._settle_delivery(d, "ack")
        self.processed += 1

    async def _lease_alive(self, job: JobPayload) -> bool:
        key = self._lease_key(job.run_id, job.node_id, job.iteration)
        return await self._lease_held(job.run_id, key)

    async def _too_many_redeliveries(self, message: AbstractIncomingMessage) -> bool:
        mid = message.message_id or hashlib.sha1(message.body).hexdigest()
        n = await self.coordination.increment(f"rmq-redelivered:{mid}", 24 * 3600.0)
        return n > self.max_redeliveries


_URL_OPTIONS: Final = {
    "postgres": ("postgres", str),
    "redis": ("redis", str),
    "queue": ("queue_name", str),
    "schema": ("schema", str),
    "prefetch": ("prefetch", int),
    "redis_prefix": ("redis_prefix", str),
}


def from_url(url: str, **kwargs: Any) -> RabbitMQAdapter:
    """Entry point of the ``amqp``/``amqps``/``rabbitmq`` backend schemes:
    ``amqp://user:pass@host:port/vhost?postgres=URL&redis=URL&queue=NAME&schema=S&prefetch=N``
    (URL-encode the nested URLs). Without ``postgres``/``redis`` the environment variables
    ``FLOWCRAFT_POSTGRES_URL`` / ``FLOWCRAFT_REDIS_URL`` are used, else local defaults.
    ``rabbitmq://`` is an alias of ``amqp://``; other query options go to aio-pika."""
    parts = urlsplit(url)
    scheme = "amqp" if parts.scheme == "rabbitmq" else parts.scheme
    query = []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k in _URL_OPTIONS:
            name, conv = _URL_OPTIONS[k]
            kwargs[name] = conv(v)
        else:
            query.append((k, v))
    if "postgres" not in kwargs and os.environ.get("FLOWCRAFT_POSTGRES_URL"):
        kwargs["postgres"] = os.environ["FLOWCRAFT_POSTGRES_URL"]
    if "redis" not in kwargs and os.environ.get("FLOWCRAFT_REDIS_URL"):
        kwargs["redis"] = os.environ["FLOWCRAFT_REDIS_URL"]
    amqp_url = urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), ""))
    return RabbitMQAdapter(amqp_url, **kwargs)


__all__ = [
    "DUE_HEADER",
    "FAILURES_HEADER",
    "MAX_DELAY_BUCKET_MS",
    "REASON_HEADER",
    "WATCHDOG_HEADER",
    "RabbitMQAdapter",
    "delay_bucket_ms",
    "from_url",
]
