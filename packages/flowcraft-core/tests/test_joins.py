"""Join semantics: fan-in inputs, ``all``/``any`` joins, skip propagation, diamonds, several
start nodes and fallback targets that are never start nodes."""

from __future__ import annotations

import pytest
from flowcraft import FlowRuntime, ListenerBus, create_flow, load_blueprint
from helpers import ECHO, Recorder, run_flow

# -- all joins -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "delays",
    [
        {"b": 0.0, "c": 0.01, "d": 0.02},
        {"b": 0.02, "c": 0.01, "d": 0.0},
        {"b": 0.01, "c": 0.02, "d": 0.0},
    ],
)
async def test_all_join_input_is_keyed_by_predecessor_in_blueprint_order(
    delays: dict[str, float],
) -> None:
    rec = Recorder()
    flow = create_flow("f").node("a", rec.node(1))
    for p in ("b", "c", "d"):
        flow.node(p, rec.node(lambda ctx: f"{ctx.node_id}:{ctx.input}", delay=delays[p]))
        flow.edge("a", p)
    flow.node("j", rec.node(ECHO))
    for p in ("b", "c", "d"):
        flow.edge(p, "j")
    result = await run_flow(flow)

    # The predecessors really finished in the order the delays dictate ...
    expected_finish = sorted(("b", "c", "d"), key=lambda p: delays[p])
    assert [n for n in rec.finished() if n in "bcd"] == expected_finish
    # ... yet the join input is the same dict, in blueprint (edge) order.
    assert result.status == "completed"
    assert rec.count("j") == 1
    [j_input] = rec.inputs("j")
    assert j_input == {"b": "b:1", "c": "c:1", "d": "d:1"}
    assert list(j_input) == ["b", "c", "d"]
    assert rec.order[-1] == "j"
    assert result.outputs["j"] == {"b": "b:1", "c": "c:1", "d": "d:1"}


async def test_all_join_key_order_follows_edge_order_not_node_order() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("x", rec.node("X"))
        .node("y", rec.node("Y"))
        .node("j", rec.node(ECHO))
        .edge("y", "j")
        .edge("x", "j")
    )
    await run_flow(flow)
    [j_input] = rec.inputs("j")
    assert list(j_input.items()) == [("y", "Y"), ("x", "X")]


async def test_single_predecessor_delivers_the_plain_value() -> None:
    rec = Recorder()
    flow = create_flow("f").node("a", rec.node([1, 2])).node("b", rec.node(ECHO)).edge("a", "b")
    await run_flow(flow)
    assert rec.inputs("b") == [[1, 2]]


async def test_all_join_waits_for_the_slowest_predecessor() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("fast", rec.node())
        .node("slow", rec.node(delay=0.02))
        .node("j", rec.node())
        .edge("fast", "j")
        .edge("slow", "j")
    )
    result = await run_flow(flow)
    assert rec.log.index(("start", "j")) > rec.log.index(("finish", "slow"))
    assert result.node_statuses == {"fast": "completed", "slow": "completed", "j": "completed"}


# -- any joins -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("slow", "fast"), [("b", "c"), ("c", "b")])
async def test_any_join_runs_once_with_the_first_arrival(slow: str, fast: str) -> None:
    rec = Recorder()
    delays = {slow: 0.02, fast: 0.0}
    flow = (
        create_flow("f")
        .node("a", rec.node())
        .node("b", rec.node("from b", delay=delays["b"]))
        .node("c", rec.node("from c", delay=delays["c"]))
        .node("j", rec.node(ECHO), join="any")
        .node("after", rec.node(ECHO))
        .edge("a", "b")
        .edge("a", "c")
        .edge("b", "j")
        .edge("c", "j")
        .edge("j", "after")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert result.node_statuses == {
        "a": "completed",
        "b": "completed",
        "c": "completed",
        "j": "completed",
        "after": "completed",
    }
    assert rec.count("j") == 1
    assert rec.count("after") == 1
    assert rec.inputs("j") == [f"from {fast}"]
    assert rec.inputs("after") == [f"from {fast}"]
    # The join started before the slow predecessor finished.
    assert rec.log.index(("start", "j")) < rec.log.index(("finish", slow))


async def test_any_join_behind_untaken_branch_runs_from_the_taken_one() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("a", rec.node("v", action="left"))
        .node("l", rec.node(ECHO))
        .node("r", rec.node(ECHO))
        .node("j", rec.node(ECHO), join="any")
        .edge("a", "l", action="left")
        .edge("a", "r", action="right")
        .edge("l", "j")
        .edge("r", "j")
    )
    result = await run_flow(flow)
    assert result.node_statuses == {
        "a": "completed",
        "l": "completed",
        "r": "skipped",
        "j": "completed",
    }
    assert rec.inputs("j") == ["v"]


