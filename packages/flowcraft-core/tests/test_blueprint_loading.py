"""Loading and validating blueprints: precise error messages, accepted shapes, the JSON Schema,
and property-based fuzzing of ``load_blueprint`` with malformed input."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from flowcraft import (
    BlueprintValidationError,
    FlowRuntime,
    NodeContext,
    NodeResult,
    WorkflowBlueprint,
    blueprint_json_schema,
    create_flow,
    load_blueprint,
)
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

FIXTURE = Path(__file__).resolve().parents[3] / "integration-tests" / "fixtures"
TS_BLUEPRINT = FIXTURE / "ts-order-routing.json"


def node(node_id: str, uses: str = "task", **extra: Any) -> dict[str, Any]:
    """A raw node definition."""
    return {"id": node_id, "uses": uses, **extra}


def edge(source: Any, target: Any, **extra: Any) -> dict[str, Any]:
    """A raw edge definition."""
    return {"source": source, "target": target, **extra}


def problems_of(raw: Any) -> list[str]:
    """The problems ``load_blueprint`` reports for ``raw`` (fails if it loads)."""
    with pytest.raises(BlueprintValidationError) as info:
        load_blueprint(raw)
    return info.value.problems


async def task(ctx: NodeContext) -> NodeResult:
    """A node that returns its own id."""
    return NodeResult(ctx.node_id)


# -- errors name what is wrong ------------------------------------------------------------------


def test_duplicate_node_ids_are_named() -> None:
    raw = {"id": "wf", "nodes": [node("a"), node("b"), node("a"), node("b")]}
    with pytest.raises(BlueprintValidationError) as info:
        load_blueprint(raw)
    assert info.value.problems == [
        "nodes[2]: duplicate node id 'a'",
        "nodes[3]: duplicate node id 'b'",
    ]
    assert info.value.blueprint_id == "wf"
    assert str(info.value) == (
        "invalid blueprint 'wf':\n"
        "  - nodes[2]: duplicate node id 'a'\n"
        "  - nodes[3]: duplicate node id 'b'"
    )


def test_dangling_edges_are_named() -> None:
    raw = {
        "id": "wf",
        "nodes": [node("a"), node("b")],
        "edges": [edge("a", "b"), edge("ghost", "b"), edge("a", "nowhere"), edge("x", "y")],
    }
    assert problems_of(raw) == [
        "edges[1] (ghost -> b): unknown source 'ghost'",
        "edges[2] (a -> nowhere): unknown target 'nowhere'",
        "edges[3] (x -> y): unknown source 'x'",
        "edges[3] (x -> y): unknown target 'y'",
    ]


def test_fallback_and_cycle_entry_points_must_name_nodes() -> None:
    raw = {
        "id": "wf",
        "nodes": [node("a", config={"fallback": "ghost"}), node("b", config={"fallback": "b"})],
        "metadata": {"cycleEntryPoints": ["a", "zz"]},
    }
    assert problems_of(raw) == [
        "node 'a': config.fallback names unknown node 'ghost'",
        "node 'b': config.fallback names the node itself",
        "metadata.cycleEntryPoints: unknown node 'zz'",
    ]
    assert problems_of({"id": "wf", "metadata": {"cycleEntryPoints": "a"}}) == [
        "metadata.cycleEntryPoints: must be a list of node ids"
    ]


async def test_unknown_uses_is_reported_at_run_naming_node_and_key() -> None:
    raw = {
        "id": "wf",
        "nodes": [
            node("a"),
            node("b", "nope"),
            node("c", "batch-scatter", params={"workerUsesKey": "missing-worker"}),
        ],
        "edges": [edge("a", "b")],
    }
    load_blueprint(raw)  # structurally fine: implementations are checked against a registry
    runtime = FlowRuntime(registry={"task": task})
    with pytest.raises(BlueprintValidationError) as info:
        await runtime.run(raw)
    assert info.value.problems == [
        "node 'b': unknown implementation uses='nope'",
        "node 'c': unknown batch worker 'missing-worker'",
    ]
    assert "'b'" in str(info.value)
    assert "'nope'" in str(info.value)
    # A per-run registry supplies the missing keys.
    result = await runtime.run(
        {"id": "wf2", "nodes": [node("a"), node("b", "nope")], "edges": [edge("a", "b")]},
        registry={"nope": task},
    )
    assert result.status == "completed"
    assert result.outputs == {"a": "a", "b": "b"}


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"maxRetries": 0}, "config.maxRetries: Input should be greater than or equal to 1"),
        ({"maxRetries": 1.5}, "config.maxRetries: Input should be a valid integer"),
        ({"maxRetries": "3"}, "config.maxRetries: Input should be a valid integer"),
        ({"maxRetries": True}, "config.maxRetries: Input should be a valid integer"),
        ({"joinStrategy": "some"}, "config.joinStrategy: Input should be 'all' or 'any'"),
        ({"retries": 3}, "config.retries: unknown field 'retries'"),
        ({"retryDelay": -5}, "config.retryDelay: Input should be greater than or equal to 0"),
        ({"timeout": 0}, "config.timeout: Input should be greater than 0"),
        ({"backoff": "linear"}, "config.backoff: Input should be 'fixed' or 'exponential'"),
        ({"jitter": 2}, "config.jitter: Input should be less than or equal to 1"),
        ({"fallback": ""}, "config.fallback: String should have at least 1 character"),
    ],
)
def test_bad_config_values_name_node_and_field(config: dict[str, Any], problem: str) -> None:
    raw = {"id": "wf", "nodes": [node("ok"), node("a", config=config)]}
    assert problems_of(raw) == [f"nodes[1] (node 'a').{problem}"]


@pytest.mark.parametrize(
    ("raw", "problems"),
    [
        ({"nodes": []}, ["id: Field required"]),
        ({"id": ""}, ["id: String should have at least 1 character"]),
        ({"id": 7}, ["id: Input should be a valid string"]),
        (
            {"id": "wf", "nodes": [{"id": "a"}]},
            ["nodes[0] (node 'a').uses: Field required"],
        ),
        (
            {"id": "wf", "nodes": [node("a", params=[1, 2])]},
            ["nodes[0] (node 'a').params: Input should be a valid dictionary"],
        ),
        (
            {"id": "wf", "nodes": [node("a", inputs=5)]},
            [
                "nodes[0] (node 'a').inputs.str: Input should be a valid string",
                "nodes[0] (node 'a').inputs.dict[str,str]: Input should be a valid dictionary",
            ],
        ),
        (
            {"id": "wf", "nodes": [node("a")], "edges": [edge("a", 5)]},
            ["edges[0] ('a' -> 5).target: Input should be a valid string"],
        ),
        (
            {"id": "wf", "nodes": [node("a")], "edges": [{"source": "a"}]},
            ["edges[0] ('a' -> None).target: Field required"],
        ),
        ({"id": "wf", "nodes": "a,b"}, ["nodes: Input should be a valid tuple"]),
        ({"id": "wf", "metadata": []}, ["metadata: Input should be a valid dictionary"]),
    ],
)
def test_schema_errors_name_their_place(raw: dict[str, Any], problems: list[str]) -> None:
    assert problems_of(raw) == problems


def test_every_problem_is_reported_at_once() -> None:
    raw = {
        "id": "wf",
        "nodes": [node("a", config={"maxRetries": 0}), node("b", uses="")],
        "edges": [edge("a", 1)],
    }
    assert problems_of(raw) == [
        "nodes[0] (node 'a').config.maxRetries: Input should be greater than or equal to 1",
        "nodes[1] (node 'b').uses: String should have at least 1 character",
        "edges[0] ('a' -> 1).target: Input should be a valid string",
    ]


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("{not json", "not valid JSON: Expecting property name enclosed in double quotes"),
        ("", "not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"\xff\xfe\xfa", "not valid JSON: "),
        ("[" * 100_000, "not valid JSON: maximum recursion depth exceeded"),
        ("[1, 2]", "a blueprint must be a JSON object, got list"),
        ("42", "a blueprint must be a JSON object, got int"),
        ('"wf"', "a blueprint must be a JSON object, got str"),
        ("null", "a blueprint must be a JSON object, got NoneType"),
    ],
)
def test_text_that_is_not_a_blueprint_object(source: str | bytes, problem: str) -> None:
    (only,) = problems_of(source)
    assert only.startswith(problem)


def test_loads_from_path_and_reports_unreadable_path(tmp_path: Path) -> None:
    assert load_blueprint(TS_BLUEPRINT).id == "ts-order-routing"
    missing = tmp_path / "missing.json"
    (only,) = problems_of(missing)
    assert only.startswith(f"cannot read {missing}: ")


# -- accepted shapes ----------------------------------------------------------------------------


def test_nodes_and_edges_keyed_by_id_are_accepted() -> None:
    as_lists = load_blueprint(
        {
            "id": "wf",
            "nodes": [node("a"), node("b", config={"joinStrategy": "any"})],
            "edges": [edge("a", "b", action="go")],
        }
    )
    as_objects = load_blueprint(
        {
            "id": "wf",
            "nodes": {"a": node("a"), "b": node("b", config={"joinStrategy": "any"})},
            "edges": {"a-b": edge("a", "b", action="go")},
        }
    )
    assert as_objects == as_lists
    assert as_objects.to_dict() == {
        "id": "wf",
        "nodes": [
            {"id": "a", "uses": "task"},
            {"id": "b", "uses": "task", "config": {"joinStrategy": "any"}},
        ],
        "edges": [{"source": "a", "target": "b", "action": "go"}],
    }


def test_unknown_fields_outside_config_are_ignored_and_nulls_mean_empty() -> None:
    bp = load_blueprint(
        {
            "id": "wf",
            "nodes": [
                node(
                    "a",
                    params=None,
                    config=None,
                    position={"x": 1},
                    _sourceLocation={"file": "f.ts", "line": 1, "column": 2},
                ),
            ],
            "edges": None,
            "metadata": None,
            "viewport": {"zoom": 2},
        }
    )
    assert bp.to_dict() == {"id": "wf", "nodes": [{"id": "a", "uses": "task"}], "edges": []}


def test_loaded_blueprint_is_returned_unchanged() -> None:
    bp = load_blueprint({"id": "wf", "nodes": [node("a")]})
    assert load_blueprint(bp) is bp


# -- JSON Schema --------------------------------------------------------------------------------


def _schema_validator() -> Draft202012Validator:
    schema = blueprint_json_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _builder_blueprint() -> WorkflowBlueprint:
    return (
        create_flow("built", version="2")
        .node("a", "task", max_retries=3, retry_delay=10, timeout=500, fallback="fb")
        .node("fb", "task")
        .node("b", "task", inputs={"x": "a"}, join="any")
        .batch("items", "task", input_key="list", chunk_size=2)
        .loop("again", start="b", end="b", condition="count < 3", max_iterations=10)
        .wait("w", event_name="approved")
        .sleep("s", "5m")
        .edge("a", "b", condition="result.output > 1", transform="input * 2")
        .edge("again", "items")
        .edge("items", "w")
        .edge("w", "s", action="approve")
        .to_blueprint()
    )


def test_json_schema_is_valid_and_accepts_valid_blueprints() -> None:
    validator = _schema_validator()
    assert blueprint_json_schema()["required"] == ["id"]
    ts_raw = json.loads(TS_BLUEPRINT.read_text(encoding="utf-8"))
    for doc in (
        ts_raw,
        load_blueprint(ts_raw).to_dict(),
        _builder_blueprint().to_dict(),
        {"id": "minimal"},
        {"id": "wf", "nodes": [node("a", inputs="x")], "edges": [], "metadata": {"v": [1]}},
    ):
        assert list(validator.iter_errors(doc)) == [], doc


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({"nodes": []}, []),
        ({"id": "wf", "nodes": [node("a", config={"maxRetries": 0})]}, ["nodes", 0, "config"]),
        ({"id": "wf", "nodes": [node("a", config={"joinStrategy": "some"})]}, ["nodes", 0]),
        ({"id": "wf", "nodes": [node("a", config={"retries": 1})]}, ["nodes", 0, "config"]),
        ({"id": "wf", "nodes": [{"id": "a"}]}, ["nodes", 0]),
        ({"id": "wf", "edges": [{"source": "a", "target": ""}]}, ["edges", 0, "target"]),
    ],
)
def test_json_schema_rejects_invalid_documents(doc: dict[str, Any], path: list[Any]) -> None:
    errors = list(_schema_validator().iter_errors(doc))
    assert errors, doc
    assert any(list(e.absolute_path)[: len(path)] == path for e in errors)
    with pytest.raises(BlueprintValidationError):
        load_blueprint(doc)


# -- fuzzing ------------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["a", "b", "task", "wait", "all", "any", "", "_outputs.a", "batch-scatter"])
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
"""Arbitrary finite JSON values."""

_KEYS = [
    "id", "uses", "nodes", "edges", "metadata", "params", "inputs", "config", "source", "target",
    "action", "condition", "transform", "maxRetries", "retryDelay", "timeout", "fallback",
    "joinStrategy", "backoff", "jitter", "maxRetryDelay", "cycleEntryPoints", "version",
]  # fmt: skip

blueprint_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values | st.text(min_size=1, max_size=5),
        "nodes": st.lists(
            st.dictionaries(st.sampled_from(_KEYS), json_values, max_size=6), max_size=4
        )
        | json_values,
        "edges": st.lists(
            st.dictionaries(st.sampled_from(_KEYS), json_values, max_size=6), max_size=4
        )
        | json_values,
        "metadata": json_values,
    },
)
"""Objects shaped roughly like a blueprint, with random content."""


def _base_documents() -> list[dict[str, Any]]:
    ts_raw = json.loads(TS_BLUEPRINT.read_text(encoding="utf-8"))
    return [ts_raw, _builder_blueprint().to_dict()]


BASES = _base_documents()


def _containers(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every dict and list inside ``doc`` (the root included)."""
    out: list[tuple[Any, ...]] = []
    if isinstance(doc, dict):
        out.append(path)
        for k, v in doc.items():
            out.extend(_containers(v, (*path, k)))
    elif isinstance(doc, list):
        out.append(path)
        for i, v in enumerate(doc):
            out.extend(_containers(v, (*path, i)))
    return out


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


