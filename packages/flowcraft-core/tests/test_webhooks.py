"""The webhook node in the plain in-memory runtime, and the signing / endpoint-id helpers.

Deliveries on distributed backends are in the conformance suite (``WebhookTests``); over real
HTTP in ``test_http.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from flowcraft import FlowRuntime, NodeContext, NodeResult, load_blueprint
from flowcraft.errors import BlueprintValidationError
from flowcraft.scheduler import InMemoryTimerStore, WorkflowScheduler
from flowcraft.webhooks import (
    WebhookRejected,
    new_endpoint_id,
    parse_endpoint_id,
    sign,
    verify,
)
from hypothesis import given
from hypothesis import strategies as st


def _bp(attempts: int = 1, **params: Any) -> Any:
    return load_blueprint(
        {
            "id": "hooked",
            "nodes": [
                {
                    "id": "hook",
                    "uses": "webhook",
                    "params": {"secretName": "S", **params},
                    "config": {"fallback": "fb", "maxRetries": attempts},
                },
                {"id": "after", "uses": "after"},
                {"id": "fb", "uses": "fb"},
            ],
            "edges": [{"source": "hook", "target": "after"}],
        }
    )


async def after(ctx: NodeContext) -> NodeResult:
    return NodeResult(["after", ctx.input])


async def fb(ctx: NodeContext) -> NodeResult:
    return NodeResult(f"fallback: {ctx.error.message if ctx.error else None}")


REGISTRY = {"after": after, "fb": fb}


async def test_a_run_waits_on_its_webhook_and_resumes_with_the_delivery() -> None:
    rt = FlowRuntime(registry=REGISTRY)
    bp = _bp(path="/hooks/pay", event="paid")
    res = await rt.run(bp, {})
    assert res.status == "awaiting"
    d = res.awaiting["hook"]
    assert d["reason"] == "webhook"
    assert d["url"] == f"/hooks/pay/{d['endpointId']}"
    assert d["eventName"] == "paid"
    assert parse_endpoint_id(d["endpointId"]) == (res.execution_id, "hook")
    assert "timeoutAt" not in d
    done = await rt.resume(bp, res, "hook", output={"body": 1})
    assert done.status == "completed"
    assert done.context["_outputs.after"] == ["after", {"body": 1}]
    assert done.node_statuses == {"hook": "completed", "after": "completed", "fb": "skipped"}


async def test_a_webhook_timeout_fails_the_node_through_the_scheduler() -> None:
    """With a timer store, the scheduler fails a webhook whose timeout passed: its fallback
    runs with WebhookTimeoutError and its result goes on as the webhook's."""
    rt = FlowRuntime(registry=REGISTRY, timer_store=InMemoryTimerStore())
    bp = _bp(timeout="50ms")
    rt.blueprints[bp.id] = bp
    res = await rt.run(bp, {})
    assert res.status == "awaiting"
    sched = WorkflowScheduler(rt)
    assert await sched.tick() == 0  # not due yet
    await asyncio.sleep(0.06)
    assert await sched.tick() == 1
    out = sched.results[res.execution_id]
    assert out.status == "completed"
    assert out.node_statuses == {"hook": "recovered", "after": "completed", "fb": "completed"}
    assert out.context["_outputs.fb"].startswith("fallback: webhook '/hooks/")
    assert "received no delivery before" in out.context["_outputs.fb"]


