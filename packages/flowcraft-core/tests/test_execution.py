"""Execution semantics: retries and backoff, timeouts, class nodes, cancellation, concurrency."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import pytest
from flowcraft import (
    BaseNode,
    FatalNodeError,
    FlowcraftEvent,
    FlowRuntime,
    NodeConfig,
    NodeContext,
    NodeResult,
    ResumeError,
)
from flowcraft.context import InMemoryContext
from flowcraft.errors import InvalidNodeResultError
from flowcraft.executor import retry_delay, run_class, run_function

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

    def marks(self) -> list[str]:
        """``type:nodeId`` for node events, ``type`` for the rest, in emission order."""
        out = []
        for e in self.events:
            nid = e.payload.get("nodeId")
            out.append(f"{e.type}:{nid}" if nid is not None else e.type)
        return out


def blueprint(
    nodes: Iterable[tuple[str, str] | dict[str, Any]],
    edges: Iterable[tuple[str, str]] = (),
    bp_id: str = "t",
) -> dict[str, Any]:
    """A blueprint dict from ``(id, uses)`` pairs (or full node dicts) and ``(src, tgt)`` edges."""
    return {
        "id": bp_id,
        "nodes": [n if isinstance(n, dict) else {"id": n[0], "uses": n[1]} for n in nodes],
        "edges": [{"source": s, "target": t} for s, t in edges],
    }


def node(node_id: str, uses: str, **config: Any) -> dict[str, Any]:
    """A node dict with a ``config`` of wire-named fields."""
    return {"id": node_id, "uses": uses, "config": config}


def node_ctx(node_id: str = "N", **kw: Any) -> NodeContext:
    """A NodeContext for calling executor functions directly."""
    return NodeContext(
        node_id=node_id,
        context=InMemoryContext(),
        input=kw.pop("input", None),
        params=kw.pop("params", {}),
        execution_id="exec-1",
        blueprint_id="t",
        **kw,
    )


class FakeSleep:
    """Records requested delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def failing_until(succeed_on: int, calls: list[int]) -> Callable[[NodeContext], Any]:
    """A node function failing on every attempt before ``succeed_on``; records ctx.attempt."""

    async def fn(ctx: NodeContext) -> NodeResult:
        calls.append(ctx.attempt)
        if len(calls) < succeed_on:
            raise RuntimeError(f"boom{len(calls)}")
        return NodeResult(f"ok@{ctx.attempt}")

    return fn


# -- retries -------------------------------------------------------------------------------------


async def test_max_retries_is_total_attempts_success_on_third() -> None:
    calls: list[int] = []
    bus = Recorder()
    rt = FlowRuntime(registry={"f": failing_until(3, calls)}, event_bus=bus)
    r = await rt.run(blueprint([node("F", "f", maxRetries=3)]))
    assert r.status == "completed"
    assert calls == [1, 2, 3]
    assert r.outputs == {"F": "ok@3"}
    assert r.node_statuses == {"F": "completed"}
    retries = [e.payload for e in bus.events if e.type == "node:retry"]
    assert [(p["nodeId"], p["attempt"], p["error"]) for p in retries] == [
        ("F", 1, "boom1"),
        ("F", 2, "boom2"),
    ]
    assert bus.types() == [
        "workflow:start",
        "node:start",
        "node:retry",
        "node:retry",
        "node:finish",
        "workflow:finish",
    ]


async def test_max_retries_exhausted_fails_with_last_error() -> None:
    calls: list[int] = []
    bus = Recorder()
    rt = FlowRuntime(registry={"f": failing_until(3, calls)}, event_bus=bus)
    r = await rt.run(blueprint([node("F", "f", maxRetries=2)]))
    assert r.status == "failed"
    assert calls == [1, 2]
    assert r.node_statuses == {"F": "failed"}
    assert len(r.errors) == 1
    assert r.errors[0].message == "boom2"
    assert r.errors[0].name == "RuntimeError"
    assert r.errors[0].node_id == "F"
    assert [e.payload["attempt"] for e in bus.events if e.type == "node:retry"] == [1]
    assert bus.types()[-2:] == ["node:error", "workflow:finish"]


