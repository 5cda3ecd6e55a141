"""Tests of the fluent Flow builder."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flowcraft.blueprint import WorkflowBlueprint
from flowcraft.builder import Flow, UIGraph, create_flow
from flowcraft.errors import BlueprintValidationError
from flowcraft.nodes import BaseNode, NodeContext, NodeResult


def fetch(ctx: NodeContext) -> NodeResult:
    return NodeResult(output=1)


def process(ctx: NodeContext) -> NodeResult:
    return NodeResult(output=2)


class Summarize(BaseNode):
    async def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
        return prep_result


def edges_of(bp: WorkflowBlueprint) -> list[tuple[str, str, str | None]]:
    return [(e.source, e.target, e.action) for e in bp.edges]


def assert_round_trips(bp: WorkflowBlueprint) -> None:
    assert WorkflowBlueprint.model_validate(json.loads(bp.to_json())) == bp


# -- nodes and edges ---------------------------------------------------------------------------


def test_nodes_and_edges_chain() -> None:
    flow = Flow("f")
    assert flow.node("a", fetch).node("b", process).edge("a", "b") is flow
    bp = flow.to_blueprint()
    assert bp.id == "f"
    assert [n.id for n in bp.nodes] == ["a", "b"]
    assert edges_of(bp) == [("a", "b", None)]
    assert_round_trips(bp)


def test_edge_fields_on_the_wire() -> None:
    bp = (
        Flow("f")
        .node("a", fetch)
        .node("b", process)
        .edge("a", "b", action="ok", condition="x > 1", transform="input * 2")
        .to_blueprint()
    )
    assert bp.to_dict()["edges"] == [
        {
            "source": "a",
            "target": "b",
            "action": "ok",
            "condition": "x > 1",
            "transform": "input * 2",
        }
    ]
    assert_round_trips(bp)


def test_config_kwargs_use_wire_names() -> None:
    bp = (
        Flow("f")
        .node("safe", process)
        .node(
            "a",
            fetch,
            params={"url": "http://x", "n": [1, 2]},
            inputs={"x": "ctx_x"},
            max_retries=3,
            retry_delay=250,
            backoff="fixed",
            timeout=1000,
            fallback="safe",
            join="any",
        )
        .to_blueprint()
    )
    node = bp.to_dict()["nodes"][1]
    assert node == {
        "id": "a",
        "uses": f"{__name__}:fetch",
        "params": {"url": "http://x", "n": [1, 2]},
        "inputs": {"x": "ctx_x"},
        "config": {
            "maxRetries": 3,
            "retryDelay": 250,
            "backoff": "fixed",
            "timeout": 1000,
            "fallback": "safe",
            "joinStrategy": "any",
        },
    }
    assert bp.to_dict()["nodes"][0] == {"id": "safe", "uses": f"{__name__}:process"}
    assert_round_trips(bp)


def test_string_inputs() -> None:
    bp = Flow("f").node("a", fetch, inputs="source").to_blueprint()
    assert bp.node("a").inputs == "source"


def test_invalid_config_is_rejected_at_once() -> None:
    flow = Flow("f")
    with pytest.raises(ValueError, match="'a'"):
        flow.node("a", fetch, max_retries=0)
    assert flow.registry == {}  # the rejected node left nothing behind
    with pytest.raises(ValueError, match="'a'"):
        Flow("f").node("a", fetch, backoff="linear")


def test_params_are_copied_and_must_be_json() -> None:
    params: dict[str, Any] = {"items": [1]}
    flow = Flow("f").node("a", fetch, params=params)
    params["items"].append(2)
    assert flow.to_blueprint().node("a").params == {"items": [1]}
    with pytest.raises(ValueError, match="JSON"):
        Flow("f").node("b", fetch, params={"when": object()})
    with pytest.raises(ValueError, match="JSON"):
        Flow("f").node("b", fetch, params={"t": (1, 2)})


# -- registry keys -----------------------------------------------------------------------------


def test_registry_key_of_module_function() -> None:
    flow = Flow("f").node("a", fetch)
    key = f"{__name__}:fetch"
    assert flow.to_blueprint().node("a").uses == key
    assert flow.registry == {key: fetch}


def test_registry_key_of_class() -> None:
    flow = Flow("f").node("s", Summarize)
    key = f"{__name__}:Summarize"
    assert flow.to_blueprint().node("s").uses == key
    assert flow.registry == {key: Summarize}


def test_registry_key_of_lambda_and_closure() -> None:
    def inner(ctx: NodeContext) -> None:
        return None

    lam = lambda ctx: None  # noqa: E731
    flow = Flow("flow1").node("a", lam).node("b", inner)
    bp = flow.to_blueprint()
    assert bp.node("a").uses == "flow1.a"
    assert bp.node("b").uses == "flow1.b"
    assert flow.registry == {"flow1.a": lam, "flow1.b": inner}


def test_registry_keys_are_stable_across_flows() -> None:
    a = Flow("f").node("x", lambda ctx: None).node("y", fetch).to_blueprint()
    b = Flow("f").node("x", lambda ctx: None).node("y", fetch).to_blueprint()
    assert a == b


def test_explicit_uses_wins() -> None:
    flow = Flow("f").node("a", fetch, uses="http-fetch")
    assert flow.to_blueprint().node("a").uses == "http-fetch"
    assert flow.registry == {"http-fetch": fetch}


def test_string_impl_adds_no_registry_entry() -> None:
    flow = Flow("f").node("a", "some-key").node("b", "sleep", params={"duration": 5})
    bp = flow.to_blueprint()
    assert bp.node("a").uses == "some-key"
    assert bp.node("b").uses == "sleep"
    assert flow.registry == {}


def test_same_implementation_twice_shares_the_key() -> None:
    flow = Flow("f").node("a", fetch).node("b", fetch)
    bp = flow.to_blueprint()
    assert bp.node("a").uses == bp.node("b").uses == f"{__name__}:fetch"
    assert flow.registry == {f"{__name__}:fetch": fetch}


def test_key_collision_names_both_nodes() -> None:
    flow = Flow("f").node("first", fetch, uses="k")
    with pytest.raises(ValueError, match="k") as info:
        flow.node("second", process, uses="k")
    assert "'first'" in str(info.value)
    assert "'second'" in str(info.value)


def test_builtin_key_cannot_be_overridden() -> None:
    with pytest.raises(ValueError, match="built-in"):
        Flow("f").node("a", fetch, uses="sleep")


def test_non_node_class_is_rejected() -> None:
    class NotANode:
        pass

    with pytest.raises(TypeError, match="BaseNode"):
        Flow("f").node("a", NotANode)  # type: ignore[arg-type]


# -- structural errors -------------------------------------------------------------------------


def test_duplicate_node_id() -> None:
    flow = Flow("f").node("a", fetch)
    with pytest.raises(ValueError, match="duplicate node id 'a'"):
        flow.node("a", process)
    with pytest.raises(ValueError, match="duplicate node id 'a'"):
        flow.sleep("a", 5)


def test_empty_flow() -> None:
    with pytest.raises(ValueError, match="no nodes"):
        Flow("f").to_blueprint()


def test_unknown_edge_node_reported_by_blueprint_validation() -> None:
    flow = Flow("f").node("a", fetch).edge("a", "ghost")
    with pytest.raises(BlueprintValidationError, match="ghost"):
        flow.to_blueprint()


def test_duplicate_edge() -> None:
    flow = Flow("f").node("a", fetch).node("b", process).edge("a", "b").edge("a", "b")
    with pytest.raises(ValueError, match="'a' -> 'b'"):
        flow.to_blueprint()


# -- batch -------------------------------------------------------------------------------------


def test_batch_wiring() -> None:
    flow = (
        Flow("f")
        .node("load", fetch)
        .batch("b", process, input_key="items", output_key="results", chunk_size=10)
        .node("report", Summarize)
        .edge("load", "b")
        .edge("b", "report")
    )
    bp = flow.to_blueprint()
    assert [(n.id, n.uses) for n in bp.nodes] == [
        ("load", f"{__name__}:fetch"),
        ("b_scatter", "batch-scatter"),
        ("b_gather", "batch-gather"),
        ("report", f"{__name__}:Summarize"),
    ]
    assert edges_of(bp) == [
        ("b_scatter", "b_gather", None),
        ("load", "b_scatter", None),
        ("b_gather", "report", None),
    ]
    scatter = bp.node("b_scatter")
    assert scatter.inputs == "items"
    assert scatter.params == {
        "workerUsesKey": f"{__name__}:process",
        "gatherNodeId": "b_gather",
        "outputKey": "results",
        "chunkSize": 10,
        "onItemError": "fail",
    }
    gather = bp.node("b_gather")
    assert gather.params == {"gatherNodeId": "b_gather", "outputKey": "results"}
    assert gather.config.join_strategy == "all"
    assert flow.registry[f"{__name__}:process"] is process
    assert_round_trips(bp)


def test_batch_defaults_and_lambda_worker() -> None:
    worker = lambda ctx: None  # noqa: E731
    flow = Flow("f").batch("b", worker, input_key="items", on_item_error="collect")
    bp = flow.to_blueprint()
    assert bp.node("b_scatter").params == {
        "workerUsesKey": "f.b_worker",
        "gatherNodeId": "b_gather",
        "outputKey": "b_gather",
        "onItemError": "collect",
    }
    assert bp.node("b_gather").params["outputKey"] == "b_gather"
    assert flow.registry == {"f.b_worker": worker}


def test_batch_worker_uses_and_ids() -> None:
    flow = Flow("f").batch("b", fetch, input_key="items", worker_uses="w")
    assert flow.to_blueprint().node("b_scatter").params["workerUsesKey"] == "w"
    assert flow.registry == {"w": fetch}
    with pytest.raises(ValueError, match="duplicate node id 'b'"):
        flow.node("b", process)
    with pytest.raises(ValueError, match="duplicate node id 'b_scatter'"):
        Flow("g").node("b_scatter", fetch).batch("b", process, input_key="items")
    with pytest.raises(ValueError, match="chunk_size"):
        Flow("g").batch("b", process, input_key="items", chunk_size=0)


# -- loop --------------------------------------------------------------------------------------


def test_loop_wiring() -> None:
    bp = (
        Flow("f")
        .node("init", fetch)
        .node("body", process)
        .node("check", Summarize)
        .node("done", "finish")
        .node("audit", "audit")
        .loop("l", start="body", end="check", condition="count < 3", max_iterations=10)
        .edge("init", "body")
        .edge("body", "check")
        .edge("l", "done")
        .edge("l", "audit", action="custom")
        .to_blueprint()
    )
    ctrl = bp.node("l")
    assert ctrl.uses == "loop-controller"
    assert ctrl.params == {"condition": "count < 3", "maxIterations": 10}
    assert ctrl.config.join_strategy == "any"
    assert edges_of(bp) == [
        ("check", "l", None),
        ("l", "body", "continue"),
        ("init", "body", None),
        ("body", "check", None),
        ("l", "done", "break"),
        ("l", "audit", "custom"),
    ]
    assert_round_trips(bp)


def test_loop_without_max_iterations_and_nodes_added_later() -> None:
    bp = Flow("f").loop("l", start="a", end="a", condition="x").node("a", fetch).to_blueprint()
    assert bp.node("l").params == {"condition": "x"}
    assert edges_of(bp) == [("a", "l", None), ("l", "a", "continue")]


@pytest.mark.parametrize(
    ("start", "end", "missing"), [("ghost", "a", "start"), ("a", "ghost", "end")]
)
def test_loop_missing_start_or_end(start: str, end: str, missing: str) -> None:
    flow = Flow("f").node("a", fetch).loop("l", start=start, end=end, condition="x")
    with pytest.raises(ValueError, match=f"{missing} node 'ghost'"):
        flow.to_blueprint()


def test_loop_over_batch() -> None:
    bp = (
        Flow("f")
        .batch("b", process, input_key="items")
        .loop("l", start="b", end="b", condition="more")
        .to_blueprint()
    )
    assert edges_of(bp) == [
        ("b_scatter", "b_gather", None),
        ("b_gather", "l", None),
        ("l", "b_scatter", "continue"),
    ]


# -- built-in nodes ----------------------------------------------------------------------------


def test_sleep_wait_subflow() -> None:
    bp = (
        Flow("f")
        .sleep("nap", 1500)
        .sleep("long", "2h")
        .wait("approval", event_name="approved")
        .wait("any")
        .subflow("sub", "child", inputs={"x": "parent_x"}, outputs={"parent_y": "y"})
        .subflow("bare", "child")
        .to_blueprint()
    )
    assert [(n.id, n.uses, n.params) for n in bp.nodes] == [
        ("nap", "sleep", {"duration": 1500}),
        ("long", "sleep", {"duration": "2h"}),
        ("approval", "wait", {"eventName": "approved"}),
        ("any", "wait", {}),
        (
            "sub",
            "subflow",
            {"blueprintId": "child", "inputs": {"x": "parent_x"}, "outputs": {"parent_y": "y"}},
        ),
        ("bare", "subflow", {"blueprintId": "child"}),
    ]
    assert_round_trips(bp)


@pytest.mark.parametrize("bad", ["10", "10 s", "5w", "", -1, float("inf"), True])
def test_bad_sleep_duration(bad: Any) -> None:
    with pytest.raises(ValueError, match="'nap'"):
        Flow("f").sleep("nap", bad)


# -- metadata ----------------------------------------------------------------------------------


def test_version_and_cycle_entry_points() -> None:
    bp = (
        create_flow("f", version="2.1", metadata={"owner": "ops"})
        .node("a", fetch)
        .node("b", process)
        .set_cycle_entry_point("a")
        .set_cycle_entry_point("b")
        .set_cycle_entry_point("a")
        .to_blueprint()
    )
    assert bp.metadata == {"owner": "ops", "version": "2.1", "cycleEntryPoints": ["a", "b"]}
    assert bp.version == "2.1"
    assert_round_trips(bp)


def test_unknown_cycle_entry_point() -> None:
    flow = Flow("f").node("a", fetch).set_cycle_entry_point("ghost")
    with pytest.raises(BlueprintValidationError, match="ghost"):
        flow.to_blueprint()


def test_create_flow_is_flow() -> None:
    flow = create_flow("f")
    assert isinstance(flow, Flow)
    assert flow.id == "f"


# -- immutability ------------------------------------------------------------------------------


def test_each_blueprint_is_new_and_unaffected_by_later_calls() -> None:
    flow = Flow("f").node("a", fetch, params={"p": [1]})
    first = flow.to_blueprint()
    second = flow.to_blueprint()
    assert first == second
    assert first is not second
    assert first.nodes[0].params is not second.nodes[0].params

    flow.node("b", process).edge("a", "b").set_cycle_entry_point("a")
    third = flow.to_blueprint()
    assert [n.id for n in first.nodes] == ["a"]
    assert first.edges == ()
    assert first.metadata == {}
    assert [n.id for n in third.nodes] == ["a", "b"]

    second.nodes[0].params["p"].append(2)
    assert flow.to_blueprint().node("a").params == {"p": [1]}


def test_blueprint_is_frozen() -> None:
    bp = Flow("f").node("a", fetch).to_blueprint()
    with pytest.raises(ValueError):
        bp.id = "g"  # type: ignore[misc]


def test_registry_is_a_copy() -> None:
    flow = Flow("f").node("a", fetch)
    flow.registry.clear()
    assert flow.registry == {f"{__name__}:fetch": fetch}


# -- graph representation ----------------------------------------------------------------------


def test_graph_plain_nodes_and_edges() -> None:
    graph = (
        Flow("f")
        .node("a", fetch, inputs="src", max_retries=2)
        .node("b", "other")
        .edge("a", "b", action="ok", condition="x")
        .to_graph_representation()
    )
    assert isinstance(graph, UIGraph)
    assert graph.nodes == [
        {
            "id": "a",
            "uses": f"{__name__}:fetch",
            "params": {},
            "data": {"label": "a", "inputs": "src", "config": {"maxRetries": 2}},
            "type": f"{__name__}:fetch",
        },
        {"id": "b", "uses": "other", "params": {}, "data": {"label": "b"}, "type": "other"},
    ]
    assert graph.edges == [
        {"source": "a", "target": "b", "action": "ok", "condition": "x", "data": {"label": "ok"}}
    ]


def test_graph_loop_is_collapsed() -> None:
    graph = (
        Flow("f")
        .node("body", process)
        .node("check", Summarize)
        .node("done", "finish")
        .loop("l", start="body", end="check", condition="count < 3")
        .edge("body", "check")
        .edge("l", "done", condition="ok")
        .to_graph_representation()
    )
    assert [n["id"] for n in graph.nodes] == ["body", "check", "done"]
    assert graph.edges == [
        {
            "source": "check",
            "target": "body",
            "data": {
                "isLoopback": True,
                "condition": "count < 3",
                "label": "continue if: count < 3",
            },
        },
        {"source": "body", "target": "check", "data": {}},
        {
            "source": "check",
            "target": "done",
            "action": "break",
            "condition": "ok",
            "data": {"label": "break"},
        },
    ]


def test_graph_batch_is_collapsed() -> None:
    graph = (
        Flow("f")
        .node("load", fetch)
        .batch("b", process, input_key="items", output_key="results")
        .node("report", Summarize)
        .edge("load", "b")
        .edge("b", "report")
        .to_graph_representation()
    )
    assert [n["id"] for n in graph.nodes] == ["load", "b", "report"]
    assert graph.nodes[1] == {
        "id": "b",
        "type": "batch-worker",
        "data": {
            "workerUsesKey": f"{__name__}:process",
            "inputKey": "items",
            "outputKey": "results",
        },
    }
    assert graph.edges == [
        {"source": "load", "target": "b", "data": {}},
        {"source": "b", "target": "report", "data": {}},
    ]


def test_graph_loop_over_batch() -> None:
    graph = (
        Flow("f")
        .batch("b", process, input_key="items")
        .node("after", "x")
        .loop("l", start="b", end="b", condition="more")
        .edge("l", "after")
        .to_graph_representation()
    )
    assert [n["id"] for n in graph.nodes] == ["b", "after"]
    assert [(e["source"], e["target"], e.get("action")) for e in graph.edges] == [
        ("b", "b", None),
        ("b", "after", "break"),
    ]
    assert graph.edges[0]["data"]["isLoopback"] is True


def test_graph_of_empty_flow() -> None:
    assert Flow("f").to_graph_representation() == UIGraph(nodes=[], edges=[])
