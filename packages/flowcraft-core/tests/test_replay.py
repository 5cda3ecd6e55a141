"""Replay (rebuild a run from its events, no code runs) and replay_from (re-run from a node
with everything else served from history). Every replay is compared with the live result."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from flowcraft import (
    FatalNodeError,
    FlowcraftEvent,
    FlowRuntime,
    NodeContext,
    NodeResult,
    WorkflowResult,
    create_flow,
    load_blueprint,
)
from flowcraft.blueprint import WorkflowBlueprint
from flowcraft.history import InMemoryEventStore, PersistentEventBus, SqliteEventStore
from flowcraft.replay import node_timings, replay, replay_from, select_execution
from flowcraft.testing import EventRecorder
from helpers import ECHO, Recorder
from hypothesis import given, settings
from hypothesis import strategies as st


def bp_of(nodes: list[dict[str, Any]], edges: list[tuple[str, str]] | list[dict[str, Any]]) -> Any:
    """A blueprint with id ``wf`` from node dicts and (source, target) pairs or edge dicts."""
    return load_blueprint(
        {
            "id": "wf",
            "nodes": nodes,
            "edges": [
                e if isinstance(e, dict) else {"source": e[0], "target": e[1]} for e in edges
            ],
        }
    )


def same_as_live(live: WorkflowResult, replayed: WorkflowResult) -> None:
    """Replay reproduces the live run's context, statuses, status, errors and awaiting."""
    assert replayed.execution_id == live.execution_id
    assert replayed.blueprint_id == live.blueprint_id
    assert replayed.status == live.status
    assert replayed.context == live.context
    assert replayed.node_statuses == live.node_statuses
    assert [e.to_wire() for e in replayed.errors] == [e.to_wire() for e in live.errors]
    assert replayed.awaiting.keys() == live.awaiting.keys()


async def record(
    bp: Any, registry: dict[str, Any], initial: dict[str, Any] | None = None, **kw: Any
) -> tuple[WorkflowResult, EventRecorder, FlowRuntime]:
    """Run ``bp`` with a recorder attached; returns the result, the recorder and the runtime."""
    rec = EventRecorder()
    rt = FlowRuntime(registry=registry, event_bus=rec, **kw)
    return await rt.run(bp, initial), rec, rt


async def writer(ctx: NodeContext) -> NodeResult:
    """Writes ``seen.<id>`` and deletes ``tmp``; outputs its input + 1 (0 at start)."""
    await ctx.context.set(f"seen.{ctx.node_id}", True)
    await ctx.context.delete("tmp")
    return NodeResult((ctx.input or 0) + 1)


async def boom(ctx: NodeContext) -> NodeResult:
    """Fails fatally."""
    raise FatalNodeError(f"{ctx.node_id} exploded")


async def flaky(ctx: NodeContext) -> NodeResult:
    """Fails (retryably)."""
    raise RuntimeError("flaky failure")


async def rescue(ctx: NodeContext) -> NodeResult:
    """A fallback: outputs what it replaced and the error message."""
    assert ctx.error is not None
    return NodeResult(f"rescued {ctx.error.node_id}")


# -- replay ----------------------------------------------------------------------------------


async def test_replay_rebuilds_context_statuses_and_status_of_a_linear_run() -> None:
    bp = bp_of([{"id": "a", "uses": "w"}, {"id": "b", "uses": "w"}], [("a", "b")])
    live, rec, _ = await record(bp, {"w": writer}, {"tmp": 1, "user": "ann"})
    r = replay(bp, rec.events)
    same_as_live(live, r)
    assert r.status == "completed"
    assert r.context == {
        "user": "ann",
        "seen.a": True,
        "_outputs.a": 1,
        "seen.b": True,
        "_outputs.b": 2,
    }
    assert r.node_statuses == {"a": "completed", "b": "completed"}
    assert r.outputs == {"a": 1, "b": 2}
    assert r.errors == []


