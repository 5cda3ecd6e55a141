"""KafkaAdapter: Flowcraft workers and clients on a Kafka topic, with run state in Redis (or
Cassandra) and coordination in Redis.

All orchestration (routing, joins, exactly-once commits, leases, recovery) and every delivery
decision (ack, retry, redeliver, dead-letter, give back) is the engine's; this module maps
them onto Kafka:

* topics ``<topic>`` (jobs), ``<topic>.delay`` (jobs due later) and ``<topic>.dead`` (dead
  letters), created on first use (:mod:`.topics`).
* producing: an idempotent ``confluent-kafka`` producer (:mod:`.producer`); a job is keyed by
  run, node, attempt and requeue, so the nodes of one run spread over the partitions and a
  requeued job (or a redelivered copy) lands on another partition. An enqueue-only client
  (``start_run``, ``result``) has a producer and no consumer.
* consuming: one consumer group member per worker running many jobs of each partition at once,
  committing only up to the lowest unfinished offset, pausing a partition whose window is full
  (:mod:`.consumer`, :mod:`.window`). A slow node holds one slot; other runs go on.
* Kafka has no per-message ack, nack or visibility: an ack finishes the offset; a redelivery
  (a failure outside the node) and a retry produce the job again (to the delay topic when it
  has a delay) and finish the original. Delays are held by the consuming worker until due;
  waits longer than ``max_hold`` are re-produced, and the engine chains longer ``sleep``
  timers itself (``Capabilities.max_delay_seconds``).
* delivery count: the ``fc-deliveries`` header carries the deliveries of the job's earlier
  copies; a message consumed below the high watermark seen when its partition was assigned may
  have been delivered to a dead member, so its redeliveries are counted in the coordination
  store by ``group/topic/partition/offset``.
* dead letters: ``<topic>.dead`` with the reason in the ``fc-reason`` header.
* crash recovery: a dead member's uncommitted offsets go to the group's survivors after the
  session timeout; the node lease in Redis keeps a slow node from running twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Protocol

from confluent_kafka import Consumer, KafkaError, TopicPartition
from flowcraft.distributed import (
    BaseDistributedAdapter,
    Capabilities,
    CoordinationStore,
    Decision,
    Delivery,
    Disposition,
    DistributedContext,
    FinalSource,
    JobHandler,
    JobPayload,
    Option,
    parse_url,
)
from flowcraft.redis import RedisStateStore, RedisStoreStats, connect

from .consumer import JobConsumer
from .producer import AsyncProducer
from .topics import (
    DELIVERIES_HEADER,
    DUE_HEADER,
    REASON_HEADER,
    SOURCE_HEADER,
    Topics,
    ensure_topics,
    header_map,
)
from .window import Record

log = logging.getLogger("flowcraft.kafka")

DEFAULT_MAX_HOLD: Final = 900.0
"""Longest a worker holds a delayed message (seconds); longer delays are re-produced."""
DELIVERY_COUNT_TTL: Final = 7 * 24 * 3600.0


class RunStore(Protocol):
    """What the adapter needs of a run store: contexts, final-run announcements and the
    active-run index. :class:`flowcraft.redis.RedisStateStore` and
    :class:`flowcraft_kafka.cassandra.CassandraRunStore` are two."""

    def context(self, run_id: str) -> DistributedContext:
        """The run's context."""
        ...

    async def publish_final(self, run_id: str, status: str) -> None:
        """Announce that the run became final."""
        ...

    def final_source(self) -> FinalSource:
        """Where clients learn that runs became final."""
        ...

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """A page of runs that are not final, and the next cursor."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class KafkaAdapter(BaseDistributedAdapter):
    """A Flowcraft worker (``await adapter.start()``) or client (``start_run``/``result``/...)
    on Kafka + Redis (+ Cassandra).

    ``bootstrap_servers`` is the Kafka bootstrap list (``host:port[,host:port]``); ``topic``
    names the three topics (see :mod:`flowcraft_kafka.topics`), ``group_id`` the workers'
    consumer group. ``redis_url`` is the coordination store (node leases, delivery counts) and,
    with ``run_store="redis"`` (the default), the run store too, under ``<prefix>:state:``;
    ``run_store`` may also be any :class:`RunStore` (e.g. a
    :class:`~flowcraft_kafka.cassandra.CassandraRunStore`; shared by many adapters, it is
    closed by its owner, not by :meth:`aclose`).

    Consumption: ``concurrency`` jobs run at once; ``window`` unfinished messages per jobs
    partition (``delay_window`` per delay partition) before the partition pauses;
    ``revoke_timeout`` is how long a rebalance waits for running jobs of revoked partitions;
    ``redelivery_timeout`` is when a handling that died unsettled is handed out again (Kafka
    has no visibility timeout); ``max_hold`` is the longest a delayed message is held.
    ``consumer_config``/``producer_config`` are merged into the librdkafka settings (e.g.
    ``{"session.timeout.ms": 6000}``). ``partitions`` is used when the topics are created
    (``create_topics``). Other keyword arguments go to
    :class:`~flowcraft.distributed.adapter.BaseDistributedAdapter`.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        delayed_delivery=True,  # the delay topic; held until due, re-produced past max_hold
        multi_process=True,
        redelivery_on_crash=True,  # uncommitted offsets return to the group
        dead_letter=True,  # <topic>.dead
        max_delay_seconds=DEFAULT_MAX_HOLD,
        max_value_bytes=64 * 1024 * 1024,
        extra={"bytes_counter": True},
    )

    def __init__(
        self,
        bootstrap_servers: str = "127.0.0.1:9092",
        *,
        topic: str = "flowcraft",
        group_id: str = "flowcraft-workers",
        redis_url: str = "redis://127.0.0.1:6379/0",
        run_store: str | RunStore = "redis",
        prefix: str = "flowcraft",
        partitions: int = 8,
        create_topics: bool = True,
        concurrency: int = 16,
        window: int = 64,
        delay_window: int = 1024,
        poll_timeout: float = 0.05,
        revoke_timeout: float = 10.0,
        redelivery_timeout: float = 30.0,
        max_hold: float = DEFAULT_MAX_HOLD,
        consumer_config: Mapping[str, Any] | None = None,
        producer_config: Mapping[str, Any] | None = None,
        retention_seconds: float | None = 7 * 24 * 3600,
        shards: int = 16,
        cache_runs: int = 256,
        stats: RedisStoreStats | None = None,
        inline_successors: int = 64,
        **kwargs: Any,
    ) -> None:
        if concurrency < 1 or window < 1 or delay_window < 1:
            raise ValueError("concurrency, window and delay_window must be >= 1")
        self.bootstrap_servers = bootstrap_servers
        self.topics = Topics.named(topic)
        self.group_id = group_id
        self.prefix = prefix
        self.partitions = partitions
        self.create_topics = create_topics
        self.concurrency = concurrency
        self.window = window
        self.delay_window = delay_window
        self.poll_timeout = poll_timeout
        self.revoke_timeout = revoke_timeout
        self.redelivery_timeout = redelivery_timeout
        self.max_hold = min(max_hold, DEFAULT_MAX_HOLD)
        self.consumer_config = dict(consumer_config or {})
        self.producer_config = dict(producer_config or {})
        self.redis = connect(redis_url)
        redis_store = RedisStateStore(
            self.redis,
            prefix=f"{prefix}:state:",
            shards=shards,
            retention_seconds=retention_seconds,
            max_value_bytes=self.capabilities.max_value_bytes,
            stats=stats,
            cache_runs=cache_runs,
        )
        self._owns_store = run_store == "redis"
        if run_store == "redis":
            self.store: RunStore = redis_store
        elif isinstance(run_store, str):
            raise ValueError(f"run_store {run_store!r}: expected 'redis' or a RunStore object")
        else:
            self.store = run_store
        coordination: CoordinationStore = redis_store.coordination
        kwargs.setdefault("coordination_store", coordination)
        super().__init__(inline_successors=inline_successors, **kwargs)
        self._producer: AsyncProducer | None = None
        self._topics_ready: asyncio.Task[None] | None = None
        self._consumer: JobConsumer | None = None

    # -- Kafka plumbing ----------------------------------------------------------------------

    @property
    def kafka_config(self) -> dict[str, Any]:
        """The librdkafka settings shared by producer, consumer and admin client."""
        return {"bootstrap.servers": self.bootstrap_servers}

    @property
    def producer(self) -> AsyncProducer:
        """The idempotent producer (created on first use)."""
        if self._producer is None:
            self._producer = AsyncProducer({**self.kafka_config, **self.producer_config})
        return self._producer

    async def ensure_topics(self) -> None:
        """Create the topics once per adapter (when ``create_topics``)."""
        if not self.create_topics:
            return
        if self._topics_ready is None:
            self._topics_ready = asyncio.ensure_future(
                ensure_topics(self.kafka_config, self.topics, partitions=self.partitions)
            )
        try:
            await asyncio.shield(self._topics_ready)
        except Exception:
            self._topics_ready = None
            raise

    async def _send(
        self, topic: str, body: bytes, key: bytes | None, headers: Mapping[str, str]
    ) -> None:
        await self.ensure_topics()
        hdrs = [(k, v.encode("utf-8")) for k, v in headers.items()]
        await self.producer.send(topic, body, key=key, headers=hdrs)

    async def _send_job(
        self, body: bytes, key: bytes | None, delay: float, headers: dict[str, str]
    ) -> None:
        if delay > 0:
            headers[DUE_HEADER] = str(int((time.time() + delay) * 1000))
            await self._send(self.topics.delay, body, key, headers)
        else:
            headers.pop(DUE_HEADER, None)
            await self._send(self.topics.jobs, body, key, headers)

    # -- BaseDistributedAdapter ----------------------------------------------------------------

    async def create_context(self, run_id: str) -> DistributedContext:
        """The run's context in the run store."""
        return self.store.context(run_id)

    async def enqueue_job(
        self, job: JobPayload, *, delay: float = 0.0, options: Mapping[str, Any] | None = None
    ) -> None:
        """Produce ``job`` to the jobs topic, or to the delay topic when ``delay`` > 0; returns
        once the broker acknowledged it."""
        # Keyed by run, node, attempt and requeue: one run's nodes spread over the
        # partitions, and a requeued or retried job moves to another partition (a worker that
        # cannot run it, e.g. lacking its blueprint version, does not get it back forever).
        key = f"{job.run_id}\x1f{job.node_id}\x1f{job.attempt}\x1f{job.requeues}".encode()
        await self._send_job(job.to_json().encode("utf-8"), key, delay, {})

    async def publish_final_result(self, run_id: str, result: Mapping[str, Any]) -> None:
        """Announce the final status (the result itself is the run's record)."""
        await self.store.publish_final(run_id, str(result.get("status")))

    def final_source(self) -> FinalSource:
        """See BaseDistributedAdapter: the run store's announcements."""
        return self.store.final_source()

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """Non-final runs from the run store's active-run index."""
        return await self.store.list_active_runs(cursor, limit)

    # -- consuming ---------------------------------------------------------------------------

    async def process_jobs(self, handler: JobHandler) -> None:
        """Be a member of the consumer group until :meth:`stop` (see :mod:`.consumer`)."""
        if self.stopping:
            return
        await self.ensure_topics()
        # The producer's id is obtained in the background while the group forms (an
        # idempotent producer's first send waits for it: ~0.5 s on Tansu).
        _ = self.producer

        async def deliver(rec: Record) -> None:
            await self.process_delivery(self._delivery(rec), handler)

        conf = {
            **self.kafka_config,
            "group.id": self.group_id,
            "client.id": f"flowcraft-{self.worker_id}",
            **self.consumer_config,
        }
        self._consumer = JobConsumer(
            stopping=lambda: self.stopping,
            stop_event=self.stop_event(),
            conf=conf,
            topics=self.topics,
            deliver=deliver,
            hop=self._hop,
            concurrency=self.concurrency,
            window=self.window,
            delay_window=self.delay_window,
            batch=max(self.concurrency, 1),
            poll_timeout=self.poll_timeout,
            revoke_timeout=self.revoke_timeout,
            redelivery_timeout=self.redelivery_timeout,
            max_hold=self.max_hold,
            count_delivery=self._count_delivery,
        )
        await self._consumer.run()

    async def _count_delivery(self, rec: Record) -> None:
        """Count a delivery of a message that a previous owner of its partition may have
        had (see the module docstring)."""
        key = f"kafka-delivered:{self.group_id}:{rec.topic}:{rec.partition}:{rec.offset}"
        rec.headers["fc-counted"] = str(await self.coordination.increment(key, DELIVERY_COUNT_TTL))

    def _delivery(self, rec: Record) -> Delivery:
        try:
            earlier = max(int(rec.headers.get(DELIVERIES_HEADER, "0")), 0)
        except ValueError:
            earlier = 0
        counted = int(rec.headers.get("fc-counted", "1"))
        return Delivery(
            rec.value,
            rec,
            deliveries=earlier + rec.local_redeliveries + max(counted, 1),
            attributes=dict(rec.headers),
        )

    async def _hop(self, rec: Record) -> None:
        """A delayed message still far from due goes round the delay topic again."""
        headers = {k: v for k, v in rec.headers.items() if k != "fc-counted"}
        await self._send(self.topics.delay, rec.value, rec.key, headers)
        rec.done = True

    async def settle(self, delivery: Delivery, decision: Decision) -> None:
        """As the base class, except that a message given back on shutdown is left
        uncommitted (the partition's next owner gets it) instead of produced again."""
        if decision.disposition is Disposition.ABANDON:
            delivery.settled = True
            return
        await super().settle(delivery, decision)

    async def ack(self, delivery: Delivery) -> None:
        """Finish the offset (committed once every lower offset is finished too)."""
        rec: Record = delivery.message
        rec.done = True

    async def redeliver(self, delivery: Delivery, delay: float) -> None:
        """Produce a copy (carrying the delivery count) after ``delay`` s, finish the
        original."""
        rec: Record = delivery.message
        headers = {
            DELIVERIES_HEADER: str(delivery.deliveries),
            SOURCE_HEADER: f"{rec.topic}/{rec.partition}/{rec.offset}",
        }
        key = (rec.key or b"") + f"\x1f{delivery.deliveries}".encode()  # another partition
        await self._send_job(rec.value, key, delay, headers)
        rec.done = True

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Produce the message to ``<topic>.dead`` with ``reason``, finish the original."""
        rec: Record = delivery.message
        headers = {
            REASON_HEADER: reason,
            SOURCE_HEADER: f"{rec.topic}/{rec.partition}/{rec.offset}",
            DELIVERIES_HEADER: str(delivery.deliveries),
        }
        await self._send(self.topics.dead, rec.value, rec.key, headers)
        rec.done = True

    async def enqueue_raw(self, body: bytes) -> None:
        """Produce ``body`` to the jobs topic as it is (tests, tools)."""
        await self._send(self.topics.jobs, body, None, {})

    async def dead_letters(self, timeout: float = 10.0) -> list[tuple[bytes, str]]:
        """Every message of ``<topic>.dead``: ``(body, reason)`` (reads the whole topic)."""
        await self.ensure_topics()
        return await asyncio.to_thread(self._read_dead, timeout)

    def _read_dead(self, timeout: float) -> list[tuple[bytes, str]]:
        c = Consumer(
            {
                **self.kafka_config,
                "group.id": f"flowcraft-dead-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            low, high = c.get_watermark_offsets(
                TopicPartition(self.topics.dead, 0), timeout=timeout, cached=False
            )
            if high <= low:
                return []
            c.assign([TopicPartition(self.topics.dead, 0, low)])
            out: list[tuple[bytes, str]] = []
            limit = time.monotonic() + timeout
            while time.monotonic() < limit:
                m = c.poll(0.2)
                if m is None:
                    continue
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        break
                    continue
                out.append((m.value() or b"", header_map(m.headers()).get(REASON_HEADER, "")))
                if (m.offset() or 0) + 1 >= high:
                    break
            return out
        finally:
            c.close()

    async def aclose(self) -> None:
        """Stop (if working), flush the producer and close the stores' connections."""
        await self.stop()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.aclose()
            self._producer = None
        if self._owns_store:  # a store passed in is closed by its owner
            await self.store.aclose()
        await self.redis.aclose()


_URL_OPTIONS: Final[Mapping[str, Option]] = {
    "topic": Option("topic"),
    "group": Option("group_id"),
    "redis": Option("redis_url"),
    "prefix": Option("prefix"),
    "partitions": Option("partitions", int),
    "concurrency": Option("concurrency", int),
    "window": Option("window", int),
    "inline": Option("inline_successors", int),
}


def from_url(url: str, **kwargs: Any) -> KafkaAdapter:
    """Entry point of the ``kafka`` backend scheme:
    ``kafka://HOST:PORT[,HOST:PORT]?topic=NAME&group=GROUP&redis=REDIS_URL&prefix=P``
    ``&partitions=N&concurrency=N&window=N&inline=N`` (the Redis URL percent-encoded). Query
    options override keyword arguments."""
    u = parse_url(url, _URL_OPTIONS, schemes={"kafka": "kafka"}, passthrough=False, kwargs=kwargs)
    if not u.netloc:
        raise ValueError(f"backend URL {url!r}: expected kafka://HOST:PORT[,HOST:PORT]")
    return KafkaAdapter(u.netloc, **u.kwargs)


__all__ = ["DEFAULT_MAX_HOLD", "KafkaAdapter", "RunStore", "from_url"]
