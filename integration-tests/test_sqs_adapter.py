"""SQS/DynamoDB specifics beyond the conformance suite, against moto_server: the DynamoDB run
store (coalesced commits, journaled large commits and their roll-forward, long keys), the
coordination store's expiry on read, the paged active-run index, sleeps longer than SQS's delay
cap, the Lambda entry point (sync and async, partial batch responses, native retries), the
redrive policy for poison messages, how decisions are settled on SQS (native retries re-time
the message, requeues keep its attributes), and a prompt stop during a long poll."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from flowcraft.context import PatchOperation
from flowcraft.distributed import Decision, Delivery, Disposition, JobPayload, RetryJob
from flowcraft.testing.conformance import Cluster, FaultInjector
from flowcraft.testing.conformance import scenarios as sc
from flowcraft_sqs import (
    DynamoCoordinationStore,
    DynamoRunStore,
    SqsAdapter,
    SqsLambdaHandler,
    SqsMessage,
)
from flowcraft_sqs.adapter import MAX_ATTEMPTS_ATTRIBUTE, RETRY_ATTRIBUTE
from flowcraft_sqs.dynamodb import key_sk
from services import require_service
from sqs_support import SqsResources, lambda_record, make_resources


@pytest.fixture(scope="session")
def moto_url() -> str:
    """URL of a moto server."""
    return require_service("moto").url


@pytest.fixture
async def res(moto_url: str) -> AsyncIterator[SqsResources]:
    """Fresh queue, DLQ and table."""
    r = await make_resources(moto_url)
    try:
        yield r
    finally:
        await r.cleanup()


def _store(res: SqsResources, **kw: Any) -> DynamoRunStore:
    assert res.admin is not None
    return DynamoRunStore(res.admin, res.table, **kw)


async def _raw_items(res: SqsResources, run_id: str) -> list[dict[str, Any]]:
    assert res.admin is not None
    r = await res.admin.ddb(
        "query",
        TableName=res.table,
        KeyConditionExpression="pk = :p",
        ExpressionAttributeValues={":p": {"S": "r#" + run_id}},
        ConsistentRead=True,
    )
    return list(r["Items"])


# -- run store ------------------------------------------------------------------------------


async def test_commit_coalesces_set_and_delete_of_one_key(res: SqsResources) -> None:
    """A commit that sets and removes the same key (and sets another twice) is one valid
    transaction with the last operation per key; the compare-and-set refuses a stale
    version."""
    store = _store(res)
    ops = [
        PatchOperation("set", "a.b/c", 1),
        PatchOperation("delete", "a.b/c"),
        PatchOperation("set", "n", None),
        PatchOperation("set", "twice", 1),
        PatchOperation("set", "twice", 2),
    ]
    assert await store.commit("run-1", ops, 0) == (True, len("n") + 4 + len("twice") + 1)
    snap = await store.load("run-1")
    assert (snap.data, snap.version) == ({"n": None, "twice": 2}, 1)
    assert await store.commit("run-1", [PatchOperation("set", "x", 1)], 0) == (False, 0)
    assert await store.commit("run-1", [PatchOperation("delete", "twice")], 1) == (True, 0)
    snap = await store.load("run-1")
    assert (snap.data, snap.version) == ({"n": None}, 2)


async def test_large_commit_goes_through_a_journal(res: SqsResources) -> None:
    """250 keys (more than one transaction holds) commit atomically through a journal that
    is applied and removed; the run reads back exactly."""
    store = _store(res)
    ops = [PatchOperation("set", f"k{i}", {"i": i}) for i in range(250)]
    before = res.stats.calls["dynamodb.transact_write_items"]
    ok, _ = await store.commit("big", ops, 0)
    assert ok
    snap = await store.load("big")
    assert snap.version == 1
    assert snap.data == {f"k{i}": {"i": i} for i in range(250)}
    raw = await _raw_items(res, "big")
    assert [i["sk"]["S"] for i in raw if i["sk"]["S"].startswith("j#")] == []
    meta = next(i for i in raw if i["sk"]["S"] == "#meta")
    assert "pend" not in meta
    assert len(raw) == 251
    # 1 commit + 3 chunks (99 + 99 + 52 keys) + 1 finishing transaction
    assert res.stats.calls["dynamodb.transact_write_items"] - before == 5


async def test_interrupted_journal_is_read_through_and_finished_by_the_next_writer(
    res: SqsResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer dies after its journaled commit, before applying it: readers see the
    committed values (journal overlay) and the next commit applies the journal first."""
    store = _store(res)
    assert await store.commit("j", [PatchOperation("set", "old", 0)], 0) == (True, 4)
    real = store.roll_forward

    async def dies(run_id: str, version: int) -> None:
        return None

    monkeypatch.setattr(store, "roll_forward", dies)
    ops = [PatchOperation("set", f"k{i}", i) for i in range(120)] + [
        PatchOperation("delete", "old")
    ]
    ok, _ = await store.commit("j", ops, 1)
    assert ok
    raw = await _raw_items(res, "j")
    assert len([i for i in raw if i["sk"]["S"].startswith("j#")]) == 1
    assert any(i["sk"]["S"] == key_sk("old") for i in raw)  # not applied yet
    snap = await store.load("j")
    assert snap.version == 2
    assert snap.data == {f"k{i}": i for i in range(120)}
    assert await store.get_key("j", "k7") == (True, 7)
    assert await store.get_key("j", "old") == (False, None)
    monkeypatch.setattr(store, "roll_forward", real)
    assert await store.commit("j", [PatchOperation("set", "after", True)], 2) == (True, 9)
    raw = await _raw_items(res, "j")
    assert [i["sk"]["S"] for i in raw if i["sk"]["S"].startswith("j#")] == []
    assert not any(i["sk"]["S"] == key_sk("old") for i in raw)
    snap = await store.load("j")
    assert snap.version == 3
    assert snap.data == {**{f"k{i}": i for i in range(120)}, "after": True}


