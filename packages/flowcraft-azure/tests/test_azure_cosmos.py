"""The Cosmos run store's own choices, against the Cosmos server: which request a commit is
(patch under a version predicate, or an etag replace past 10 patch operations, both atomic),
the 2 MB item limit refused with the key named, the active-run index and its paging, and long
coordination keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from azure_support import AzureResources, resources
from flowcraft import PatchOperation
from flowcraft.distributed.codec import UnstorableValueError
from flowcraft_azure import CosmosCoordinationStore, CosmosRunStore


@pytest.fixture
async def azure(azurite_connection_string: str, cosmos_url: str) -> AsyncIterator[AzureResources]:
    """A fresh queue pair and container for one test."""
    async with resources(azurite_connection_string, cosmos_url) as res:
        yield res


def _set(key: str, value: Any) -> PatchOperation:
    return PatchOperation("set", key, value)


def _calls(res: AzureResources) -> dict[str, int]:
    return {k: v for k, v in res.stats.calls.items() if k.startswith("cosmos.")}


async def test_small_commits_are_one_patch_and_large_ones_one_replace(
    azure: AzureResources,
) -> None:
    """At the version it last saw, a store commits with ONE request: a patch (version
    predicate) for up to 10 operations, an etag replace beyond; both atomic, keys with ``/``
    and ``~`` included; a stale version writes nothing."""
    store = CosmosRunStore(azure.container())
    assert (await store.commit("r1", [_set("a/b~c", 1)], 0, "running"))[0]
    before = _calls(azure)
    ok, _ = await store.commit("r1", [_set("x/1", 1), _set("x~2", 2)], 1, "running")
    assert ok
    after = _calls(azure)
    assert after.get("cosmos.patch", 0) - before.get("cosmos.patch", 0) == 1
    assert sum(after.values()) - sum(before.values()) == 1
    ops = [_set(f"k/{i}", i) for i in range(15)]
    ok, _ = await store.commit("r1", ops, 2, "running")
    assert ok
    final = _calls(azure)
    assert final.get("cosmos.replace", 0) - after.get("cosmos.replace", 0) == 1
    assert sum(final.values()) - sum(after.values()) == 1
    snap = await CosmosRunStore(azure.container()).load("r1")
    assert snap.version == 3
    assert snap.data == {"a/b~c": 1, "x/1": 1, "x~2": 2, **{f"k/{i}": i for i in range(15)}}
    assert (await store.commit("r1", ops[:2], 2)) == (False, 0)
    assert (await store.commit("r1", ops, 2)) == (False, 0)
    assert (await CosmosRunStore(azure.container()).load("r1")).version == 3


async def test_a_commit_that_would_pass_the_item_limit_names_the_key(
    azure: AzureResources,
) -> None:
    """A commit growing the run's item past the limit raises ``UnstorableValueError`` naming
    the largest key it writes, and writes nothing (the engine then fails that node)."""
    store = CosmosRunStore(azure.container(), max_item_bytes=50_000)
    assert (await store.commit("r2", [_set("small", "x")], 0))[0]
    for i, (ops, version) in enumerate(
        [
            ([_set("a", "y" * 30_000), _set("big.one", "z" * 40_000)], 1),
            ([_set(f"k{n}", n) for n in range(12)] + [_set("big.one", "z" * 60_000)], 1),
        ]
    ):
        with pytest.raises(UnstorableValueError, match=r"big\.one") as err:
            await store.commit("r2", ops, version)
        assert err.value.key == "big.one", i
    snap = await store.load("r2")
    assert (snap.data, snap.version) == ({"small": "x"}, 1)


async def test_active_runs_are_listed_from_the_index_page_by_page(
    azure: AzureResources,
) -> None:
    """Runs are listed while not final (index items written before the commit that makes a
    run active, deleted after the one that makes it final), across every shard, in pages."""
    store = CosmosRunStore(azure.container(), active_shards=3)
    active = {f"run/{i}:ü" for i in range(7)}
    for rid in sorted(active):
        assert (await store.commit(rid, [_set("k", 1)], 0, "running"))[0]
    for rid in ("done-1", "done-2"):
        assert (await store.commit(rid, [_set("k", 1)], 0, "running"))[0]
        assert (await store.commit(rid, [_set("k", 2)], 1, "completed"))[0]
    assert (await store.commit("waiting", [_set("k", 1)], 0, "awaiting"))[0]
    active.add("waiting")
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = await store.list_active_runs(cursor, limit=3)
        assert len(page) <= 3
        seen.extend(page)
        pages += 1
        if cursor is None:
            break
    assert sorted(seen) == sorted(active)
    assert pages >= 3
    assert await store.delete_run("run/0:ü") == 2
    rest, _ = await store.list_active_runs(None, 100)
    assert sorted(rest) == sorted(active - {"run/0:ü"})


async def test_long_and_odd_coordination_keys(azure: AzureResources) -> None:
    """Keys longer than an id may be, or holding characters ids refuse, are distinct keys."""
    store = CosmosCoordinationStore(azure.container())
    keys = ["l:" + "x" * 500, "l:" + "x" * 501, "a/b?c#d\\e", "a!2Fb?c#d\\e"]
    for i, k in enumerate(keys):
        assert await store.set_if_not_exist(k, f"v{i}", 60)
    assert [await store.get(k) for k in keys] == [f"v{i}" for i in range(len(keys))]
    assert await store.increment(keys[0] + ":n", 60) == 1
    assert await store.increment(keys[0] + ":n", 60) == 2
