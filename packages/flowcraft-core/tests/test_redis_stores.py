"""The Redis stores of ``flowcraft.redis`` against a real Redis server.

The server comes from the integration-test service layer (``FLOWCRAFT_TEST_REDIS_URL``, else
testcontainers, else a throwaway ``redis-server`` on a free port); under ``CI`` a missing
server fails these tests instead of skipping them. Every test uses its own key prefix.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "integration-tests"))

from flowcraft.context import PatchOperation
from flowcraft.errors import SerializationError
from flowcraft.redis import (
    EPOCH_FIELD,
    VERSION_FIELD,
    RedisCoordinationStore,
    RedisKeyLayout,
    RedisStateStore,
    connect,
)
from services import require_service

RUN = "_fc.run"


@pytest.fixture(scope="module")
def redis_url() -> str:
    """The shared Redis server's URL."""
    return require_service("redis").url


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStateStore]:
    """A state store on a fresh prefix; its keys are deleted afterwards."""
    prefix = f"fct{uuid.uuid4().hex[:10]}:"
    client = connect(redis_url)
    s = RedisStateStore(client, prefix=prefix, shards=4, retention_seconds=3600)
    try:
        yield s
    finally:
        await s.aclose()
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=500)]
        if keys:
            await client.unlink(*keys)
        await client.aclose()


def live(status: str = "running") -> PatchOperation:
    """The engine's run record with ``status``."""
    return PatchOperation("set", RUN, {"status": status, "executionId": "x"})


class CommandCounter:
    """Counts commands sent through a redis-py client (wraps ``execute_command``)."""

    def __init__(self, client: Any) -> None:
        self.names: list[str] = []
        self._orig = client.execute_command

        async def counted(*args: Any, **kw: Any) -> Any:
            self.names.append(str(args[0]).upper())
            return await self._orig(*args, **kw)

        client.execute_command = counted
        self._client = client

    def close(self) -> None:
        self._client.execute_command = self._orig


# -- coordination ------------------------------------------------------------------------------


async def test_set_if_not_exist_sets_once_with_a_ttl(store: RedisStateStore) -> None:
    c = store.coordination
    assert await c.set_if_not_exist("lease:a", "t1", 10) is True
    assert await c.set_if_not_exist("lease:a", "t2", 10) is False
    assert await c.get("lease:a") == "t1"
    pttl = await store.client.pttl(store.layout.coordination("lease:a"))
    assert 0 < pttl <= 10_000


async def test_increment_sets_the_ttl_atomically(store: RedisStateStore) -> None:
    c = store.coordination
    assert [await c.increment("n", 5) for _ in range(3)] == [1, 2, 3]
    assert await c.get("n") == "3"
    pttl = await store.client.pttl(store.layout.coordination("n"))
    assert 0 < pttl <= 5_000


async def test_extend_ttl_only_for_existing_keys(store: RedisStateStore) -> None:
    c = store.coordination
    assert await c.extend_ttl("missing", 5) is False
    await c.set_if_not_exist("k", "v", 1)
    assert await c.extend_ttl("k", 100) is True
    assert await store.client.pttl(store.layout.coordination("k")) > 1_000


async def test_compare_and_delete_only_removes_the_owners_value(store: RedisStateStore) -> None:
    c = store.coordination
    await c.set_if_not_exist("lease", "mine", 10)
    assert await c.compare_and_delete("lease", "theirs") is False
    assert await c.get("lease") == "mine"
    assert await c.compare_and_delete("lease", "mine") is True
    assert await c.get("lease") is None
    assert await c.compare_and_delete("lease", "mine") is False


async def test_expired_key_is_absent(store: RedisStateStore) -> None:
    c = store.coordination
    await c.set_if_not_exist("short", "v", 0.001)
    await asyncio.sleep(0.05)
    assert await c.get("short") is None
    assert await c.set_if_not_exist("short", "w", 10) is True


async def test_delete_and_get(store: RedisStateStore) -> None:
    c = store.coordination
    assert await c.get("nothing") is None
    await c.set_if_not_exist("x", "1", 10)
    await c.delete("x")
    await c.delete("x")
    assert await c.get("x") is None


# -- run context -------------------------------------------------------------------------------


