"""Event history: the store contract (in memory, SQLite, Postgres when reachable), ordering by
insertion id, table-name validation, payload encoding, and PersistentEventBus on real runs."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
from flowcraft import (
    FatalNodeError,
    FlowcraftEvent,
    FlowRuntime,
    ListenerBus,
    NodeContext,
    NodeResult,
    load_blueprint,
)
from flowcraft.history import (
    DEFAULT_TABLE,
    EventStore,
    InMemoryEventStore,
    PersistentEventBus,
    PostgresEventStore,
    SqliteEventStore,
    decode_payload,
    encode_payload,
    event_from_wire,
    validate_table_name,
)
from flowcraft.testing import EventRecorder

PG = pytest.param("postgres", marks=pytest.mark.needs_services)
"""The PostgreSQL variant: its server comes from the plugin's ``postgres_url`` fixture (an env
URL, testcontainers or a throwaway local server; a failure, never a skip, under CI)."""


def ev(
    execution_id: str, seq: int, type_: str = "node:start", ts: float = 100.0, **payload: Any
) -> FlowcraftEvent:
    """An event of blueprint ``wf``."""
    return FlowcraftEvent(type_, payload, execution_id, ts, seq, "wf")


async def put(store: EventStore, *events: FlowcraftEvent) -> None:
    """Store events one by one, awaiting each."""
    for e in events:
        await store.store(e)


@pytest.fixture(params=["memory", "sqlite-memory", "sqlite-file", PG])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    """Each store implementation, empty."""
    kind = request.param
    if kind == "memory":
        yield InMemoryEventStore()
    elif kind == "sqlite-memory":
        with SqliteEventStore(":memory:") as s:
            yield s
    elif kind == "sqlite-file":
        with SqliteEventStore(tmp_path / "events.sqlite") as s:
            yield s
    else:
        dsn = request.getfixturevalue("postgres_url")
        pg = PostgresEventStore(dsn, table=f"fc_test_{uuid.uuid4().hex[:12]}")
        try:
            yield pg
        finally:
            await pg.drop_table()
            await pg.close()


# -- the store contract ------------------------------------------------------------------------


async def test_events_come_back_in_emission_order_not_timestamp_order(store: EventStore) -> None:
    """Upstream ordered by a one-second timestamp; here the insertion id decides."""
    events = [
        ev("e1", 1, "workflow:start", ts=50.0, blueprintId="wf"),
        ev("e1", 2, ts=50.0, nodeId="b"),
        ev("e1", 3, ts=50.0, nodeId="a"),
        ev("e1", 4, "node:finish", ts=49.0, nodeId="a", result={"output": [1, "x", None]}),
        ev("e1", 5, "workflow:finish", ts=10.0, status="completed", errors=[]),
    ]
    await put(store, *events)
    assert await store.retrieve("e1") == events


async def test_executions_are_kept_apart(store: EventStore) -> None:
    await put(store, ev("e1", 1, nodeId="a"), ev("e2", 1, nodeId="x"), ev("e1", 2, nodeId="b"))
    assert [e.payload["nodeId"] for e in await store.retrieve("e1")] == ["a", "b"]
    assert [e.payload["nodeId"] for e in await store.retrieve("e2")] == ["x"]
    assert await store.retrieve("nope") == []
    many = await store.retrieve_many(["e2", "nope", "e1"])
    assert {k: [e.seq for e in v] for k, v in many.items()} == {"e2": [1], "nope": [], "e1": [1, 2]}


async def test_list_executions_most_recent_first_with_status(store: EventStore) -> None:
    await put(
        store,
        ev("old", 1, "workflow:start", ts=1.0),
        ev("old", 2, "workflow:finish", ts=2.0, status="failed", errors=[{"message": "m"}] * 2),
        ev("mid", 1, "workflow:start", ts=3.0),
        ev("mid", 2, "workflow:finish", ts=4.0, status="awaiting", errors=[]),
        ev("new", 1, "workflow:start", ts=5.0),
        ev("mid", 3, "workflow:resume", ts=6.0),
        ev("loose", 1, "node:start", ts=7.0, nodeId="a"),
    )
    rows = await store.list_executions()
    assert [(r.execution_id, r.status, r.error_count, r.event_count) for r in rows] == [
        ("loose", "unknown", 0, 1),
        ("mid", "running", 0, 3),
        ("new", "running", 0, 1),
        ("old", "failed", 2, 2),
    ]
    mid = rows[1]
    assert (mid.blueprint_id, mid.started_at, mid.updated_at) == ("wf", 3.0, 6.0)
    assert mid.to_dict() == {
        "executionId": "mid",
        "blueprintId": "wf",
        "status": "running",
        "errorCount": 0,
        "eventCount": 3,
        "startedAt": 3.0,
        "updatedAt": 6.0,
    }
    assert [r.execution_id for r in await store.list_executions(limit=2, offset=1)] == [
        "mid",
        "new",
    ]
    assert await store.list_executions(limit=5, offset=10) == []


async def writer(ctx: NodeContext) -> NodeResult:
    """Writes ``by.<id>`` and outputs its input + 1."""
    await ctx.context.set(f"by.{ctx.node_id}", ctx.input)
    return NodeResult((ctx.input or 0) + 1)


async def boom(ctx: NodeContext) -> NodeResult:
    """Fails fatally."""
    raise FatalNodeError("boom")


LINEAR = load_blueprint(
    {
        "id": "lin",
        "nodes": [{"id": "a", "uses": "w"}, {"id": "b", "uses": "w"}],
        "edges": [{"source": "a", "target": "b"}],
    }
)


async def test_persistent_bus_stores_every_event_of_a_run(store: EventStore) -> None:
    rec = EventRecorder()
    rt = FlowRuntime(registry={"w": writer}, event_bus=PersistentEventBus(store, forward=rec))
    result = await rt.run(LINEAR, {"user": "ann"})
    stored = await store.retrieve(result.execution_id)
    assert [e.type for e in stored] == [
        "workflow:start",
        "node:start",
        "context:change",
        "node:finish",
        "node:start",
        "context:change",
        "node:finish",
        "workflow:finish",
    ]
    assert [e.seq for e in stored] == list(range(1, 9))
    assert stored == rec.events  # the forward bus saw the same events
    assert stored[0].payload == {"blueprintId": "lin", "initialContext": {"user": "ann"}}
    assert {e.execution_id for e in stored} == {result.execution_id}
    assert {e.blueprint_id for e in stored} == {"lin"}
    [summary] = await store.list_executions()
    assert (summary.execution_id, summary.status, summary.event_count) == (
        result.execution_id,
        "completed",
        8,
    )


async def test_a_resumed_run_keeps_one_history(store: EventStore) -> None:
    bp = load_blueprint(
        {
            "id": "hitl",
            "nodes": [{"id": "a", "uses": "w"}, {"id": "gate", "uses": "wait"}],
            "edges": [{"source": "a", "target": "gate"}],
        }
    )
    rt = FlowRuntime(registry={"w": writer}, event_bus=PersistentEventBus(store))
    first = await rt.run(bp)
    [s1] = await store.list_executions()
    assert s1.status == "awaiting"
    done = await rt.resume(bp, first, "gate", output="yes")
    assert done.execution_id == first.execution_id
    [s2] = await store.list_executions()
    assert (s2.status, s2.event_count) == (
        "completed",
        len(await store.retrieve(first.execution_id)),
    )
    types = [e.type for e in await store.retrieve(first.execution_id)]
    assert types.count("workflow:finish") == 2
    assert types[-3:] == ["workflow:resume", "node:finish", "workflow:finish"]


async def test_failed_runs_are_listed_with_their_error_count(store: EventStore) -> None:
    bp = load_blueprint({"id": "bad", "nodes": [{"id": "x", "uses": "boom"}], "edges": []})
    rt = FlowRuntime(registry={"boom": boom}, event_bus=PersistentEventBus(store))
    r = await rt.run(bp)
    [s] = await store.list_executions()
    assert (s.execution_id, s.blueprint_id, s.status, s.error_count) == (
        r.execution_id,
        "bad",
        "failed",
        1,
    )


async def test_concurrent_runs_each_get_a_complete_ordered_history(store: EventStore) -> None:
    async def slow(ctx: NodeContext) -> NodeResult:
        await asyncio.sleep(0)
        await ctx.context.set("k", ctx.node_id)
        return NodeResult(1)

    rt = FlowRuntime(registry={"w": slow}, event_bus=PersistentEventBus(store))
    results = await asyncio.gather(*(rt.run(LINEAR) for _ in range(12)))
    histories = await store.retrieve_many([r.execution_id for r in results])
    for r in results:
        evs = histories[r.execution_id]
        assert [e.seq for e in evs] == list(range(1, 9))
        assert evs[-1].payload["status"] == "completed"
    assert len(await store.list_executions(limit=100)) == 12


async def test_subflow_children_are_stored_under_their_own_id(store: EventStore) -> None:
    child = load_blueprint({"id": "child", "nodes": [{"id": "c", "uses": "w"}], "edges": []})
    parent = load_blueprint(
        {
            "id": "parent",
            "nodes": [{"id": "s", "uses": "subflow", "params": {"blueprintId": "child"}}],
            "edges": [],
        }
    )
    rt = FlowRuntime(
        registry={"w": writer}, blueprints=[child], event_bus=PersistentEventBus(store)
    )
    r = await rt.run(parent)
    kid = await store.retrieve(f"{r.execution_id}/s")
    assert [e.type for e in kid] == [
        "workflow:start",
        "node:start",
        "context:change",
        "node:finish",
        "workflow:finish",
    ]
    assert {e.blueprint_id for e in kid} == {"child"}
    assert "node:finish" in [e.type for e in await store.retrieve(r.execution_id)]


# -- encoding, table names, SQLite specifics ---------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", PG])
async def test_unserializable_payload_values_are_degraded_not_lost(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<thing>"

    s: Any = (
        SqliteEventStore(tmp_path / "e.sqlite")
        if kind == "sqlite"
        else PostgresEventStore(
            request.getfixturevalue("postgres_url"), table=f"fc_test_{uuid.uuid4().hex[:12]}"
        )
    )
    try:
        await s.store(
            ev(
                "e",
                1,
                "context:change",
                key="k",
                value={"nan": float("nan"), "set": {3}, "obj": Thing(), "nul": "a\x00b"},
            )
        )
        [back] = await s.retrieve("e")
        value = {
            "nan": None,
            "set": [3],
            "obj": "<thing>",
            "nul": "ab" if kind == "postgres" else "a\x00b",
        }
        assert back.payload == {"key": "k", "value": value}
    finally:
        if kind == "sqlite":
            s.close()
        else:
            await s.drop_table()
            await s.close()


def test_encode_and_decode_payload() -> None:
    assert encode_payload({"a": [1, 2.5, None, "é"]}) == '{"a":[1,2.5,null,"é"]}'
    loop: dict[str, Any] = {}
    loop["self"] = loop
    assert decode_payload(encode_payload({"x": loop}))["x"]["self"]["self"] is not None
    assert decode_payload("[1]") == {"value": [1]}
    assert decode_payload({"a": 1}) == {"a": 1}


def test_event_from_wire_inverts_to_wire() -> None:
    e = ev("e9", 4, "node:finish", ts=12.5, nodeId="a", result={"output": 1})
    assert event_from_wire(e.to_wire()) == e


@pytest.mark.parametrize("name", ["flowcraft_events", "_x", "Events2", "a" * 63])
def test_valid_table_names(name: str) -> None:
    assert validate_table_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "1events",
        "my-events",
        "events;",
        'events"; DROP TABLE users; --',
        "events\n",
        "ev ents",
        "évents",
        "a" * 64,
        None,
        42,
    ],
)
def test_invalid_table_names_are_refused(name: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid table name"):
        validate_table_name(name)
    with pytest.raises(ValueError, match="invalid table name"):
        SqliteEventStore(tmp_path / "x.sqlite", table=name)
    with pytest.raises(ValueError, match="invalid table name"):
        PostgresEventStore("host=127.0.0.1 dbname=unused", table=name)  # refused before connecting
    assert not (tmp_path / "x.sqlite").exists()


async def test_sqlite_schema_and_custom_tables(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    with SqliteEventStore(path) as a, SqliteEventStore(path, table="other_events") as b:
        await a.store(ev("e", 1, nodeId="in-a"))
        await b.store(ev("e", 1, nodeId="in-b"))
        assert [e.payload for e in await a.retrieve("e")] == [{"nodeId": "in-a"}]
        assert [e.payload for e in await b.retrieve("e")] == [{"nodeId": "in-b"}]
    with sqlite3.connect(path) as conn:
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({DEFAULT_TABLE})")]
        assert cols == ["id", "execution_id", "seq", "type", "blueprint_id", "payload", "timestamp"]
        [(index,)] = conn.execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=?", (DEFAULT_TABLE,)
        ).fetchall()
        assert [r[2] for r in conn.execute(f"PRAGMA index_info({index})")] == ["execution_id", "id"]
        assert conn.execute("SELECT name FROM sqlite_sequence").fetchall() == [
            (DEFAULT_TABLE,),
            ("other_events",),
        ]


async def test_sqlite_events_are_durable_once_the_run_returns(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    with SqliteEventStore(path) as writer_store:
        rt = FlowRuntime(registry={"w": writer}, event_bus=PersistentEventBus(writer_store))
        r = await rt.run(LINEAR)
        with SqliteEventStore(path) as reader:  # another connection, as another process would
            assert len(await reader.retrieve(r.execution_id)) == 8


def test_sqlite_store_works_from_synchronous_code(tmp_path: Path) -> None:
    with SqliteEventStore(tmp_path / "s.sqlite") as s:
        s.store(ev("e", 1, nodeId="a"))
        s.store(ev("e", 2, nodeId="b"))
        events = asyncio.run(s.retrieve("e"))
        assert [e.payload["nodeId"] for e in events] == ["a", "b"]


async def test_closed_sqlite_store_refuses_work(tmp_path: Path) -> None:
    s = SqliteEventStore(tmp_path / "c.sqlite")
    await s.store(ev("e", 1))
    s.close()
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.store(ev("e", 2))
    with pytest.raises(RuntimeError, match="closed"):
        await s.retrieve("e")


async def test_in_memory_clear_and_sqlite_clear(tmp_path: Path) -> None:
    m = InMemoryEventStore()
    await m.store(ev("e", 1))
    m.clear()
    assert await m.retrieve("e") == []
    assert await m.list_executions() == []
    with SqliteEventStore(tmp_path / "c.sqlite") as s:
        await s.store(ev("e", 1))
        await s.clear()
        assert await s.retrieve("e") == []


# -- the bus -----------------------------------------------------------------------------------


class BrokenStore(InMemoryEventStore):
    """A store whose writes fail."""

    def store(self, event: FlowcraftEvent) -> Awaitable[None]:
        """Always fails."""
        raise OSError("disk full")


async def test_a_failing_store_never_fails_the_run(caplog: pytest.LogCaptureFixture) -> None:
    rec = EventRecorder()
    rt = FlowRuntime(
        registry={"w": writer}, event_bus=PersistentEventBus(BrokenStore(), forward=rec)
    )
    with caplog.at_level(logging.ERROR, logger="flowcraft.history"):
        r = await rt.run(LINEAR)
    assert r.status == "completed"
    assert r.outputs == {"a": 1, "b": 2}
    assert len(rec.events) == 8  # the forward bus still gets every event
    assert caplog.messages.count("event store failed on workflow:start") == 1
    assert len(caplog.messages) == 8


async def test_forwarding_to_an_async_bus_awaits_both() -> None:
    store = InMemoryEventStore()
    seen: list[str] = []

    async def listener(e: FlowcraftEvent) -> None:
        await asyncio.sleep(0)
        seen.append(e.type)

    rt = FlowRuntime(
        registry={"w": writer}, event_bus=PersistentEventBus(store, forward=ListenerBus([listener]))
    )
    r = await rt.run(LINEAR)
    assert seen == [e.type for e in await store.retrieve(r.execution_id)]
    assert len(seen) == 8


async def test_forward_failure_still_stores(caplog: pytest.LogCaptureFixture) -> None:
    class Bad:
        def emit(self, event: FlowcraftEvent) -> None:
            raise RuntimeError("bad forward")

    store = InMemoryEventStore()
    rt = FlowRuntime(registry={"w": writer}, event_bus=PersistentEventBus(store, forward=Bad()))
    with caplog.at_level(logging.ERROR, logger="flowcraft.history"):
        r = await rt.run(LINEAR)
    assert len(await store.retrieve(r.execution_id)) == 8
    assert caplog.messages.count("forwarded event bus failed on node:start") == 2