async def test_a_webhook_timeout_rearms_while_retries_remain() -> None:
    """``maxRetries: 2``: the first timeout waits again on a new endpoint (attempt 2), the
    second fails the node and its fallback runs."""
    rt = FlowRuntime(registry=REGISTRY, timer_store=InMemoryTimerStore())
    bp = _bp(attempts=2, timeout="30ms")
    rt.blueprints[bp.id] = bp
    res = await rt.run(bp, {})
    first = res.awaiting["hook"]
    sched = WorkflowScheduler(rt)
    await asyncio.sleep(0.04)
    assert await sched.tick() == 1
    again = sched.results[res.execution_id]
    assert again.status == "awaiting"
    second = again.awaiting["hook"]
    assert (first["attempt"], second["attempt"]) == (1, 2)
    assert second["endpointId"] != first["endpointId"]
    await asyncio.sleep(0.04)
    assert await sched.tick() == 1
    out = sched.results[res.execution_id]
    assert out.node_statuses == {"hook": "recovered", "after": "completed", "fb": "completed"}


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"secretName": None}, "needs params.secretName"),
        ({"path": "hooks"}, "params.path must be a route"),
        ({"timeout": "soon"}, "params.timeout"),
        ({"event": 3}, "params.event must be a string"),
    ],
)
def test_bad_webhook_params_are_refused_at_load(params: dict[str, Any], needle: str) -> None:
    bp = _bp(**params)
    with pytest.raises(BlueprintValidationError, match="webhook node 'hook'") as info:
        FlowRuntime(registry=REGISTRY).prepare(bp)
    assert needle in str(info.value)


def test_signatures_verify_and_refuse() -> None:
    body = b'{"a": 1}'
    now = 1_700_000_000
    header = sign("k", body, now)
    verify(b"k", body, header, now=now)
    verify(b"k", body, header, now=now + 299)
    cases = [
        (b"k", body + b" ", header, now, "does not match"),
        (b"other", body, header, now, "does not match"),
        (b"k", body, header, now + 301, "outside"),
        (b"k", body, header, now - 301, "outside"),
        (b"k", body, None, now, "missing"),
        (b"k", body, "v1=abc", now, "malformed"),
        (b"k", body, f"t={now},v1=00", now, "does not match"),
    ]
    for secret, b, h, at, needle in cases:
        with pytest.raises(WebhookRejected, match=needle) as info:
            verify(secret, b, h, now=at)
        assert info.value.status == 401


@given(run_id=st.text(min_size=1), node_id=st.text(min_size=1))
def test_endpoint_ids_name_their_run_and_node(run_id: str, node_id: str) -> None:
    try:
        eid = new_endpoint_id(run_id, node_id)
    except UnicodeEncodeError:
        return  # a lone surrogate is no valid run id anywhere
    assert parse_endpoint_id(eid) == (run_id, node_id)
    assert "/" not in eid and "?" not in eid
    assert new_endpoint_id(run_id, node_id) != eid  # fresh random part each time


@given(text=st.text())
def test_parsing_any_string_gives_a_pair_or_value_error(text: str) -> None:
    try:
        run_id, node_id = parse_endpoint_id(text)
    except ValueError:
        return
    assert isinstance(run_id, str) and isinstance(node_id, str)


async def test_endpoint_ids_naming_other_runs_or_nodes_are_unknown() -> None:
    """Ids that parse but name a missing run, a node that is not a webhook, a node the
    blueprint lacks, or a run of a blueprint the receiver does not know: 404, nothing else."""
    from flowcraft.distributed.memory import InMemoryAdapter, MemoryBroker
    from flowcraft.webhooks import WebhookReceiver

    broker = MemoryBroker()
    other = load_blueprint({"id": "other", "nodes": [{"id": "x", "uses": "wait"}], "edges": []})
    starter = InMemoryAdapter(broker, runtime_options={"registry": REGISTRY, "blueprints": [other]})
    rid = await starter.start_run("other")
    client = InMemoryAdapter(broker, runtime_options={"registry": REGISTRY, "blueprints": [_bp()]})
    rx = WebhookReceiver(client, env={"S": "k"})
    body = b"{}"
    headers = {"Flowcraft-Signature": sign("k", body)}
    ids = [
        new_endpoint_id("no-such-run", "hook"),
        new_endpoint_id(rid, "x"),  # a run whose blueprint this receiver does not know
    ]
    assert [(await rx.deliver(e, body, headers)).status for e in ids] == [404, 404]