async def test_keys_longer_than_a_sort_key_round_trip(res: SqsResources) -> None:
    """A 2000-character key (over DynamoDB's 1 KB sort-key limit) is stored under its hash."""
    store = _store(res)
    long_key = "k/" + "é" * 1000
    assert key_sk(long_key).startswith("h#")
    ok, _ = await store.commit("long", [PatchOperation("set", long_key, [1, None])], 0)
    assert ok
    assert (await store.load("long")).data == {long_key: [1, None]}
    assert await store.get_key("long", long_key) == (True, [1, None])


async def test_cached_snapshots_follow_other_writers(res: SqsResources) -> None:
    """A store that loaded a run re-reads only the meta item when nothing changed, only the
    items of the one commit that happened since, and everything after two commits; values
    handed out are fresh copies (mutating them changes nothing)."""
    a, b = _store(res), _store(res)
    assert (
        await b.commit("c", [PatchOperation("set", "l", [1]), PatchOperation("set", "x", 0)], 0)
    )[0]
    first = await a.load("c")
    assert (first.data, first.version) == ({"l": [1], "x": 0}, 1)
    first.data["l"].append(99)
    res.stats.calls.clear()
    same = await a.load("c")
    assert (same.data, same.version) == ({"l": [1], "x": 0}, 1)
    assert dict(res.stats.calls) == {"dynamodb.get_item": 1}
    ops = [
        PatchOperation("set", "x", 1),
        PatchOperation("delete", "l"),
        PatchOperation("set", "y", None),
    ]
    assert (await b.commit("c", ops, 1))[0]
    res.stats.calls.clear()
    one = await a.load("c")
    assert (one.data, one.version) == ({"x": 1, "y": None}, 2)
    assert dict(res.stats.calls) == {"dynamodb.get_item": 1, "dynamodb.batch_get_item": 1}
    assert (await b.commit("c", [PatchOperation("set", "z", 3)], 2))[0]
    assert (await b.commit("c", [PatchOperation("delete", "x")], 3))[0]
    res.stats.calls.clear()
    two = await a.load("c")
    assert (two.data, two.version) == ({"y": None, "z": 3}, 4)
    assert dict(res.stats.calls) == {"dynamodb.get_item": 1, "dynamodb.query": 1}
    assert (await a.commit("c", [PatchOperation("set", "w", "a")], 4))[0]
    res.stats.calls.clear()
    mine = await a.load("c")
    assert (mine.data, mine.version) == ({"y": None, "z": 3, "w": "a"}, 5)
    assert dict(res.stats.calls) == {"dynamodb.get_item": 1}


