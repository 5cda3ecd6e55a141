"""Durable primitives: wait/resume, sleep and duration parsing, and the timer scheduler."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import pytest
from flowcraft import (
    FlowcraftEvent,
    FlowRuntime,
    InMemoryTimerStore,
    NodeContext,
    NodeResult,
    ResumeError,
    WorkflowResult,
    WorkflowScheduler,
)
from flowcraft.builtins import parse_duration
from flowcraft.scheduler import Timer

HOUR = 3600.0

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
    edges: Iterable[tuple[str, str] | tuple[str, str, str]] = (),
    bp_id: str = "d",
) -> dict[str, Any]:
    """A blueprint dict from ``(id, uses)`` pairs (or node dicts) and ``(src, tgt[, action])``."""
    out_edges = []
    for e in edges:
        d = {"source": e[0], "target": e[1]}
        if len(e) == 3:
            d["action"] = e[2]
        out_edges.append(d)
    return {
        "id": bp_id,
        "nodes": [n if isinstance(n, dict) else {"id": n[0], "uses": n[1]} for n in nodes],
        "edges": out_edges,
    }


def sleep_node(node_id: str, duration: Any) -> dict[str, Any]:
    """A built-in sleep node."""
    return {"id": node_id, "uses": "sleep", "params": {"duration": duration}}


class Counter:
    """Node implementations that count their calls per node id."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    async def none(self, ctx: NodeContext) -> None:
        """Return None (no output)."""
        self.calls[ctx.node_id] = self.calls.get(ctx.node_id, 0) + 1

    async def tag(self, ctx: NodeContext) -> NodeResult:
        """Output ``<input>|<node id>``."""
        self.calls[ctx.node_id] = self.calls.get(ctx.node_id, 0) + 1
        return NodeResult(f"{ctx.input}|{ctx.node_id}")

    async def inc(self, ctx: NodeContext) -> NodeResult:
        """Output the input plus one (input None counts as 0)."""
        self.calls[ctx.node_id] = self.calls.get(ctx.node_id, 0) + 1
        return NodeResult((ctx.input or 0) + 1)

    def registry(self) -> dict[str, Any]:
        """The three implementations under the keys ``none``, ``tag`` and ``inc``."""
        return {"none": self.none, "tag": self.tag, "inc": self.inc}


def approval_blueprint() -> dict[str, Any]:
    """Start -> Review (wait) -approve-> Ship, -reject-> Rework."""
    return blueprint(
        [
            ("Start", "none"),
            {"id": "Review", "uses": "wait", "params": {"eventName": "review"}},
            ("Ship", "tag"),
            ("Rework", "tag"),
        ],
        [("Start", "Review"), ("Review", "Ship", "approve"), ("Review", "Rework", "reject")],
    )


# -- wait / resume -------------------------------------------------------------------------------


async def test_wait_pauses_the_run_with_details() -> None:
    c = Counter()
    bus = Recorder()
    rt = FlowRuntime(registry=c.registry(), event_bus=bus)
    r = await rt.run(approval_blueprint())
    assert r.status == "awaiting"
    assert r.awaiting == {"Review": {"reason": "external_event", "eventName": "review"}}
    assert r.node_statuses == {
        "Start": "completed",
        "Review": "awaiting",
        "Ship": "pending",
        "Rework": "pending",
    }
    assert r.errors == []
    assert bus.types() == [
        "workflow:start",
        "node:start",
        "node:finish",
        "node:start",
        "node:awaiting",
        "workflow:pause",
        "workflow:finish",
    ]
    assert bus.events[-1].payload["status"] == "awaiting"
    assert bus.events[-2].payload == {"awaitingNodeIds": ["Review"]}


