"""OpenTelemetry middleware: a root span per run leg, a span per node execution, parent/child
structure, links along the real edges, attributes from the NodeContext, error recording."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from flowcraft import (
    FatalNodeError,
    FlowRuntime,
    NodeContext,
    NodeResult,
    create_flow,
    load_blueprint,
)
from flowcraft.history import InMemoryEventStore, PersistentEventBus
from flowcraft.otel import OpenTelemetryMiddleware
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Collects finished spans."""
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A tracer provider exporting to ``exporter`` synchronously."""
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    yield tp
    tp.shutdown()


def runtime(provider: TracerProvider, registry: dict[str, Any], **kw: Any) -> FlowRuntime:
    """A runtime with the middleware attached as middleware and as event bus."""
    otel = OpenTelemetryMiddleware(tracer_provider=provider)
    return FlowRuntime(registry=registry, middleware=[otel], event_bus=otel, **kw)


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    """Finished spans by name (names are unique in these tests)."""
    spans = exporter.get_finished_spans()
    out = {s.name: s for s in spans}
    assert len(out) == len(spans), [s.name for s in spans]
    return out


def links(span: ReadableSpan, spans: dict[str, ReadableSpan]) -> list[str]:
    """Names of the spans ``span`` links to."""
    ids = {s.context.span_id: name for name, s in spans.items()}
    return sorted(ids[lk.context.span_id] for lk in span.links)


async def step(ctx: NodeContext) -> NodeResult:
    """Outputs its node id."""
    return NodeResult(ctx.node_id)


def bp(nodes: list[tuple[str, str]], edges: list[tuple[str, str]], **node_extra: Any) -> Any:
    """Blueprint ``wf`` from (id, uses) pairs and (source, target) pairs."""
    return load_blueprint(
        {
            "id": "wf",
            "nodes": [{"id": i, "uses": u, **node_extra.get(i, {})} for i, u in nodes],
            "edges": [{"source": s, "target": t} for s, t in edges],
        }
    )


async def test_linear_run_has_a_root_and_linked_children(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    rt = runtime(provider, {"step": step})
    r = await rt.run(
        bp([("a", "step"), ("b", "step")], [("a", "b")]), {"runId": "bogus", "blueprintId": "nope"}
    )
    spans = by_name(exporter)
    assert sorted(spans) == ["flowcraft.node a", "flowcraft.node b", "flowcraft.workflow wf"]
    root, a, b = (
        spans["flowcraft.workflow wf"],
        spans["flowcraft.node a"],
        spans["flowcraft.node b"],
    )
    assert root.parent is None
    for child in (a, b):
        assert child.parent is not None
        assert child.parent.span_id == root.context.span_id
        assert child.context.trace_id == root.context.trace_id
    assert links(a, spans) == []
    assert links(b, spans) == ["flowcraft.node a"]
    assert dict(a.attributes or {}) == {
        "flowcraft.execution.id": r.execution_id,
        "flowcraft.blueprint.id": "wf",
        "flowcraft.node.id": "a",
        "flowcraft.node.uses": "step",
        "flowcraft.node.iteration": 0,
        "flowcraft.attempt": 1,
    }
    assert a.status.status_code == StatusCode.OK
    assert dict(root.attributes or {}) == {
        "flowcraft.execution.id": r.execution_id,
        "flowcraft.blueprint.id": "wf",
        "flowcraft.workflow.resumed": False,
        "flowcraft.workflow.status": "completed",
        "flowcraft.workflow.error_count": 0,
    }
    assert root.status.status_code == StatusCode.OK
    assert root.start_time is not None and a.start_time is not None
    assert root.start_time <= a.start_time
    assert root.end_time is not None and b.end_time is not None
    assert root.end_time >= b.end_time


async def test_fan_in_links_to_every_taken_predecessor(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    rt = runtime(provider, {"step": step})
    await rt.run(
        bp(
            [("s", "step"), ("l", "step"), ("r", "step"), ("j", "step")],
            [("s", "l"), ("s", "r"), ("l", "j"), ("r", "j")],
        )
    )
    spans = by_name(exporter)
    assert links(spans["flowcraft.node j"], spans) == ["flowcraft.node l", "flowcraft.node r"]
    assert links(spans["flowcraft.node l"], spans) == ["flowcraft.node s"]


async def test_failure_records_the_exception_and_fails_the_root(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def boom(ctx: NodeContext) -> NodeResult:
        raise FatalNodeError("kaboom")

    rt = runtime(provider, {"step": step, "boom": boom})
    await rt.run(bp([("a", "step"), ("x", "boom")], [("a", "x")]))
    spans = by_name(exporter)
    x = spans["flowcraft.node x"]
    assert x.status.status_code == StatusCode.ERROR
    assert x.status.description == "FatalNodeError: kaboom"
    [event] = x.events
    assert event.name == "exception"
    assert dict(event.attributes or {})["exception.type"] == "flowcraft.errors.FatalNodeError"
    assert dict(event.attributes or {})["exception.message"] == "kaboom"
    root = spans["flowcraft.workflow wf"]
    assert root.status.status_code == StatusCode.ERROR
    assert root.status.description == "kaboom"
    assert dict(root.attributes or {})["flowcraft.workflow.status"] == "failed"
    assert dict(root.attributes or {})["flowcraft.workflow.error_count"] == 1


async def test_retries_are_span_events_and_the_attempt_is_the_last_one(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    calls = {"n": 0}

    async def flaky(ctx: NodeContext) -> NodeResult:
        calls["n"] += 1
        if calls["n"] < 3:
            raise RuntimeError(f"try {calls['n']}")
        return NodeResult("ok")

    rt = runtime(provider, {"flaky": flaky})
    await rt.run(bp([("f", "flaky")], [], f={"config": {"maxRetries": 3}}))
    f = by_name(exporter)["flowcraft.node f"]
    assert dict(f.attributes or {})["flowcraft.attempt"] == 3
    assert [(e.name, dict(e.attributes or {})) for e in f.events] == [
        (
            "flowcraft.retry",
            {
                "flowcraft.attempt": 1,
                "flowcraft.retry.delay": 0.0,
                "flowcraft.retry.error": "try 1",
            },
        ),
        (
            "flowcraft.retry",
            {
                "flowcraft.attempt": 2,
                "flowcraft.retry.delay": 0.0,
                "flowcraft.retry.error": "try 2",
            },
        ),
    ]
    assert f.status.status_code == StatusCode.OK


async def test_fallback_links_to_the_node_it_replaces(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def bad(ctx: NodeContext) -> NodeResult:
        raise RuntimeError("bad")

    rt = runtime(provider, {"bad": bad, "step": step})
    await rt.run(
        bp(
            [("a", "bad"), ("fb", "step"), ("z", "step")],
            [("a", "z")],
            a={"config": {"fallback": "fb"}},
        )
    )
    spans = by_name(exporter)
    assert spans["flowcraft.node a"].status.status_code == StatusCode.ERROR
    assert links(spans["flowcraft.node fb"], spans) == ["flowcraft.node a"]
    assert links(spans["flowcraft.node z"], spans) == ["flowcraft.node fb"]
    assert spans["flowcraft.workflow wf"].status.status_code == StatusCode.OK


async def test_links_look_through_batches(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def double(ctx: NodeContext) -> NodeResult:
        return NodeResult(ctx.input * 2)

    async def make(ctx: NodeContext) -> NodeResult:
        await ctx.context.set("items", [1, 2])
        return NodeResult(None)

    flow = (
        create_flow("wf")
        .node("make", make, uses="make")
        .batch("b", double, input_key="items", worker_uses="double")
        .node("after", step, uses="step")
        .edge("make", "b")
        .edge("b", "after")
    )
    rt = runtime(provider, flow.registry)
    r = await rt.run(flow.to_blueprint())
    assert r.outputs["after"] == "after"
    spans = by_name(exporter)
    assert sorted(spans) == [
        "flowcraft.node after",
        "flowcraft.node b_scatter[0]",
        "flowcraft.node b_scatter[1]",
        "flowcraft.node make",
        "flowcraft.workflow wf",
    ]
    item = spans["flowcraft.node b_scatter[1]"]
    assert dict(item.attributes or {})["flowcraft.node.uses"] == "double"
    assert links(item, spans) == ["flowcraft.node make"]
    assert links(spans["flowcraft.node after"], spans) == [
        "flowcraft.node b_scatter[0]",
        "flowcraft.node b_scatter[1]",
    ]


async def test_loop_iterations_link_to_the_previous_iteration(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async def body(ctx: NodeContext) -> NodeResult:
        n = await ctx.context.get("n", 0)
        await ctx.context.set("n", n + 1)
        return NodeResult(n + 1)

    flow = (
        create_flow("wf")
        .node("start", step, uses="step")
        .node("body", body, uses="body")
        .loop("lp", start="body", end="body", condition="n < 2")
        .edge("start", "body")
    )
    rt = runtime(provider, flow.registry)
    await rt.run(flow.to_blueprint())
    spans = exporter.get_finished_spans()
    bodies = [s for s in spans if s.name == "flowcraft.node body"]
    assert [dict(s.attributes or {})["flowcraft.node.iteration"] for s in bodies] == [0, 1]
    start = next(s for s in spans if s.name == "flowcraft.node start")
    assert [lk.context.span_id for lk in bodies[0].links] == [start.context.span_id]
    assert [lk.context.span_id for lk in bodies[1].links] == [bodies[0].context.span_id]


async def test_a_resumed_run_gets_a_new_root_and_links_across_the_wait(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    rt = runtime(provider, {"step": step})
    flow = bp([("a", "step"), ("gate", "wait"), ("b", "step")], [("a", "gate"), ("gate", "b")])
    first = await rt.run(flow)
    [root1] = [s for s in exporter.get_finished_spans() if s.name == "flowcraft.workflow wf"]
    assert dict(root1.attributes or {})["flowcraft.workflow.status"] == "awaiting"
    assert root1.status.status_code == StatusCode.UNSET
    await rt.resume(flow, first, "gate", output="go")
    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.name == "flowcraft.workflow wf"]
    assert len(roots) == 2
    root2 = roots[1]
    assert dict(root2.attributes or {})["flowcraft.workflow.resumed"] is True
    assert [lk.context.span_id for lk in root2.links] == [root1.context.span_id]
    a = next(s for s in spans if s.name == "flowcraft.node a")
    b = next(s for s in spans if s.name == "flowcraft.node b")
    assert a.parent is not None and a.parent.span_id == root1.context.span_id
    assert b.parent is not None and b.parent.span_id == root2.context.span_id
    assert [lk.context.span_id for lk in b.links] == [a.context.span_id]


async def test_subflow_root_is_a_child_of_the_parent_root(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    child = load_blueprint({"id": "child", "nodes": [{"id": "c", "uses": "step"}], "edges": []})
    rt = runtime(provider, {"step": step}, blueprints=[child])
    parent = bp([("sub", "subflow")], [], sub={"params": {"blueprintId": "child"}})
    await rt.run(parent)
    spans = by_name(exporter)
    proot, croot = spans["flowcraft.workflow wf"], spans["flowcraft.workflow child"]
    assert croot.parent is not None and croot.parent.span_id == proot.context.span_id
    c = spans["flowcraft.node c"]
    assert c.parent is not None and c.parent.span_id == croot.context.span_id


async def test_node_code_spans_nest_under_the_node_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("user")

    async def traced(ctx: NodeContext) -> NodeResult:
        with tracer.start_as_current_span("user work"):
            return NodeResult(1)

    rt = runtime(provider, {"traced": traced})
    await rt.run(bp([("t", "traced")], []))
    spans = by_name(exporter)
    work = spans["user work"]
    assert work.parent is not None
    assert work.parent.span_id == spans["flowcraft.node t"].context.span_id


async def test_without_the_event_role_there_is_no_root(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    otel = OpenTelemetryMiddleware(tracer_provider=provider)
    rt = FlowRuntime(registry={"step": step}, middleware=[otel])
    outer = provider.get_tracer("app")
    with outer.start_as_current_span("request") as req:
        await rt.run(bp([("a", "step"), ("b", "step")], [("a", "b")]))
    spans = by_name(exporter)
    assert sorted(spans) == ["flowcraft.node a", "flowcraft.node b", "request"]
    b = spans["flowcraft.node b"]
    assert b.parent is not None and b.parent.span_id == req.get_span_context().span_id
    assert links(b, spans) == ["flowcraft.node a"]


async def test_with_history_forwarding_to_the_tracer(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    otel = OpenTelemetryMiddleware(tracer_provider=provider, tracer_name="custom")
    store = InMemoryEventStore()
    rt = FlowRuntime(
        registry={"step": step},
        middleware=[otel],
        event_bus=PersistentEventBus(store, forward=otel),
    )
    r = await rt.run(bp([("a", "step")], []))
    spans = by_name(exporter)
    assert sorted(spans) == ["flowcraft.node a", "flowcraft.workflow wf"]
    assert {s.instrumentation_scope.name for s in spans.values() if s.instrumentation_scope} == {
        "custom"
    }
    assert [e.type for e in await store.retrieve(r.execution_id)] == [
        "workflow:start",
        "node:start",
        "node:finish",
        "workflow:finish",
    ]


async def test_the_global_provider_is_the_default(exporter: InMemorySpanExporter) -> None:
    otel = OpenTelemetryMiddleware()
    assert isinstance(otel.tracer, trace.Tracer)
    rt = FlowRuntime(registry={"step": step}, middleware=[otel], event_bus=otel)
    r = await rt.run(bp([("a", "step")], []))
    assert r.status == "completed"
    assert exporter.get_finished_spans() == ()


async def test_node_context_predecessors_follow_the_taken_edges() -> None:
    seen: dict[str, list[tuple[str, ...]]] = {}

    async def note(ctx: NodeContext) -> NodeResult:
        seen.setdefault(ctx.node_id, []).append(ctx.predecessors)
        if ctx.node_id == "bad":
            raise RuntimeError("bad")
        return NodeResult(ctx.node_id)

    flow = load_blueprint(
        {
            "id": "wf",
            "nodes": [
                {"id": "s", "uses": "n"},
                {"id": "l", "uses": "n"},
                {"id": "r", "uses": "n"},
                {"id": "any", "uses": "n", "config": {"joinStrategy": "any"}},
                {"id": "gate", "uses": "wait"},
                {"id": "after", "uses": "n"},
                {"id": "bad", "uses": "n", "config": {"fallback": "fb"}},
                {"id": "fb", "uses": "n"},
                {"id": "z", "uses": "n"},
            ],
            "edges": [
                {"source": "s", "target": "l"},
                {"source": "s", "target": "r"},
                {"source": "l", "target": "any"},
                {"source": "r", "target": "any"},
                {"source": "any", "target": "gate"},
                {"source": "gate", "target": "after"},
                {"source": "s", "target": "bad"},
                {"source": "bad", "target": "z"},
            ],
        }
    )
    rt = FlowRuntime(registry={"n": note}, concurrency=1)
    first = await rt.run(flow)
    await rt.resume(flow, first, "gate", output=1)
    assert seen == {
        "s": [()],
        "l": [("s",)],
        "r": [("s",)],
        "any": [("l",)],
        "bad": [("s",)],
        "fb": [("bad",)],
        "z": [("fb",)],
        "after": [("any",)],  # the wait ran in the first leg: looked through from its inputs
    }


async def test_old_executions_are_evicted(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    otel = OpenTelemetryMiddleware(tracer_provider=provider, max_executions=2)
    rt = FlowRuntime(registry={"step": step}, middleware=[otel], event_bus=otel)
    flow = bp([("a", "step"), ("gate", "wait")], [("a", "gate")])
    for _ in range(3):
        await rt.run(flow)
    assert len(otel._executions) == 2


async def test_the_root_nests_under_the_callers_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    rt = runtime(provider, {"step": step})
    with provider.get_tracer("app").start_as_current_span("request") as req:
        await rt.run(bp([("a", "step")], []))
    spans = by_name(exporter)
    root = spans["flowcraft.workflow wf"]
    assert root.parent is not None
    assert root.parent.span_id == req.get_span_context().span_id
    a = spans["flowcraft.node a"]
    assert a.parent is not None and a.parent.span_id == root.context.span_id
