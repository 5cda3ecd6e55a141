"""The Firestore run store's layout beyond the contract suite: contexts larger than a
document (values spilled to the ``values`` subcollection), odd keys and run ids, the active-run
index and batched status reads, on the Firestore emulator."""

from __future__ import annotations

import os
import uuid

import pytest
from flowcraft.context import PatchOperation
from flowcraft.errors import SerializationError
from flowcraft_gcp import MAX_VALUE_BYTES, FirestoreRunStore
from flowcraft_gcp.firestore import INLINE_BUDGET, run_doc_id
from google.cloud.firestore import AsyncClient


@pytest.fixture
def store(firestore_host: str) -> FirestoreRunStore:
    """A run store under a fresh prefix."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_host
    return FirestoreRunStore(AsyncClient(project="demo-flowcraft"), f"fct{uuid.uuid4().hex[:10]}-")


def _set(key: str, value: object) -> PatchOperation:
    return PatchOperation(op="set", key=key, value=value)


async def test_context_over_one_mebibyte_round_trips(store: FirestoreRunStore) -> None:
    """3 MB of values in one run (one over the inline budget, many medium ones): every value
    reads back, the run document itself stays small, and overwrites/deletes move values
    between the document and the subcollection."""
    ctx = store.context("big run")
    big = "x" * 900_000
    ops = [_set("big.one", big), _set("big/two", big), _set("big`three", big)]
    ops += [_set(f"m.{i}", "y" * 10_000) for i in range(60)]
    assert await ctx.commit(ops, 0, "running")
    snap = await store.context("big run").load()
    assert snap.version == 1
    assert snap.data["big.one"] == big and snap.data["big/two"] == big
    assert snap.data["big`three"] == big
    assert all(snap.data[f"m.{i}"] == "y" * 10_000 for i in range(60))
    doc = (await store.runs.document(run_doc_id("big run")).get()).to_dict() or {}
    assert doc["n"] <= INLINE_BUDGET
    assert len(doc["s"]) >= 3
    # Shrink a spilled value (moves inline) and delete another.
    assert await ctx.commit(
        [_set("big.one", 1), PatchOperation(op="delete", key="big/two")], 1, None
    )
    snap = await store.context("big run").load()
    assert snap.data["big.one"] == 1 and "big/two" not in snap.data
    assert snap.data["big`three"] == big
    coll = store.runs.document(run_doc_id("big run")).collection("values")
    values = [d async for d in coll.stream()]
    assert "kbig.one" not in {d.id for d in values}


async def test_value_over_the_limit_is_refused_naming_the_key(store: FirestoreRunStore) -> None:
    """A single value over MAX_VALUE_BYTES raises SerializationError and writes nothing."""
    ctx = store.context("r1")
    with pytest.raises(SerializationError, match="huge"):
        await ctx.commit([_set("ok", 1), _set("huge", "z" * (MAX_VALUE_BYTES + 1))], 0)
    assert (await ctx.load()).version == 0


async def test_odd_run_ids_and_active_index(store: FirestoreRunStore) -> None:
    """Run ids with slashes, dots, ``__x__`` and 2000 characters are distinct documents; the
    active index pages through non-final runs only; statuses are read in one batch."""
    ids = ["a/b", ".", "..", "__x__", "é ü", "l" * 2000, "plain"]
    for i, r in enumerate(ids):
        assert await store.context(r).commit([_set("i", i)], 0, "running")
    assert await store.context("plain").commit([], 1, "completed")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = await store.list_active_runs(cursor, limit=2)
        seen += page
        if cursor is None:
            break
    assert sorted(seen) == sorted(r for r in ids if r != "plain")
    st = await store.run_statuses([*ids, "missing"])
    assert st["plain"] == "completed" and st["a/b"] == "running" and st["missing"] is None
    for i, r in enumerate(ids):
        assert (await store.context(r).load()).data == {"i": i}