async def test_replay_of_a_failed_run_says_failed_not_completed() -> None:
    """Upstream bug B16: replay always reported completed."""
    bp = bp_of(
        [{"id": "a", "uses": "w"}, {"id": "x", "uses": "boom"}, {"id": "b", "uses": "w"}],
        [("a", "x"), ("x", "b")],
    )
    live, rec, _ = await record(bp, {"w": writer, "boom": boom})
    r = replay(bp, rec.events)
    same_as_live(live, r)
    assert r.status == "failed"
    assert r.node_statuses == {"a": "completed", "x": "failed", "b": "pending"}
    assert [(e.node_id, e.name, e.message) for e in r.errors] == [
        ("x", "FatalNodeError", "x exploded")
    ]
    assert "_outputs.x" not in r.context


async def test_replay_credits_a_fallback_output_to_both_nodes_as_the_live_run_does() -> None:
    bp = bp_of(
        [
            {"id": "a", "uses": "flaky", "config": {"fallback": "fb", "maxRetries": 2}},
            {"id": "fb", "uses": "rescue"},
            {"id": "b", "uses": "echo"},
        ],
        [("a", "b")],
    )
    live, rec, _ = await record(
        bp, {"flaky": flaky, "rescue": rescue, "echo": Recorder().node(ECHO)}
    )
    r = replay(bp, rec.events)
    same_as_live(live, r)
    assert r.status == "completed"
    assert r.node_statuses == {"a": "recovered", "fb": "completed", "b": "completed"}
    assert r.outputs == {"fb": "rescued a", "a": "rescued a", "b": "rescued a"}


async def test_replay_of_a_failing_fallback() -> None:
    bp = bp_of(
        [{"id": "a", "uses": "flaky", "config": {"fallback": "fb"}}, {"id": "fb", "uses": "boom"}],
        [],
    )
    live, rec, _ = await record(bp, {"flaky": flaky, "boom": boom})
    r = replay(bp, rec.events)
    same_as_live(live, r)
    assert r.status == "failed"
    assert r.node_statuses == {"a": "failed", "fb": "failed"}
    assert [e.message for e in r.errors] == ["fb exploded"]


async def test_replay_of_branches_marks_the_untaken_branch_skipped() -> None:
    bp = bp_of(
        [{"id": "a", "uses": "w"}, {"id": "yes", "uses": "w"}, {"id": "no", "uses": "w"}],
        [
            {"source": "a", "target": "yes", "condition": "result.output > 0"},
            {"source": "a", "target": "no", "condition": "result.output <= 0"},
        ],
    )
    live, rec, _ = await record(bp, {"w": writer})
    r = replay(bp, rec.events)
    same_as_live(live, r)
    assert r.node_statuses == {"a": "completed", "yes": "completed", "no": "skipped"}


async def test_replay_of_a_routing_error_after_the_node_finished() -> None:
    """node:finish then node:error (the edge condition raised): the output is not kept."""
    bp = bp_of(
        [{"id": "a", "uses": "w"}, {"id": "b", "uses": "w"}],
        [{"source": "a", "target": "b", "condition": 'result.output > "a"'}],
    )
    live, rec, _ = await record(bp, {"w": writer})
    assert rec.types()[-3:] == ["node:finish", "node:error", "workflow:finish"]
    r = replay(bp, rec.events)
    same_as_live(live, r)
    assert r.status == "failed"
    assert r.node_statuses == {"a": "failed", "b": "pending"}
    assert "_outputs.a" not in r.context


async def test_a_routing_error_on_resume_fails_the_node_and_replays_alike() -> None:
    """The resumed node's edge expression raises: the run fails (resume used to raise)."""
    bp = bp_of(
        [{"id": "gate", "uses": "wait"}, {"id": "b", "uses": "w"}],
        [{"source": "gate", "target": "b", "condition": 'result.output > "a"'}],
    )
    rec = EventRecorder()
    rt = FlowRuntime(registry={"w": writer}, event_bus=rec)
    first = await rt.run(bp)
    live = await rt.resume(bp, first, "gate", output=1)
    assert live.status == "failed"
    assert live.node_statuses == {"gate": "failed", "b": "pending"}
    assert [e.name for e in live.errors] == ["ExpressionError"]
    assert rec.types()[-4:] == ["workflow:resume", "node:finish", "node:error", "workflow:finish"]
    same_as_live(live, replay(bp, rec.events))


