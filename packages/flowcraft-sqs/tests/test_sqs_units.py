"""Unit tests of flowcraft-sqs that need no AWS endpoint: delay rounding, message parsing,
URL options, sort keys, and how a delivery's outcome maps to SQS actions (native retries,
requeues, dead letters) with a recording stand-in for the AWS clients. Everything that talks to
SQS/DynamoDB is tested against moto_server in ``integration-tests/test_sqs_*.py``."""

from __future__ import annotations

from typing import Any

import pytest
from flowcraft.distributed.adapter import RetryJob
from flowcraft.distributed.contracts import InvalidJobError, JobPayload
from flowcraft_sqs import AwsConfig, Delivery, SqsAdapter, delay_seconds, from_url
from flowcraft_sqs.adapter import MAX_ATTEMPTS_ATTRIBUTE, RETRY_ATTRIBUTE, visibility_seconds
from flowcraft_sqs.dynamodb import key_sk


class RecordingAws:
    """Stands in for AwsClients: records SQS calls, answers nothing else."""

    def __init__(self) -> None:
        from flowcraft_sqs import ApiStats

        self.stats = ApiStats()
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def sqs(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        self.calls.append((operation, kwargs))
        return {}

    async def ddb(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError(f"unexpected DynamoDB call {operation}")

    async def aclose(self) -> None:
        return None


def _adapter(**kw: Any) -> tuple[SqsAdapter, RecordingAws]:
    a = SqsAdapter(queue="http://q", table="t", dead_letter_queue="http://dlq", **kw)
    rec = RecordingAws()
    a.aws = rec  # type: ignore[assignment]
    return a, rec


JOB = JobPayload(run_id="r", blueprint_id="b", node_id="n")


def _delivery(body: str, rc: int = 1, native: int | None = None) -> Delivery:
    attrs = {}
    if native is not None:
        attrs = {RETRY_ATTRIBUTE: "native", MAX_ATTEMPTS_ATTRIBUTE: str(native)}
    return Delivery("m1", "rh1", body, rc, attrs)


@pytest.mark.parametrize(
    ("delay", "cap", "expected"),
    [
        (0, 900, 0),
        (-1, 900, 0),
        (0.01, 900, 1),
        (1.0, 900, 1),
        (1.2, 900, 2),
        (5000, 900, 900),
        (5000, 1, 1),
    ],
)
def test_delay_seconds_rounds_up_and_caps(delay: float, cap: float, expected: int) -> None:
    """A job is never delivered early; SQS takes whole seconds up to 900."""
    assert delay_seconds(delay, cap) == expected


def test_visibility_backoffs_go_beyond_the_delay_cap() -> None:
    """Native-retry backoffs use visibility (up to 12 h), not the 15-minute delay cap."""
    assert [visibility_seconds(x) for x in (0, 0.2, 3600.5, 10**6)] == [0, 1, 3601, 43200]


def test_delivery_from_receive_and_from_lambda_record() -> None:
    """Both message shapes give the same delivery (receive count, string attributes)."""
    m = {
        "MessageId": "id",
        "ReceiptHandle": "rh",
        "Body": "{}",
        "Attributes": {"ApproximateReceiveCount": "3"},
        "MessageAttributes": {RETRY_ATTRIBUTE: {"StringValue": "native", "DataType": "String"}},
    }
    r = {
        "messageId": "id",
        "receiptHandle": "rh",
        "body": "{}",
        "attributes": {"ApproximateReceiveCount": "3"},
        "messageAttributes": {RETRY_ATTRIBUTE: {"stringValue": "native", "dataType": "String"}},
    }
    for d in (Delivery.from_message(m), Delivery.from_lambda_record(r)):
        assert (d.message_id, d.receipt_handle, d.body, d.receive_count) == ("id", "rh", "{}", 3)
        assert d.native_retries is True
        assert d.max_attempts is None


def test_from_url_options() -> None:
    """``sqs://QUEUE?table=..&region=..&endpoint=..`` builds an adapter; unknown options
    are refused."""
    a = from_url(
        "sqs://jobs?table=runs&region=eu-west-1&endpoint=http://127.0.0.1:5000"
        "&dlq=jobs-dlq&concurrency=3&wait=5&visibility=90"
    )
    assert (a.queue, a.table, a.dead_letter_queue) == ("jobs", "runs", "jobs-dlq")
    assert (a.concurrency, a.wait_time_seconds, a.visibility_timeout) == (3, 5, 90)
    assert a.aws.config == AwsConfig(region_name="eu-west-1", endpoint_url="http://127.0.0.1:5000")
    with pytest.raises(ValueError, match="unknown sqs:// URL option 'bogus'"):
        from_url("sqs://jobs?bogus=1")
    with pytest.raises(ValueError, match="not an sqs:// URL"):
        from_url("redis://x")


def test_sort_keys() -> None:
    """Keys are stored verbatim under ``k#``; keys too long for a sort key are hashed."""
    assert key_sk("a.b/c") == "k#a.b/c"
    assert key_sk("x" * 1022) == "k#" + "x" * 1022
    assert key_sk("x" * 1023).startswith("h#")
    assert len(key_sk("x" * 5000)) == 66


def test_constructor_validates_sqs_limits() -> None:
    """Long-poll waits are 0-20 s, visibility timeouts 1-43200 s."""
    with pytest.raises(ValueError, match="wait_time_seconds"):
        SqsAdapter(queue="q", table="t", wait_time_seconds=21)
    with pytest.raises(ValueError, match="visibility_timeout"):
        SqsAdapter(queue="q", table="t", visibility_timeout=0)


async def test_native_retry_attempt_from_receive_count() -> None:
    """A native-retry message's attempt is ``attempt + receive count - 1`` (capped at the
    node's budget); a failed non-final attempt keeps the message and sets its visibility to
    the backoff instead of sending a new one."""
    a, rec = _adapter()
    seen: list[tuple[int, bool | None]] = []

    async def fails(job: JobPayload) -> None:
        seen.append((job.attempt, job.is_last_attempt))
        raise RetryJob(job.model_copy(update={"attempt": job.attempt + 1}), 2.5, "boom")

    outcome = await a.deliver(fails, _delivery(JOB.to_json(), rc=2, native=3))
    assert outcome == "keep"
    assert seen == [(2, False)]
    assert rec.calls == [
        (
            "change_message_visibility",
            {"QueueUrl": "http://q", "ReceiptHandle": "rh1", "VisibilityTimeout": 3},
        )
    ]
    seen.clear()

    async def ok(job: JobPayload) -> None:
        seen.append((job.attempt, job.is_last_attempt))

    assert await a.deliver(ok, _delivery(JOB.to_json(), rc=7, native=3)) == "ack"
    assert seen == [(3, True)]


async def test_requeue_sends_a_new_message_and_carries_native_attributes() -> None:
    """A RetryJob that is not a node attempt (a leased node, a wrong version) is sent as a new
    message with its delay; a native-retry job keeps its attributes."""
    a, rec = _adapter()
    nxt = JOB.model_copy(update={"requeues": 1})

    async def leased(job: JobPayload) -> None:
        raise RetryJob(nxt, 0.15, "node is leased by another worker")

    assert await a.deliver(leased, _delivery(JOB.to_json(), native=4)) == "ack"
    assert rec.calls == [
        (
            "send_message",
            {
                "QueueUrl": "http://q",
                "MessageBody": nxt.to_json(),
                "DelaySeconds": 1,
                "MessageAttributes": {
                    RETRY_ATTRIBUTE: {"DataType": "String", "StringValue": "native"},
                    MAX_ATTEMPTS_ATTRIBUTE: {"DataType": "String", "StringValue": "4"},
                },
            },
        )
    ]


async def test_invalid_jobs_go_to_the_dlq_and_errors_are_redelivered() -> None:
    """Unparseable bodies and jobs the engine rejects are dead-lettered (and acked); any
    other error leaves the message with a short, growing visibility."""
    a, rec = _adapter(error_backoff=1.0)

    async def never(job: JobPayload) -> None:
        raise AssertionError("not called")

    assert await a.deliver(never, _delivery("{not json")) == "ack"

    async def rejects(job: JobPayload) -> None:
        raise InvalidJobError("job for unknown run 'r'")

    assert await a.deliver(rejects, _delivery(JOB.to_json())) == "ack"

    async def broken(job: JobPayload) -> None:
        raise RuntimeError("store unreachable")

    assert await a.deliver(broken, _delivery(JOB.to_json(), rc=3)) == "keep"
    ops = [(op, kw.get("QueueUrl"), kw.get("VisibilityTimeout")) for op, kw in rec.calls]
    assert ops == [
        ("send_message", "http://dlq", None),
        ("send_message", "http://dlq", None),
        ("change_message_visibility", "http://q", 4),
    ]
    assert [r for _, r in a.dead_lettered][1] == "job for unknown run 'r'"
    assert a.dead_lettered[0][0] == "{not json"
