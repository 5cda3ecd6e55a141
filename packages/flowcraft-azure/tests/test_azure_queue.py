"""The queue side of the adapter against Azurite: the visibility lease keeps the NEW pop
receipt (an ack after an extension deletes the message; a heartbeat after the ack does
nothing), redelivery and delayed sends, content that is not base64, the idle poll backing off,
dequeue counts, and the Functions handler's three outcomes (complete, poison with the reason,
raise for the host to retry)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from azure_support import AzureResources, resources
from flowcraft.distributed import Delivery, JobPayload
from flowcraft_azure import QueueTriggerHandler, RedeliveryRequested
from flowcraft_azure.queue import AzureMessage
from functions_host import HostQueueMessage

JOB = JobPayload(run_id="r", blueprint_id="b", node_id="n")


@pytest.fixture
async def azure(azurite_connection_string: str, cosmos_url: str) -> AsyncIterator[AzureResources]:
    """A fresh queue pair and container for one test."""
    async with resources(azurite_connection_string, cosmos_url) as res:
        yield res


async def _receive_one(adapter: Any, timeout: float = 5.0) -> Delivery:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await adapter.receive(1)
        if got:
            return got[0]  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError("no message received")


async def _peek_count(azure: AzureResources, name: str | None = None) -> int:
    async with azure.queue_client(name) as q:
        props = await q.get_queue_properties()
        return int(props.approximate_message_count)


async def test_ack_after_an_extension_uses_the_new_pop_receipt(azure: AzureResources) -> None:
    """``update_message`` returns a new pop receipt; the handle keeps it, so the ack deletes
    the message (with the old receipt Azure answers 400 PopReceiptMismatch); a heartbeat that
    comes after the ack makes no request."""
    a = azure.adapter(visibility_timeout=2)
    await a.enqueue_job(JOB)
    d = await _receive_one(a)
    m = d.message
    assert isinstance(m, AzureMessage)
    first = m.pop_receipt
    d.extended_at -= 10
    await a.extend_delivery(d)
    assert m.pop_receipt not in (None, first)
    await a.ack(d)
    updates = a.stats.calls["queue.update"]
    d.extended_at -= 10
    await a.extend_delivery(d)
    assert a.stats.calls["queue.update"] == updates
    await asyncio.sleep(2.5)  # past the visibility timeout: nothing comes back
    assert await a.receive(5) == []
    assert await _peek_count(azure) == 0


async def test_redeliver_after_a_delay_counts_the_delivery(azure: AzureResources) -> None:
    """``redeliver(d, 1)`` hides the message for a second; it comes back with dequeue count
    2 (``Delivery.deliveries``)."""
    a = azure.adapter()
    await a.enqueue_job(JOB)
    d = await _receive_one(a)
    assert d.deliveries == 1
    await a.redeliver(d, 1.0)
    assert await a.receive(5) == []
    again = await _receive_one(a)
    assert again.deliveries == 2
    assert again.body == JOB.to_json()


async def test_delayed_send_is_invisible_until_due(azure: AzureResources) -> None:
    """``enqueue_job(delay=1.2)`` is invisible for 2 whole seconds (rounded up, never early)."""
    a = azure.adapter()
    t0 = time.monotonic()
    await a.enqueue_job(JOB, delay=1.2)
    assert await a.receive(5) == []
    d = await _receive_one(a)
    assert time.monotonic() - t0 >= 1.9
    assert d.body == JOB.to_json()


async def test_content_that_is_not_base64_is_dead_lettered_with_the_reason(
    azure: AzureResources,
) -> None:
    """A message some other producer wrote as plain text is handled once: it goes to
    ``<queue>-poison`` with the reason and leaves the queue."""
    async with azure.queue_client() as q:
        await q.send_message("not base64 {")
    a = azure.adapter()
    d = await _receive_one(a)
    assert d.body == "not base64 {"
    await a.process_delivery(d)
    letters = await a.dead_letters()
    assert len(letters) == 1
    assert letters[0][0] == "not base64 {"
    assert "invalid job payload" in letters[0][1]
    assert await _peek_count(azure) == 0


async def test_idle_polling_backs_off(azure: AzureResources) -> None:
    """A worker on an empty queue polls with a pause doubling up to ``poll_interval[1]``: a
    few receives in two seconds, not a busy loop."""
    a = azure.adapter(poll_interval=(0.05, 0.5))
    worker = asyncio.create_task(a.start())
    await asyncio.sleep(2.0)
    await a.stop()
    await asyncio.wait_for(worker, 10)
    assert 3 <= a.stats.calls["queue.receive"] <= 10, a.stats.calls


def _host_message(d: Delivery) -> HostQueueMessage:
    m = d.message
    assert isinstance(m, AzureMessage)
    body = d.body if isinstance(d.body, str) else str(d.body)
    return HostQueueMessage(m.id, body.encode(), m.dequeue_count, m.pop_receipt)


async def test_functions_handler_poisons_with_the_reason_and_returns(
    azure: AzureResources,
) -> None:
    """An invalid job under the Functions host: the handler puts it in ``<queue>-poison``
    with the reason and returns (so the host deletes it); it never touches the message."""
    a = azure.adapter()
    handler = QueueTriggerHandler(a)
    await azure.send_raw('{"runId": "r"}')
    d = await _receive_one(a)
    await handler(_host_message(d))
    letters = await a.dead_letters()
    assert [(b, "invalid job payload" in r) for b, r in letters] == [('{"runId": "r"}', True)]
    assert a.stats.calls["queue.delete"] == 0
    assert a.stats.calls["queue.update"] == 0


async def test_functions_handler_raises_for_the_host_to_retry(azure: AzureResources) -> None:
    """When handling fails outside the node (here: the run store is unreachable), the
    handler raises ``RedeliveryRequested``; the message stays the host's."""
    a = azure.adapter()

    async def unreachable(job: JobPayload, delivery: Delivery | None) -> None:
        raise ConnectionError("cosmos unreachable")

    a.handle_job = unreachable  # type: ignore[method-assign]
    handler = QueueTriggerHandler(a)
    await a.enqueue_job(JOB)
    d = await _receive_one(a)
    try:
        await handler(_host_message(d))
    except RedeliveryRequested as exc:
        assert d.message.id in str(exc)
    else:
        raise AssertionError("the handler returned; the host would delete the message")
    assert a.stats.calls["queue.update"] == 0
    assert await a.dead_letters() == []


async def test_functions_handler_completes_a_duplicate_past_the_cap_by_poisoning(
    azure: AzureResources,
) -> None:
    """A message the host delivered more often than the delivery cap is poisoned (with the
    reason) and completed, not retried forever."""
    a = azure.adapter()
    handler = QueueTriggerHandler(a)
    await a.enqueue_job(JOB)
    d = await _receive_one(a)
    msg = _host_message(d)
    msg.dequeue_count = a.delivery_policy.max_deliveries + 1
    await handler(msg)
    letters = await a.dead_letters()
    assert len(letters) == 1
    assert "delivered 21 times" in letters[0][1]
    assert letters[0][0] == JOB.to_json()
