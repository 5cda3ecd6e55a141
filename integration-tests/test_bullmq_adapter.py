"""BullMQAdapter specifics against a real Redis: job-id deduplication that never blocks
recovery, BullMQ-native retries with backoff, dead letters, graceful shutdown, pub/sub result
waiting, the active-run index and retention."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from bullmq import Worker
from bullmq.custom_errors import UnrecoverableError
from flowcraft import NodeContext, NodeResult, load_blueprint
from flowcraft.distributed.contracts import JobPayload
from flowcraft_bullmq import BullMQAdapter, job_id_for

CHAIN = load_blueprint(
    {
        "id": "chain",
        "nodes": [{"id": n, "uses": "step"} for n in ("a", "b", "c")],
        "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "c"}],
    }
)


class Env:
    """Adapters on one test's prefix; everything is closed and deleted afterwards."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.adapters: list[BullMQAdapter] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.calls: list[tuple[str, int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    def registry(self) -> dict[str, Any]:
        async def step(ctx: NodeContext) -> NodeResult:
            self.calls.append((ctx.node_id, ctx.attempt))
            await self.gate.wait()
            return NodeResult(output=(ctx.input or 0) + 1)

        return {"step": step}

    def adapter(self, blueprints: list[Any] | None = None, **kw: Any) -> BullMQAdapter:
        opts = {"registry": self.registry(), "blueprints": blueprints or [CHAIN]}
        kw = {"queue_name": "q", "prefix": self.prefix, "runtime_options": opts, **kw}
        a = BullMQAdapter(self.url, **kw)
        self.adapters.append(a)
        return a

    def worker(self, **kw: Any) -> BullMQAdapter:
        a = self.adapter(**kw)
        self.tasks.append(asyncio.create_task(a.start()))
        return a

    async def close(self) -> None:
        for a in self.adapters:
            await a.stop()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        r = self.adapters[0].redis if self.adapters else None
        if r is not None:
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


