"""GcpAdapter beyond the conformance suite, on the Pub/Sub and Firestore emulators:

* a run whose context grows past 1 MiB (Firestore's document limit) completes with every value
  intact, the run document staying under its inline budget;
* a sleep longer than ``hold_seconds`` is deferred through the ack deadline (the message stays
  in Pub/Sub) and its one early receipt is not counted as a delivery;
* poison messages end in the dead-letter topic with their reason, for pull workers and for
  the push app;
* the push app over HTTP: a workflow through the emulator's own push subscription, and the
  answers to malformed, early and health-check requests;
* ``from_url``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from flowcraft.distributed import Decision, Delivery, DeliveryPolicy, Disposition
from flowcraft.distributed.backends import open_adapter
from flowcraft.nodes import NodeContext, NodeResult
from flowcraft_gcp import DUE_ATTRIBUTE, GcpAdapter, PubSubPushApp, from_url
from flowcraft_gcp.firestore import INLINE_BUDGET, run_doc_id
from gcp_support import GcpBackend, http_post, make_backend, serve


@pytest.fixture
async def backend(pubsub_host: str, firestore_host: str) -> AsyncIterator[GcpBackend]:
    """Fresh topics, subscriptions and collection prefix."""
    b = await make_backend(pubsub_host, firestore_host)
    try:
        yield b
    finally:
        await b.cleanup()


def _chain(bp_id: str, ids: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    nodes = [{"id": i, "uses": i} for i in ids]
    for n in nodes:
        n.update((extra or {}).get(n["id"], {}))
    edges = [{"source": a, "target": b} for a, b in itertools.pairwise(ids)]
    return {"id": bp_id, "nodes": nodes, "edges": edges}


async def _run(backend: GcpBackend, opts: dict[str, Any], bp_id: str, **kw: Any) -> Any:
    workers = [backend.adapter(runtime_options=opts, **kw) for _ in range(2)]
    tasks = [asyncio.create_task(w.start()) for w in workers]
    client = backend.adapter(runtime_options=opts)
    try:
        rid = await client.start_run(bp_id, {"start": 1})
        return rid, await client.result(rid, timeout=60)
    finally:
        for w in workers:
            await w.stop()
        await asyncio.gather(*tasks)


async def test_context_over_one_mebibyte(backend: GcpBackend) -> None:
    """Four nodes each write 400 kB (1.6 MB in all) and read what the others wrote."""
    big = {f"n{i}": chr(ord("a") + i) * 400_000 for i in range(4)}

    def writer(i: int) -> Any:
        async def impl(ctx: NodeContext) -> NodeResult:
            for j in range(i):
                assert await ctx.context.get(f"blob.{j}/x`y") == big[f"n{j}"]
            await ctx.context.set(f"blob.{i}/x`y", big[f"n{i}"])
            return NodeResult(i)

        return impl

    ids = [f"n{i}" for i in range(4)]
    opts = {
        "registry": {n: writer(i) for i, n in enumerate(ids)},
        "blueprints": [_chain("big", ids)],
    }
    rid, res = await _run(backend, opts, "big")
    assert res.status == "completed", res.errors
    for i in range(4):
        assert res.context[f"blob.{i}/x`y"] == big[f"n{i}"]
    assert res.context["_outputs.n3"] == 3
    store = backend.adapters[0].store
    doc = (await store.runs.document(run_doc_id(rid)).get()).to_dict() or {}
    assert doc["n"] <= INLINE_BUDGET and len(doc["s"]) == 4


async def test_sleep_beyond_hold_is_deferred_in_pubsub(backend: GcpBackend) -> None:
    """A 3.5 s sleep (hold_seconds 0.5): the timer message is received early once, deferred
    with its ack deadline, and handled when due, as delivery 2 of which 1 counts."""
    seen: list[tuple[float, int, int, Disposition]] = []

    class Recording(GcpAdapter):
        async def settle(self, delivery: Delivery, decision: Decision) -> None:
            seen.append(
                (time.time(), delivery.deliveries, delivery.native_attempts, decision.disposition)
            )
            await super().settle(delivery, decision)

        async def process_delivery(self, delivery: Delivery, handler: Any = None) -> Decision:
            d = await super().process_delivery(delivery, handler)
            if d.reason == "not due yet":
                seen.append((time.time(), delivery.deliveries, -1, d.disposition))
            return d

    async def after(ctx: NodeContext) -> NodeResult:
        return NodeResult(time.time())

    async def first(ctx: NodeContext) -> NodeResult:
        return NodeResult(time.time())

    bp = _chain(
        "nap",
        ["first", "nap", "after"],
        {"nap": {"uses": "sleep", "params": {"duration": 3500}}},
    )
    opts = {"registry": {"first": first, "after": after}, "blueprints": [bp]}
    w = Recording(**{**_kwargs(backend), "runtime_options": opts, "hold_seconds": 0.5})
    backend.adapters.append(w)
    task = asyncio.create_task(w.start())
    client = backend.adapter(runtime_options=opts)
    try:
        rid = await client.start_run("nap")
        res = await client.result(rid, timeout=60)
    finally:
        await w.stop()
        await task
    assert res.status == "completed"
    slept = res.context["_outputs.after"] - res.context["_outputs.first"]
    assert 3.4 <= slept < 8.0
    deferred = [s for s in seen if s[2] == -1]
    assert len(deferred) == 1 and deferred[0][1] == 1
    timer = [s for s in seen if s[2] == 1]
    assert len(timer) == 1 and timer[0][1] == 2 and timer[0][3] is Disposition.ACK


def _kwargs(backend: GcpBackend) -> dict[str, Any]:
    probe = backend.adapter()
    kw = {
        "project": probe.project,
        "topic": probe.topic,
        "subscription": probe.subscription,
        "dead_letter_topic": probe.dead_letter_topic,
        "firestore": probe.firestore,
        "prefix": probe.store.prefix,
        "ack_deadline": probe.ack_deadline,
        "subscription_ack_deadline": probe.subscription_ack_deadline,
        "pull_timeout": probe.pull_timeout,
        "idle": probe.idle,
        "stats": backend.stats,
    }
    return kw


@pytest.mark.parametrize("push", [False, True], ids=["pull", "push"])
async def test_poison_messages_are_dead_lettered(
    pubsub_host: str, firestore_host: str, push: bool
) -> None:
    """Garbage, a job of an unknown run, and a job whose handling fails every time end in
    the dead-letter topic with their reasons (the last on delivery ``max_deliveries``)."""
    b = await make_backend(pubsub_host, firestore_host, push_style=push)
    try:
        policy = DeliveryPolicy(max_deliveries=3, backoff=0.01, max_backoff=0.05)
        opts: dict[str, Any] = {"registry": {}, "blueprints": [_chain("p", ["x"])]}
        w = b.adapter(runtime_options=opts, delivery_policy=policy)

        async def broken(job: Any, delivery: Any) -> None:
            raise ConnectionError("firestore is down")

        task = asyncio.create_task(w.process_jobs(broken))
        await w.publish(w.topic, b"not json", {})
        job = {"runId": "gone", "blueprintId": "p", "nodeId": "x"}
        await w.publish(w.topic, json.dumps(job).encode(), {})
        deadline = time.monotonic() + 60
        letters: list[tuple[str, str]] = []
        while time.monotonic() < deadline:
            letters = await b.dead_letters()
            if len(letters) >= 2:
                break
            await asyncio.sleep(0.5)
        await w.stop()
        await task
        reasons = sorted(r for _, r in letters)
        assert len(letters) == 2, letters
        assert "invalid job payload" in reasons[1] or "invalid job payload" in reasons[0]
        assert any("on delivery 3 (limit 3)" in r and "firestore is down" in r for r in reasons)
    finally:
        await b.cleanup()


async def test_workflow_through_the_emulators_push_subscription(
    pubsub_host: str, firestore_host: str
) -> None:
    """The emulator pushes the jobs (real push subscription) to the app served by uvicorn:
    a three-node chain completes, every job acked by a 2xx answer."""
    b = await make_backend(pubsub_host, firestore_host)
    try:

        async def node(ctx: NodeContext) -> NodeResult:
            return NodeResult((ctx.input or 0) + 1)

        opts = {
            "registry": {"a": node, "b": node, "c": node},
            "blueprints": [_chain("ch", ["a", "b", "c"])],
        }
        worker = b.adapter(runtime_options=opts)
        app = PubSubPushApp(worker)
        async with serve(app) as port:
            assert b.res is not None and b.subscriber is not None
            from google.pubsub_v1 import PushConfig

            await b.subscriber.modify_push_config(
                subscription=b.res.subscription,
                push_config=PushConfig(push_endpoint=f"http://127.0.0.1:{port}/"),
            )
            client = b.adapter(runtime_options=opts)
            rid = await client.start_run("ch")
            res = await client.result(rid, timeout=60)
        assert res.status == "completed"
        assert res.context["_outputs.c"] == 3
        assert app.requests >= 3
    finally:
        await b.cleanup()


async def test_push_app_answers(backend: GcpBackend) -> None:
    """GET is a health check; a body that is not an envelope is 400; a job due in 60 s is
    429 (retried by Pub/Sub later); garbage data is dead-lettered and acked (204)."""
    worker = backend.adapter(runtime_options={"registry": {}, "blueprints": []})
    app = PubSubPushApp(worker, max_hold=1.0)
    async with serve(app) as port:
        assert await http_post("127.0.0.1", port, "/", b"{}") == 400
        assert await http_post("127.0.0.1", port, "/", b"[1, 2") == 400
        job = {"runId": "r", "blueprintId": "b", "nodeId": "n"}
        early = {
            "message": {
                "data": base64.b64encode(json.dumps(job).encode()).decode(),
                "messageId": "1",
                "attributes": {DUE_ATTRIBUTE: str(time.time() + 60)},
            },
            "subscription": "projects/p/subscriptions/s",
        }
        assert await http_post("127.0.0.1", port, "/", json.dumps(early).encode()) == 429
        garbage = {"message": {"data": base64.b64encode(b"garbage").decode(), "messageId": "2"}}
        assert await http_post("127.0.0.1", port, "/", json.dumps(garbage).encode()) == 204
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await reader.readline()).split()[1] == b"200"
        writer.close()
    assert worker.dead_lettered == [("garbage", worker.dead_lettered[0][1])]


def test_from_url(firestore_host: str) -> None:
    """``pubsub://PROJECT/TOPIC`` with options, also through ``open_adapter``."""
    import os

    os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_host
    a = from_url("pubsub://demo-x/jobs?dlq=jobs-dead&concurrency=3&ack_deadline=30")
    assert a.topic == "projects/demo-x/topics/jobs"
    assert a.subscription == "projects/demo-x/subscriptions/jobs-workers"
    assert a.dead_letter_topic == "projects/demo-x/topics/jobs-dead"
    assert (a.concurrency, a.ack_deadline) == (3, 30)
    b = open_adapter("pubsub://demo-x/jobs?subscription=mine")
    assert isinstance(b, GcpAdapter) and b.subscription.endswith("/mine")
    with pytest.raises(ValueError, match="PROJECT/TOPIC"):
        from_url("pubsub://demo-x")
