"""Benchmark of the Azure adapter (Storage Queues + Cosmos DB) on Azurite and a Cosmos server;
prints one JSON document.

    uv run python benchmarks/azure_bench.py                 # 200-node chain and 200-wide fan
    uv run python benchmarks/azure_bench.py --quick         # 20 nodes, one repeat
    uv run python benchmarks/azure_bench.py --out benchmarks/results/azure.json
    uv run python benchmarks/azure_bench.py --markdown benchmarks/results/azure.json

The servers come from the test service layer (``FLOWCRAFT_TEST_AZURITE_URL`` /
``FLOWCRAFT_TEST_COSMOS_URL``, else testcontainers, else throwaway local ``azurite-queue`` and
``cosmosdb-server``). Every measurement uses its own queues and container, deleted at the end.

Measured with 1 and 2 in-process workers (adapter defaults: concurrency 8, visibility timeout
30 s, idle poll 0.02..2 s):

* ``chain``: ``n0 -> ... -> n{N-1}``, nodes per second = N / run time;
* ``fan``: ``src -> w0..w{N-1} -> join`` (``all``), nodes per second = (N + 2) / run time.

Run time is from ``start_run`` to ``result()`` returning: one warm-up run, then ``--repeat``
timed runs; the median and min..max are reported. ``requests_per_node`` counts the workers'
requests during the timed runs (queue: receive, send, update, delete; Cosmos: read, create,
patch, replace, upsert, delete, query) divided by the nodes executed, by operation; the
client's own status reads are counted apart (``client_requests_per_run``). The Cosmos write
operations are what request units are charged for (a point read of a 1 KB item is 1 RU, a
write about 5-10 RU, more with the item's size); ``request_units`` is what the server
reported (0: the emulator reports none). ``raw_queue_hop_ms`` is the same Azurite without
Flowcraft: a chain of send -> receive -> delete hops, polled the same way (median and
min..max of ``--repeat`` chains of 50 hops). The emulators are single Node.js processes on the
same 2 cores as the workers: the absolute numbers say little about Azure; the request counts
do.
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
sys.path.insert(0, str(ROOT / "packages" / "flowcraft-azure" / "tests"))

from azure_support import AzureResources, make_resources  # noqa: E402
from bench_common import REGISTRY, chain_bp, fan_bp, summary  # noqa: E402
from flowcraft.testing.services import get_service  # noqa: E402
from flowcraft_azure import ApiStats, AzureAdapter  # noqa: E402


async def _timed_run(client: AzureAdapter, bp: str, expected: int) -> float:
    t0 = time.perf_counter()
    rid = await client.start_run(bp)
    res = await client.result(rid, timeout=900)
    dt = time.perf_counter() - t0
    if res.status != "completed":
        raise RuntimeError(f"{bp} ended {res.status}: {res.errors}")
    done = [k for k, v in res.node_statuses.items() if v == "completed"]
    if len(done) != expected:
        raise RuntimeError(f"{bp}: {len(done)} nodes completed, expected {expected}")
    return dt


def _per_node(calls: dict[str, int], nodes: int) -> dict[str, float]:
    return {
        "total": round(sum(calls.values()) / nodes, 2),
        **{k: round(v / nodes, 2) for k, v in sorted(calls.items())},
    }


async def measure(conn: str, cosmos_url: str, n: int, workers: int, repeat: int) -> dict[str, Any]:
    """Chain and fan timings and requests with ``workers`` in-process workers."""
    res: AzureResources = await make_resources(conn, cosmos_url)
    opts = {"registry": REGISTRY, "blueprints": [chain_bp(n), fan_bp(n)]}
    out: dict[str, Any] = {}
    try:
        ws = [
            res.adapter(
                runtime_options=opts,
                lease_seconds=30,
                visibility_timeout=30,
                poll_interval=(0.02, 2.0),
            )
            for _ in range(workers)
        ]
        client_stats = ApiStats()
        client = res.adapter(runtime_options=opts, stats=client_stats)
        tasks = [asyncio.create_task(w.start()) for w in ws]
        try:
            for bp, nodes in (("chain", n), ("fan", n + 2)):
                await _timed_run(client, bp, nodes)  # warm-up
                res.stats.calls.clear()
                res.stats.request_units = 0.0
                client_stats.calls.clear()
                times = [await _timed_run(client, bp, nodes) for _ in range(repeat)]
                out[bp] = {
                    "nodes": nodes,
                    "seconds": summary(times, 3),
                    "nodes_per_s": summary([nodes / t for t in times]),
                    "requests_per_node": _per_node(dict(res.stats.calls), nodes * repeat),
                    "request_units_per_node": round(res.stats.request_units / (nodes * repeat), 2),
                    "client_requests_per_run": round(client_stats.total_calls / repeat, 1),
                }
        finally:
            for w in ws:
                await w.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
        return out
    finally:
        await res.cleanup()


async def raw_queue_hop_ms(conn: str, cosmos_url: str, hops: int, repeat: int) -> dict[str, float]:
    """ms per send -> receive -> delete hop on the same Azurite, without Flowcraft, polled with
    the adapter's idle pause (0.02 s doubling to 2 s)."""
    res = await make_resources(conn, cosmos_url)
    try:
        results = []
        async with res.queue_client() as q:
            for _ in range(repeat + 1):
                t0 = time.perf_counter()
                await q.send_message("0")
                done, pause = 0, 0.02
                while done < hops:
                    got = [m async for m in q.receive_messages(max_messages=1)]
                    if not got:
                        await asyncio.sleep(pause)
                        pause = min(pause * 2, 2.0)
                        continue
                    pause = 0.02
                    for m in got:
                        await q.delete_message(m)
                        done += 1
                        if done < hops:
                            await q.send_message(str(done))
                results.append((time.perf_counter() - t0) / hops * 1000)
        return summary(results[1:], 2)
    finally:
        await res.cleanup()


async def main() -> None:
    """Run the benchmark and print (and optionally store) the JSON document, or print the
    README table of a stored one (``--markdown``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="20 nodes, one repeat")
    ap.add_argument("--out", type=Path, help="also write the JSON to this file")
    ap.add_argument("--markdown", type=Path, help="print the table of this stored JSON")
    args = ap.parse_args()
    if args.markdown:
        import tables  # benchmarks/tables.py, beside this script

        print(tables.render("azure", args.markdown))
        return
    n, repeat = (20, 1) if args.quick else (args.nodes, args.repeat)
    azurite, cosmos = get_service("azurite"), get_service("cosmos")
    doc: dict[str, Any] = {
        "benchmark": "flowcraft-azure on Azurite + a Cosmos server",
        "services": {"azurite": azurite.source, "cosmos": cosmos.source},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
        },
        "repeat": repeat,
    }
    for workers in (1, 2):
        doc[f"workers_{workers}"] = await measure(azurite.url, cosmos.url, n, workers, repeat)
    doc["raw_queue_hop_ms"] = await raw_queue_hop_ms(azurite.url, cosmos.url, 50, repeat)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
