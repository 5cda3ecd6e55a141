"""Routing semantics: actions, conditions and their scope, transforms, explicit inputs,
expression errors, plain failures, fallbacks and run status precedence."""

from __future__ import annotations

from typing import Any

import pytest
from flowcraft import BlueprintValidationError, FlowRuntime, NodeContext, create_flow
from helpers import ECHO, Recorder, run_flow

# -- actions -------------------------------------------------------------------------------------


async def test_action_selects_only_the_edges_carrying_it() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("decide", rec.node(7, action="yes"))
        .node("on_yes", rec.node(ECHO))
        .node("on_no", rec.node(ECHO))
        .edge("decide", "on_yes", action="yes")
        .edge("decide", "on_no", action="no")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert result.node_statuses == {
        "decide": "completed",
        "on_yes": "completed",
        "on_no": "skipped",
    }
    assert rec.order == ["decide", "on_yes"]
    assert rec.inputs("on_yes") == [7]
    assert result.outputs == {"decide": 7, "on_yes": 7}


async def test_unmatched_action_takes_the_default_route() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("decide", rec.node("x", action="maybe"))
        .node("on_yes", rec.node())
        .node("default", rec.node(ECHO))
        .edge("decide", "on_yes", action="yes")
        .edge("decide", "default")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert result.node_statuses == {
        "decide": "completed",
        "on_yes": "skipped",
        "default": "completed",
    }
    assert rec.order == ["decide", "default"]
    assert rec.inputs("default") == ["x"]


async def test_matched_action_does_not_also_take_the_default_route() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("decide", rec.node(action="yes"))
        .node("on_yes", rec.node())
        .node("default", rec.node())
        .edge("decide", "on_yes", action="yes")
        .edge("decide", "default")
    )
    result = await run_flow(flow)
    assert result.node_statuses == {
        "decide": "completed",
        "on_yes": "completed",
        "default": "skipped",
    }
    assert rec.order == ["decide", "on_yes"]


async def test_no_action_takes_only_edges_without_action() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("a", rec.node())
        .node("gated", rec.node())
        .node("plain", rec.node())
        .edge("a", "gated", action="go")
        .edge("a", "plain")
    )
    result = await run_flow(flow)
    assert result.node_statuses == {"a": "completed", "gated": "skipped", "plain": "completed"}
    assert rec.order == ["a", "plain"]


@pytest.mark.parametrize("action", ["maybe", None])
async def test_result_matching_no_edge_runs_nothing_and_skips_successors(
    action: str | None,
) -> None:
    # Upstream bug B1: both branches ran. Here nothing runs and everything behind is skipped.
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("decide", rec.node(action=action))
        .node("on_yes", rec.node())
        .node("on_no", rec.node())
        .node("after_yes", rec.node())
        .node("after_no", rec.node())
        .edge("decide", "on_yes", action="yes")
        .edge("decide", "on_no", action="no")
        .edge("on_yes", "after_yes")
        .edge("on_no", "after_no")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert result.node_statuses == {
        "decide": "completed",
        "on_yes": "skipped",
        "on_no": "skipped",
        "after_yes": "skipped",
        "after_no": "skipped",
    }
    assert rec.order == ["decide"]
    assert result.outputs == {"decide": "decide"}
    assert result.errors == []


# -- conditions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("score", "taken"), [(9, "high"), (5, "low"), (6, "low")])
async def test_mutually_exclusive_conditions(score: int, taken: str) -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("score", rec.node(score))
        .node("high", rec.node(ECHO))
        .node("low", rec.node(ECHO))
        .edge("score", "high", condition="result.output > 6")
        .edge("score", "low", condition="result.output <= 6")
    )
    result = await run_flow(flow)
    other = "low" if taken == "high" else "high"
    assert result.status == "completed"
    assert result.node_statuses == {"score": "completed", taken: "completed", other: "skipped"}
    assert rec.order == ["score", taken]
    assert rec.inputs(taken) == [score]


