"""What the adapter benchmarks share: trivial node functions with chain and fan blueprints,
median (min..max) summaries, and a pool of worker processes started with ``spawn``."""

from __future__ import annotations

import multiprocessing as mp
import statistics
from typing import Any

from flowcraft.nodes import NodeContext, NodeResult


async def step(ctx: NodeContext) -> NodeResult:
    """``input + 1`` (1 for a start node)."""
    return NodeResult((ctx.input or 0) + 1)


async def count(ctx: NodeContext) -> NodeResult:
    """How many predecessors a join heard from."""
    return NodeResult(len(ctx.input or {}))


REGISTRY = {"step": step, "join": count}
"""The implementations :func:`chain_bp` and :func:`fan_bp` use."""


def chain_bp(n: int) -> dict[str, Any]:
    """``n0 -> n1 -> ... -> n{n-1}``."""
    nodes = [{"id": f"n{i}", "uses": "step"} for i in range(n)]
    edges = [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(n - 1)]
    return {"id": "chain", "nodes": nodes, "edges": edges}


def fan_bp(n: int) -> dict[str, Any]:
    """``src -> w0..w{n-1} -> join``."""
    nodes = [{"id": "src", "uses": "step"}]
    nodes += [{"id": f"w{i}", "uses": "step"} for i in range(n)]
    nodes.append({"id": "join", "uses": "join", "config": {"joinStrategy": "all"}})
    edges = [{"source": "src", "target": f"w{i}"} for i in range(n)]
    edges += [{"source": f"w{i}", "target": "join"} for i in range(n)]
    return {"id": "fan", "nodes": nodes, "edges": edges}


def summary(values: list[float], digits: int = 1) -> dict[str, float]:
    """Median, min and max of ``values``."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


class Workers:
    """``count`` processes running ``target(*args, ready, stop)``: started and waited for on
    entry (each sets ``ready``), stopped on exit (``stop`` set; killed after 30 s)."""

    def __init__(self, target: Any, count: int, *args: Any) -> None:
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.ready = [ctx.Event() for _ in range(count)]
        self.procs = [ctx.Process(target=target, args=(*args, r, self.stop)) for r in self.ready]

    def __enter__(self) -> Workers:
        for p in self.procs:
            p.start()
        for r in self.ready:
            if not r.wait(60):
                raise RuntimeError("worker process did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(30)
            if p.is_alive():
                p.kill()
