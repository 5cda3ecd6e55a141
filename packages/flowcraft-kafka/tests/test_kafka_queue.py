"""Kafka-specific behaviour: parallel nodes of one run, a slow node not blocking its partition,
an enqueue-only client, dead letters with their reason, and SIGKILLed worker processes during
rebalances (no commit lost or doubled)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kafka_proc_app as app
import pytest
from flowcraft import NodeResult, create_flow
from flowcraft.testing.killable import WorkerPool, assert_exact, sigkill_storm
from flowcraft_kafka import REASON_HEADER, KafkaAdapter
from kafka_support import KafkaBackend


@pytest.fixture
async def kafka(
    kafka_bootstrap: str, redis_url: str, unique_prefix: str
) -> AsyncIterator[KafkaBackend]:
    """Fresh topics, group and Redis prefix."""
    b = KafkaBackend(kafka_bootstrap, redis_url, unique_prefix, partitions=1)
    try:
        yield b
    finally:
        await b.cleanup()


class Spans:
    """When each node started and ended (monotonic seconds)."""

    def __init__(self) -> None:
        self.spans: dict[str, tuple[float, float]] = {}
        self.started: set[str] = set()

    def node(self, seconds: float) -> Any:
        async def run(ctx: Any) -> NodeResult:
            t0 = time.monotonic()
            self.started.add(ctx.node_id)
            await asyncio.sleep(seconds)
            self.spans[f"{ctx.execution_id}/{ctx.node_id}"] = (t0, time.monotonic())
            return NodeResult(output=ctx.node_id)

        return run


async def _worker(kafka: KafkaBackend, flow: Any, **kw: Any) -> tuple[KafkaAdapter, Any]:
    opts = {"registry": flow.registry, "blueprints": [flow.to_blueprint()]}
    w = kafka.adapter(runtime_options=opts, inline_successors=0, **kw)
    return w, asyncio.create_task(w.start())


async def test_branches_of_one_run_execute_at_the_same_time(kafka: KafkaBackend) -> None:
    """``s -> a, b -> j`` on ONE worker and ONE partition: ``a`` and ``b`` (0.6 s each) run
    concurrently (upstream ran a run's nodes strictly one after another)."""
    sp = Spans()
    flow = (
        create_flow("par")
        .node("s", sp.node(0))
        .node("a", sp.node(0.6))
        .node("b", sp.node(0.6))
        .node("j", sp.node(0))
        .edge("s", "a")
        .edge("s", "b")
        .edge("a", "j")
        .edge("b", "j")
    )
    w, task = await _worker(kafka, flow)
    client = kafka.adapter(
        runtime_options={"registry": flow.registry, "blueprints": [flow.to_blueprint()]}
    )
    try:
        rid = await client.start_run("par", {})
        res = await client.result(rid, timeout=30)
    finally:
        await w.stop()
        await task
    assert res.status == "completed", res.errors
    assert res.node_statuses == dict.fromkeys("sabj", "completed")
    (a0, a1), (b0, b1) = sp.spans[f"{rid}/a"], sp.spans[f"{rid}/b"]
    assert max(a0, b0) < min(a1, b1), "a and b did not overlap"


async def test_a_slow_node_does_not_block_other_runs_on_its_partition(
    kafka: KafkaBackend,
) -> None:
    """One partition, one worker: while run 1's node sleeps 4 s, run 2 (a three-node chain on
    the same partition, started after the slow node began) completes."""
    sp = Spans()
    slow = create_flow("slow").node("z", sp.node(4.0))
    fast = (
        create_flow("fast")
        .node("x", sp.node(0))
        .node("y", sp.node(0))
        .node("w", sp.node(0))
        .edge("x", "y")
        .edge("y", "w")
    )
    reg = {**slow.registry, **fast.registry}
    opts = {"registry": reg, "blueprints": [slow.to_blueprint(), fast.to_blueprint()]}
    w = kafka.adapter(runtime_options=opts, inline_successors=0, lease_seconds=10.0)
    task = asyncio.create_task(w.start())
    client = kafka.adapter(runtime_options=opts)
    try:
        r1 = await client.start_run("slow", {})
        started = (
            await client.wait_until_running(r1) if hasattr(client, "wait_until_running") else None
        )
        assert started is None
        limit = time.monotonic() + 20
        while "z" not in sp.started:
            assert time.monotonic() < limit, "the slow node never started"
            await asyncio.sleep(0.02)
        r2 = await client.start_run("fast", {})
        res2 = await client.result(r2, timeout=20)
        slow_done = f"{r1}/z" in sp.spans
        st1 = await client.status(r1)
        res1 = await client.result(r1, timeout=20)
    finally:
        await w.stop()
        await task
    assert res2.status == "completed"
    assert st1.status == "running"
    assert not slow_done  # still sleeping when run 2 had completed
    assert res1.status == "completed"
    assert sp.spans[f"{r2}/w"][1] < sp.spans[f"{r1}/z"][1]


async def test_an_enqueue_only_client_needs_no_consumer(kafka: KafkaBackend) -> None:
    """``start_run`` from a client that never started produces the job and opens no consumer
    group membership; a worker started later runs it."""
    sp = Spans()
    flow = create_flow("one").node("o", sp.node(0))
    opts = {"registry": flow.registry, "blueprints": [flow.to_blueprint()]}
    client = kafka.adapter(runtime_options=opts)
    rid = await client.start_run("one", {})
    assert client._consumer is None
    w, task = await _worker(kafka, flow)
    try:
        res = await client.result(rid, timeout=20)
    finally:
        await w.stop()
        await task
    assert res.status == "completed"
    assert client._consumer is None


async def test_dead_letters_carry_their_reason_in_a_header(kafka: KafkaBackend) -> None:
    """An unparseable message goes to ``<topic>.dead`` with ``fc-reason``; the partition goes
    on (a later job still runs)."""
    sp = Spans()
    flow = create_flow("one").node("o", sp.node(0))
    opts = {"registry": flow.registry, "blueprints": [flow.to_blueprint()]}
    client = kafka.adapter(runtime_options=opts)
    await client.enqueue_raw(b"{not json")
    rid = await client.start_run("one", {})
    w, task = await _worker(kafka, flow)
    try:
        res = await client.result(rid, timeout=20)
        limit = time.monotonic() + 10
        while not (dead := await client.dead_letters()):
            assert time.monotonic() < limit
            await asyncio.sleep(0.05)
    finally:
        await w.stop()
        await task
    assert res.status == "completed"
    assert len(dead) == 1
    body, reason = dead[0]
    assert body == b"{not json"
    assert reason.startswith("invalid job payload")
    assert REASON_HEADER == "fc-reason"


@pytest.mark.xfail(
    strict=False,
    reason="KNOWN BUG (issue 14): in the full CI run (after ~1,200 other tests on the same "
    "Tansu broker) 2 of 12 runs never ended within 150 s after the kills; passes alone (5/5). "
    "A liveness bug of the Kafka queue under rebalances until shown otherwise",
)
async def test_sigkill_storm_during_rebalances(kafka: KafkaBackend, tmp_path: Path) -> None:
    """Two worker processes in one group, 12 runs of ``a -> b, c -> d -> e`` (nodes 0.2 s); a
    random worker is SIGKILLed 5 times, 0.4-1.2 s apart. Every kill is followed by a rebalance
    (the dead member's session runs out after 1 s and the respawned member joins), so later
    kills land while partitions move. Every run ends exactly as undisturbed, each node
    committed once: no commit lost, none doubled."""
    url = (
        f"kafka://{kafka.bootstrap}?topic={kafka.prefix}-jobs&group={kafka.prefix}-workers"
        f"&redis={kafka.redis_url}&prefix={kafka.prefix}&partitions=4"
    )
    env = {"FC_TEST_DIR": str(tmp_path), "FC_WORKER_URL": url, "FC_STEP_DELAY": "0.2"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    pool = WorkerPool(app.worker_main)
    client = kafka.adapter(
        runtime_options={"registry": app.REGISTRY, "blueprints": [app.BLUEPRINT]},
        partitions=4,
    )
    try:
        await client.ensure_topics()
        pool.start()
        storm = {"runs": 12, "kills": 5, "every": (0.4, 1.2), "timeout": 150.0}
        results = await sigkill_storm(pool, client, **storm)
        await pool.stop()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        pool.kill()
    for res in results:
        assert_exact(res)
    assert pool.deaths == 5