@pytest.mark.parametrize(
    ("action", "ran", "skipped"), [("approve", "Ship", "Rework"), ("reject", "Rework", "Ship")]
)
async def test_resume_routes_on_action(action: str, ran: str, skipped: str) -> None:
    c = Counter()
    rt = FlowRuntime(registry=c.registry())
    bp = approval_blueprint()
    r = await rt.run(bp)
    r2 = await rt.resume(bp, r, "Review", output="looks good", action=action)
    assert r2.status == "completed"
    assert r2.execution_id == r.execution_id
    assert r2.node_statuses == {
        "Start": "completed",
        "Review": "completed",
        ran: "completed",
        skipped: "skipped",
    }
    assert r2.outputs == {"Start": None, "Review": "looks good", ran: f"looks good|{ran}"}
    assert c.calls == {"Start": 1, ran: 1}


async def test_resume_with_unmatched_action_takes_no_edge() -> None:
    c = Counter()
    rt = FlowRuntime(registry=c.registry())
    bp = approval_blueprint()
    r = await rt.run(bp)
    r2 = await rt.resume(bp, r, "Review", output=1, action="escalate")
    assert r2.status == "completed"
    assert r2.node_statuses["Ship"] == "skipped"
    assert r2.node_statuses["Rework"] == "skipped"
    assert c.calls == {"Start": 1}


async def test_one_execution_id_across_sequential_waits() -> None:
    c = Counter()
    bus = Recorder()
    rt = FlowRuntime(registry=c.registry(), event_bus=bus)
    bp = blueprint(
        [("A", "none"), ("W1", "wait"), ("B", "tag"), ("W2", "wait"), ("C", "tag")],
        [("A", "W1"), ("W1", "B"), ("B", "W2"), ("W2", "C")],
    )
    r1 = await rt.run(bp)
    assert r1.status == "awaiting"
    assert list(r1.awaiting) == ["W1"]
    r2 = await rt.resume(bp, r1, "W1", output="x")
    assert r2.status == "awaiting"
    assert list(r2.awaiting) == ["W2"]
    assert r2.outputs["B"] == "x|B"
    r3 = await rt.resume(bp, r2, "W2", output="y")
    assert r3.status == "completed"
    assert r3.outputs == {"A": None, "W1": "x", "B": "x|B", "W2": "y", "C": "y|C"}
    assert r1.execution_id == r2.execution_id == r3.execution_id
    assert {e.execution_id for e in bus.events} == {r1.execution_id}
    # A, which returned None, ran exactly once over three legs (upstream bug B6).
    assert c.calls == {"A": 1, "B": 1, "C": 1}


async def test_resume_defaults_to_first_awaiting_node_in_blueprint_order() -> None:
    c = Counter()
    rt = FlowRuntime(registry=c.registry())
    bp = blueprint([("W2", "wait"), ("W1", "wait"), ("J", "tag")], [("W1", "J"), ("W2", "J")])
    r = await rt.run(bp)
    assert set(r.awaiting) == {"W1", "W2"}
    r2 = await rt.resume(bp, r, output="first")
    assert r2.node_statuses["W2"] == "completed"
    assert r2.node_statuses["W1"] == "awaiting"


async def test_resuming_one_of_two_waits_stays_awaiting_on_the_other() -> None:
    c = Counter()
    bus = Recorder()
    rt = FlowRuntime(registry=c.registry(), event_bus=bus)
    bp = blueprint(
        [("Start", "none"), ("W1", "wait"), ("W2", "wait"), ("Join", "tag")],
        [("Start", "W1"), ("Start", "W2"), ("W1", "Join"), ("W2", "Join")],
    )
    r = await rt.run(bp)
    assert r.status == "awaiting"
    assert set(r.awaiting) == {"W1", "W2"}
    r2 = await rt.resume(bp, r, "W2", output="two")
    assert r2.status == "awaiting"
    assert list(r2.awaiting) == ["W1"]
    assert r2.node_statuses == {
        "Start": "completed",
        "W1": "awaiting",
        "W2": "completed",
        "Join": "pending",
    }
    r3 = await rt.resume(bp, r2, "W1", output="one")
    assert r3.status == "completed"
    assert r3.outputs["Join"] == "{'W1': 'one', 'W2': 'two'}|Join"
    assert c.calls == {"Start": 1, "Join": 1}
    assert bus.types().count("workflow:finish") == 3


