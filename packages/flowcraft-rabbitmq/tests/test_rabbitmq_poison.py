"""Poison jobs on RabbitMQ against a real broker, PostgreSQL and Redis: each ends in the
dead-letter queue ``<queue>.dead`` with its reason after at most
``delivery_policy.max_deliveries`` deliveries, and the worker keeps going.

Kinds: bodies that are not a job (not JSON, not UTF-8, a list or an object nested 200,000
levels deep), a valid job for a node its run's blueprint does not have, a job whose handling
fails every time (outside the node: the engine's ``after_receive`` step raises, as a store
outage would; each redelivery is a new copy through the delay queues carrying the count) and a
job that kills its worker every time (never acked: the broker redelivers it, each redelivery
counted in Redis; the delivery after the cap is not handled).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from flowcraft import NodeContext, NodeResult, load_blueprint
from flowcraft.distributed import (
    Decision,
    Delivery,
    DeliveryPolicy,
    JobHandler,
    JobPayload,
    SimulatedCrash,
)
from flowcraft.testing.conformance import until
from flowcraft_rabbitmq import RabbitMQAdapter
from rabbitmq_support import RabbitBackend

CAP = 3
HELD = load_blueprint({"id": "held", "nodes": [{"id": "a", "uses": "hold"}]})


class Recording(RabbitMQAdapter):
    """The adapter, recording each delivery it handles: ``(nodeId or "-", delivery number,
    disposition or "crash")``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, int, str]] = []

    async def process_delivery(
        self, delivery: Delivery, handler: JobHandler | None = None
    ) -> Decision:
        """See the base class; records the delivery and what became of it."""
        try:
            decision = await super().process_delivery(delivery, handler)
        except SimulatedCrash:
            self.seen.append((_node(delivery), delivery.deliveries, "crash"))
            raise
        self.seen.append((_node(delivery), delivery.deliveries, decision.disposition.value))
        return decision


def _node(delivery: Delivery) -> str:
    return delivery.job.node_id if delivery.job is not None else "-"


class Env:
    """Workers and a client on one test's slice of the servers."""

    def __init__(self, rabbit: RabbitBackend) -> None:
        self.rabbit = rabbit
        self.tasks: list[asyncio.Task[None]] = []
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.hook_calls = 0

    def adapter(self) -> Recording:
        async def hold(ctx: NodeContext) -> NodeResult:
            self.started.set()
            await self.gate.wait()
            return NodeResult(output="held")

        r = self.rabbit
        a = Recording(
            r.amqp_url,
            postgres=r.store,
            redis=r.redis_url,
            queue_name=r.queue,
            redis_prefix=r.prefix,
            reconnect_interval=0.2,
            runtime_options={"registry": {"hold": hold}, "blueprints": [HELD]},
            delivery_policy=DeliveryPolicy(max_deliveries=CAP, backoff=0.01, max_backoff=0.05),
        )
        r.adapters.append(a)  # closed by the fixture
        return a

    def worker(self, fail_with: BaseException | None = None) -> Recording:
        """A running worker; ``fail_with`` is raised every time a job reaches
        ``after_receive``."""
        a = self.adapter()
        if fail_with is not None:

            def hook(point: str, job: JobPayload | None) -> None:
                if point == "after_receive":
                    self.hook_calls += 1
                    raise fail_with

            a.fault_hook = hook
        self.tasks.append(asyncio.create_task(a.start()))
        return a

    async def close(self) -> None:
        self.gate.set()
        for a in self.rabbit.adapters:
            await a.stop()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def env(
    rabbitmq_url: str, postgres_url: str, redis_url: str, unique_prefix: str
) -> AsyncIterator[Env]:
    """A fresh queue / schema / key prefix, deleted afterwards."""
    rabbit = RabbitBackend(rabbitmq_url, postgres_url, redis_url, unique_prefix)
    e = Env(rabbit)
    try:
        yield e
    finally:
        await e.close()
        await rabbit.cleanup()


def _job(rid: str, node: str) -> JobPayload:
    return JobPayload(run_id=rid, blueprint_id="held", node_id=node)


