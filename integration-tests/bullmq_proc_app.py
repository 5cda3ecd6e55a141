"""Worker-process side of the BullMQ SIGKILL tests (imported by spawned processes).

Configured through the environment: ``FC_TEST_DIR`` (execution log and once-markers),
``FC_KILL_IN_NODE`` (that node kills its process mid-execution, once), ``FC_KILL_AT_POINT`` and
``FC_KILL_POINT_NODE`` (the process kills itself when that node's job reaches that step point,
once).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from flowcraft import NodeContext, NodeResult, load_blueprint
from flowcraft.distributed.backends import run_worker


def _log(ctx: NodeContext, what: str) -> None:
    with open(Path(os.environ["FC_TEST_DIR"]) / "executions.log", "a", encoding="utf-8") as f:
        f.write(f"{ctx.node_id} {what} {os.getpid()}\n")


def _first_time(name: str) -> bool:
    """True once per test across all processes (marker file created atomically)."""
    p = Path(os.environ["FC_TEST_DIR"]) / f"once-{name}"
    try:
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


async def step(ctx: NodeContext) -> NodeResult:
    """Appends its id to a list read from the context: a doubled commit would show twice."""
    _log(ctx, "start")
    if os.environ.get("FC_KILL_IN_NODE") == ctx.node_id and _first_time("node"):
        await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    trail = list(await ctx.context.get(f"trail.{ctx.node_id}", []))
    trail.append(ctx.node_id)
    await ctx.context.set(f"trail.{ctx.node_id}", trail)
    _log(ctx, "end")
    inp = ctx.input
    total = sum(inp.values()) if isinstance(inp, dict) else (inp or 0)
    return NodeResult(output=total + 1)


REGISTRY: dict[str, Any] = {"step": step}

BLUEPRINT = load_blueprint(
    {
        "id": "killme",
        "nodes": [{"id": n, "uses": "step"} for n in ("a", "b", "c", "d", "e")],
        "edges": [
            {"source": "a", "target": "b"},
            {"source": "a", "target": "c"},
            {"source": "b", "target": "d"},
            {"source": "c", "target": "d"},
            {"source": "d", "target": "e"},
        ],
    }
)

ADAPTER_OPTIONS: dict[str, Any] = {
    "lease_seconds": 0.6,
    "lock_duration": 1.0,
    "stalled_interval": 0.5,
}
"""Short leases and locks so a killed worker's job is redelivered within about 2 s."""


def worker_main(url: str) -> None:
    """Entry point of a worker process: ``run_worker`` on the ``redis://`` backend URL (the
    entry point of flowcraft-bullmq), SIGKILLing itself at the configured step point. Writes
    ``ready-<pid>`` once SIGTERM means "stop gracefully"."""
    point = os.environ.get("FC_KILL_AT_POINT")
    node = os.environ.get("FC_KILL_POINT_NODE")
    if point:
        from flowcraft.distributed.adapter import BaseDistributedAdapter

        orig = BaseDistributedAdapter._fault

        async def fault(self: BaseDistributedAdapter, p: str, job: Any = None) -> None:
            if p == point and job is not None and job.node_id == node and _first_time("pt"):
                os.kill(os.getpid(), signal.SIGKILL)
            await orig(self, p, job)

        BaseDistributedAdapter._fault = fault  # type: ignore[method-assign]

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        (Path(os.environ["FC_TEST_DIR"]) / f"ready-{os.getpid()}").touch()
        await run_worker(
            url,
            registry=REGISTRY,
            blueprints=[BLUEPRINT],
            concurrency=4,
            stop=stop,
            **ADAPTER_OPTIONS,
        )

    asyncio.run(main())
