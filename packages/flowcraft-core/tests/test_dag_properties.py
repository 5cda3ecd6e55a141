"""Property tests over random DAGs: exactly-once execution, topological start order, the
concurrency bound, fan-in inputs, and action routing checked against a reference simulation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from flowcraft import FlowRuntime, WorkflowResult, load_blueprint
from helpers import Recorder
from hypothesis import given, settings
from hypothesis import strategies as st

ACTIONS = (None, "a", "b")


@dataclass(frozen=True)
class Dag:
    """A random DAG over nodes n0..n{size-1}; edges only go from lower to higher index."""

    size: int
    edges: tuple[tuple[int, int, str | None], ...]  # (source, target, action)
    joins: tuple[str, ...]
    yields: tuple[int, ...]
    actions: tuple[str | None, ...]  # the action each node returns

    def preds(self, j: int) -> list[int]:
        """Distinct predecessors of node j, in edge order."""
        return list(dict.fromkeys(s for s, t, _ in self.edges if t == j))

    def blueprint(self) -> dict[str, Any]:
        """The blueprint (wire form); every node uses the key ``"rec"``."""
        return {
            "id": "dag",
            "nodes": [
                {"id": f"n{i}", "uses": "rec", "config": {"joinStrategy": self.joins[i]}}
                for i in range(self.size)
            ],
            "edges": [
                {"source": f"n{s}", "target": f"n{t}", **({"action": a} if a else {})}
                for s, t, a in self.edges
            ],
        }


@st.composite
def dags(draw: st.DrawFn, *, with_actions: bool) -> Dag:
    """Random DAGs of 1..9 nodes; with ``with_actions`` nodes and edges carry random actions."""
    size = draw(st.integers(1, 9))
    density = draw(st.sampled_from([0.15, 0.35, 0.6]))
    edges = []
    for s in range(size):
        for t in range(s + 1, size):
            if draw(st.floats(0, 1)) < density:
                action = draw(st.sampled_from(ACTIONS)) if with_actions else None
                edges.append((s, t, action))
    joins = tuple(draw(st.lists(st.sampled_from(["all", "any"]), min_size=size, max_size=size)))
    yields = tuple(draw(st.lists(st.integers(0, 4), min_size=size, max_size=size)))
    actions: tuple[str | None, ...] = (
        tuple(draw(st.lists(st.sampled_from(ACTIONS), min_size=size, max_size=size)))
        if with_actions
        else (None,) * size
    )
    return Dag(size, tuple(edges), joins, yields, actions)


def run_dag(dag: Dag, concurrency: int | None = None) -> tuple[WorkflowResult, Recorder]:
    """Run ``dag`` with one recorder implementation for every node."""
    rec = Recorder()
    node = rec.node(
        action=lambda ctx: dag.actions[int(ctx.node_id[1:])],
        yields=lambda ctx: dag.yields[int(ctx.node_id[1:])],
    )

    async def go() -> WorkflowResult:
        return await FlowRuntime(registry={"rec": node}).run(
            load_blueprint(dag.blueprint()), concurrency=concurrency
        )

    return asyncio.run(go()), rec


def taken_sources(dag: Dag) -> dict[int, list[int]]:
    """Reference simulation: for every node that runs, the sources of its taken in-edges.

    Start nodes (no in-edges) run; a node that runs takes the edges carrying its action, or
    (with no such edge, or no action) the edges without an action; a node runs iff at least
    one of its in-edges is taken. Nodes that do not run are absent from the result.
    """
    taken: dict[int, list[int]] = {}
    ran: set[int] = set()
    for j in range(dag.size):
        ins = [e for e in dag.edges if e[1] == j]
        if not ins:
            ran.add(j)
            taken[j] = []
        elif j in taken:
            ran.add(j)
        if j not in ran:
            continue
        outs = [e for e in dag.edges if e[0] == j]
        act = dag.actions[j]
        chosen = [e for e in outs if act is not None and e[2] == act]
        if not chosen:
            chosen = [e for e in outs if e[2] is None]
        for _, t, _ in chosen:
            taken.setdefault(t, []).append(j)
    return {j: taken[j] for j in ran}


@settings(max_examples=60, deadline=None)
@given(dag=dags(with_actions=False), concurrency=st.integers(1, 4))
def test_every_node_runs_once_in_topological_order_within_the_concurrency_bound(
    dag: Dag, concurrency: int
) -> None:
    result, rec = run_dag(dag, concurrency)
    ids = [f"n{i}" for i in range(dag.size)]

    assert result.status == "completed"
    assert result.errors == []
    assert result.node_statuses == dict.fromkeys(ids, "completed")
    assert sorted(rec.order) == sorted(ids)  # exactly once each
    assert rec.max_active <= concurrency
    assert result.outputs == {i: i for i in ids}

    start = {n: rec.log.index(("start", n)) for n in ids}
    finish = {n: rec.log.index(("finish", n)) for n in ids}
    for j in range(dag.size):
        preds = [f"n{p}" for p in dag.preds(j)]
        me = f"n{j}"
        [node_input] = rec.inputs(me)
        if not preds:
            assert node_input is None
            continue
        done_before = [p for p in preds if finish[p] < start[me]]
        if dag.joins[j] == "all":
            # An all-join starts only after every predecessor finished.
            assert done_before == preds
            if len(preds) == 1:
                assert node_input == preds[0]
            else:
                assert node_input == {p: p for p in preds}
                assert list(node_input) == preds
        else:
            # An any-join starts after its first arrival and gets that predecessor's output.
            assert done_before
            assert node_input in done_before


@settings(max_examples=60, deadline=None)
@given(dag=dags(with_actions=True), concurrency=st.sampled_from([1, 2, 32]))
def test_action_routing_runs_exactly_the_reachable_nodes(dag: Dag, concurrency: int) -> None:
    result, rec = run_dag(dag, concurrency)
    expected = taken_sources(dag)

    assert result.status == "completed"
    assert result.errors == []
    assert set(result.node_statuses.values()) <= {"completed", "skipped"}
    for j in range(dag.size):
        me = f"n{j}"
        runs = j in expected
        assert result.node_statuses[me] == ("completed" if runs else "skipped"), me
        assert rec.count(me) == (1 if runs else 0), me
        if not runs or not expected[j]:
            continue
        sources = [f"n{s}" for s in dict.fromkeys(expected[j])]
        [node_input] = rec.inputs(me)
        if dag.joins[j] == "any":
            assert node_input in sources
        elif len(dag.preds(j)) > 1:
            # Fan-in: keyed by the predecessors whose edge was taken, in edge order.
            assert node_input == {s: s for s in sources}
            assert list(node_input) == sources
        else:
            assert node_input == sources[0]
    assert rec.max_active <= concurrency