@pytest.mark.parametrize(
    ("body", "text", "reason"),
    [
        (
            b"{not json",
            "{not json",
            "invalid job payload: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        ),
        (
            b"\xff\xfe",
            "\ufffd\ufffd",
            "invalid job payload: UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff "
            "in position 0: invalid start byte",
        ),
        (
            b"[" * 200_000 + b"]" * 200_000,
            "[" * 200_000 + "]" * 200_000,
            "invalid job payload: RecursionError: maximum recursion depth exceeded while "
            "decoding a JSON array from a unicode string",
        ),
        (
            b'{"a":' * 200_000 + b"1" + b"}" * 200_000,
            '{"a":' * 200_000 + "1" + "}" * 200_000,
            "invalid job payload: RecursionError: maximum recursion depth exceeded while "
            "decoding a JSON object from a unicode string",
        ),
    ],
    ids=["unparseable", "not-utf8", "list-nested-200k", "dict-nested-200k"],
)
async def test_malformed_body_is_dead_lettered_on_its_first_delivery(
    env: Env, body: bytes, text: str, reason: str
) -> None:
    w = env.worker()
    await env.adapter().publish(body)
    await until(lambda: w.dead_lettered == 1, "the dead letter", timeout=20)
    assert await w.dead_letters() == [(text, reason)]
    assert w.seen == [("-", 1, "dead_letter")]
    # the worker keeps going: a run after the poison completes
    c = env.adapter()
    env.gate.set()
    res = await c.result(await c.start_run("held"), timeout=20)
    assert (res.status, res.outputs) == ("completed", {"a": "held"})


async def test_job_for_a_node_the_blueprint_lacks_is_dead_lettered(env: Env) -> None:
    w = env.worker()
    c = env.adapter()
    rid = await c.start_run("held")
    await asyncio.wait_for(env.started.wait(), 20)  # the run is live: its node is running
    ghost = _job(rid, "ghost")
    await c.enqueue_job(ghost)
    await until(lambda: w.dead_lettered == 1, "the dead letter", timeout=20)
    reason = "job for unknown node 'ghost' of 'held'"
    assert await c.dead_letters() == [(ghost.to_json(), reason)]
    assert w.seen == [("ghost", 1, "dead_letter")]
    env.gate.set()  # the run itself is not disturbed
    res = await c.result(rid, timeout=20)
    assert (res.status, res.outputs) == ("completed", {"a": "held"})
    await until(lambda: len(w.seen) == 2, "the ack of 'a'", timeout=20)
    assert w.seen == [("ghost", 1, "dead_letter"), ("a", 1, "ack")]


async def test_handling_that_fails_every_time_ends_after_the_cap(env: Env) -> None:
    w = env.worker(fail_with=ConnectionError("store down"))
    c = env.adapter()
    rid = await c.start_run("held")
    await until(lambda: w.dead_lettered == 1, "the dead letter", timeout=20)
    reason = f"handling failed on delivery {CAP} (limit {CAP}): ConnectionError: store down"
    assert await c.dead_letters() == [(_job(rid, "a").to_json(), reason)]
    assert env.hook_calls == CAP
    assert w.seen == [("a", 1, "redeliver"), ("a", 2, "redeliver"), ("a", 3, "dead_letter")]
    # each redelivery went through a delay queue (0.01 s, then 0.02 s: the policy's backoff)
    assert {w.delay_queue_name(8), w.delay_queue_name(16)} <= w._declared
    assert not env.started.is_set()  # the node itself never ran
    assert (await c.status(rid)).node_statuses == {"a": "queued"}


async def test_job_that_kills_its_worker_every_time_ends_after_the_cap(env: Env) -> None:
    w = env.worker(fail_with=SimulatedCrash("worker died"))
    c = env.adapter()
    rid = await c.start_run("held")
    await until(lambda: w.dead_lettered == 1, "the dead letter", timeout=30)
    reason = (
        f"delivered {CAP + 1} times (limit {CAP}) without being handled; the job kills or "
        "stalls its worker"
    )
    assert await c.dead_letters() == [(_job(rid, "a").to_json(), reason)]
    assert env.hook_calls == CAP  # the delivery after the cap is not handled
    assert w.seen == [
        ("a", 1, "crash"),
        ("a", 2, "crash"),
        ("a", 3, "crash"),
        ("a", 4, "dead_letter"),
    ]
    assert (await c.status(rid)).node_statuses == {"a": "queued"}