async def test_missing_run_has_version_zero(store: RedisStateStore) -> None:
    snap = await store.context("nope").load()
    assert (snap.data, snap.version) == ({}, 0)


async def test_commit_is_compare_and_set_on_the_version(store: RedisStateStore) -> None:
    ctx = store.context("r1")
    assert await ctx.commit([live(), PatchOperation("set", "a", 1)], 0) is True
    assert await ctx.commit([PatchOperation("set", "a", 2)], 0) is False  # stale
    assert await ctx.commit([PatchOperation("set", "b", None)], 1) is True
    snap = await ctx.load()
    assert snap.version == 2
    assert snap.data == {RUN: {"status": "running", "executionId": "x"}, "a": 1, "b": None}
    assert VERSION_FIELD not in snap.data
    assert await ctx.get("b", "default") is None
    assert await ctx.get("zzz", "default") == "default"
    assert await ctx.has("b") is True


async def test_values_round_trip_and_keys_are_never_pasted(store: RedisStateStore) -> None:
    ctx = store.context("weird ' \" ]] run\n{x}")
    values = {
        "a.b": None,
        "x/y": {"k": None, "list": [None, 1, "two"]},
        "it's \"quoted\" ]] -- ; redis.call('FLUSHALL')": "ok",
        "unicode ключ": "значение",
        "": 0,
        "nested.dots/and/slashes.": [{"a.b": 1.5}],
        "empty": "",
        "false": False,
    }
    assert await ctx.commit([live()] + [PatchOperation("set", k, v) for k, v in values.items()], 0)
    snap = await ctx.load()
    assert {k: v for k, v in snap.data.items() if k != RUN} == values
    assert await store.client.hget(ctx.key, "empty") == b'""'  # JSON text, never raw


async def test_deletes_and_last_operation_wins(store: RedisStateStore) -> None:
    ctx = store.context("r2")
    await ctx.commit([live(), PatchOperation("set", "a", 1), PatchOperation("set", "b", 2)], 0)
    ops = [
        PatchOperation("delete", "a"),
        PatchOperation("set", "c", 1),
        PatchOperation("delete", "c"),
        PatchOperation("set", "b", 3),
        PatchOperation("delete", "b"),
        PatchOperation("set", "b", 4),
    ]
    assert await ctx.commit(ops, 1)
    assert (await ctx.load()).data == {RUN: {"status": "running", "executionId": "x"}, "b": 4}


async def test_thousands_of_fields_in_one_commit(store: RedisStateStore) -> None:
    ctx = store.context("big")
    sets = [PatchOperation("set", f"k{i}", i) for i in range(2500)]
    assert await ctx.commit([live(), *sets], 0)
    assert len((await ctx.load()).data) == 2501
    dels = [PatchOperation("delete", f"k{i}") for i in range(2400)]
    assert await ctx.commit(dels, 1)
    data = (await ctx.load()).data
    assert sorted(k for k in data if k != RUN) == sorted(f"k{i}" for i in range(2400, 2500))


async def test_commit_is_one_round_trip(store: RedisStateStore) -> None:
    ctx = store.context("rt")
    await ctx.commit([live()], 0)  # loads the script
    counter = CommandCounter(store.client)
    try:
        ok = await ctx.commit(
            [live(), PatchOperation("set", "a", 1), PatchOperation("delete", "b")], 1
        )
        snap = await ctx.load()
    finally:
        counter.close()
    assert ok is True
    assert counter.names == ["EVALSHA", "EVALSHA"]  # the commit script, the load script
    assert snap.version == 2


async def test_unconditional_patch_and_set_and_delete(store: RedisStateStore) -> None:
    ctx = store.context("p")
    await ctx.set("a", [1])
    await ctx.patch([PatchOperation("set", "b", {"x": 1}), PatchOperation("set", "c", 3)])
    assert await ctx.delete("c") is True
    assert await ctx.delete("c") is False
    snap = await ctx.load()
    assert snap.data == {"a": [1], "b": {"x": 1}}
    assert snap.version == 4
    assert await ctx.to_dict() == {"a": [1], "b": {"x": 1}}


