"""The README's main job uses examples/order_pipeline.{py,json}: keep them in sync and working."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from flowcraft import FlowRuntime, load_blueprint

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "examples"))

import order_pipeline  # noqa: E402


def test_exported_blueprint_matches_the_builder() -> None:
    exported = load_blueprint(ROOT / "examples" / "order_pipeline.json")
    assert exported == order_pipeline.build_flow().to_blueprint()
    assert set(order_pipeline.REGISTRY) == {n.uses for n in exported.nodes if ":" in n.uses} | {
        "order_pipeline:price_item"
    }


async def test_order_pipeline_in_memory_exact_result() -> None:
    bp = load_blueprint(ROOT / "examples" / "order_pipeline.json")
    initial = json.loads((ROOT / "examples" / "order.json").read_text())
    result = await FlowRuntime(registry=order_pipeline.REGISTRY).run(bp, initial)
    assert result.status == "completed"
    assert result.node_statuses == {
        "validate": "completed",
        "price_scatter": "completed",
        "price_gather": "completed",
        "charge": "completed",
        "reserve": "recovered",
        "backorder": "completed",
        "ship": "completed",
        "reject": "skipped",
    }
    assert result.context["priced_items"] == [
        {"sku": "tea", "subtotal": 12},
        {"sku": "mug", "subtotal": 9},
    ]
    assert result.outputs["ship"] == {"shipment": "SHP-1", "inputs": ["charge", "reserve"]}
    assert result.outputs["charge"]["charged"] == 21