# -- coordination store -------------------------------------------------------------------------


async def test_coordination_store_counters_and_conditional_writes(res: SqsResources) -> None:
    """``ADD`` counters count every concurrent increment once; set-if-absent, extend and
    compare-and-delete are conditional."""
    assert res.admin is not None
    store = DynamoCoordinationStore(res.admin, res.table)
    got = await asyncio.gather(*(store.increment("n", 60) for _ in range(12)))
    assert sorted(got) == list(range(1, 13))
    assert await store.get("n") == "12"
    assert await store.set_if_not_exist("lock", "a", 60) is True
    assert await store.set_if_not_exist("lock", "b", 60) is False
    assert await store.get("lock") == "a"
    assert await store.extend_ttl("lock", 60) is True
    assert await store.extend_ttl("missing", 60) is False
    assert await store.compare_and_delete("lock", "b") is False
    assert await store.compare_and_delete("lock", "a") is True
    assert await store.get("lock") is None
    await store.delete("n")
    assert await store.get("n") is None


async def test_coordination_keys_longer_than_a_partition_key_work(res: SqsResources) -> None:
    """A lease key over DynamoDB's 2 KB partition-key limit (a node id with a 5000-digit
    index) is stored under its hash: every operation works on it, and it is not another
    key."""
    assert res.admin is not None
    store = DynamoCoordinationStore(res.admin, res.table)
    long_key = "lease:run:review[" + "9" * 5000 + "]:0"
    assert await store.set_if_not_exist(long_key, "t1", 60) is True
    assert await store.set_if_not_exist(long_key, "t2", 60) is False
    assert await store.get(long_key) == "t1"
    assert await store.get(long_key[:-1] + "1") is None
    assert await store.extend_ttl(long_key, 60) is True
    assert await store.increment(long_key + ":n", 60) == 1
    assert await store.compare_and_delete(long_key, "t1") is True
    assert await store.get(long_key) is None


async def test_expired_items_are_absent_although_dynamodb_still_has_them(
    res: SqsResources,
) -> None:
    """DynamoDB deletes expired items lazily: an expired lease/counter must act as absent on
    every operation, and a new holder can take it over."""
    assert res.admin is not None
    store = DynamoCoordinationStore(res.admin, res.table)
    assert await store.set_if_not_exist("lease", "old", -1) is True  # already expired
    assert await store.increment("cnt", -1) == 1
    raw = await res.admin.ddb(
        "get_item",
        TableName=res.table,
        Key={"pk": {"S": "c#lease"}, "sk": {"S": "#"}},
        ConsistentRead=True,
    )
    assert raw["Item"]["val"] == {"S": "old"}  # still stored
    assert await store.get("lease") is None
    assert await store.extend_ttl("lease", 60) is False
    assert await store.compare_and_delete("lease", "old") is False
    assert await store.set_if_not_exist("lease", "new", 60) is True
    assert await store.get("lease") == "new"
    assert await store.increment("cnt", 60) == 1  # the expired count restarts
    assert await store.increment("cnt", 60) == 2


# -- active-run index ------------------------------------------------------------------------