async def test_default_is_a_single_attempt() -> None:
    calls: list[int] = []
    rt = FlowRuntime(registry={"f": failing_until(2, calls)})
    r = await rt.run(blueprint([("F", "f")]))
    assert r.status == "failed"
    assert calls == [1]


async def test_fatal_error_stops_retries_at_once() -> None:
    calls: list[int] = []

    async def fatal(ctx: NodeContext) -> None:
        calls.append(ctx.attempt)
        raise FatalNodeError("give up")

    bus = Recorder()
    rt = FlowRuntime(registry={"f": fatal}, event_bus=bus)
    r = await rt.run(blueprint([node("F", "f", maxRetries=5, retryDelay=1000)]))
    assert r.status == "failed"
    assert calls == [1]
    assert r.errors[0].name == "FatalNodeError"
    assert r.errors[0].message == "give up"
    assert r.errors[0].is_fatal is True
    assert "node:retry" not in bus.types()


async def test_invalid_return_value_fails_without_retry() -> None:
    calls: list[int] = []

    async def bad(ctx: NodeContext) -> Any:
        calls.append(ctx.attempt)
        return "just a string"

    bus = Recorder()
    rt = FlowRuntime(registry={"f": bad}, event_bus=bus)
    r = await rt.run(blueprint([node("Bad", "f", maxRetries=3)]))
    assert r.status == "failed"
    assert calls == [1]
    assert r.node_statuses == {"Bad": "failed"}
    err = r.errors[0]
    assert err.name == "InvalidNodeResultError"
    assert "node 'Bad' returned str" in err.message
    assert "node:retry" not in bus.types()


async def test_dict_result_with_unknown_keys_is_invalid() -> None:
    async def bad(ctx: NodeContext) -> Any:
        return {"output": 1, "extra": 2}

    rt = FlowRuntime(registry={"f": bad})
    r = await rt.run(blueprint([("D", "f")]))
    assert r.status == "failed"
    assert r.errors[0].name == "InvalidNodeResultError"
    assert "node 'D' returned dict" in r.errors[0].message


async def test_runtime_sleeps_backoff_between_attempts() -> None:
    calls: list[int] = []
    sleep = FakeSleep()
    bus = Recorder()
    rt = FlowRuntime(registry={"f": failing_until(4, calls)}, event_bus=bus, sleep=sleep)
    r = await rt.run(blueprint([node("F", "f", maxRetries=4, retryDelay=100, jitter=0)]))
    assert r.status == "completed"
    assert calls == [1, 2, 3, 4]
    assert sleep.delays == [0.1, 0.2, 0.4]
    assert [e.payload["delay"] for e in bus.events if e.type == "node:retry"] == [0.1, 0.2, 0.4]


async def test_no_sleep_without_retry_delay() -> None:
    calls: list[int] = []
    sleep = FakeSleep()
    rt = FlowRuntime(registry={"f": failing_until(3, calls)}, sleep=sleep)
    r = await rt.run(blueprint([node("F", "f", maxRetries=3)]))
    assert r.status == "completed"
    assert sleep.delays == []


async def test_class_node_retries_use_the_runtime_sleep() -> None:
    sleep = FakeSleep()
    seen: list[int] = []

    class Flaky(BaseNode):
        async def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
            seen.append(ctx.attempt)
            if ctx.attempt < 3:
                raise RuntimeError("again")
            return NodeResult("done")

    rt = FlowRuntime(registry={"c": Flaky}, sleep=sleep)
    r = await rt.run(
        blueprint([node("C", "c", maxRetries=3, retryDelay=50, backoff="fixed", jitter=0)])
    )
    assert r.status == "completed"
    assert seen == [1, 2, 3]
    assert sleep.delays == [0.05, 0.05]


