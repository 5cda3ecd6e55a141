"""SqsAdapter: Flowcraft workers and clients on an SQS queue, with run state in DynamoDB.

All orchestration (routing, joins, exactly-once commits, node leases, recovery) is
:class:`~flowcraft.distributed.adapter.BaseDistributedAdapter`'s; this module maps it onto SQS:

* receiving: long polling (``WaitTimeSeconds``, up to 10 messages per call, never more than the
  free concurrency), each message invisible for ``visibility_timeout`` seconds;
* leases: while a node runs, the engine's heartbeat calls :meth:`SqsAdapter.extend_job_lease`,
  which extends the message's visibility (``ChangeMessageVisibility``); a keeper task also
  extends, in batches, any message whose handling outlives half its visibility timeout;
* ack: ``DeleteMessage`` once the job was handled; a handler error leaves the message in
  flight with a short visibility (redelivery), a dead worker's message comes back when its
  visibility timeout ends;
* delays: ``DelaySeconds`` (whole seconds, rounded up; at most 900, so longer sleeps are re-armed
  by the engine until they are due);
* retries: in-process by default. With ``retry_in_process=False`` each attempt is a delivery of
  the SAME message: a failed non-final attempt sets the message's visibility to the backoff
  delay instead of deleting it, and the attempt number is the job's ``attempt`` plus SQS's
  ``ApproximateReceiveCount`` minus one (capped at the node's ``maxRetries``);
* dead letters: a message that is not a valid job, or a job the engine rejects, goes to
  ``dead_letter_queue`` (when configured; else it is logged) and is deleted. Messages that keep
  failing for infrastructure reasons are moved to the DLQ by the queue's redrive policy
  (``maxReceiveCount``, see :func:`create_queues`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal
from urllib.parse import parse_qsl, urlsplit

from flowcraft.blueprint import NodeDefinition
from flowcraft.distributed.adapter import BaseDistributedAdapter, JobHandler, RetryJob
from flowcraft.distributed.contracts import Capabilities, InvalidJobError, JobPayload
from flowcraft.state import FINAL_STATUSES

from .aws import ApiStats, AwsClients, AwsConfig, error_code
from .dynamodb import MAX_VALUE_BYTES, DynamoCoordinationStore, DynamoRunContext, DynamoRunStore

log = logging.getLogger("flowcraft.sqs")

__all__ = [
    "MAX_DELAY_SECONDS",
    "Delivery",
    "Outcome",
    "SqsAdapter",
    "create_queues",
    "delay_seconds",
    "delete_queues",
    "from_url",
    "visibility_seconds",
]

MAX_DELAY_SECONDS: Final = 900
"""SQS's cap on ``DelaySeconds`` (15 minutes)."""
_MAX_VISIBILITY: Final = 43_200
RETRY_ATTRIBUTE: Final = "fc-retry"
"""Message attribute marking a job whose attempts are SQS redeliveries (value ``native``)."""
MAX_ATTEMPTS_ATTRIBUTE: Final = "fc-max-attempts"
"""Message attribute with the node's ``maxRetries`` for native retries."""

Outcome = Literal["ack", "keep"]
"""What to do with a handled message: delete it (``ack``) or leave it in flight (``keep``:
its visibility was already set for the redelivery)."""


@dataclass
class Delivery:
    """One received SQS message being handled (from a worker's receive or a Lambda record)."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int = 1
    attributes: dict[str, str] = field(default_factory=dict)
    """String message attributes (``fc-retry``, ``fc-max-attempts``)."""
    extended_at: float = field(default_factory=time.monotonic)
    """When its visibility was last set (monotonic clock)."""

    @property
    def native_retries(self) -> bool:
        """True when the job's attempts are redeliveries of this message."""
        return self.attributes.get(RETRY_ATTRIBUTE) == "native"

    @property
    def max_attempts(self) -> int | None:
        """The node's ``maxRetries`` carried by a native-retry message."""
        raw = self.attributes.get(MAX_ATTEMPTS_ATTRIBUTE)
        return int(raw) if raw and raw.isdigit() else None

    @classmethod
    def from_message(cls, m: Mapping[str, Any]) -> Delivery:
        """From a ``ReceiveMessage`` result entry."""
        attrs = {
            k: str(v.get("StringValue"))
            for k, v in (m.get("MessageAttributes") or {}).items()
            if "StringValue" in v
        }
        rc = int((m.get("Attributes") or {}).get("ApproximateReceiveCount", "1"))
        return cls(m["MessageId"], m["ReceiptHandle"], m.get("Body", ""), rc, attrs)

    @classmethod
    def from_lambda_record(cls, r: Mapping[str, Any]) -> Delivery:
        """From a record of a Lambda SQS event (camelCase keys)."""
        attrs = {
            k: str(v.get("stringValue"))
            for k, v in (r.get("messageAttributes") or {}).items()
            if v.get("stringValue") is not None
        }
        rc = int((r.get("attributes") or {}).get("ApproximateReceiveCount", "1"))
        return cls(r["messageId"], r["receiptHandle"], r.get("body", ""), rc, attrs)