async def count_body(ctx: NodeContext) -> NodeResult:
    """Loop body: increments ``count``."""
    n = await ctx.context.get("count", 0)
    await ctx.context.set("count", n + 1)
    return NodeResult(n + 1)


def loop_flow() -> Any:
    """init -> body (looped while count < 3) -> after."""
    return (
        create_flow("loopy")
        .node("init", Recorder().node(0), uses="init")
        .node("body", count_body, uses="body")
        .loop("lp", start="body", end="body", condition="count < 3")
        .node("after", Recorder().node(ECHO), uses="after")
        .edge("init", "body")
        .edge("lp", "after")
    )


async def test_replay_of_a_loop() -> None:
    flow = loop_flow()
    bp = flow.to_blueprint()
    live, rec, _ = await record(bp, flow.registry, {"count": 0})
    r = replay(bp, rec.events)
    same_as_live(live, r)
    assert r.context["count"] == 3
    assert r.outputs["after"] == 3
    assert r.node_statuses == {
        "init": "completed",
        "body": "completed",
        "lp": "completed",
        "after": "completed",
    }


async def test_replay_of_a_loop_failing_in_its_second_iteration_resets_the_body() -> None:
    async def b1(ctx: NodeContext) -> NodeResult:
        if await ctx.context.get("count", 0) >= 1:
            raise FatalNodeError("second round")
        return NodeResult(0)

    flow = (
        create_flow("loop2")
        .node("b1", b1, uses="b1")
        .node("b2", count_body, uses="b2")
        .edge("b1", "b2")
        .loop("lp", start="b1", end="b2", condition="count < 3")
        .node("after", Recorder().node(ECHO), uses="after")
        .edge("lp", "after")
    )
    bp = flow.to_blueprint()
    live, rec, _ = await record(bp, flow.registry)
    r = replay(bp, rec.events)
    same_as_live(live, r)
    assert r.node_statuses == {"b1": "failed", "b2": "pending", "lp": "pending", "after": "pending"}
    assert r.context["count"] == 1


async def double(ctx: NodeContext) -> NodeResult:
    """Batch worker: doubles the item; item 2 fails."""
    if ctx.input == 2:
        raise FatalNodeError("no twos")
    return NodeResult(ctx.input * 2)


@pytest.mark.parametrize(
    ("policy", "status", "scatter", "results"),
    [
        ("skip", "completed", "completed", [2, None, 6]),
        ("fail", "failed", "failed", None),
    ],
)
async def test_replay_of_a_batch(
    policy: Any, status: str, scatter: str, results: list[Any] | None
) -> None:
    flow = (
        create_flow("batchy")
        .batch("b", double, input_key="items", on_item_error=policy, worker_uses="double")
        .node("after", Recorder().node(ECHO), uses="after")
        .edge("b", "after")
    )
    bp = flow.to_blueprint()
    live, rec, _ = await record(bp, flow.registry, {"items": [1, 2, 3]})
    r = replay(bp, rec.events)
    same_as_live(live, r)
    assert r.status == status
    assert r.node_statuses["b_scatter"] == scatter
    if results is not None:
        assert r.outputs["b_scatter"] == results
        assert r.context["b_gather"] == results
        assert r.outputs["after"] == results


async def test_replay_of_a_run_awaiting_then_resumed_under_one_execution_id() -> None:
    bp = bp_of(
        [{"id": "a", "uses": "w"}, {"id": "gate", "uses": "wait"}, {"id": "b", "uses": "w"}],
        [("a", "gate"), ("gate", "b")],
    )
    rec = EventRecorder()
    rt = FlowRuntime(registry={"w": writer}, event_bus=rec)
    first = await rt.run(bp)
    r1 = replay(bp, rec.events)
    same_as_live(first, r1)
    assert r1.status == "awaiting"
    assert r1.node_statuses == {"a": "completed", "gate": "awaiting", "b": "pending"}
    assert r1.awaiting == {"gate": {"reason": "external_event", "eventName": None}}
    second = await rt.resume(bp, first, "gate", output=10)
    r2 = replay(bp, rec.events)
    same_as_live(second, r2)
    assert r2.status == "completed"
    assert r2.outputs == {"a": 1, "gate": 10, "b": 11}
    assert r2.awaiting == {}


