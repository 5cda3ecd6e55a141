"""One regression test per confirmed upstream bug (B1..B21 in the upstream research notes §5.1).

Each test reproduces the probe scenario that exposed the bug in the TypeScript Flowcraft and
asserts the fixed behaviour exactly. Features covered in depth elsewhere (resume, scheduler,
cancellation, middleware, batches) get a compact regression test here all the same.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from flowcraft import (
    BlueprintValidationError,
    FlowRuntime,
    InMemoryTimerStore,
    ListenerBus,
    Middleware,
    NodeContext,
    NodeResult,
    ResumeError,
    WorkflowResult,
    WorkflowScheduler,
    create_flow,
    load_blueprint,
)
from flowcraft.analysis import find_cycles
from flowcraft.events import FlowcraftEvent
from flowcraft.lint import LintIssue, LintResult, lint_blueprint
from flowcraft.mermaid import generate_mermaid
from flowcraft.middleware import CallNext

Node = Callable[[NodeContext], Awaitable[Any]]


class Events:
    """An event bus that keeps every event it receives."""

    def __init__(self) -> None:
        self.events: list[FlowcraftEvent] = []
        self.bus = ListenerBus([self.events.append])

    def types(self) -> list[str]:
        """Event types in emission order."""
        return [e.type for e in self.events]

    def of(self, type_: str) -> list[dict[str, Any]]:
        """Payloads of the events of one type, in order."""
        return [e.payload for e in self.events if e.type == type_]


class Calls:
    """Builds node functions that record ``(node_id, input)`` per execution."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []

    @property
    def ids(self) -> list[str]:
        """Node ids in execution order."""
        return [n for n, _ in self.log]

    def node(self, output: Any = "<id>", action: str | None = None) -> Node:
        """A node returning ``output`` (default: its own id) and ``action``."""

        async def fn(ctx: NodeContext) -> NodeResult:
            self.log.append((ctx.node_id, ctx.input))
            return NodeResult(ctx.node_id if output == "<id>" else output, action)

        return fn


def bp(
    nodes: list[tuple[str, str] | dict[str, Any]], edges: list[Any] | None = None, **meta: Any
) -> dict[str, Any]:
    """A raw blueprint; nodes are ``(id, uses)`` pairs or dicts, edges ``(src, tgt, extra?)``."""
    ns = [n if isinstance(n, dict) else {"id": n[0], "uses": n[1]} for n in nodes]
    es = [
        {"source": e[0], "target": e[1], **(e[2] if len(e) > 2 else {})}
        if isinstance(e, tuple)
        else e
        for e in edges or []
    ]
    raw: dict[str, Any] = {"id": "wf", "nodes": ns, "edges": es}
    if meta:
        raw["metadata"] = meta
    return raw


# -- B1 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["maybe", None])
async def test_B1_unmatched_action_runs_nothing(action: str | None) -> None:
    """Upstream ran every unconditional successor when no edge matched; here none runs."""
    calls = Calls()
    ev = Events()
    rt = FlowRuntime(
        registry={"decide": calls.node(1, action), "task": calls.node()}, event_bus=ev.bus
    )
    blueprint = bp(
        [("a", "decide"), ("yes", "task"), ("no", "task")],
        [("a", "yes", {"action": "yes"}), ("a", "no", {"action": "no"})],
    )
    result = await rt.run(blueprint)
    assert result.status == "completed"
    assert calls.ids == ["a"]
    assert result.node_statuses == {"a": "completed", "yes": "skipped", "no": "skipped"}
    assert result.context == {"_outputs.a": 1}
    assert ev.types() == [
        "workflow:start",
        "node:start",
        "node:finish",
        "node:skipped",
        "node:skipped",
        "workflow:finish",
    ]
    assert [p["nodeId"] for p in ev.of("node:skipped")] == ["yes", "no"]


async def test_B1_edge_without_action_is_the_default_route() -> None:
    """The documented default route still works: an unknown action takes action-less edges."""
    calls = Calls()
    rt = FlowRuntime(registry={"decide": calls.node(1, "maybe"), "task": calls.node()})
    result = await rt.run(
        bp(
            [("a", "decide"), ("yes", "task"), ("other", "task")],
            [("a", "yes", {"action": "yes"}), ("a", "other")],
        )
    )
    assert calls.ids == ["a", "other"]
    assert result.node_statuses == {"a": "completed", "yes": "skipped", "other": "completed"}