async def test_resume_of_a_finished_run_raises() -> None:
    c = Counter()
    rt = FlowRuntime(registry=c.registry())
    bp = approval_blueprint()
    r = await rt.run(bp)
    done = await rt.resume(bp, r, "Review", action="approve")
    with pytest.raises(ResumeError, match=r"is 'completed', not awaiting") as info:
        await rt.resume(bp, done, "Review")
    assert info.value.execution_id == r.execution_id
    assert r.execution_id in str(info.value)


async def test_resume_of_an_unknown_or_non_awaiting_node_names_the_awaiting_nodes() -> None:
    c = Counter()
    rt = FlowRuntime(registry=c.registry())
    bp = blueprint([("W1", "wait"), ("W2", "wait"), ("X", "tag")])
    r = await rt.run(bp)
    with pytest.raises(ResumeError) as info:
        await rt.resume(bp, r, "Nope")
    assert str(info.value) == "node 'Nope' is not awaiting; awaiting: ['W1', 'W2']"
    assert info.value.node_id == "Nope"
    with pytest.raises(ResumeError, match=r"node 'X' is not awaiting; awaiting: \['W1', 'W2'\]"):
        await rt.resume(bp, r, "X")
    assert c.calls == {"X": 1}


async def test_resume_with_another_blueprint_raises() -> None:
    rt = FlowRuntime()
    r = await rt.run(blueprint([("W", "wait")], bp_id="one"))
    with pytest.raises(ResumeError, match="state belongs to blueprint 'one', not 'two'"):
        await rt.resume(blueprint([("W", "wait")], bp_id="two"), r, "W")


async def test_resume_from_serialized_text_and_caller_result_untouched() -> None:
    c = Counter()
    rt = FlowRuntime(registry=c.registry())
    bp = approval_blueprint()
    r = await rt.run(bp)
    before = copy.deepcopy(r.to_dict())
    text = r.serialize()
    assert isinstance(text, str)
    r2 = await rt.resume(bp, text, "Review", output="ok", action="approve")
    assert r2.status == "completed"
    assert r2.execution_id == r.execution_id
    assert r2.outputs["Ship"] == "ok|Ship"
    # Resuming from the object does not mutate it either: it can be resumed again.
    r3 = await rt.resume(bp, r, "Review", output="no", action="reject")
    assert r3.outputs["Rework"] == "no|Rework"
    assert r.to_dict() == before
    assert r.status == "awaiting"
    assert r.node_statuses["Review"] == "awaiting"
    assert "_outputs.Review" not in r.context
    # And the dict form works too.
    r4 = await rt.resume(bp, r.to_dict(), "Review", action="approve")
    assert r4.node_statuses["Ship"] == "completed"


async def test_deserialized_result_matches() -> None:
    c = Counter()
    rt = FlowRuntime(registry=c.registry())
    r = await rt.run(approval_blueprint())
    back = WorkflowResult.deserialize(r.serialize())
    assert back.execution_id == r.execution_id
    assert back.status == "awaiting"
    assert back.node_statuses == r.node_statuses
    assert back.awaiting == r.awaiting
    assert back.context == r.context


async def test_event_sequence_of_a_resume() -> None:
    c = Counter()
    bus = Recorder()
    rt = FlowRuntime(registry=c.registry(), event_bus=bus)
    bp = approval_blueprint()
    r = await rt.run(bp)
    n = len(bus.events)
    await rt.resume(bp, r, "Review", output="v", action="reject")
    tail = bus.events[n:]
    assert [(e.type, e.payload.get("nodeId")) for e in tail] == [
        ("workflow:resume", "Review"),
        ("node:finish", "Review"),
        ("node:skipped", "Ship"),
        ("node:start", "Rework"),
        ("node:finish", "Rework"),
        ("workflow:finish", None),
    ]
    assert tail[0].payload == {"nodeId": "Review", "action": "reject"}
    assert tail[1].payload["result"] == {"output": "v", "action": "reject"}


