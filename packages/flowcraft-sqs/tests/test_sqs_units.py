"""Unit tests of flowcraft-sqs that need no AWS endpoint: delay rounding, message parsing,
native-retry attempts, dead-letter entries, URL options and sort keys. Everything that talks to
SQS/DynamoDB (how a decision is settled on SQS included) is tested against moto_server in
``integration-tests/test_sqs_*.py`` and ``tests/test_poison.py``."""

from __future__ import annotations

import pytest
from flowcraft.distributed import JobPayload
from flowcraft_sqs import (
    AwsConfig,
    SqsAdapter,
    SqsMessage,
    delay_seconds,
    from_url,
    message_delivery,
)
from flowcraft_sqs.adapter import (
    MAX_ATTEMPTS_ATTRIBUTE,
    MAX_MESSAGE_BYTES,
    RETRY_ATTRIBUTE,
    _dead_letter_entry,
    native_attempt,
    visibility_seconds,
)
from flowcraft_sqs.dynamodb import key_sk

JOB = JobPayload(run_id="r", blueprint_id="b", node_id="n")


def _message(rc: int, native: int | None = None) -> dict[str, object]:
    attrs = {}
    if native is not None:
        attrs = {
            RETRY_ATTRIBUTE: {"StringValue": "native", "DataType": "String"},
            MAX_ATTEMPTS_ATTRIBUTE: {"StringValue": str(native), "DataType": "String"},
        }
    return {
        "MessageId": "m1",
        "ReceiptHandle": "rh1",
        "Body": JOB.to_json(),
        "Attributes": {"ApproximateReceiveCount": str(rc)},
        "MessageAttributes": attrs,
    }


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
    """Both message shapes give the same delivery: body, receive count as ``deliveries``,
    string attributes, and an SQS handle (a Lambda record is deleted by the event source
    mapping, so it is marked as such)."""
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
    for d, lam in ((message_delivery(m), False), (message_delivery(r, lambda_record=True), True)):
        assert (d.body, d.deliveries, d.attributes) == ("{}", 3, {RETRY_ATTRIBUTE: "native"})
        assert isinstance(d.message, SqsMessage)
        assert (d.message.message_id, d.message.receipt_handle) == ("id", "rh")
        assert (d.message.event_source, d.message.acked) == (lam, False)
        # native without a known budget: one attempt, so no delivery is a native retry
        assert d.native_attempts == 0


@pytest.mark.parametrize(
    ("rc", "native", "attempt", "last", "native_attempts"),
    [
        (1, None, 1, None, 0),  # not a native-retry message: unchanged
        (5, None, 1, None, 0),
        (1, 3, 1, False, 0),
        (2, 3, 2, False, 1),
        (3, 3, 3, True, 2),
        (7, 3, 3, True, 2),  # crash redeliveries past the budget stay on the last attempt
    ],
)
def test_native_retry_attempt_from_receive_count(
    rc: int, native: int | None, attempt: int, last: bool | None, native_attempts: int
) -> None:
    """A native-retry message's attempt is ``attempt + receive count - 1`` (capped at the
    node's budget, ``isLastAttempt`` on the last); its redeliveries up to the budget are node
    attempts, not counted against the delivery cap."""
    d = message_delivery(_message(rc, native))
    job = native_attempt(JOB, d)
    assert (job.attempt, job.is_last_attempt) == (attempt, last)
    assert (d.deliveries, d.native_attempts) == (rc, native_attempts)


def test_dead_letter_entry_carries_the_reason_and_fits_sqs() -> None:
    """A dead letter is the body as received with ``fc-reason`` and ``fc-message-id``; a body
    too large to travel with them is cut (its size in ``fc-truncated``), and an empty body
    becomes ``(empty)`` (SQS refuses empty messages)."""
    e = _dead_letter_entry("{not json", "invalid job payload: x", "m1")
    assert e == {
        "MessageBody": "{not json",
        "MessageAttributes": {
            "fc-reason": {"DataType": "String", "StringValue": "invalid job payload: x"},
            "fc-message-id": {"DataType": "String", "StringValue": "m1"},
        },
    }
    assert _dead_letter_entry("", "", "m2")["MessageBody"] == "(empty)"
    assert _dead_letter_entry("", "", "m2")["MessageAttributes"]["fc-reason"] == {
        "DataType": "String",
        "StringValue": "invalid",
    }
    big = _dead_letter_entry("é" * MAX_MESSAGE_BYTES, "r" * 5000, "m3")
    attrs = {k: v["StringValue"] for k, v in big["MessageAttributes"].items()}
    assert attrs == {"fc-reason": "r" * 4000, "fc-message-id": "m3", "fc-truncated": "2097152"}
    size = len(big["MessageBody"].encode()) + sum(len(k) + 6 + len(v) for k, v in attrs.items())
    assert MAX_MESSAGE_BYTES - 128 < size <= MAX_MESSAGE_BYTES
    assert set(big["MessageBody"]) == {"é"}


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
    with pytest.raises(ValueError, match=r"unknown option 'bogus' \(known: concurrency, dlq, "):
        from_url("sqs://jobs?bogus=1")
    with pytest.raises(ValueError, match=r"option concurrency='x' is not a valid int"):
        from_url("sqs://jobs?concurrency=x")
    with pytest.raises(ValueError, match=r"expected one of sqs://"):
        from_url("redis://x")
    d = from_url("sqs://", table="given", concurrency=2)
    assert (d.queue, d.table, d.concurrency) == ("flowcraft", "given", 2)
    assert from_url("sqs://jobs?concurrency=5", concurrency=2).concurrency == 5


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
