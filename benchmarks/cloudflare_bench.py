"""Cloudflare adapter benchmark: Flowcraft nodes/s with Python workers on the companion Worker
(workerd through Miniflare, ``flowcraft.testing.services`` service ``cloudflare``) and the HTTP
requests each node costs. Prints one JSON document.

    uv run python benchmarks/cloudflare_bench.py [--repeat 5] [--quick]

Scenarios (every node a trivial ``input + 1``, the blueprints of ``bullmq_bench``):
``chain_200`` on 1 worker and ``fan_200`` (``src -> w0..w199 -> join``) on 2 workers, each as
shipped (``inline_successors`` default) and with every node a queue message
(``inline_successors=0``). Workers are adapters in this process (one HTTP client each,
concurrency 8), the Worker a local workerd: numbers measure the adapter and the Worker's
Durable Objects on this machine, not Cloudflare's edge (where every request is a network
round trip). Method: one warm-up run, then ``--repeat`` runs; medians with min..max. Requests
per node are counted in one more run, by route.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import summary
from bullmq_bench import REGISTRY, blueprints
from flowcraft.testing import services
from flowcraft_cloudflare import CloudflareAdapter, WorkerStats


async def scenario(
    url: str, secret: str, name: str, n: int, workers: int, inline: int | None, repeat: int
) -> dict[str, Any]:
    """Run ``name`` (chain or fan of ``n``) ``repeat`` + 2 times on ``workers`` workers."""
    ns = f"bench{uuid.uuid4().hex[:8]}"
    stats = WorkerStats()
    opts = {"registry": REGISTRY, "blueprints": blueprints(n)}
    kw: dict[str, Any] = {"url": url, "secret": secret, "namespace": ns, "stats": stats}
    wkw: dict[str, Any] = {} if inline is None else {"inline_successors": inline}
    ws = [
        CloudflareAdapter(
            **kw, concurrency=8, poll_interval=(0.002, 0.05), runtime_options=opts, **wkw
        )
        for _ in range(workers)
    ]
    client = CloudflareAdapter(**kw, runtime_options=opts)
    tasks = [asyncio.create_task(w.start()) for w in ws]
    nodes = n if name == "chain" else n + 2
    rates: list[float] = []
    try:
        for i in range(repeat + 1):
            t0 = time.perf_counter()
            res = await client.result(await client.start_run(name), 300)
            dt = time.perf_counter() - t0
            if res.status != "completed":
                raise RuntimeError(f"{name}: {res.status}")
            if i:
                rates.append(nodes / dt)
        stats.requests.clear()
        res = await client.result(await client.start_run(name), 300)
        reqs = dict(stats.requests)
    finally:
        for w in ws:
            await w.aclose()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()
    return {
        "nodes": nodes,
        "workers": workers,
        "inline_successors": "default" if inline is None else inline,
        "nodes_per_s": summary(rates),
        "http_requests_per_node": round(sum(reqs.values()) / nodes, 2),
        "http_requests_by_route_per_node": {
            k: round(v / nodes, 2) for k, v in sorted(reqs.items())
        },
    }


async def main() -> None:
    """Parse the arguments, run every scenario, print the JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="2 runs, size 50")
    a = p.parse_args()
    n, repeat = (50, 2) if a.quick else (200, a.repeat)
    svc = services.get_service("cloudflare")
    secret = services.CLOUDFLARE_TEST_SECRET
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "worker": f"workerd via Miniflare ({svc.source})",
        "results": {},
    }
    try:
        for name, workers in (("chain", 1), ("fan", 2)):
            for inline in (None, 0):
                key = f"{name}_{n}" + ("" if inline is None else "_every_node_a_message")
                out["results"][key] = await scenario(
                    svc.url, secret, name, n, workers, inline, repeat
                )
    finally:
        services.stop_all()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
