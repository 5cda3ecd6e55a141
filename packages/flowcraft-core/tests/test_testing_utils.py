"""Tests for flowcraft.testing: EventRecorder, run_with_trace and Stepper."""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import pytest
from flowcraft import (
    BlueprintValidationError,
    FatalNodeError,
    Flow,
    FlowcraftEvent,
    FlowRuntime,
    ListenerBus,
    Middleware,
    NodeContext,
    NodeResult,
    ResumeError,
    WorkflowResult,
    create_flow,
    load_blueprint,
)
from flowcraft.testing import (
    EventRecorder,
    Step,
    Stepper,
    TracedResult,
    format_event,
    format_events,
    run_with_trace,
)

CALLS: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


async def one(ctx: NodeContext) -> NodeResult:
    CALLS[ctx.node_id] += 1
    return NodeResult(1)


async def plus_ten(ctx: NodeContext) -> NodeResult:
    CALLS[ctx.node_id] += 1
    await ctx.context.set(f"seen_{ctx.node_id}", ctx.input)
    return NodeResult(ctx.input + 10)


async def merge(ctx: NodeContext) -> NodeResult:
    CALLS[ctx.node_id] += 1
    return NodeResult(sorted(ctx.input.items()))


async def boom(ctx: NodeContext) -> Any:
    CALLS[ctx.node_id] += 1
    raise FatalNodeError("kaboom")


async def boom_soft(ctx: NodeContext) -> Any:
    """Fails without being fatal, so a configured fallback takes over."""
    CALLS[ctx.node_id] += 1
    raise RuntimeError("kaboom")


async def rescue(ctx: NodeContext) -> NodeResult:
    CALLS[ctx.node_id] += 1
    assert ctx.error is not None
    return NodeResult(f"rescued: {ctx.error.message}")


async def count(ctx: NodeContext) -> NodeResult:
    n = await ctx.context.get("count", 0)
    await ctx.context.set("count", n + 1)
    return NodeResult(n + 1)


async def times_ten(ctx: NodeContext) -> NodeResult:
    return NodeResult(ctx.input * 10)


async def uses_dep(ctx: NodeContext) -> NodeResult:
    return NodeResult(ctx.dependencies["base"] + 1)


def linear() -> Flow:
    return (
        create_flow("linear")
        .node("a", one, uses="one")
        .node("b", plus_ten, uses="plus_ten")
        .node("c", plus_ten, uses="plus_ten")
        .edge("a", "b")
        .edge("b", "c")
    )


def fan() -> Flow:
    return (
        create_flow("fan")
        .node("a", one, uses="one")
        .node("b", plus_ten, uses="plus_ten")
        .node("c", plus_ten, uses="plus_ten")
        .node("d", merge, uses="merge")
        .edge("a", "b")
        .edge("a", "c")
        .edge("b", "d")
        .edge("c", "d")
    )


def failing(fallback: bool = False) -> Flow:
    f = create_flow("failing").node("a", one, uses="one")
    if fallback:
        f.node("x", boom_soft, uses="boom_soft", fallback="f")
    else:
        f.node("x", boom, uses="boom")
    if fallback:
        f.node("f", rescue, uses="rescue")
    return f.node("b", plus_ten, uses="plus_ten").edge("a", "x").edge("x", "b")


def looping() -> Flow:
    return (
        create_flow("looping")
        .node("start", one, uses="one")
        .node("inc", count, uses="count")
        .node("after", one, uses="one")
        .loop("l", start="inc", end="inc", condition="count < 3")
        .edge("start", "inc")
        .edge("l", "after")
    )


def waiting(branch: bool = False) -> Flow:
    f = (
        create_flow("waiting")
        .node("a", one, uses="one")
        .wait("w", event_name="approve")
        .node("b", plus_ten, uses="plus_ten")
        .edge("a", "w")
        .edge("w", "b")
    )
    if branch:
        f.node("c", plus_ten, uses="plus_ten").edge("a", "c")
    return f


def runtime_for(flow: Flow, **kw: Any) -> FlowRuntime:
    return FlowRuntime(registry=flow.registry, **kw)