async def test_run_function_sleeps_and_reports_retries() -> None:
    calls: list[int] = []
    sleep = FakeSleep()
    retried: list[tuple[int, float, str]] = []
    cfg = NodeConfig(max_retries=3, retry_delay=200, jitter=0)
    res = await run_function(
        failing_until(3, calls),
        node_ctx(),
        cfg,
        on_retry=lambda a, d, e: retried.append((a, d, str(e))),
        sleep=sleep,
    )
    assert res == NodeResult("ok@3")
    assert sleep.delays == [0.2, 0.4]
    assert retried == [(1, 0.2, "boom1"), (2, 0.4, "boom2")]


async def test_run_function_attempt_window() -> None:
    # A queue worker runs attempt 2 of 3 only: it is the last attempt of this window.
    calls: list[int] = []
    with pytest.raises(RuntimeError, match="boom1"):
        await run_function(
            failing_until(9, calls),
            node_ctx(),
            NodeConfig(max_retries=3),
            first_attempt=2,
            last_attempt=2,
        )
    assert calls == [2]


# -- retry_delay -----------------------------------------------------------------------------


def test_retry_delay_exponential_doubles() -> None:
    cfg = NodeConfig(retry_delay=100, jitter=0)
    assert [retry_delay(cfg, a) for a in range(1, 6)] == [0.1, 0.2, 0.4, 0.8, 1.6]


def test_retry_delay_fixed() -> None:
    cfg = NodeConfig(retry_delay=250, backoff="fixed", jitter=0)
    assert [retry_delay(cfg, a) for a in range(1, 5)] == [0.25, 0.25, 0.25, 0.25]


def test_retry_delay_capped_by_max_retry_delay() -> None:
    cfg = NodeConfig(retry_delay=100, max_retry_delay=250, jitter=0)
    assert [retry_delay(cfg, a) for a in range(1, 6)] == [0.1, 0.2, 0.25, 0.25, 0.25]
    fixed = NodeConfig(retry_delay=500, max_retry_delay=300, backoff="fixed", jitter=0)
    assert retry_delay(fixed, 1) == 0.3


def test_retry_delay_zero_means_no_wait() -> None:
    assert retry_delay(NodeConfig(), 1) == 0.0
    assert retry_delay(NodeConfig(retry_delay=0, jitter=1), 7) == 0.0


def test_retry_delay_jitter_is_seeded_and_bounded() -> None:
    cfg = NodeConfig(retry_delay=1000, jitter=0.5)
    for attempt in (1, 2, 3):
        base = 1.0 * 2 ** (attempt - 1)
        rng = random.Random(42)
        expected_r = random.Random(42).uniform(-0.5, 0.5)
        d = retry_delay(cfg, attempt, rng)
        assert d == pytest.approx(base * (1 + expected_r))
        values = [retry_delay(cfg, attempt, random.Random(s)) for s in range(200)]
        assert all(base * 0.5 <= v <= base * 1.5 for v in values)
        assert len(set(values)) > 100  # really random, not a constant
    # The same seed gives the same sequence.
    a = random.Random(7)
    b = random.Random(7)
    assert [retry_delay(cfg, 1, a) for _ in range(5)] == [retry_delay(cfg, 1, b) for _ in range(5)]


def test_retry_delay_jitter_never_exceeds_cap() -> None:
    cfg = NodeConfig(retry_delay=1000, max_retry_delay=1000, jitter=1)
    values = [retry_delay(cfg, 3, random.Random(s)) for s in range(200)]
    assert max(values) <= 1.0
    assert min(values) >= 0.0
    assert values.count(1.0) > 0  # upward jitter is clipped at the cap


# -- timeouts ------------------------------------------------------------------------------------