async def test_every_true_condition_is_taken() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("n", rec.node(10))
        .node("gt5", rec.node())
        .node("even", rec.node())
        .node("neg", rec.node())
        .node("always", rec.node())
        .edge("n", "gt5", condition="output > 5")
        .edge("n", "even", condition="output % 2 == 0")
        .edge("n", "neg", condition="output < 0")
        .edge("n", "always")
    )
    result = await run_flow(flow)
    assert result.node_statuses == {
        "n": "completed",
        "gt5": "completed",
        "even": "completed",
        "neg": "skipped",
        "always": "completed",
    }
    assert sorted(rec.order[1:]) == ["always", "even", "gt5"]


async def test_condition_combines_with_action() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("n", rec.node(3, action="go"))
        .node("big", rec.node())
        .node("small", rec.node())
        .node("other", rec.node())
        .edge("n", "big", action="go", condition="result.output >= 10")
        .edge("n", "small", action="go", condition="result.output < 10")
        .edge("n", "other", action="stop")
    )
    result = await run_flow(flow)
    assert result.node_statuses == {
        "n": "completed",
        "big": "skipped",
        "small": "completed",
        "other": "skipped",
    }


async def test_false_condition_on_default_route_runs_nothing() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("n", rec.node(1))
        .node("m", rec.node())
        .node("z", rec.node())
        .edge("n", "m", condition="output == 2")
        .edge("m", "z")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert result.node_statuses == {"n": "completed", "m": "skipped", "z": "skipped"}
    assert rec.order == ["n"]


@pytest.mark.parametrize(
    "condition",
    [
        "result.output.score > 5",
        "output.score > 5",
        "input.score > 5",
        "result.action == 'scored'",
        "threshold == 3",
        "context.flag == true",
        "context.threshold < result.output.score",
        "fetch-user.name == 'ann'",
        "fetch-user.age >= 30",
        "outputs['fetch-user'].name == 'ann'",
        'outputs["fetch-user"]["age"] == 30',
        "context['_outputs.fetch-user'].name == 'ann'",
        "extra.nested.value == 'deep'",
        "note == 'written by a node'",
    ],
)
async def test_condition_scope(condition: str) -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("fetch-user", rec.node({"name": "ann", "age": 30}))
        .node(
            "score", rec.node({"score": 8}, action="scored", context={"note": "written by a node"})
        )
        .node("target", rec.node(ECHO))
        .edge("fetch-user", "score")
        .edge("score", "target", action="scored", condition=condition)
    )
    initial = {"threshold": 3, "flag": True, "extra": {"nested": {"value": "deep"}}}
    result = await run_flow(flow, initial)
    assert result.status == "completed"
    assert result.node_statuses == {
        "fetch-user": "completed",
        "score": "completed",
        "target": "completed",
    }
    assert rec.inputs("target") == [{"score": 8}]


@pytest.mark.parametrize(
    "condition",
    [
        "result.output.score > 8",
        "threshold == 4",
        "context.flag == false",
        "fetch-user.name == 'bob'",
        "outputs['fetch-user'].age < 30",
        "missing_key == 1",
        "outputs['no-such-node'] == 1",
    ],
)
async def test_condition_scope_false(condition: str) -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("fetch-user", rec.node({"name": "ann", "age": 30}))
        .node("score", rec.node({"score": 8}))
        .node("target", rec.node())
        .edge("fetch-user", "score")
        .edge("score", "target", condition=condition)
    )
    result = await run_flow(flow, {"threshold": 3, "flag": True})
    assert result.status == "completed"
    assert result.node_statuses == {
        "fetch-user": "completed",
        "score": "completed",
        "target": "skipped",
    }
    assert rec.order == ["fetch-user", "score"]


async def test_node_output_shadows_context_key_of_same_name() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("val", rec.node(1))
        .node("t", rec.node())
        .edge("val", "t", condition="val == 1 and context.val == 'ctx'")
    )
    result = await run_flow(flow, {"val": "ctx"})
    assert result.node_statuses == {"val": "completed", "t": "completed"}