async def test_list_active_runs_pages_through_every_shard(res: SqsResources) -> None:
    """Seven runs over three index shards, pages of two: every active run exactly once;
    cancelled runs leave the index."""
    s = sc.hitl()
    client = res.adapter(runtime_options=s.runtime_options, active_shards=3)
    rids = [await client.start_run("hitl", run_id=f"run-{i}") for i in range(7)]

    async def all_pages() -> list[str]:
        out: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page, cursor = await client.list_active_runs(cursor, 2)
            assert len(page) <= 2
            out += page
            pages += 1
            if cursor is None:
                return out
            assert pages < 20

    assert sorted(await all_pages()) == sorted(rids)
    for rid in rids[:3]:
        assert await client.cancel(rid) is True
    assert sorted(await all_pages()) == sorted(rids[3:])


# -- timers ---------------------------------------------------------------------------------


async def test_sleep_longer_than_the_queue_delay_cap(res: SqsResources) -> None:
    """With the delay cap patched to 1 s, a 2.5 s sleep is re-armed until it is due (SQS caps
    DelaySeconds at 900 s; the engine re-enqueues early timer jobs), then completes."""
    s = sc.napping(ms=2500)
    faults = FaultInjector()

    def small_cap(adapter: Any) -> None:
        adapter.capabilities = dataclasses.replace(SqsAdapter.capabilities, max_delay_seconds=1)

    async def make(opts: dict[str, Any], **kw: Any) -> Any:
        return res.adapter(runtime_options=opts, **kw)

    async with Cluster(
        make,
        s.runtime_options,
        faults=faults,
        configure=small_cap,
        timeout=40,
        adapter_kwargs={"lease_seconds": 1.0},
    ) as c:
        res.stats.calls.clear()
        r = await c.run("napping")
    assert r.status == "completed"
    assert r.node_statuses == {"s": "completed", "nap": "completed", "after": "completed"}
    assert r.context == {"_outputs.s": "S", "_outputs.nap": "S", "_outputs.after": "after:S"}
    timers = [e for e in faults.enqueued if e.job.kind == "timer"]
    assert len(timers) >= 2  # armed, then re-armed at least once before it was due
    assert all(0 < e.delay <= 1 for e in timers)
    assert s.probe.counts() == {"s": 1, "after": 1}


# -- Lambda ---------------------------------------------------------------------------------


async def _receive(res: SqsResources, n: int = 10) -> list[dict[str, Any]]:
    assert res.admin is not None
    r = await res.admin.sqs(
        "receive_message",
        QueueUrl=res.queue_url,
        MaxNumberOfMessages=n,
        WaitTimeSeconds=1,
        VisibilityTimeout=5,
        MessageSystemAttributeNames=["ApproximateReceiveCount"],
        MessageAttributeNames=["All"],
    )
    return list(r.get("Messages", []))


async def _arn(res: SqsResources) -> str:
    assert res.admin is not None
    a = await res.admin.sqs(
        "get_queue_attributes", QueueUrl=res.queue_url, AttributeNames=["QueueArn"]
    )
    return str(a["Attributes"]["QueueArn"])


async def _delete(res: SqsResources, msgs: list[dict[str, Any]]) -> None:
    assert res.admin is not None
    for m in msgs:
        await res.admin.sqs(
            "delete_message", QueueUrl=res.queue_url, ReceiptHandle=m["ReceiptHandle"]
        )