# -- B2 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "runs", "skipped"), [("approve", "ok", "ko"), ("reject", "ko", "ok")]
)
async def test_B2_resume_routes_on_action(action: str, runs: str, skipped: str) -> None:
    """Upstream's in-memory resume ignored the action; here it selects the edge."""
    calls = Calls()
    rt = FlowRuntime(registry={"task": calls.node()})
    blueprint = bp(
        [("approval", "wait"), ("ok", "task"), ("ko", "task")],
        [("approval", "ok", {"action": "approve"}), ("approval", "ko", {"action": "reject"})],
    )
    first = await rt.run(blueprint)
    assert first.status == "awaiting"
    assert first.node_statuses == {"approval": "awaiting", "ok": "pending", "ko": "pending"}
    assert calls.ids == []
    done = await rt.resume(blueprint, first.serialize(), "approval", output="by-ann", action=action)
    assert done.status == "completed"
    assert done.execution_id == first.execution_id
    assert calls.log == [(runs, "by-ann")]
    assert done.node_statuses == {"approval": "completed", runs: "completed", skipped: "skipped"}
    assert done.context == {"_outputs.approval": "by-ann", f"_outputs.{runs}": runs}


# -- B3 ----------------------------------------------------------------------------------------


async def test_B3_fallback_does_not_mask_unrelated_failure() -> None:
    """Upstream reported ``completed`` once any fallback succeeded, hiding other failures."""
    fallback_done = asyncio.Event()

    async def flaky(ctx: NodeContext) -> None:
        raise RuntimeError("a broke")

    async def fallback(ctx: NodeContext) -> NodeResult:
        fallback_done.set()
        return NodeResult("from fallback")

    async def unrelated(ctx: NodeContext) -> None:
        await fallback_done.wait()  # fail only after the fallback has succeeded
        raise RuntimeError("b broke")

    rt = FlowRuntime(registry={"flaky": flaky, "fallback": fallback, "unrelated": unrelated})
    result = await rt.run(
        bp(
            [
                {"id": "a", "uses": "flaky", "config": {"fallback": "fb"}},
                ("fb", "fallback"),
                ("b", "unrelated"),
            ]
        )
    )
    assert result.status == "failed"
    assert result.node_statuses == {"a": "recovered", "fb": "completed", "b": "failed"}
    assert [(e.node_id, e.message, e.name) for e in result.errors] == [
        ("b", "b broke", "RuntimeError")
    ]
    assert result.outputs == {"fb": "from fallback", "a": "from fallback"}


# -- B4 ----------------------------------------------------------------------------------------


async def test_B4_all_join_after_untaken_branch_runs_with_taken_inputs() -> None:
    """Upstream never ran an ``all`` join behind an untaken branch yet reported ``completed``."""
    calls = Calls()
    ev = Events()
    rt = FlowRuntime(
        registry={"decide": calls.node(1, "left"), "task": calls.node()}, event_bus=ev.bus
    )
    result = await rt.run(
        bp(
            [("a", "decide"), ("b", "task"), ("c", "task"), ("d", "task")],
            [
                ("a", "b", {"action": "left"}),
                ("a", "c", {"action": "right"}),
                ("b", "d"),
                ("c", "d"),
            ],
        )
    )
    assert result.status == "completed"
    assert result.node_statuses == {
        "a": "completed",
        "b": "completed",
        "c": "skipped",
        "d": "completed",
    }
    assert calls.log == [("a", None), ("b", 1), ("d", {"b": "b"})]
    assert ev.of("node:skipped") == [{"nodeId": "c", "reason": "no taken edge reaches it"}]
    assert "workflow:stall" not in ev.types()


async def test_B4_skips_propagate_through_joins() -> None:
    """When no branch is taken the join is reported ``skipped`` (never silently left out)."""
    calls = Calls()
    ev = Events()
    rt = FlowRuntime(
        registry={"decide": calls.node(1, "neither"), "task": calls.node()}, event_bus=ev.bus
    )
    result = await rt.run(
        bp(
            [("a", "decide"), ("b", "task"), ("c", "task"), ("d", "task"), ("e", "task")],
            [
                ("a", "b", {"action": "left"}),
                ("a", "c", {"action": "right"}),
                ("b", "d"),
                ("c", "d"),
                ("d", "e"),
            ],
        )
    )
    assert result.status == "completed"
    assert calls.ids == ["a"]
    assert result.node_statuses == {
        "a": "completed",
        "b": "skipped",
        "c": "skipped",
        "d": "skipped",
        "e": "skipped",
    }
    assert [p["nodeId"] for p in ev.of("node:skipped")] == ["b", "c", "d", "e"]