# -- transforms ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transform", "expected"),
    [
        ("result.output.n * 10", 20),
        ("output.n + 1", 3),
        ("input.n", 2),
        ("context.factor * output.n", 14),
        ("factor", 7),
        ("src.n - 2", 0),
        ("outputs['src']", {"n": 2}),
        ("{'value': output.n, 'tag': result.action}", {"value": 2, "tag": "go"}),
        ("[output.n, factor]", [2, 7]),
        ("None", None),
    ],
)
async def test_transform_value_becomes_successor_input(transform: str, expected: Any) -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("src", rec.node({"n": 2}, action="go"))
        .node("dst", rec.node(ECHO))
        .edge("src", "dst", action="go", transform=transform)
    )
    result = await run_flow(flow, {"factor": 7})
    assert result.status == "completed"
    assert rec.inputs("dst") == [expected]
    assert result.outputs["dst"] == expected
    # The transform changes only what is delivered, not the source's stored output.
    assert result.outputs["src"] == {"n": 2}


async def test_transform_applies_per_edge() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("src", rec.node(5))
        .node("double", rec.node(ECHO))
        .node("plain", rec.node(ECHO))
        .edge("src", "double", transform="output * 2")
        .edge("src", "plain")
    )
    await run_flow(flow)
    assert rec.inputs("double") == [10]
    assert rec.inputs("plain") == [5]


async def test_transform_of_untaken_edge_is_not_evaluated() -> None:
    # The transform would fail (attribute of an int); it must not run when the edge is not taken.
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("src", rec.node(5))
        .node("dst", rec.node())
        .edge("src", "dst", condition="output > 100", transform="output.oops")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert result.node_statuses == {"src": "completed", "dst": "skipped"}


# -- explicit inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ("fetch-user", {"profile": {"name": "ann", "tags": ["a", "b"]}}),
        ("fetch-user.profile.name", "ann"),
        ("fetch-user.profile.tags.1", "b"),
        ("fetch-user.profile.missing", None),
        ("_raw", "raw value"),
        ("plain", "plain value"),
        ("cfg.limit", 10),
        ("not_there", None),
        ("step", "step output"),
        (
            {"who": "fetch-user.profile.name", "raw": "_raw", "limit": "cfg.limit", "p": "plain"},
            {"who": "ann", "raw": "raw value", "limit": 10, "p": "plain value"},
        ),
    ],
)
async def test_explicit_inputs(inputs: str | dict[str, str], expected: Any) -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("fetch-user", rec.node({"profile": {"name": "ann", "tags": ["a", "b"]}}))
        .node("step", rec.node("step output"))
        .node("consumer", rec.node(ECHO), inputs=inputs)
        .edge("fetch-user", "step")
        .edge("step", "consumer")
    )
    initial = {"_raw": "raw value", "plain": "plain value", "cfg": {"limit": 10}}
    result = await run_flow(flow, initial)
    assert result.status == "completed"
    # Explicit inputs replace the value the edge delivered ("step output").
    assert rec.inputs("consumer") == [expected]
    assert result.outputs["consumer"] == expected


async def test_node_output_wins_over_context_key_in_inputs() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("data", rec.node("from node"))
        .node("consumer", rec.node(ECHO), inputs="data")
        .edge("data", "consumer")
    )
    await run_flow(flow, {"data": "from context"})
    assert rec.inputs("consumer") == ["from node"]


async def test_inputs_on_a_start_node_read_the_initial_context() -> None:
    rec = Recorder()
    flow = create_flow("f").node("first", rec.node(ECHO), inputs={"x": "a", "y": "b.c"})
    result = await run_flow(flow, {"a": 1, "b": {"c": 2}})
    assert rec.inputs("first") == [{"x": 1, "y": 2}]
    assert result.outputs == {"first": {"x": 1, "y": 2}}


# -- expression errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expression"),
    [("condition", "result.output.count > 1"), ("transform", "output.count")],
)
async def test_runtime_expression_error_fails_the_source_node(kind: str, expression: str) -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("src", rec.node(5))
        .node("dst", rec.node())
        .node("after", rec.node())
        .edge("src", "dst", **{kind: expression})
        .edge("dst", "after")
    )
    result = await run_flow(flow)
    assert result.status == "failed"
    assert result.node_statuses == {"src": "failed", "dst": "pending", "after": "pending"}
    assert rec.order == ["src"]
    assert len(result.errors) == 1
    err = result.errors[0]
    assert err.node_id == "src"
    assert err.name == "ExpressionError"
    assert "edge 'src' -> 'dst'" in err.message
    assert expression in err.message
    # Nothing is stored for a node whose routing failed.
    assert result.outputs == {}