async def test_sync_lambda_entry_point_runs_a_workflow(res: SqsResources) -> None:
    """The synchronous ``handler(event, context)`` (its own event loop, as in Lambda) runs a
    chain record by record; an invalid record is dead-lettered and reported as a success."""
    s = sc.linear()
    client = res.adapter(runtime_options=s.runtime_options)
    handler = SqsLambdaHandler(
        lambda: SqsAdapter(
            queue=res.queue_url,
            dead_letter_queue=res.dlq_url,
            table=res.table,
            aws=res.aws,
            runtime_options=s.runtime_options,
        )
    )
    arn = await _arn(res)
    assert res.admin is not None
    await res.admin.sqs("send_message", QueueUrl=res.queue_url, MessageBody="{not json")
    rid = await client.start_run("linear", {"start": 0})
    responses = []
    try:
        for _ in range(20):
            msgs = await _receive(res)
            if not msgs:
                if (await client.status(rid)).status == "completed":
                    break
                continue
            event = {"Records": [lambda_record(m, arn) for m in msgs]}
            resp = await asyncio.to_thread(handler, event, None)
            responses.append(resp)
            failed = {f["itemIdentifier"] for f in resp["batchItemFailures"]}
            await _delete(res, [m for m in msgs if m["MessageId"] not in failed])
    finally:
        await asyncio.to_thread(handler.close)
    assert all(r == {"batchItemFailures": []} for r in responses)
    result = await client.result(rid, timeout=10)
    assert result.status == "completed"
    assert result.context["_outputs.c"] == "c:2"
    assert s.probe.counts() == {"a": 1, "b": 1, "c": 1}
    letters = await client.dead_letters()
    assert [b for b, _ in letters] == ["{not json"]
    assert "invalid job payload" in letters[0][1]


async def test_lambda_native_retries_report_the_failed_record(res: SqsResources) -> None:
    """With queue-delegated retries a failed attempt is a partial batch failure: the record
    is reported, its message comes back with a higher receive count (the attempt), and the
    third delivery succeeds."""
    s = sc.retries()
    adapter = res.adapter(runtime_options=s.runtime_options, retry_in_process=False)
    handler = SqsLambdaHandler(adapter)
    arn = await _arn(res)
    rid = await adapter.start_run("retry-flaky")
    seen: list[tuple[str, int, list[str]]] = []
    for _ in range(30):
        msgs = await _receive(res)
        if not msgs:
            if (await adapter.status(rid)).status == "completed":
                break
            continue
        resp = await handler.handle_event({"Records": [lambda_record(m, arn) for m in msgs]})
        failed = [f["itemIdentifier"] for f in resp["batchItemFailures"]]
        for m in msgs:
            body = json.loads(m["Body"])
            rc = int(m["Attributes"]["ApproximateReceiveCount"])
            seen.append((body["nodeId"], rc, ["failed"] if m["MessageId"] in failed else []))
        await _delete(res, [m for m in msgs if m["MessageId"] not in failed])
    assert seen == [
        ("flaky", 1, ["failed"]),
        ("flaky", 2, ["failed"]),
        ("flaky", 3, []),
        ("after", 1, []),
    ]
    assert s.probe.attempts("flaky") == [1, 2, 3]
    result = await adapter.result(rid, timeout=10)
    assert result.context == {"_outputs.flaky": "ok on 3", "_outputs.after": "ok on 3"}


# -- settling decisions on SQS --------------------------------------------------------------


async def _next_delivery(adapter: SqsAdapter) -> Delivery:
    """The next message of the adapter's queue (waits up to 10 s)."""
    for _ in range(10):
        got = await adapter._receive(1)
        if got:
            return got[0]
    raise AssertionError("no message arrived")