async def test_timeout_cancels_the_attempt_and_retries() -> None:
    log: list[str] = []

    async def slow_then_fast(ctx: NodeContext) -> NodeResult:
        log.append(f"start{ctx.attempt}")
        if ctx.attempt == 1:
            try:
                await asyncio.sleep(30)
                log.append("after-sleep")
            except asyncio.CancelledError:
                log.append("cancelled")
                raise
            finally:
                log.append("finally")
        return NodeResult(ctx.attempt)

    bus = Recorder()
    rt = FlowRuntime(registry={"s": slow_then_fast}, event_bus=bus)
    r = await rt.run(blueprint([node("S", "s", maxRetries=2, timeout=20)]))
    assert r.status == "completed"
    assert r.outputs == {"S": 2}
    assert log == ["start1", "cancelled", "finally", "start2"]
    retry = [e.payload for e in bus.events if e.type == "node:retry"]
    assert len(retry) == 1
    assert retry[0]["attempt"] == 1
    assert retry[0]["error"] == "node 'S' attempt 1 timed out after 20 ms"


async def test_timeout_on_every_attempt_fails_with_node_timeout_error() -> None:
    log: list[str] = []

    async def hang(ctx: NodeContext) -> None:
        try:
            await asyncio.sleep(30)
            log.append("after-sleep")
        finally:
            log.append(f"finally{ctx.attempt}")

    rt = FlowRuntime(registry={"h": hang})
    r = await rt.run(blueprint([node("H", "h", maxRetries=2, timeout=10)]))
    assert r.status == "failed"
    assert log == ["finally1", "finally2"]
    err = r.errors[0]
    assert err.name == "NodeTimeoutError"
    assert err.message == "node 'H' attempt 2 timed out after 10 ms"
    assert err.cause_type == "TimeoutError"


async def test_node_raising_its_own_timeout_error_is_not_an_engine_timeout() -> None:
    calls: list[int] = []

    async def own(ctx: NodeContext) -> None:
        calls.append(ctx.attempt)
        raise TimeoutError("upstream API timed out")

    rt = FlowRuntime(registry={"o": own})
    r = await rt.run(blueprint([node("O", "o", maxRetries=2, timeout=5000)]))
    assert r.status == "failed"
    assert calls == [1, 2]  # an ordinary failure: retried like any other
    assert r.errors[0].name == "TimeoutError"
    assert r.errors[0].message == "upstream API timed out"


# -- class nodes ---------------------------------------------------------------------------------


def lifecycle_class(
    log: list[str],
    *,
    fail_exec: int = 0,
    fallback: Any = None,
    fail_prep: bool = False,
    fail_post: bool = False,
    recover_raises: bool = False,
) -> type[BaseNode]:
    """A BaseNode subclass that logs every phase; ``fail_exec`` failing exec attempts."""

    class Logged(BaseNode):
        async def prep(self, ctx: NodeContext) -> Any:
            log.append("prep")
            if fail_prep:
                raise RuntimeError("prep failed")
            return {"in": ctx.input}

        async def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
            log.append(f"exec{ctx.attempt}")
            if ctx.attempt <= fail_exec:
                raise RuntimeError(f"exec failed {ctx.attempt}")
            return f"exec:{prep_result['in']}"

        async def post(self, exec_result: Any, ctx: NodeContext) -> Any:
            log.append(f"post:{exec_result}")
            if fail_post:
                raise RuntimeError("post failed")
            return NodeResult(f"post({exec_result})")

        async def fallback(self, error: BaseException, ctx: NodeContext) -> Any:
            log.append(f"fallback:{error}")
            if fallback is None:
                raise error
            return fallback

        async def recover(self, error: BaseException, ctx: NodeContext) -> None:
            log.append(f"recover:{error}")
            if recover_raises:
                raise ValueError("recover blew up")

    return Logged


async def test_class_phase_order_with_retried_exec() -> None:
    log: list[str] = []
    rt = FlowRuntime(registry={"c": lifecycle_class(log, fail_exec=2)})
    r = await rt.run(blueprint([node("C", "c", maxRetries=3)]))
    assert r.status == "completed"
    assert log == ["prep", "exec1", "exec2", "exec3", "post:exec:None"]
    assert r.outputs == {"C": "post(exec:None)"}