# -- sleep ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (0, 0.0),
        (1500, 1500.0),
        (2.5, 2.5),
        ("250ms", 250.0),
        ("10s", 10_000.0),
        ("1.5s", 1500.0),
        ("5m", 300_000.0),
        ("2h", 7_200_000.0),
        ("1d", 86_400_000.0),
        ("  3s ", 3000.0),
        ("400", 400.0),
    ],
)
def test_parse_duration(value: Any, ms: float) -> None:
    assert parse_duration(value) == ms


@pytest.mark.parametrize(
    "value", ["abc", "10x", "", "s", "-5s", -1, True, False, None, [1], float("nan"), "inf"]
)
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert f"invalid duration {value!r}" in str(info.value)


async def test_sleep_awaits_with_wake_up_time_and_passes_input_through() -> None:
    c = Counter()
    rt = FlowRuntime(registry=c.registry())
    bp = blueprint([("A", "inc"), sleep_node("Z", "2h"), ("B", "tag")], [("A", "Z"), ("Z", "B")])
    t0 = datetime.now().astimezone()
    r = await rt.run(bp)
    t1 = datetime.now().astimezone()
    assert r.status == "awaiting"
    d = r.awaiting["Z"]
    assert set(d) == {"reason", "wakeUpAt", "duration", "input"}
    assert d["reason"] == "timer"
    assert d["duration"] == 7_200_000.0
    assert d["input"] == 1
    wake = datetime.fromisoformat(d["wakeUpAt"])
    assert t0 + timedelta(hours=2) <= wake <= t1 + timedelta(hours=2)
    r2 = await rt.resume(bp, r, "Z")
    assert r2.status == "completed"
    assert r2.outputs == {"A": 1, "Z": 1, "B": "1|B"}
    # An explicit output replaces the pass-through.
    r3 = await rt.resume(bp, r, "Z", output=9)
    assert r3.outputs == {"A": 1, "Z": 9, "B": "9|B"}


@pytest.mark.parametrize("duration", [0, "0s", "0ms"])
async def test_zero_sleep_completes_immediately(duration: Any) -> None:
    c = Counter()
    rt = FlowRuntime(registry=c.registry())
    bp = blueprint(
        [("A", "inc"), sleep_node("Z", duration), ("B", "inc")], [("A", "Z"), ("Z", "B")]
    )
    r = await rt.run(bp)
    assert r.status == "completed"
    assert r.outputs == {"A": 1, "Z": 1, "B": 2}
    assert r.awaiting == {}


async def test_invalid_sleep_duration_fails_the_node() -> None:
    rt = FlowRuntime()
    r = await rt.run(blueprint([sleep_node("Z", "soon")]))
    assert r.status == "failed"
    assert r.node_statuses == {"Z": "failed"}
    assert r.errors[0].name == "ValueError"
    assert r.errors[0].message.startswith("invalid duration 'soon'")


# -- scheduler -----------------------------------------------------------------------------------


def two_sleeps() -> dict[str, Any]:
    """A -> Z1 (1h) -> B -> Z2 (2h) -> C, all incrementing."""
    return blueprint(
        [("A", "inc"), sleep_node("Z1", "1h"), ("B", "inc"), sleep_node("Z2", "2h"), ("C", "inc")],
        [("A", "Z1"), ("Z1", "B"), ("B", "Z2"), ("Z2", "C")],
        bp_id="two-sleeps",
    )