# -- B5 ----------------------------------------------------------------------------------------


async def test_B5_retry_delay_and_timeout_are_honoured() -> None:
    """Upstream ignored ``retryDelay`` and ``timeout``; here both apply per attempt."""
    attempts: dict[str, list[int]] = {"flaky": [], "hang": []}

    async def flaky(ctx: NodeContext) -> NodeResult:
        attempts["flaky"].append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError(f"fail {ctx.attempt}")
        return NodeResult(ctx.attempt)

    async def hang(ctx: NodeContext) -> None:
        attempts["hang"].append(ctx.attempt)
        await asyncio.Event().wait()

    ev = Events()
    rt = FlowRuntime(registry={"flaky": flaky, "hang": hang}, event_bus=ev.bus)
    result = await rt.run(
        bp(
            [
                {
                    "id": "f",
                    "uses": "flaky",
                    "config": {"maxRetries": 3, "retryDelay": 4, "jitter": 0},
                },
            ]
        )
    )
    assert result.status == "completed"
    assert result.outputs == {"f": 3}
    assert attempts["flaky"] == [1, 2, 3]
    # Exponential backoff from retryDelay (ms): 4 ms after attempt 1, 8 ms after attempt 2.
    assert [(p["attempt"], p["delay"]) for p in ev.of("node:retry")] == [(1, 0.004), (2, 0.008)]

    ev.events.clear()
    result = await rt.run(
        bp(
            [
                {
                    "id": "h",
                    "uses": "hang",
                    "config": {
                        "maxRetries": 2,
                        "timeout": 20,
                        "retryDelay": 1,
                        "backoff": "fixed",
                        "jitter": 0,
                    },
                }
            ]
        )
    )
    assert result.status == "failed"
    assert result.node_statuses == {"h": "failed"}
    assert attempts["hang"] == [1, 2]
    assert [(e.name, e.message) for e in result.errors] == [
        ("NodeTimeoutError", "node 'h' attempt 2 timed out after 20 ms")
    ]
    assert [(p["attempt"], p["delay"], p["error"]) for p in ev.of("node:retry")] == [
        (1, 0.001, "node 'h' attempt 1 timed out after 20 ms")
    ]


# -- B6 ----------------------------------------------------------------------------------------


async def test_B6_none_output_is_not_rerun_on_resume() -> None:
    """Upstream inferred completion from ``_outputs.*`` keys, so a node returning nothing lost
    its key in JSON and ran again on resume; here completion is explicit state."""
    calls: list[str] = []

    async def nothing(ctx: NodeContext) -> None:
        calls.append(ctx.node_id)

    rt = FlowRuntime(registry={"nothing": nothing})
    blueprint = bp([("a", "nothing"), ("w", "wait"), ("c", "nothing")], [("a", "w"), ("w", "c")])
    first = await rt.run(blueprint)
    text = first.serialize()
    assert json.loads(text)["context"] == {"_outputs.a": None}
    assert first.node_statuses == {"a": "completed", "w": "awaiting", "c": "pending"}
    done = await rt.resume(blueprint, text)
    assert done.status == "completed"
    assert calls == ["a", "c"]
    assert done.context == {"_outputs.a": None, "_outputs.w": None, "_outputs.c": None}


# -- B7 ----------------------------------------------------------------------------------------


