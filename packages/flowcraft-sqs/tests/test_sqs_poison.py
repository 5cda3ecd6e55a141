"""Poison messages on SQS (moto_server): every kind ends in the dead-letter queue with its
reason, after at most ``delivery_policy.max_deliveries`` deliveries, with polling workers and
with workers that hand each batch to the Lambda handler.

* unparseable, nested 200,000 deep, or a valid job for a node the blueprint does not have:
  dead-lettered on the first delivery;
* a job whose handling raises every time (its run store, a DynamoDB table, does not exist):
  redelivered with the policy's backoff, dead-lettered on delivery ``max_deliveries``;
* a job that kills its worker every time: dead-lettered, unhandled, on the delivery after
  ``max_deliveries``.

Which deliveries happened is read from the adapter's ``settle`` calls (the delivery count is
SQS's ``ApproximateReceiveCount``) and from the engine's ``after_receive`` step point.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from flowcraft.distributed import (
    Decision,
    Delivery,
    DeliveryPolicy,
    Disposition,
    JobPayload,
    SimulatedCrash,
)
from flowcraft.testing.conformance import scenarios as sc
from flowcraft_sqs import SqsAdapter
from sqs_support import SqsResources, make_resources

NESTED = "[" * 200_000 + "]" * 200_000
"""A JSON array nested 200,000 deep (400 KB: within SQS's 1 MiB message limit)."""

Settled = list[tuple[str, int, Disposition, str]]


@pytest.fixture(params=[False, True], ids=["polling", "lambda"])
async def res(request: pytest.FixtureRequest, moto_url: str) -> AsyncIterator[SqsResources]:
    """A fresh queue, DLQ and table; workers poll (``polling``) or run every received batch
    through :class:`~flowcraft_sqs.SqsLambdaHandler` (``lambda``)."""
    r = await make_resources(moto_url, lambda_style=request.param)
    try:
        yield r
    finally:
        await r.cleanup()


def _record_settles(adapter: SqsAdapter) -> Settled:
    """``(body, deliveries, disposition, reason)`` of every message ``adapter`` settles."""
    settled: Settled = []
    real = adapter.settle

    async def settle(delivery: Delivery, decision: Decision) -> None:
        body = delivery.body if isinstance(delivery.body, str) else str(delivery.body)
        settled.append((body, delivery.deliveries, decision.disposition, decision.reason))
        await real(delivery, decision)

    adapter.settle = settle  # type: ignore[method-assign]
    return settled


async def _run_until(
    worker: SqsAdapter, done: Callable[[], Awaitable[bool]], timeout: float = 30.0
) -> None:
    """Run ``worker`` until ``done()`` (checked every 0.1 s), then stop it."""
    task = asyncio.create_task(worker.start())
    try:
        async with asyncio.timeout(timeout):
            while not await done():
                assert not task.done(), task
                await asyncio.sleep(0.1)
    finally:
        await worker.stop()
        await asyncio.wait_for(task, 15)


async def _send(res: SqsResources, body: str) -> None:
    assert res.admin is not None
    await res.admin.sqs("send_message", QueueUrl=res.queue_url, MessageBody=body)


async def _queue_is_empty(res: SqsResources) -> bool:
    assert res.admin is not None
    a = await res.admin.sqs(
        "get_queue_attributes",
        QueueUrl=res.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    return set(a["Attributes"].values()) == {"0"}


async def test_malformed_jobs_are_dead_lettered_on_their_first_delivery(
    res: SqsResources,
) -> None:
    """Unparseable text, an array nested 200,000 deep and a valid job for a node that the
    run's blueprint does not have are each delivered once and dead-lettered with the reason;
    the run they were sent into completes untouched."""
    s = sc.linear()
    worker = res.adapter(runtime_options=s.runtime_options)
    settled = _record_settles(worker)
    rid = await worker.start_run("linear", {"start": 0})
    ghost = JobPayload(run_id=rid, blueprint_id="linear", node_id="ghost").to_json()
    for body in ("{not json", NESTED, ghost):
        await _send(res, body)
    dlq = res.adapter()

    async def done() -> bool:
        return len(await dlq.dead_letters()) == 3 and (
            (await worker.status(rid)).status == "completed"
        )

    await _run_until(worker, done)
    reasons = {
        "{not json": "invalid job payload: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)",
        NESTED: "invalid job payload: RecursionError: maximum recursion depth exceeded while "
        "decoding a JSON array from a unicode string",
        ghost: "job for unknown node 'ghost' of 'linear'",
    }
    assert sorted(await dlq.dead_letters()) == sorted(reasons.items())
    poison = [e for e in settled if e[0] in reasons]
    assert sorted(poison) == sorted((b, 1, Disposition.DEAD_LETTER, r) for b, r in reasons.items())
    # one job, acknowledged: a's (it runs b and c inline)
    assert [e[2] for e in settled if e[0] not in reasons] == [Disposition.ACK]
    assert await _queue_is_empty(res)
    result = await worker.result(rid, timeout=10)
    assert (result.status, result.context["_outputs.c"]) == ("completed", "c:2")
    assert s.probe.counts() == {"a": 1, "b": 1, "c": 1}


async def test_a_job_whose_handling_always_fails_is_dead_lettered_at_the_cap(
    res: SqsResources,
) -> None:
    """The worker's run store is a table that does not exist, so handling the job raises on
    every delivery: deliveries 1 and 2 are redelivered (visibility = the policy's backoff,
    rounded up to 1 s), delivery 3 of 3 is dead-lettered with the error."""
    missing = f"{res.table}-missing"
    worker = res.adapter(
        runtime_options={}, table=missing, delivery_policy=DeliveryPolicy(max_deliveries=3)
    )
    settled = _record_settles(worker)
    received: list[str] = []

    def hook(point: str, job: JobPayload | None) -> None:
        if point == "after_receive" and job is not None:
            received.append(job.node_id)

    worker.fault_hook = hook
    body = JobPayload(run_id="r1", blueprint_id="linear", node_id="a").to_json()
    await _send(res, body)
    dlq = res.adapter()

    async def done() -> bool:
        return bool(await dlq.dead_letters())

    await _run_until(worker, done)
    # the lease could not be taken (PutItem), nor released in the job's cleanup (DeleteItem)
    error = (
        "ResourceNotFoundException: An error occurred (ResourceNotFoundException) when calling "
        "the DeleteItem operation: Requested resource not found"
    )
    assert await dlq.dead_letters() == [(body, f"handling failed on delivery 3 (limit 3): {error}")]
    assert settled == [
        (body, 1, Disposition.REDELIVER, error),
        (body, 2, Disposition.REDELIVER, error),
        (body, 3, Disposition.DEAD_LETTER, f"handling failed on delivery 3 (limit 3): {error}"),
    ]
    assert received == ["a", "a", "a"]
    assert await _queue_is_empty(res)


async def test_a_job_that_kills_its_worker_is_dead_lettered_unhandled_after_the_cap(
    res: SqsResources,
) -> None:
    """Each delivery kills the worker right after receiving (nothing is settled; SQS brings
    the message back when its visibility ends): deliveries 1 and 2 of 2 die, delivery 3 is
    dead-lettered without being handled."""
    worker = res.adapter(runtime_options={}, delivery_policy=DeliveryPolicy(max_deliveries=2))
    settled = _record_settles(worker)
    received: list[str] = []

    def hook(point: str, job: JobPayload | None) -> None:
        if point == "after_receive" and job is not None:
            received.append(job.node_id)
            raise SimulatedCrash(f"killed while handling {job.node_id}")

    worker.fault_hook = hook
    body = JobPayload(run_id="r1", blueprint_id="linear", node_id="killer").to_json()
    await _send(res, body)
    dlq = res.adapter()

    async def done() -> bool:
        return bool(await dlq.dead_letters())

    await _run_until(worker, done)
    reason = "delivered 3 times (limit 2) without being handled; the job kills or stalls its worker"
    assert await dlq.dead_letters() == [(body, reason)]
    assert settled == [(body, 3, Disposition.DEAD_LETTER, reason)]
    assert received == ["killer", "killer"]
    assert json.loads(body)["nodeId"] == "killer"
    assert await _queue_is_empty(res)