async def run_recorded(flow: Flow, initial: dict[str, Any] | None = None) -> EventRecorder:
    rec = EventRecorder()
    await runtime_for(flow, event_bus=rec).run(flow.to_blueprint(), initial, execution_id="E1")
    return rec


def summary(steps: list[Step]) -> list[tuple[str, str, Any]]:
    return [(s.node_id, s.status, s.output) for s in steps]


# -- EventRecorder -----------------------------------------------------------------------------


async def test_recorder_records_every_event_in_order() -> None:
    rec = await run_recorded(linear())
    assert rec.types() == [
        "workflow:start",
        "node:start",
        "node:finish",
        "node:start",
        "context:change",
        "node:finish",
        "node:start",
        "context:change",
        "node:finish",
        "workflow:finish",
    ]
    assert len(rec) == 10
    assert [e.seq for e in rec] == list(range(1, 11))
    assert {e.execution_id for e in rec.events} == {"E1"}


async def test_recorder_find_filter_clear() -> None:
    rec = await run_recorded(linear())
    first = rec.find("node:finish")
    assert first is not None
    assert first.payload == {"nodeId": "a", "result": {"output": 1}}
    by_c = rec.find("node:finish", node_id="c")
    assert by_c is not None
    assert by_c.payload["result"] == {"output": 21}
    assert rec.find("node:error") is None
    assert [e.payload["nodeId"] for e in rec.filter("node:start")] == ["a", "b", "c"]
    assert [e.payload["value"] for e in rec.filter("context:change")] == [1, 11]
    assert rec.filter("node:start", node_id="b")[0].payload["input"] == 1
    assert rec.filter("node:skipped") == []
    rec.clear()
    assert rec.events == []
    assert rec.types() == []


async def test_recorder_format_is_an_exact_readable_trace() -> None:
    rec = await run_recorded(linear())
    assert rec.format() == "\n".join(
        [
            "Flowcraft trace (10 events)",
            "  1 workflow:start    blueprint=linear",
            "  2 node:start        a input=null",
            "  3 node:finish       a output=1",
            "  4 node:start        b input=1",
            "  5 context:change    b set seen_b=1",
            "  6 node:finish       b output=11",
            "  7 node:start        c input=11",
            "  8 context:change    c set seen_c=11",
            "  9 node:finish       c output=21",
            " 10 workflow:finish   status=completed",
        ]
    )
    assert rec.format("My run").splitlines()[0] == "My run (10 events)"


async def test_recorder_print_defaults_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    rec = await run_recorded(linear())
    rec.print("T")
    out, err = capsys.readouterr()
    assert out == ""
    assert err == rec.format("T") + "\n"
    buf = io.StringIO()
    rec.print(file=buf)
    assert buf.getvalue() == rec.format() + "\n"


async def test_recorder_forwards_to_another_bus() -> None:
    seen: list[str] = []

    async def listener(ev: FlowcraftEvent) -> None:
        seen.append(ev.type)

    inner = ListenerBus()
    inner.subscribe(listener)
    rec = EventRecorder(forward=inner)
    flow = linear()
    await runtime_for(flow, event_bus=rec).run(flow.to_blueprint())
    assert seen == rec.types()
    assert len(seen) == 10


async def test_format_separates_executions_of_subflows() -> None:
    child = create_flow("child").node("c1", one, uses="one")
    parent = create_flow("parent").node("p", one, uses="one").subflow("sub", "child")
    parent.edge("p", "sub")
    rec = EventRecorder()
    rt = FlowRuntime(registry=parent.registry, blueprints=[child.to_blueprint()], event_bus=rec)
    await rt.run(parent.to_blueprint(), execution_id="P")
    assert rec.format() == "\n".join(
        [
            "Flowcraft trace (10 events)",
            "-- execution P --",
            "  1 workflow:start    blueprint=parent",
            "  2 node:start        p input=null",
            "  3 node:finish       p output=1",
            "  4 node:start        sub input=1",
            "-- execution P/sub --",
            "  1 workflow:start    blueprint=child",
            "  2 node:start        c1 input=1",
            "  3 node:finish       c1 output=1",
            "  4 workflow:finish   status=completed",
            "-- execution P --",
            "  5 node:finish       sub output=1",
            "  6 workflow:finish   status=completed",
        ]
    )


