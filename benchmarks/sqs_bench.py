"""Benchmark of the SQS + DynamoDB adapter against moto_server; prints one JSON document.

    uv run python benchmarks/sqs_bench.py             # 25-node chain and 25-wide fan
    uv run python benchmarks/sqs_bench.py --quick     # 10 nodes, smoke run
    uv run python benchmarks/sqs_bench.py --out benchmarks/results/sqs.json

moto comes from the integration-test service layer (``FLOWCRAFT_TEST_MOTO_URL``, else
testcontainers, else a throwaway local ``moto_server``). Every measurement uses its own queue and
table, deleted at the end.

Measured in two modes, every node a message (``jobs``) and the default ``inline`` (up to 64
successors run by the worker that made them ready), each with 1 and 2 in-process workers
(moto cannot run DynamoDB requests from several processes atomically, see
``integration-tests/sqs_support.py``; all workers of the process share one DynamoDB request
lane):

* ``chain``: ``n0 -> ... -> n{N-1}``; ``ms_per_hop`` = run time / N (in ``jobs`` mode each hop
  is a send, a receive, a lease, a load, a commit that releases the lease, and a delete; inline,
  one commit that also leases the successor);
* ``fan``: ``src -> w0..w{N-1} -> join`` (``all``); ``nodes_per_s`` = (N + 2) / run time.

Run time is from ``start_run`` to ``result()`` returning, best of ``--repeat`` runs after one
warm-up run. ``api_calls_per_node`` counts every SQS and DynamoDB call of the measured chain runs
(workers and client: receives, long polls that came back empty, status polls) divided by the
nodes executed, by operation. ``raw_sqs_hop_ms`` is the same moto without Flowcraft: a chain of
send -> receive -> delete hops. moto is an emulator written in Python (every request costs
milliseconds, and each DynamoDB transaction copies the whole table), so the absolute numbers say
little about AWS; the call counts do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "integration-tests"))

from bench_common import REGISTRY, chain_bp, fan_bp  # noqa: E402
from flowcraft_sqs import SqsAdapter  # noqa: E402
from services import get_service  # noqa: E402
from sqs_support import SqsResources, make_resources  # noqa: E402

MODES = {"jobs": 0, "inline": 64}
"""The measured modes: every node a message, and the adapter's default of up to 64 successors
run inline by the worker that made them ready (leased in the commit's transaction)."""


async def _timed_run(client: SqsAdapter, bp: str) -> float:
    t0 = time.perf_counter()
    rid = await client.start_run(bp)
    res = await client.result(rid, timeout=600)
    dt = time.perf_counter() - t0
    if res.status != "completed":
        raise RuntimeError(f"{bp} ended {res.status}: {res.errors}")
    return dt


async def measure(url: str, n: int, workers: int, repeat: int, inline: int) -> dict[str, Any]:
    """Chain and fan timings and API calls with ``workers`` in-process workers running up to
    ``inline`` successors per delivered job (0: every node a message)."""
    res: SqsResources = await make_resources(url)
    opts = {"registry": REGISTRY, "blueprints": [chain_bp(n), fan_bp(n)]}
    try:
        ws = [
            res.adapter(
                runtime_options=opts,
                concurrency=16,
                lease_seconds=30,
                visibility_timeout=30,
                inline_successors=inline,
            )
            for _ in range(workers)
        ]
        client = res.adapter(runtime_options=opts)
        tasks = [asyncio.create_task(w.start()) for w in ws]
        try:
            await _timed_run(client, "chain")  # warm-up
            res.stats.calls.clear()
            chain = [await _timed_run(client, "chain") for _ in range(repeat)]
            calls = dict(res.stats.calls)
            await _timed_run(client, "fan")
            fan = [await _timed_run(client, "fan") for _ in range(repeat)]
        finally:
            for w in ws:
                await w.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
        nodes = n * repeat
        best_chain, best_fan = min(chain), min(fan)
        return {
            "chain": {
                "nodes": n,
                "seconds": round(best_chain, 3),
                "ms_per_hop": round(best_chain / n * 1000, 2),
                "nodes_per_s": round(n / best_chain, 1),
            },
            "fan": {
                "nodes": n + 2,
                "seconds": round(best_fan, 3),
                "nodes_per_s": round((n + 2) / best_fan, 1),
            },
            "api_calls_per_node": {
                "total": round(sum(calls.values()) / nodes, 2),
                **{k: round(v / nodes, 2) for k, v in sorted(calls.items())},
            },
        }
    finally:
        await res.cleanup()


async def raw_sqs_hop_ms(url: str, hops: int) -> float:
    """ms per send -> receive -> delete hop on the same moto, without Flowcraft."""
    res = await make_resources(url)
    try:
        aws = res.admin
        assert aws is not None
        t0 = time.perf_counter()
        await aws.sqs("send_message", QueueUrl=res.queue_url, MessageBody="0")
        done = 0
        while done < hops:
            r = await aws.sqs(
                "receive_message", QueueUrl=res.queue_url, WaitTimeSeconds=1, MaxNumberOfMessages=1
            )
            for m in r.get("Messages", []):
                await aws.sqs(
                    "delete_message", QueueUrl=res.queue_url, ReceiptHandle=m["ReceiptHandle"]
                )
                done += 1
                if done < hops:
                    await aws.sqs("send_message", QueueUrl=res.queue_url, MessageBody=str(done))
        return round((time.perf_counter() - t0) / hops * 1000, 2)
    finally:
        await res.cleanup()


async def main() -> None:
    """Run the benchmark and print (and optionally store) the JSON document."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=25)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="10 nodes, one repeat")
    ap.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = ap.parse_args()
    n, repeat = (10, 1) if args.quick else (args.nodes, args.repeat)
    svc = get_service("moto")
    doc: dict[str, Any] = {
        "benchmark": "flowcraft-sqs on moto_server",
        "moto": {"source": svc.source},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
        },
        "repeat": repeat,
    }
    for mode, inline in MODES.items():
        doc[mode] = {f"workers_{w}": await measure(svc.url, n, w, repeat, inline) for w in (1, 2)}
    doc["raw_sqs_hop_ms"] = await raw_sqs_hop_ms(svc.url, 50)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