async def test_class_fallback_after_last_attempt_goes_through_post() -> None:
    log: list[str] = []
    rt = FlowRuntime(registry={"c": lifecycle_class(log, fail_exec=9, fallback="fb")})
    r = await rt.run(blueprint([node("C", "c", maxRetries=2)]))
    assert r.status == "completed"
    assert log == ["prep", "exec1", "exec2", "fallback:exec failed 2", "post:fb"]
    assert r.outputs == {"C": "post(fb)"}
    assert r.node_statuses == {"C": "completed"}


async def test_class_unrecovered_error_calls_recover_once() -> None:
    log: list[str] = []
    rt = FlowRuntime(registry={"c": lifecycle_class(log, fail_exec=9)})
    r = await rt.run(blueprint([node("C", "c", maxRetries=2)]))
    assert r.status == "failed"
    assert log == [
        "prep",
        "exec1",
        "exec2",
        "fallback:exec failed 2",
        "recover:exec failed 2",
    ]
    assert r.errors[0].message == "exec failed 2"


async def test_class_prep_failure_skips_exec_and_post() -> None:
    log: list[str] = []
    rt = FlowRuntime(registry={"c": lifecycle_class(log, fail_prep=True)})
    r = await rt.run(blueprint([node("C", "c", maxRetries=3)]))
    assert r.status == "failed"
    assert log == ["prep", "recover:prep failed"]
    assert r.errors[0].message == "prep failed"


async def test_class_post_failure_is_not_retried_and_recovers() -> None:
    log: list[str] = []
    rt = FlowRuntime(registry={"c": lifecycle_class(log, fail_post=True)})
    r = await rt.run(blueprint([node("C", "c", maxRetries=3)]))
    assert r.status == "failed"
    assert log == ["prep", "exec1", "post:exec:None", "recover:post failed"]


async def test_class_recover_exception_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    rt = FlowRuntime(registry={"c": lifecycle_class(log, fail_exec=9, recover_raises=True)})
    with caplog.at_level(logging.ERROR, logger="flowcraft.executor"):
        r = await rt.run(blueprint([("C", "c")]))
    assert r.status == "failed"
    assert r.errors[0].message == "exec failed 1"  # the node's error, not recover's
    assert log[-1] == "recover:exec failed 1"
    records = [rec for rec in caplog.records if rec.name == "flowcraft.executor"]
    assert [rec.getMessage() for rec in records] == ["recover() of node 'C' raised"]
    assert records[0].exc_info is not None
    assert str(records[0].exc_info[1]) == "recover blew up"


async def test_class_fatal_error_skips_remaining_exec_attempts() -> None:
    log: list[str] = []

    class Fatal(BaseNode):
        async def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
            log.append(f"exec{ctx.attempt}")
            raise FatalNodeError("stop now")

        async def recover(self, error: BaseException, ctx: NodeContext) -> None:
            log.append(f"recover:{error}")

    rt = FlowRuntime(registry={"c": Fatal})
    r = await rt.run(blueprint([node("C", "c", maxRetries=4)]))
    assert r.status == "failed"
    assert log == ["exec1", "recover:stop now"]
    assert r.errors[0].name == "FatalNodeError"


async def test_class_gets_params_and_node_id_and_a_new_instance_each_time() -> None:
    seen: list[tuple[int, dict[str, Any], str, int]] = []
    instances: list[BaseNode] = []

    class Inspect(BaseNode):
        async def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
            instances.append(self)
            seen.append((id(self), dict(self.params), self.node_id, ctx.attempt))
            if ctx.attempt == 1:
                raise RuntimeError("retry me")
            return NodeResult(self.node_id)

    rt = FlowRuntime(registry={"i": Inspect})
    bp = blueprint(
        [
            {"id": "X", "uses": "i", "params": {"k": 1}, "config": {"maxRetries": 2}},
            {"id": "Y", "uses": "i", "params": {"k": 2}, "config": {"maxRetries": 2}},
        ],
        [("X", "Y")],
    )
    r1 = await rt.run(bp)
    r2 = await rt.run(bp)
    assert r1.status == r2.status == "completed"
    assert r1.outputs == {"X": "X", "Y": "Y"}
    assert [(p, n, a) for _, p, n, a in seen] == [
        ({"k": 1}, "X", 1),
        ({"k": 1}, "X", 2),
        ({"k": 2}, "Y", 1),
        ({"k": 2}, "Y", 2),
    ] * 2
    # Retries of one execution reuse its instance; every execution gets a new one.
    distinct = [instances[i] for i in (0, 2, 4, 6)]
    assert all(instances[i] is instances[i + 1] for i in (0, 2, 4, 6))
    assert len({id(x) for x in distinct}) == 4
    assert all(type(x) is Inspect for x in distinct)