async def wait_for(pred: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    """Poll an async or sync predicate every 10 ms."""
    loop = asyncio.get_running_loop()
    limit = loop.time() + timeout
    while True:
        r = pred()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        assert loop.time() < limit, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _close_raw_worker(w: Worker, running: asyncio.Task[Any]) -> None:
    """Close a plain BullMQ worker that is idle. (bullmq-python's graceful close can wait
    forever when it races the worker's blocking fetch: force it, bounded.)"""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(w.close(force=True), 5)
    if not running.done():
        running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(running, 5)


async def counts(a: BullMQAdapter) -> dict[str, int]:
    return dict(await a.queue.getJobCounts())


# -- deduplication -----------------------------------------------------------------------------


async def test_the_same_job_enqueued_twice_is_one_bullmq_job(env: Env) -> None:
    c = env.adapter()
    job = JobPayload(run_id="r", blueprint_id="chain", node_id="a")
    await c.enqueue_job(job)
    await c.enqueue_job(job)
    await c.enqueue_job(job.model_copy(update={"iteration": 1}))
    await c.enqueue_job(job.model_copy(update={"requeues": 1}))
    assert (await counts(c))["waiting"] == 3
    without = env.adapter(deduplicate=False)
    await without.enqueue_job(job)
    await without.enqueue_job(job)
    assert (await counts(c))["waiting"] == 5


async def test_reconcile_is_never_swallowed_by_a_retained_job(env: Env) -> None:
    """A job that BullMQ gave up on (failed, retained for days) keeps its id: a reconcile
    pass uses a new generation, so the lost node is enqueued again and the run completes."""
    c = env.adapter()
    rid = await c.start_run("chain")
    first = job_id_for(JobPayload(run_id=rid, blueprint_id="chain", node_id="a"))

    async def give_up(job: Any, token: str) -> None:
        raise UnrecoverableError("given up")  # e.g. stalled too often

    raw = Worker("q", give_up, {"connection": env.url, "prefix": env.prefix, "autorun": False})
    running = asyncio.create_task(raw.run())
    await wait_for(lambda: _failed(c, first), "the job to fail in BullMQ")
    await _close_raw_worker(raw, running)
    await c.enqueue_job(JobPayload(run_id=rid, blueprint_id="chain", node_id="a"))
    assert (await counts(c))["waiting"] == 0  # a plain re-enqueue is deduplicated
    assert await c.reconcile(rid) == ["a"]
    assert (await counts(c))["waiting"] == 1
    assert await c.reconcile(rid) == ["a"]  # every pass is a new generation
    env.worker()
    res = await c.result(rid, 10)
    assert res.status == "completed"
    assert res.outputs == {"a": 1, "b": 2, "c": 3}
    assert env.calls == [("a", 1), ("b", 1), ("c", 1)]


# -- BullMQ-native retries ---------------------------------------------------------------------


async def test_native_retries_go_through_bullmqs_backoff(env: Env) -> None:
    calls: list[int] = []

    async def flaky(ctx: NodeContext) -> NodeResult:
        calls.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError(f"fail {ctx.attempt}")
        return NodeResult(output="ok")

    cfg = {"maxRetries": 3, "retryDelay": 30, "jitter": 0}
    bp = load_blueprint({"id": "r", "nodes": [{"id": "f", "uses": "flaky", "config": cfg}]})
    opts = {"registry": {"flaky": flaky}, "blueprints": [bp]}
    w = env.adapter(retry_in_process=False, runtime_options=opts)
    env.tasks.append(asyncio.create_task(w.start()))
    c = env.adapter(retry_in_process=False, runtime_options=opts)
    rid = await c.start_run("r")
    res = await c.result(rid, 10)
    assert res.status == "completed"
    assert calls == [1, 2, 3]
    jid = job_id_for(JobPayload(run_id=rid, blueprint_id="r", node_id="f"))
    await wait_for(lambda: counts(c), "the job to be acked")
    await wait_for(lambda: _state(c, jid, "completed"), "the BullMQ job to complete", timeout=5)
    bjob = await c.queue.getJob(jid)
    assert bjob.attemptsMade == 3
    assert bjob.opts["attempts"] == 3
    assert bjob.opts["backoff"] == {"type": "exponential", "delay": 30}
    assert len(bjob.stacktrace) == 2
    events = await c.redis.xrange(f"{env.prefix}:q:events")
    kinds = [f[b"event"] for _, f in events if f.get(b"jobId", b"").decode() == jid]
    assert kinds.count(b"delayed") == 2  # both retries went through BullMQ's delayed set
    assert kinds[-1] == b"completed"


async def _state(a: BullMQAdapter, jid: str, state: str) -> bool:
    j = await a.queue.getJob(jid)
    return j is not None and await j.isCompleted() if state == "completed" else False


async def test_unparseable_job_is_failed_without_retry(env: Env) -> None:
    w = env.worker()
    c = env.adapter()
    raw = await c.queue.add("raw", "{not json", {"attempts": 3, "jobId": "garbage"})
    assert raw.id == "garbage"
    await wait_for(lambda: _failed(c, "garbage"), "the garbage job to fail")
    j = await c.queue.getJob("garbage")
    assert j.attemptsMade == 1
    assert "invalid job payload" in j.failedReason
    letters = await c.dead_letters()
    assert [d for d, _ in letters] == ["{not json"]
    assert [d for d, _ in w.dead_lettered] == ["{not json"]


async def test_a_failure_outside_the_node_is_redelivered_without_spending_an_attempt(
    env: Env,
) -> None:
    """Handling that fails once (a store outage) puts the job in BullMQ's delayed set for the
    delivery policy's backoff; the next delivery runs the node, as attempt 1."""
    w = env.worker()
    failures: list[str] = []

    def outage(point: str, job: JobPayload | None) -> None:
        if point == "after_receive" and job is not None and job.node_id == "a" and not failures:
            failures.append(job.node_id)
            raise ConnectionError("store down")

    w.fault_hook = outage
    c = env.adapter()
    rid = await c.start_run("chain")
    res = await c.result(rid, 10)
    assert (res.status, res.outputs) == ("completed", {"a": 1, "b": 2, "c": 3})
    assert env.calls == [("a", 1), ("b", 1), ("c", 1)]
    jid = job_id_for(JobPayload(run_id=rid, blueprint_id="chain", node_id="a"))
    await wait_for(lambda: _state(c, jid, "completed"), "the BullMQ job to complete", timeout=5)
    bjob = await c.queue.getJob(jid)
    assert (bjob.attemptsStarted, bjob.attemptsMade) == (2, 1)  # the completion counts one
    events = await c.redis.xrange(f"{env.prefix}:q:events")
    kinds = [f[b"event"] for _, f in events if f.get(b"jobId", b"").decode() == jid]
    assert kinds == [
        b"added",
        b"waiting",
        b"active",
        b"delayed",
        b"waiting",
        b"active",
        b"completed",
    ]


async def _failed(a: BullMQAdapter, jid: str) -> bool:
    j = await a.queue.getJob(jid)
    return j is not None and bool(await j.isFailed())


# -- shutdown, results, index, retention ---------------------------------------------------------


async def test_stop_drains_the_active_job(env: Env) -> None:
    env.gate.clear()
    w = env.worker(concurrency=4)
    c = env.adapter()
    rid = await c.start_run("chain")
    await wait_for(lambda: env.calls == [("a", 1)], "'a' to start")
    stopping = asyncio.create_task(w.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waits for the running node
    env.gate.set()
    await asyncio.wait_for(stopping, 10)
    await asyncio.wait_for(env.tasks[0], 10)  # start() returns cleanly
    st = await c.status(rid)
    assert st.node_statuses == {"a": "completed", "b": "queued", "c": "pending"}
    cs = await counts(c)
    assert (cs["active"], cs["completed"], cs["waiting"]) == (0, 1, 1)
    env.worker()  # a new worker picks up where the stopped one left off
    res = await c.result(rid, 10)
    assert res.outputs == {"a": 1, "b": 2, "c": 3}
    assert env.calls == [("a", 1), ("b", 1), ("c", 1)]


async def test_result_waits_on_pubsub_not_by_polling(env: Env) -> None:
    env.gate.clear()
    env.worker()
    c = env.adapter()
    rid = await c.start_run("chain")
    reads: list[str] = []
    orig = c.redis.execute_command

    async def counted(*args: Any, **kw: Any) -> Any:
        reads.append(str(args[0]).upper())
        return await orig(*args, **kw)

    c.redis.execute_command = counted  # type: ignore[method-assign]
    waiter = asyncio.create_task(c.result(rid, 10))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    assert reads.count("HGET") == 1  # one status check, then it just listens
    env.gate.set()
    res = await asyncio.wait_for(waiter, 10)
    assert res.status == "completed"
    assert reads.count("HGET") == 2  # woken once by the publish


async def test_active_index_and_retention(env: Env) -> None:
    env.gate.clear()
    env.worker(retention_seconds=60)  # retention is applied by the final commit (a worker's)
    c = env.adapter(retention_seconds=60)
    rids = sorted([await c.start_run("chain") for _ in range(3)])
    page, cursor = await c.list_active_runs(limit=10)
    assert (sorted(page), cursor) == (rids, None)
    ctx = await c.create_context(rids[0])
    assert await c.redis.pttl(ctx.key) == -1  # live: no TTL
    env.gate.set()
    for rid in rids:
        assert (await c.result(rid, 10)).status == "completed"
    assert await c.list_active_runs() == ([], None)
    assert 0 < await c.redis.pttl(ctx.key) <= 60_000
    assert await c.reconcile_all(stale_after=0) == {"scanned": 0, "reconciled": 0, "enqueued": 0}


async def test_hundreds_of_starts_and_results_gathered_at_once(env: Env) -> None:
    """A client gathers 150 ``start_run`` calls, then 150 ``result()`` calls plus 150 more on
    one run, at once: all succeed (one Redis request per waiter once exhausted the client's
    100-connection pool with MaxConnectionsError); each run executed its three nodes once."""
    env.worker()
    c = env.adapter()
    rids = await asyncio.gather(*(c.start_run("chain", {}) for _ in range(150)))
    assert len(set(rids)) == 150
    results = await asyncio.gather(
        *(c.result(r, 60) for r in rids), *(c.result(rids[0], 60) for _ in range(150))
    )
    assert [r.status for r in results] == ["completed"] * 300
    assert {r.context["_outputs.c"] for r in results} == {3}
    assert len(env.calls) == 150 * 3
