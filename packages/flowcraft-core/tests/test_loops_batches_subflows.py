"""Loops (builder and hand-written ``loop-controller``), batches (scatter/gather) and
subflows (including a ``wait`` inside the child, resumed through the parent)."""

from __future__ import annotations

from typing import Any

import pytest
from flowcraft import (
    FlowRuntime,
    NodeContext,
    NodeResult,
    WorkflowResult,
    create_flow,
    load_blueprint,
)
from flowcraft.blueprint import WorkflowBlueprint
from helpers import ECHO, Call, Recorder, run_flow

# -- loops ---------------------------------------------------------------------------------------


async def count_up(ctx: NodeContext) -> NodeResult:
    """Loop body: increments context ``count`` and ``n`` in its input; notes its iteration."""
    count = await ctx.context.get("count", 0)
    await ctx.context.set("count", count + 1)
    prev = ctx.input or {"n": 0, "seen": []}
    return NodeResult({"n": prev["n"] + 1, "seen": [*prev["seen"], ctx.iteration]})


async def run_counting_loop(
    condition: str, initial: dict[str, Any], max_iterations: int | None = None
) -> tuple[WorkflowResult, Recorder, list[tuple[Any, int]]]:
    """Run init -> body -> (loop lp over body) -> after; returns body (input, iteration)s."""
    rec = Recorder()
    body_calls: list[tuple[Any, int]] = []

    async def body(ctx: NodeContext) -> NodeResult:
        body_calls.append((ctx.input, ctx.iteration))
        return await count_up(ctx)

    flow = (
        create_flow("loop")
        .node("init", rec.node({"n": 0, "seen": []}))
        .node("body", body)
        .loop("lp", start="body", end="body", condition=condition, max_iterations=max_iterations)
        .node("after", rec.node(ECHO))
        .edge("init", "body")
        .edge("lp", "after")
    )
    result = await run_flow(flow, initial)
    return result, rec, body_calls


async def test_builder_loop_iterates_while_the_condition_holds() -> None:
    result, rec, body_calls = await run_counting_loop("count < 3", {"count": 0})
    assert result.status == "completed"
    assert result.node_statuses == {
        "init": "completed",
        "body": "completed",
        "lp": "completed",
        "after": "completed",
    }
    # Each iteration sees the previous iteration's output as input; ctx.iteration counts up.
    assert body_calls == [
        ({"n": 0, "seen": []}, 0),
        ({"n": 1, "seen": [0]}, 1),
        ({"n": 2, "seen": [0, 1]}, 2),
    ]
    assert result.context["count"] == 3
    # The post-loop node runs once, after the break, with the last output.
    assert rec.count("after") == 1
    assert rec.inputs("after") == [{"n": 3, "seen": [0, 1, 2]}]
    assert result.outputs["body"] == {"n": 3, "seen": [0, 1, 2]}
    assert result.state.nodes["body"].iteration == 2


@pytest.mark.parametrize(
    ("condition", "initial", "iterations"),
    [
        ("count < 5", {"count": 0}, 5),
        ("count < limit", {"count": 0, "limit": 2}, 2),
        ("context.count < context.limit", {"count": 0, "limit": 4}, 4),
        ("output.n < 3", {}, 3),
        ("input.n < 2 && !stop", {"stop": False}, 2),
        ("body.n < 4", {}, 4),
        ("outputs['body'].n != 2", {}, 2),
        ("false", {}, 1),
        ("count < 3", {"count": 10}, 1),
    ],
)
async def test_loop_conditions_with_the_default_evaluator(
    condition: str, initial: dict[str, Any], iterations: int
) -> None:
    result, rec, body_calls = await run_counting_loop(condition, initial)
    assert result.status == "completed"
    assert len(body_calls) == iterations
    assert [it for _, it in body_calls] == list(range(iterations))
    assert rec.count("after") == 1
    assert rec.inputs("after")[0]["n"] == iterations


