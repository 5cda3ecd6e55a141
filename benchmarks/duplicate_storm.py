"""Duplicate amplification: a 100-wide fan-out (1 source, 100 branches, 1 join) with EVERY
enqueue delivered twice and deduplication off, on each backend. Prints JSON with, per backend,
the enqueue factor (``enqueue_job`` calls per node of the workflow), executions per node and
the wall time of a run (median and min..max over ``--repeat`` runs after one warm-up).

    uv run python benchmarks/duplicate_storm.py [--repeat 3] [--backends memory,sqlite,bullmq]
        [--redis-url redis://127.0.0.1:6379/0] [--out benchmarks/results/duplicate_storm.json]
    uv run python benchmarks/duplicate_storm.py --markdown benchmarks/results/duplicate_storm.json

The reliability issue's bound: the factor stays a small constant, whatever the width (upstream
re-published every still-queued successor on every late duplicate of a finished node: 96,723
enqueues for 102 nodes). The duplicate-storm conformance test asserts why it stays small on
every adapter (one safeguard requeue per round, ``assert_requeues_do_not_multiply``); this
prints the measured factor. ``bullmq`` needs a
Redis URL (``--redis-url`` or ``FLOWCRAFT_TEST_REDIS_URL``; else a throwaway local server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flowcraft import NodeContext, NodeResult, load_blueprint
from flowcraft.distributed.adapter import BaseDistributedAdapter
from flowcraft.distributed.memory import InMemoryAdapter, MemoryBroker
from flowcraft.distributed.sqlite import SqliteAdapter
from flowcraft.testing.conformance.cluster import Cluster
from flowcraft.testing.conformance.faults import FaultInjector

WIDTH = 100
NODES = WIDTH + 2
ran: list[str] = []


async def node(ctx: NodeContext) -> NodeResult:
    """A branch (or the source): output 1."""
    ran.append(ctx.node_id)
    return NodeResult(1)


async def join(ctx: NodeContext) -> NodeResult:
    """The join: the sum of the branches."""
    ran.append(ctx.node_id)
    return NodeResult(sum(ctx.input.values()))


BLUEPRINT = load_blueprint(
    {
        "id": "storm",
        "nodes": [
            {"id": "s", "uses": "w"},
            *({"id": f"w{i}", "uses": "w"} for i in range(WIDTH)),
            {"id": "j", "uses": "j"},
        ],
        "edges": [
            *({"source": "s", "target": f"w{i}"} for i in range(WIDTH)),
            *({"source": f"w{i}", "target": "j"} for i in range(WIDTH)),
        ],
    }
)
OPTIONS = {"registry": {"w": node, "j": join}, "blueprints": [BLUEPRINT]}

MakeWorker = Callable[..., Awaitable[BaseDistributedAdapter]]


async def one_run(make: MakeWorker, kwargs: dict[str, Any]) -> dict[str, float]:
    """One storm run on fresh workers; its enqueues, executions and wall time."""
    ran.clear()
    faults = FaultInjector(seed=7).duplicate(2)
    async with Cluster(
        make, OPTIONS, workers=2, faults=faults, timeout=300, adapter_kwargs=kwargs
    ) as c:
        t0 = time.perf_counter()
        res = await c.run("storm")
        wall = time.perf_counter() - t0
    assert res.status == "completed" and res.context["_outputs.j"] == WIDTH, res.status
    return {"enqueues": len(faults.enqueued), "executions": len(ran), "seconds": wall}


def memory_workers() -> MakeWorker:
    """Workers on a fresh in-memory broker."""
    broker = MemoryBroker(visibility_timeout=5.0)

    async def make(opts: dict[str, Any], **kw: Any) -> BaseDistributedAdapter:
        return InMemoryAdapter(broker, runtime_options=opts, **kw)

    return make


def sqlite_workers(path: str) -> MakeWorker:
    """Workers on a fresh SQLite file."""

    async def make(opts: dict[str, Any], **kw: Any) -> BaseDistributedAdapter:
        return SqliteAdapter(path, runtime_options=opts, **kw)

    return make


def bullmq_workers(url: str, prefix: str) -> MakeWorker:
    """BullMQ workers on a fresh key prefix of the Redis at ``url``."""
    from flowcraft_bullmq import BullMQAdapter

    async def make(opts: dict[str, Any], **kw: Any) -> BaseDistributedAdapter:
        return BullMQAdapter(url, prefix=prefix, runtime_options=opts, **kw)

    return make


def fresh(name: str, n: int, redis_url: str | None, tmp: str) -> MakeWorker:
    """Workers on the ``n``-th fresh backend of kind ``name``."""
    if name == "memory":
        return memory_workers()
    if name == "sqlite":
        return sqlite_workers(f"{tmp}/storm-{n}.db")
    if name == "bullmq":
        from flowcraft.testing.services import get_service

        return bullmq_workers(redis_url or get_service("redis").url, f"fcstorm{time.time_ns()}")
    raise SystemExit(f"unknown backend {name!r} (known: memory, sqlite, bullmq)")


KWARGS = {"bullmq": {"deduplicate": False}}
"""Adapter kwargs per backend: BullMQ deduplicates job ids unless told not to."""


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every backend of ``args.backends`` (one warm-up, then ``args.repeat`` runs)."""
    report: dict[str, Any] = {
        "benchmark": "duplicate_storm",
        "date": datetime.now(UTC).date().isoformat(),
        "python": sys.version.split()[0],
        "workflow": f"fan-out of {WIDTH} (1 source, {WIDTH} branches, 1 join): {NODES} nodes",
        "faults": "every enqueue delivered twice, deduplication off",
        "bound": "one requeue per node per round while its twin holds the lease (the "
        "conformance suite's check); no multiplication with copies",
        "method": f"1 warm-up run, then {args.repeat} runs on fresh workers; 2 workers",
        "backends": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backends.split(","):
            kwargs = KWARGS.get(name, {})
            await one_run(fresh(name, 0, args.redis_url, tmp), kwargs)  # warm-up
            runs = [
                await one_run(fresh(name, i + 1, args.redis_url, tmp), kwargs)
                for i in range(args.repeat)
            ]
            factors = [r["enqueues"] / NODES for r in runs]
            execs = [r["executions"] / NODES for r in runs]
            secs = [r["seconds"] for r in runs]
            report["backends"][name] = {
                "enqueue_factor": {
                    "median": round(statistics.median(factors), 3),
                    "min": round(min(factors), 3),
                    "max": round(max(factors), 3),
                },
                "executions_per_node": {
                    "median": round(statistics.median(execs), 3),
                    "max": round(max(execs), 3),
                },
                "run_seconds": {
                    "median": round(statistics.median(secs), 3),
                    "min": round(min(secs), 3),
                    "max": round(max(secs), 3),
                },
            }
    return report


def main() -> None:
    """Parse arguments, measure, print the JSON (and write it to ``--out``); or, with
    ``--markdown FILE``, print the README table of a stored result."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backends", default="memory,sqlite,bullmq")
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    ap.add_argument("--markdown", default=None, help="print the table of this stored JSON")
    args = ap.parse_args()
    if args.markdown:
        import tables  # benchmarks/tables.py, beside this script

        print(tables.render("duplicate_storm", args.markdown))
        return
    text = json.dumps(asyncio.run(measure(args)), indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