async def test_replay_of_a_subflow_picks_the_parent_execution() -> None:
    child = bp_of([{"id": "c1", "uses": "w"}], [])
    child = load_blueprint({**child.model_dump(by_alias=True), "id": "child"})
    parent = bp_of(
        [
            {"id": "a", "uses": "w"},
            {"id": "sub", "uses": "subflow", "params": {"blueprintId": "child"}},
        ],
        [("a", "sub")],
    )
    rec = EventRecorder()
    rt = FlowRuntime(registry={"w": writer}, blueprints=[child], event_bus=rec)
    live = await rt.run(parent)
    assert {e.execution_id for e in rec.events} == {live.execution_id, f"{live.execution_id}/sub"}
    r = replay(parent, rec.events)
    same_as_live(live, r)
    assert r.outputs == {"a": 1, "sub": 2}
    c = replay(child, rec.events, execution_id=f"{live.execution_id}/sub")
    assert c.status == "completed"
    assert c.outputs == {"c1": 2}


async def test_replay_of_a_subflow_resumed_through_its_parent() -> None:
    child = load_blueprint(
        {
            "id": "child",
            "nodes": [{"id": "gate", "uses": "wait"}, {"id": "c2", "uses": "w"}],
            "edges": [{"source": "gate", "target": "c2"}],
        }
    )
    parent = bp_of(
        [
            {"id": "sub", "uses": "subflow", "params": {"blueprintId": "child"}},
            {"id": "z", "uses": "w"},
        ],
        [("sub", "z")],
    )
    rec = EventRecorder()
    rt = FlowRuntime(registry={"w": writer}, blueprints=[child], event_bus=rec)
    first = await rt.run(parent)
    assert first.status == "awaiting"
    live = await rt.resume(parent, first, "sub", output=5)
    r = replay(parent, rec.events)
    same_as_live(live, r)
    assert r.outputs == {"sub": 6, "z": 7}
    assert r.node_statuses == {"sub": "completed", "z": "completed"}


async def test_replay_of_a_cancelled_run() -> None:
    started = asyncio.Event()

    async def slow(ctx: NodeContext) -> NodeResult:
        started.set()
        await asyncio.sleep(30)
        return NodeResult(1)

    bp = bp_of([{"id": "a", "uses": "w"}, {"id": "s", "uses": "slow"}], [("a", "s")])
    rec = EventRecorder()
    rt = FlowRuntime(registry={"w": writer, "slow": slow}, event_bus=rec)
    task = asyncio.create_task(rt.run(bp))
    await started.wait()
    rt.cancel(rec.events[0].execution_id)
    live = await task
    r = replay(bp, rec.events)
    same_as_live(live, r)
    assert r.status == "cancelled"
    assert r.node_statuses == {"a": "completed", "s": "cancelled"}


async def test_replay_of_a_stalled_run() -> None:
    bp = bp_of([{"id": "a", "uses": "w"}, {"id": "b", "uses": "w"}], [("a", "b")])
    rec = EventRecorder()
    live = await FlowRuntime(registry={"w": writer}, event_bus=rec).run(bp, stop_at=["a"])
    r = replay(bp, rec.events)
    same_as_live(live, r)
    assert r.status == "stalled"
    assert r.node_statuses == {"a": "completed", "b": "pending"}


async def test_replay_of_an_incomplete_history_is_running() -> None:
    bp = bp_of(
        [{"id": "a", "uses": "w"}, {"id": "x", "uses": "boom"}, {"id": "b", "uses": "w"}],
        [("a", "x"), ("x", "b")],
    )
    _, rec, _ = await record(bp, {"w": writer, "boom": boom})
    cut = [e for e in rec.events if e.type != "workflow:finish"]
    r = replay(bp, cut)
    assert r.status == "running"
    assert r.node_statuses == {"a": "completed", "x": "failed", "b": "pending"}
    assert [e.message for e in r.errors] == ["x exploded"]


