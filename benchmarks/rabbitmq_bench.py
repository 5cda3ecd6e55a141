"""Benchmark of the RabbitMQ + PostgreSQL + Redis adapter; prints one JSON document.

    uv run python benchmarks/rabbitmq_bench.py            # 200-node chain and 200-wide fan
    uv run python benchmarks/rabbitmq_bench.py --quick    # 30 nodes, smoke run

Servers come from the integration-test service layer (``FLOWCRAFT_TEST_RABBITMQ_URL`` /
``FLOWCRAFT_TEST_POSTGRES_URL`` / ``FLOWCRAFT_TEST_REDIS_URL``, else testcontainers, else
throwaway local servers). Every run uses its own queue, schema and key prefix, removed at the
end.

Measured, with 1 and 2 worker *processes* (``flowcraft.distributed.backends.run_worker`` on an
``amqp://...`` backend URL, exactly like ``flowcraft worker``):

* ``chain``: ``n0 -> n1 -> ... -> n{N-1}``; ``ms_per_hop`` = run time / N (every hop is a
  publish, a delivery, a lease, a load and a commit);
* ``fan``: ``src -> w0..w{N-1} -> join`` (``all``); ``nodes_per_s`` = (N + 2) / run time.

Run time is from ``start_run`` to ``result()`` returning (NOTIFY-based wait), best of
``--repeat`` runs after one warm-up run. ``round_trips_per_node`` counts, on one in-process
worker running the chain, the PostgreSQL statements, Redis commands and confirmed AMQP publishes
per node (acks are one-way frames, counted apart). ``raw_rabbitmq`` is the same broker without
Flowcraft: a chain of N publish(confirm) -> deliver -> ack hops, and a prefetch-16 consumer
draining 2000 pre-published persistent messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aio_pika
from flowcraft import NodeContext, NodeResult, load_blueprint
from flowcraft.blueprint import WorkflowBlueprint
from flowcraft.distributed.backends import run_worker
from flowcraft.redis import connect
from flowcraft_rabbitmq import PostgresRunStore, RabbitMQAdapter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration-tests"))


async def inc(ctx: NodeContext) -> NodeResult:
    """Chain node: input + 1."""
    return NodeResult(output=(ctx.input or 0) + 1)


async def one(ctx: NodeContext) -> NodeResult:
    """Fan worker: 1."""
    return NodeResult(output=1)


async def total(ctx: NodeContext) -> NodeResult:
    """Fan join: the sum of its inputs."""
    return NodeResult(output=sum(ctx.input.values()))


REGISTRY: dict[str, Any] = {"inc": inc, "one": one, "total": total}


def chain(n: int) -> WorkflowBlueprint:
    """``n`` nodes in a line."""
    return load_blueprint(
        {
            "id": f"chain{n}",
            "nodes": [{"id": f"n{i}", "uses": "inc"} for i in range(n)],
            "edges": [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(n - 1)],
        }
    )


def fan(n: int) -> WorkflowBlueprint:
    """``src -> w0..w{n-1} -> join``."""
    ws = [f"w{i}" for i in range(n)]
    return load_blueprint(
        {
            "id": f"fan{n}",
            "nodes": [
                {"id": "src", "uses": "one"},
                *({"id": w, "uses": "one"} for w in ws),
                {"id": "join", "uses": "total", "config": {"joinStrategy": "all"}},
            ],
            "edges": [
                *({"source": "src", "target": w} for w in ws),
                *({"source": w, "target": "join"} for w in ws),
            ],
        }
    )


def worker_process(url: str, size: int, prefetch: int) -> None:
    """A worker process (spawned) until SIGTERM."""

    async def main() -> None:
        adapter = await run_worker(
            url, registry=REGISTRY, blueprints=[chain(size), fan(size)], concurrency=prefetch
        )
        await adapter.aclose()  # type: ignore[attr-defined]

    asyncio.run(main())


def machine_info() -> dict[str, Any]:
    """Interpreter and host details recorded with the numbers."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


