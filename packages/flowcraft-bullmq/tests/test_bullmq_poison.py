"""Poison jobs on BullMQ against a real Redis: each ends in BullMQ's failed set (the dead-letter
store) with its reason after at most ``delivery_policy.max_deliveries`` deliveries, and the
worker keeps going.

Kinds: an unparseable body, a body nested 200,000 levels deep, a valid job for a node its run's
blueprint does not have, a job whose handling fails every time (outside the node: the engine's
``after_receive`` step raises, as a store outage would) and a job that kills its worker every
time (BullMQ's stalled-job check redelivers it; the delivery after the cap is not handled).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from bullmq import Job
from flowcraft import NodeContext, NodeResult, load_blueprint
from flowcraft.distributed import DeliveryPolicy, JobPayload, SimulatedCrash
from flowcraft_bullmq import BullMQAdapter, job_id_for

CAP = 3
NESTED = "[" * 200_000 + "]" * 200_000
HELD = load_blueprint({"id": "held", "nodes": [{"id": "a", "uses": "hold"}]})


class Env:
    """Adapters on one test's prefix; everything is closed and deleted afterwards."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.adapters: list[BullMQAdapter] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.hook_calls: list[str] = []

    def adapter(self, **kw: Any) -> BullMQAdapter:
        async def hold(ctx: NodeContext) -> NodeResult:
            self.started.set()
            await self.gate.wait()
            return NodeResult(output="held")

        opts = {"registry": {"hold": hold}, "blueprints": [HELD]}
        kw = {
            "queue_name": "q",
            "prefix": self.prefix,
            "runtime_options": opts,
            "delivery_policy": DeliveryPolicy(max_deliveries=CAP, backoff=0.01, max_backoff=0.05),
            "lock_duration": 1.0,
            "stalled_interval": 0.5,
            **kw,
        }
        a = BullMQAdapter(self.url, **kw)
        self.adapters.append(a)
        return a

    def worker(self, fail_with: BaseException | None = None) -> BullMQAdapter:
        """A running worker; ``fail_with`` is raised every time a job reaches
        ``after_receive``."""
        a = self.adapter()
        if fail_with is not None:

            def hook(point: str, job: JobPayload | None) -> None:
                if point == "after_receive":
                    self.hook_calls.append(point)
                    raise fail_with

            a.fault_hook = hook
        self.tasks.append(asyncio.create_task(a.start()))
        return a

    async def close(self) -> None:
        self.gate.set()
        for a in self.adapters:
            await a.stop()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.adapters:
            r = self.adapters[0].redis
            keys = [k async for k in r.scan_iter(match=f"{self.prefix}:*", count=500)]
            if keys:
                await r.unlink(*keys)
        for a in self.adapters:
            await a.aclose()


@pytest.fixture
async def env(redis_url: str, unique_prefix: str) -> AsyncIterator[Env]:
    e = Env(redis_url, unique_prefix)
    try:
        yield e
    finally:
        await e.close()


async def failed_job(a: BullMQAdapter, jid: str, timeout: float = 20.0) -> Job:
    """The BullMQ job ``jid`` once it is in the failed set."""
    loop = asyncio.get_running_loop()
    limit = loop.time() + timeout
    while True:
        j = await a.queue.getJob(jid)
        if j is not None and await j.isFailed():
            # ``j`` was read before the state check: it may predate the move to the failed
            # set. BullMQ sets the reason and the state in one script, so read it again.
            j = await a.queue.getJob(jid)
            assert j is not None
            return j
        assert loop.time() < limit, f"job {jid} never failed"
        await asyncio.sleep(0.02)


