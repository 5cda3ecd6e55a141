"""Worker-side run views: copy-on-touch forks, incremental commits and group commit."""

from __future__ import annotations

import asyncio
from typing import Any

from flowcraft import NodeContext, NodeResult, load_blueprint
from flowcraft.distributed import statekeys as sk
from flowcraft.distributed.contracts import Snapshot
from flowcraft.distributed.memory import InMemoryAdapter, MemoryBroker
from flowcraft.distributed.view import Changes, RunView, Tracked
from flowcraft.state import NodeState, RunState
from flowcraft.testing.conformance import FaultInjector

WIDTH = 12


def _view() -> RunView:
    st = RunState("r1", "bp")
    st.nodes = {"a": NodeState("completed"), "b": NodeState("queued")}
    st.edges = {"a->b": True}
    st.inputs = {"b": {"a": [1, 2]}}
    data = {"x": [1], **sk.encode(st, {"createdAt": 1.0})}
    view = RunView.from_snapshot(Snapshot(data, 3), "e1")
    assert view is not None
    return view


def test_fork_copies_what_it_touches_and_leaves_the_view_alone() -> None:
    view = _view()
    new, data = view.fork()
    assert isinstance(new.nodes, Tracked)
    new.nodes["b"].status = "completed"
    new.edges["b->c"] = False
    data["y"] = 2
    assert view.state.nodes["b"].status == "queued"
    assert "b->c" not in view.state.edges
    assert "y" not in view.data
    assert new.nodes.touched == {"b"}
    rec = sk.run_record(new, {**view.rec, "updatedAt": 2.0})
    ops = {(o.op, o.key) for o in view.engine_ops(new, rec)}
    assert ops == {("set", sk.RUN_KEY), ("set", "_fc.node.b"), ("set", "_fc.edge.b->c")}
    assert {(o.op, o.key) for o in view.full_engine_ops(new, rec)} == ops


def test_untouched_fork_commits_only_the_run_record() -> None:
    view = _view()
    new, _ = view.fork()
    _ = new.nodes.get("a")  # reading copies, but nothing changed
    ops = view.engine_ops(new, sk.run_record(new, view.rec))
    assert [o.key for o in ops] == [sk.RUN_KEY]


def test_apply_changes_moves_the_view_forward_and_ignores_older_replies() -> None:
    view = _view()
    ch = Changes(
        5,
        "e1",
        False,
        {"_fc.node.b": {"status": "completed"}, "_fc.edge.b->c": True, "x": [9]},
        ["_fc.in.b"],
    )
    assert view.apply(ch)
    assert view.version == 5
    assert view.state.nodes["b"].status == "completed"
    assert view.state.edges["b->c"] is True
    assert "b" not in view.state.inputs
    assert view.data == {"x": [9]}
    stale = Changes(4, "e1", False, {"x": [0]})
    assert view.apply(stale)
    assert view.data == {"x": [9]}  # an older reply changes nothing
    assert not view.apply(Changes(6, "other-epoch", False, {}))  # a recreated run: reload


def test_adopted_fork_is_plain_again() -> None:
    view = _view()
    new, data = view.fork()
    new.nodes["b"].status = "running"
    rec = sk.run_record(new, view.rec)
    view.adopt(4, new, data, rec)
    assert type(view.state.nodes) is dict
    assert view.state.nodes["b"].status == "running"
    assert view.version == 4


async def _gated(ctx: NodeContext) -> NodeResult:
    await GATE.wait()
    return NodeResult(output=int(ctx.node_id[1:]))


async def _src(ctx: NodeContext) -> NodeResult:
    return NodeResult(output=0)


async def _sum(ctx: NodeContext) -> NodeResult:
    return NodeResult(output=sum(ctx.input.values()))


GATE = asyncio.Event()
FAN = load_blueprint(
    {
        "id": "wide",
        "nodes": [{"id": "src", "uses": "src"}]
        + [{"id": f"w{i}", "uses": "gated"} for i in range(WIDTH)]
        + [{"id": "join", "uses": "sum"}],
        "edges": [{"source": "src", "target": f"w{i}"} for i in range(WIDTH)]
        + [{"source": f"w{i}", "target": "join"} for i in range(WIDTH)],
    }
)


async def test_outcomes_finishing_together_share_one_commit() -> None:
    """Twelve branches released at once in one worker: their outcomes are committed in a few
    group commits (each also releasing every lease), never one per node, and the run's
    result is exactly the one-by-one result."""
    GATE.clear()
    broker = MemoryBroker(visibility_timeout=5.0)
    opts: dict[str, Any] = {
        "registry": {"src": _src, "gated": _gated, "sum": _sum},
        "blueprints": [FAN],
    }
    worker = InMemoryAdapter(broker, runtime_options=opts, concurrency=WIDTH + 2)
    FaultInjector(seed=1).latency(0.005, commits=True).install(worker)  # commits take time
    client = InMemoryAdapter(broker, runtime_options=opts)
    task = asyncio.create_task(worker.start())
    try:
        rid = await client.start_run("wide")
        for _ in range(500):  # until every branch waits at the gate
            st = await client.status(rid)
            if list(st.node_statuses.values()).count("queued") == WIDTH:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        before = broker.commits
        GATE.set()
        res = await client.result(rid, timeout=10)
    finally:
        await worker.stop()
        await task
    assert res.status == "completed"
    assert res.outputs["join"] == sum(range(WIDTH))
    assert set(res.node_statuses.values()) == {"completed"}
    assert len(res.node_statuses) == WIDTH + 2
    # WIDTH branch outcomes + the join's in far fewer commits than one each.
    assert broker.commits - before <= WIDTH // 2
