"""Delta persistence: bytes written to the run store per node, compared with writing the whole
context after every node (what a store without ``patch`` would have to do). Prints JSON.

    uv run python benchmarks/delta_bytes.py [--nodes 50] [--context-kb 100]

The workflow is a chain; the first node writes a large value, every later node writes one
small key. Measured on the in-memory backend, which stores exactly what a real backend would
(the same codec), and counts every byte it writes.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
from typing import Any

from flowcraft import NodeContext, NodeResult, load_blueprint
from flowcraft.distributed.memory import InMemoryAdapter, MemoryBroker
from flowcraft.distributed.statekeys import user_context


def _registry(big_kb: int) -> dict[str, Any]:
    async def big(ctx: NodeContext) -> NodeResult:
        await ctx.context.set("blob", "x" * (big_kb * 1024))
        return NodeResult(output="big")

    async def small(ctx: NodeContext) -> NodeResult:
        await ctx.context.set(f"note.{ctx.node_id}", ctx.node_id)
        return NodeResult(output=ctx.node_id)

    return {"big": big, "small": small}


async def measure(nodes: int, big_kb: int) -> dict[str, Any]:
    """Run the chain once and compare the bytes written with full-context writes."""
    ids = [f"n{i}" for i in range(nodes)]
    bp = load_blueprint(
        {
            "id": "delta",
            "nodes": [{"id": i, "uses": "big" if i == "n0" else "small"} for i in ids],
            "edges": [{"source": a, "target": b} for a, b in itertools.pairwise(ids)],
        }
    )
    broker = MemoryBroker()
    worker = InMemoryAdapter(
        broker, runtime_options={"registry": _registry(big_kb), "blueprints": [bp]}
    )
    task = asyncio.create_task(worker.start())
    run_id = await worker.start_run("delta", {})
    before = broker.bytes_written  # creation commit
    await worker.result(run_id, timeout=60)
    await worker.stop()
    await task
    delta_bytes = broker.bytes_written - before
    # What writing the whole user context after each node would cost: the context as it stood
    # after node k (computed from the final context, which only grows along the chain).
    final = user_context((await (await worker.create_context(run_id)).load()).data)
    full = 0
    for k in range(1, nodes + 1):
        partial = {
            key: v
            for key, v in final.items()
            if key == "blob" or any(key in (f"note.n{j}", f"_outputs.n{j}") for j in range(k))
        }
        full += len(json.dumps(partial, separators=(",", ":")))
    return {
        "nodes": nodes,
        "large_value_kb": big_kb,
        "delta_bytes_total": delta_bytes,
        "delta_bytes_per_node": round(delta_bytes / nodes, 1),
        "full_context_bytes_total": full,
        "full_context_bytes_per_node": round(full / nodes, 1),
        "reduction": round(1 - delta_bytes / full, 4),
        "commits": broker.commits,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the measurement as JSON."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--context-kb", type=int, default=100)
    a = p.parse_args(argv)
    print(json.dumps(asyncio.run(measure(a.nodes, a.context_kb)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