async def job_events(a: BullMQAdapter, jid: str) -> list[str]:
    """The BullMQ events of job ``jid``, oldest first."""
    events = await a.redis.xrange(f"{a.prefix}:{a.queue_name}:events")
    return [f[b"event"].decode() for _, f in events if f.get(b"jobId", b"").decode() == jid]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            "{not json",
            "invalid job payload: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        ),
        (
            NESTED,
            "invalid job payload: RecursionError: maximum recursion depth exceeded while "
            "decoding a JSON array from a unicode string",
        ),
    ],
    ids=["unparseable", "nested-200k"],
)
async def test_malformed_body_is_dead_lettered_on_its_first_delivery(
    env: Env, body: str, reason: str
) -> None:
    w = env.worker()
    c = env.adapter()
    await c.queue.add("raw", body, {"jobId": "poison", "attempts": 3})
    j = await failed_job(c, "poison")
    assert j.failedReason == reason
    assert (j.attemptsStarted, j.attemptsMade) == (1, 1)  # no BullMQ retry either
    assert await c.dead_letters() == [(body, reason)]
    assert w.dead_lettered == [(body, reason)]
    assert await job_events(c, "poison") == ["added", "waiting", "active", "failed"]


async def test_job_for_a_node_the_blueprint_lacks_is_dead_lettered(env: Env) -> None:
    w = env.worker()
    c = env.adapter()
    rid = await c.start_run("held")
    await asyncio.wait_for(env.started.wait(), 10)  # the run is live: its node is running
    ghost = JobPayload(run_id=rid, blueprint_id="held", node_id="ghost")
    await c.enqueue_job(ghost)
    j = await failed_job(c, job_id_for(ghost))
    reason = "job for unknown node 'ghost' of 'held'"
    assert j.failedReason == reason
    assert (j.attemptsStarted, j.attemptsMade) == (1, 1)
    assert await c.dead_letters() == [(json.dumps(ghost.to_wire()), reason)]
    assert w.dead_lettered == [(json.dumps(ghost.to_wire()), reason)]
    env.gate.set()  # the run itself is not disturbed
    for _ in range(500):
        if (await c.status(rid)).status == "completed":
            break
        await asyncio.sleep(0.02)
    res = await c.get_result(rid)
    assert (res.status, res.outputs) == ("completed", {"a": "held"})


async def test_handling_that_fails_every_time_ends_after_the_cap(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.worker(fail_with=ConnectionError("store down"))
    c = env.adapter()
    rid = await c.start_run("held")
    jid = job_id_for(JobPayload(run_id=rid, blueprint_id="held", node_id="a"))
    j = await failed_job(c, jid)
    reason = f"handling failed on delivery {CAP} (limit {CAP}): ConnectionError: store down"
    assert j.failedReason == reason
    assert len(env.hook_calls) == CAP
    # every redelivery went through BullMQ's delayed set without spending a BullMQ attempt
    assert (j.attemptsStarted, j.attemptsMade) == (CAP, 1)
    assert await job_events(c, jid) == [
        "added",
        "waiting",
        *["active", "delayed", "waiting"] * (CAP - 1),
        "active",
        "failed",
        "retries-exhausted",
    ]
    # with the policy's backoff: 0.01 s, then doubled
    waits = [m.split("redelivering in ")[1] for m in caplog.messages if "redelivering in" in m]
    assert waits == ["0.01 s", "0.02 s"]
    letters = await c.dead_letters()
    assert [r for _, r in letters] == [reason]
    assert not env.started.is_set()  # the node itself never ran
    assert (await c.status(rid)).node_statuses == {"a": "queued"}


async def test_job_that_kills_its_worker_every_time_ends_after_the_cap(env: Env) -> None:
    env.worker(fail_with=SimulatedCrash("worker died"))
    c = env.adapter()
    rid = await c.start_run("held")
    jid = job_id_for(JobPayload(run_id=rid, blueprint_id="held", node_id="a"))
    j = await failed_job(c, jid, timeout=30)
    reason = (
        f"delivered {CAP + 1} times (limit {CAP}) without being handled; the job kills or "
        "stalls its worker"
    )
    assert j.failedReason == reason
    assert len(env.hook_calls) == CAP  # the delivery after the cap is not handled
    assert j.attemptsStarted == CAP + 1
    assert [r for _, r in await c.dead_letters()] == [reason]