_CURRENT: ContextVar[Delivery | None] = ContextVar("flowcraft_sqs_delivery", default=None)


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
    delegates node retries to SQS redeliveries. Other keyword arguments go to
    :class:`~flowcraft.distributed.adapter.BaseDistributedAdapter` (``runtime_options``,
    ``lease_seconds``, ...).
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
        error_backoff: float = 1.0,
        active_shards: int = 4,
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
        self.error_backoff = error_backoff
        self.on_result = on_result
        self.store = DynamoRunStore(self.aws, table, active_shards=active_shards)
        kwargs.setdefault("coordination_store", DynamoCoordinationStore(self.aws, table))
        super().__init__(**kwargs)
        self._urls: dict[str, str] = {}
        self._stopping = False
        self._forced = False
        self._poll: asyncio.Task[Any] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inflight: dict[str, Delivery] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._keeper_users = 0
        self.max_status_poll = 0.5
        """Longest pause (seconds) between two status polls of :meth:`wait_for_final`."""
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._watcher: asyncio.Task[None] | None = None
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
        """The run's items in DynamoDB."""
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

    async def wait_for_final(self, run_id: str, timeout: float | None) -> None:
        """Wait until the run is final. All the runs this adapter waits for share one poller
        that reads their statuses with one ``BatchGetItem`` per 100 runs, backing off from
        20 ms to ``max_status_poll`` seconds while nothing changes (DynamoDB has no change
        notification a client could wait on without Streams)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(run_id, []).append(fut)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch())
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise TimeoutError(f"run {run_id!r} not final after {timeout} s") from None
        finally:
            waiting = self._waiters.get(run_id)
            if waiting is not None and fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self._waiters[run_id]

    async def _watch(self) -> None:
        delay = 0.02
        while self._waiters:
            changed = False
            ids = list(self._waiters)
            for i in range(0, len(ids), 100):
                try:
                    statuses = await self.store.run_statuses(ids[i : i + 100])
                except Exception as exc:
                    log.warning("polling run statuses failed: %s", exc)
                    continue
                for rid, st in statuses.items():
                    if st is not None and st not in FINAL_STATUSES:
                        continue
                    changed = True
                    for fut in self._waiters.pop(rid, []):
                        if not fut.done():
                            if st is None:
                                fut.set_exception(KeyError(f"no run {rid!r}"))
                            else:
                                fut.set_result(None)
            delay = 0.02 if changed else min(delay * 1.5, self.max_status_poll)
            await asyncio.sleep(delay)

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

    async def _set_visibility(self, d: Delivery, seconds: int) -> None:
        d.extended_at = time.monotonic()
        try:
            await self.aws.sqs(
                "change_message_visibility",
                QueueUrl=await self.queue_url(),
                ReceiptHandle=d.receipt_handle,
                VisibilityTimeout=max(0, min(seconds, _MAX_VISIBILITY)),
            )
        except Exception as exc:
            # The message was deleted meanwhile, or its receipt is stale (it was redelivered).
            log.warning("cannot change visibility of %s: %s", d.message_id, exc)

    async def extend_job_lease(self, job: JobPayload) -> None:
        """Heartbeat: keep the running job's message invisible (at most one call per third of
        the visibility timeout)."""
        d = _CURRENT.get()
        if d is not None and time.monotonic() - d.extended_at >= self.visibility_timeout / 3:
            await self._set_visibility(d, self.visibility_timeout)

    async def _keep_visible(self) -> None:
        """Extend, in batches of 10, the messages whose handling outlives half their
        visibility timeout (receive-to-node and commit-to-ack phases have no heartbeat)."""
        period = max(self.visibility_timeout / 4, 0.2)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            due = [
                d
                for d in self._inflight.values()
                if now - d.extended_at >= self.visibility_timeout / 2
            ]
            for i in range(0, len(due), 10):
                batch = due[i : i + 10]
                for d in batch:
                    d.extended_at = now
                try:
                    await self.aws.sqs(
                        "change_message_visibility_batch",
                        QueueUrl=await self.queue_url(),
                        Entries=[
                            {
                                "Id": str(n),
                                "ReceiptHandle": d.receipt_handle,
                                "VisibilityTimeout": self.visibility_timeout,
                            }
                            for n, d in enumerate(batch)
                        ],
                    )
                except Exception:
                    log.exception("extending message visibility failed")

    @contextlib.asynccontextmanager
    async def keeping_visible(self) -> AsyncIterator[None]:
        """While inside, the visibility keeper runs (shared by nested users): deliveries in
        :meth:`tracked` are extended before their visibility ends."""
        self._keeper_users += 1
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._keep_visible())
        try:
            yield
        finally:
            self._keeper_users -= 1
            if self._keeper_users == 0 and self._keeper is not None:
                keeper, self._keeper = self._keeper, None
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper

    @contextlib.contextmanager
    def tracked(self, d: Delivery) -> Iterator[None]:
        """Register ``d`` as in flight (for the visibility keeper) while inside."""
        self._inflight[d.receipt_handle] = d
        try:
            yield
        finally:
            self._inflight.pop(d.receipt_handle, None)

    # -- handling one message ------------------------------------------------------------------

    def _carry(self, d: Delivery) -> Mapping[str, Any] | None:
        if not d.native_retries:
            return None
        return {"native": True, "maxAttempts": d.max_attempts or 1}

    async def deliver(self, handler: JobHandler, d: Delivery) -> Outcome:
        """Handle one delivery with ``handler`` (``handle_job``); returns whether to delete
        the message. Shared by the polling worker and the Lambda handler. A
        :class:`~flowcraft.distributed.contracts.SimulatedCrash` (or any BaseException)
        propagates: the message is neither deleted nor touched."""
        try:
            job = JobPayload.parse(d.body)
        except InvalidJobError as exc:
            await self.dead_letter(d, str(exc))
            return "ack"
        if d.native_retries:
            attempt = job.attempt + max(d.receive_count, 1) - 1
            top = d.max_attempts
            if top is not None:
                attempt = min(attempt, top)
            job = job.model_copy(
                update={
                    "attempt": attempt,
                    "is_last_attempt": top is not None and attempt >= top,
                }
            )
        token = _CURRENT.set(d)
        try:
            await handler(job)
        except RetryJob as exc:
            nxt = exc.job
            if (
                d.native_retries
                and nxt.node_id == job.node_id
                and nxt.iteration == job.iteration
                and nxt.kind == job.kind
                and nxt.attempt == job.attempt + 1
            ):
                # A failed non-final attempt: the same message comes back after the backoff.
                await self._set_visibility(d, visibility_seconds(exc.delay))
                return "keep"
            await self.enqueue_job(nxt, delay=exc.delay, options=self._carry(d))
            return "ack"
        except InvalidJobError as exc:
            await self.dead_letter(d, str(exc))
            return "ack"
        except asyncio.CancelledError:
            if self._forced:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            log.info("job %s cancelled with its run", job.job_id)
            return "ack"
        except Exception:
            backoff = self.error_backoff * 2 ** min(max(d.receive_count - 1, 0), 6)
            log.exception(
                "job %s failed (receive %d); redelivering in %.0f s",
                job.job_id,
                d.receive_count,
                backoff,
            )
            await self._set_visibility(d, visibility_seconds(backoff))
            return "keep"
        finally:
            _CURRENT.reset(token)
        return "ack"

    async def dead_letter(self, d: Delivery, reason: str) -> None:
        """Send the message to ``dead_letter_queue`` with its reason (or log it when there is
        none); the caller deletes the original."""
        log.error("dead-lettering message %s: %s", d.message_id, reason)
        self.dead_lettered.append((d.body, reason))
        if self.dead_letter_queue is None:
            return
        await self.aws.sqs(
            "send_message",
            QueueUrl=await self._url(self.dead_letter_queue),
            MessageBody=d.body or "(empty)",
            MessageAttributes={
                "fc-reason": {"DataType": "String", "StringValue": reason[:4000] or "invalid"},
                "fc-message-id": {"DataType": "String", "StringValue": d.message_id},
            },
        )

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
        return [Delivery.from_message(m) for m in r.get("Messages", [])]

    async def ack(self, d: Delivery) -> None:
        """``DeleteMessage``."""
        try:
            await self.aws.sqs(
                "delete_message", QueueUrl=await self.queue_url(), ReceiptHandle=d.receipt_handle
            )
        except Exception as exc:
            if error_code(exc) in ("ReceiptHandleIsInvalid", "InvalidParameterValue"):
                log.warning("message %s was already deleted or redelivered", d.message_id)
                return
            raise

    async def _one(self, handler: JobHandler, d: Delivery) -> None:
        with self.tracked(d):
            if await self.deliver(handler, d) == "ack":
                await self.ack(d)

    async def process_jobs(self, handler: JobHandler) -> None:
        """Long-poll the queue and handle up to ``concurrency`` jobs at once until
        :meth:`stop` (jobs in progress finish first)."""
        free = asyncio.Semaphore(self.concurrency)
        async with self.keeping_visible():
            await self._poll_loop(handler, free)

    async def _poll_loop(self, handler: JobHandler, free: asyncio.Semaphore) -> None:
        try:
            while not self._stopping:
                await free.acquire()
                slots = 1
                while slots < min(self.concurrency, 10) and not free.locked():
                    await free.acquire()
                    slots += 1
                msgs: list[Delivery] = []
                try:
                    self._poll = asyncio.create_task(self._receive(slots))
                    msgs = await self._poll
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        for _ in range(slots):
                            free.release()
                        raise
                except Exception:
                    log.exception("receiving from %s failed; retrying", self.queue)
                    await asyncio.sleep(min(self.error_backoff, 1.0))
                finally:
                    self._poll = None
                for _ in range(slots - len(msgs)):
                    free.release()
                for d in msgs:
                    t = asyncio.create_task(self._one(handler, d))
                    self._tasks.add(t)

                    def done(t: asyncio.Task[Any]) -> None:
                        self._tasks.discard(t)
                        free.release()
                        if not t.cancelled() and t.exception() is not None:
                            # e.g. SimulatedCrash: the job died unacked; SQS redelivers it.
                            log.warning("job task died: %r", t.exception())

                    t.add_done_callback(done)
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
        except asyncio.CancelledError:
            self._forced = True
            for t in list(self._tasks):
                t.cancel()
            raise

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping

    async def stop(self) -> None:
        """Stop receiving (an in-flight long poll is cancelled); jobs in progress finish."""
        self._stopping = True
        if self._poll is not None:
            self._poll.cancel()

    async def aclose(self) -> None:
        """Stop and close the AWS clients (unless they were passed in)."""
        await self.stop()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
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
    "table": ("table", str),
    "dlq": ("dead_letter_queue", str),
    "concurrency": ("concurrency", int),
    "wait": ("wait_time_seconds", int),
    "visibility": ("visibility_timeout", int),
}


def from_url(url: str, **kwargs: Any) -> SqsAdapter:
    """Entry point of the ``sqs`` backend scheme:
    ``sqs://QUEUE?table=TABLE&region=REGION&endpoint=URL&dlq=QUEUE&concurrency=N``.

    ``QUEUE`` is a queue name (or, URL-encoded, a queue URL); ``endpoint`` points at an
    emulator (``http://127.0.0.1:5000`` for ``moto_server``). Credentials come from the
    default AWS chain. Query options override keyword arguments."""
    parts = urlsplit(url)
    if parts.scheme != "sqs":
        raise ValueError(f"not an sqs:// URL: {url!r}")
    from urllib.parse import unquote

    queue = unquote(parts.netloc + parts.path).strip("/") or "flowcraft"
    region: str | None = None
    endpoint: str | None = None
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if k in _URL_OPTIONS:
            name, conv = _URL_OPTIONS[k]
            kwargs[name] = conv(v)
        elif k == "region":
            region = v
        elif k == "endpoint":
            endpoint = v
        else:
            raise ValueError(f"unknown sqs:// URL option {k!r}")
    if "aws" not in kwargs:
        kwargs["aws"] = AwsConfig(region_name=region, endpoint_url=endpoint)
    kwargs.setdefault("table", "flowcraft")
    return SqsAdapter(queue=queue, **kwargs)