async def test_native_retries_re_time_the_message_and_requeues_keep_its_attributes(
    res: SqsResources,
) -> None:
    """A native-retry job runs as the attempt its receive count makes it. A failed non-final
    attempt leaves the SAME message in flight with the backoff as its visibility (no new
    message); a requeue (a leased node) is a new message that keeps the native-retry
    attributes; an ack deletes it."""
    adapter = res.adapter(runtime_options={})
    job = JobPayload(run_id="r", blueprint_id="b", node_id="n")
    await adapter.enqueue_job(job, options={"native": True, "maxAttempts": 3})
    seen: list[tuple[int, bool | None]] = []

    async def fails(j: JobPayload, d: Delivery | None) -> None:
        seen.append((j.attempt, j.is_last_attempt))
        nxt = j.model_copy(update={"attempt": j.attempt + 1})
        raise RetryJob(nxt, 0.4, "attempt failed", native=True)

    first = await _next_delivery(adapter)
    decision = await adapter.process_delivery(first, fails)
    assert decision == Decision(
        Disposition.RETRY,
        0.4,
        job.model_copy(update={"attempt": 2, "is_last_attempt": False}),
        "attempt failed",
        native=True,
    )
    assert isinstance(first.message, SqsMessage)
    assert (first.message.acked, first.settled) == (False, True)
    assert res.stats.calls["sqs.send_message"] == 1  # no new message
    again = await _next_delivery(adapter)
    assert isinstance(again.message, SqsMessage)
    assert again.message.message_id == first.message.message_id
    assert (again.deliveries, again.native_attempts) == (2, 1)
    requeued = job.model_copy(update={"attempt": 2, "is_last_attempt": False, "requeues": 1})

    async def leased(j: JobPayload, d: Delivery | None) -> None:
        seen.append((j.attempt, j.is_last_attempt))
        raise RetryJob(j.model_copy(update={"requeues": 1}), 0.0, "node is leased")

    await adapter.process_delivery(again, leased)
    assert again.message.acked is True
    third = await _next_delivery(adapter)
    assert isinstance(third.message, SqsMessage)
    assert third.message.message_id != first.message.message_id
    assert (third.body, third.deliveries) == (requeued.to_json(), 1)
    assert third.attributes == {RETRY_ATTRIBUTE: "native", MAX_ATTEMPTS_ATTRIBUTE: "3"}

    async def ok(j: JobPayload, d: Delivery | None) -> None:
        seen.append((j.attempt, j.is_last_attempt))

    assert (await adapter.process_delivery(third, ok)).disposition is Disposition.ACK
    assert third.message.acked is True
    assert seen == [(1, False), (2, False), (2, False)]
    assert await adapter._receive(1) == []


# -- poison messages and shutdown -----------------------------------------------------------


async def test_redrive_policy_moves_a_poison_message_to_the_dlq(moto_url: str) -> None:
    """A message whose handling keeps failing (infrastructure error, not a node failure) is
    redelivered until the queue's ``maxReceiveCount`` (2 here) moves it to the DLQ."""
    r = SqsResources(moto_url, f"fct-poison-{uuid.uuid4().hex[:8]}")
    await r.create(max_receive_count=2)
    try:
        worker = r.adapter(runtime_options={})
        calls: list[str] = []

        async def broken(job: Any, delivery: Delivery | None = None) -> None:
            calls.append(job.node_id if isinstance(job, JobPayload) else str(job))
            raise RuntimeError("store unreachable")

        worker.handle_job = broken  # type: ignore[method-assign]
        await worker.enqueue_job(JobPayload(run_id="r", blueprint_id="b", node_id="poison"))
        task = asyncio.create_task(worker.start())
        try:
            for _ in range(200):
                letters = await r.adapter().dead_letters()
                if letters:
                    break
                await asyncio.sleep(0.05)
        finally:
            await worker.stop()
            await asyncio.wait_for(task, 10)
        assert [json.loads(b)["nodeId"] for b, _ in letters] == ["poison"]
        assert calls == ["poison", "poison"]
    finally:
        await r.cleanup()


async def test_stop_interrupts_a_long_poll(res: SqsResources) -> None:
    """``stop()`` cancels a 20 s long poll: ``start()`` returns at once, not after the wait."""
    worker = res.adapter(runtime_options={}, wait_time_seconds=20)
    task = asyncio.create_task(worker.start())
    await asyncio.sleep(0.3)  # the worker is inside its long poll
    assert not task.done()
    await worker.stop()
    await asyncio.wait_for(task, 5)
    assert task.exception() is None