@st.composite
def mutated_blueprints(draw: st.DrawFn) -> dict[str, Any]:
    """A valid blueprint with a few random mutations applied."""
    doc: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(
            st.sampled_from(
                ["delete", "replace", "insert", "dup_node", "dangling", "clash", "retype"]
            )
        )
        containers = _containers(doc)
        target = _at(doc, draw(st.sampled_from(containers)))
        nodes = doc.get("nodes") if isinstance(doc.get("nodes"), list) else None
        if op == "delete" and target:
            if isinstance(target, dict):
                del target[draw(st.sampled_from(sorted(target)))]
            else:
                del target[draw(st.integers(min_value=0, max_value=len(target) - 1))]
        elif op in ("replace", "retype") and target:
            key = (
                draw(st.sampled_from(sorted(target)))
                if isinstance(target, dict)
                else draw(st.integers(min_value=0, max_value=len(target) - 1))
            )
            if op == "replace":
                target[key] = draw(json_values)
            else:  # a value of a plausible but wrong type
                wrong = st.sampled_from([0, -1, 1.5, True, "x", [], {}, None, ["a"], {"a": 1}])
                target[key] = copy.deepcopy(draw(wrong))
        elif op == "insert":
            value = draw(json_values)
            if isinstance(target, dict):
                target[draw(st.sampled_from(_KEYS) | st.text(max_size=6))] = value
            else:
                target.insert(draw(st.integers(min_value=0, max_value=len(target))), value)
        elif op == "dup_node" and nodes:
            nodes.append(copy.deepcopy(draw(st.sampled_from(nodes))))
        elif op == "dangling" and isinstance(doc.get("edges"), list):
            ids = [n.get("id") for n in nodes or [] if isinstance(n, dict)] or ["a"]
            doc["edges"].append(
                {
                    "source": draw(st.sampled_from(ids) | st.text(min_size=1, max_size=4)),
                    "target": draw(st.text(min_size=1, max_size=4)),
                }
            )
        elif op == "clash" and nodes and len(nodes) > 1:
            i, j = draw(st.permutations(range(len(nodes))))[:2]
            if isinstance(nodes[i], dict) and isinstance(nodes[j], dict):
                nodes[i]["id"] = nodes[j].get("id")
    return doc