async def test_any_join_with_no_taken_edge_is_skipped() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("a", rec.node(action="none"))
        .node("l", rec.node())
        .node("r", rec.node())
        .node("j", rec.node(), join="any")
        .node("k", rec.node())
        .edge("a", "l", action="left")
        .edge("a", "r", action="right")
        .edge("l", "j")
        .edge("r", "j")
        .edge("j", "k")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert result.node_statuses == {
        "a": "completed",
        "l": "skipped",
        "r": "skipped",
        "j": "skipped",
        "k": "skipped",
    }
    assert rec.order == ["a"]


# -- skip propagation ----------------------------------------------------------------------------


async def test_all_join_behind_an_untaken_branch_runs_with_taken_predecessors_only() -> None:
    # Upstream bug B4: the join never ran and the run still said "completed".
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("a", rec.node("in", action="left"))
        .node("l", rec.node(lambda ctx: f"l({ctx.input})"))
        .node("r", rec.node())
        .node("m", rec.node())
        .node("j", rec.node(ECHO))
        .edge("a", "l", action="left")
        .edge("a", "r", action="right")
        .edge("a", "m")
        .edge("l", "j")
        .edge("r", "j")
        .edge("m", "j")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert result.node_statuses == {
        "a": "completed",
        "l": "completed",
        "r": "skipped",
        "m": "skipped",
        "j": "completed",
    }
    assert rec.inputs("j") == [{"l": "l(in)"}]


async def test_skip_cascades_down_a_chain() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("a", rec.node(action="other"))
        .node("b", rec.node())
        .node("c", rec.node())
        .node("d", rec.node())
        .node("e", rec.node())
        .node("o", rec.node())
        .edge("a", "b", action="go")
        .edge("b", "c")
        .edge("c", "d")
        .edge("d", "e")
        .edge("a", "o", action="other")
    )
    events: list[tuple[str, str]] = []
    bus = ListenerBus()
    bus.subscribe(
        lambda ev: (
            events.append((ev.type, ev.payload["nodeId"])) if ev.type == "node:skipped" else None
        )
    )
    result = await run_flow(flow, runtime=FlowRuntime(event_bus=bus))
    assert result.status == "completed"
    assert result.node_statuses == {
        "a": "completed",
        "b": "skipped",
        "c": "skipped",
        "d": "skipped",
        "e": "skipped",
        "o": "completed",
    }
    assert rec.order == ["a", "o"]
    assert events == [("node:skipped", n) for n in ("b", "c", "d", "e")]


async def test_skipped_branch_joins_a_taken_branch_further_down() -> None:
    # a -> (b | c); c -> d; b -> e; d -> e: e runs with b's value only, d is skipped.
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("a", rec.node(action="b"))
        .node("b", rec.node())
        .node("c", rec.node())
        .node("d", rec.node())
        .node("e", rec.node(ECHO))
        .edge("a", "b", action="b")
        .edge("a", "c", action="c")
        .edge("c", "d")
        .edge("b", "e")
        .edge("d", "e")
    )
    result = await run_flow(flow)
    assert result.node_statuses == {
        "a": "completed",
        "b": "completed",
        "c": "skipped",
        "d": "skipped",
        "e": "completed",
    }
    assert rec.inputs("e") == [{"b": "b"}]


async def test_condition_false_on_one_of_two_edges_into_a_join() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("a", rec.node(5))
        .node("j", rec.node(ECHO))
        .node("b", rec.node(ECHO))
        .edge("a", "b")
        .edge("a", "j", condition="output > 10")
        .edge("b", "j")
    )
    result = await run_flow(flow)
    assert result.node_statuses == {"a": "completed", "j": "completed", "b": "completed"}
    assert rec.inputs("j") == [{"b": 5}]


# -- shapes --------------------------------------------------------------------------------------


