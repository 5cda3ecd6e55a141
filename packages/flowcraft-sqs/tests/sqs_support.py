"""Shared helpers of the SQS integration tests and the SQS benchmark: per-test AWS resources on
a moto server, and a Lambda-style worker that emulates an SQS event source mapping.

Every test gets its own queue, dead-letter queue and DynamoDB table (unique names), deleted
afterwards, so tests never see each other's messages or runs on a shared moto server.

Emulator deviation (isolated here, named): moto_server handles requests in parallel threads,
and its DynamoDB writes are not atomic against each other. ``TransactWriteItems`` deep-copies
the table, applies its items one by one and, when one fails, restores the copy (wiping writes
that other requests made meanwhile); conditional ``PutItem``/``UpdateItem``/``DeleteItem``
check and write without a lock. Real DynamoDB executes each of these requests atomically (and
serializably against transactions). :class:`SerializedDynamoDB` therefore sends the DynamoDB
requests of all the adapters of one test (one process) to moto one at a time, which restores
real DynamoDB's per-request atomicity; SQS requests (long polls) stay concurrent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from flowcraft.distributed import JobHandler
from flowcraft_sqs import (
    ApiStats,
    AwsClients,
    AwsConfig,
    SqsAdapter,
    SqsLambdaHandler,
    create_queues,
    create_table,
    delete_queues,
    delete_table,
)

log = logging.getLogger("flowcraft.sqs.tests")

MOTO_REGION = "us-east-1"


class SerializedDynamoDB(AwsClients):
    """:class:`AwsClients` whose DynamoDB calls hold ``lock`` (shared by every client of a test
    or benchmark), so moto executes them one at a time, as atomically as DynamoDB does."""

    def __init__(self, config: AwsConfig, stats: ApiStats, lock: asyncio.Lock) -> None:
        super().__init__(config, stats)
        self.lock = lock

    async def call(self, service: str, operation: str, **kwargs: Any) -> dict[str, Any]:
        """See AwsClients.call; DynamoDB calls are serialized."""
        if service != "dynamodb":
            return await super().call(service, operation, **kwargs)
        async with self.lock:
            return await super().call(service, operation, **kwargs)


def moto_config(url: str) -> AwsConfig:
    """Client settings for a moto server at ``url`` (moto accepts any credentials)."""
    return AwsConfig(
        region_name=MOTO_REGION,
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@dataclass
class SqsResources:
    """One test's queue, DLQ and table on a moto server, and every adapter made on them."""

    endpoint: str
    name: str
    queue_url: str = ""
    dlq_url: str | None = None
    table: str = ""
    stats: ApiStats = field(default_factory=ApiStats)
    adapters: list[SqsAdapter] = field(default_factory=list)
    admin: AwsClients | None = None
    lambda_style: bool = False
    clients: list[AwsClients] = field(default_factory=list)
    ddb_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    visibility_timeout: int = 2
    wait_time_seconds: int = 1

    @property
    def aws(self) -> AwsConfig:
        """Client settings for the moto server."""
        return moto_config(self.endpoint)

    @property
    def commits(self) -> int:
        """Commits of every adapter of the test."""
        return self.stats.commits

    @property
    def bytes_written(self) -> int:
        """Bytes those commits wrote."""
        return self.stats.bytes_written

    async def create(self, max_receive_count: int = 20) -> SqsResources:
        """Create the queue pair and the table."""
        self.admin = self.clients_for_test()
        self.queue_url, self.dlq_url = await create_queues(
            self.admin,
            self.name,
            max_receive_count=max_receive_count,
            visibility_timeout=self.visibility_timeout,
            wait_time_seconds=self.wait_time_seconds,
        )
        self.table = self.name
        await create_table(self.admin, self.table)
        return self

    def clients_for_test(self) -> AwsClients:
        """New AWS clients sharing this test's stats and DynamoDB lock."""
        c = SerializedDynamoDB(self.aws, self.stats, self.ddb_lock)
        self.clients.append(c)
        return c

    def adapter(self, **kwargs: Any) -> SqsAdapter:
        """A worker/client adapter on these resources (short visibility and long-poll wait,
        so crashes recover and workers stop quickly)."""
        cls = LambdaStyleAdapter if self.lambda_style else SqsAdapter
        kw: dict[str, Any] = {
            "queue": self.queue_url,
            "dead_letter_queue": self.dlq_url,
            "table": self.table,
            "aws": self.clients_for_test(),
            "wait_time_seconds": self.wait_time_seconds,
            "visibility_timeout": self.visibility_timeout,
            "concurrency": 8,
            **kwargs,
        }
        a = cls(**kw)
        self.adapters.append(a)
        return a

    async def cleanup(self) -> None:
        """Close every adapter, delete the queues and the table."""
        for a in self.adapters:
            with contextlib.suppress(Exception):
                await a.aclose()
        if self.admin is not None:
            with contextlib.suppress(Exception):
                await delete_queues(self.admin, self.queue_url, self.dlq_url)
            with contextlib.suppress(Exception):
                await delete_table(self.admin, self.table)
        for c in self.clients:
            with contextlib.suppress(Exception):
                await c.aclose()


