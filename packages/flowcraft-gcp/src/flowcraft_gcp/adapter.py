"""GcpAdapter: Flowcraft workers and clients on a Pub/Sub subscription, with run state and
coordination in Firestore (no Redis).

All orchestration and every decision about a delivered message is the engine's
(:func:`~flowcraft.distributed.delivery.decide`); this module maps it onto Pub/Sub:

* receiving: unary ``Pull`` through the async GAPIC client in a
  :class:`~flowcraft.distributed.PollingConsumer`: never more messages than free
  ``concurrency`` slots (that is the flow control); a pull waits for messages up to
  ``pull_timeout`` and is never cancelled (a cancelled pull may already hold messages, which
  then stay leased to nobody until their ack deadline: ``stop()`` lets it finish).
  Why not the high-level streaming ``SubscriberClient.subscribe``: its
  lease manager extends every outstanding message by itself (up to an hour) on its own
  threads, so a message could not be given back after a chosen delay, and a stalled worker
  would keep its messages; with ``Pull`` the ack deadline is exactly the engine's lease;
* lease: each received batch gets the adapter's ``ack_deadline`` (``ModifyAckDeadline``; the
  subscription's is at least 10 s), kept while the message is handled by the engine's
  heartbeat and keeper (:mod:`flowcraft.distributed.keepalive`) through
  :meth:`GcpAdapter.extend_deliveries`;
* ack: ``Acknowledge``; redeliver after a delay: ``ModifyAckDeadline(delay)`` (0 = nack);
  shutdown gives messages back with deadline 0; a dead worker's messages come back when
  their deadline runs out;
* delays: Pub/Sub has no delayed publish. A delayed job is published at once with the
  attribute ``fc-due`` (epoch seconds); a worker receiving it early holds it in flight for
  the remaining time with ``ModifyAckDeadline`` (up to 600 s, :data:`MAX_DELAY_SECONDS`) when
  more than ``hold_seconds`` remain, else waits for it; the message stays in Pub/Sub
  meanwhile, so the delay survives restarts. Longer sleeps are re-armed by the engine;
* attempts: ``delivery_attempt`` (set when the subscription has a dead-letter policy, which
  :func:`~flowcraft_gcp.resources.create_resources` always gives it) is ``Delivery.deliveries``;
  the one early receipt of a deferred message is not counted against the delivery cap;
* dead letters: a poison message is published to ``dead_letter_topic`` with the attribute
  ``fc-reason`` and acked; the subscription's dead-letter policy (``max_delivery_attempts``)
  is the backstop.

The same path serves the push entry point (:mod:`flowcraft_gcp.push`): there the HTTP answer
settles the message, so ``ack``/``redeliver`` only mark it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final
from urllib.parse import unquote

from flowcraft.distributed import (
    BaseDistributedAdapter,
    Capabilities,
    Decision,
    Delivery,
    Disposition,
    JobHandler,
    JobPayload,
    Option,
    PollingConsumer,
    parse_url,
)
from flowcraft.distributed.results import FinalSource, PullSource
from google.api_core import exceptions as gexc
from google.cloud.firestore import AsyncClient
from google.pubsub_v1 import PublisherAsyncClient, PubsubMessage, SubscriberAsyncClient

from .firestore import MAX_VALUE_BYTES, FirestoreCoordinationStore, FirestoreRunStore
from .stats import ApiStats

log = logging.getLogger("flowcraft.gcp")

__all__ = [
    "DUE_ATTRIBUTE",
    "MAX_DELAY_SECONDS",
    "REASON_ATTRIBUTE",
    "GcpAdapter",
    "PubsubHandle",
    "from_url",
    "message_delivery",
]

MAX_DELAY_SECONDS: Final = 600
"""Longest ack deadline Pub/Sub accepts, hence the longest delay one message can be held."""
DUE_ATTRIBUTE: Final = "fc-due"
"""Message attribute: when a delayed job is due (epoch seconds)."""
REASON_ATTRIBUTE: Final = "fc-reason"
"""Attribute of a dead letter: why it was dead-lettered."""
_MAX_ATTRIBUTE: Final = 1024


@dataclass(eq=False)
class PubsubHandle:
    """The Pub/Sub side of a :class:`~flowcraft.distributed.Delivery` (its ``message``)."""

    message_id: str
    ack_id: str = ""
    """Empty for a push delivery (the HTTP answer settles it)."""
    acked: bool = False
    """Set by :meth:`GcpAdapter.ack` (and by ``dead_letter``)."""


def _due(attributes: Mapping[str, Any]) -> float | None:
    raw = attributes.get(DUE_ATTRIBUTE)
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def message_delivery(
    data: bytes,
    message_id: str,
    attributes: Mapping[str, str],
    delivery_attempt: int,
    *,
    ack_id: str = "",
    publish_time: float | None = None,
    hold_seconds: float = 2.0,
) -> Delivery:
    """A delivery from a pulled or pushed message: ``delivery_attempt`` (0 when the
    subscription has no dead-letter policy: counted as 1) as ``deliveries``. A deferred
    message (``fc-due`` more than ``hold_seconds`` after its publish time) was received once
    early on purpose: that receipt is not counted against the delivery cap."""
    deliveries = max(int(delivery_attempt or 0), 1)
    native = 0
    due = _due(attributes)
    if due is not None and publish_time is not None and due - publish_time > hold_seconds:
        native = min(deliveries - 1, 1)
    return Delivery(
        data,
        PubsubHandle(message_id, ack_id),
        deliveries=deliveries,
        native_attempts=native,
        attributes=dict(attributes),
    )


def _deadline(seconds: float) -> int:
    """An ack deadline for a delay: whole seconds rounded up, 0..600."""
    if seconds <= 0:
        return 0
    return int(min(math.ceil(seconds - 1e-9), MAX_DELAY_SECONDS))


class GcpAdapter(BaseDistributedAdapter):
    """A Flowcraft worker (``await adapter.start()``), push back end (see
    :mod:`flowcraft_gcp.push`) or client (``start_run``/``result``/...) on Pub/Sub and
    Firestore.

    ``topic`` and ``subscription`` are full names (``projects/P/topics/T``) or short ids in
    ``project``; ``dead_letter_topic`` receives poison messages. ``firestore`` is an
    ``AsyncClient`` (default: one for ``project``); ``prefix`` namespaces its collections.
    ``concurrency`` jobs run at once; ``ack_deadline`` is the seconds a received message stays
    leased (extended while its job runs); ``hold_seconds``: a delayed message due within this
    is waited for instead of deferred; ``pull_timeout`` bounds one long poll (and how long
    ``stop`` may wait for it); ``idle`` is the pause after an empty pull (doubling). Other keyword
    arguments go to :class:`~flowcraft.distributed.BaseDistributedAdapter` (``runtime_options``,
    ``lease_seconds``, ``delivery_policy``, ...).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        delayed_delivery=True,  # fc-due + ack-deadline deferral: the message stays in Pub/Sub
        multi_process=True,
        redelivery_on_crash=True,  # an unacked message returns when its ack deadline ends
        dead_letter=True,
        max_delay_seconds=MAX_DELAY_SECONDS,
        max_value_bytes=MAX_VALUE_BYTES,
        extra={"bytes_counter": True, "push_handler": True},
    )

    def __init__(
        self,
        *,
        project: str,
        topic: str,
        subscription: str,
        dead_letter_topic: str | None = None,
        firestore: AsyncClient | None = None,
        prefix: str = "flowcraft-",
        publisher: PublisherAsyncClient | None = None,
        subscriber: SubscriberAsyncClient | None = None,
        concurrency: int = 8,
        ack_deadline: int = 60,
        subscription_ack_deadline: int | None = None,
        hold_seconds: float = 2.0,
        pull_timeout: float = 10.0,
        idle: tuple[float, float] = (0.02, 0.5),
        stats: ApiStats | None = None,
        **kwargs: Any,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not 1 <= ack_deadline <= MAX_DELAY_SECONDS:
            raise ValueError(f"ack_deadline must be between 1 and {MAX_DELAY_SECONDS}")
        self.project = project
        self.topic = _full(project, "topics", topic)
        self.subscription = _full(project, "subscriptions", subscription)
        self.dead_letter_topic = (
            _full(project, "topics", dead_letter_topic) if dead_letter_topic else None
        )
        self.stats = stats or ApiStats()
        self._owns_firestore = firestore is None
        self.firestore = firestore or AsyncClient(project=project)
        self._owns_pubsub = publisher is None and subscriber is None
        self._publisher = publisher
        self._subscriber = subscriber
        self.concurrency = concurrency
        self.ack_deadline = int(ack_deadline)
        self.subscription_ack_deadline = subscription_ack_deadline
        """The subscription's own ack deadline, when known: received messages are given
        ``ack_deadline`` only when it differs (one ``ModifyAckDeadline`` per batch)."""
        self.hold_seconds = hold_seconds
        self.pull_timeout = pull_timeout
        self.idle = idle
        """Pause after an empty pull, doubling from the first to the second value (a pull
        may return empty at once, e.g. on the emulator)."""
        self.store = FirestoreRunStore(
            self.firestore, prefix, on_commit=self.stats.count_commit, stats=self.stats
        )
        kwargs.setdefault(
            "coordination_store",
            FirestoreCoordinationStore(self.firestore, prefix, stats=self.stats),
        )
        super().__init__(**kwargs)
        self.max_status_poll = 0.5
        """Longest pause (seconds) between two status polls of :meth:`wait_for_final`."""
        self.dead_lettered: list[tuple[str, str]] = []
        """``(body, reason)`` of every message this adapter dead-lettered."""

    # -- clients -------------------------------------------------------------------------------

    @property
    def publisher(self) -> PublisherAsyncClient:
        """The Pub/Sub publisher client (created on first use, in the running loop)."""
        if self._publisher is None:
            self._publisher = PublisherAsyncClient()
        return self._publisher

    @property
    def subscriber(self) -> SubscriberAsyncClient:
        """The Pub/Sub subscriber client (created on first use, in the running loop)."""
        if self._subscriber is None:
            self._subscriber = SubscriberAsyncClient()
        return self._subscriber

    # -- BaseDistributedAdapter ----------------------------------------------------------------

    async def create_context(self, run_id: str) -> Any:
        """The run's document in Firestore."""
        return self.store.context(run_id)

    async def enqueue_job(
        self, job: JobPayload, *, delay: float = 0.0, options: Mapping[str, Any] | None = None
    ) -> None:
        """Publish the job; a delay becomes the ``fc-due`` attribute (see the module
        docstring; at most :data:`MAX_DELAY_SECONDS` ahead)."""
        attrs: dict[str, str] = {}
        if delay > 0:
            attrs[DUE_ATTRIBUTE] = f"{time.time() + min(delay, MAX_DELAY_SECONDS):.3f}"
        await self.publish(self.topic, job.to_json().encode(), attrs)

    async def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        """Publish one message to ``topic``; returns its message id."""
        self.stats.count("pubsub.publish")
        r = await self.publisher.publish(
            topic=topic, messages=[PubsubMessage(data=data, attributes=dict(attributes))]
        )
        return str(r.message_ids[0])

    async def publish_final_result(self, run_id: str, result: Mapping[str, Any]) -> None:
        """Record on the run document that its result was published; clients read the result
        from the run (:meth:`result`)."""
        await self.store.mark_published(run_id, str(result.get("status")))

    def final_source(self) -> FinalSource:
        """See BaseDistributedAdapter: one poller reads the statuses of every run waited for,
        100 per batched read of the ``st`` fields, backing off to ``max_status_poll``."""
        src: FinalSource | None = getattr(self, "_final_source", None)
        if src is None:
            src = PullSource(
                self.store.run_statuses, min_delay=0.02, max_delay=self.max_status_poll
            )
            self._final_source = src
        return src

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """Non-final runs from the ``a == true`` query (paged by document id)."""
        return await self.store.list_active_runs(cursor, limit)

    async def delete_run(self, run_id: str) -> int:
        """Delete a run's documents (retention is the caller's)."""
        return await self.store.delete_run(run_id)

    # -- ack deadlines -------------------------------------------------------------------------

    async def _modack(self, handles: list[PubsubHandle], seconds: int) -> None:
        handles = [h for h in handles if h.ack_id and not h.acked]
        if not handles:
            return
        self.stats.count("pubsub.modify_ack_deadline")
        try:
            await self.subscriber.modify_ack_deadline(
                subscription=self.subscription,
                ack_ids=[h.ack_id for h in handles],
                ack_deadline_seconds=max(0, min(seconds, MAX_DELAY_SECONDS)),
            )
        except gexc.GoogleAPICallError as exc:
            # Acked meanwhile, or its deadline ran out and it was redelivered.
            log.warning("cannot modify ack deadline of %d message(s): %s", len(handles), exc)

    def delivery_lease_seconds(self) -> float:
        """The ack deadline: the engine keeps every message it handles leased (see
        :mod:`flowcraft.distributed.keepalive`)."""
        return float(self.ack_deadline)

    async def extend_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        """One ``ModifyAckDeadline`` for all of them (push deliveries have no ack id and are
        skipped: their deadline is the push request's)."""
        handles = [d.message for d in deliveries if isinstance(d.message, PubsubHandle)]
        await self._modack(handles, self.ack_deadline)

    # -- handling one message ------------------------------------------------------------------

    async def process_delivery(
        self, delivery: Delivery, handler: JobHandler | None = None
    ) -> Decision:
        """See :meth:`~flowcraft.distributed.BaseDistributedAdapter.process_delivery`; a
        delayed message received early is deferred (pull) or waited for first."""
        h = delivery.message
        assert isinstance(h, PubsubHandle)
        due = _due(delivery.attributes)
        if due is not None:
            remaining = due - time.time()
            if remaining > self.hold_seconds and h.ack_id:
                await self._modack([h], _deadline(remaining))
                delivery.settled = True
                return Decision(Disposition.REDELIVER, remaining, reason="not due yet")
            if remaining > 0:
                await asyncio.sleep(remaining)
        return await super().process_delivery(delivery, handler)

    async def ack(self, delivery: Delivery) -> None:
        """``Acknowledge`` (a push delivery is only marked: the 2xx answer acks it)."""
        h = delivery.message
        assert isinstance(h, PubsubHandle)
        if h.acked:
            return
        h.acked = True
        if not h.ack_id:
            return
        self.stats.count("pubsub.acknowledge")
        try:
            await self.subscriber.acknowledge(subscription=self.subscription, ack_ids=[h.ack_id])
        except gexc.GoogleAPICallError as exc:
            log.warning("cannot acknowledge %s: %s", h.message_id, exc)

    async def redeliver(self, delivery: Delivery, delay: float) -> None:
        """``ModifyAckDeadline(delay)``: the message comes back after ``delay`` (whole
        seconds, rounded up; 0 is a nack). A push delivery is answered non-2xx instead, and
        the subscription's retry policy times the redelivery."""
        h = delivery.message
        assert isinstance(h, PubsubHandle)
        await self._modack([h], _deadline(delay))

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Publish the message to ``dead_letter_topic`` with ``fc-reason`` (without one it is
        only kept in :attr:`dead_lettered`), then ack it."""
        body = delivery.body
        raw = body if isinstance(body, bytes) else str(body).encode()
        text = raw.decode("utf-8", "replace")
        self.dead_lettered.append((text, reason))
        if self.dead_letter_topic is not None:
            h = delivery.message
            attrs = {
                REASON_ATTRIBUTE: reason.encode()[:_MAX_ATTRIBUTE].decode("utf-8", "ignore")
                or "invalid",
                "fc-message-id": getattr(h, "message_id", ""),
            }
            await self.publish(self.dead_letter_topic, raw or b"(empty)", attrs)
        await self.ack(delivery)

    async def dead_letters(
        self, subscription: str, max_messages: int = 100
    ) -> list[tuple[str, str]]:
        """Peek at the dead letters through ``subscription`` (a subscription of the
        dead-letter topic): ``(body, reason)`` of up to ``max_messages`` messages (each nacked
        again, so they stay). Messages Pub/Sub forwarded itself (its dead-letter policy) have
        the reason ``max delivery attempts``. For inspection and tests."""
        sub = _full(self.project, "subscriptions", subscription)
        found: dict[str, tuple[str, str]] = {}
        while len(found) < max_messages:
            try:
                r = await self.subscriber.pull(
                    subscription=sub, max_messages=max_messages, timeout=2.0
                )
            except (gexc.DeadlineExceeded, gexc.RetryError):
                break
            new = 0
            for m in r.received_messages:
                mid = m.message.message_id
                if mid not in found:
                    reason = m.message.attributes.get(REASON_ATTRIBUTE, "max delivery attempts")
                    found[mid] = (m.message.data.decode("utf-8", "replace"), reason)
                    new += 1
            if r.received_messages:
                await self.subscriber.modify_ack_deadline(
                    subscription=sub,
                    ack_ids=[m.ack_id for m in r.received_messages],
                    ack_deadline_seconds=0,
                )
            if new == 0:
                break
        return list(found.values())

    # -- the pull worker -----------------------------------------------------------------------

    async def _receive(self, n: int) -> list[Delivery]:
        self.stats.count("pubsub.pull")
        try:
            r = await self.subscriber.pull(
                subscription=self.subscription, max_messages=n, timeout=self.pull_timeout
            )
        except gexc.DeadlineExceeded:
            return []
        out = [
            message_delivery(
                m.message.data,
                m.message.message_id,
                dict(m.message.attributes),
                m.delivery_attempt,
                ack_id=m.ack_id,
                publish_time=m.message.publish_time.timestamp(),
                hold_seconds=self.hold_seconds,
            )
            for m in r.received_messages
        ]
        if out and self.ack_deadline != self.subscription_ack_deadline:
            await self._modack([d.message for d in out], self.ack_deadline)
        return out

    async def process_jobs(self, handler: JobHandler) -> None:
        """Pull and handle up to ``concurrency`` jobs at once until :meth:`stop` (the pull in
        progress is never cancelled: Pub/Sub may already have given it messages, which would
        stay leased to nobody until their ack deadline; it ends within ``pull_timeout`` and
        its messages are handled; jobs in progress finish first)."""
        consumer = PollingConsumer(
            self,
            self._receive,
            concurrency=self.concurrency,
            batch=self.concurrency,
            idle=self.idle,
            handler=handler,
        )
        await consumer.run()

    async def aclose(self) -> None:
        """Stop, and close the Pub/Sub and Firestore clients."""
        await self.stop()
        await self.final_source().aclose()
        channels: list[Any] = []
        if self._owns_pubsub:
            channels += [c.transport for c in (self._publisher, self._subscriber) if c]
        if self._owns_firestore:
            # The async Firestore client has no public close; its GAPIC transport does.
            api = getattr(self.firestore, "_firestore_api_internal", None)
            if api is not None:
                channels.append(api.transport)
        for t in channels:
            with contextlib.suppress(Exception):
                await t.close()


def _full(project: str, kind: str, name: str) -> str:
    return name if name.startswith("projects/") else f"projects/{project}/{kind}/{name}"


_URL_OPTIONS: Final = {
    "subscription": Option("subscription"),
    "dlq": Option("dead_letter_topic"),
    "prefix": Option("prefix"),
    "concurrency": Option("concurrency", int),
    "ack_deadline": Option("ack_deadline", int),
}


def from_url(url: str, **kwargs: Any) -> GcpAdapter:
    """Entry point of the ``pubsub`` backend scheme:
    ``pubsub://PROJECT/TOPIC?subscription=SUB&dlq=TOPIC&prefix=P&concurrency=N&ack_deadline=S``.

    Credentials come from Application Default Credentials; ``PUBSUB_EMULATOR_HOST`` and
    ``FIRESTORE_EMULATOR_HOST`` select the emulators. The subscription defaults to
    ``TOPIC-workers``. Query options override keyword arguments; unknown ones are refused."""
    b = parse_url(url, _URL_OPTIONS, schemes={"pubsub": "pubsub"}, passthrough=False, kwargs=kwargs)
    project = b.netloc
    topic = unquote(b.path).strip("/")
    if not project or not topic:
        raise ValueError(f"backend URL {url!r}: expected pubsub://PROJECT/TOPIC?subscription=...")
    kw = b.kwargs
    kw.setdefault("subscription", f"{topic}-workers")
    return GcpAdapter(project=project, topic=topic, **kw)