async def test_diamond() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("a", rec.node(3))
        .node("b", rec.node(lambda ctx: ctx.input + 1, delay=0.01))
        .node("c", rec.node(lambda ctx: ctx.input * 2))
        .node("d", rec.node(lambda ctx: ctx.input["b"] + ctx.input["c"]))
        .edge("a", "b")
        .edge("a", "c")
        .edge("b", "d")
        .edge("c", "d")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert {rec.count(n) for n in "abcd"} == {1}
    assert rec.order[0] == "a"
    assert rec.order[-1] == "d"
    assert rec.inputs("d") == [{"b": 4, "c": 6}]
    assert result.outputs == {"a": 3, "b": 4, "c": 6, "d": 10}


async def test_parallel_branches_overlap() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("a", rec.node())
        .node("b", rec.node(delay=0.01))
        .node("c", rec.node(delay=0.01))
        .edge("a", "b")
        .edge("a", "c")
    )
    await run_flow(flow)
    assert rec.max_active == 2


async def test_multiple_start_nodes() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("s1", rec.node(ECHO))
        .node("s2", rec.node(lambda ctx: "two"))
        .node("s3", rec.node(lambda ctx: "three"))
        .node("j", rec.node(ECHO))
        .edge("s1", "j")
        .edge("s2", "j")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert sorted(rec.order[:3]) == ["s1", "s2", "s3"]
    assert rec.inputs("s1") == [None]
    assert rec.inputs("j") == [{"s1": None, "s2": "two"}]
    assert result.node_statuses == {
        "s1": "completed",
        "s2": "completed",
        "s3": "completed",
        "j": "completed",
    }


async def test_node_without_edges_runs_alone() -> None:
    rec = Recorder()
    result = await run_flow(create_flow("f").node("only", rec.node(42)))
    assert result.status == "completed"
    assert result.node_statuses == {"only": "completed"}
    assert result.outputs == {"only": 42}


async def test_concurrency_one_runs_branches_one_at_a_time() -> None:
    rec = Recorder()
    flow = create_flow("f").node("a", rec.node())
    for p in ("b", "c", "d"):
        flow.node(p, rec.node(yields=3)).edge("a", p)
    result = await run_flow(flow, concurrency=1)
    assert result.status == "completed"
    assert rec.max_active == 1
    assert rec.order == ["a", "b", "c", "d"]


# -- fallback targets ----------------------------------------------------------------------------


async def test_fallback_target_is_not_a_start_node_and_is_skipped_when_unneeded() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("work", rec.node("fine"), fallback="fb")
        .node("fb", rec.node())
        .node("after_fb", rec.node())
        .node("next", rec.node(ECHO))
        .edge("fb", "after_fb")
        .edge("work", "next")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert result.node_statuses == {
        "work": "completed",
        "fb": "skipped",
        "after_fb": "skipped",
        "next": "completed",
    }
    assert rec.order == ["work", "next"]
    assert rec.inputs("next") == ["fine"]


async def test_fallback_of_a_skipped_node_is_skipped() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("a", rec.node(action="no"))
        .node("b", rec.node(), fallback="fb")
        .node("fb", rec.node())
        .edge("a", "b", action="yes")
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert result.node_statuses == {"a": "completed", "b": "skipped", "fb": "skipped"}
    assert rec.order == ["a"]


async def test_shared_fallback_waits_for_every_owner() -> None:
    rec = Recorder()
    flow = (
        create_flow("f")
        .node("fast", rec.node(), fallback="fb")
        .node("slow", rec.node(error="late failure", delay=0.01), fallback="fb")
        .node("fb", rec.node("patched"))
    )
    result = await run_flow(flow)
    assert result.status == "completed"
    assert result.node_statuses == {"fast": "completed", "slow": "recovered", "fb": "completed"}
    assert rec.count("fb") == 1
    assert result.outputs["slow"] == "patched"


async def test_fallback_target_with_its_own_incoming_edge_runs_normally() -> None:
    rec = Recorder()
    bp = load_blueprint(
        {
            "id": "f",
            "nodes": [
                {"id": "a", "uses": "a", "config": {"fallback": "fb"}},
                {"id": "fb", "uses": "fb"},
            ],
            "edges": [{"source": "a", "target": "fb"}],
        }
    )
    result = await FlowRuntime().run(bp, registry={"a": rec.node(1), "fb": rec.node(ECHO)})
    assert result.status == "completed"
    assert result.node_statuses == {"a": "completed", "fb": "completed"}
    assert rec.inputs("fb") == [1]