async def test_run_class_defaults_pass_input_through() -> None:
    class Echo(BaseNode):
        async def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
            return {"output": prep_result}

    res = await run_class(Echo, node_ctx(input=41), NodeConfig())
    assert res == NodeResult(41)


async def test_run_class_invalid_post_result_raises_naming_node() -> None:
    class Bad(BaseNode):
        async def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
            return 3

    with pytest.raises(InvalidNodeResultError, match="node 'Q' returned int"):
        await run_class(Bad, node_ctx("Q"), NodeConfig(max_retries=3))


# -- cancellation --------------------------------------------------------------------------------


def cancellable_chain(log: list[str], started: asyncio.Event, ids: list[str]) -> dict[str, Any]:
    """Registry for A -> B -> C where B blocks until cancelled; records B's execution id."""

    async def a(ctx: NodeContext) -> NodeResult:
        await ctx.context.set("fromA", 1)
        return NodeResult("a-out")

    async def b(ctx: NodeContext) -> NodeResult:
        ids.append(ctx.execution_id)
        log.append("b-start")
        started.set()
        try:
            await asyncio.sleep(30)
            log.append("b-after-sleep")
        except asyncio.CancelledError:
            log.append("b-cancelled")
            raise
        return NodeResult("b-out")

    async def c(ctx: NodeContext) -> NodeResult:
        log.append("c")
        return NodeResult("c-out")

    return {"a": a, "b": b, "c": c}


async def test_cancel_by_execution_id_keeps_completed_outputs() -> None:
    log: list[str] = []
    ids: list[str] = []
    started = asyncio.Event()
    bus = Recorder()
    rt = FlowRuntime(registry=cancellable_chain(log, started, ids), event_bus=bus)
    bp = blueprint([("A", "a"), ("B", "b"), ("C", "c")], [("A", "B"), ("B", "C")])
    task = asyncio.create_task(rt.run(bp))
    await asyncio.wait_for(started.wait(), 5)
    assert rt.cancel(ids[0]) is True
    r = await asyncio.wait_for(task, 5)
    assert r.status == "cancelled"
    assert r.execution_id == ids[0]
    assert log == ["b-start", "b-cancelled"]
    assert r.node_statuses == {"A": "completed", "B": "cancelled", "C": "pending"}
    assert r.context == {"fromA": 1, "_outputs.A": "a-out"}
    assert bus.types().count("workflow:finish") == 1
    finish = bus.events[-1]
    assert finish.type == "workflow:finish"
    assert finish.payload["status"] == "cancelled"
    assert rt.cancel(ids[0]) is False  # the run is over
    assert rt.cancel("no-such-run") is False


async def test_cancel_from_inside_the_running_node() -> None:
    log: list[str] = []
    holder: dict[str, FlowRuntime] = {}

    async def a(ctx: NodeContext) -> NodeResult:
        return NodeResult(1)

    async def self_cancel(ctx: NodeContext) -> NodeResult:
        holder["rt"].cancel(ctx.execution_id)
        try:
            await asyncio.sleep(30)
            log.append("after")
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        return NodeResult(2)

    bus = Recorder()
    rt = holder["rt"] = FlowRuntime(registry={"a": a, "k": self_cancel}, event_bus=bus)
    bp = blueprint([("A", "a"), ("K", "k"), ("Z", "a")], [("A", "K"), ("K", "Z")])
    r = await asyncio.wait_for(rt.run(bp), 5)
    assert r.status == "cancelled"
    assert log == ["cancelled"]
    assert r.node_statuses == {"A": "completed", "K": "cancelled", "Z": "pending"}
    assert r.outputs == {"A": 1}
    assert bus.types() == [
        "workflow:start",
        "node:start",
        "node:finish",
        "node:start",
        "workflow:finish",
    ]


