"""Batches of generated differential cases share one set of workers: their blueprint ids must
not collide and every subflow must still name its own child."""

from __future__ import annotations

import pytest
from flowcraft import FlowRuntime, load_blueprint
from flowcraft.testing.conformance.generators import (
    DiffCase,
    differential_batches,
    differential_registry,
)
from hypothesis import given, settings


def _case() -> DiffCase:
    root = {
        "id": "diff",
        "nodes": [
            {"id": "a", "uses": "task", "params": {"k": 1}},
            {"id": "s", "uses": "subflow", "params": {"blueprintId": "diff.c0"}},
        ],
        "edges": [{"source": "a", "target": "s"}],
    }
    child = {
        "id": "diff.c0",
        "nodes": [{"id": "x", "uses": "task", "params": {"k": 2}}],
        "edges": [],
    }
    return DiffCase((root, child), {"n": 1})


def test_renamed_prefixes_blueprints_and_subflow_references() -> None:
    case = _case().renamed("b3.")
    assert [b["id"] for b in case.blueprints] == ["b3.diff", "b3.diff.c0"]
    assert case.root_id == "b3.diff"
    assert case.node("b3.diff", "s")["params"] == {"blueprintId": "b3.diff.c0"}
    assert case.node("b3.diff", "a")["params"] == {"k": 1}
    assert case.initial == {"n": 1}
    assert _case().blueprints[0]["id"] == "diff"  # the original is untouched


async def test_a_renamed_case_ends_like_the_original() -> None:
    results = []
    for case in (_case(), _case().renamed("b0.")):
        bps = [load_blueprint(dict(b)) for b in case.blueprints]
        rt = FlowRuntime(registry=differential_registry(), blueprints=bps)
        res = await rt.run(rt.get_blueprint(case.root_id), dict(case.initial))
        results.append((res.status, res.context))
    assert results[0] == results[1]
    assert results[0][0] == "completed"


@settings(max_examples=20, deadline=None)
@given(batch=differential_batches(3))
def test_batches_never_share_a_blueprint_id(batch: tuple[DiffCase, ...]) -> None:
    ids = [b["id"] for case in batch for b in case.blueprints]
    assert len(ids) == len(set(ids))
    for i, case in enumerate(batch):
        assert all(b["id"].startswith(f"b{i}.") for b in case.blueprints)
        for b in case.blueprints:
            for n in b["nodes"]:
                ref = (n.get("params") or {}).get("blueprintId")
                if ref is not None:
                    assert ref in {x["id"] for x in case.blueprints}


def test_a_batch_holds_at_least_one_case() -> None:
    with pytest.raises(ValueError, match="a batch holds at least one case, got 0"):
        differential_batches(0)