def ev(type_: str, seq: int = 1, **payload: Any) -> FlowcraftEvent:
    return FlowcraftEvent(type_, payload, "E", 0.0, seq, "wf")


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (ev("workflow:resume", nodeId="w", action="ok"), "  1 workflow:resume   node=w action=ok"),
        (ev("workflow:resume", nodeId="w", action=None), "  1 workflow:resume   node=w"),
        (
            ev("workflow:finish", status="failed", errors=[{"message": "m"}]),
            "  1 workflow:finish   status=failed errors=1",
        ),
        (ev("workflow:pause", awaitingNodeIds=["w", "v"]), "  1 workflow:pause    awaiting=w, v"),
        (ev("workflow:stall", remainingNodes=[]), "  1 workflow:stall    remaining=-"),
        (
            ev("node:finish", nodeId="r", result={"output": "x", "action": "yes"}),
            '  1 node:finish       r output="x" action=yes',
        ),
        (
            ev("node:error", nodeId="x", error={"name": "ValueError", "message": "bad"}),
            "  1 node:error        x ValueError: bad",
        ),
        (
            ev("node:retry", nodeId="x", attempt=2, delay=0.5, error="flaky"),
            "  1 node:retry        x attempt=2 delay=0.5 error=flaky",
        ),
        (ev("node:fallback", nodeId="x", fallback="f"), "  1 node:fallback     x -> fallback f"),
        (
            ev("node:skipped", nodeId="s", reason="no taken edge reaches it"),
            "  1 node:skipped      s (no taken edge reaches it)",
        ),
        (
            ev("node:awaiting", nodeId="w", details={"reason": "timer"}),
            "  1 node:awaiting     w reason=timer",
        ),
        (
            ev("edge:evaluate", source="a", target="b", condition="x > 1", result=False),
            "  1 edge:evaluate     a -> b condition='x > 1' result=False",
        ),
        (
            ev("context:change", sourceNode="n", key="k", op="delete", value=None),
            "  1 context:change    n delete k",
        ),
        (
            ev("node:start", seq=12, nodeId="n", input={"long": "y" * 80}),
            ' 12 node:start        n input={"long": "' + "y" * 49 + "…",
        ),
        (ev("batch:start", batchId="s", itemCount=3), "  1 batch:start       s items=3"),
        (ev("batch:finish", batchId="s", results=[1, 2]), "  1 batch:finish      s results=[1, 2]"),
        (ev("job:enqueued", runId="r1"), '  1 job:enqueued      {"runId": "r1"}'),
    ],
)
def test_format_event_lines(event: FlowcraftEvent, line: str) -> None:
    assert format_event(event) == line


def test_format_events_singular_header() -> None:
    assert format_events([ev("workflow:start", blueprintId="wf")]) == (
        "Flowcraft trace (1 event)\n  1 workflow:start    blueprint=wf"
    )


# -- run_with_trace ----------------------------------------------------------------------------


async def test_run_with_trace_completed_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    flow = linear()
    rt = runtime_for(flow)
    result = await run_with_trace(rt, flow.to_blueprint(), execution_id="T1")
    assert capsys.readouterr() == ("", "")
    assert isinstance(result, TracedResult)
    assert isinstance(result, WorkflowResult)
    assert result.status == "completed"
    assert result.execution_id == "T1"
    assert result.outputs == {"a": 1, "b": 11, "c": 21}
    assert result.trace.types()[0] == "workflow:start"
    assert result.trace.types()[-1] == "workflow:finish"
    assert len(result.trace) == 10
    assert result.to_dict()["nodeStatuses"] == {
        "a": "completed",
        "b": "completed",
        "c": "completed",
    }
    assert rt.event_bus is None  # the runtime was not changed