async def test_reserved_version_field_and_unstorable_values(store: RedisStateStore) -> None:
    ctx = store.context("bad")
    with pytest.raises(ValueError, match="reserved"):
        await ctx.commit([PatchOperation("set", VERSION_FIELD, 1)], 0)
    with pytest.raises(ValueError, match="reserved"):
        await ctx.commit([PatchOperation("delete", EPOCH_FIELD)], 0)
    with pytest.raises(SerializationError, match=re.escape("bad.key")):
        await ctx.commit([PatchOperation("set", "bad.key", {1, 2})], 0)
    small = RedisStateStore(store.client, prefix=store.layout.prefix, max_value_bytes=10)
    with pytest.raises(SerializationError, match=re.escape("'big.key' is 14 bytes")):
        await small.context("bad").commit([PatchOperation("set", "big.key", "x" * 12)], 0)
    assert (await ctx.load()).version == 0


async def test_load_since_takes_the_lease_and_reads_only_changes(store: RedisStateStore) -> None:
    ctx = store.context("l")
    await ctx.commit([live(), PatchOperation("set", "a", 1)], 0)
    full = await ctx.load_since(0, "", ("node:a:0", "w1", 10))
    assert full is not None and full.full
    assert (full.sets["a"], full.version) == (1, 1)
    assert await ctx.load_since(1, full.epoch, ("node:a:0", "w2", 10)) is None  # held by w1
    assert await ctx.lease_holder("node:a:0") == "w1"
    await ctx.commit([PatchOperation("set", "b", [2]), PatchOperation("delete", "a")], 1)
    ch = await ctx.load_since(1, full.epoch)
    assert ch is not None
    assert (ch.full, ch.version, ch.sets, ch.deletes) == (False, 2, {"b": [2]}, ("a",))
    unchanged = await ctx.load_since(2, full.epoch)
    assert unchanged is not None and (unchanged.sets, unchanged.version) == ({}, 2)
    other = await ctx.load_since(2, "another-epoch")
    assert other is not None and other.full  # a recreated run: everything again


async def test_commit_release_moves_leases_and_reports_conflicts(store: RedisStateStore) -> None:
    ctx = store.context("m")
    r0 = await ctx.commit_release([live()], 0)
    assert r0.ok
    assert await ctx.load_since(0, "", ("node:a:0", "w1", 10)) is not None
    await store.client.set(store.layout.lease("m", "node:c:0"), "someone")
    r1 = await ctx.commit_release(
        [PatchOperation("set", "x", 1)],
        1,
        release=[("node:a:0", "w1")],
        take=[("node:b:0", "w1"), ("node:c:0", "w1")],
        ttl_seconds=10,
        epoch=r0.epoch,
    )
    assert (r1.ok, r1.taken) == (True, [True, False])
    assert await ctx.lease_holder("node:a:0") is None
    assert await ctx.lease_holder("node:b:0") == "w1"
    assert await ctx.lease_holder("node:c:0") == "someone"
    stale = await ctx.commit_release(
        [PatchOperation("set", "y", 2)], 1, release=[("node:b:0", "w1")], epoch=r0.epoch
    )
    assert not stale.ok
    assert stale.changes is not None
    assert (stale.changes.version, stale.changes.sets["x"]) == (2, 1)
    assert await ctx.lease_holder("node:b:0") == "w1"  # a refused commit releases nothing
    assert await ctx.release_lease("node:b:0", "w1")
    assert await ctx.lease_holder("node:b:0") is None


# -- index, retention and layout -----------------------------------------------------------------


async def _indexed(store: RedisStateStore, run_id: str) -> float | None:
    layout = store.layout
    return await store.client.zscore(layout.active(layout.shard(run_id)), run_id)


async def test_live_runs_are_indexed_and_never_expire(store: RedisStateStore) -> None:
    ctx = store.context("live")
    await ctx.commit([live()], 0, "running")
    await ctx.commit([live(), PatchOperation("set", "a", 1)], 1, "running")
    assert await _indexed(store, "live") is not None
    assert await store.client.pttl(ctx.key) == -1  # no TTL while the run is live