async def test_runtime_expression_error_bypasses_the_fallback() -> None:
    # A routing error is a blueprint defect, not a node failure a fallback could repair.
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("src", rec.node(5), fallback="fb")
        .node("fb", rec.node())
        .node("dst", rec.node())
        .edge("src", "dst", condition="output.count > 1")
    )
    result = await run_flow(flow)
    assert result.status == "failed"
    assert result.node_statuses == {"src": "failed", "fb": "pending", "dst": "pending"}
    assert rec.order == ["src"]
    assert result.errors[0].node_id == "src"


@pytest.mark.parametrize(
    ("kind", "expression"),
    [("condition", "output >"), ("transform", "output +* 2"), ("condition", "x.__class__")],
)
async def test_bad_expression_is_rejected_at_run(kind: str, expression: str) -> None:
    rec = Recorder()
    flow = (
        create_flow("syntax")
        .node("src", rec.node())
        .node("dst", rec.node())
        .edge("src", "dst", **{kind: expression})
    )
    with pytest.raises(BlueprintValidationError) as info:
        await run_flow(flow)
    assert rec.calls == []
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"edge 'src' -> 'dst' {kind}:")
    assert repr(expression) in info.value.problems[0]


async def test_every_bad_expression_is_reported_at_once() -> None:
    rec = Recorder()
    flow = (
        create_flow("syntax")
        .node("a", rec.node())
        .node("b", rec.node())
        .node("c", rec.node())
        .edge("a", "b", condition="(")
        .edge("b", "c", transform="1 +")
    )
    with pytest.raises(BlueprintValidationError) as info:
        await run_flow(flow)
    assert [p.split(":")[0] for p in info.value.problems] == [
        "edge 'a' -> 'b' condition",
        "edge 'b' -> 'c' transform",
    ]


# -- failures ------------------------------------------------------------------------------------


async def test_failing_node_fails_the_run_and_later_nodes_stay_pending() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("a", rec.node())
        .node("b", rec.node(error=ValueError("bad value")))
        .node("c", rec.node())
        .node("d", rec.node())
        .edge("a", "b")
        .edge("b", "c")
        .edge("c", "d")
    )
    result = await run_flow(flow)
    assert result.status == "failed"
    assert result.node_statuses == {
        "a": "completed",
        "b": "failed",
        "c": "pending",
        "d": "pending",
    }
    assert rec.order == ["a", "b"]
    assert len(result.errors) == 1
    assert result.errors[0].node_id == "b"
    assert result.errors[0].message == "bad value"
    assert result.errors[0].name == "ValueError"
    assert result.error == result.errors[0]
    assert result.outputs == {"a": "a"}


async def test_failure_lets_running_siblings_finish_but_starts_nothing_new() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("start", rec.node())
        .node("boom", rec.node(error="boom"))
        .node("slow", rec.node(delay=0.02))
        .node("after_slow", rec.node())
        .edge("start", "boom")
        .edge("start", "slow")
        .edge("slow", "after_slow")
    )
    result = await run_flow(flow)
    assert result.status == "failed"
    assert result.node_statuses == {
        "start": "completed",
        "boom": "failed",
        "slow": "completed",
        "after_slow": "pending",
    }
    assert rec.count("after_slow") == 0
    assert [e.node_id for e in result.errors] == ["boom"]


# -- fallbacks and status precedence -------------------------------------------------------------