async def make_resources(endpoint: str, **kwargs: Any) -> SqsResources:
    """Fresh, uniquely named resources on the moto server at ``endpoint``."""
    res = SqsResources(endpoint, f"fct-{uuid.uuid4().hex[:12]}", **kwargs)
    return await res.create()


def lambda_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """A ``ReceiveMessage`` entry as the record of a Lambda SQS event (what the event source
    mapping hands to the function)."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": dict(message.get("Attributes") or {}),
        "messageAttributes": {
            k: {"stringValue": v.get("StringValue"), "dataType": v.get("DataType", "String")}
            for k, v in (message.get("MessageAttributes") or {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": MOTO_REGION,
    }


class LambdaStyleAdapter(SqsAdapter):
    """An :class:`SqsAdapter` whose worker loop emulates Lambda's SQS event source mapping:
    each received batch becomes one Lambda event handled by :class:`SqsLambdaHandler` (its
    records concurrently), and only the records not named in ``batchItemFailures`` are deleted
    (by the "event source mapping", as AWS does). Several batches run at once, up to
    ``concurrency`` records in flight."""

    async def process_jobs(self, handler: JobHandler) -> None:
        """Receive batches and invoke the Lambda handler on each until :meth:`stop`."""
        lam = SqsLambdaHandler(self)
        url = await self.queue_url()
        attrs = await self.aws.sqs(
            "get_queue_attributes", QueueUrl=url, AttributeNames=["QueueArn"]
        )
        arn = attrs["Attributes"]["QueueArn"]
        free = asyncio.Semaphore(self.concurrency)
        invocations: set[asyncio.Task[Any]] = set()

        async def invoke(batch: list[dict[str, Any]]) -> None:
            try:
                event = {"Records": [lambda_record(m, arn) for m in batch]}
                resp = await lam.handle_event(event)
                failed = {f["itemIdentifier"] for f in resp["batchItemFailures"]}
                done = [m for m in batch if m["MessageId"] not in failed]
                if done:
                    await self.aws.sqs(
                        "delete_message_batch",
                        QueueUrl=url,
                        Entries=[
                            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                            for i, m in enumerate(done)
                        ],
                    )
            finally:
                for _ in batch:
                    free.release()

        stop = self.stop_event()
        try:
            while not self.stopping:
                await free.acquire()
                slots = 1
                while slots < min(self.concurrency, 10) and not free.locked():
                    await free.acquire()
                    slots += 1
                poll = asyncio.ensure_future(
                    self.aws.sqs(
                        "receive_message",
                        QueueUrl=url,
                        MaxNumberOfMessages=slots,
                        WaitTimeSeconds=self.wait_time_seconds,
                        VisibilityTimeout=self.visibility_timeout,
                        MessageSystemAttributeNames=["ApproximateReceiveCount"],
                        MessageAttributeNames=["All"],
                    )
                )
                stopper = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({poll, stopper}, return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    poll.cancel()
                    raise
                finally:
                    stopper.cancel()
                msgs: list[dict[str, Any]] = []
                if poll.done():
                    msgs = poll.result().get("Messages", [])
                else:  # stop() ends the long poll at once
                    poll.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await poll
                for _ in range(slots - len(msgs)):
                    free.release()
                if msgs:
                    t = asyncio.create_task(invoke(msgs))
                    invocations.add(t)
                    t.add_done_callback(invocations.discard)
            if invocations:
                await asyncio.gather(*list(invocations), return_exceptions=True)
        except asyncio.CancelledError:
            for t in list(invocations):
                t.cancel()
            raise