async def test_B7_default_evaluator_runs_comparisons_and_loops() -> None:
    """Upstream's default evaluator could not evaluate comparisons or ``context["id"]``, so
    loops broke at once; the default safe evaluator handles both."""
    seen: list[tuple[str, Any, int]] = []

    async def inc(ctx: NodeContext) -> NodeResult:
        count = await ctx.context.get("count", 0) + 1
        await ctx.context.set("count", count)
        seen.append((ctx.node_id, ctx.input, ctx.iteration))
        return NodeResult(count)

    async def record(ctx: NodeContext) -> NodeResult:
        seen.append((ctx.node_id, ctx.input, ctx.iteration))
        return NodeResult(ctx.input)

    flow = (
        create_flow("loop")
        .node("inc", inc, uses="inc")
        .node("done", record, uses="record")
        .node("big", record, uses="record")
        .node("small", record, uses="record")
        .loop("L", start="inc", end="inc", condition="count < 3")
        .edge("L", "done", transform='context["count"] * 10')
        .edge("done", "big", condition="result.output >= 30 && context.count === 3")
        .edge("done", "small", condition="!(result.output >= 30)")
    )
    result = await FlowRuntime(registry=flow.registry).run(flow.to_blueprint())
    assert result.status == "completed"
    assert seen == [
        ("inc", None, 0),
        ("inc", 1, 1),
        ("inc", 2, 2),
        ("done", 30, 0),
        ("big", 30, 0),
    ]
    assert result.node_statuses == {
        "inc": "completed",
        "done": "completed",
        "big": "completed",
        "small": "skipped",
        "L": "completed",
    }
    assert result.context["count"] == 3


# -- B8 ----------------------------------------------------------------------------------------


async def test_B8_around_node_can_replace_result_and_swallow_error() -> None:
    """Upstream ignored what ``aroundNode`` returned after ``next()`` and could not catch."""

    class Rewrite(Middleware):
        async def around_node(self, ctx: NodeContext, call_next: CallNext) -> NodeResult:
            try:
                res = await call_next()
            except RuntimeError as exc:
                return NodeResult(f"rescued: {exc}")
            return NodeResult(["replaced", res.output])

    calls = Calls()

    async def boom(ctx: NodeContext) -> None:
        calls.log.append((ctx.node_id, ctx.input))
        raise RuntimeError("boom")

    rt = FlowRuntime(registry={"task": calls.node(), "boom": boom}, middleware=[Rewrite()])
    result = await rt.run(
        bp([("a", "task"), ("b", "boom"), ("c", "task")], [("a", "b"), ("b", "c")])
    )
    assert result.status == "completed"
    assert result.errors == []
    assert result.node_statuses == {"a": "completed", "b": "completed", "c": "completed"}
    assert calls.log == [("a", None), ("b", ["replaced", "a"]), ("c", "rescued: boom")]
    assert result.outputs == {
        "a": ["replaced", "a"],
        "b": "rescued: boom",
        "c": ["replaced", "c"],
    }


# -- B9 ----------------------------------------------------------------------------------------


async def test_B9_declarative_subflow_resumes_its_child() -> None:
    """Upstream resumed a ``uses: "subflow"`` node like a wait (the child never continued)."""
    calls = Calls()

    async def echo(ctx: NodeContext) -> NodeResult:
        calls.log.append((ctx.node_id, ctx.input))
        return NodeResult({"echo": ctx.input})

    child = load_blueprint(
        bp([("approve", "wait"), ("finish", "echo")], [("approve", "finish")]) | {"id": "child"}
    )
    parent = bp(
        [
            {"id": "sub", "uses": "subflow", "params": {"blueprintId": "child"}},
            ("after", "echo"),
        ],
        [("sub", "after")],
    )
    rt = FlowRuntime(registry={"echo": echo}, blueprints=[child])
    first = await rt.run(parent)
    assert first.status == "awaiting"
    assert first.node_statuses == {"sub": "awaiting", "after": "pending"}
    assert first.awaiting["sub"]["reason"] == "subflow"
    assert calls.log == []

    done = await rt.resume(parent, first.serialize(), "sub", output="approved")
    assert done.status == "completed"
    assert calls.log == [("finish", "approved"), ("after", {"echo": "approved"})]
    assert done.node_statuses == {"sub": "completed", "after": "completed"}
    assert done.outputs == {"sub": {"echo": "approved"}, "after": {"echo": {"echo": "approved"}}}


# -- B10 ---------------------------------------------------------------------------------------


async def test_B10_resuming_one_of_two_waits_stays_awaiting() -> None:
    """Upstream forced ``completed`` after resuming one wait while another still waited."""
    calls = Calls()
    rt = FlowRuntime(registry={"task": calls.node()})
    blueprint = bp([("w1", "wait"), ("w2", "wait"), ("x", "task")], [("w2", "x")])
    first = await rt.run(blueprint)
    assert first.status == "awaiting"
    assert sorted(first.awaiting) == ["w1", "w2"]

    mid = await rt.resume(blueprint, first, "w1", output=1)
    assert mid.status == "awaiting"
    assert list(mid.awaiting) == ["w2"]
    assert mid.node_statuses == {"w1": "completed", "w2": "awaiting", "x": "pending"}
    assert calls.ids == []
    with pytest.raises(ResumeError, match="'w1' is not awaiting"):
        await rt.resume(blueprint, mid, "w1")

    done = await rt.resume(blueprint, mid, "w2", output=2)
    assert done.status == "completed"
    assert calls.log == [("x", 2)]
    assert done.outputs == {"w1": 1, "w2": 2, "x": "x"}