async def test_final_commit_unindexes_and_applies_retention(store: RedisStateStore) -> None:
    ctx = store.context("fin")
    await ctx.commit([live()], 0, "running")
    await ctx.commit([live("completed")], 1, "completed")
    assert await _indexed(store, "fin") is None
    assert 0 < await store.client.pttl(ctx.key) <= 3_600_000
    await ctx.set("late", 1)  # a write with unknown status does not re-index a final run
    assert await _indexed(store, "fin") is None


async def test_no_retention_keeps_final_runs(store: RedisStateStore) -> None:
    keep = RedisStateStore(store.client, prefix=store.layout.prefix, retention_seconds=None)
    ctx = keep.context("kept")
    await ctx.commit([live()], 0, "running")
    await ctx.commit([live("failed")], 1, "failed")
    assert await store.client.pttl(ctx.key) == -1


async def test_list_active_runs_pages_through_every_live_run(store: RedisStateStore) -> None:
    ids = [f"run-{i:02d}" for i in range(23)]
    for rid in ids:
        await store.context(rid).commit([live()], 0, "running")
    for rid in ids[:3]:
        await store.context(rid).commit([live("cancelled")], 1, "cancelled")
    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        page, cursor = await store.list_active_runs(cursor, limit=4)
        assert 1 <= len(page) <= 4
        seen.extend(page)
        pages += 1
        if cursor is None:
            break
    assert sorted(seen) == ids[3:]
    assert len(seen) == len(set(seen))
    assert pages == 5


async def test_list_active_runs_orders_by_last_progress_within_a_shard(
    store: RedisStateStore,
) -> None:
    one = RedisStateStore(store.client, prefix=store.layout.prefix + "one:", shards=1)
    for rid in ("c", "a", "b"):
        await one.context(rid).commit([live()], 0, "running")
        await asyncio.sleep(0.003)  # distinct millisecond scores, in this order
    await one.context("c").commit([live()], 1, "running")  # c progressed last
    page, cursor = await one.list_active_runs(None, limit=10)
    assert (page, cursor) == (["a", "b", "c"], None)
    first, cursor = await one.list_active_runs(None, limit=2)
    second, end = await one.list_active_runs(cursor, limit=2)
    assert (first, second, end) == (["a", "b"], ["c"], None)
    await store.client.delete(one.layout.active(0), *[one.layout.run(r) for r in "abc"])


async def test_same_score_members_are_paged_without_loss(store: RedisStateStore) -> None:
    one = RedisStateStore(store.client, prefix=store.layout.prefix + "tie:", shards=1)
    key = one.layout.active(0)
    await store.client.zadd(key, {f"m{i}": 1000 for i in range(7)})
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = await one.list_active_runs(cursor, limit=3)
        seen.extend(page)
        if cursor is None:
            break
    assert seen == [f"m{i}" for i in range(7)]
    await store.client.delete(key)


def _tag(key: str) -> str:
    start = key.index("{")
    return key[start + 1 : key.index("}", start)]


def test_a_runs_keys_share_one_cluster_slot() -> None:
    layout = RedisKeyLayout("app:", shards=16)
    for rid in ("r1", "with {braces}", "a}b", "ünï"):
        tags = {
            _tag(layout.run(rid)),
            _tag(layout.active(layout.shard(rid))),
            _tag(layout.lease(rid, "x")),
        }
        assert tags == {f"s{layout.shard(rid)}"}
    assert {layout.shard(f"run-{i}") for i in range(200)} == set(range(16))
    assert layout.shard("r1") == RedisKeyLayout("other:", shards=16).shard("r1")


# -- final-result notifications ------------------------------------------------------------------


async def test_final_source_wakes_on_publish(store: RedisStateStore) -> None:
    ctx = store.context("w1")
    assert await ctx.commit([live()], 0, "running")
    src = store.final_source()
    src.recheck_every = 60
    waiter = asyncio.create_task(src.wait("w1", 10))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    assert await ctx.commit([live("completed")], 1, "completed")
    await store.publish_final("w1", "completed")
    await asyncio.wait_for(waiter, 5)
    assert src.waiting == 0