async def test_scheduler_resumes_two_sequential_sleeps() -> None:
    c = Counter()
    store = InMemoryTimerStore()
    seen: list[str] = []
    rt = FlowRuntime(registry=c.registry(), timer_store=store)
    bp = two_sleeps()
    rt.add_blueprint(bp)
    sched = WorkflowScheduler(rt, interval=0.01, on_result=lambda res: seen.append(res.status))
    r = await rt.run(bp)
    assert r.status == "awaiting"
    assert len(store) == 1
    now = time.time()
    waiter = asyncio.create_task(sched.result(r.execution_id))
    assert await sched.tick(now=now) == 0  # not due yet
    assert await sched.tick(now=now + HOUR + 60) == 1
    assert sched.results[r.execution_id].status == "awaiting"
    assert list(sched.results[r.execution_id].awaiting) == ["Z2"]
    assert len(store) == 1  # the second sleep registered its own timer (upstream bug B11)
    assert not waiter.done()
    assert await sched.tick(now=now + HOUR + 60) == 0  # Z2 is due an hour later
    assert await sched.tick(now=now + 3 * HOUR + 60) == 1
    assert len(store) == 0
    final = await asyncio.wait_for(waiter, 5)
    assert final.status == "completed"
    assert final.execution_id == r.execution_id
    assert final.outputs == {"A": 1, "Z1": 1, "B": 2, "Z2": 2, "C": 3}
    assert (await sched.result(r.execution_id)) is final
    assert seen == ["awaiting", "completed"]
    assert c.calls == {"A": 1, "B": 1, "C": 1}


async def test_scheduler_puts_back_a_timer_whose_resume_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = Counter()
    store = InMemoryTimerStore()
    rt = FlowRuntime(registry=c.registry(), timer_store=store)
    bp = blueprint([("A", "inc"), sleep_node("Z", "1s"), ("B", "inc")], [("A", "Z"), ("Z", "B")])
    r = await rt.run(bp)  # not registered with add_blueprint: the resume cannot find it
    sched = WorkflowScheduler(rt, interval=0.01)
    later = time.time() + 60
    with caplog.at_level(logging.ERROR, logger="flowcraft.scheduler"):
        assert await sched.tick(now=later) == 1
    assert len(store) == 1
    assert sched.results == {}
    assert [rec.getMessage() for rec in caplog.records if rec.name == "flowcraft.scheduler"] == [
        f"resuming {r.execution_id}/Z failed; timer kept"
    ]
    rt.add_blueprint(bp)
    assert await sched.tick(now=later) == 1
    assert len(store) == 0
    done = sched.results[r.execution_id]
    assert done.status == "completed"
    assert done.outputs == {"A": 1, "Z": 1, "B": 2}


async def test_scheduler_background_loop() -> None:
    c = Counter()
    store = InMemoryTimerStore()
    rt = FlowRuntime(registry=c.registry(), timer_store=store)
    bp = blueprint([sleep_node("Z", 1), ("B", "inc")], [("Z", "B")], bp_id="bg")
    rt.add_blueprint(bp)
    sched = WorkflowScheduler(rt, interval=0.01)
    r = await rt.run(bp, start_input=41)
    assert r.status == "awaiting"
    sched.start()
    try:
        final = await sched.result(r.execution_id, timeout=5)
    finally:
        await sched.stop()
    assert final.status == "completed"
    assert final.outputs == {"Z": 41, "B": 42}


def test_scheduler_needs_a_timer_store() -> None:
    with pytest.raises(ValueError, match="needs a timer_store"):
        WorkflowScheduler(FlowRuntime())


async def test_runtime_without_timer_store_registers_nothing() -> None:
    rt = FlowRuntime()
    r = await rt.run(blueprint([sleep_node("Z", "1h")]))
    assert r.status == "awaiting"
    assert rt.timer_store is None


async def test_in_memory_timer_store_claims_due_timers_earliest_first() -> None:
    store = InMemoryTimerStore()
    for i, wake in enumerate([30.0, 10.0, 20.0, 99.0]):
        await store.add(Timer(f"e{i}", "bp", "Z", wake, {}))
    await store.add(Timer("e0", "bp", "Z", 5.0, {}))  # replaces e0's timer
    claimed = await store.claim_due(25.0, limit=2)
    assert [(t.execution_id, t.wake_at) for t in claimed] == [("e0", 5.0), ("e1", 10.0)]
    assert len(store) == 2
    await store.remove("e2", "Z")
    assert [t.execution_id for t in await store.claim_due(1000.0)] == ["e3"]
    assert len(store) == 0