def _check_load(source: Any) -> WorkflowBlueprint | None:
    """Load ``source``; only a blueprint or a BlueprintValidationError may come out."""
    try:
        bp = load_blueprint(source)
    except BlueprintValidationError as exc:
        event("rejected")
        assert isinstance(str(exc), str)
        assert str(exc).strip()
        assert exc.problems
        assert all(isinstance(p, str) and p.strip() for p in exc.problems)
        return None
    event("loaded")
    assert isinstance(bp, WorkflowBlueprint)
    return bp


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _check_round_trip(bp: WorkflowBlueprint, validator: Draft202012Validator) -> None:
    again = load_blueprint(bp.to_json())
    assert again == bp
    assert again.to_dict() == bp.to_dict()
    assert list(validator.iter_errors(bp.to_dict())) == []


VALIDATOR = _schema_validator()


@FUZZ
@given(json_values)
def test_fuzz_arbitrary_json_values(value: Any) -> None:
    bp = _check_load(value)
    assert bp is None or isinstance(value, dict)


@FUZZ
@given(blueprint_like)
def test_fuzz_blueprint_shaped_objects(doc: dict[str, Any]) -> None:
    bp = _check_load(doc)
    if bp is not None:
        _check_round_trip(bp, VALIDATOR)


@settings(FUZZ, max_examples=300)
@given(mutated_blueprints())
def test_fuzz_mutated_valid_blueprints(doc: dict[str, Any]) -> None:
    assert _finite(doc)
    bp = _check_load(doc)
    if bp is not None:
        _check_round_trip(bp, VALIDATOR)
    bp_text = _check_load(json.dumps(doc))
    assert (bp is None) == (bp_text is None)


@FUZZ
@given(st.text(max_size=60) | st.binary(max_size=60))
def test_fuzz_random_text(text: str | bytes) -> None:
    _check_load(text)


@FUZZ
@given(
    st.sampled_from([json.dumps(b) for b in BASES]),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=10_000),
    st.text(max_size=5),
)
def test_fuzz_corrupted_json_text(text: str, start: int, length: int, insert: str) -> None:
    """Valid blueprint JSON with a slice replaced: truncated, spliced or broken text."""
    start %= len(text) + 1
    corrupted = text[:start] + insert + text[start + length % 40 :]
    _check_load(corrupted)
    _check_load(corrupted.encode("utf-8"))
