"""Keys under the engine's prefix are refused where a blueprint names them (load time)."""

from __future__ import annotations

import pytest
from flowcraft import FlowRuntime, load_blueprint
from flowcraft.errors import BlueprintValidationError


def _gather(output_key: str) -> dict[str, object]:
    return {
        "id": "g",
        "nodes": [
            {
                "id": "s",
                "uses": "batch-scatter",
                "params": {"workerUsesKey": "w", "gatherNodeId": "g"},
            },
            {"id": "g", "uses": "batch-gather", "params": {"outputKey": output_key}},
        ],
        "edges": [{"source": "s", "target": "g"}],
    }


def test_gather_output_key_in_engine_namespace_is_refused() -> None:
    rt = FlowRuntime(registry={"w": lambda c: None})
    with pytest.raises(BlueprintValidationError) as info:
        rt.prepare(load_blueprint(_gather("_fc.node.d")))
    assert info.value.problems == [
        "node 'g': params.outputKey '_fc.node.d' starts with '_fc.', which is reserved for "
        "the engine's run state; rename it"
    ]
    rt.prepare(load_blueprint(_gather("fc.node.d")))  # only the exact prefix is reserved


def test_subflow_outputs_in_engine_namespace_are_refused() -> None:
    child = load_blueprint({"id": "c", "nodes": [{"id": "x", "uses": "x"}], "edges": []})
    parent = load_blueprint(
        {
            "id": "p",
            "nodes": [
                {
                    "id": "sub",
                    "uses": "subflow",
                    "params": {"blueprintId": "c", "outputs": {"ok": "x", "_fc.run": "x"}},
                }
            ],
            "edges": [],
        }
    )
    rt = FlowRuntime(registry={"x": lambda c: 1}, blueprints=[child])
    with pytest.raises(BlueprintValidationError) as info:
        rt.prepare(parent)
    assert info.value.problems == [
        "node 'sub': params.outputs key '_fc.run' starts with '_fc.', which is reserved for "
        "the engine's run state; rename it"
    ]
