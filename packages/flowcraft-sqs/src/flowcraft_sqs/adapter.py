"""SqsAdapter: Flowcraft workers and clients on an SQS queue, with run state in DynamoDB.

All orchestration (routing, joins, exactly-once commits, node leases, recovery) and what happens
to a delivered message (:func:`~flowcraft.distributed.delivery.decide`: ack, retry, redeliver,
dead-letter, give back) is the engine's; this module maps it onto SQS:

* receiving: long polling (``WaitTimeSeconds``, up to 10 messages per call, never more than the
  free concurrency) in a :class:`~flowcraft.distributed.PollingConsumer`, each message
  invisible for ``visibility_timeout`` seconds; ``stop()`` cancels a long poll at once;
* leases: the engine keeps every message it handles invisible (its heartbeat while a node runs,
  its keeper for the rest of the handling: :mod:`flowcraft.distributed.keepalive`) through
  :meth:`SqsAdapter.extend_deliveries` (``ChangeMessageVisibilityBatch``);
* ack: ``DeleteMessage``; redeliver: the message stays in flight and its visibility becomes the
  redelivery delay (the adapter's ``delivery_policy``); give back on shutdown: visibility 0. A
  dead worker's message comes back when its visibility timeout ends;
* delays: ``DelaySeconds`` (whole seconds, rounded up; at most 900, so longer sleeps are re-armed
  by the engine until they are due);
* retries: in-process by default. With ``retry_in_process=False`` each attempt is a delivery of
  the SAME message: a failed non-final attempt sets the message's visibility to the backoff
  delay instead of deleting it, and the attempt number is the job's ``attempt`` plus SQS's
  ``ApproximateReceiveCount`` minus one (capped at the node's ``maxRetries``);
* dead letters: a message that is not a valid job, a job the engine rejects, or one delivered
  more than ``delivery_policy.max_deliveries`` times (node attempts redelivered on purpose not
  counted) goes to ``dead_letter_queue`` with an ``fc-reason`` attribute (when configured; else
  it is only kept in :attr:`SqsAdapter.dead_lettered`) and is deleted. The queue's redrive
  policy (``maxReceiveCount``, see :func:`create_queues`) is the backstop.

The same path serves the Lambda entry point (:mod:`flowcraft_sqs.lambda_handler`): there the
event source mapping deletes the records reported as handled, so ``ack`` only marks them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

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
    PollingConsumer,
    parse_url,
)
from flowcraft.distributed.results import FinalSource, PullSource

from .aws import ApiStats, AwsClients, AwsConfig, error_code
from .dynamodb import (
    MAX_VALUE_BYTES,
    DynamoCoordinationStore,
    DynamoLeasingContext,
    DynamoRunContext,
    DynamoRunStore,
)

log = logging.getLogger("flowcraft.sqs")

__all__ = [
    "MAX_DELAY_SECONDS",
    "MAX_MESSAGE_BYTES",
    "SqsAdapter",
    "SqsMessage",
    "create_queues",
    "delay_seconds",
    "delete_queues",
    "from_url",
    "message_delivery",
    "native_attempt",
    "visibility_seconds",
]

MAX_DELAY_SECONDS: Final = 900
"""SQS's cap on ``DelaySeconds`` (15 minutes)."""
MAX_MESSAGE_BYTES: Final = 1_048_576
"""SQS's cap on a message's body plus attributes (1 MiB)."""
_MAX_VISIBILITY: Final = 43_200
RETRY_ATTRIBUTE: Final = "fc-retry"
"""Message attribute marking a job whose attempts are SQS redeliveries (value ``native``)."""
MAX_ATTEMPTS_ATTRIBUTE: Final = "fc-max-attempts"
"""Message attribute with the node's ``maxRetries`` for native retries."""


@dataclass(eq=False)
class SqsMessage:
    """The SQS side of a :class:`~flowcraft.distributed.Delivery` (its ``message``): the
    receipt handle to delete or re-time it with."""

    message_id: str
    receipt_handle: str
    event_source: bool = False
    """True for a Lambda record: the event source mapping deletes it when it is reported as
    handled, so :meth:`SqsAdapter.ack` only marks it."""
    acked: bool = False
    """Set by :meth:`SqsAdapter.ack` (deleted, or to be deleted by the event source mapping)."""