class Deployment:
    """One benchmark's queue / schema / key prefix on the three servers."""

    def __init__(self, amqp: str, pg: str, redis: str) -> None:
        tag = f"fcbench{uuid.uuid4().hex[:8]}"
        self.amqp, self.pg, self.redis = amqp, pg, redis
        self.queue, self.schema, self.prefix = f"{tag}.jobs", tag, f"{tag}:"

    def worker_url(self, inline: int) -> str:
        """The backend URL a worker process opens (``inline``: inline successors)."""
        parts = urlsplit(self.amqp)
        q = {
            "queue": self.queue,
            "schema": self.schema,
            "postgres": self.pg,
            "redis": self.redis,
            "redis_prefix": self.prefix,
            "inline": str(inline),
        }
        return parts._replace(query=urlencode(q)).geturl()

    def adapter(self, size: int, **kw: Any) -> RabbitMQAdapter:
        """An in-process adapter (client, or the instrumented worker)."""
        return RabbitMQAdapter(
            self.amqp,
            postgres=self.pg,
            redis=self.redis,
            schema=self.schema,
            queue_name=self.queue,
            redis_prefix=self.prefix,
            runtime_options={"registry": REGISTRY, "blueprints": [chain(size), fan(size)]},
            **kw,
        )

    async def cleanup(self) -> None:
        """Delete the queues, the schema and the keys."""
        admin = self.adapter(2)
        await admin.delete_topology()
        store = PostgresRunStore(self.pg, schema=self.schema)
        await store.drop_schema()
        await store.aclose()
        await admin.aclose()
        r = connect(self.redis)
        keys = [k async for k in r.scan_iter(match=f"{self.prefix}*", count=500)]
        if keys:
            await r.unlink(*keys)
        await r.aclose()


async def timed_runs(
    client: RabbitMQAdapter, bp_id: str, key: str, expect: Any, repeat: int
) -> float:
    """Best wall time of ``repeat`` runs (after one warm-up); each run's ``key`` must equal
    ``expect`` (a fast but wrong run posts no number)."""
    best = float("inf")
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        rid = await client.start_run(bp_id)
        res = await client.result(rid, timeout=600)
        dt = time.perf_counter() - t0
        got = res.context.get(key)
        if res.status != "completed" or got != expect:
            raise RuntimeError(f"{bp_id}: {res.status}, {key} = {got!r}, expected {expect!r}")
        if i > 0:
            best = min(best, dt)
    return best


async def with_workers(
    dep: Deployment, size: int, workers: int, repeat: int, inline: int
) -> dict[str, Any]:
    """Chain and fan timings with ``workers`` worker processes."""
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=worker_process, args=(dep.worker_url(inline), size, 32))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    client = dep.adapter(size)
    try:
        chain_s = await timed_runs(client, f"chain{size}", f"_outputs.n{size - 1}", size, repeat)
        fan_s = await timed_runs(client, f"fan{size}", "_outputs.join", size, repeat)
    finally:
        await client.aclose()
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(30)
    return {
        "chain": {
            "nodes": size,
            "seconds": round(chain_s, 4),
            "nodes_per_s": round(size / chain_s, 1),
            "ms_per_hop": round(chain_s / size * 1000, 3),
        },
        "fan": {
            "nodes": size + 2,
            "seconds": round(fan_s, 4),
            "nodes_per_s": round((size + 2) / fan_s, 1),
        },
    }


async def round_trips(dep: Deployment, size: int, inline: int) -> dict[str, Any]:
    """Network round trips per node of one in-process worker running the chain."""
    worker = dep.adapter(size, worker_id="counted", inline_successors=inline)
    client = dep.adapter(size)
    counts = {"redis": 0, "amqp_publish": 0, "amqp_ack": 0}
    coord = worker.coordination
    for name in (
        "increment",
        "set_if_not_exist",
        "extend_ttl",
        "delete",
        "get",
        "compare_and_delete",
    ):
        orig = getattr(coord, name)

        def counted(*a: Any, _orig: Any = orig, **k: Any) -> Any:
            counts["redis"] += 1
            return _orig(*a, **k)

        setattr(coord, name, counted)
    send = worker._send

    async def counted_send(*a: Any, **k: Any) -> None:
        counts["amqp_publish"] += 1
        await send(*a, **k)

    worker._send = counted_send  # type: ignore[method-assign]
    task = asyncio.create_task(worker.start())
    try:
        await timed_runs(client, f"chain{size}", f"_outputs.n{size - 1}", size, 0)  # warm-up
        pg0, redis0, pub0 = worker.store.stats.statements, counts["redis"], counts["amqp_publish"]
        acked0 = worker.processed
        rid = await client.start_run(f"chain{size}")
        await client.result(rid, timeout=600)
        await asyncio.sleep(0.2)
        pg = worker.store.stats.statements - pg0
        redis = counts["redis"] - redis0
        pub = counts["amqp_publish"] - pub0
        acks = worker.processed - acked0
    finally:
        await worker.stop()
        await task
        await worker.aclose()
        await client.aclose()
    per = {
        "postgres": round(pg / size, 2),
        "redis": round(redis / size, 2),
        "amqp_publish_confirmed": round(pub / size, 2),
    }
    per["total"] = round(sum(per.values()), 2)
    return {
        "per_node": per,
        "amqp_acks_per_node_one_way": round(acks / size, 2),
        "why": WHY[inline > 0],
    }