async def test_replay_without_a_blueprint_covers_the_nodes_the_events_name() -> None:
    bp = bp_of(
        [{"id": "a", "uses": "w"}, {"id": "x", "uses": "boom"}, {"id": "b", "uses": "w"}],
        [("a", "x"), ("x", "b")],
    )
    live, rec, _ = await record(bp, {"w": writer, "boom": boom}, {"k": "v"})
    r = replay(None, rec.events)
    assert r.blueprint_id == "wf"
    assert r.status == "failed"
    assert r.node_statuses == {"a": "completed", "x": "failed"}
    assert r.context == live.context


async def test_replay_picks_one_execution_out_of_many() -> None:
    bp = bp_of([{"id": "a", "uses": "w"}], [])
    rec = EventRecorder()
    rt = FlowRuntime(registry={"w": writer}, event_bus=rec)
    r1 = await rt.run(bp, {"run": 1})
    r2 = await rt.run(bp, {"run": 2})
    assert replay(bp, rec.events).context["run"] == 1
    assert replay(bp, rec.events, execution_id=r2.execution_id).context["run"] == 2
    assert [e.execution_id for e in select_execution(rec.events)] == [r1.execution_id] * 5
    assert select_execution([]) == []


async def test_replay_from_sqlite_history_round_trips() -> None:
    flow = loop_flow()
    bp = flow.to_blueprint()
    with SqliteEventStore(":memory:") as store:
        rt = FlowRuntime(registry=flow.registry, event_bus=PersistentEventBus(store))
        live = await rt.run(bp, {"count": 0})
        events = await store.retrieve(live.execution_id)
    same_as_live(live, replay(bp, events))


async def test_node_timings_pair_starts_with_finishes() -> None:
    def ev(type_: str, node: str, ts: float) -> FlowcraftEvent:
        return FlowcraftEvent(type_, {"nodeId": node}, "e", ts, 0, "wf")

    timings = node_timings(
        [
            ev("node:start", "a", 10.0),
            ev("node:finish", "a", 10.5),
            ev("node:start", "a", 11.0),
            ev("node:error", "a", 11.25),
            ev("node:start", "s", 12.0),
            ev("node:start", "s[0]", 12.0),
            ev("node:finish", "s[0]", 13.0),
            ev("node:start", "w", 14.0),
            ev("node:start", "s2", 15.0),
            FlowcraftEvent("batch:finish", {"scatterNodeId": "s2", "results": []}, "e", 17.0, 0),
        ]
    )
    assert {k: (t.executions, t.duration) for k, t in timings.items()} == {
        "a": (2, 0.75),
        "s": (1, None),
        "w": (1, None),
        "s2": (1, 2.0),
    }
    assert (timings["a"].first_start, timings["a"].last_end) == (10.0, 11.25)


# -- property: replay equals the live run on random DAGs ---------------------------------------


@dataclass(frozen=True)
class Spec:
    """A random DAG whose nodes may fail, have fallbacks, write context and pick actions."""

    size: int
    edges: tuple[tuple[int, int, str | None], ...]
    fails: tuple[bool, ...]
    fallback: tuple[bool, ...]
    actions: tuple[str | None, ...]
    joins: tuple[str, ...]


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    """Random DAGs of 1..7 nodes."""
    size = draw(st.integers(1, 7))
    edges = tuple(
        (s, t, draw(st.sampled_from([None, None, "x"])))
        for s in range(size)
        for t in range(s + 1, size)
        if draw(st.booleans())
    )

    def flags(p: list[Any]) -> tuple[Any, ...]:
        return tuple(draw(st.lists(st.sampled_from(p), min_size=size, max_size=size)))

    return Spec(
        size,
        edges,
        flags([False, False, False, True]),
        flags([False, True]),
        flags([None, "x"]),
        flags(["all", "any"]),
    )