# -- B11 ---------------------------------------------------------------------------------------


async def test_B11_scheduler_resumes_consecutive_sleeps() -> None:
    """Upstream never re-registered resumed runs: a second sleep was never woken and the stale
    entry was resumed forever."""
    calls = Calls()
    flow = (
        create_flow("sleepy")
        .sleep("s1", "1h")
        .sleep("s2", "1h")
        .node("end", calls.node(), uses="end")
        .edge("s1", "s2")
        .edge("s2", "end")
    )
    blueprint = flow.to_blueprint()
    store = InMemoryTimerStore()
    rt = FlowRuntime(registry=flow.registry, blueprints=[blueprint], timer_store=store)
    scheduler = WorkflowScheduler(rt)
    first = await rt.run(blueprint, {"k": 1})
    assert first.status == "awaiting"
    assert list(first.awaiting) == ["s1"]
    assert len(store) == 1

    later = time.time() + 3 * 3600  # both timers are due by then
    assert await scheduler.tick(later) == 1
    mid = scheduler.results[first.execution_id]
    assert mid.status == "awaiting"
    assert mid.node_statuses == {"s1": "completed", "s2": "awaiting", "end": "pending"}
    assert len(store) == 1

    assert await scheduler.tick(later) == 1
    done = await scheduler.result(first.execution_id)
    assert done.status == "completed"
    assert done.node_statuses == {"s1": "completed", "s2": "completed", "end": "completed"}
    assert calls.ids == ["end"]
    assert len(store) == 0
    assert await scheduler.tick(later) == 0


async def test_B11_resuming_a_sleep_by_hand_drops_its_timer() -> None:
    """A timer left behind after a manual resume would resume the old snapshot again and run
    everything after the sleep a second time."""
    calls = Calls()
    flow = (
        create_flow("nap").sleep("s", "1h").node("end", calls.node(), uses="end").edge("s", "end")
    )
    blueprint = flow.to_blueprint()
    store = InMemoryTimerStore()
    rt = FlowRuntime(registry=flow.registry, blueprints=[blueprint], timer_store=store)
    first = await rt.run(blueprint)
    assert len(store) == 1
    done = await rt.resume(blueprint, first, "s")
    assert done.status == "completed"
    assert len(store) == 0
    assert await WorkflowScheduler(rt).tick(time.time() + 2 * 3600) == 0
    assert calls.ids == ["end"]


# -- B12 / B13 ---------------------------------------------------------------------------------


async def test_B12_batch_chunk_size_limits_items_in_flight() -> None:
    """Upstream crashed with ``chunkSize`` (the array became ``inputs``) and reused one id."""
    active = 0
    peak = 0
    ids: list[str] = []

    async def worker(ctx: NodeContext) -> NodeResult:
        nonlocal active, peak
        ids.append(ctx.node_id)
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.001)
        active -= 1
        return NodeResult(ctx.input * 10)

    flow = create_flow("chunks").batch(
        "b", worker, worker_uses="worker", input_key="items", chunk_size=2, output_key="res"
    )
    result = await FlowRuntime(registry=flow.registry).run(
        flow.to_blueprint(), {"items": [1, 2, 3, 4, 5]}
    )
    assert result.status == "completed"
    assert result.context["res"] == [10, 20, 30, 40, 50]
    assert result.node_statuses == {"b_scatter": "completed", "b_gather": "completed"}
    assert ids == [f"b_scatter[{i}]" for i in range(5)]
    assert peak == 2