async def test_final_source_returns_at_once_when_final_and_times_out_otherwise(
    store: RedisStateStore,
) -> None:
    assert await store.context("done").commit([live("failed")], 0, "failed")
    assert await store.context("never").commit([live()], 0, "running")
    src = store.final_source()
    await asyncio.wait_for(src.wait("done", 1), 0.5)
    with pytest.raises(TimeoutError) as err:
        await src.wait("never", 0.05)
    assert str(err.value) == "run 'never' still running after 0.05 s"
    with pytest.raises(KeyError, match="no run 'nobody'"):
        await src.wait("nobody", 1)
    assert await store.run_statuses(["done", "never", "nobody"]) == {
        "done": "failed",
        "never": "running",
        "nobody": None,
    }


async def test_waiting_reads_the_status_once_per_wake_up(store: RedisStateStore) -> None:
    """A wake-up before the run is final (a publish that came early) costs one read; then the
    waiter sleeps until the next publish instead of re-reading in a loop."""
    ctx = store.context("slow")
    assert await ctx.commit([live()], 0, "running")
    counter = CommandCounter(store.client)
    try:
        waiter = asyncio.create_task(store.final_source().wait("slow", None))
        await asyncio.sleep(0.1)
        await store.publish_final("slow", "completed")  # early: the run is still running
        await asyncio.sleep(1.0)
        assert not waiter.done()
        assert counter.names.count("HGET") == 2  # the first check, the early wake-up
        assert await ctx.commit([live("completed")], 1, "completed")
        await store.publish_final("slow", "completed")
        await asyncio.wait_for(waiter, 5)
        reads = [n for n in counter.names if n in ("HGET", "HMGET", "HGETALL", "EVALSHA")]
        assert reads == ["HGET", "HGET", "EVALSHA", "HGET"]  # the commit is the EVALSHA
    finally:
        counter.close()


async def test_publish_message_names_run_and_status(store: RedisStateStore) -> None:
    pubsub = store.client.pubsub()
    await pubsub.subscribe(store.layout.final_channel("m"))
    await pubsub.get_message(timeout=1)  # subscribe confirmation
    await store.publish_final("m", "failed")
    msg = None
    for _ in range(50):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg is not None:
            break
    await pubsub.aclose()
    assert msg is not None
    assert json.loads(msg["data"]) == {"runId": "m", "status": "failed"}


def test_coordination_store_satisfies_the_protocol() -> None:
    from flowcraft.distributed.contracts import CoordinationStore

    client = connect("redis://127.0.0.1:1/0")  # no I/O until used
    assert isinstance(RedisCoordinationStore(client), CoordinationStore)


# -- the snapshot cache ------------------------------------------------------------------------


class LoadKinds:
    """Records the kind of every load-script reply of a store: F(ull), D(elta), U(nchanged)."""

    def __init__(self, store: RedisStateStore) -> None:
        self.kinds: list[str] = []
        orig = store._load_since

        async def spy(*a: Any, **kw: Any) -> Any:
            reply = await orig(*a, **kw)
            self.kinds.append(reply[0].decode() if isinstance(reply[0], bytes) else reply[0])
            return reply

        store._load_since = spy  # type: ignore[method-assign]


async def test_a_store_reloads_only_what_changed(store: RedisStateStore) -> None:
    other = RedisStateStore(store.client, prefix=store.layout.prefix, shards=4)
    mine, theirs = store.context("c1"), other.context("c1")
    kinds = LoadKinds(store)
    await mine.commit([live(), PatchOperation("set", "a", 1), PatchOperation("set", "b", 2)], 0)
    assert (await mine.load()).data["a"] == 1  # own commit remembered: nothing transferred
    snap = await theirs.load()
    assert await theirs.commit([PatchOperation("set", "c", [3]), PatchOperation("delete", "a")], 1)
    snap = await mine.load()  # another store committed: only 'a' and 'c' travel
    assert snap.version == 2
    assert snap.data == {RUN: {"status": "running", "executionId": "x"}, "b": 2, "c": [3]}
    snap = await mine.load()
    assert snap.data["c"] == [3]
    assert kinds.kinds == ["U", "D", "U"]
    assert await other.context("c1").commit([PatchOperation("set", "d", None)], 2)
    assert (await mine.load()).data["d"] is None
    assert kinds.kinds[-1] == "D"
    await other.aclose()


