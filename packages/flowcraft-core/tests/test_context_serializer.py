"""Context implementations (plain and tracked) and the strict JSON serializer."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from flowcraft import (
    AsyncContext,
    FlowRuntime,
    InMemoryContext,
    NodeContext,
    NodeResult,
    PatchOperation,
    SerializationError,
    TrackedContext,
    WorkflowResult,
)
from flowcraft.serializer import JsonSerializer, Serializer, find_unserializable

# -- InMemoryContext -----------------------------------------------------------------------------


async def test_in_memory_context_crud() -> None:
    ctx = InMemoryContext({"a": 1})
    assert isinstance(ctx, AsyncContext)
    assert await ctx.get("a") == 1
    assert await ctx.get("missing") is None
    assert await ctx.get("missing", "dflt") == "dflt"
    await ctx.set("b", [1, 2])
    assert await ctx.has("b") is True
    assert await ctx.has("zzz") is False
    assert await ctx.delete("b") is True
    assert await ctx.delete("b") is False
    assert await ctx.to_dict() == {"a": 1}


async def test_in_memory_context_none_is_a_value() -> None:
    ctx = InMemoryContext()
    await ctx.set("n", None)
    assert await ctx.has("n") is True
    assert await ctx.get("n", "dflt") is None
    assert await ctx.to_dict() == {"n": None}
    assert await ctx.delete("n") is True
    assert await ctx.has("n") is False


async def test_in_memory_context_keys_with_dots_and_slashes_are_opaque() -> None:
    ctx = InMemoryContext()
    await ctx.set("user.name", "ada")
    await ctx.set("a/b", 1)
    await ctx.set("user", {"name": "bob"})
    assert await ctx.get("user.name") == "ada"
    assert await ctx.get("a/b") == 1
    assert await ctx.has("a") is False
    assert await ctx.to_dict() == {"user.name": "ada", "a/b": 1, "user": {"name": "bob"}}
    assert await ctx.delete("user") is True
    assert await ctx.get("user.name") == "ada"


async def test_in_memory_context_copies_initial_data_and_snapshots() -> None:
    initial = {"a": 1}
    ctx = InMemoryContext(initial)
    await ctx.set("a", 2)
    assert initial == {"a": 1}
    snap = await ctx.to_dict()
    snap["a"] = 99
    assert await ctx.get("a") == 2


async def test_in_memory_context_patch() -> None:
    ctx = InMemoryContext({"a": 1, "b": 2})
    await ctx.patch(
        [
            PatchOperation("set", "c", 3),
            PatchOperation("delete", "a"),
            PatchOperation("set", "b", None),
            PatchOperation("delete", "not-there"),
            PatchOperation("set", "c", 4),
        ]
    )
    assert await ctx.to_dict() == {"b": None, "c": 4}


def test_patch_operation_to_wire() -> None:
    assert PatchOperation("set", "k", {"v": 1}).to_wire() == {
        "op": "set",
        "key": "k",
        "value": {"v": 1},
    }
    assert PatchOperation("set", "k", None).to_wire() == {"op": "set", "key": "k", "value": None}
    assert PatchOperation("delete", "k").to_wire() == {"op": "delete", "key": "k"}
    assert PatchOperation("delete", "k", "ignored").to_wire() == {"op": "delete", "key": "k"}


# -- TrackedContext ------------------------------------------------------------------------------


async def test_tracked_context_writes_through_and_records_deltas() -> None:
    inner = InMemoryContext({"keep": 0, "gone": 1})
    events: list[tuple[str, str, Any]] = []
    tc = TrackedContext(inner, "N", listener=lambda op, k, v: events.append((op, k, v)))
    assert isinstance(tc, AsyncContext)
    assert tc.inner is inner
    assert tc.node_id == "N"
    await tc.set("a", 1)
    assert inner.data["a"] == 1  # written through at once
    assert await tc.delete("gone") is True
    assert "gone" not in inner.data
    assert await tc.delete("never") is False
    await tc.set("n", None)
    assert await tc.has("n") is True
    assert await tc.get("n", "dflt") is None
    assert await tc.to_dict() == {"keep": 0, "a": 1, "n": None}
    assert tc.deltas() == [
        PatchOperation("set", "a", 1),
        PatchOperation("delete", "gone"),
        PatchOperation("delete", "never"),
        PatchOperation("set", "n", None),
    ]
    # A delete of a missing key changes nothing, so it is not reported to the listener.
    assert events == [("set", "a", 1), ("delete", "gone", None), ("set", "n", None)]


async def test_tracked_context_coalesces_deltas_per_key_in_first_touch_order() -> None:
    tc = TrackedContext(InMemoryContext())
    await tc.set("x", 1)
    await tc.set("y", 1)
    await tc.set("x", 2)
    await tc.delete("y")
    await tc.set("z", 1)
    await tc.delete("x")
    await tc.set("x", 3)
    await tc.patch([PatchOperation("set", "y", 5), PatchOperation("delete", "z")])
    await tc.set("x", 4)
    assert tc.deltas() == [
        PatchOperation("set", "x", 4),
        PatchOperation("set", "y", 5),
        PatchOperation("delete", "z"),
    ]
    assert await tc.to_dict() == {"x": 4, "y": 5}
    tc.clear_deltas()
    assert tc.deltas() == []


async def test_tracked_context_rejects_non_string_keys() -> None:
    tc = TrackedContext(InMemoryContext())
    with pytest.raises(TypeError, match="context keys must be str, got int"):
        await tc.set(1, "x")  # type: ignore[arg-type]


async def test_buffered_context_reads_its_writes_without_writing_through() -> None:
    inner = InMemoryContext({"a": 1, "b": 2, "user.name": "ada"})
    events: list[tuple[str, str, Any]] = []
    tc = TrackedContext(
        inner, "N", buffered=True, listener=lambda op, k, v: events.append((op, k, v))
    )
    await tc.set("a", 10)
    await tc.set("n", None)
    assert await tc.delete("b") is True
    assert await tc.delete("b") is False  # already deleted in the buffer
    await tc.set("a/b", "slash")
    # Reads see the buffer...
    assert await tc.get("a") == 10
    assert await tc.get("n", "dflt") is None
    assert await tc.has("n") is True
    assert await tc.get("b", "dflt") == "dflt"
    assert await tc.has("b") is False
    assert await tc.get("user.name") == "ada"  # untouched keys come from the inner context
    assert await tc.to_dict() == {"a": 10, "user.name": "ada", "n": None, "a/b": "slash"}
    # ...but nothing reached the inner context yet.
    assert inner.data == {"a": 1, "b": 2, "user.name": "ada"}
    assert events == [
        ("set", "a", 10),
        ("set", "n", None),
        ("delete", "b", None),
        ("set", "a/b", "slash"),
    ]
    # Commit: apply the coalesced deltas atomically.
    await inner.patch(tc.deltas())
    tc.clear_deltas()
    assert inner.data == {"a": 10, "user.name": "ada", "n": None, "a/b": "slash"}
    assert await tc.get("a") == 10


async def test_buffered_patch_and_set_after_delete() -> None:
    inner = InMemoryContext({"k": "old"})
    tc = TrackedContext(inner, buffered=True)
    await tc.delete("k")
    await tc.set("k", "new")
    await tc.patch([PatchOperation("delete", "other"), PatchOperation("set", "p", 1)])
    assert await tc.get("k") == "new"
    assert await tc.has("other") is False
    assert await tc.get("p") == 1
    assert inner.data == {"k": "old"}
    assert tc.deltas() == [
        PatchOperation("set", "k", "new"),
        PatchOperation("delete", "other"),
        PatchOperation("set", "p", 1),
    ]


async def test_nodes_write_through_the_context_during_a_run() -> None:
    async def a(ctx: NodeContext) -> NodeResult:
        await ctx.context.set("cfg.mode", "fast")
        await ctx.context.set("empty", None)
        return NodeResult(await ctx.context.get("seed"))

    async def b(ctx: NodeContext) -> NodeResult:
        return NodeResult(
            {
                "mode": await ctx.context.get("cfg.mode"),
                "has_empty": await ctx.context.has("empty"),
                "snapshot_keys": sorted(await ctx.context.to_dict()),
            }
        )

    rt = FlowRuntime(registry={"a": a, "b": b})
    bp = {
        "id": "c",
        "nodes": [{"id": "A", "uses": "a"}, {"id": "B", "uses": "b"}],
        "edges": [{"source": "A", "target": "B"}],
    }
    r = await rt.run(bp, {"seed": 7})
    assert r.status == "completed"
    assert r.outputs["A"] == 7
    assert r.outputs["B"] == {
        "mode": "fast",
        "has_empty": True,
        "snapshot_keys": ["_outputs.A", "cfg.mode", "empty", "seed"],
    }


# -- JsonSerializer ------------------------------------------------------------------------------


def test_json_round_trip() -> None:
    s = JsonSerializer()
    assert isinstance(s, Serializer)
    data = {
        "str": "héllo ✓",
        "int": 3,
        "big": 2**70,
        "float": 1.5,
        "neg": -0.25,
        "bool": True,
        "none": None,
        "list": [1, "two", None, {"three": 3}],
        "nested": {"a": {"b": {"c": []}}},
        "user.name": "dots are fine",
    }
    text = s.serialize(data)
    assert isinstance(text, str)
    assert "héllo ✓" in text  # not ASCII-escaped
    assert s.deserialize(text) == data


def test_tuples_become_lists() -> None:
    s = JsonSerializer()
    assert s.deserialize(s.serialize({"t": (1, 2)})) == {"t": [1, 2]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"user": {"created": datetime(2024, 1, 2, tzinfo=UTC)}},
            "cannot serialize user.created: unsupported type datetime",
        ),
        ({"tags": {"a", "b"}}, "cannot serialize tags: unsupported type set"),
        ({"x": [1, {"y": {1}}]}, "cannot serialize x[1].y: unsupported type set"),
        ({"score": math.nan}, "cannot serialize score: non-finite float nan"),
        ({"a": {"b": [0, math.inf]}}, "cannot serialize a.b[1]: non-finite float inf"),
        ({"m": {1: "one"}}, "cannot serialize m: non-string key 1"),
        ({"m": {None: "x"}}, "cannot serialize m: non-string key None"),
        ({"m": {("a", "b"): "x"}}, "cannot serialize m: non-string key ('a', 'b')"),
        ({"price": Decimal("1.10")}, "cannot serialize price: unsupported type Decimal"),
        ({"raw": b"bytes"}, "cannot serialize raw: unsupported type bytes"),
        ({1.5: "x"}, "cannot serialize <root>: non-string key 1.5"),
        (object(), "cannot serialize <root>: unsupported type object"),
    ],
)
def test_unsupported_values_raise_naming_the_path(data: Any, message: str) -> None:
    with pytest.raises(SerializationError) as info:
        JsonSerializer().serialize(data)
    assert str(info.value) == message


def test_circular_data_raises_naming_the_path() -> None:
    user: dict[str, Any] = {"name": "ada"}
    user["self"] = user
    with pytest.raises(SerializationError) as info:
        JsonSerializer().serialize({"user": user})
    assert str(info.value) == "cannot serialize user.self: circular reference"
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match=r"cannot serialize items\[0\]: circular"):
        JsonSerializer().serialize({"items": loop})


def test_shared_but_acyclic_references_are_fine() -> None:
    shared = {"v": 1}
    s = JsonSerializer()
    assert s.deserialize(s.serialize({"a": shared, "b": [shared, shared]})) == {
        "a": {"v": 1},
        "b": [{"v": 1}, {"v": 1}],
    }


def test_find_unserializable() -> None:
    assert find_unserializable({"a": [1, "x", None, 1.0, {"b": True}]}) is None
    assert find_unserializable({"a": [1, {"b": {2}}]}) == ("a[1].b", "unsupported type set")


def test_invalid_text_raises_serialization_error() -> None:
    with pytest.raises(SerializationError, match="cannot deserialize"):
        JsonSerializer().deserialize("{not json")
    with pytest.raises(SerializationError, match="cannot deserialize"):
        JsonSerializer().deserialize("")


async def test_result_serialize_refuses_a_datetime_in_the_context() -> None:
    async def stamp(ctx: NodeContext) -> NodeResult:
        await ctx.context.set("user", {"created": datetime(2024, 1, 2, tzinfo=UTC)})
        return NodeResult("ok")

    rt = FlowRuntime(registry={"s": stamp})
    bp = {"id": "dt", "nodes": [{"id": "S", "uses": "s"}, {"id": "W", "uses": "wait"}]}
    bp["edges"] = [{"source": "S", "target": "W"}]
    r = await rt.run(bp)
    assert r.status == "awaiting"
    with pytest.raises(SerializationError) as info:
        r.serialize()
    assert str(info.value) == "cannot serialize context.user.created: unsupported type datetime"


async def test_result_serialize_round_trips_plain_context() -> None:
    async def put(ctx: NodeContext) -> NodeResult:
        await ctx.context.set("cfg", {"n": 1, "tags": ["a"]})
        return NodeResult({"k": [1, 2]})

    rt = FlowRuntime(registry={"p": put})
    bp = {
        "id": "rt",
        "nodes": [{"id": "P", "uses": "p"}, {"id": "W", "uses": "wait"}],
        "edges": [{"source": "P", "target": "W"}],
    }
    r = await rt.run(bp)
    back = WorkflowResult.deserialize(r.serialize())
    assert (
        back.context == r.context == {"cfg": {"n": 1, "tags": ["a"]}, "_outputs.P": {"k": [1, 2]}}
    )
    assert back.to_dict() == r.to_dict()