async def test_B13_batch_keeps_none_results_and_item_ids_are_deterministic() -> None:
    """Upstream dropped ``undefined`` results (positions shifted) and used random worker ids."""
    runs: list[list[str]] = []

    async def worker(ctx: NodeContext) -> NodeResult:
        runs[-1].append(ctx.node_id)
        return NodeResult(None if ctx.input % 2 == 0 else ctx.input)

    flow = create_flow("nones").batch("b", worker, worker_uses="worker", input_key="items")
    rt = FlowRuntime(registry=flow.registry)
    for _ in range(2):
        runs.append([])
        ev = Events()
        rt.event_bus = ev.bus
        result = await rt.run(flow.to_blueprint(), {"items": [1, 2, 3, 4]})
        assert result.status == "completed"
        assert result.context["b_gather"] == [1, None, 3, None]
        assert result.outputs["b_gather"] == [1, None, 3, None]
        assert ev.of("batch:finish")[0]["results"] == [1, None, 3, None]
        started = [p["nodeId"] for p in ev.of("node:start")]
        assert started == ["b_scatter", *(f"b_scatter[{i}]" for i in range(4)), "b_gather"]
    assert runs[0] == runs[1] == [f"b_scatter[{i}]" for i in range(4)]


# -- B14 ---------------------------------------------------------------------------------------


async def test_B14_cancel_keeps_state_and_finishes_once() -> None:
    """Upstream discarded all state on abort and emitted ``workflow:finish`` twice."""
    started = asyncio.Event()

    async def first(ctx: NodeContext) -> NodeResult:
        await ctx.context.set("first_wrote", 1)
        return NodeResult("A")

    async def blocked(ctx: NodeContext) -> None:
        await ctx.context.set("blocked_wrote", 2)
        started.set()
        await asyncio.Event().wait()

    calls = Calls()
    ev = Events()
    rt = FlowRuntime(
        registry={"first": first, "blocked": blocked, "task": calls.node()}, event_bus=ev.bus
    )
    blueprint = bp([("a", "first"), ("b", "blocked"), ("c", "task")], [("a", "b"), ("b", "c")])
    signal = asyncio.Event()
    task = asyncio.create_task(rt.run(blueprint, signal=signal))
    await started.wait()
    signal.set()
    result = await task
    assert result.status == "cancelled"
    assert result.node_statuses == {"a": "completed", "b": "cancelled", "c": "pending"}
    assert result.context == {"first_wrote": 1, "_outputs.a": "A", "blocked_wrote": 2}
    assert result.errors == []
    assert calls.ids == []
    assert ev.types() == [
        "workflow:start",
        "node:start",
        "context:change",
        "node:finish",
        "node:start",
        "context:change",
        "workflow:finish",
    ]
    assert ev.of("workflow:finish") == [{"status": "cancelled", "errors": []}]


async def test_B14_node_failure_is_failed_not_cancelled() -> None:
    """Upstream reported any non-abort exception as ``cancelled``; a failing node is ``failed``."""

    async def boom(ctx: NodeContext) -> None:
        raise ValueError("bad input")

    ev = Events()
    rt = FlowRuntime(registry={"boom": boom}, event_bus=ev.bus)
    result = await rt.run(bp([("a", "boom")]))
    assert result.status == "failed"
    assert [p["status"] for p in ev.of("workflow:finish")] == ["failed"]
    assert ev.types() == ["workflow:start", "node:start", "node:error", "workflow:finish"]


# -- B15 / B16 ---------------------------------------------------------------------------------


async def test_B15_stop_at_reports_stalled_and_never_completes_unrun_nodes() -> None:
    """Upstream's ``requestPause`` marked an unrun node complete on resume.

    Pausing (``requestPause``) is not implemented in Flowcraft for Python. What exists is
    ``run(..., stop_at=[...])``: it stops once those nodes are done and reports ``stalled``
    with the remaining nodes, which are left ``pending`` (no output). A stalled run cannot be
    resumed, and resuming an awaiting run only completes the node it names: everything after
    it really runs.
    """
    calls = Calls()
    ev = Events()
    rt = FlowRuntime(registry={"task": calls.node()}, event_bus=ev.bus)
    chain = bp([("a", "task"), ("b", "task"), ("c", "task")], [("a", "b"), ("b", "c")])
    result = await rt.run(chain, stop_at=["b"])
    assert result.status == "stalled"
    assert result.node_statuses == {"a": "completed", "b": "completed", "c": "pending"}
    assert calls.ids == ["a", "b"]
    assert result.outputs == {"a": "a", "b": "b"}
    assert ev.of("workflow:stall") == [{"remainingNodes": ["c"]}]
    assert ev.of("workflow:finish") == [{"status": "stalled", "errors": []}]
    with pytest.raises(ResumeError, match="is 'stalled', not awaiting"):
        await rt.resume(chain, result)

    calls.log.clear()
    gated = bp(
        [("a", "task"), ("gate", "wait"), ("b", "task"), ("c", "task")],
        [("a", "gate"), ("gate", "b"), ("b", "c")],
    )
    first = await rt.run(gated)
    assert first.node_statuses == {
        "a": "completed",
        "gate": "awaiting",
        "b": "pending",
        "c": "pending",
    }
    done = await rt.resume(gated, first, output="go")
    assert done.status == "completed"
    assert calls.log == [("a", None), ("b", "go"), ("c", "b")]