async def test_fallback_replaces_the_failing_node() -> None:
    rec = Recorder()

    def repair(ctx: NodeContext) -> Any:
        assert ctx.error is not None
        return {"repaired": ctx.input, "because": ctx.error.message}

    flow = (
        create_flow("f")
        .node("a", rec.node({"v": 1}))
        .node("b", rec.node(error=ValueError("b exploded")), fallback="fb")
        .node("fb", rec.node(repair))
        .node("c", rec.node(ECHO))
        .edge("a", "b")
        .edge("b", "c")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert result.errors == []
    assert result.node_statuses == {
        "a": "completed",
        "b": "recovered",
        "fb": "completed",
        "c": "completed",
    }
    assert rec.order == ["a", "b", "fb", "c"]
    fb_call = rec.calls[2]
    assert fb_call.input == {"v": 1}
    assert fb_call.error.message == "b exploded"
    assert fb_call.error.node_id == "b"
    assert fb_call.error.name == "ValueError"
    expected = {"repaired": {"v": 1}, "because": "b exploded"}
    assert rec.inputs("c") == [expected]
    assert result.outputs == {"a": {"v": 1}, "b": expected, "fb": expected, "c": expected}


async def test_fallback_output_follows_the_owners_action_edges() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("b", rec.node(error="nope"), fallback="fb")
        .node("fb", rec.node("safe", action="degraded"))
        .node("normal", rec.node())
        .node("degraded", rec.node(ECHO))
        .edge("b", "normal")
        .edge("b", "degraded", action="degraded")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert result.node_statuses == {
        "b": "recovered",
        "fb": "completed",
        "normal": "skipped",
        "degraded": "completed",
    }
    assert rec.inputs("degraded") == ["safe"]


async def test_failing_fallback_fails_the_run() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("b", rec.node(error="first"), fallback="fb")
        .node("fb", rec.node(error="second"))
        .node("c", rec.node())
        .edge("b", "c")
    )
    result = await run_flow(flow)
    assert result.status == "failed"
    assert result.node_statuses == {"b": "failed", "fb": "failed", "c": "pending"}
    assert rec.order == ["b", "fb"]
    assert [(e.node_id, e.message) for e in result.errors] == [("fb", "second")]
    assert result.outputs == {}


async def test_successful_fallback_does_not_hide_an_unrelated_failure() -> None:
    # Upstream bug B3: any successful fallback reported the whole run as completed.
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("start", rec.node())
        .node("x", rec.node(error="x failed"), fallback="fx")
        .node("fx", rec.node("x repaired"))
        .node("y", rec.node(error="y failed", delay=0.01))
        .edge("start", "x")
        .edge("start", "y")
    )
    result = await run_flow(flow)
    assert result.status == "failed"
    assert result.node_statuses == {
        "start": "completed",
        "x": "recovered",
        "fx": "completed",
        "y": "failed",
    }
    assert [(e.node_id, e.message) for e in result.errors] == [("y", "y failed")]


async def test_fallback_after_retries() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("b", rec.node(error="flaky"), max_retries=3, fallback="fb")
        .node("fb", rec.node("ok"))
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert [(c.node_id, c.attempt) for c in rec.calls] == [("b", 1), ("b", 2), ("b", 3), ("fb", 1)]
    assert result.node_statuses == {"b": "recovered", "fb": "completed"}


async def test_shared_fallback_runs_for_the_failing_owner_only() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("ok", rec.node(), fallback="fb")
        .node("bad", rec.node(error="bad"), fallback="fb")
        .node("fb", rec.node(lambda ctx: f"fixed {ctx.error.node_id}"))
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert result.node_statuses == {"ok": "completed", "bad": "recovered", "fb": "completed"}
    assert rec.count("fb") == 1
    assert result.outputs == {"ok": "ok", "bad": "fixed bad", "fb": "fixed bad"}


async def test_runtime_reuse_keeps_runs_independent() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("a", rec.node(lambda ctx: ctx.input, action="go"))
        .node("b", rec.node(ECHO))
        .edge("a", "b", action="go", condition="output == 1")
    )
    rt = FlowRuntime()
    bp = flow.to_blueprint()
    r1 = await rt.run(bp, registry=flow.registry, start_input=1)
    r2 = await rt.run(bp, registry=flow.registry, start_input=2)
    assert r1.node_statuses == {"a": "completed", "b": "completed"}
    assert r2.node_statuses == {"a": "completed", "b": "skipped"}
    assert r1.execution_id != r2.execution_id


async def test_owner_edge_conditions_see_the_fallback_output_by_owner_id() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("fetch-data", rec.node(error="down"), fallback="cache")
        .node("cache", rec.node({"stale": True}))
        .node("refresh", rec.node())
        .node("use", rec.node())
        .edge("fetch-data", "refresh", condition="fetch-data.stale == true")
        .edge("fetch-data", "use", condition="outputs['fetch-data'].stale == false")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert result.node_statuses == {
        "fetch-data": "recovered",
        "cache": "completed",
        "refresh": "completed",
        "use": "skipped",
    }
