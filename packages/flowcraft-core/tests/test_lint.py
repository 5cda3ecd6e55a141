"""Tests for flowcraft.lint."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
from flowcraft.blueprint import load_blueprint
from flowcraft.errors import ExpressionError
from flowcraft.lint import LintIssue, LintResult, lint_blueprint


def node(node_id: str, uses: str = "task", **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "uses": uses, **extra}


def edge(source: str, target: str, **extra: Any) -> dict[str, Any]:
    return {"source": source, "target": target, **extra}


def raw(nodes: list[Any], edges: list[Any] | None = None, **top: Any) -> dict[str, Any]:
    return {"id": "wf", "nodes": nodes, "edges": edges or [], **top}


@pytest.fixture
def fake_expressions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in flowcraft.expressions whose validator rejects anything containing '!!'."""
    module = types.ModuleType("flowcraft.expressions")

    def validate_expression(expr: str) -> None:
        if "!!" in expr:
            raise ExpressionError(expr, "unexpected token '!!'")

    module.validate_expression = validate_expression  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flowcraft.expressions", module)


@pytest.fixture
def no_expressions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make flowcraft.expressions unimportable."""
    monkeypatch.setitem(sys.modules, "flowcraft.expressions", None)


def test_clean_blueprint_is_valid() -> None:
    bp = load_blueprint(raw([node("a"), node("b")], [edge("a", "b")]))
    assert lint_blueprint(bp, registry={"task": object()}) == LintResult(True, [])
    assert lint_blueprint(bp.to_dict()) == LintResult(True, [])


def test_graph_errors_in_raw_input() -> None:
    result = lint_blueprint(
        raw(
            [
                node("a"),
                node("b", config={"fallback": "nope"}),
                node("a"),
                node("c", config={"fallback": "c"}),
            ],
            [edge("a", "zz"), edge("yy", "b"), edge("a", "c")],
        )
    )
    assert result.is_valid is False
    assert result.issues == [
        LintIssue(
            "DUPLICATE_NODE_ID",
            "node 'a' (nodes[2]): duplicate node id, first defined at nodes[0]",
            "a",
        ),
        LintIssue("INVALID_EDGE_TARGET", "edge 'a' -> 'zz': target 'zz' does not exist", "a", "zz"),
        LintIssue("INVALID_EDGE_SOURCE", "edge 'yy' -> 'b': source 'yy' does not exist", "yy", "b"),
        LintIssue("INVALID_FALLBACK", "node 'b': fallback 'nope' does not exist", "b", "nope"),
        LintIssue("INVALID_FALLBACK", "node 'c': fallback names the node itself", "c", "c"),
    ]  # 'b' is a start node: the edge from the unknown 'yy' does not count


def test_schema_problems_are_reported_per_item_without_raising() -> None:
    result = lint_blueprint(
        {
            "nodes": [
                node("a"),
                {"id": "b"},
                {"uses": "task"},
                node("c", config={"maxRetries": 0, "colour": "red"}),
                "not a node",
            ],
            "edges": [edge("a", "b"), {"source": "a"}, edge("b", "c", condition=3), 7],
            "metadata": {"cycleEntryPoints": ["ghost"]},
        }
    )
    assert result.is_valid is False
    codes = [(i.code, i.node_id) for i in result.issues]
    assert codes == [
        ("INVALID_BLUEPRINT", None),
        ("INVALID_NODE", "b"),
        ("INVALID_NODE", None),
        ("INVALID_NODE", "c"),
        ("INVALID_NODE", None),
        ("INVALID_EDGE", "a"),
        ("INVALID_EDGE", "b"),
        ("INVALID_EDGE", None),
        ("INVALID_BLUEPRINT", "ghost"),
    ]
    messages = [i.message for i in result.issues]
    assert messages[0] == "blueprint: 'id' must be a non-empty string"
    assert messages[1] == "node 'b' (nodes[1]): uses: Field required"
    assert messages[2] == "nodes[2]: id: Field required"
    assert messages[3].startswith("node 'c' (nodes[3]): config.maxRetries: ")
    assert "config.colour: unknown field" in messages[3]
    assert messages[4].startswith("nodes[4]: ")
    assert messages[5] == "edge 'a' -> None (edges[1]): target: Field required"
    assert messages[6].startswith("edge 'b' -> 'c' (edges[2]): condition: ")
    assert messages[7].startswith("edges[3]: ")
    assert messages[8] == "metadata.cycleEntryPoints: node 'ghost' does not exist"


def test_top_level_shape_problems() -> None:
    result = lint_blueprint({"id": "wf", "nodes": "abc", "edges": 5, "metadata": []})
    assert [i.message for i in result.issues] == [
        "blueprint: 'nodes' must be a list (or an object keyed by id), got str",
        "blueprint: 'edges' must be a list (or an object keyed by id), got int",
        "blueprint: 'metadata' must be an object, got list",
    ]
    assert not result.is_valid


def test_nodes_keyed_by_id_are_accepted() -> None:
    result = lint_blueprint(
        {"id": "wf", "nodes": {"a": node("a"), "b": node("b")}, "edges": [edge("a", "b")]}
    )
    assert result == LintResult(True, [])


def test_non_mapping_source_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="WorkflowBlueprint or a mapping"):
        lint_blueprint([1, 2])  # type: ignore[arg-type]


def test_missing_implementation_only_with_registry_and_never_for_builtins() -> None:
    bp = load_blueprint(
        raw(
            [
                node("a", "known"),
                node("b", "unknown"),
                node("c", "sleep", params={"duration": 5}),
                node("d", "wait"),
                node("g", "batch-gather"),
            ],
            [edge("a", "b"), edge("b", "c"), edge("c", "d"), edge("d", "g")],
        )
    )
    assert lint_blueprint(bp).issues == []
    assert lint_blueprint(bp, registry={"known": object()}).issues == [
        LintIssue(
            "MISSING_NODE_IMPLEMENTATION",
            "node 'b': uses 'unknown', which is not in the registry",
            "b",
        )
    ]


def test_batch_worker_key() -> None:
    bp = load_blueprint(
        raw(
            [
                node("s1", "batch-scatter"),
                node("s2", "batch-scatter", params={"workerUsesKey": "worker"}),
                node("s3", "batch-scatter", params={"workerUsesKey": "ghost"}),
                node("s4", "batch-scatter", params={"workerUsesKey": ""}),
            ],
            [edge("s1", "s2"), edge("s2", "s3"), edge("s3", "s4")],
        )
    )
    no_registry = lint_blueprint(bp)
    assert [(i.code, i.node_id) for i in no_registry.issues] == [
        ("INVALID_BATCH_WORKER_KEY", "s1"),
        ("INVALID_BATCH_WORKER_KEY", "s4"),
    ]
    assert no_registry.issues[0].message == "node 's1': batch-scatter requires params.workerUsesKey"
    with_registry = lint_blueprint(bp, registry={"worker": object()})
    assert [i.message for i in with_registry.issues] == [
        "node 's1': batch-scatter requires params.workerUsesKey",
        "node 's3': params.workerUsesKey 'ghost' is not in the registry",
        "node 's4': batch-scatter requires params.workerUsesKey",
    ]


def test_subflow_blueprint_id() -> None:
    child = load_blueprint(raw([node("x")]))
    bp = load_blueprint(
        raw(
            [
                node("sub1", "subflow"),
                node("sub2", "subflow", params={"blueprintId": "child"}),
                node("sub3", "subflow", params={"blueprintId": "missing"}),
            ],
            [edge("sub1", "sub2"), edge("sub2", "sub3")],
        )
    )
    assert [i.message for i in lint_blueprint(bp).issues] == [
        "node 'sub1': subflow requires params.blueprintId"
    ]
    assert [i.message for i in lint_blueprint(bp, blueprints={"child": child}).issues] == [
        "node 'sub1': subflow requires params.blueprintId",
        "node 'sub3': params.blueprintId 'missing' is not a known blueprint",
    ]
    assert all(i.code == "INVALID_SUBFLOW_BLUEPRINT_ID" for i in lint_blueprint(bp).issues)


def test_loop_controller_checks_and_cycle_exemption(no_expressions: None) -> None:
    bp = load_blueprint(
        raw(
            [
                node("init"),
                node("loop", "loop-controller", params={"condition": "i < 3"}),
                node("body"),
                node("done"),
                node("bad_loop", "loop-controller"),
            ],
            [
                edge("init", "loop"),
                edge("loop", "body", action="continue"),
                edge("body", "loop"),
                edge("loop", "done", action="break"),
                edge("done", "bad_loop"),
                edge("bad_loop", "done"),
            ],
        )
    )
    result = lint_blueprint(bp)
    assert result.issues == [
        LintIssue(
            "INVALID_LOOP", "node 'bad_loop': loop-controller requires params.condition", "bad_loop"
        ),
        LintIssue(
            "INVALID_LOOP",
            "node 'bad_loop': loop-controller has no outgoing edge with action 'continue'",
            "bad_loop",
        ),
    ]  # neither cycle is reported: both pass through a loop-controller


def test_cycles_without_loop_controller_are_warnings() -> None:
    bp = load_blueprint(
        raw(
            [node("start"), node("a"), node("b"), node("s")],
            [edge("start", "a"), edge("a", "b"), edge("b", "a"), edge("b", "s"), edge("s", "s")],
        )
    )
    result = lint_blueprint(bp)
    assert result == LintResult(
        True,
        [
            LintIssue(
                "CYCLE",
                "cycle 'a' -> 'b' -> 'a' does not pass through a loop-controller",
                "a",
                "b",
                "warning",
            ),
            LintIssue(
                "CYCLE",
                "cycle 's' -> 's' does not pass through a loop-controller",
                "s",
                "s",
                "warning",
            ),
        ],
    )
    assert result.errors == []
    assert len(result.warnings) == 2


def test_orphans_follow_edges_and_fallbacks() -> None:
    bp = load_blueprint(
        raw(
            [
                node("a", config={"fallback": "rescue"}),
                node("b"),
                node("rescue"),
                node("after_rescue"),
                node("island1"),
                node("island2"),
            ],
            [
                edge("a", "b"),
                edge("rescue", "after_rescue"),
                edge("island1", "island2"),
                edge("island2", "island1"),
            ],
        )
    )
    result = lint_blueprint(bp)
    orphan_ids = [i.node_id for i in result.issues if i.code == "ORPHAN_NODE"]
    assert orphan_ids == ["island1", "island2"]
    assert result.is_valid  # orphans and cycles are warnings


def test_single_node_graph_is_never_orphaned() -> None:
    bp = load_blueprint(raw([node("only", config={"fallback": None})]))
    assert lint_blueprint(bp).issues == []
    # A lone self-looping node: a cycle warning, no orphan warning.
    looped = lint_blueprint(raw([node("only")], [edge("only", "only")]))
    assert [i.code for i in looped.issues] == ["CYCLE"]


def test_fully_cyclic_graph_uses_entry_points() -> None:
    result = lint_blueprint(
        raw(
            [node("a"), node("b"), node("c"), node("d")],
            [edge("a", "b"), edge("b", "a"), edge("c", "d"), edge("d", "c")],
            metadata={"cycleEntryPoints": ["c"]},
        )
    )
    assert [(i.code, i.node_id) for i in result.issues] == [
        ("ORPHAN_NODE", "a"),
        ("ORPHAN_NODE", "b"),
        ("CYCLE", "a"),
        ("CYCLE", "c"),
    ]


def test_expressions_checked_when_validator_available(fake_expressions: None) -> None:
    bp = load_blueprint(
        raw(
            [
                node("a"),
                node("b"),
                node("loop", "loop-controller", params={"condition": "i !! 3"}),
            ],
            [
                edge("a", "b", condition="x > 1", transform="!!y"),
                edge("b", "loop", condition="bad !!"),
                edge("loop", "b", action="continue"),
            ],
        )
    )
    result = lint_blueprint(bp)
    expression_issues = [i for i in result.issues if i.code == "INVALID_EXPRESSION"]
    assert expression_issues == [
        LintIssue(
            "INVALID_EXPRESSION",
            "edge 'a' -> 'b': transform '!!y' is not a valid expression: unexpected token '!!'",
            "a",
            "b",
        ),
        LintIssue(
            "INVALID_EXPRESSION",
            "edge 'b' -> 'loop': condition 'bad !!' is not a valid expression: "
            "unexpected token '!!'",
            "b",
            "loop",
        ),
        LintIssue(
            "INVALID_EXPRESSION",
            "node 'loop': params.condition 'i !! 3' is not a valid expression: "
            "unexpected token '!!'",
            "loop",
        ),
    ]
    assert not result.is_valid


def test_validator_returning_problems_instead_of_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("flowcraft.expressions")
    module.validate_expression = lambda expr: ["nope"] if expr == "bad" else []  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flowcraft.expressions", module)
    result = lint_blueprint(raw([node("a"), node("b")], [edge("a", "b", condition="bad")]))
    assert [i.message for i in result.issues] == [
        "edge 'a' -> 'b': condition 'bad' is not a valid expression: nope"
    ]


def test_expression_check_skipped_without_validator(no_expressions: None) -> None:
    result = lint_blueprint(raw([node("a"), node("b")], [edge("a", "b", condition="!! ((")]))
    assert result == LintResult(True, [])


def test_real_expression_validator_if_present() -> None:
    pytest.importorskip("flowcraft.expressions")
    result = lint_blueprint(
        raw(
            [node("a"), node("b")],
            [edge("a", "b", condition="x > 3"), edge("b", "a", condition="(")],
        )
    )
    expression_issues = [i for i in result.issues if i.code == "INVALID_EXPRESSION"]
    assert [(i.node_id, i.related_id) for i in expression_issues] == [("b", "a")]


def test_invalid_node_keeps_its_edges_known() -> None:
    # 'b' fails the schema but is still a node: no dangling-edge or orphan noise for it.
    result = lint_blueprint(
        raw([node("a"), {"id": "b", "uses": ""}, node("c")], [edge("a", "b"), edge("b", "c")])
    )
    assert [(i.code, i.node_id) for i in result.issues] == [("INVALID_NODE", "b")]