async def test_B16_resume_does_not_rerun_ancestors() -> None:
    """Upstream's ``replayFrom`` re-executed every ancestor.

    Replay and ``replayFrom`` are not implemented in Flowcraft for Python; continuing a run is
    done with :meth:`FlowRuntime.resume`, which starts from the saved state: completed ancestors
    are never executed again and keep their outputs, and the execution id is kept.
    """
    calls = Calls()
    rt = FlowRuntime(registry={"task": calls.node()})
    blueprint = bp(
        [("a", "task"), ("b", "task"), ("w", "wait"), ("c", "task")],
        [("a", "b"), ("b", "w"), ("w", "c")],
    )
    first = await rt.run(blueprint)
    assert calls.ids == ["a", "b"]
    done = await rt.resume(blueprint, first.serialize(), "w", output="resumed")
    assert done.status == "completed"
    assert done.execution_id == first.execution_id
    assert calls.log == [("a", None), ("b", "a"), ("c", "resumed")]
    assert done.outputs == {"a": "a", "b": "b", "w": "resumed", "c": "c"}


# -- B17 ---------------------------------------------------------------------------------------


async def test_B17_strict_option_and_loop_limits() -> None:
    """Upstream ignored ``RuntimeOptions.strict``, forbade every builder loop in strict mode,
    and let a loop without an exit spin to a 10 000-iteration guard."""
    calls = Calls()
    strict = FlowRuntime(registry={"task": calls.node()}, strict=True)
    cycle = bp([("a", "task"), ("b", "task")], [("a", "b"), ("b", "a")], cycleEntryPoints=["a"])
    with pytest.raises(BlueprintValidationError) as err:
        await strict.run(cycle)
    assert err.value.problems == ["cycle a -> b -> a (strict mode)"]
    assert calls.ids == []
    # The per-run flag overrides the runtime option; a plain cycle then runs once.
    relaxed = await strict.run(cycle, strict=False)
    assert relaxed.status == "completed"
    assert calls.ids == ["a", "b"]

    runs = 0

    async def body(ctx: NodeContext) -> NodeResult:
        nonlocal runs
        runs += 1
        return NodeResult(runs)

    flow = (
        create_flow("spin")
        .node("body", body, uses="body")
        .loop("L", start="body", end="body", condition="true", max_iterations=5)
    )
    strict.registry.update(flow.registry)
    result = await strict.run(flow.to_blueprint())  # controller-managed loops pass strict
    assert result.status == "failed"
    assert runs == 5
    assert result.node_statuses == {"body": "completed", "L": "failed"}
    assert [(e.name, e.message, e.node_id) for e in result.errors] == [
        ("LoopLimitExceededError", "loop 'L' reached maxIterations=5", "L")
    ]


# -- B18 ---------------------------------------------------------------------------------------


def test_B18_lint_knows_builtin_node_types() -> None:
    """Upstream's linter reported ``wait``/``sleep``/``subflow`` nodes as unimplemented."""
    child = load_blueprint(bp([("x", "task")]) | {"id": "child"})
    blueprint = load_blueprint(
        bp(
            [
                ("t", "task"),
                ("w", "wait"),
                {"id": "s", "uses": "sleep", "params": {"duration": "5s"}},
                {"id": "sf", "uses": "subflow", "params": {"blueprintId": "child"}},
            ],
            [("t", "w"), ("w", "s"), ("s", "sf")],
        )
    )
    assert lint_blueprint(blueprint, registry={"task": object()}, blueprints={"child": child}) == (
        LintResult(True, [])
    )
    assert lint_blueprint(blueprint, registry={}) == LintResult(
        False,
        [
            LintIssue(
                "MISSING_NODE_IMPLEMENTATION",
                "node 't': uses 'task', which is not in the registry",
                "t",
            )
        ],
    )


# -- B19 ---------------------------------------------------------------------------------------