def spec_blueprint(spec: Spec) -> WorkflowBlueprint:
    """Nodes n0..; node i with a fallback gets fb<i> (which never fails)."""
    nodes: list[dict[str, Any]] = []
    for i in range(spec.size):
        cfg: dict[str, Any] = {"joinStrategy": spec.joins[i]}
        if spec.fallback[i]:
            cfg["fallback"] = f"fb{i}"
        nodes.append({"id": f"n{i}", "uses": "node", "config": cfg})
    nodes += [{"id": f"fb{i}", "uses": "node"} for i in range(spec.size) if spec.fallback[i]]
    edges = [
        {"source": f"n{s}", "target": f"n{t}", **({"action": a} if a else {})}
        for s, t, a in spec.edges
    ]
    return load_blueprint({"id": "prop", "nodes": nodes, "edges": edges})


@settings(max_examples=60, deadline=None)
@given(specs(), st.integers(1, 3))
def test_replay_matches_the_live_run_on_random_dags(spec: Spec, concurrency: int) -> None:
    async def node(ctx: NodeContext) -> NodeResult:
        await asyncio.sleep(0)
        await ctx.context.set(f"w.{ctx.node_id}", ctx.input)
        if ctx.node_id.startswith("fb"):
            return NodeResult(f"fb:{ctx.error.node_id if ctx.error else None}")
        i = int(ctx.node_id[1:])
        if spec.fails[i]:
            raise RuntimeError(f"{ctx.node_id} failed")
        return NodeResult(ctx.node_id, spec.actions[i])

    async def go() -> None:
        bp = spec_blueprint(spec)
        rec = EventRecorder()
        live = await FlowRuntime(registry={"node": node}, event_bus=rec).run(
            bp, {"seed": 1}, concurrency=concurrency
        )
        same_as_live(live, replay(bp, rec.events))

    asyncio.run(go())


# -- replay_from -----------------------------------------------------------------------------


def counting(calls: list[str], out: Any = None, fail: set[str] | None = None) -> Any:
    """A node that records its id in ``calls``, writes ``by.<id>`` and outputs ``out`` (or
    its input + [its id]); fails when its id is in ``fail``."""

    async def node(ctx: NodeContext) -> NodeResult:
        calls.append(ctx.node_id)
        await ctx.context.set(f"by.{ctx.node_id}", len(calls))
        if fail is not None and ctx.node_id in fail:
            raise RuntimeError(f"{ctx.node_id} broke")
        if out is not None:
            return NodeResult(out)
        prev = ctx.input if isinstance(ctx.input, list) else []
        return NodeResult([*prev, ctx.node_id])

    return node


async def test_replay_from_a_failed_node_does_not_rerun_its_ancestors() -> None:
    bp = bp_of(
        [{"id": "a", "uses": "n"}, {"id": "b", "uses": "n"}, {"id": "c", "uses": "n"}],
        [("a", "b"), ("b", "c")],
    )
    calls: list[str] = []
    broken = FlowRuntime(registry={"n": counting(calls, fail={"c"})}, event_bus=EventRecorder())
    first = await broken.run(bp, {"k": 1})
    assert first.status == "failed"
    events = broken.event_bus.events  # type: ignore[union-attr]
    assert calls == ["a", "b", "c"]

    calls.clear()
    fixed = FlowRuntime(registry={"n": counting(calls)}, event_bus=EventRecorder())
    again = await replay_from(fixed, bp, events, "c")
    assert calls == ["c"]
    assert again.status == "completed"
    assert again.execution_id != first.execution_id
    assert again.node_statuses == {"a": "completed", "b": "completed", "c": "completed"}
    assert again.context == {
        "k": 1,
        "by.a": 1,
        "_outputs.a": ["a"],
        "by.b": 2,
        "_outputs.b": ["a", "b"],
        "by.c": 1,
        "_outputs.c": ["a", "b", "c"],
    }
    # The new run's own events replay to the same result.
    same_as_live(again, replay(bp, fixed.event_bus.events))  # type: ignore[union-attr]
    served = [e for e in fixed.event_bus.events if e.type == "context:change"]  # type: ignore[union-attr]
    assert [(e.payload["sourceNode"], e.payload["key"]) for e in served] == [
        ("a", "by.a"),
        ("b", "by.b"),
        ("c", "by.c"),
    ]


