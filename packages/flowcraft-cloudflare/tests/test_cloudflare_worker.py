"""The companion Worker's guarantees on workerd, over HTTP: serialised compare-and-set (16
concurrent contenders, exactly one winner), leases and keys that expire, the secret, and
malformed requests (4xx with a JSON error naming the problem, the run unchanged)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from cf_support import CloudflareResources, resources
from flowcraft import PatchOperation
from flowcraft_cloudflare import (
    CloudflareError,
    WorkerCoordinationStore,
    WorkerRunStore,
)

pytestmark = pytest.mark.needs_services


@pytest.fixture
async def cf() -> AsyncIterator[CloudflareResources]:
    """A fresh namespace for one test."""
    async with resources() as res:
        yield res


async def test_16_concurrent_set_if_not_exist_have_exactly_one_winner(
    cf: CloudflareResources,
) -> None:
    stores = [WorkerCoordinationStore(cf.client()) for _ in range(16)]
    won = await asyncio.gather(
        *(s.set_if_not_exist("lease", f"w{i}", 30) for i, s in enumerate(stores))
    )
    assert won.count(True) == 1
    assert await stores[0].get("lease") == f"w{won.index(True)}"


async def test_16_concurrent_commits_at_one_version_have_exactly_one_winner(
    cf: CloudflareResources,
) -> None:
    run = WorkerRunStore(cf.client())
    assert await run.commit("r1", [PatchOperation("set", "n", 0)], 0, "running")
    contenders = [WorkerRunStore(cf.client()) for _ in range(16)]
    won = await asyncio.gather(
        *(s.commit("r1", [PatchOperation("set", "n", i)], 1) for i, s in enumerate(contenders))
    )
    assert won.count(True) == 1
    snap = await run.load("r1")
    assert snap.version == 2
    assert snap.data == {"n": won.index(True)}


async def test_16_concurrent_increments_count_to_16(cf: CloudflareResources) -> None:
    stores = [WorkerCoordinationStore(cf.client()) for _ in range(16)]
    got = await asyncio.gather(*(s.increment("c", 30) for s in stores))
    assert sorted(got) == list(range(1, 17))


async def test_coordination_keys_expire(cf: CloudflareResources) -> None:
    s = WorkerCoordinationStore(cf.client())
    assert await s.set_if_not_exist("lease", "a", 0.3)
    assert await s.get("lease") == "a"
    await asyncio.sleep(0.5)
    assert await s.get("lease") is None
    assert await s.compare_and_delete("lease", "a") is False
    assert await s.set_if_not_exist("lease", "b", 30)
    assert await s.get("lease") == "b"


async def test_an_inbox_lease_expires_and_the_message_returns_with_attempts_2(
    cf: CloudflareResources,
) -> None:
    c = cf.client()
    await c.queue("q", "messages", {"body": '{"x":1}'})
    first = await c.queue("q", "messages/pull", {"batch_size": 10, "visibility_timeout_ms": 300})
    assert [(m["body"], m["attempts"]) for m in first["messages"]] == [('{"x":1}', 1)]
    hidden = await c.queue("q", "messages/pull", {"batch_size": 10, "visibility_timeout_ms": 300})
    assert hidden["messages"] == []
    await asyncio.sleep(0.45)
    again = await c.queue("q", "messages/pull", {"batch_size": 10, "visibility_timeout_ms": 5000})
    assert [(m["body"], m["attempts"]) for m in again["messages"]] == [('{"x":1}', 2)]
    # The first lease is stale: its ack changes nothing; the current one deletes the message.
    stale = await c.queue(
        "q", "messages/ack", {"acks": [{"lease_id": first["messages"][0]["lease_id"]}]}
    )
    assert stale["ackCount"] == 0 and len(stale["warnings"]) == 1
    ok = await c.queue(
        "q", "messages/ack", {"acks": [{"lease_id": again["messages"][0]["lease_id"]}]}
    )
    assert ok["ackCount"] == 1 and ok["warnings"] == []
    assert (await c.queue("q", "messages/pull", {"batch_size": 10}))["message_backlog_count"] == 0


async def test_delays_retries_extensions_and_dead_letters(cf: CloudflareResources) -> None:
    c = cf.client()
    await c.queue(
        "q", "messages/batch", {"messages": [{"body": "a"}, {"body": "b", "delay_seconds": 0.4}]}
    )
    got = await c.queue("q", "messages/pull", {"batch_size": 10, "visibility_timeout_ms": 300})
    assert [m["body"] for m in got["messages"]] == ["a"]
    lease = got["messages"][0]["lease_id"]
    ext = await c.queue(
        "q", "messages/ack", {"extends": [{"lease_id": lease, "visibility_timeout_ms": 2000}]}
    )
    assert ext["extendCount"] == 1
    await asyncio.sleep(0.5)  # past the first lease (extended) and b's delay
    got = await c.queue("q", "messages/pull", {"batch_size": 10, "visibility_timeout_ms": 5000})
    assert [m["body"] for m in got["messages"]] == ["b"]
    r = await c.queue(
        "q",
        "messages/ack",
        {"retries": [{"lease_id": got["messages"][0]["lease_id"], "delay_seconds": 0.2}]},
    )
    assert r["retryCount"] == 1
    r = await c.queue(
        "q", "messages/ack", {"dead_letters": [{"lease_id": lease, "reason": "bad job"}]}
    )
    assert r["deadLetterCount"] == 1
    dead = await c.queue("q", "dead", {})
    assert [(m["body"], m["reason"], m["attempts"]) for m in dead["messages"]] == [
        ("a", "bad job", 1)
    ]
    await asyncio.sleep(0.3)
    got = await c.queue("q", "messages/pull", {"batch_size": 10})
    assert [(m["body"], m["attempts"]) for m in got["messages"]] == [("b", 2)]


async def test_a_request_without_the_right_secret_is_refused(cf: CloudflareResources) -> None:
    async with httpx.AsyncClient(base_url=cf.url) as h:
        body = {"run": "r1", "ops": [["k", "1"]], "expected": 0, "status": "running"}
        r = await h.post("/v1/runs/commit", json=body)
        assert r.status_code == 401
        assert "Authorization" in r.json()["error"]
        r = await h.post(
            "/v1/runs/commit",
            json=body,
            headers={"authorization": "Bearer wrong-secret-0123456789"},
        )
        assert r.status_code == 403
        assert r.json()["error"] == "wrong secret"
        r = await h.get("/v1/health")
        assert r.status_code == 401
    # Nothing was written.
    assert (await WorkerRunStore(cf.client()).load("r1")).version == 0


@pytest.mark.parametrize(
    ("route", "body", "status", "error"),
    [
        ("runs/commit", "not json", 400, "request body is not JSON"),
        ("runs/commit", "[1]", 400, "request body must be an object"),
        (
            "runs/commit",
            '{"run": "r1", "ops": [["k"]], "expected": 1}',
            400,
            "ops[0] must be [key, value or null]",
        ),
        (
            "runs/commit",
            '{"run": "r1", "ops": [["k", 5]], "expected": 1}',
            400,
            "ops[0][1] (the value) must be a string",
        ),
        (
            "runs/commit",
            '{"run": "r1", "ops": [["k", "1"]], "expected": "x"}',
            400,
            "expected must be a number",
        ),
        ("runs/commit", '{"run": "", "ops": []}', 400, "run must not be empty"),
        (
            "runs/commit",
            '{"run": "r1", "ops": [["a", "1"], ["b", 2]], "expected": 1}',
            400,
            "ops[1][1] (the value) must be a string",
        ),
        ("coord", '{"op": "explode", "key": "k"}', 400, "unknown op"),
        ("coord", '{"op": "increment", "key": "k", "ttl": -1}', 400, "ttl must be between"),
        (
            "queues/q/messages",
            '{"body": "x", "delay_seconds": 50000}',
            400,
            "delay_seconds must be between 0 and 43200",
        ),
        (
            "queues/q/messages/pull",
            '{"batch_size": 101}',
            400,
            "batch_size must be between 1 and 100",
        ),
        ("queues/bad%20name/messages", '{"body": "x"}', 400, "queue name may contain only"),
        ("queues/q/nothing", "{}", 404, "no queue route"),
        ("nothing", "{}", 404, "no route"),
    ],
)
async def test_malformed_requests_get_4xx_naming_the_problem_and_change_nothing(
    cf: CloudflareResources, route: str, body: str, status: int, error: str
) -> None:
    store = WorkerRunStore(cf.client())
    assert await store.commit("r1", [PatchOperation("set", "k", "v")], 0, "running")
    async with httpx.AsyncClient(base_url=cf.url) as h:
        r = await h.post(
            f"/v1/{route}",
            content=body,
            headers={"authorization": f"Bearer {cf.secret}", "x-flowcraft-namespace": cf.namespace},
        )
    assert r.status_code == status
    assert error in r.json()["error"]
    snap = await store.load("r1")
    assert (snap.version, snap.data) == (1, {"k": "v"})


async def test_the_client_raises_the_workers_error(cf: CloudflareResources) -> None:
    with pytest.raises(CloudflareError, match="HTTP 400: ops must be an array"):
        await cf.client().call("runs/commit", {"run": "r1", "ops": 3})


async def test_the_active_index_pages_past_1000_runs(cf: CloudflareResources) -> None:
    store = WorkerRunStore(cf.client())
    sem = asyncio.Semaphore(32)

    async def start(i: int) -> None:
        async with sem:
            assert await store.commit(f"run-{i:05d}", [], 0, "running")

    await asyncio.gather(*(start(i) for i in range(1100)))
    assert await store.commit("run-00007", [], 1, "completed")
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = await store.list_active_runs(cursor, 400)
        seen += page
        pages += 1
        if cursor is None:
            break
    assert pages == 3
    assert seen == [f"run-{i:05d}" for i in range(1100) if i != 7]
