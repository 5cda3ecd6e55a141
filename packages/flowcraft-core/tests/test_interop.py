"""Interop with the TypeScript Flowcraft: a blueprint exported by upstream runs unchanged.

The fixture ``integration-tests/fixtures/ts-order-routing.json`` is in the exact JSON shape the
TypeScript Flowcraft exports (camelCase config, UI fields, ``_sourceLocation``); the expected
outcome next to it was derived from upstream's semantics plus our documented bug fixes (its
``notes`` field lists where the two differ).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from flowcraft import (
    FlowRuntime,
    NodeContext,
    NodeResult,
    WorkflowBlueprint,
    load_blueprint,
)
from flowcraft.nodes import NodeFunction

FIXTURES = Path(__file__).resolve().parents[3] / "integration-tests" / "fixtures"
BLUEPRINT = FIXTURES / "ts-order-routing.json"
EXPECTED = FIXTURES / "ts-order-routing.expected.json"


def _expected() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(EXPECTED.read_text(encoding="utf-8"))
    return data


def _implementations() -> tuple[dict[str, NodeFunction], Counter[str], dict[str, Any]]:
    """Python implementations of every ``uses`` key of the fixture, plus call/input records."""
    calls: Counter[str] = Counter()
    inputs: dict[str, Any] = {}

    def record(ctx: NodeContext) -> None:
        calls[ctx.node_id] += 1
        inputs[ctx.node_id] = ctx.input

    async def receive(ctx: NodeContext) -> NodeResult:
        record(ctx)
        return NodeResult({**ctx.input, "status": "received"})

    async def check_stock(ctx: NodeContext) -> NodeResult:
        record(ctx)
        if ctx.attempt == 1:
            raise ConnectionError("inventory service timed out")
        await ctx.context.set("stockAttempts", ctx.attempt)
        return NodeResult({"available": True, "warehouse": ctx.params["warehouse"]}, "in_stock")

    async def backorder(ctx: NodeContext) -> NodeResult:
        record(ctx)
        return NodeResult("backordered")

    async def price(ctx: NodeContext) -> NodeResult:
        record(ctx)
        order = ctx.input["order"]
        total = sum(i["qty"] * i["price"] for i in order["items"])
        return NodeResult({"orderId": order["orderId"], "total": total, "currency": "EUR"})

    async def discount(ctx: NodeContext) -> NodeResult:
        record(ctx)
        return NodeResult({"amount": ctx.input, "code": ctx.params["code"]})

    async def standard(ctx: NodeContext) -> NodeResult:
        record(ctx)
        return NodeResult({"amount": ctx.input["total"], "code": None})

    async def reserve(ctx: NodeContext) -> NodeResult:
        record(ctx)
        raise RuntimeError(f"carrier {ctx.params['carrier']} unavailable")

    async def manual(ctx: NodeContext) -> NodeResult:
        record(ctx)
        assert ctx.error is not None
        await ctx.context.set("shippingError", ctx.error.message)
        order = ctx.input
        return NodeResult(
            {"carrier": "manual", "country": order["country"], "orderId": order["orderId"]}
        )

    async def finalize(ctx: NodeContext) -> NodeResult:
        record(ctx)
        charged = ctx.input["apply-discount"]["amount"]
        shipping = ctx.input["reserve-shipping"]
        order_id = shipping["orderId"]
        await ctx.context.set("confirmation", f"{order_id}/{shipping['carrier']}/{charged:.2f}")
        return NodeResult({"orderId": order_id, "charged": charged, "carrier": shipping["carrier"]})

    registry: dict[str, NodeFunction] = {
        "order.receive": receive,
        "inventory.check": check_stock,
        "inventory.backorder": backorder,
        "pricing.total": price,
        "pricing.discount": discount,
        "pricing.standard": standard,
        "shipping.reserve": reserve,
        "shipping.manual": manual,
        "order.finalize": finalize,
    }
    return registry, calls, inputs


def test_fixture_is_in_upstream_export_shape() -> None:
    """Guard the fixture itself: camelCase config, UI fields and source locations are present."""
    raw = json.loads(BLUEPRINT.read_text(encoding="utf-8"))
    nodes = {n["id"]: n for n in raw["nodes"]}
    assert nodes["check-stock"]["config"] == {"maxRetries": 3, "retryDelay": 10, "timeout": 5000}
    assert nodes["reserve-shipping"]["config"]["fallback"] == "manual-shipping"
    assert nodes["finalize"]["config"] == {"joinStrategy": "all"}
    assert all("_sourceLocation" in n and "position" in n for n in raw["nodes"])
    assert all("_sourceLocation" in e for e in raw["edges"])
    assert raw["metadata"]["version"] == "1.4.0"


def test_ui_fields_are_ignored_and_config_is_mapped() -> None:
    bp = load_blueprint(BLUEPRINT)
    assert bp.id == "ts-order-routing"
    assert bp.version == "1.4.0"
    assert [n.id for n in bp.nodes] == [
        "receive-order",
        "check-stock",
        "backorder",
        "price-order",
        "apply-discount",
        "standard-rate",
        "reserve-shipping",
        "manual-shipping",
        "finalize",
    ]
    check = bp.node("check-stock").config
    assert (check.max_retries, check.retry_delay, check.timeout) == (3, 10, 5000)
    reserve = bp.node("reserve-shipping").config
    assert (reserve.max_retries, reserve.fallback) == (2, "manual-shipping")
    assert bp.node("finalize").config.join_strategy == "all"
    assert bp.node("price-order").inputs == {"order": "receive-order", "stock": "check-stock"}
    wire = bp.to_dict()
    for node in wire["nodes"]:
        assert set(node) <= {"id", "uses", "params", "inputs", "config"}, node
    for edge in wire["edges"]:
        assert set(edge) <= {"source", "target", "action", "condition", "transform"}, edge
    assert wire["metadata"]["name"] == "Order routing"


def test_round_trip_through_to_json_is_lossless() -> None:
    first = load_blueprint(BLUEPRINT)
    text = first.to_json()
    second = load_blueprint(text)
    assert isinstance(second, WorkflowBlueprint)
    assert second == first
    assert second.to_dict() == first.to_dict()
    assert second.to_json() == text
    assert load_blueprint(second.to_json(indent=None)) == first


async def test_runs_to_the_expected_outcome() -> None:
    expected = _expected()
    registry, calls, inputs = _implementations()
    runtime = FlowRuntime(registry=registry)
    result = await runtime.run(load_blueprint(BLUEPRINT), expected["initialContext"])

    assert result.status == expected["status"]
    assert [e.to_wire() for e in result.errors] == expected["errors"]
    assert result.node_statuses == expected["nodeStatuses"]
    assert {n: s.action for n, s in result.state.nodes.items() if s.action is not None} == expected[
        "actions"
    ]
    assert {n: calls[n] for n in expected["calls"]} == expected["calls"]
    assert {n: inputs[n] for n in expected["inputs"]} == expected["inputs"]
    # Fan-in keys come in blueprint edge order.
    assert list(inputs["finalize"]) == list(expected["inputs"]["finalize"])
    outputs = result.outputs
    for node_id, value in expected["outputs"].items():
        assert outputs[node_id] == value, node_id
    for node_id in expected["absentOutputs"]:
        assert node_id not in outputs
    for key, value in expected["context"].items():
        assert result.context[key] == value, key
    assert result.context["order"] == expected["initialContext"]["order"]
    # Outputs live under _outputs.<id> only, never under the bare node id.
    assert not set(result.context) & set(expected["nodeStatuses"])


async def test_outcome_survives_serialization() -> None:
    expected = _expected()
    registry, _, _ = _implementations()
    result = await FlowRuntime(registry=registry).run(
        BLUEPRINT.read_text(encoding="utf-8"), expected["initialContext"]
    )
    back = type(result).deserialize(result.serialize())
    assert back.status == "completed"
    assert back.node_statuses == expected["nodeStatuses"]
    assert back.context == json.loads(json.dumps(result.context))


@pytest.mark.parametrize(
    ("tier", "total_price", "taken", "skipped"),
    [
        ("silver", 100, "standard-rate", "apply-discount"),
        ("gold", 40, "standard-rate", "apply-discount"),
        ("gold", 101, "apply-discount", "standard-rate"),
    ],
)
async def test_conditions_route_the_other_branch(
    tier: str, total_price: int, taken: str, skipped: str
) -> None:
    """The JS-style conditions are mutually exclusive; finalize joins whichever was taken."""
    expected = _expected()
    initial = json.loads(json.dumps(expected["initialContext"]))
    initial["order"]["customer"]["tier"] = tier
    initial["order"]["items"] = [{"sku": "X", "qty": 1, "price": total_price}]
    registry, calls, inputs = _implementations()

    async def finalize(ctx: NodeContext) -> NodeResult:
        calls["finalize"] += 1
        inputs["finalize"] = ctx.input
        return NodeResult(sorted(ctx.input))

    registry["order.finalize"] = finalize
    result = await FlowRuntime(registry=registry).run(load_blueprint(BLUEPRINT), initial)
    assert result.status == "completed"
    assert result.node_statuses[taken] == "completed"
    assert result.node_statuses[skipped] == "skipped"
    assert calls[skipped] == 0
    assert result.outputs["finalize"] == sorted([taken, "reserve-shipping"])
    if taken == "standard-rate":
        assert inputs["finalize"][taken] == {"amount": total_price, "code": None}
    else:
        assert inputs["finalize"][taken] == {"amount": total_price * 0.9, "code": "VIP10"}


@pytest.mark.parametrize(
    ("available", "statuses", "delivered"),
    [
        (True, {"check-stock": "completed", "ship": "completed", "wait-list": "skipped"}, 4),
        (False, {"check-stock": "completed", "ship": "skipped", "wait-list": "completed"}, None),
    ],
)
async def test_conditions_can_name_their_own_source_node(
    available: bool, statuses: dict[str, str], delivered: int | None
) -> None:
    """Upstream conditions and transforms see every output by node id, the source's own too
    (it is stored before the edges are evaluated); so do ours."""
    raw = {
        "id": "self-ref",
        "nodes": [
            {"id": "check-stock", "uses": "stock"},
            {"id": "ship", "uses": "record"},
            {"id": "wait-list", "uses": "record"},
        ],
        "edges": [
            {
                "source": "check-stock",
                "target": "ship",
                "condition": "check-stock.available === true && outputs['check-stock'].qty > 0",
                "transform": "check-stock.qty",
            },
            {"source": "check-stock", "target": "wait-list", "condition": "!check-stock.available"},
        ],
    }
    got: dict[str, Any] = {}

    async def stock(ctx: NodeContext) -> NodeResult:
        return NodeResult({"available": available, "qty": 4 if available else 0})

    async def record(ctx: NodeContext) -> NodeResult:
        got[ctx.node_id] = ctx.input
        return NodeResult()

    result = await FlowRuntime(registry={"stock": stock, "record": record}).run(raw)
    assert result.status == "completed"
    assert result.node_statuses == statuses
    if delivered is not None:
        assert got == {"ship": delivered}
    else:
        assert got == {"wait-list": {"available": False, "qty": 0}}


@pytest.mark.parametrize(
    ("conditions", "status_b", "runs"),
    [
        ((None, None), "completed", 1),
        (("result.output > 5", "result.output < 5"), "completed", 1),
        (("result.output < 5", "result.output > 5"), "completed", 1),
        (("result.output > 0", "result.output > 1"), "completed", 1),
        (("result.output < 0", "result.output < 1"), "skipped", 0),
    ],
)
async def test_parallel_edges_between_the_same_nodes(
    conditions: tuple[str | None, str | None], status_b: str, runs: int
) -> None:
    """Upstream allows several edges between the same two nodes (e.g. one per condition); the
    target runs once if any of them is taken, and is skipped if none is."""
    edges: list[dict[str, Any]] = []
    for cond in conditions:
        e: dict[str, Any] = {"source": "a", "target": "b"}
        if cond is not None:
            e["condition"] = cond
        edges.append(e)
    raw = {"id": "parallel", "nodes": [{"id": "a", "uses": "a"}, {"id": "b", "uses": "b"}]}
    calls: list[Any] = []

    async def a(ctx: NodeContext) -> NodeResult:
        return NodeResult(7)

    async def b(ctx: NodeContext) -> NodeResult:
        calls.append(ctx.input)
        return NodeResult("b")

    result = await FlowRuntime(registry={"a": a, "b": b}).run(raw | {"edges": edges})
    assert result.status == "completed"
    assert result.node_statuses == {"a": "completed", "b": status_b}
    assert calls == [7] * runs