async def test_replay_from_with_an_input_override() -> None:
    bp = bp_of(
        [{"id": "a", "uses": "n"}, {"id": "b", "uses": "n"}, {"id": "c", "uses": "n"}],
        [("a", "b"), ("b", "c")],
    )
    calls: list[str] = []
    rt = FlowRuntime(registry={"n": counting(calls)}, event_bus=EventRecorder())
    first = await rt.run(bp)
    assert first.outputs["c"] == ["a", "b", "c"]
    calls.clear()
    again = await replay_from(
        rt,
        bp,
        rt.event_bus.events,
        "b",
        input_overrides={"b": ["zz"]},  # type: ignore[union-attr]
    )
    assert calls == ["b", "c"]
    assert again.outputs == {"a": ["a"], "b": ["zz", "b"], "c": ["zz", "b", "c"]}


async def test_replay_from_serves_independent_branches_and_runs_what_never_ran() -> None:
    """s -> a (fails) ; s -> b -> d ; a, d -> j. The failure stopped d before it started."""
    b_done = asyncio.Event()
    calls: list[str] = []

    async def node(ctx: NodeContext) -> NodeResult:
        calls.append(ctx.node_id)
        if ctx.node_id == "a" and broken:
            await b_done.wait()
            raise RuntimeError("a broke")
        if ctx.node_id == "b":
            b_done.set()
        return NodeResult(ctx.node_id)

    bp = bp_of(
        [{"id": n, "uses": "n"} for n in ("s", "a", "b", "d", "j")],
        [("s", "a"), ("s", "b"), ("b", "d"), ("a", "j"), ("d", "j")],
    )
    broken = True
    rt = FlowRuntime(registry={"n": node}, event_bus=EventRecorder())
    first = await rt.run(bp)
    assert first.status == "failed"
    assert first.node_statuses == {
        "s": "completed",
        "a": "failed",
        "b": "completed",
        "d": "pending",
        "j": "pending",
    }
    events = list(rt.event_bus.events)  # type: ignore[union-attr]
    broken = False
    calls.clear()
    again = await replay_from(rt, bp, events, "a")
    assert sorted(calls) == ["a", "d", "j"]
    assert again.status == "completed"
    assert again.outputs["j"] == "j"
    assert set(again.node_statuses.values()) == {"completed"}


async def test_replay_from_serves_a_recovered_ancestor_without_rerunning_it() -> None:
    calls: list[str] = []
    bp = bp_of(
        [
            {"id": "a", "uses": "bad", "config": {"fallback": "fb"}},
            {"id": "fb", "uses": "n"},
            {"id": "x", "uses": "n"},
        ],
        [("a", "x")],
    )
    reg = {"bad": counting(calls, fail={"a"}), "n": counting(calls)}
    rt = FlowRuntime(registry=reg, event_bus=EventRecorder())
    first = await rt.run(bp)
    assert calls == ["a", "fb", "x"]
    calls.clear()
    again = await replay_from(rt, bp, rt.event_bus.events, "x")  # type: ignore[union-attr]
    assert calls == ["x"]
    assert (
        again.node_statuses
        == first.node_statuses
        == {
            "a": "recovered",
            "fb": "completed",
            "x": "completed",
        }
    )
    assert again.outputs == first.outputs


async def test_replay_from_after_a_loop_does_not_iterate_again() -> None:
    flow = loop_flow()
    bp = flow.to_blueprint()
    seen: list[int] = []

    async def body(ctx: NodeContext) -> NodeResult:
        seen.append(1)
        return await count_body(ctx)

    reg = {**flow.registry, "body": body}
    rt = FlowRuntime(registry=reg, event_bus=EventRecorder())
    first = await rt.run(bp, {"count": 0})
    assert len(seen) == 3
    seen.clear()
    again = await replay_from(rt, bp, rt.event_bus.events, "after")  # type: ignore[union-attr]
    assert seen == []
    assert again.status == "completed"
    assert again.context["count"] == 3
    assert again.outputs == first.outputs