async def test_cancel_during_a_resumed_leg_does_not_leak_into_the_caller() -> None:
    holder: dict[str, FlowRuntime] = {}

    async def self_cancel(ctx: NodeContext) -> NodeResult:
        holder["rt"].cancel(ctx.execution_id)
        await asyncio.sleep(30)
        return NodeResult(1)

    rt = holder["rt"] = FlowRuntime(registry={"k": self_cancel})
    bp = blueprint([("W", "wait"), ("K", "k")], [("W", "K")])
    r1 = await rt.run(bp)
    # Awaited directly in this task: the engine cancels (and un-cancels) the caller's task.
    r2 = await rt.resume(bp, r1, "W", output="go")
    assert r2.status == "cancelled"
    assert r2.execution_id == r1.execution_id
    assert r2.node_statuses == {"W": "completed", "K": "cancelled"}
    assert r2.outputs == {"W": "go"}
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # would raise CancelledError if the cancellation leaked
    with pytest.raises(ResumeError, match="is 'cancelled', not awaiting"):
        await rt.resume(bp, r2, "W")


async def test_cancel_with_signal_cancels_parallel_nodes() -> None:
    log: list[str] = []
    signal = asyncio.Event()

    async def slow(ctx: NodeContext) -> NodeResult:
        log.append(f"{ctx.node_id}+")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            log.append(f"{ctx.node_id}!")
            raise
        log.append(f"{ctx.node_id}-")
        return NodeResult(ctx.node_id)

    async def trigger(ctx: NodeContext) -> NodeResult:
        log.append("T+")
        signal.set()
        await asyncio.sleep(30)
        log.append("T-")
        return NodeResult("T")

    bus = Recorder()
    rt = FlowRuntime(registry={"s": slow, "t": trigger}, event_bus=bus, concurrency=2)
    bp = blueprint([("A", "s"), ("T", "t"), ("C", "s"), ("D", "s")])
    r = await asyncio.wait_for(rt.run(bp, signal=signal), 5)
    assert r.status == "cancelled"
    assert r.node_statuses == {"A": "cancelled", "T": "cancelled", "C": "pending", "D": "pending"}
    assert log == ["A+", "T+", "A!"]
    assert bus.types() == ["workflow:start", "node:start", "node:start", "workflow:finish"]
    assert r.errors == []


async def test_signal_set_before_run_starts_cancels_immediately() -> None:
    calls: list[str] = []

    async def f(ctx: NodeContext) -> NodeResult:
        calls.append(ctx.node_id)
        await asyncio.sleep(30)
        return NodeResult(1)

    signal = asyncio.Event()
    signal.set()
    rt = FlowRuntime(registry={"f": f})
    r = await asyncio.wait_for(rt.run(blueprint([("A", "f")]), signal=signal), 5)
    assert r.status == "cancelled"
    assert r.node_statuses == {"A": "cancelled"}
    assert r.outputs == {}


async def test_outer_task_cancellation_propagates_and_leaves_no_tasks() -> None:
    log: list[str] = []
    ids: list[str] = []

    async def hang(ctx: NodeContext) -> NodeResult:
        ids.append(ctx.execution_id)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            log.append(f"{ctx.node_id}!")
            raise
        return NodeResult(1)

    rt = FlowRuntime(registry={"h": hang})
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(rt.run(blueprint([("A", "h"), ("B", "h")])), 0.05)
    assert sorted(log) == ["A!", "B!"]
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert rt.cancel(ids[0]) is False  # no longer registered as active

    # A single (inline) node is cancelled the same way.
    log.clear()
    task = asyncio.create_task(rt.run(blueprint([("A", "h")])))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["A!"]
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == {asyncio.current_task()}


