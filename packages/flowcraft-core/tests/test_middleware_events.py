"""Middleware ordering and powers; the structured event stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import pytest
from flowcraft import (
    FlowcraftEvent,
    FlowRuntime,
    ListenerBus,
    Middleware,
    NodeContext,
    NodeResult,
)
from flowcraft.events import EVENT_TYPES
from flowcraft.middleware import CallNext

# -- local helpers -------------------------------------------------------------------------------


class Recorder:
    """Event bus that keeps every event it receives."""

    def __init__(self) -> None:
        self.events: list[FlowcraftEvent] = []

    def emit(self, event: FlowcraftEvent) -> None:
        """Record one event."""
        self.events.append(event)

    def types(self) -> list[str]:
        """Event types in emission order."""
        return [e.type for e in self.events]


def blueprint(
    nodes: Iterable[tuple[str, str] | dict[str, Any]],
    edges: Iterable[tuple[str, str]] = (),
    bp_id: str = "m",
) -> dict[str, Any]:
    """A blueprint dict from ``(id, uses)`` pairs (or node dicts) and ``(src, tgt)`` edges."""
    return {
        "id": bp_id,
        "nodes": [n if isinstance(n, dict) else {"id": n[0], "uses": n[1]} for n in nodes],
        "edges": [{"source": s, "target": t} for s, t in edges],
    }


class Logging(Middleware):
    """Middleware logging every hook as ``<hook><tag>``."""

    def __init__(self, tag: str, log: list[str]) -> None:
        self.tag = tag
        self.log = log

    async def before_node(self, ctx: NodeContext) -> None:
        """Log ``before<tag>``."""
        self.log.append(f"before{self.tag}")

    async def after_node(
        self, ctx: NodeContext, result: NodeResult | None, error: BaseException | None
    ) -> None:
        """Log ``after<tag>``."""
        self.log.append(f"after{self.tag}")

    async def around_node(self, ctx: NodeContext, call_next: CallNext) -> NodeResult:
        """Log ``around-in<tag>`` and ``around-out<tag>``."""
        self.log.append(f"around-in{self.tag}")
        r = await call_next()
        self.log.append(f"around-out{self.tag}")
        return r


# -- middleware ----------------------------------------------------------------------------------


async def test_middleware_order_is_an_onion() -> None:
    log: list[str] = []

    async def work(ctx: NodeContext) -> NodeResult:
        log.append("exec")
        return NodeResult(1)

    rt = FlowRuntime(registry={"w": work}, middleware=[Logging("1", log), Logging("2", log)])
    r = await rt.run(blueprint([("W", "w")]))
    assert r.status == "completed"
    assert log == [
        "around-in1",
        "around-in2",
        "before1",
        "before2",
        "exec",
        "after1",
        "after2",
        "around-out2",
        "around-out1",
    ]


async def test_hooks_run_once_per_node_even_with_retries() -> None:
    log: list[str] = []

    async def flaky(ctx: NodeContext) -> NodeResult:
        log.append(f"exec{ctx.attempt}")
        if ctx.attempt < 3:
            raise RuntimeError("again")
        return NodeResult("ok")

    rt = FlowRuntime(registry={"f": flaky}, middleware=[Logging("1", log)])
    r = await rt.run(blueprint([{"id": "F", "uses": "f", "config": {"maxRetries": 3}}]))
    assert r.status == "completed"
    assert log == ["around-in1", "before1", "exec1", "exec2", "exec3", "after1", "around-out1"]


async def test_hooks_run_per_node() -> None:
    seen: list[tuple[str, str]] = []

    class Tracker(Middleware):
        async def before_node(self, ctx: NodeContext) -> None:
            seen.append(("before", ctx.node_id))

        async def after_node(
            self, ctx: NodeContext, result: NodeResult | None, error: BaseException | None
        ) -> None:
            seen.append(("after", ctx.node_id))

    async def f(ctx: NodeContext) -> None:
        return None

    rt = FlowRuntime(registry={"f": f}, middleware=[Tracker()])
    await rt.run(blueprint([("A", "f"), ("B", "f")], [("A", "B")]))
    assert seen == [("before", "A"), ("after", "A"), ("before", "B"), ("after", "B")]


async def test_around_can_replace_the_result_after_next() -> None:
    class Replace(Middleware):
        async def around_node(self, ctx: NodeContext, call_next: CallNext) -> NodeResult:
            r = await call_next()
            if ctx.node_id == "A":
                return NodeResult(f"replaced({r.output})")
            return r

    async def a(ctx: NodeContext) -> NodeResult:
        return NodeResult("orig")

    async def b(ctx: NodeContext) -> NodeResult:
        return NodeResult(f"B got {ctx.input}")

    rt = FlowRuntime(registry={"a": a, "b": b}, middleware=[Replace()])
    r = await rt.run(blueprint([("A", "a"), ("B", "b")], [("A", "B")]))
    assert r.status == "completed"
    assert r.outputs == {"A": "replaced(orig)", "B": "B got replaced(orig)"}


async def test_around_can_replace_the_action() -> None:
    class Route(Middleware):
        async def around_node(self, ctx: NodeContext, call_next: CallNext) -> NodeResult:
            r = await call_next()
            return NodeResult(r.output, "right") if ctx.node_id == "S" else r

    async def f(ctx: NodeContext) -> NodeResult:
        return NodeResult(ctx.node_id, "left" if ctx.node_id == "S" else None)

    rt = FlowRuntime(registry={"f": f}, middleware=[Route()])
    bp = blueprint([("S", "f"), ("L", "f"), ("R", "f")])
    bp["edges"] = [
        {"source": "S", "target": "L", "action": "left"},
        {"source": "S", "target": "R", "action": "right"},
    ]
    r = await rt.run(bp)
    assert r.node_statuses == {"S": "completed", "L": "skipped", "R": "completed"}


async def test_around_can_catch_an_error_and_complete_the_node() -> None:
    afters: list[tuple[Any, str | None]] = []

    class Rescue(Middleware):
        async def around_node(self, ctx: NodeContext, call_next: CallNext) -> NodeResult:
            try:
                return await call_next()
            except RuntimeError as exc:
                return NodeResult(f"rescued: {exc}")

        async def after_node(
            self, ctx: NodeContext, result: NodeResult | None, error: BaseException | None
        ) -> None:
            afters.append((result, str(error) if error else None))

    async def boom(ctx: NodeContext) -> None:
        raise RuntimeError("kaput")

    async def next_(ctx: NodeContext) -> NodeResult:
        return NodeResult(ctx.input)

    bus = Recorder()
    rt = FlowRuntime(registry={"b": boom, "n": next_}, middleware=[Rescue()], event_bus=bus)
    r = await rt.run(blueprint([("X", "b"), ("Y", "n")], [("X", "Y")]))
    assert r.status == "completed"
    assert r.errors == []
    assert r.node_statuses == {"X": "completed", "Y": "completed"}
    assert r.outputs == {"X": "rescued: kaput", "Y": "rescued: kaput"}
    assert afters == [(None, "kaput"), (NodeResult("rescued: kaput"), None)]
    assert "node:error" not in bus.types()


async def test_around_can_short_circuit_without_calling_next() -> None:
    log: list[str] = []

    class Cache(Middleware):
        async def around_node(self, ctx: NodeContext, call_next: CallNext) -> NodeResult:
            return NodeResult("cached")

    async def work(ctx: NodeContext) -> NodeResult:
        log.append("exec")
        return NodeResult("fresh")

    inner = Logging("2", log)
    rt = FlowRuntime(registry={"w": work}, middleware=[Logging("1", log), Cache(), inner])
    r = await rt.run(blueprint([("W", "w")]))
    assert r.status == "completed"
    assert r.outputs == {"W": "cached"}
    assert log == ["around-in1", "around-out1"]


async def test_around_result_is_validated() -> None:
    class Bad(Middleware):
        async def around_node(self, ctx: NodeContext, call_next: CallNext) -> Any:
            await call_next()
            return 42

    async def f(ctx: NodeContext) -> None:
        return None

    rt = FlowRuntime(registry={"f": f}, middleware=[Bad()])
    r = await rt.run(blueprint([("N", "f")]))
    assert r.status == "failed"
    assert r.errors[0].name == "InvalidNodeResultError"
    assert "node 'N' returned int" in r.errors[0].message


async def test_after_node_receives_the_error_on_failure() -> None:
    got: list[tuple[str, NodeResult | None, str, str]] = []

    class Watch(Middleware):
        async def after_node(
            self, ctx: NodeContext, result: NodeResult | None, error: BaseException | None
        ) -> None:
            assert error is not None
            got.append((ctx.node_id, result, type(error).__name__, str(error)))

    async def boom(ctx: NodeContext) -> None:
        raise KeyError("missing")

    rt = FlowRuntime(registry={"b": boom}, middleware=[Watch()])
    r = await rt.run(blueprint([{"id": "B", "uses": "b", "config": {"maxRetries": 2}}]))
    assert r.status == "failed"
    assert got == [("B", None, "KeyError", "'missing'")]
    assert r.errors[0].name == "KeyError"


async def test_after_node_receives_the_result_on_success() -> None:
    got: list[tuple[NodeResult | None, BaseException | None]] = []

    class Watch(Middleware):
        async def after_node(
            self, ctx: NodeContext, result: NodeResult | None, error: BaseException | None
        ) -> None:
            got.append((result, error))

    async def f(ctx: NodeContext) -> dict[str, Any]:
        return {"output": 5, "action": "go"}

    rt = FlowRuntime(registry={"f": f}, middleware=[Watch()])
    await rt.run(blueprint([("F", "f")]))
    assert got == [(NodeResult(5, "go"), None)]


async def test_duck_typed_middleware() -> None:
    log: list[str] = []

    class OnlyBefore:
        async def before_node(self, ctx: NodeContext) -> None:
            log.append(f"before:{ctx.node_id}")

    async def f(ctx: NodeContext) -> None:
        log.append("exec")

    rt = FlowRuntime(registry={"f": f}, middleware=[OnlyBefore()])
    r = await rt.run(blueprint([("N", "f")]))
    assert r.status == "completed"
    assert log == ["before:N", "exec"]


async def test_middleware_sees_class_nodes_once() -> None:
    from flowcraft import BaseNode

    log: list[str] = []

    class Node(BaseNode):
        async def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
            log.append(f"exec{ctx.attempt}")
            if ctx.attempt == 1:
                raise RuntimeError("x")
            return None

    rt = FlowRuntime(registry={"c": Node}, middleware=[Logging("", log)])
    r = await rt.run(blueprint([{"id": "C", "uses": "c", "config": {"maxRetries": 2}}]))
    assert r.status == "completed"
    assert log == ["around-in", "before", "exec1", "exec2", "after", "around-out"]


# -- events --------------------------------------------------------------------------------------


async def writer(ctx: NodeContext) -> NodeResult:
    """Writes ``x`` to the context and outputs ``"A"``."""
    await ctx.context.set("x", 1)
    return NodeResult("A")


async def reader(ctx: NodeContext) -> NodeResult:
    """Outputs its input plus ``"B"``."""
    return NodeResult(f"{ctx.input}B")


async def test_golden_events_for_a_two_node_run() -> None:
    bus = Recorder()
    rt = FlowRuntime(registry={"w": writer, "r": reader}, event_bus=bus)
    r = await rt.run(blueprint([("A", "w"), ("B", "r")], [("A", "B")]))
    assert r.status == "completed"
    assert [(e.type, e.payload) for e in bus.events] == [
        ("workflow:start", {"blueprintId": "m"}),
        ("node:start", {"nodeId": "A", "input": None}),
        ("context:change", {"sourceNode": "A", "key": "x", "op": "set", "value": 1}),
        ("node:finish", {"nodeId": "A", "result": {"output": "A"}}),
        ("node:start", {"nodeId": "B", "input": "A"}),
        ("node:finish", {"nodeId": "B", "result": {"output": "AB"}}),
        ("workflow:finish", {"status": "completed", "errors": []}),
    ]
    for e in bus.events:
        assert e.execution_id == r.execution_id
        assert e.blueprint_id == "m"
        assert isinstance(e.timestamp, float)
        assert e.type in EVENT_TYPES
    assert [e.seq for e in bus.events] == list(range(1, 8))


async def test_seq_continues_across_resume() -> None:
    bus = Recorder()
    rt = FlowRuntime(registry={"w": writer, "r": reader}, event_bus=bus)
    bp = blueprint([("A", "w"), ("W", "wait"), ("B", "r")], [("A", "W"), ("W", "B")])
    r1 = await rt.run(bp)
    n1 = len(bus.events)
    r2 = await rt.resume(bp, r1.serialize(), "W", output="w")
    assert r2.status == "completed"
    seqs = [e.seq for e in bus.events]
    assert seqs == list(range(1, len(bus.events) + 1))
    assert bus.events[n1].seq == bus.events[n1 - 1].seq + 1
    assert bus.events[n1].type == "workflow:resume"
    assert {e.execution_id for e in bus.events} == {r1.execution_id}
    assert r2.state.seq == len(bus.events)


async def test_context_change_names_the_writing_node_for_set_and_delete() -> None:
    async def setter(ctx: NodeContext) -> None:
        await ctx.context.set("k", "v")

    async def deleter(ctx: NodeContext) -> None:
        await ctx.context.delete("k")
        await ctx.context.delete("never-there")

    bus = Recorder()
    rt = FlowRuntime(registry={"s": setter, "d": deleter}, event_bus=bus)
    r = await rt.run(blueprint([("S", "s"), ("D", "d")], [("S", "D")]))
    assert r.status == "completed"
    changes = [e.payload for e in bus.events if e.type == "context:change"]
    assert changes == [
        {"sourceNode": "S", "key": "k", "op": "set", "value": "v"},
        {"sourceNode": "D", "key": "k", "op": "delete", "value": None},
    ]
    assert "k" not in r.context


async def test_parallel_writers_are_attributed_correctly() -> None:
    async def w(ctx: NodeContext) -> None:
        await asyncio.sleep(0)
        await ctx.context.set(f"by-{ctx.node_id}", ctx.node_id)
        await asyncio.sleep(0)
        await ctx.context.set("shared", ctx.node_id)

    bus = Recorder()
    rt = FlowRuntime(registry={"w": w}, event_bus=bus)
    await rt.run(blueprint([("P", "w"), ("Q", "w"), ("R", "w")]))
    changes = [e.payload for e in bus.events if e.type == "context:change"]
    assert len(changes) == 6
    for c in changes:
        assert c["value"] == c["sourceNode"]


async def test_error_and_retry_events_carry_the_node() -> None:
    async def boom(ctx: NodeContext) -> None:
        raise ValueError(f"bad {ctx.attempt}")

    bus = Recorder()
    rt = FlowRuntime(registry={"b": boom}, event_bus=bus)
    r = await rt.run(blueprint([{"id": "X", "uses": "b", "config": {"maxRetries": 2}}]))
    assert bus.types() == [
        "workflow:start",
        "node:start",
        "node:retry",
        "node:error",
        "workflow:finish",
    ]
    retry, error, finish = bus.events[2], bus.events[3], bus.events[4]
    assert retry.payload == {"nodeId": "X", "attempt": 1, "delay": 0.0, "error": "bad 1"}
    assert error.payload["nodeId"] == "X"
    assert error.payload["error"]["message"] == "bad 2"
    assert error.payload["error"]["name"] == "ValueError"
    assert error.payload["error"]["executionId"] == r.execution_id
    assert finish.payload["status"] == "failed"
    assert finish.payload["errors"] == [r.errors[0].to_wire()]


async def test_condition_events() -> None:
    async def f(ctx: NodeContext) -> NodeResult:
        return NodeResult(5)

    bus = Recorder()
    rt = FlowRuntime(registry={"f": f}, event_bus=bus)
    bp = blueprint([("S", "f"), ("Big", "f"), ("Small", "f")])
    bp["edges"] = [
        {"source": "S", "target": "Big", "condition": "output > 3"},
        {"source": "S", "target": "Small", "condition": "output <= 3"},
    ]
    r = await rt.run(bp)
    assert r.node_statuses == {"S": "completed", "Big": "completed", "Small": "skipped"}
    evals = [e.payload for e in bus.events if e.type == "edge:evaluate"]
    assert evals == [
        {"source": "S", "target": "Big", "condition": "output > 3", "result": True},
        {"source": "S", "target": "Small", "condition": "output <= 3", "result": False},
    ]
    skipped = [e.payload for e in bus.events if e.type == "node:skipped"]
    assert skipped == [{"nodeId": "Small", "reason": "no taken edge reaches it"}]


async def test_a_raising_event_bus_does_not_fail_the_run(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def __init__(self) -> None:
            self.calls = 0

        def emit(self, event: FlowcraftEvent) -> None:
            self.calls += 1
            raise RuntimeError("bus down")

    bus = Broken()
    rt = FlowRuntime(registry={"w": writer, "r": reader}, event_bus=bus)
    with caplog.at_level(logging.ERROR, logger="flowcraft.runtime"):
        r = await rt.run(blueprint([("A", "w"), ("B", "r")], [("A", "B")]))
    assert r.status == "completed"
    assert r.outputs == {"A": "A", "B": "AB"}
    assert bus.calls == 7
    msgs = [rec.getMessage() for rec in caplog.records if rec.name == "flowcraft.runtime"]
    assert msgs[0] == "event bus failed on workflow:start"
    assert len(msgs) == 7


async def test_async_bus_is_awaited_in_order() -> None:
    class AsyncBus:
        def __init__(self) -> None:
            self.started: list[int] = []
            self.done: list[int] = []

        async def emit(self, event: FlowcraftEvent) -> None:
            self.started.append(event.seq)
            await asyncio.sleep(0)
            self.done.append(event.seq)
            if event.type == "node:start":
                raise RuntimeError("async listener failure is logged")

    bus = AsyncBus()
    rt = FlowRuntime(registry={"w": writer, "r": reader}, event_bus=bus)
    r = await rt.run(blueprint([("A", "w"), ("B", "r")], [("A", "B")]))
    assert r.status == "completed"
    assert bus.started == list(range(1, 8))
    assert bus.done == list(range(1, 8))  # every emit finished before run() returned


async def test_listener_bus_fans_out_and_isolates_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen_sync: list[str] = []
    seen_async: list[str] = []

    def bad(event: FlowcraftEvent) -> None:
        raise RuntimeError("nope")

    async def good(event: FlowcraftEvent) -> None:
        seen_async.append(event.type)

    bus = ListenerBus()
    bus.subscribe(bad)
    unsub = bus.subscribe(lambda e: seen_sync.append(e.type))
    bus.subscribe(good)
    rt = FlowRuntime(registry={"w": writer}, event_bus=bus)
    with caplog.at_level(logging.ERROR, logger="flowcraft.events"):
        r = await rt.run(blueprint([("A", "w")]))
    expected = ["workflow:start", "node:start", "context:change", "node:finish", "workflow:finish"]
    assert r.status == "completed"
    assert seen_sync == expected
    assert seen_async == expected
    assert len([rec for rec in caplog.records if rec.name == "flowcraft.events"]) == 5
    unsub()
    await rt.run(blueprint([("A", "w")]))
    assert seen_sync == expected
    assert seen_async == expected * 2


def test_event_to_wire() -> None:
    ev = FlowcraftEvent("node:start", {"nodeId": "A", "input": 1}, "exec-1", 12.5, 3, "bp")
    assert ev.to_wire() == {
        "type": "node:start",
        "seq": 3,
        "timestamp": 12.5,
        "payload": {"executionId": "exec-1", "blueprintId": "bp", "nodeId": "A", "input": 1},
    }


async def test_no_event_bus_means_no_events_and_same_result() -> None:
    rt = FlowRuntime(registry={"w": writer, "r": reader})
    r = await rt.run(blueprint([("A", "w"), ("B", "r")], [("A", "B")]))
    assert r.status == "completed"
    assert r.context == {"x": 1, "_outputs.A": "A", "_outputs.B": "AB"}
    assert r.state.seq == 0