def test_B19_mermaid_escapes_ids_and_cycles_are_reported_once() -> None:
    """Upstream wrote ids and JSON params into labels unescaped and reported cycles twice."""
    blueprint = load_blueprint(
        bp(
            [
                {"id": "fetch user", "uses": "http", "params": {"url": 'https://x/"q"'}},
                ('say "hi"', "say|it"),
            ],
            [("fetch user", 'say "hi"', {"condition": 'n > 1 && x === "<b>"'})],
        )
    )
    assert generate_mermaid(blueprint) == "\n".join(
        [
            "flowchart TD",
            '    n0["fetch user<br/>http"]',
            '    n1["say #quot;hi#quot;<br/>say#124;it"]',
            '    n0 -->|"n #gt; 1 #amp;#amp; x === #quot;#lt;b#gt;#quot;"| n1',
        ]
    )
    graph = load_blueprint(
        bp(
            [(x, "t") for x in "abcd"],
            [
                ("a", "b"),
                ("a", "c"),
                ("b", "d"),
                ("b", "d", {"action": "again"}),
                ("c", "d"),
                ("d", "a"),
            ],
        )
    )
    assert find_cycles(graph) == [["a", "b", "d"], ["a", "c", "d"]]


# -- B20 ---------------------------------------------------------------------------------------


async def test_B20_fallback_receives_input_and_error() -> None:
    """Upstream ran the fallback without input, and ``_catch_error`` was never set in runs."""
    calls = Calls()
    seen: list[tuple[str, Any, Any, Any]] = []

    async def broken(ctx: NodeContext) -> None:
        raise RuntimeError(f"{ctx.node_id} broke on attempt {ctx.attempt}")

    async def fallback(ctx: NodeContext) -> NodeResult:
        assert ctx.error is not None
        seen.append((ctx.node_id, ctx.input, ctx.error.node_id, ctx.error.message))
        return NodeResult({"fallback_for": ctx.error.node_id, "value": ctx.input["v"]})

    ev = Events()
    rt = FlowRuntime(
        registry={
            "src": calls.node({"v": 5}),
            "broken": broken,
            "fallback": fallback,
            "next": calls.node(),
        },
        event_bus=ev.bus,
    )
    result = await rt.run(
        bp(
            [
                ("src", "src"),
                {"id": "b", "uses": "broken", "config": {"maxRetries": 2, "fallback": "fb"}},
                ("fb", "fallback"),
                ("n", "next"),
            ],
            [("src", "b"), ("b", "n")],
        )
    )
    assert result.status == "completed"
    assert result.node_statuses == {
        "src": "completed",
        "b": "recovered",
        "fb": "completed",
        "n": "completed",
    }
    assert seen == [("fb", {"v": 5}, "b", "b broke on attempt 2")]
    assert calls.log == [("src", None), ("n", {"fallback_for": "b", "value": 5})]
    assert ev.of("node:fallback") == [{"nodeId": "b", "fallback": "fb"}]
    assert [p["nodeId"] for p in ev.of("node:start")] == ["src", "b", "fb", "n"]


# -- B21 ---------------------------------------------------------------------------------------


async def test_B21_invalid_blueprints_and_results_are_rejected() -> None:
    """Upstream silently accepted duplicate ids, dangling edges and any node return value."""
    rt = FlowRuntime(registry={"task": Calls().node()})
    with pytest.raises(BlueprintValidationError) as dup:
        await rt.run(bp([("a", "task"), ("a", "task")]))
    assert dup.value.problems == ["nodes[1]: duplicate node id 'a'"]
    with pytest.raises(BlueprintValidationError) as dangling:
        await rt.run(bp([("a", "task")], [("a", "ghost")]))
    assert dangling.value.problems == ["edges[0] (a -> ghost): unknown target 'ghost'"]

    attempts = 0

    async def bad(ctx: NodeContext) -> str:
        nonlocal attempts
        attempts += 1
        return "just a string"

    rt.registry["bad"] = bad
    result: WorkflowResult = await rt.run(
        bp([{"id": "a", "uses": "bad", "config": {"maxRetries": 3}}])
    )
    assert result.status == "failed"
    assert attempts == 1  # an invalid result is not retried
    assert [(e.name, e.node_id) for e in result.errors] == [("InvalidNodeResultError", "a")]
    assert result.errors[0].message.startswith("node 'a' returned str; return NodeResult(")