async def test_loop_exceeding_max_iterations_fails_the_run() -> None:
    result, rec, body_calls = await run_counting_loop("true", {}, max_iterations=3)
    assert result.status == "failed"
    assert len(body_calls) == 3
    assert result.node_statuses == {
        "init": "completed",
        "body": "completed",
        "lp": "failed",
        "after": "pending",
    }
    assert rec.count("after") == 0
    assert len(result.errors) == 1
    err = result.errors[0]
    assert err.node_id == "lp"
    assert err.message == "loop 'lp' reached maxIterations=3"
    assert err.name == "LoopLimitExceededError"


async def test_loop_ending_exactly_at_max_iterations_completes() -> None:
    result, _, body_calls = await run_counting_loop("count < 3", {"count": 0}, max_iterations=3)
    assert result.status == "completed"
    assert len(body_calls) == 3


async def test_loop_condition_error_fails_the_controller() -> None:
    result, _, body_calls = await run_counting_loop("count.x > 1", {"count": 0})
    assert result.status == "failed"
    assert len(body_calls) == 1
    assert result.node_statuses["lp"] == "failed"
    assert result.errors[0].node_id == "lp"
    assert "loop 'lp'" in result.errors[0].message


async def test_multi_node_loop_body() -> None:
    rec = Recorder()
    flow = (
        create_flow("multi")
        .node("first", rec.node(lambda ctx: (ctx.input or 0) + 1))
        .node("second", rec.node(lambda ctx: ctx.input * 10))
        .node("after", rec.node(ECHO))
        .edge("first", "second")
        .loop("lp", start="first", end="second", condition="output < 1000")
        .edge("lp", "after")
        .set_cycle_entry_point("first")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    # first: None->1, second: 10; first: 11, second: 110; first: 111, second: 1110 -> break
    assert [(c.node_id, c.input, c.iteration) for c in rec.calls] == [
        ("first", None, 0),
        ("second", 1, 0),
        ("first", 10, 1),
        ("second", 11, 1),
        ("first", 110, 2),
        ("second", 111, 2),
        ("after", 1110, 0),
    ]


def hand_written_loop(condition: str, max_iterations: int | None = None) -> WorkflowBlueprint:
    params: dict[str, Any] = {"condition": condition}
    if max_iterations is not None:
        params["maxIterations"] = max_iterations
    return load_blueprint(
        {
            "id": "json-loop",
            "nodes": [
                {"id": "start", "uses": "start"},
                {"id": "inc", "uses": "inc"},
                {"id": "ctrl", "uses": "loop-controller", "params": params},
                {"id": "done", "uses": "done"},
            ],
            "edges": [
                {"source": "start", "target": "inc"},
                {"source": "inc", "target": "ctrl"},
                {"source": "ctrl", "target": "inc", "action": "continue"},
                {"source": "ctrl", "target": "done", "action": "break"},
            ],
        }
    )


async def test_hand_written_loop_controller() -> None:
    rec = Recorder()

    async def inc(ctx: NodeContext) -> NodeResult:
        rec.calls.append(Call("inc", ctx.input, ctx.iteration, ctx.attempt))
        await ctx.context.set("total", await ctx.context.get("total", 0) + ctx.input)
        return NodeResult(ctx.input + 1)

    registry = {"start": rec.node(1), "inc": inc, "done": rec.node(ECHO)}
    result = await FlowRuntime().run(hand_written_loop("total < 10"), registry=registry)
    assert result.status == "completed"
    assert result.node_statuses == {
        "start": "completed",
        "inc": "completed",
        "ctrl": "completed",
        "done": "completed",
    }
    # totals: 1, 3, 6, 10 -> stop
    assert [(c.node_id, c.input, c.iteration) for c in rec.calls] == [
        ("start", None, 0),
        ("inc", 1, 0),
        ("inc", 2, 1),
        ("inc", 3, 2),
        ("inc", 4, 3),
        ("done", 5, 0),
    ]
    assert result.context["total"] == 10
    assert result.state.nodes["ctrl"].action == "break"


async def test_hand_written_loop_max_iterations() -> None:
    rec = Recorder()
    registry = {"start": rec.node(0), "inc": rec.node(lambda c: c.input + 1), "done": rec.node()}
    result = await FlowRuntime().run(hand_written_loop("output >= 0", 5), registry=registry)
    assert result.status == "failed"
    assert rec.count("inc") == 5
    assert rec.count("done") == 0
    assert result.node_statuses["ctrl"] == "failed"
    assert result.errors[0].message == "loop 'ctrl' reached maxIterations=5"


async def test_loop_with_nothing_after_it() -> None:
    rec = Recorder()
    flow = (
        create_flow("bare")
        .node("seed", rec.node(0))
        .node("step", rec.node(lambda c: c.input + 2))
        .edge("seed", "step")
        .loop("lp", start="step", end="step", condition="output < 6")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert rec.inputs("step") == [0, 2, 4]
    assert result.outputs["lp"] == 6


# -- batches -------------------------------------------------------------------------------------


def batch_flow(worker: Any, **kw: Any) -> Any:
    rec = Recorder()
    flow = (
        create_flow("batch")
        .node("load", rec.node(lambda ctx: ctx.input), inputs="items")
        .batch("b", worker, input_key="load", **kw)
        .node("after", rec.node(ECHO))
        .edge("load", "b")
        .edge("b", "after")
    )
    return flow, rec


async def test_batch_keeps_order_and_none_results() -> None:
    rec = Recorder()
    delays = {0: 0.03, 1: 0.02, 2: 0.01, 3: 0.0}  # later items finish first
    worker = rec.node(
        lambda ctx: None if ctx.input % 2 else ctx.input * 10,
        delay=lambda ctx: delays[ctx.input],
    )
    flow, outer = batch_flow(worker)
    result = await run_flow(flow, {"items": [0, 1, 2, 3]})
    assert result.status == "completed"
    assert rec.order == ["b_scatter[0]", "b_scatter[1]", "b_scatter[2]", "b_scatter[3]"]
    assert rec.finished() == ["b_scatter[3]", "b_scatter[2]", "b_scatter[1]", "b_scatter[0]"]
    assert result.outputs["b_gather"] == [0, None, 20, None]
    assert result.context["b_gather"] == [0, None, 20, None]
    assert outer.inputs("after") == [[0, None, 20, None]]
    assert result.node_statuses == {
        "load": "completed",
        "b_scatter": "completed",
        "b_gather": "completed",
        "after": "completed",
    }


async def test_batch_items_are_the_worker_inputs() -> None:
    rec = Recorder()
    flow, _ = batch_flow(rec.node(lambda ctx: ctx.input.upper()))
    result = await run_flow(flow, {"items": ["a", "b", "c"]})
    assert sorted((c.node_id, c.input) for c in rec.calls) == [
        ("b_scatter[0]", "a"),
        ("b_scatter[1]", "b"),
        ("b_scatter[2]", "c"),
    ]
    assert result.outputs["b_gather"] == ["A", "B", "C"]


async def test_empty_batch_completes_with_empty_list() -> None:
    rec = Recorder()
    flow, outer = batch_flow(rec.node())
    result = await run_flow(flow, {"items": []})
    assert result.status == "completed"
    assert rec.calls == []
    assert result.outputs["b_gather"] == []
    assert outer.inputs("after") == [[]]


@pytest.mark.parametrize(("items", "type_name"), [(5, "int"), ("abc", "str"), (None, "NoneType")])
async def test_batch_of_a_non_list_fails(items: Any, type_name: str) -> None:
    rec = Recorder()
    flow, outer = batch_flow(rec.node())
    result = await run_flow(flow, {"items": items})
    assert result.status == "failed"
    assert rec.calls == []
    assert outer.order == ["load"]
    assert result.node_statuses == {
        "load": "completed",
        "b_scatter": "failed",
        "b_gather": "pending",
        "after": "pending",
    }
    assert result.errors[0].node_id == "b_scatter"
    assert result.errors[0].message == (
        f"batch node 'b_scatter' needs a list input, got {type_name}"
    )


@pytest.mark.parametrize(("chunk", "expected_max"), [(1, 1), (2, 2), (3, 3), (10, 7)])
async def test_batch_chunk_size_limits_items_in_flight(chunk: int, expected_max: int) -> None:
    rec = Recorder()
    flow, _ = batch_flow(rec.node(lambda ctx: ctx.input * 2, yields=3), chunk_size=chunk)
    result = await run_flow(flow, {"items": list(range(7))})
    assert result.status == "completed"
    assert rec.max_active == expected_max
    assert len(rec.calls) == 7
    assert result.outputs["b_gather"] == [0, 2, 4, 6, 8, 10, 12]


async def test_batch_chunks_release_items_in_order() -> None:
    rec = Recorder()
    flow, _ = batch_flow(rec.node(ECHO, yields=1), chunk_size=2)
    await run_flow(flow, {"items": list(range(5))})
    assert [c.input for c in rec.calls] == [0, 1, 2, 3, 4]


def flaky_worker(rec: Recorder) -> Any:
    def output(ctx: NodeContext) -> Any:
        if ctx.input == "bad":
            raise ValueError(f"cannot handle {ctx.input}")
        return ctx.input.upper()

    return rec.node(output)


async def test_batch_item_error_fail() -> None:
    rec = Recorder()
    flow, outer = batch_flow(flaky_worker(rec), on_item_error="fail", chunk_size=1)
    result = await run_flow(flow, {"items": ["a", "bad", "c"]})
    assert result.status == "failed"
    assert result.node_statuses == {
        "load": "completed",
        "b_scatter": "failed",
        "b_gather": "pending",
        "after": "pending",
    }
    # chunk_size=1: nothing after the failing item is started.
    assert [c.input for c in rec.calls] == ["a", "bad"]
    assert len(result.errors) == 1
    assert result.errors[0].node_id == "b_scatter"
    assert result.errors[0].message == "batch item 1 failed: cannot handle bad"
    assert outer.count("after") == 0


async def test_batch_item_error_skip() -> None:
    rec = Recorder()
    flow, outer = batch_flow(flaky_worker(rec), on_item_error="skip")
    result = await run_flow(flow, {"items": ["a", "bad", "c", "bad"]})
    assert result.status == "completed"
    assert result.errors == []
    assert result.outputs["b_gather"] == ["A", None, "C", None]
    assert outer.inputs("after") == [["A", None, "C", None]]


async def test_batch_item_error_collect() -> None:
    rec = Recorder()
    flow, _ = batch_flow(flaky_worker(rec), on_item_error="collect")
    result = await run_flow(flow, {"items": ["a", "bad", "c"]})
    assert result.status == "completed"
    assert result.errors == []
    out = result.outputs["b_gather"]
    assert out[0] == "A"
    assert out[2] == "C"
    record = out[1]
    assert isinstance(record, dict)
    assert record["message"] == "cannot handle bad"
    assert record["name"] == "ValueError"
    assert record["nodeId"] == "b_scatter[1]"


@pytest.mark.parametrize(("max_retries", "expected_second"), [(1, "error"), (2, 2)])
async def test_batch_items_use_the_scatter_nodes_retry_policy(
    max_retries: int, expected_second: Any
) -> None:
    attempts: dict[int, list[int]] = {}

    async def transient(ctx: NodeContext) -> NodeResult:
        attempts.setdefault(ctx.input, []).append(ctx.attempt)
        if ctx.input == 2 and ctx.attempt < 2:
            raise RuntimeError("transient")
        return NodeResult(ctx.input)

    blueprint = load_blueprint(
        {
            "id": "json-batch",
            "nodes": [
                {
                    "id": "scatter",
                    "uses": "batch-scatter",
                    "inputs": "numbers",
                    "params": {
                        "workerUsesKey": "transient",
                        "gatherNodeId": "gather",
                        "onItemError": "collect",
                    },
                    "config": {"maxRetries": max_retries},
                },
                {"id": "gather", "uses": "batch-gather", "params": {"outputKey": "out"}},
            ],
            "edges": [{"source": "scatter", "target": "gather"}],
        }
    )
    result = await FlowRuntime(registry={"transient": transient}).run(
        blueprint, {"numbers": [1, 2, 3]}
    )
    assert result.status == "completed"
    assert attempts == {1: [1], 2: list(range(1, max_retries + 1)), 3: [1]}
    out = result.context["out"]
    assert out[0] == 1
    assert out[2] == 3
    if expected_second == "error":
        assert out[1]["message"] == "transient"
        assert out[1]["nodeId"] == "scatter[1]"
    else:
        assert out[1] == expected_second


async def test_batch_output_key() -> None:
    rec = Recorder()
    flow, outer = batch_flow(rec.node(lambda ctx: ctx.input + 1), output_key="results")
    result = await run_flow(flow, {"items": [1, 2]})
    assert result.status == "completed"
    assert result.context["results"] == [2, 3]
    assert "b_gather" not in result.context
    assert result.outputs["b_gather"] == [2, 3]
    assert outer.inputs("after") == [[2, 3]]


async def test_batch_reads_a_plain_context_key() -> None:
    rec = Recorder()
    flow = create_flow("ctx-batch").batch("b", rec.node(lambda c: -c.input), input_key="nums")
    result = await run_flow(flow, {"nums": [1, 2, 3]})
    assert result.status == "completed"
    assert result.node_statuses == {"b_scatter": "completed", "b_gather": "completed"}
    assert result.context["b_gather"] == [-1, -2, -3]


# -- subflows ------------------------------------------------------------------------------------


async def double(ctx: NodeContext) -> NodeResult:
    """Doubles its input."""
    return NodeResult(ctx.input * 2)


async def plus_one(ctx: NodeContext) -> NodeResult:
    """Adds one to its input."""
    return NodeResult(ctx.input + 1)


async def boom(ctx: NodeContext) -> NodeResult:
    """Always fails."""
    raise RuntimeError("child exploded")


async def read_value(ctx: NodeContext) -> NodeResult:
    """Reads context ``value`` and ``factor``; stores ``child_note``."""
    value = await ctx.context.get("value")
    await ctx.context.set("child_note", f"saw {value}")
    return NodeResult(value * (await ctx.context.get("factor", 1)))


async def echo(ctx: NodeContext) -> NodeResult:
    """Returns its input."""
    return NodeResult(ctx.input)


REGISTRY: dict[str, Any] = {
    "double": double,
    "plus_one": plus_one,
    "boom": boom,
    "read_value": read_value,
    "echo": echo,
}


def bp(bp_id: str, nodes: list[tuple[str, str]], edges: list[tuple[str, str]]) -> Any:
    """A blueprint from (id, uses) pairs and (source, target) pairs."""
    return load_blueprint(
        {
            "id": bp_id,
            "nodes": [{"id": i, "uses": u} for i, u in nodes],
            "edges": [{"source": s, "target": t} for s, t in edges],
        }
    )


def parent_bp(sub_params: dict[str, Any]) -> Any:
    """start (plus_one) -> sub (``uses: "subflow"`` with ``sub_params``) -> after (echo)."""
    return load_blueprint(
        {
            "id": "parent",
            "nodes": [
                {"id": "start", "uses": "plus_one"},
                {"id": "sub", "uses": "subflow", "params": sub_params},
                {"id": "after", "uses": "echo"},
            ],
            "edges": [{"source": "start", "target": "sub"}, {"source": "sub", "target": "after"}],
        }
    )


async def test_subflow_output_of_a_single_terminal() -> None:
    child = bp("child", [("d", "double"), ("p", "plus_one")], [("d", "p")])
    rt = FlowRuntime(registry=REGISTRY, blueprints=[child])
    result = await rt.run(parent_bp({"blueprintId": "child"}), start_input=4)
    assert result.status == "completed"
    assert result.node_statuses == {"start": "completed", "sub": "completed", "after": "completed"}
    # start: 4+1=5; child: d=10, p=11
    assert result.outputs == {"start": 5, "sub": 11, "after": 11}


async def test_subflow_output_of_several_terminals_is_a_dict() -> None:
    child = bp(
        "child",
        [("d", "double"), ("t1", "plus_one"), ("t2", "double")],
        [("d", "t1"), ("d", "t2")],
    )
    rt = FlowRuntime(registry=REGISTRY, blueprints=[child])
    result = await rt.run(parent_bp({"blueprintId": "child"}), start_input=1)
    assert result.status == "completed"
    # start: 2; d: 4; t1: 5; t2: 8
    assert result.outputs["sub"] == {"t1": 5, "t2": 8}
    assert result.outputs["after"] == {"t1": 5, "t2": 8}


async def test_subflow_inputs_and_outputs_mapping() -> None:
    child = bp("child", [("r", "read_value"), ("d", "double")], [("r", "d")])
    rt = FlowRuntime(registry=REGISTRY, blueprints=[child])
    params = {
        "blueprintId": "child",
        "inputs": {"value": "start", "factor": "mult"},
        "outputs": {"answer": "d", "note": "child_note", "first": "r"},
    }
    result = await rt.run(parent_bp(params), {"mult": 3}, start_input=1)
    assert result.status == "completed"
    # start: 2; child r: value 2 * factor 3 = 6; d: 12
    expected = {"answer": 12, "note": "saw 2", "first": 6}
    assert result.outputs["sub"] == expected
    assert result.outputs["after"] == expected
    assert result.context["answer"] == 12
    assert result.context["note"] == "saw 2"
    # Child context does not leak into the parent beyond the mapped outputs.
    assert "child_note" not in result.context
    assert "_outputs.r" not in result.context


async def test_subflow_child_failure_fails_the_parent_node() -> None:
    child = bp("child", [("d", "double"), ("x", "boom")], [("d", "x")])
    rt = FlowRuntime(registry=REGISTRY, blueprints=[child])
    result = await rt.run(parent_bp({"blueprintId": "child"}), start_input=1)
    assert result.status == "failed"
    assert result.node_statuses == {"start": "completed", "sub": "failed", "after": "pending"}
    assert len(result.errors) == 1
    assert result.errors[0].node_id == "sub"
    assert result.errors[0].message == (
        "subflow 'child' of node 'sub' ended failed: child exploded"
    )


async def test_subflow_unknown_blueprint_fails() -> None:
    rt = FlowRuntime(registry=REGISTRY)
    result = await rt.run(parent_bp({"blueprintId": "nope"}), start_input=1)
    assert result.status == "failed"
    assert result.node_statuses == {"start": "completed", "sub": "failed", "after": "pending"}
    assert result.errors[0].node_id == "sub"
    assert result.errors[0].message == "subflow node 'sub': unknown blueprint 'nope'"


async def test_subflow_missing_blueprint_id_fails() -> None:
    rt = FlowRuntime(registry=REGISTRY)
    result = await rt.run(parent_bp({}), start_input=1)
    assert result.status == "failed"
    assert result.errors[0].message == "subflow node 'sub' needs params.blueprintId"


async def test_builder_subflow() -> None:
    child = bp("kid", [("d", "double")], [])
    rec = Recorder()
    flow = (
        create_flow("p")
        .node("a", rec.node(21))
        .subflow("s", "kid")
        .node("z", rec.node(ECHO))
        .edge("a", "s")
        .edge("s", "z")
    )
    rt = FlowRuntime(registry=REGISTRY, blueprints=[child])
    result = await run_flow(flow, runtime=rt)
    assert result.status == "completed"
    assert rec.inputs("z") == [42]


def waiting_child() -> Any:
    return bp(
        "child", [("d", "double"), ("w", "wait"), ("p", "plus_one")], [("d", "w"), ("w", "p")]
    )


@pytest.mark.parametrize("as_text", [False, True])
async def test_wait_inside_subflow_pauses_and_resumes_the_parent(as_text: bool) -> None:
    # Upstream bug B9: a declarative `uses: "subflow"` node was resumed like a wait.
    rt = FlowRuntime(registry=REGISTRY, blueprints=[waiting_child()])
    parent = parent_bp({"blueprintId": "child"})
    paused = await rt.run(parent, start_input=1)
    assert paused.status == "awaiting"
    assert paused.node_statuses == {"start": "completed", "sub": "awaiting", "after": "pending"}
    assert list(paused.awaiting) == ["sub"]
    details = paused.awaiting["sub"]
    assert details["reason"] == "subflow"
    assert details["blueprintId"] == "child"
    assert details["child"]["status"] == "awaiting"
    assert details["child"]["nodeStatuses"] == {
        "d": "completed",
        "w": "awaiting",
        "p": "pending",
    }

    state: Any = paused.serialize() if as_text else paused
    done = await rt.resume(parent, state, "sub", output=100)
    assert done.status == "completed"
    assert done.execution_id == paused.execution_id
    assert done.node_statuses == {"start": "completed", "sub": "completed", "after": "completed"}
    # The child continued past its wait: p = 100 + 1, which is the child's terminal output.
    assert done.outputs == {"start": 2, "sub": 101, "after": 101}
    assert done.awaiting == {}


async def test_subflow_with_two_waits_needs_two_resumes() -> None:
    child = bp(
        "child",
        [("w1", "wait"), ("w2", "wait"), ("p", "plus_one")],
        [("w1", "w2"), ("w2", "p")],
    )
    rt = FlowRuntime(registry=REGISTRY, blueprints=[child])
    parent = parent_bp({"blueprintId": "child"})
    r1 = await rt.run(parent, start_input=1)
    assert r1.status == "awaiting"
    r2 = await rt.resume(parent, r1, "sub", output=5)
    assert r2.status == "awaiting"
    assert r2.node_statuses["sub"] == "awaiting"
    assert r2.awaiting["sub"]["child"]["nodeStatuses"] == {
        "w1": "completed",
        "w2": "awaiting",
        "p": "pending",
    }
    r3 = await rt.resume(parent, r2, "sub", output=7)
    assert r3.status == "completed"
    assert r3.outputs["sub"] == 8
    assert r3.outputs["after"] == 8


async def test_subflow_failing_after_resume_fails_the_parent() -> None:
    child = bp("child", [("w", "wait"), ("x", "boom")], [("w", "x")])
    rt = FlowRuntime(registry=REGISTRY, blueprints=[child])
    parent = parent_bp({"blueprintId": "child"})
    r1 = await rt.run(parent, start_input=1)
    assert r1.status == "awaiting"
    r2 = await rt.resume(parent, r1, "sub", output=1)
    assert r2.status == "failed"
    assert r2.node_statuses == {"start": "completed", "sub": "failed", "after": "pending"}
    assert r2.errors[0].node_id == "sub"
    assert "child exploded" in r2.errors[0].message


async def test_subflow_resume_applies_the_outputs_mapping() -> None:
    rt = FlowRuntime(registry=REGISTRY, blueprints=[waiting_child()])
    parent = parent_bp({"blueprintId": "child", "outputs": {"final": "p", "doubled": "d"}})
    r1 = await rt.run(parent, start_input=3)
    r2 = await rt.resume(parent, r1, "sub", output=9)
    assert r2.status == "completed"
    # start: 4; d: 8; wait resumed with 9; p: 10
    assert r2.outputs["sub"] == {"final": 10, "doubled": 8}
    assert r2.context["final"] == 10
    assert r2.context["doubled"] == 8