def message_delivery(m: Mapping[str, Any], *, lambda_record: bool = False) -> Delivery:
    """A delivery from a ``ReceiveMessage`` result entry or, with ``lambda_record``, from a
    record of a Lambda SQS event (the same fields in camelCase): the receive count as
    ``deliveries``, string message attributes, and an :class:`SqsMessage` handle."""

    def k(name: str) -> str:
        return name[0].lower() + name[1:] if lambda_record else name

    attrs = {
        n: str(v[k("StringValue")])
        for n, v in (m.get(k("MessageAttributes")) or {}).items()
        if v.get(k("StringValue")) is not None
    }
    rc = int((m.get(k("Attributes")) or {}).get("ApproximateReceiveCount", "1"))
    native = 0
    if attrs.get(RETRY_ATTRIBUTE) == "native":
        # Node attempts the queue redelivered on purpose: not counted against the delivery cap.
        native = max(0, min(rc - 1, (_max_attempts(attrs) or 1) - 1))
    handle = SqsMessage(m[k("MessageId")], m[k("ReceiptHandle")], lambda_record)
    return Delivery(
        m.get(k("Body"), ""), handle, deliveries=rc, native_attempts=native, attributes=attrs
    )


def _native(delivery: Delivery) -> bool:
    return delivery.attributes.get(RETRY_ATTRIBUTE) == "native"


def _max_attempts(attributes: Mapping[str, Any]) -> int | None:
    raw = attributes.get(MAX_ATTEMPTS_ATTRIBUTE)
    return int(raw) if isinstance(raw, str) and raw.isdigit() else None


def native_attempt(job: JobPayload, delivery: Delivery) -> JobPayload:
    """``job`` as this delivery runs it. For a native-retry message the attempt is the job's
    ``attempt`` plus the receive count minus one, capped at the node's ``maxRetries`` (carried
    in ``fc-max-attempts``), and ``isLastAttempt`` is set on the last one; other jobs are
    returned unchanged."""
    if not _native(delivery):
        return job
    top = _max_attempts(delivery.attributes)
    attempt = job.attempt + max(delivery.deliveries, 1) - 1
    if top is not None:
        attempt = min(attempt, top)
    return job.model_copy(
        update={"attempt": attempt, "is_last_attempt": top is not None and attempt >= top}
    )


def _carried(delivery: Delivery) -> Mapping[str, Any] | None:
    """The native-retry options a requeued job keeps (as in ``get_queue_retry_options``)."""
    if not _native(delivery):
        return None
    return {"native": True, "maxAttempts": _max_attempts(delivery.attributes) or 1}


def _dead_letter_entry(body: str, reason: str, message_id: str) -> dict[str, Any]:
    """``SendMessage`` arguments (without ``QueueUrl``) for a dead letter: the body as received
    and the ``fc-reason`` and ``fc-message-id`` attributes. A body too large to travel with
    them is cut to fit (``fc-truncated`` holds its original size in bytes), so a message is
    never stuck because its dead letter cannot be sent."""
    attrs = {
        "fc-reason": reason[:4000] or "invalid",
        "fc-message-id": message_id,
    }
    raw = (body or "(empty)").encode()
    room = MAX_MESSAGE_BYTES - sum(len(k) + 6 + len(v.encode()) for k, v in attrs.items()) - 64
    if len(raw) > room:
        attrs["fc-truncated"] = str(len(raw))
        body = raw[:room].decode("utf-8", "ignore")
    return {
        "MessageBody": body or "(empty)",
        "MessageAttributes": {
            k: {"DataType": "String", "StringValue": v} for k, v in attrs.items()
        },
    }


def delay_seconds(delay: float, cap: float = MAX_DELAY_SECONDS) -> int:
    """SQS ``DelaySeconds`` for a delay: whole seconds rounded UP (a job is never delivered
    early), at most ``cap``."""
    if delay <= 0:
        return 0
    return int(min(math.ceil(delay - 1e-9), cap, MAX_DELAY_SECONDS))


def visibility_seconds(delay: float) -> int:
    """A visibility timeout for a redelivery after ``delay``: whole seconds rounded up, at most
    12 hours (visibility, unlike ``DelaySeconds``, is not capped at 15 minutes)."""
    if delay <= 0:
        return 0
    return int(min(math.ceil(delay - 1e-9), _MAX_VISIBILITY))


