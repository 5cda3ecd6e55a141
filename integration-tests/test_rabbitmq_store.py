"""RabbitMQ adapter specifics on real servers: the PostgreSQL run store (parameterised keys,
NUL characters, version and final-status compare-and-set, paged "running and stale" scan,
migrations) and the queue mechanics (delay queues, poison messages, delivery hand-off for
long nodes, reconcile_all, waiting without polling).

Uses the ``rabbit`` fixture of ``rabbitmq_support`` (one queue / schema / key
prefix per test).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from flowcraft import load_blueprint
from flowcraft.context import PatchOperation
from flowcraft.distributed import Delivery, DeliveryPolicy, JobPayload, SimulatedCrash
from flowcraft.testing.conformance import Cluster, FaultInjector, until
from flowcraft.testing.conformance import scenarios as sc
from flowcraft_rabbitmq import SCHEMA_VERSION, PostgresRunStore, RabbitMQAdapter
from psycopg import sql
from rabbitmq_support import RabbitBackend, rabbit

__all__ = ["rabbit"]  # the fixture, imported for pytest

AWKWARD_KEYS = [
    "'); DROP TABLE runs; --",
    'quote"and\\backslash',
    "{a,b}",
    "a.b/c",
    "nul\x00inside",
    "\x01starts-with-escape",
    "$1",
    "%s %(x)s",
    "ключ",
]


def _set(key: str, value: Any) -> PatchOperation:
    return PatchOperation("set", key, value)


async def _store(rabbit: RabbitBackend) -> PostgresRunStore:
    await rabbit.store.migrate()
    return rabbit.store


# == the run store ================================================================================


async def test_awkward_keys_and_nul_strings_round_trip(rabbit: RabbitBackend) -> None:
    """Keys that would break a string-built query, and strings containing NUL (which JSONB
    and PostgreSQL text cannot hold raw) round-trip exactly; the tables survive."""
    store = await _store(rabbit)
    values = {k: f"v\x00{i}" for i, k in enumerate(AWKWARD_KEYS)}
    values["nested"] = {"x\x00y": ["\x00", None, {"k": "\x00\x00"}]}
    assert await store.commit("run/1 'x'", [_set(k, v) for k, v in values.items()], 0)
    snap = await store.load("run/1 'x'")
    assert snap.version == 1
    assert snap.data == values
    assert await store.context("run/1 'x'").get("nul\x00inside") == "v\x004"
    assert await store.commit("run/1 'x'", [PatchOperation("delete", "nul\x00inside")], 1)
    snap = await store.load("run/1 'x'")
    assert "nul\x00inside" not in snap.data
    assert snap.version == 2
    assert await store.schema_version() == SCHEMA_VERSION


async def test_commit_is_a_version_compare_and_set(rabbit: RabbitBackend) -> None:
    """A commit with a stale version writes nothing; creating an existing run fails."""
    store = await _store(rabbit)
    assert await store.commit("r", [_set("a", 1)], 0)
    assert not await store.commit("r", [_set("a", 2)], 0)  # already exists
    assert await store.commit("r", [_set("a", 3), _set("b", 4)], 1)
    assert not await store.commit("r", [_set("a", 5), PatchOperation("delete", "b")], 1)
    snap = await store.load("r")
    assert snap.data == {"a": 3, "b": 4}
    assert snap.version == 2
    assert await store.load("missing") == type(snap)({}, 0)


async def test_final_status_is_never_replaced(rabbit: RabbitBackend) -> None:
    """The status column is the status passed with a commit (None: unchanged). Once it is
    final, a commit that would change it is refused even with the right version; commits
    that leave it alone still apply."""
    store = await _store(rabbit)
    assert await store.commit("f", [_set("a", 1)], 0, "running")
    assert await store.run_status("f") == "running"
    assert await store.commit("f", [_set("a", 2)], 1)
    assert await store.run_status("f") == "running"
    assert await store.commit("f", [_set("a", 3)], 2, "completed")
    assert await store.run_status("f") == "completed"
    assert not await store.commit("f", [_set("a", 4)], 3, "running")
    assert not await store.commit("f", [_set("a", 5)], None, "failed")
    assert await store.run_status("f") == "completed"
    assert await store.commit("f", [_set("note", 1)], 3)
    assert await store.commit("f", [_set("note", 2)], 4, "completed")
    snap = await store.load("f")
    assert (snap.version, snap.data) == (5, {"a": 3, "note": 2})
    assert await store.run_status("f") == "completed"


async def test_contending_commits_take_turns_and_all_apply(rabbit: RabbitBackend) -> None:
    """Twenty branches of one run committing at once from one process (each: load, add
    itself, conditional commit, retry on conflict) all apply exactly once; the in-process
    gates used by the retries are gone afterwards."""
    store = await _store(rabbit)
    assert await store.commit("fan", [_set("done", [])], 0)

    async def branch(i: int) -> int:
        ctx = store.context("fan")
        tries = 0
        while True:
            tries += 1
            snap = await ctx.load()
            await asyncio.sleep(0)  # let the others read the same version
            if await ctx.commit([_set("done", [*snap.data["done"], i])], snap.version):
                return tries

    tries = await asyncio.gather(*(branch(i) for i in range(20)))
    snap = await store.load("fan")
    assert sorted(snap.data["done"]) == list(range(20))
    assert snap.version == 21
    assert max(tries) > 1  # they did collide
    assert store._gates == {}


async def test_active_runs_are_paged_and_stale_filtered(rabbit: RabbitBackend) -> None:
    """``list_active_runs`` pages through non-final runs exactly once each, least recently
    updated first; ``stale_after`` keeps only runs without progress for that long."""
    store = await _store(rabbit)
    for i in range(7):
        status = "completed" if i % 3 == 0 else "running"
        assert await store.commit(f"r{i}", [_set("x", i)], 0, status)
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        ids, cursor = await store.list_active_runs(cursor, 2)
        pages.append(ids)
        if cursor is None:
            break
    assert pages == [["r1", "r2"], ["r4", "r5"]]
    assert await store.list_active_runs(None, 100, stale_after=3600) == ([], None)
    assert (await store.list_active_runs(None, 100, stale_after=0))[0] == ["r1", "r2", "r4", "r5"]


async def test_migrations_are_idempotent_and_concurrent(rabbit: RabbitBackend) -> None:
    """Several processes migrating at once end with one schema at the newest version."""
    stores = [PostgresRunStore(rabbit.postgres_url, schema=rabbit.schema) for _ in range(3)]
    try:
        assert await stores[0].schema_version() == 0
        versions = await asyncio.gather(*(s.migrate() for s in stores))
        assert versions == [SCHEMA_VERSION] * 3
        assert await stores[0].migrate() == SCHEMA_VERSION
        assert await stores[1].schema_version() == SCHEMA_VERSION
    finally:
        for s in stores:
            await s.aclose()


async def test_a_version_1_schema_is_upgraded_with_its_runs_intact(rabbit: RabbitBackend) -> None:
    """A deployment created by schema version 1 (no row versions, no epochs, no lease table)
    migrates to version 2 with its runs readable: a reader that saw nothing gets every key,
    and later commits are then read incrementally."""
    store = rabbit.store
    await store.open()
    async with store.pool.connection() as conn, conn.transaction():
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(rabbit.schema)))
        for stmt in _v1_schema():
            await conn.execute(store._q(stmt))
        await conn.execute(
            store._q("INSERT INTO {runs} (run_id, version, status) VALUES ('old', 3, 'running')")
        )
        await conn.execute(
            store._q(
                "INSERT INTO {ctx} (run_id, key, value) VALUES ('old', 'a', '1'), ('old', 'b', '2')"
            )
        )
    assert await store.schema_version() == 1
    assert await store.migrate() == SCHEMA_VERSION == 2
    ch = await store.load_since("old", 0, "", None)
    assert ch is not None
    assert (ch.version, ch.full, ch.sets, ch.deletes) == (3, True, {"a": 1, "b": 2}, ())
    assert await store.commit("old", [_set("c", 3)], 3)
    later = await store.load_since("old", 3, ch.epoch, None)
    assert later is not None
    assert (later.version, later.full, later.sets) == (4, False, {"c": 3})


async def test_a_schema_newer_than_the_code_is_refused(rabbit: RabbitBackend) -> None:
    """A process whose code knows an older schema than the deployment's stops with an error
    naming both versions instead of misreading what newer workers wrote."""
    store = await _store(rabbit)
    async with store.pool.connection() as conn:
        await conn.execute(
            store._q("UPDATE {meta} SET value = %s WHERE key = 'schema_version'"),
            (str(SCHEMA_VERSION + 1),),
        )
    with pytest.raises(RuntimeError, match=rf"at version {SCHEMA_VERSION + 1}, newer than the "):
        await store.migrate()


def _v1_schema() -> list[Any]:
    from flowcraft_rabbitmq import postgres

    return [
        "CREATE TABLE {meta} (key TEXT PRIMARY KEY, value TEXT)",
        "INSERT INTO {meta} VALUES ('schema_version', '1')",
        *postgres._MIGRATIONS[1],
    ]


async def test_load_since_returns_only_what_changed(rabbit: RabbitBackend) -> None:
    """A reader that saw version N of a run gets exactly the keys written or deleted after
    it; a reader of another epoch (the run was deleted and created again) or of version 0
    gets every live key; a reader that is current gets nothing."""
    store = await _store(rabbit)
    assert await store.commit("r", [_set("a", 1), _set("b", [1]), _set("c", "x")], 0)
    first = await store.load_since("r", 0, "", None)
    assert first is not None
    assert (first.version, first.full, first.sets) == (1, True, {"a": 1, "b": [1], "c": "x"})
    epoch = first.epoch
    assert epoch
    assert await store.commit("r", [_set("b", [1, 2]), PatchOperation("delete", "c")], 1)
    assert await store.commit("r", [_set("d", None)], 2)
    ch = await store.load_since("r", 1, epoch, None)
    assert ch is not None
    assert (ch.version, ch.epoch, ch.full) == (3, epoch, False)
    assert (ch.sets, ch.deletes) == ({"b": [1, 2], "d": None}, ("c",))
    same = await store.load_since("r", 3, epoch, None)
    assert same is not None
    assert (same.version, same.full, same.sets, same.deletes) == (3, False, {}, ())
    # a deleted key is gone from full reads and single gets
    full = await store.load_since("r", 2, "another epoch", None)
    assert full is not None
    assert (full.full, full.sets, full.deletes) == (True, {"a": 1, "b": [1, 2], "d": None}, ())
    assert (await store.load("r")).data == {"a": 1, "b": [1, 2], "d": None}
    assert await store.get_key("r", "c") == (False, None)
    # deleted and created again: a new epoch, every key
    await store.delete_run("r")
    assert await store.commit("r", [_set("z", 0)], 0)
    again = await store.load_since("r", 1, epoch, None)
    assert again is not None
    assert again.epoch != epoch
    assert (again.version, again.full, again.sets) == (1, True, {"z": 0})
    gone = await store.load_since("missing", 4, epoch, None)
    assert gone is not None
    assert (gone.version, gone.full, gone.sets) == (0, True, {})


async def test_leases_travel_with_reads_and_commits(rabbit: RabbitBackend) -> None:
    """A read with a lease takes it first (None when another token holds it; an expired
    lease is taken over); a commit releases the committing token's lease and takes the
    successors' leases only when its version check passes; a key both released and taken
    ends held by the new token."""
    store = await _store(rabbit)
    assert await store.commit("r", [_set("a", 1)], 0)
    assert await store.load_since("r", 0, "", ("L1", "t1", 30.0)) is not None
    assert await store.load_since("r", 0, "", ("L1", "t2", 30.0)) is None
    assert await store.lease_holder("L1") == "t1"
    assert await store.load_since("r", 0, "", ("L2", "old", 0.05)) is not None
    await asyncio.sleep(0.1)
    assert await store.lease_holder("L2") is None
    assert not await store.extend_lease("L2", 30.0)
    assert await store.load_since("r", 0, "", ("L2", "new", 30.0)) is not None
    assert await store.lease_holder("L2") == "new"
    # refused commit: no lease moves
    r = await store.commit_release("r", [_set("a", 2)], 7, [("L1", "t1")], [("L3", "t3")], 30, None)
    assert (r.ok, r.taken) == (False, [])
    assert await store.lease_holder("L1") == "t1"
    assert await store.lease_holder("L3") is None
    # accepted: L1 released, L3 taken, L2 (held by "new") not taken, L1 released and taken
    r = await store.commit_release(
        "r",
        [_set("a", 3)],
        1,
        [("L1", "t1")],
        [("L3", "t3"), ("L2", "t4"), ("L1", "t5")],
        30,
        "running",
    )
    assert (r.ok, r.taken) == (True, [True, False, True])
    assert r.epoch == (await store.load_since("r", 0, "", None) or r).epoch
    assert [await store.lease_holder(k) for k in ("L1", "L2", "L3")] == ["t5", "new", "t3"]
    assert (await store.load("r")) == type(await store.load("r"))({"a": 3}, 2)
    # release only by the holder's token
    assert not await store.release_lease("L3", "t1")
    assert await store.release_lease("L3", "t3")
    assert await store.lease_holder("L3") is None
    assert await store.extend_lease("L2", 30.0)


# == runs with NUL strings, results, reconcile_all, waiting ========================================


def _nul_scenario() -> sc.Scenario:
    p = sc.Probe()
    reg: dict[str, Any] = {
        "w": p.node("out\x00put", writes={"k\x00ey": "va\x00lue", "plain": ["\x00"]}),
        "r": p.node(lambda c: c.input + "!"),
    }
    bp = load_blueprint(
        {
            "id": "nul",
            "nodes": [{"id": "w", "uses": "w"}, {"id": "r", "uses": "r"}],
            "edges": [{"source": "w", "target": "r"}],
        }
    )
    return sc.Scenario([bp], reg, p)


async def test_run_with_nul_strings_completes_and_stores_its_result(
    rabbit: RabbitBackend,
) -> None:
    """A workflow writing NUL-containing keys and values completes with them intact; the
    status column and the published result row agree."""
    s = _nul_scenario()

    async def make(runtime_options: dict[str, Any], **kw: Any) -> Any:
        return rabbit.adapter(runtime_options=runtime_options, **kw)

    async with Cluster(make, s.runtime_options, workers=1, timeout=20) as c:
        res = await c.run("nul")
    assert res.status == "completed"
    assert res.context == {
        "k\x00ey": "va\x00lue",
        "plain": ["\x00"],
        "_outputs.w": "out\x00put",
        "_outputs.r": "out\x00put!",
    }
    assert await rabbit.store.run_status(res.execution_id) == "completed"
    stored = await rabbit.store.get_result(res.execution_id)
    assert stored is not None
    assert stored["status"] == "completed"
    assert stored["context"]["k\x00ey"] == "va\x00lue"


async def test_reconcile_all_uses_the_stale_scan(rabbit: RabbitBackend) -> None:
    """A run whose job was lost is found by ``reconcile_all`` (SQL "running and stale"
    scan) and completes; a fresh threshold finds nothing."""
    s = sc.lost()
    faults = FaultInjector().drop("b")

    async def make(runtime_options: dict[str, Any], **kw: Any) -> Any:
        # every node a message: the dropped job is b's own (inline, a would run b itself)
        return rabbit.adapter(
            runtime_options=runtime_options, lease_seconds=0.3, inline_successors=0, **kw
        )

    async with Cluster(make, s.runtime_options, workers=1, faults=faults, timeout=20) as c:
        rid = await c.start_run("lost")
        await c.wait_until(rid, lambda st: st.node_statuses.get("b") == "queued", "b queued")
        await c.hold(0.6)  # the lease of nothing; b's job is simply gone
        client = c.client
        assert isinstance(client, RabbitMQAdapter)
        assert await client.reconcile_all(stale_after=3600) == {
            "scanned": 0,
            "reconciled": 0,
            "enqueued": 0,
        }
        assert await client.reconcile_all(stale_after=0.1) == {
            "scanned": 1,
            "reconciled": 1,
            "enqueued": 1,
        }
        res = await c.result(rid)
    assert res.status == "completed"
    assert s.probe.counts() == {"a": 1, "b": 1, "c": 1}


async def test_result_waits_for_notify_not_polling(rabbit: RabbitBackend) -> None:
    """``result()`` LISTENs for the final NOTIFY: while the run is held for 1.5 s the waiting
    client sends at most a few status queries (one per ``recheck`` second), not a poll loop."""
    s = sc.lost()
    client_store = PostgresRunStore(rabbit.postgres_url, schema=rabbit.schema)

    async def make(runtime_options: dict[str, Any], **kw: Any) -> Any:
        if kw.get("worker_id") == "client":
            return rabbit.adapter(postgres=client_store, runtime_options=runtime_options, **kw)
        return rabbit.adapter(runtime_options=runtime_options, **kw)

    try:
        async with Cluster(make, s.runtime_options, workers=1, timeout=20) as c:
            rid = await c.start_run("held")
            await until(s.probe.gate("held-started").is_set, "'held' to start")
            before = client_store.stats.statements
            waiter = asyncio.create_task(c.result(rid))
            await c.hold(1.5)
            during = client_store.stats.statements - before
            s.probe.gate("go").set()
            res = await waiter
        assert res.status == "completed"
        assert 1 <= during <= 3
    finally:
        await client_store.aclose()


# == queue mechanics ==============================================================================


async def _consume(adapter: RabbitMQAdapter, handler: Any) -> asyncio.Task[None]:
    task = asyncio.create_task(adapter.process_jobs(handler))
    await asyncio.sleep(0)
    return task


def _job(node: str) -> JobPayload:
    return JobPayload(run_id="q", blueprint_id="bp", node_id=node)


async def test_delays_order_deliveries_without_plugins(rabbit: RabbitBackend) -> None:
    """Delayed messages go through the TTL delay queues and arrive in due order whatever the
    publish order: 700 ms (several power-of-two hops), 150 ms, 30 ms, now."""
    a = rabbit.adapter()
    seen: list[str] = []

    async def handler(job: JobPayload, delivery: Delivery | None) -> None:
        seen.append(job.node_id)

    task = await _consume(a, handler)
    try:
        await a.enqueue_job(_job("late"), delay=0.7)
        await a.enqueue_job(_job("mid"), delay=0.15)
        await a.enqueue_job(_job("soon"), delay=0.03)
        await a.enqueue_job(_job("now"))
        await until(lambda: len(seen) == 4, "four deliveries", timeout=10)
    finally:
        await a.stop()
        await task
    assert seen == ["now", "soon", "mid", "late"]
    assert a.delay_queue_name(512) in a._declared  # the 700 ms message hopped via 512 ms


async def test_failing_handling_is_retried_with_backoff_then_dead_lettered(
    rabbit: RabbitBackend,
) -> None:
    """A message whose handling keeps raising is redelivered through the delay queues (never
    a hot loop; each copy carries the delivery count) and dead-lettered with the reason on
    delivery ``max_deliveries``."""
    a = rabbit.adapter(delivery_policy=DeliveryPolicy(max_deliveries=3))
    calls: list[tuple[str, int]] = []

    async def handler(job: JobPayload, delivery: Delivery | None) -> None:
        assert delivery is not None
        calls.append((job.node_id, delivery.deliveries))
        raise ConnectionError("store down")

    task = await _consume(a, handler)
    try:
        await a.enqueue_job(_job("poison"))
        await until(lambda: a.dead_lettered == 1, "the dead letter", timeout=10)
    finally:
        await a.stop()
        await task
    assert calls == [("poison", 1), ("poison", 2), ("poison", 3)]
    assert a.delay_queue_name(64) in a._declared  # the 0.1 s backoff went through 64 ms
    assert await a.dead_letters() == [
        (
            _job("poison").to_json(),
            "handling failed on delivery 3 (limit 3): ConnectionError: store down",
        )
    ]


async def test_message_killing_its_worker_is_dead_lettered(rabbit: RabbitBackend) -> None:
    """A message that "kills" its worker every time (simulated crash: no ack, requeued by the
    broker, each redelivery counted) is dead-lettered on the delivery after
    ``max_deliveries`` instead of looping forever."""
    a = rabbit.adapter(delivery_policy=DeliveryPolicy(max_deliveries=3))
    calls: list[tuple[str, int]] = []

    async def handler(job: JobPayload, delivery: Delivery | None) -> None:
        assert delivery is not None
        calls.append((job.node_id, delivery.deliveries))
        raise SimulatedCrash("boom")

    task = await _consume(a, handler)
    try:
        await a.enqueue_job(_job("killer"))
        await until(lambda: a.dead_lettered == 1, "the dead letter", timeout=10)
    finally:
        await a.stop()
        await task
    assert calls == [("killer", 1), ("killer", 2), ("killer", 3)]
    assert await a.dead_letters() == [
        (
            _job("killer").to_json(),
            "delivered 4 times (limit 3) without being handled; the job kills or stalls its worker",
        )
    ]


def _long_scenario(seconds: float) -> sc.Scenario:
    p = sc.Probe()
    reg: dict[str, Any] = {
        "s": p.node("S"),
        "long": p.node("LONG", sleep=seconds, started="long-started"),
        "after": p.node(lambda c: f"after:{c.input}"),
    }
    bp = load_blueprint(
        {
            "id": "long",
            "nodes": [{"id": n, "uses": n} for n in ("s", "long", "after")],
            "edges": [{"source": "s", "target": "long"}, {"source": "long", "target": "after"}],
        }
    )
    return sc.Scenario([bp], reg, p)


LONG_CONTEXT = {"_outputs.s": "S", "_outputs.long": "LONG", "_outputs.after": "after:LONG"}


async def test_long_node_hands_off_its_delivery(rabbit: RabbitBackend) -> None:
    """A node running past ``handoff_after`` has its delivery acked early (so the broker's
    consumer timeout can never close the channel) and a watchdog copy re-armed while its
    lease lives; the node runs once and the run completes."""
    s = _long_scenario(1.2)
    watch: list[str] = []

    async def make(runtime_options: dict[str, Any], **kw: Any) -> Any:
        a = rabbit.adapter(
            runtime_options=runtime_options,
            lease_seconds=0.3,
            handoff_after=0.2,
            watchdog_interval=0.2,
            inline_successors=0,  # the long node is a delivery of its own
            **kw,
        )
        orig = a._lease_alive

        async def lease_alive(job: JobPayload) -> bool:
            alive = await orig(job)
            watch.append(f"{job.node_id}:{alive}")
            return alive

        a._lease_alive = lease_alive  # type: ignore[method-assign]
        return a

    async with Cluster(make, s.runtime_options, workers=2, timeout=20) as c:
        res = await c.run("long")
        await c.hold(0.5)  # a last watchdog may still be on its way: it must change nothing
    assert res.status == "completed"
    assert res.context == LONG_CONTEXT
    assert s.probe.counts() == {"s": 1, "long": 1, "after": 1}
    assert watch.count("long:True") >= 2  # re-armed while the node ran
    assert set(watch) <= {"long:True", "long:False"}


async def test_watchdog_recovers_a_handed_off_job_whose_worker_died(
    rabbit: RabbitBackend,
) -> None:
    """The worker dies after handing off a long node's delivery (nothing left to requeue):
    once its lease expires the watchdog copy runs the node again and the run completes."""
    s = _long_scenario(1.0)  # handed off (at 0.2 s) long before it dies (at 1.0 s)
    faults = FaultInjector().crash("long", "after_execute")
    watch: list[str] = []

    async def make(runtime_options: dict[str, Any], **kw: Any) -> Any:
        a = rabbit.adapter(
            runtime_options=runtime_options,
            lease_seconds=0.3,
            handoff_after=0.2,
            watchdog_interval=0.2,
            inline_successors=0,  # the long node is a delivery of its own
            **kw,
        )
        orig = a._lease_alive

        async def lease_alive(job: JobPayload) -> bool:
            alive = await orig(job)
            watch.append(f"{job.node_id}:{alive}")
            return alive

        a._lease_alive = lease_alive  # type: ignore[method-assign]
        return a

    async with Cluster(make, s.runtime_options, workers=2, faults=faults, timeout=20) as c:
        res = await c.run("long")
    assert [(p, n) for p, n, _ in faults.crashes] == [("after_execute", "long")]
    assert res.status == "completed"
    assert res.context == LONG_CONTEXT
    assert s.probe.counts() == {"s": 1, "long": 2, "after": 1}
    # The dead worker's delivery was already acked: the watchdog, finding the lease gone,
    # is what ran the node again.
    assert "long:False" in watch


async def test_ordinary_keys_are_stored_verbatim(rabbit: RabbitBackend) -> None:
    """Ordinary keys (engine and user) are stored as they are, readable by plain SQL; only
    keys with NUL get the escape."""
    store = await _store(rabbit)
    s = sc.linear()

    async def make(runtime_options: dict[str, Any], **kw: Any) -> Any:
        return rabbit.adapter(runtime_options=runtime_options, **kw)

    async with Cluster(make, s.runtime_options, workers=1, timeout=20) as c:
        res = await c.run("linear", {"start": 0})
    assert res.status == "completed"
    async with store.pool.connection() as conn:
        query = sql.SQL("SELECT key FROM {} WHERE run_id = %s ORDER BY key").format(
            sql.Identifier(rabbit.schema, "ctx")
        )
        cur = await conn.execute(query, (res.execution_id,))
        keys = [r[0] for r in await cur.fetchall()]
    assert "_fc.run" in keys
    assert "_outputs.c" in keys
    assert all(not k.startswith("\x01") for k in keys)


@pytest.mark.parametrize("bad", [b"\xff\xfe not utf-8", b"[1, 2, 3]"])
async def test_undecodable_bodies_are_dead_lettered(rabbit: RabbitBackend, bad: bytes) -> None:
    """Bodies that are not UTF-8 JSON objects are dead-lettered; the handler never runs."""
    a = rabbit.adapter()
    calls: list[JobPayload] = []

    async def handler(job: JobPayload, delivery: Delivery | None) -> None:
        calls.append(job)

    task = await _consume(a, handler)
    try:
        await a.publish(bad)
        await until(lambda: a.dead_lettered == 1, "the dead letter", timeout=10)
    finally:
        await a.stop()
        await task
    assert calls == []
    assert len(await a.dead_letters()) == 1
