"""Tests for flowcraft.analysis: cycles, start and terminal nodes."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

from flowcraft.analysis import (
    MAX_CYCLES,
    BlueprintAnalysis,
    analyze_blueprint,
    find_cycles,
    start_node_ids,
    terminal_node_ids,
)
from flowcraft.blueprint import WorkflowBlueprint, load_blueprint
from hypothesis import given, settings
from hypothesis import strategies as st


def make_bp(
    nodes: Sequence[str | dict[str, Any]],
    edges: Sequence[tuple[str, str] | dict[str, Any]] = (),
    metadata: dict[str, Any] | None = None,
) -> WorkflowBlueprint:
    return load_blueprint(
        {
            "id": "wf",
            "nodes": [n if isinstance(n, dict) else {"id": n, "uses": "task"} for n in nodes],
            "edges": [
                e if isinstance(e, dict) else {"source": e[0], "target": e[1]} for e in edges
            ],
            "metadata": metadata or {},
        }
    )


# ---------------------------------------------------------------------------- examples


def test_empty_blueprint() -> None:
    bp = make_bp([])
    assert analyze_blueprint(bp) == BlueprintAnalysis(
        cycles=[],
        start_node_ids=[],
        terminal_node_ids=[],
        node_count=0,
        edge_count=0,
        is_dag=True,
    )


def test_linear_chain() -> None:
    bp = make_bp(["a", "b", "c"], [("a", "b"), ("b", "c")])
    assert analyze_blueprint(bp) == BlueprintAnalysis(
        cycles=[],
        start_node_ids=["a"],
        terminal_node_ids=["c"],
        node_count=3,
        edge_count=2,
        is_dag=True,
    )


def test_diamond_and_isolated_node() -> None:
    bp = make_bp(["a", "b", "c", "d", "lonely"], [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    assert start_node_ids(bp) == ["a", "lonely"]
    assert terminal_node_ids(bp) == ["d", "lonely"]
    assert find_cycles(bp) == []


def test_self_loop_is_a_one_node_cycle() -> None:
    bp = make_bp(["a", "b"], [("a", "b"), ("b", "b")])
    assert find_cycles(bp) == [["b"]]
    assert start_node_ids(bp) == ["a"]
    assert terminal_node_ids(bp) == []  # b's self-loop is an outgoing edge
    assert analyze_blueprint(bp).is_dag is False


def test_two_cycle_reported_once_despite_parallel_edges() -> None:
    bp = make_bp(
        ["a", "b"],
        [
            ("a", "b"),
            {"source": "a", "target": "b", "action": "retry"},
            ("b", "a"),
            {"source": "b", "target": "a", "action": "again"},
        ],
    )
    assert find_cycles(bp) == [["a", "b"]]


def test_cycles_sorted_by_first_position_length_then_ids() -> None:
    edges = [("a", "b"), ("b", "a"), ("b", "c"), ("c", "b"), ("a", "c"), ("c", "a")]
    bp = make_bp(["a", "b", "c"], edges)
    assert find_cycles(bp) == [
        ["a", "b"],
        ["a", "c"],
        ["a", "b", "c"],
        ["a", "c", "b"],
        ["b", "c"],
    ]


def test_cycle_rotated_to_first_node_in_blueprint_order() -> None:
    bp = make_bp(["c", "a", "b"], [("a", "b"), ("b", "c"), ("c", "a")])
    assert find_cycles(bp) == [["c", "a", "b"]]


def test_cycles_in_separate_components_and_nested() -> None:
    # Figure-eight through x, plus an unrelated triangle.
    bp = make_bp(
        ["x", "p", "q", "t1", "t2", "t3"],
        [("x", "p"), ("p", "x"), ("x", "q"), ("q", "x"), ("t1", "t2"), ("t2", "t3"), ("t3", "t1")],
    )
    assert find_cycles(bp) == [["x", "p"], ["x", "q"], ["t1", "t2", "t3"]]


def test_fallback_targets_are_not_start_nodes() -> None:
    bp = make_bp(
        [
            {"id": "a", "uses": "task"},
            {"id": "b", "uses": "task", "config": {"fallback": "rescue"}},
            {"id": "rescue", "uses": "task"},
        ],
        [("a", "b")],
    )
    assert start_node_ids(bp) == ["a"]
    assert terminal_node_ids(bp) == ["b", "rescue"]


def test_fully_cyclic_graph_starts_at_first_node_of_entry_scc() -> None:
    # {b, a} is a cycle no edge enters; {c, d} is entered from a; all nodes have in-edges.
    bp = make_bp(
        ["c", "b", "a", "d"],
        [("a", "b"), ("b", "a"), ("a", "c"), ("c", "d"), ("d", "c")],
    )
    assert start_node_ids(bp) == ["b"]


def test_fully_cyclic_graph_with_several_entry_sccs() -> None:
    bp = make_bp(["s", "a", "b", "c"], [("a", "b"), ("b", "a"), ("c", "c"), ("s", "s")])
    assert start_node_ids(bp) == ["s", "a", "c"]


def test_cycle_entry_points_metadata_wins_when_no_natural_start() -> None:
    bp = make_bp(
        ["a", "b", "c"],
        [("a", "b"), ("b", "c"), ("c", "a")],
        metadata={"cycleEntryPoints": ["b"]},
    )
    assert start_node_ids(bp) == ["b"]


def test_cycle_entry_points_ignored_when_natural_starts_exist() -> None:
    bp = make_bp(
        ["s", "a", "b"],
        [("s", "a"), ("a", "b"), ("b", "a")],
        metadata={"cycleEntryPoints": ["b"]},
    )
    assert start_node_ids(bp) == ["s"]


def test_all_nodes_fallback_targets_falls_back_to_first_node() -> None:
    bp = make_bp(
        [
            {"id": "a", "uses": "task", "config": {"fallback": "b"}},
            {"id": "b", "uses": "task", "config": {"fallback": "a"}},
        ]
    )
    assert start_node_ids(bp) == ["a"]


def test_tolerates_unvalidated_blueprint() -> None:
    from flowcraft.blueprint import EdgeDefinition, NodeDefinition

    bp = WorkflowBlueprint.model_construct(
        id="raw",
        nodes=(
            NodeDefinition(id="a", uses="t"),
            NodeDefinition(id="b", uses="t"),
            NodeDefinition(id="a", uses="dup"),
        ),
        edges=(
            EdgeDefinition(source="a", target="b"),
            EdgeDefinition(source="b", target="a"),
            EdgeDefinition(source="b", target="ghost"),
        ),
        metadata={},
    )
    assert find_cycles(bp) == [["a", "b"]]
    assert start_node_ids(bp) == ["a"]
    assert terminal_node_ids(bp) == []


def test_long_chain_and_ring_are_fast_and_iterative() -> None:
    n = 10_000
    ids = [f"n{i}" for i in range(n)]
    chain = [(ids[i], ids[i + 1]) for i in range(n - 1)]
    started = time.perf_counter()
    bp = make_bp(ids, chain)
    assert find_cycles(bp) == []
    assert start_node_ids(bp) == ["n0"]
    assert terminal_node_ids(bp) == [ids[-1]]
    ring = make_bp(ids, [*chain, (ids[-1], ids[0])])
    assert find_cycles(ring) == [ids]
    assert start_node_ids(ring) == ["n0"]
    # A ladder of 2-cycles: 9,999 cycles in one big strongly connected component.
    ladder = make_bp(ids, [*chain, *((v, u) for u, v in chain)])
    assert find_cycles(ladder) == [[ids[i], ids[i + 1]] for i in range(n - 1)]
    assert start_node_ids(ladder) == ["n0"]
    assert time.perf_counter() - started < 10


def test_cycle_output_is_bounded() -> None:
    ids = [f"k{i}" for i in range(9)]
    complete = [(u, v) for u in ids for v in ids if u != v]
    cycles = find_cycles(make_bp(ids, complete))
    assert len(cycles) == MAX_CYCLES
    assert len({tuple(c) for c in cycles}) == MAX_CYCLES
    assert all(len(set(c)) == len(c) for c in cycles)
    assert cycles == sorted(cycles, key=lambda c: (int(c[0][1:]), len(c), c))


# ---------------------------------------------------------------------------- properties


def brute_force_cycles(ids: list[str], edges: set[tuple[str, str]]) -> set[tuple[str, ...]]:
    """Every elementary cycle, canonically rotated to start at its lowest-positioned node."""
    found: set[tuple[str, ...]] = set()
    for k in range(1, len(ids) + 1):
        for subset in itertools.combinations(ids, k):  # subset[0] has the lowest position
            for rest in itertools.permutations(subset[1:]):
                cyc = (subset[0], *rest)
                if all((cyc[i], cyc[(i + 1) % k]) in edges for i in range(k)):
                    found.add(cyc)
    return found


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[str], list[tuple[str, str]]]:
    n = draw(st.integers(min_value=0, max_value=12))
    ids = [f"n{i}" for i in range(n)]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    chosen = draw(st.lists(st.sampled_from(pairs), max_size=30)) if pairs else []
    # Blueprint order is a shuffle of the topological order.
    order = draw(st.permutations(ids))
    return list(order), [(ids[i], ids[j]) for i, j in chosen]


@st.composite
def digraphs(draw: st.DrawFn, max_nodes: int = 6) -> tuple[list[str], list[tuple[str, str]]]:
    n = draw(st.integers(min_value=1, max_value=max_nodes))
    # Names deliberately not in blueprint order, so sorting by position != sorting by name.
    ids = draw(st.permutations([f"v{i}" for i in range(n)]))
    edges = draw(st.lists(st.tuples(st.sampled_from(ids), st.sampled_from(ids)), max_size=25))
    return list(ids), edges


@given(dags())
@settings(max_examples=150, deadline=None)
def test_random_dags_have_no_cycles(graph: tuple[list[str], list[tuple[str, str]]]) -> None:
    ids, edges = graph
    bp = make_bp(ids, edges)
    analysis = analyze_blueprint(bp)
    assert analysis.cycles == []
    assert analysis.is_dag
    targets = {t for _, t in edges}
    sources = {s for s, _ in edges}
    assert analysis.start_node_ids == [i for i in ids if i not in targets]
    assert analysis.terminal_node_ids == [i for i in ids if i not in sources]
    assert analysis.node_count == len(ids)
    assert analysis.edge_count == len(edges)


@given(digraphs())
@settings(max_examples=300, deadline=None)
def test_random_digraphs_cycles_are_real_unique_and_complete(
    graph: tuple[list[str], list[tuple[str, str]]],
) -> None:
    ids, edges = graph
    bp = make_bp(ids, edges)
    edge_set = set(edges)
    pos = {node_id: i for i, node_id in enumerate(ids)}
    cycles = find_cycles(bp)

    for cyc in cycles:
        assert cyc, "empty cycle"
        assert len(set(cyc)) == len(cyc), f"not elementary: {cyc}"
        assert all((cyc[i], cyc[(i + 1) % len(cyc)]) in edge_set for i in range(len(cyc)))
        assert min(cyc, key=pos.__getitem__) == cyc[0]

    rotations = [frozenset(tuple(c[i:] + c[:i]) for i in range(len(c))) for c in cycles]
    assert len(set(rotations)) == len(cycles), "duplicate cycle up to rotation"

    assert cycles == sorted(cycles, key=lambda c: (pos[c[0]], len(c), c))
    assert {tuple(c) for c in cycles} == brute_force_cycles(ids, edge_set)
    assert analyze_blueprint(bp).is_dag == (cycles == [])


@given(digraphs(max_nodes=10))
@settings(max_examples=150, deadline=None)
def test_random_digraphs_start_nodes(graph: tuple[list[str], list[tuple[str, str]]]) -> None:
    ids, edges = graph
    bp = make_bp(ids, edges)
    starts = start_node_ids(bp)
    targets = {t for _, t in edges}
    natural = [i for i in ids if i not in targets]
    if natural:
        assert starts == natural
    else:
        # Every node must be reachable from the chosen entry points.
        assert starts
        reached = set(starts)
        frontier = list(starts)
        while frontier:
            cur = frontier.pop()
            for s, t in edges:
                if s == cur and t not in reached:
                    reached.add(t)
                    frontier.append(t)
        assert reached == set(ids)