async def test_run_with_trace_prints_the_trace_of_a_failed_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    flow = failing()
    result = await run_with_trace(runtime_for(flow), flow.to_blueprint(), execution_id="T2")
    assert result.status == "failed"
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "Flowcraft trace of 'failing': failed (6 events)\n"
        "  1 workflow:start    blueprint=failing\n"
        "  2 node:start        a input=null\n"
        "  3 node:finish       a output=1\n"
        "  4 node:start        x input=1\n"
        "  5 node:error        x FatalNodeError: kaboom\n"
        "  6 workflow:finish   status=failed errors=1\n"
    )
    assert result.trace.types() == [
        "workflow:start",
        "node:start",
        "node:finish",
        "node:start",
        "node:error",
        "workflow:finish",
    ]


async def test_run_with_trace_prints_when_awaiting(capsys: pytest.CaptureFixture[str]) -> None:
    flow = waiting()
    result = await run_with_trace(runtime_for(flow), flow.to_blueprint())
    assert result.status == "awaiting"
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "Flowcraft trace of 'waiting': awaiting (7 events)"
    assert err.splitlines()[-2:] == [
        "  6 workflow:pause    awaiting=w",
        "  7 workflow:finish   status=awaiting",
    ]


@pytest.mark.parametrize(("value", "printed"), [("1", True), ("yes", True), ("0", False)])
async def test_run_with_trace_debug_env(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    value: str,
    printed: bool,
) -> None:
    monkeypatch.setenv("FLOWCRAFT_DEBUG", value)
    flow = linear()
    result = await run_with_trace(runtime_for(flow), flow.to_blueprint())
    assert result.status == "completed"
    err = capsys.readouterr().err
    if printed:
        assert err == result.trace.format("Flowcraft trace of 'linear': completed") + "\n"
    else:
        assert err == ""


async def test_run_with_trace_explicit_print_and_file(capsys: pytest.CaptureFixture[str]) -> None:
    flow = failing()
    quiet = await run_with_trace(runtime_for(flow), flow.to_blueprint(), print_trace=False)
    assert quiet.status == "failed"
    assert capsys.readouterr() == ("", "")
    buf = io.StringIO()
    ok = linear()
    loud = await run_with_trace(runtime_for(ok), ok.to_blueprint(), print_trace=True, file=buf)
    assert buf.getvalue() == loud.trace.format("Flowcraft trace of 'linear': completed") + "\n"
    assert capsys.readouterr() == ("", "")


async def test_run_with_trace_passes_initial_and_run_kwargs() -> None:
    flow = (
        create_flow("kw")
        .node("a", plus_ten, uses="plus_ten", inputs="start")
        .node("b", plus_ten, uses="extra")
        .edge("a", "b")
    )
    rt = FlowRuntime(registry={"plus_ten": plus_ten})
    result = await run_with_trace(
        rt, flow.to_blueprint(), {"start": 5}, registry={"extra": plus_ten}, execution_id="K"
    )
    assert result.status == "completed"
    assert result.execution_id == "K"
    assert result.outputs == {"a": 15, "b": 25}
    assert result.context["start"] == 5


async def test_run_with_trace_keeps_the_runtime_configuration() -> None:
    calls: list[str] = []

    class Count(Middleware):
        async def before_node(self, ctx: NodeContext) -> None:
            calls.append(ctx.node_id)

    inner = EventRecorder()
    flow = create_flow("deps").node("a", uses_dep, uses="uses_dep")
    rt = FlowRuntime(
        registry=flow.registry, dependencies={"base": 41}, middleware=[Count()], event_bus=inner
    )
    result = await run_with_trace(rt, flow.to_blueprint())
    assert result.outputs == {"a": 42}
    assert calls == ["a"]
    assert rt.event_bus is inner
    assert inner.types() == result.trace.types()  # forwarded to the runtime's own bus


