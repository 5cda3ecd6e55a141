"""Building blocks for crash tests with real worker processes (SIGKILL), for any adapter.

A test spawns worker processes that import this module; they coordinate through files in a
directory named by ``FC_TEST_DIR`` and are configured through the environment:
``FC_KILL_IN_NODE`` (that node kills its process mid-execution, once) and
``FC_KILL_AT_POINT`` / ``FC_KILL_POINT_NODE`` (the process kills itself when that node reaches
that step point of :class:`~flowcraft.distributed.adapter.BaseDistributedAdapter`, once).

:data:`BLUEPRINT` is ``a -> b, c -> d -> e`` run by :func:`step`, which appends its id to a
context list: a node committed twice shows up twice (:func:`assert_exact`).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from ..blueprint import load_blueprint
from ..nodes import NodeContext, NodeResult

EXPECTED_OUTPUTS = {"a": 1, "b": 2, "c": 2, "d": 5, "e": 6}
"""The outputs of an undisturbed run of :data:`BLUEPRINT`."""


def _dir() -> Path:
    return Path(os.environ["FC_TEST_DIR"])


def first_time(name: str) -> bool:
    """True once per test across all processes (a marker file created atomically)."""
    try:
        fd = os.open(_dir() / f"once-{name}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _log(ctx: NodeContext, what: str) -> None:
    with open(_dir() / "executions.log", "a", encoding="utf-8") as f:
        f.write(f"{ctx.node_id} {what} {os.getpid()}\n")


async def step(ctx: NodeContext) -> NodeResult:
    """Appends its id to a list read from the context (a doubled commit would show twice),
    logs its start and end, and returns the sum of its inputs plus one."""
    _log(ctx, "start")
    if os.environ.get("FC_KILL_IN_NODE") == ctx.node_id and first_time("node"):
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
"""The registry of :data:`BLUEPRINT`."""

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
"""``a -> b, c -> d -> e``, every node :func:`step`."""


def install_kill_point() -> None:
    """In a worker process: SIGKILL the process when the node ``FC_KILL_POINT_NODE`` reaches
    the step point ``FC_KILL_AT_POINT`` (once per test); nothing when they are not set."""
    point = os.environ.get("FC_KILL_AT_POINT")
    node = os.environ.get("FC_KILL_POINT_NODE")
    if not point:
        return
    from ..distributed.adapter import BaseDistributedAdapter

    orig = BaseDistributedAdapter._fault

    async def fault(self: BaseDistributedAdapter, p: str, job: Any = None) -> None:
        if p == point and job is not None and job.node_id == node and first_time("pt"):
            os.kill(os.getpid(), signal.SIGKILL)
        await orig(self, p, job)

    BaseDistributedAdapter._fault = fault  # type: ignore[method-assign,assignment]


def executions(test_dir: Path) -> list[tuple[str, str]]:
    """``(node id, "start" | "end")`` of every node execution, in order."""
    lines = (test_dir / "executions.log").read_text().splitlines()
    return [(ln.split()[0], ln.split()[1]) for ln in lines]


def assert_exact(result: Any) -> None:
    """The run completed with the undisturbed outputs and every node committed exactly once."""
    assert result.status == "completed"
    assert result.node_statuses == dict.fromkeys("abcde", "completed")
    assert result.outputs == EXPECTED_OUTPUTS
    for n in "abcde":
        assert result.context[f"trail.{n}"] == [n]  # committed exactly once


__all__ = [
    "BLUEPRINT",
    "EXPECTED_OUTPUTS",
    "REGISTRY",
    "assert_exact",
    "executions",
    "first_time",
    "install_kill_point",
    "step",
]