async def test_replay_from_after_a_batch_does_not_run_the_workers() -> None:
    runs: list[Any] = []

    async def worker(ctx: NodeContext) -> NodeResult:
        runs.append(ctx.input)
        return NodeResult(ctx.input * 10)

    flow = (
        create_flow("batchy")
        .batch("b", worker, input_key="items", worker_uses="worker")
        .node("after", Recorder().node(ECHO), uses="after")
        .edge("b", "after")
    )
    bp = flow.to_blueprint()
    rt = FlowRuntime(registry=flow.registry, event_bus=EventRecorder())
    await rt.run(bp, {"items": [1, 2]})
    assert runs == [1, 2]
    runs.clear()
    again = await replay_from(rt, bp, rt.event_bus.events, "after")  # type: ignore[union-attr]
    assert runs == []
    assert again.outputs["after"] == [10, 20]
    assert again.context["b_gather"] == [10, 20]


async def test_replay_from_past_a_resumed_wait() -> None:
    calls: list[str] = []
    bp = bp_of(
        [{"id": "a", "uses": "n"}, {"id": "gate", "uses": "wait"}, {"id": "b", "uses": "n"}],
        [("a", "gate"), ("gate", "b")],
    )
    rt = FlowRuntime(registry={"n": counting(calls)}, event_bus=EventRecorder())
    first = await rt.run(bp)
    await rt.resume(bp, first, "gate", output=["ok"])
    calls.clear()
    again = await replay_from(rt, bp, rt.event_bus.events, "b")  # type: ignore[union-attr]
    assert calls == ["b"]
    assert again.status == "completed"
    assert again.outputs == {"a": ["a"], "gate": ["ok"], "b": ["ok", "b"]}


async def test_replay_from_a_wait_that_was_never_resumed_awaits_again() -> None:
    calls: list[str] = []
    bp = bp_of(
        [
            {"id": "a", "uses": "n"},
            {"id": "gate", "uses": "wait"},
            {"id": "side", "uses": "n"},
            {"id": "b", "uses": "n"},
        ],
        [("a", "gate"), ("a", "side"), ("gate", "b")],
    )
    rt = FlowRuntime(registry={"n": counting(calls)}, event_bus=EventRecorder())
    await rt.run(bp)
    calls.clear()
    again = await replay_from(rt, bp, rt.event_bus.events, "side")  # type: ignore[union-attr]
    assert calls == ["side"]
    assert again.status == "awaiting"
    assert list(again.awaiting) == ["gate"]
    done = await rt.resume(bp, again, "gate", output=["go"])
    assert done.status == "completed"
    assert calls == ["side", "b"]


async def test_replay_from_validates_its_arguments() -> None:
    bp = bp_of([{"id": "a", "uses": "n"}, {"id": "b", "uses": "n"}], [("a", "b")])
    rt = FlowRuntime(registry={"n": counting([])})
    with pytest.raises(ValueError, match="unknown node 'zz'"):
        await replay_from(rt, bp, [], "zz")
    with pytest.raises(ValueError, match=r"unknown nodes: \['q'\]"):
        await replay_from(rt, bp, [], "a", input_overrides={"q": 1})
    with pytest.raises(ValueError, match=r"served from history .*\['a'\]"):
        await replay_from(rt, bp, [], "b", input_overrides={"a": 1})


async def test_replay_from_a_store() -> None:
    calls: list[str] = []
    bp = bp_of([{"id": "a", "uses": "n"}, {"id": "b", "uses": "n"}], [("a", "b")])
    store = InMemoryEventStore()
    rt = FlowRuntime(registry={"n": counting(calls)}, event_bus=PersistentEventBus(store))
    first = await rt.run(bp, {"x": 1})
    calls.clear()
    again = await replay_from(rt, bp, await store.retrieve(first.execution_id), "b")
    assert calls == ["b"]
    assert again.context["x"] == 1
    assert again.outputs == first.outputs
    assert [s.execution_id for s in await store.list_executions()] == [
        again.execution_id,
        first.execution_id,
    ]