WHY = {
    False: (
        "postgres: 1 round trip taking the node lease and reading what changed since the "
        "worker last saw the run (two pipelined statements) + 1 commit that also releases the "
        "lease, per node, +1 result row (and NOTIFY) per run; redis: the finalized marker per "
        "run; amqp: 1 confirmed publish per successor; the ack is one-way"
    ),
    True: (
        "as every node a job, without the publish, the ack and the read: the commit that "
        "makes the successor ready also takes its lease, and the worker's view of the run is "
        "already current, so a hop is one statement"
    ),
}
"""What the round trips per node are, every node a job (False) and inline (True)."""

MODES = {"jobs": 0, "inline": 64}
"""The measured modes: every node a message, and up to 64 successors run by the worker that
made them ready (``inline=64``, the adapter's default)."""


async def raw_rabbitmq(amqp: str, hops: int, messages: int = 2000) -> dict[str, Any]:
    """The broker without Flowcraft: chained hops and drain throughput."""
    conn = await aio_pika.connect_robust(amqp)
    try:
        pub = await conn.channel(publisher_confirms=True)
        sub = await conn.channel(publisher_confirms=False)
        await sub.set_qos(prefetch_count=16)
        name = f"fcbench-raw-{uuid.uuid4().hex[:8]}"
        q = await sub.declare_queue(name, durable=True)
        await pub.declare_queue(name, durable=True)

        def msg(i: int) -> aio_pika.Message:
            return aio_pika.Message(str(i).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)

        done = asyncio.Event()
        seen = 0

        async def hop(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen
            i = int(m.body)
            if i + 1 < hops:
                await pub.default_exchange.publish(msg(i + 1), name)
            await m.ack()
            seen += 1
            if seen >= hops:
                done.set()

        tag = await q.consume(hop)
        t0 = time.perf_counter()
        await pub.default_exchange.publish(msg(0), name)
        await done.wait()
        chain_s = time.perf_counter() - t0
        await q.cancel(tag)

        for i in range(messages):
            await pub.default_exchange.publish(msg(i), name)
        drained = asyncio.Event()
        got = 0

        async def drain(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal got
            await m.ack()
            got += 1
            if got >= messages:
                drained.set()

        t0 = time.perf_counter()
        tag = await q.consume(drain)
        await drained.wait()
        drain_s = time.perf_counter() - t0
        await q.cancel(tag)
        await q.delete(if_unused=False, if_empty=False)
    finally:
        await conn.close()
    return {
        "chain_hops": hops,
        "chain_ms_per_hop": round(chain_s / hops * 1000, 3),
        "drain_messages": messages,
        "drain_msgs_per_s": round(messages / drain_s, 1),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement; the JSON document."""
    from services import get_service

    svcs = {n: get_service(n) for n in ("rabbitmq", "postgres", "redis")}
    dep = Deployment(svcs["rabbitmq"].url, svcs["postgres"].url, svcs["redis"].url)
    size = 30 if args.quick else args.nodes
    repeat = 1 if args.quick else args.repeat
    load = machine_info()
    out: dict[str, Any] = {
        "benchmark": "flowcraft-rabbitmq",
        "machine": load,
        "services": {n: s.source for n, s in svcs.items()},
        "config": {"nodes": size, "repeat": repeat, "prefetch": 32, "quick": args.quick},
    }
    try:
        for mode, inline in MODES.items():
            out[mode] = {
                "round_trips_per_node": await round_trips(dep, size, inline),
                "workers_1": await with_workers(dep, size, 1, repeat, inline),
                "workers_2": await with_workers(dep, size, 2, repeat, inline),
            }
        out["raw_rabbitmq"] = await raw_rabbitmq(svcs["rabbitmq"].url, size)
    finally:
        await dep.cleanup()
    raw = out["raw_rabbitmq"]["chain_ms_per_hop"]
    out["comparison"] = {
        f"{mode}_chain_ms_per_hop_vs_raw_hop": round(
            out[mode]["workers_1"]["chain"]["ms_per_hop"] / raw, 2
        )
        for mode in MODES
    }
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the JSON document."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="30 nodes, one repetition")
    ap.add_argument("--nodes", type=int, default=200, help="chain length / fan width")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per scenario (best kept)")
    args = ap.parse_args(argv)
    doc = asyncio.run(main_async(args))
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