async def test_run_with_trace_prints_and_reraises_when_the_run_raises(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bp = load_blueprint({"id": "bad", "nodes": [{"id": "a", "uses": "missing"}]})
    with pytest.raises(BlueprintValidationError, match="unknown implementation"):
        await run_with_trace(FlowRuntime(), bp)
    assert capsys.readouterr().err == "Flowcraft trace (run raised) (0 events)\n"


# -- Stepper -----------------------------------------------------------------------------------


async def test_stepper_linear() -> None:
    flow = linear()
    s = Stepper(runtime_for(flow), flow.to_blueprint(), {"k": "v"}, execution_id="S1")
    assert s.ready == ["a"]
    assert not s.done
    assert s.status == "running"
    step = await s.next()
    assert step == Step(
        node_id="a", kind="node", status="completed", input=None, output=1, activated=("b",)
    )
    assert s.ready == ["b"]
    assert s.state.nodes["b"].status == "queued"
    assert s.context == {"k": "v", "_outputs.a": 1}
    step = await s.next()
    assert step is not None
    assert (step.node_id, step.input, step.output, step.activated) == ("b", 1, 11, ("c",))
    assert not s.done
    step = await s.next()
    assert step is not None
    assert (step.node_id, step.output, step.activated) == ("c", 21, ())
    assert s.done
    assert s.status == "completed"
    assert await s.next() is None
    assert CALLS == {"a": 1, "b": 1, "c": 1}
    result = s.result()
    assert result.status == "completed"
    assert result.execution_id == "S1"
    assert result.node_statuses == {"a": "completed", "b": "completed", "c": "completed"}
    assert result.context == {
        "k": "v",
        "_outputs.a": 1,
        "seen_b": 1,
        "_outputs.b": 11,
        "seen_c": 11,
        "_outputs.c": 21,
    }
    assert [x.node_id for x in s.history] == ["a", "b", "c"]


async def test_stepper_emits_the_same_events_as_a_run() -> None:
    flow = fan()
    rec = EventRecorder()
    s = Stepper(runtime_for(flow), flow.to_blueprint(), event_bus=rec, execution_id="E1")
    await s.run_to_end()
    run_rec = await run_recorded(flow)
    assert rec.format() == run_rec.format()


async def test_stepper_fan_out_and_join() -> None:
    flow = fan()
    s = Stepper(runtime_for(flow), flow.to_blueprint())
    first = await s.next()
    assert first is not None
    assert first.activated == ("b", "c")
    assert s.ready == ["b", "c"]
    second = await s.next()
    assert second is not None
    assert (second.node_id, second.activated) == ("b", ())
    assert s.state.nodes["d"].status == "pending"
    third = await s.next()
    assert third is not None
    assert (third.node_id, third.activated) == ("c", ("d",))
    last = await s.next()
    assert last is not None
    assert last.node_id == "d"
    assert last.input == {"b": 11, "c": 11}
    assert last.output == [("b", 11), ("c", 11)]
    assert await s.next() is None
    assert s.status == "completed"
    direct = await runtime_for(flow).run(flow.to_blueprint())
    assert s.result().context == direct.context
    assert s.result().node_statuses == direct.node_statuses


async def test_stepper_failure_stops_stepping() -> None:
    flow = failing()
    s = Stepper(runtime_for(flow), flow.to_blueprint())
    first = await s.next()
    assert first is not None
    assert summary([first]) == [("a", "completed", 1)]
    step = await s.next()
    assert step is not None
    assert (step.node_id, step.status, step.output, step.activated) == ("x", "failed", None, ())
    assert step.error is not None
    assert (step.error["name"], step.error["message"]) == ("FatalNodeError", "kaboom")
    assert s.done
    assert s.status == "failed"
    assert await s.next() is None
    assert s.result().node_statuses == {"a": "completed", "x": "failed", "b": "pending"}
    assert [e.message for e in s.result().errors] == ["kaboom"]
    assert CALLS == {"a": 1, "x": 1}


async def test_stepper_fallback_is_a_step_of_its_own() -> None:
    flow = failing(fallback=True)
    s = Stepper(runtime_for(flow), flow.to_blueprint())
    await s.next()
    failed = await s.next()
    assert failed is not None
    assert (failed.node_id, failed.kind, failed.status, failed.activated) == (
        "x",
        "node",
        "failed",
        ("f",),
    )
    fb = await s.next()
    assert fb is not None
    assert (fb.node_id, fb.kind, fb.status, fb.input, fb.output, fb.activated) == (
        "f",
        "fallback",
        "completed",
        1,
        "rescued: kaboom",
        ("b",),
    )
    assert s.state.nodes["x"].status == "recovered"
    b = await s.next()
    assert b is not None
    assert (b.node_id, b.input, b.output) == ("b", "rescued: kaboom", None)
    assert b.error is not None
    assert b.status == "failed"  # "rescued: kaboom" + 10 is a TypeError
    assert s.status == "failed"


async def test_stepper_loop() -> None:
    flow = looping()
    s = Stepper(runtime_for(flow), flow.to_blueprint())
    steps: list[Step] = []
    while (step := await s.next()) is not None:
        steps.append(step)
    assert [(x.node_id, x.status, x.output, x.action, x.iteration) for x in steps] == [
        ("start", "completed", 1, None, 0),
        ("inc", "completed", 1, None, 0),
        ("l", "pending", 1, "continue", 0),  # the loop body (controller included) was reset
        ("inc", "completed", 2, None, 1),
        ("l", "pending", 2, "continue", 1),
        ("inc", "completed", 3, None, 2),
        ("l", "completed", 3, "break", 2),
        ("after", "completed", 1, None, 0),
    ]
    assert [x.activated for x in steps] == [
        ("inc",),
        ("l",),
        ("inc",),
        ("l",),
        ("inc",),
        ("l",),
        ("after",),
        (),
    ]
    assert s.status == "completed"
    assert s.context["count"] == 3
    assert s.state.nodes["inc"].iteration == 2


async def test_stepper_stops_at_a_wait_and_resumes() -> None:
    flow = waiting()
    s = Stepper(runtime_for(flow), flow.to_blueprint())
    await s.next()
    w = await s.next()
    assert w is not None
    assert (w.node_id, w.status, w.activated) == ("w", "awaiting", ())
    assert w.details == {"reason": "external_event", "eventName": "approve"}
    assert s.done
    assert s.status == "awaiting"
    assert await s.next() is None
    assert s.result().awaiting == {"w": {"reason": "external_event", "eventName": "approve"}}
    resumed = await s.resume(output=5, action="ok")
    assert (resumed.node_id, resumed.kind, resumed.status, resumed.output, resumed.action) == (
        "w",
        "resume",
        "completed",
        5,
        "ok",
    )
    assert resumed.activated == ("b",)
    assert not s.done
    assert s.status == "running"
    b = await s.next()
    assert b is not None
    assert (b.node_id, b.input, b.output) == ("b", 5, 15)
    assert s.status == "completed"
    assert s.result().node_statuses == {"a": "completed", "w": "completed", "b": "completed"}
    with pytest.raises(ResumeError, match="not awaiting"):
        await s.resume()


async def test_stepper_keeps_running_other_branches_while_one_waits() -> None:
    flow = waiting(branch=True)
    s = Stepper(runtime_for(flow), flow.to_blueprint())
    await s.next()
    assert s.ready == ["w", "c"]
    assert summary([x for x in [await s.next(), await s.next()] if x is not None]) == [
        ("w", "awaiting", None),
        ("c", "completed", 11),
    ]
    assert s.done
    assert s.status == "awaiting"
    with pytest.raises(ResumeError, match="node 'c' is not awaiting"):
        await s.resume("c")


async def test_stepper_sleep_resume_passes_input_through() -> None:
    flow = (
        create_flow("nap")
        .node("a", one, uses="one")
        .sleep("z", "1h")
        .node("b", plus_ten, uses="plus_ten")
        .edge("a", "z")
        .edge("z", "b")
    )
    s = Stepper(runtime_for(flow), flow.to_blueprint())
    await s.next()
    z = await s.next()
    assert z is not None
    assert z.status == "awaiting"
    assert z.details is not None
    assert (z.details["reason"], z.details["input"]) == ("timer", 1)
    await s.resume("z")
    result = await s.run_to_end()
    assert result.status == "completed"
    assert result.outputs == {"a": 1, "z": 1, "b": 11}


async def test_stepper_resumes_an_awaiting_subflow() -> None:
    child = create_flow("child").node("c1", one, uses="one").wait("cw").edge("c1", "cw")
    parent = (
        create_flow("parent")
        .node("p", one, uses="one")
        .subflow("sub", "child")
        .node("q", plus_ten, uses="plus_ten")
        .edge("p", "sub")
        .edge("sub", "q")
    )
    rt = FlowRuntime(registry=parent.registry, blueprints=[child.to_blueprint()])
    s = Stepper(rt, parent.to_blueprint(), execution_id="P")
    await s.next()
    sub = await s.next()
    assert sub is not None
    assert (sub.node_id, sub.status) == ("sub", "awaiting")
    assert sub.details is not None
    assert sub.details["reason"] == "subflow"
    assert sub.details["child"]["executionId"] == "P/sub"
    assert sub.details["child"]["nodeStatuses"] == {"c1": "completed", "cw": "awaiting"}
    assert s.status == "awaiting"
    resumed = await s.resume(output=9)
    assert (resumed.node_id, resumed.status, resumed.output, resumed.activated) == (
        "sub",
        "completed",
        9,
        ("q",),
    )
    q = await s.next()
    assert q is not None
    assert (q.node_id, q.input, q.output) == ("q", 9, 19)
    assert s.status == "completed"
    assert CALLS == {"p": 1, "c1": 1, "q": 1}


async def test_stepper_prev_restores_state_and_context() -> None:
    flow = linear()
    s = Stepper(runtime_for(flow), flow.to_blueprint(), {"k": 1})
    assert await s.prev() is None
    await s.next()
    await s.next()
    before_b_context = {"k": 1, "_outputs.a": 1}
    undone = await s.prev()
    assert undone is not None
    assert undone.node_id == "b"
    assert s.context == before_b_context
    assert s.ready == ["b"]
    assert s.state.nodes["b"].status == "queued"
    assert s.state.edges == {"a->b": True}
    assert [x.node_id for x in s.history] == ["a"]
    again = await s.next()
    assert again is not None
    assert (again.node_id, again.output) == ("b", 11)
    assert CALLS["b"] == 2  # side effects outside the context are not undone
    await s.next()
    assert s.status == "completed"
    undone = await s.prev()
    assert undone is not None
    assert undone.node_id == "c"
    assert not s.done
    assert s.status == "running"
    assert s.ready == ["c"]
    undone_b = await s.prev()
    undone_a = await s.prev()
    assert (undone_b and undone_b.node_id, undone_a and undone_a.node_id) == ("b", "a")
    assert s.context == {"k": 1}
    assert s.ready == ["a"]
    assert await s.prev() is None
    result = await s.run_to_end()
    assert result.outputs == {"a": 1, "b": 11, "c": 21}


async def test_stepper_prev_undoes_a_resume() -> None:
    flow = waiting()
    s = Stepper(runtime_for(flow), flow.to_blueprint())
    await s.run_to_end()
    assert s.status == "awaiting"
    await s.resume(output=2)
    assert s.state.nodes["w"].status == "completed"
    undone = await s.prev()
    assert undone is not None
    assert undone.kind == "resume"
    assert s.status == "awaiting"
    assert s.state.nodes["w"].status == "awaiting"
    assert s.state.awaiting == {"w": {"reason": "external_event", "eventName": "approve"}}
    await s.resume(output=7)
    result = await s.run_to_end()
    assert result.outputs == {"a": 1, "w": 7, "b": 17}


async def test_stepper_reset_starts_over() -> None:
    flow = fan()
    s = Stepper(runtime_for(flow), flow.to_blueprint(), {"x": 1}, execution_id="R")
    await s.next()
    await s.next()
    s.reset()
    assert s.ready == ["a"]
    assert s.context == {"x": 1}
    assert s.history == []
    assert s.status == "running"
    assert all(ns.status in ("queued", "pending") for ns in s.state.nodes.values())
    result = await s.run_to_end()
    assert result.execution_id == "R"
    assert result.outputs == {"a": 1, "b": 11, "c": 11, "d": [("b", 11), ("c", 11)]}
    assert CALLS == {"a": 2, "b": 2, "c": 1, "d": 1}


async def test_stepper_batch_items_are_steps() -> None:
    flow = (
        create_flow("batch")
        .node("src", one, uses="one")
        .batch("bt", times_ten, input_key="xs", worker_uses="times_ten")
        .edge("src", "bt")
    )
    s = Stepper(runtime_for(flow), flow.to_blueprint(), {"xs": [1, 2]})
    steps: list[Step] = []
    while (step := await s.next()) is not None:
        steps.append(step)
    assert [(x.node_id, x.kind, x.status, x.input, x.output, x.activated) for x in steps] == [
        ("src", "node", "completed", None, 1, ("bt_scatter",)),
        ("bt_scatter", "node", "running", [1, 2], None, ("bt_scatter[0]", "bt_scatter[1]")),
        ("bt_scatter[0]", "item", "completed", 1, 10, ()),
        ("bt_scatter[1]", "item", "completed", 2, 20, ("bt_gather",)),
        ("bt_gather", "node", "completed", [10, 20], [10, 20], ()),
    ]
    assert s.context["bt_gather"] == [10, 20]
    assert s.status == "completed"


async def test_stepper_with_runtime_dependencies_and_registry_override() -> None:
    bp = load_blueprint({"id": "dep", "nodes": [{"id": "a", "uses": "dep"}]})
    s = Stepper(FlowRuntime(dependencies={"base": 1}), bp, registry={"dep": uses_dep})
    step = await s.next()
    assert step is not None
    assert step.output == 2
    assert s.status == "completed"


def test_stepper_rejects_invalid_blueprints() -> None:
    bp = load_blueprint({"id": "bad", "nodes": [{"id": "a", "uses": "missing"}]})
    with pytest.raises(BlueprintValidationError, match="node 'a': unknown implementation"):
        Stepper(FlowRuntime(), bp)
    expr = load_blueprint(
        {
            "id": "expr",
            "nodes": [{"id": "a", "uses": "one"}, {"id": "b", "uses": "one"}],
            "edges": [{"source": "a", "target": "b", "condition": "1 +"}],
        }
    )
    with pytest.raises(BlueprintValidationError, match="edge 'a' -> 'b' condition"):
        Stepper(FlowRuntime(registry={"one": one}), expr)


def _job(node: str, requeues: int = 0, recover: bool | None = None) -> Any:
    from flowcraft.distributed import JobPayload

    return JobPayload(
        run_id="r", blueprint_id="b", node_id=node, requeues=requeues, recover=recover
    )


def test_requeue_check_accepts_one_copy_per_round_and_redelivered_copies() -> None:
    from flowcraft.testing.conformance.helpers import assert_requeues_do_not_multiply

    jobs = [_job("a"), _job("a", 1), _job("a", 2), _job("b"), _job("b", 1)]
    jobs += [_job("a", 1, recover=True), _job("a", 1, recover=True)]  # a broker's redeliveries
    assert_requeues_do_not_multiply(jobs, max_rounds=2)


def test_requeue_check_fails_on_a_multiplied_round_or_too_many_rounds() -> None:
    from flowcraft.testing.conformance.helpers import assert_requeues_do_not_multiply

    with pytest.raises(AssertionError, match=r"before\): \[\('r:a:0:1:node', 2, 2, 1\)\]"):
        assert_requeues_do_not_multiply([_job("a"), _job("a", 1), _job("a", 2), _job("a", 2)], 5)
    with pytest.raises(AssertionError, match=r"past 2 rounds: \[\('r:a:0:1:node', 3\)\]"):
        assert_requeues_do_not_multiply([_job("a", r) for r in (0, 1, 2, 3)], 2)
    # a job republished by a redelivered message starts a second chain
    assert_requeues_do_not_multiply([_job("w"), _job("w", 1), _job("w"), _job("w", 1)], 5)
    with pytest.raises(AssertionError, match=r"own enqueues per job: \{'r:a:0:1:node': 4\}"):
        assert_requeues_do_not_multiply([_job("a")] * 4, 5)