class SqsAdapter(BaseDistributedAdapter):
    """A Flowcraft worker (``await adapter.start()``), Lambda back end (see
    :mod:`flowcraft_sqs.lambda_handler`) or client (``start_run``/``result``/...) on SQS and
    DynamoDB.

    ``queue`` and ``dead_letter_queue`` are queue URLs or names (names are resolved with
    ``GetQueueUrl``); ``table`` is the DynamoDB table made by
    :func:`~flowcraft_sqs.dynamodb.create_table`. ``aws`` is an :class:`AwsConfig` (region,
    endpoint, credentials) or shared :class:`AwsClients`. ``concurrency`` jobs run at once;
    ``wait_time_seconds`` is the long-poll wait (0-20); ``visibility_timeout`` the seconds a
    received message stays invisible (extended while its job runs); ``retry_in_process=False``
    delegates node retries to SQS redeliveries. ``inline_successors`` (default 64, 0 for
    every node a message): how many successors a delivered job runs itself, each leased in
    the commit's transaction (docs/distributed.md, "Inline successors"). Other keyword
    arguments go to
    :class:`~flowcraft.distributed.BaseDistributedAdapter` (``runtime_options``,
    ``lease_seconds``, ``delivery_policy`` (delivery cap and redelivery backoff), ...).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        queue_native_retries=True,
        delayed_delivery=True,
        multi_process=True,
        redelivery_on_crash=True,
        dead_letter=True,
        max_delay_seconds=MAX_DELAY_SECONDS,
        max_value_bytes=MAX_VALUE_BYTES,
        extra={"bytes_counter": True, "lambda_handler": True},
    )

    def __init__(
        self,
        *,
        queue: str,
        table: str,
        dead_letter_queue: str | None = None,
        aws: AwsConfig | AwsClients | None = None,
        concurrency: int = 8,
        wait_time_seconds: int = 20,
        visibility_timeout: int = 60,
        retry_in_process: bool = True,
        active_shards: int = 4,
        inline_successors: int = 64,
        stats: ApiStats | None = None,
        on_result: Callable[[str, Mapping[str, Any]], Awaitable[None]] | None = None,
        **kwargs: Any,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not 0 <= wait_time_seconds <= 20:
            raise ValueError("wait_time_seconds must be between 0 and 20")
        if not 1 <= visibility_timeout <= _MAX_VISIBILITY:
            raise ValueError(f"visibility_timeout must be between 1 and {_MAX_VISIBILITY}")
        if isinstance(aws, AwsClients):
            self.aws = aws
            self._owns_aws = False
        else:
            self.aws = AwsClients(aws, stats)
            self._owns_aws = True
        self.stats = self.aws.stats
        self.queue = queue
        self.dead_letter_queue = dead_letter_queue
        self.table = table
        self.concurrency = concurrency
        self.wait_time_seconds = int(wait_time_seconds)
        self.visibility_timeout = int(visibility_timeout)
        self.retry_in_process = retry_in_process
        self.on_result = on_result
        self.store = DynamoRunStore(self.aws, table, active_shards=active_shards)
        kwargs.setdefault("coordination_store", DynamoCoordinationStore(self.aws, table))
        super().__init__(inline_successors=inline_successors, **kwargs)
        self._urls: dict[str, str] = {}
        self.max_status_poll = 0.5
        """Longest pause (seconds) between two status polls of :meth:`wait_for_final` (read
        when the first wait starts)."""
        self.dead_lettered: list[tuple[str, str]] = []
        """``(body, reason)`` of every message this adapter dead-lettered."""

    # -- resources -----------------------------------------------------------------------------

    async def _url(self, name_or_url: str) -> str:
        if name_or_url.startswith(("https://", "http://")):
            return name_or_url
        url = self._urls.get(name_or_url)
        if url is None:
            r = await self.aws.sqs("get_queue_url", QueueName=name_or_url)
            url = self._urls[name_or_url] = str(r["QueueUrl"])
        return url

    async def queue_url(self) -> str:
        """The job queue's URL."""
        return await self._url(self.queue)

    def _count_commit(self, written: int) -> None:
        self.stats.commits += 1
        self.stats.bytes_written += written

    # -- BaseDistributedAdapter ----------------------------------------------------------------

    async def create_context(self, run_id: str) -> DynamoRunContext:
        """The run's items in DynamoDB; with the adapter's own DynamoDB coordination store,
        node leases travel in the commits' transactions (:class:`DynamoLeasingContext`)."""
        coord = self.coordination
        if isinstance(coord, DynamoCoordinationStore):
            return DynamoLeasingContext(self.store, run_id, coord, self._count_commit)
        return DynamoRunContext(self.store, run_id, self._count_commit)

    async def enqueue_job(
        self, job: JobPayload, *, delay: float = 0.0, options: Mapping[str, Any] | None = None
    ) -> None:
        """``SendMessage`` with ``DelaySeconds`` (rounded up to whole seconds, at most 900);
        ``options`` from :meth:`get_queue_retry_options` become message attributes."""
        kw: dict[str, Any] = {
            "QueueUrl": await self.queue_url(),
            "MessageBody": job.to_json(),
            "DelaySeconds": delay_seconds(delay, self.capabilities.max_delay_seconds or 900),
        }
        if options and options.get("native"):
            kw["MessageAttributes"] = {
                RETRY_ATTRIBUTE: {"DataType": "String", "StringValue": "native"},
                MAX_ATTEMPTS_ATTRIBUTE: {
                    "DataType": "String",
                    "StringValue": str(int(options.get("maxAttempts") or 1)),
                },
            }
        await self.aws.sqs("send_message", **kw)

    async def publish_final_result(self, run_id: str, result: Mapping[str, Any]) -> None:
        """Record the published status on the run's meta item, then call ``on_result`` (for
        SNS/EventBridge fan-out, if configured). Clients read the result from the run."""
        await self.store.mark_published(run_id, str(result.get("status")))
        if self.on_result is not None:
            await self.on_result(run_id, result)

    def final_source(self) -> FinalSource:
        """See BaseDistributedAdapter: one poller reads the statuses of all the runs this
        adapter waits for, one ``BatchGetItem`` per 100 runs, backing off from 20 ms to
        ``max_status_poll`` seconds while nothing ends (DynamoDB has no change notification a
        client could wait on without Streams)."""
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
        """Non-final runs from the sparse ``active`` index (paged; eventually consistent)."""
        return await self.store.list_active_runs(cursor, limit)

    async def delete_run(self, run_id: str) -> int:
        """Delete a run's items (retention is the caller's: e.g. after its result was read)."""
        return await self.store.delete_run(run_id)

    # -- retries -------------------------------------------------------------------------------

    def should_retry_in_process(self, node: NodeDefinition) -> bool:
        """``retry_in_process`` (constructor option); False delegates attempts to SQS."""
        return self.retry_in_process

    def get_queue_retry_options(self, node: NodeDefinition) -> Mapping[str, Any] | None:
        """Mark the job's message for native retries with the node's attempt budget."""
        return {"native": True, "maxAttempts": max(int(node.config.max_retries), 1)}

    # -- visibility ----------------------------------------------------------------------------

    async def _set_visibility(self, m: SqsMessage, seconds: int) -> None:
        try:
            await self.aws.sqs(
                "change_message_visibility",
                QueueUrl=await self.queue_url(),
                ReceiptHandle=m.receipt_handle,
                VisibilityTimeout=max(0, min(seconds, _MAX_VISIBILITY)),
            )
        except Exception as exc:
            # The message was deleted meanwhile, or its receipt is stale (it was redelivered).
            log.warning("cannot change visibility of %s: %s", m.message_id, exc)

    def delivery_lease_seconds(self) -> float:
        """The queue's visibility timeout: the engine keeps every message it handles
        invisible (see :mod:`flowcraft.distributed.keepalive`)."""
        return float(self.visibility_timeout)

    async def extend_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        """``ChangeMessageVisibilityBatch``, ten messages per call (a message deleted or
        redelivered meanwhile fails alone, logged)."""
        handles = [
            d.message
            for d in deliveries
            if isinstance(d.message, SqsMessage) and not d.message.acked
        ]
        for i in range(0, len(handles), 10):
            batch = handles[i : i + 10]
            try:
                r = await self.aws.sqs(
                    "change_message_visibility_batch",
                    QueueUrl=await self.queue_url(),
                    Entries=[
                        {
                            "Id": str(n),
                            "ReceiptHandle": m.receipt_handle,
                            "VisibilityTimeout": self.visibility_timeout,
                        }
                        for n, m in enumerate(batch)
                    ],
                )
            except Exception:
                log.exception("extending message visibility failed")
                continue
            for f in r.get("Failed", []):
                log.warning("cannot extend visibility of a message: %s", f.get("Message", f))

    # -- handling one message ------------------------------------------------------------------

    async def process_delivery(
        self, delivery: Delivery, handler: JobHandler | None = None
    ) -> Decision:
        """See :meth:`~flowcraft.distributed.BaseDistributedAdapter.process_delivery`; the
        message is kept visible meanwhile, and a native-retry job runs as the attempt its
        receive count makes it (:func:`native_attempt`). Shared by the polling worker and the
        Lambda handler."""
        if _native(delivery):
            inner = handler or self.handle_job

            async def attempt(job: JobPayload, d: Delivery | None) -> None:
                job = delivery.job = native_attempt(job, delivery)
                await inner(job, d)

            handler = attempt
        assert isinstance(delivery.message, SqsMessage)
        return await super().process_delivery(delivery, handler)

    async def settle(self, delivery: Delivery, decision: Decision) -> None:
        """See :meth:`~flowcraft.distributed.BaseDistributedAdapter.settle`. A retry of a
        native-retry job is SQS's: a failed attempt (``decision.native``) re-times this message
        (visibility = the backoff) instead of sending a new one; a requeue (leased node, wrong
        version) is a new message that keeps the native-retry attributes."""
        if decision.disposition is not Disposition.RETRY:
            await super().settle(delivery, decision)
            return
        assert decision.job is not None
        if decision.native and _native(delivery):
            await self.redeliver(delivery, decision.delay)
        else:
            await self.enqueue_job(decision.job, delay=decision.delay, options=_carried(delivery))
            await self.ack(delivery)
        delivery.settled = True

    async def ack(self, delivery: Delivery) -> None:
        """``DeleteMessage`` (a Lambda record is only marked: the event source mapping deletes
        it). A message already deleted or redelivered is logged, not an error."""
        m = delivery.message
        assert isinstance(m, SqsMessage)
        m.acked = True
        if m.event_source:
            return
        try:
            await self.aws.sqs(
                "delete_message", QueueUrl=await self.queue_url(), ReceiptHandle=m.receipt_handle
            )
        except Exception as exc:
            if error_code(exc) in ("ReceiptHandleIsInvalid", "InvalidParameterValue"):
                log.warning("message %s was already deleted or redelivered", m.message_id)
                return
            raise

    async def redeliver(self, delivery: Delivery, delay: float) -> None:
        """Leave the message in flight with visibility ``delay`` (whole seconds, rounded up;
        0 gives it back at once). A Lambda record stays unacked: it is reported as failed."""
        m = delivery.message
        assert isinstance(m, SqsMessage)
        await self._set_visibility(m, visibility_seconds(delay))

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Send the message to ``dead_letter_queue`` with its reason (``fc-reason``; when there
        is no DLQ it is only recorded in :attr:`dead_lettered`), then delete it."""
        m = delivery.message
        assert isinstance(m, SqsMessage)
        body = delivery.body if isinstance(delivery.body, str) else str(delivery.body)
        self.dead_lettered.append((body, reason))
        if self.dead_letter_queue is not None:
            await self.aws.sqs(
                "send_message",
                QueueUrl=await self._url(self.dead_letter_queue),
                **_dead_letter_entry(body, reason, m.message_id),
            )
        await self.ack(delivery)

    async def dead_letters(self, max_messages: int = 100) -> list[tuple[str, str]]:
        """Peek at the dead-letter queue: ``(body, reason)`` of up to ``max_messages`` messages
        (received with visibility 0, so they stay there). For inspection and tests; use the
        SQS console or a redrive for real operations."""
        if self.dead_letter_queue is None:
            return list(self.dead_lettered)
        url = await self._url(self.dead_letter_queue)
        found: dict[str, tuple[str, str]] = {}
        idle = 0
        while len(found) < max_messages and idle < 3:
            r = await self.aws.sqs(
                "receive_message",
                QueueUrl=url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=0,
                WaitTimeSeconds=0,
                MessageAttributeNames=["All"],
            )
            new = 0
            for m in r.get("Messages", []):
                if m["MessageId"] not in found:
                    attrs = m.get("MessageAttributes") or {}
                    reason = str((attrs.get("fc-reason") or {}).get("StringValue", ""))
                    found[m["MessageId"]] = (m.get("Body", ""), reason)
                    new += 1
            idle = idle + 1 if new == 0 else 0
        return list(found.values())

    # -- the polling worker --------------------------------------------------------------------

    async def _receive(self, n: int) -> list[Delivery]:
        r = await self.aws.sqs(
            "receive_message",
            QueueUrl=await self.queue_url(),
            MaxNumberOfMessages=max(1, min(n, 10)),
            WaitTimeSeconds=self.wait_time_seconds,
            VisibilityTimeout=self.visibility_timeout,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
            MessageAttributeNames=["All"],
        )
        return [message_delivery(m) for m in r.get("Messages", [])]

    async def process_jobs(self, handler: JobHandler) -> None:
        """Long-poll the queue and handle up to ``concurrency`` jobs at once until
        :meth:`stop` (which cancels a long poll; jobs in progress finish first)."""
        consumer = PollingConsumer(
            self,
            self._receive,
            concurrency=self.concurrency,
            batch=min(self.concurrency, 10),
            cancel_on_stop=True,
            handler=handler,
        )
        await consumer.run()

    async def aclose(self) -> None:
        """Stop and close the AWS clients (unless they were passed in)."""
        await self.stop()
        await self.final_source().aclose()
        if self._owns_aws:
            await self.aws.aclose()


async def create_queues(
    aws: AwsClients,
    name: str,
    *,
    dead_letter: bool = True,
    max_receive_count: int = 20,
    visibility_timeout: int = 60,
    wait_time_seconds: int = 20,
    retention_seconds: int = 14 * 24 * 3600,
) -> tuple[str, str | None]:
    """Create the job queue ``name`` (standard, not FIFO: FIFO queues have no per-message delay)
    and, with ``dead_letter``, its DLQ ``<name>-dlq`` wired with a redrive policy of
    ``max_receive_count``. Returns ``(queue url, dlq url)``; existing queues are reused.

    Choose ``max_receive_count`` above the largest ``maxRetries`` of nodes run with
    ``retry_in_process=False`` plus the crashes you want survived (every redelivery counts)."""
    dlq_url: str | None = None
    attrs: dict[str, str] = {
        "VisibilityTimeout": str(visibility_timeout),
        "ReceiveMessageWaitTimeSeconds": str(wait_time_seconds),
        "MessageRetentionPeriod": str(retention_seconds),
    }
    if dead_letter:
        r = await aws.sqs(
            "create_queue",
            QueueName=f"{name}-dlq",
            Attributes={"MessageRetentionPeriod": str(14 * 24 * 3600)},
        )
        dlq_url = str(r["QueueUrl"])
        a = await aws.sqs("get_queue_attributes", QueueUrl=dlq_url, AttributeNames=["QueueArn"])
        arn = a["Attributes"]["QueueArn"]
        attrs["RedrivePolicy"] = (
            f'{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{max_receive_count}"}}'
        )
    r = await aws.sqs("create_queue", QueueName=name, Attributes=attrs)
    return str(r["QueueUrl"]), dlq_url


async def delete_queues(aws: AwsClients, *urls: str | None) -> None:
    """Delete queues by URL (None and missing queues are ignored)."""
    for url in urls:
        if url is None:
            continue
        try:
            await aws.sqs("delete_queue", QueueUrl=url)
        except Exception as exc:
            if error_code(exc) not in (
                "AWS.SimpleQueueService.NonExistentQueue",
                "QueueDoesNotExist",
            ):
                raise


_URL_OPTIONS: Final = {
    "table": Option("table"),
    "dlq": Option("dead_letter_queue"),
    "concurrency": Option("concurrency", int),
    "wait": Option("wait_time_seconds", int),
    "visibility": Option("visibility_timeout", int),
    "inline": Option("inline_successors", int),
    "region": Option("region_name"),
    "endpoint": Option("endpoint_url"),
}


def from_url(url: str, **kwargs: Any) -> SqsAdapter:
    """Entry point of the ``sqs`` backend scheme:
    ``sqs://QUEUE?table=TABLE&region=REGION&endpoint=URL&dlq=QUEUE&concurrency=N``
    (also ``wait`` and ``visibility``, in seconds, and ``inline``: inline successors).

    ``QUEUE`` is a queue name (or, URL-encoded, a queue URL); ``endpoint`` points at an
    emulator (``http://127.0.0.1:5000`` for ``moto_server``). Credentials come from the
    default AWS chain. Query options override keyword arguments; unknown ones are refused."""
    b = parse_url(url, _URL_OPTIONS, schemes={"sqs": "sqs"}, passthrough=False, kwargs=kwargs)
    kw = b.kwargs
    region = kw.pop("region_name", None)
    endpoint = kw.pop("endpoint_url", None)
    if "aws" not in kw:
        kw["aws"] = AwsConfig(region_name=region, endpoint_url=endpoint)
    kw.setdefault("table", "flowcraft")
    return SqsAdapter(queue=b.name or "flowcraft", **kw)