async def test_stale_cache_after_a_conflict_is_repaired(store: RedisStateStore) -> None:
    other = RedisStateStore(store.client, prefix=store.layout.prefix, shards=4)
    mine = store.context("c2")
    await mine.commit([live()], 0)
    await mine.load()
    assert await other.context("c2").commit([PatchOperation("set", "x", 1)], 1)
    assert await mine.commit([PatchOperation("set", "x", 2)], 1) is False  # lost the race
    snap = await mine.load()
    assert (snap.version, snap.data["x"]) == (2, 1)
    assert await mine.commit([PatchOperation("set", "x", 3)], 2) is True
    assert (await mine.load()).data["x"] == 3
    assert (await other.context("c2").load()).data["x"] == 3
    await other.aclose()


async def test_a_recreated_hash_is_never_taken_for_the_cached_one(
    store: RedisStateStore,
) -> None:
    mine = store.context("c3")
    await mine.commit([live(), PatchOperation("set", "who", "old")], 0)
    await mine.commit([PatchOperation("set", "n", 1)], 1)
    assert (await mine.load()).version == 2
    layout = store.layout
    await store.client.delete(layout.run("c3"), layout.changes("c3"))  # expired ...
    other = RedisStateStore(store.client, prefix=layout.prefix, shards=4)
    again = other.context("c3")  # ... and created again, up to the same version
    await again.commit([live(), PatchOperation("set", "who", "new")], 0)
    await again.commit([PatchOperation("set", "m", 2)], 1)
    snap = await mine.load()
    assert snap.version == 2
    assert snap.data == {RUN: {"status": "running", "executionId": "x"}, "who": "new", "m": 2}
    await other.aclose()


async def test_snapshots_never_share_mutable_user_values(store: RedisStateStore) -> None:
    ctx = store.context("c4")
    node = {"status": "completed", "iteration": 0}
    await ctx.commit(
        [live(), PatchOperation("set", "lst", [1]), PatchOperation("set", "_fc.node.a", node)], 0
    )
    one = await ctx.load()
    one.data["lst"].append(2)  # node code mutating a value it read, without writing it
    two = await ctx.load()
    assert two.data["lst"] == [1]
    assert two.data["lst"] is not one.data["lst"]
    assert two.data[RUN] is not one.data[RUN]
    assert two.data["_fc.node.a"] == node  # engine node records are read-only: shared


async def test_the_cache_is_bounded_and_can_be_disabled(store: RedisStateStore) -> None:
    small = RedisStateStore(store.client, prefix=store.layout.prefix, shards=4, cache_runs=2)
    for rid in ("r1", "r2", "r3"):
        await small.context(rid).commit([live()], 0)
        await small.context(rid).load()
    assert list(small._cache) == ["r2", "r3"]
    off = RedisStateStore(store.client, prefix=store.layout.prefix, shards=4, cache_runs=0)
    counter = CommandCounter(store.client)
    try:
        snap = await off.context("r1").load()
    finally:
        counter.close()
    assert counter.names == ["HGETALL"]
    assert (snap.version, off._cache) == (1, OrderedDict())
    await small.aclose()
    await off.aclose()


async def test_more_commands_at_once_than_connections_wait_for_one(redis_url: str) -> None:
    """A :func:`connect` client with 4 connections runs 300 commands gathered at once: the
    extra ones wait for a free connection (redis-py's default pool fails them at once with
    MaxConnectionsError, which a client awaiting 100 BullMQ results hit)."""
    import redis.asyncio as aioredis
    from redis.exceptions import MaxConnectionsError

    key = f"fct{uuid.uuid4().hex[:10]}:k"
    name = f"fct-pool-{uuid.uuid4().hex[:8]}"
    client = connect(redis_url, max_connections=4, client_name=name)
    try:
        await client.set(key, b"v", ex=60)
        got = await asyncio.gather(*(client.get(key) for _ in range(300)))
        assert got == [b"v"] * 300
        conns = [c for c in await client.client_list() if c["name"] == name]
        assert len(conns) == 4
    finally:
        await client.aclose()
    plain = aioredis.Redis.from_url(redis_url, max_connections=4)
    try:
        with pytest.raises(MaxConnectionsError):
            await asyncio.gather(*(plain.get(key) for _ in range(300)))
    finally:
        await plain.aclose()
