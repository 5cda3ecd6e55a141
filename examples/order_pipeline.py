"""Example: an order pipeline with routing, a parallel fan-out/fan-in, retries, a fallback and a
batch.

``python examples/order_pipeline.py`` runs it in memory. ``scripts/demo`` runs the same
blueprint (exported to ``order_pipeline.json``) distributed across worker processes on SQLite,
with ``REGISTRY`` below as the workers' implementations.
"""

from __future__ import annotations

import asyncio
import sys

from flowcraft import Flow, FlowRuntime, NodeContext, NodeResult, create_flow
from flowcraft.events import FlowcraftEvent, ListenerBus
from rich.console import Console
from rich.table import Table

ATTEMPTS: dict[str, int] = {}


async def validate(ctx: NodeContext) -> NodeResult:
    """Reject empty orders; approve the rest."""
    order = await ctx.context.get("order")
    ok = bool(order and order["items"])
    await ctx.context.set("order_total", sum(i["price"] * i["qty"] for i in order["items"]))
    return NodeResult(output=order, action="approve" if ok else "reject")


async def price_item(ctx: NodeContext) -> NodeResult:
    """Price one line item (runs once per item of the batch)."""
    item = ctx.input
    return NodeResult(output={"sku": item["sku"], "subtotal": item["price"] * item["qty"]})


async def charge_card(ctx: NodeContext) -> NodeResult:
    """A flaky payment gateway: fails on the first attempt, succeeds on the second."""
    ATTEMPTS["charge"] = ctx.attempt
    if ctx.attempt == 1:
        raise ConnectionError("payment gateway timed out")
    total = await ctx.context.get("order_total")
    return NodeResult(output={"charged": total, "key": ctx.idempotency_key})


async def reserve_stock(ctx: NodeContext) -> NodeResult:
    """Always out of stock, so the fallback takes over."""
    raise RuntimeError("warehouse API unavailable")


async def backorder(ctx: NodeContext) -> NodeResult:
    """Fallback for reserve_stock: put the order on backorder."""
    return NodeResult(
        output={"backordered": True, "because": ctx.error.message if ctx.error else None}
    )


async def ship(ctx: NodeContext) -> NodeResult:
    """Join of payment and stock: receives both results keyed by predecessor."""
    return NodeResult(output={"shipment": "SHP-1", "inputs": sorted(ctx.input)})


async def reject(ctx: NodeContext) -> NodeResult:
    """The branch for rejected orders (not taken in this example)."""
    return NodeResult(output="rejected")


def build_flow() -> Flow:
    """The order pipeline as a builder flow."""
    return (
        create_flow("order-pipeline")
        .node("validate", validate)
        .batch("price", price_item, input_key="order.items", output_key="priced_items")
        .node("charge", charge_card, max_retries=3, retry_delay=10)
        .node("reserve", reserve_stock, fallback="backorder")
        .node("backorder", backorder)
        .node("ship", ship)
        .node("reject", reject)
        .edge("validate", "price", action="approve")
        .edge("validate", "reject", action="reject")
        .edge("price", "charge")
        .edge("price", "reserve")
        .edge("charge", "ship")
        .edge("reserve", "ship")
    )


REGISTRY = build_flow().registry
"""uses-key -> implementation, for ``flowcraft worker --registry``."""

ORDER = {
    "id": "A-1",
    "items": [{"sku": "tea", "price": 4, "qty": 3}, {"sku": "mug", "price": 9, "qty": 1}],
}


async def main() -> int:
    """Run the pipeline and print what happened."""
    console = Console()
    flow = build_flow()
    bus = ListenerBus()
    log: list[FlowcraftEvent] = []
    bus.subscribe(log.append)
    runtime = FlowRuntime(registry=flow.registry, event_bus=bus)
    result = await runtime.run(flow.to_blueprint(), {"order": ORDER})

    console.rule(f"[bold]run {result.execution_id} of {result.blueprint_id}: {result.status}")
    table = Table("node", "status", "output")
    for node_id, status in result.node_statuses.items():
        table.add_row(node_id, status, repr(result.outputs.get(node_id, "")))
    console.print(table)
    kinds = [e.type for e in log if e.type in ("node:retry", "node:fallback", "node:skipped")]
    console.print("notable events:", ", ".join(kinds))
    console.print("priced items:", result.context.get("priced_items"))
    return 0 if result.status == "completed" else 1


if __name__ == "__main__":
    if sys.argv[1:] == ["--export"]:
        print(build_flow().to_blueprint().to_json())
        sys.exit(0)
    sys.exit(asyncio.run(main()))