# -- concurrency ---------------------------------------------------------------------------------


async def test_sliding_pool_starts_next_node_as_soon_as_a_slot_frees() -> None:
    gate = asyncio.Event()
    active = 0
    peak = 0

    def make(body: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[NodeContext], Any]:
        async def fn(ctx: NodeContext) -> NodeResult:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            try:
                await body()
            finally:
                active -= 1
            return NodeResult(ctx.node_id)

        return fn

    async def wait_gate() -> None:
        await gate.wait()

    async def quick() -> None:
        await asyncio.sleep(0)

    async def release() -> None:
        gate.set()

    bus = Recorder()
    reg = {"slow": make(wait_gate), "fast": make(quick), "rel": make(release)}
    rt = FlowRuntime(registry=reg, event_bus=bus, concurrency=2)
    bp = blueprint([("A", "slow"), ("B", "fast"), ("C", "fast"), ("D", "rel")])
    # With waves (A+B, then C+D) A would wait forever for D: the timeout turns that into a failure.
    r = await asyncio.wait_for(rt.run(bp), 5)
    assert r.status == "completed"
    assert peak == 2
    m = [x for x in bus.marks() if x.startswith("node:")]
    assert m == [
        "node:start:A",
        "node:start:B",
        "node:finish:B",
        "node:start:C",
        "node:finish:C",
        "node:start:D",
        "node:finish:D",
        "node:finish:A",
    ]


@pytest.mark.parametrize("limit", [1, 3])
async def test_never_more_than_concurrency_nodes_at_once(limit: int) -> None:
    active = 0
    peak = 0

    async def work(ctx: NodeContext) -> NodeResult:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.001)
        active -= 1
        return NodeResult(ctx.node_id)

    rt = FlowRuntime(registry={"w": work})
    ids = [f"N{i}" for i in range(8)]
    bp = blueprint([("S", "w"), *((i, "w") for i in ids), ("J", "w")])
    bp["edges"] = [{"source": "S", "target": i} for i in ids] + [
        {"source": i, "target": "J"} for i in ids
    ]
    r = await rt.run(bp, concurrency=limit)
    assert r.status == "completed"
    assert peak == limit
    assert set(r.outputs) == {"S", "J", *ids}


def test_concurrency_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="concurrency must be >= 1, got 0"):
        FlowRuntime(concurrency=0)


async def test_run_concurrency_below_one_is_rejected() -> None:
    rt = FlowRuntime(registry={})
    with pytest.raises(ValueError, match="concurrency must be >= 1, got -1"):
        await rt.run(blueprint([("W", "wait")]), concurrency=-1)


async def test_independent_branch_keeps_running_while_another_waits() -> None:
    async def step(ctx: NodeContext) -> NodeResult:
        await asyncio.sleep(0)
        return NodeResult(f"{ctx.input}>{ctx.node_id}" if ctx.input else ctx.node_id)

    bus = Recorder()
    rt = FlowRuntime(registry={"s": step}, event_bus=bus)
    bp = blueprint(
        [("W", "wait"), ("After", "s"), ("B1", "s"), ("B2", "s"), ("B3", "s")],
        [("W", "After"), ("B1", "B2"), ("B2", "B3")],
    )
    r = await rt.run(bp)
    assert r.status == "awaiting"
    assert r.node_statuses == {
        "W": "awaiting",
        "After": "pending",
        "B1": "completed",
        "B2": "completed",
        "B3": "completed",
    }
    assert r.outputs == {"B1": "B1", "B2": "B1>B2", "B3": "B1>B2>B3"}
    marks = bus.marks()
    assert marks.index("node:awaiting:W") < marks.index("node:finish:B3")
    assert list(r.awaiting) == ["W"]
