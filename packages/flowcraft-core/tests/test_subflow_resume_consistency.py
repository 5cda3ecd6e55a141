"""A subflow node ends the same way whether or not its child run awaited and was resumed in
between (found by the conformance suite's differential oracle, which compares in-memory runs
with distributed ones): the resume's action does not route the subflow node, a child failure
is reported with the same message, and the node's fallback gets the node's delivered input."""

from __future__ import annotations

from typing import Any

import pytest
from flowcraft import FlowRuntime, NodeContext, NodeResult
from flowcraft.runtime import WorkflowResult

SEEN: list[tuple[str, Any, str | None]] = []


async def seven(ctx: NodeContext) -> NodeResult:
    return NodeResult(7)


async def echo(ctx: NodeContext) -> NodeResult:
    return NodeResult(ctx.input)


async def boom(ctx: NodeContext) -> NodeResult:
    raise RuntimeError("child exploded")


async def fallback(ctx: NodeContext) -> NodeResult:
    SEEN.append((ctx.node_id, ctx.input, ctx.error.message if ctx.error else None))
    return NodeResult("recovered")


REGISTRY = {"seven": seven, "echo": echo, "boom": boom, "fallback": fallback}


def child(awaits: bool, tail: str) -> dict[str, Any]:
    """``child``: (``w``, a wait, when ``awaits``) then ``t`` using ``tail``."""
    nodes = [{"id": "t", "uses": tail}]
    edges = []
    if awaits:
        nodes.insert(0, {"id": "w", "uses": "wait"})
        edges.append({"source": "w", "target": "t"})
    return {"id": "child", "nodes": nodes, "edges": edges}


async def run_to_end(rt: FlowRuntime, bp: Any, **resume: Any) -> WorkflowResult:
    res = await rt.run(bp)
    if res.status == "awaiting":
        res = await rt.resume(bp, res, **resume)
    return res


@pytest.fixture(autouse=True)
def _clear_seen() -> None:
    SEEN.clear()


@pytest.mark.parametrize("awaits", [False, True])
async def test_resumed_subflow_routes_without_the_resume_action(awaits: bool) -> None:
    """The action given to ``resume`` routes the child's wait, not the parent's subflow
    node: its plain edge is taken and its ``yes`` edge is not, as when the child never
    awaited."""
    parent = {
        "id": "parent",
        "nodes": [
            {"id": "sub", "uses": "subflow", "params": {"blueprintId": "child"}},
            {"id": "on_yes", "uses": "echo"},
            {"id": "plain", "uses": "echo"},
        ],
        "edges": [
            {"source": "sub", "target": "on_yes", "action": "yes"},
            {"source": "sub", "target": "plain"},
        ],
    }
    rt = FlowRuntime(registry=REGISTRY, blueprints=[child(awaits, "seven")])
    res = await run_to_end(rt, parent, node_id="sub", output="ok", action="yes")
    assert res.status == "completed"
    assert res.node_statuses == {"sub": "completed", "on_yes": "skipped", "plain": "completed"}
    assert res.outputs == {"sub": 7, "plain": 7}


@pytest.mark.parametrize("awaits", [False, True])
async def test_failing_child_hands_the_node_input_to_its_fallback(awaits: bool) -> None:
    """A child that fails (at once, or after its wait was resumed) fails the subflow node
    with the message naming the child blueprint, and the node's fallback runs with the
    node's own input."""
    parent = {
        "id": "parent",
        "nodes": [
            {"id": "a", "uses": "seven"},
            {
                "id": "sub",
                "uses": "subflow",
                "params": {"blueprintId": "child"},
                "config": {"fallback": "fb"},
            },
            {"id": "fb", "uses": "fallback"},
        ],
        "edges": [{"source": "a", "target": "sub"}],
    }
    rt = FlowRuntime(registry=REGISTRY, blueprints=[child(awaits, "boom")])
    res = await run_to_end(rt, parent, node_id="sub", output="ok")
    assert res.status == "completed"
    assert res.node_statuses == {"a": "completed", "sub": "recovered", "fb": "completed"}
    assert SEEN == [("fb", 7, "subflow 'child' of node 'sub' ended failed: child exploded")]


async def test_a_child_start_node_keeps_its_start_input_for_its_fallback() -> None:
    """A subflow that is the start node of a child run gets the parent's input as its
    delivered input; when its own child awaits and then fails, its fallback still gets it."""
    middle = {
        "id": "middle",
        "nodes": [
            {
                "id": "m",
                "uses": "subflow",
                "params": {"blueprintId": "child"},
                "config": {"fallback": "m_fb"},
            },
            {"id": "m_fb", "uses": "fallback"},
        ],
        "edges": [],
    }
    parent = {
        "id": "parent",
        "nodes": [
            {"id": "a", "uses": "seven"},
            {"id": "sub", "uses": "subflow", "params": {"blueprintId": "middle"}},
        ],
        "edges": [{"source": "a", "target": "sub"}],
    }
    rt = FlowRuntime(registry=REGISTRY, blueprints=[child(True, "boom"), middle])
    res = await run_to_end(rt, parent, node_id="sub", output="ok")
    assert res.status == "completed"
    assert res.node_statuses == {"a": "completed", "sub": "completed"}
    assert SEEN == [("m_fb", 7, "subflow 'child' of node 'm' ended failed: child exploded")]
    assert res.outputs["sub"] == "recovered"
