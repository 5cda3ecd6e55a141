"""The store contract suites against the DynamoDB stores of :mod:`flowcraft_sqs.dynamodb`, on
the moto server of flowcraft-core's pytest plugin (``moto_url``: an env URL, testcontainers or
a throwaway ``moto_server``). Each test gets its own table, deleted afterwards.

Emulator deviation (as in every SQS test, see ``sqs_support``): moto executes DynamoDB requests
in parallel threads without the per-request atomicity real DynamoDB has, so the stores' clients
send DynamoDB requests one at a time (:class:`sqs_support.SerializedDynamoDB`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import ClassVar

import pytest
from flowcraft.testing.conformance import CoordinationStoreSuite, RunStoreSuite
from flowcraft_sqs import DynamoCoordinationStore, DynamoRunStore
from flowcraft_sqs.dynamodb import DynamoRunContext
from sqs_support import SqsResources, make_resources


@pytest.fixture
async def aws(moto_url: str) -> AsyncIterator[SqsResources]:
    """A fresh queue pair and table on the moto server (only the table is used here)."""
    res = await make_resources(moto_url)
    try:
        yield res
    finally:
        await res.cleanup()


class TestDynamoCoordinationStore(CoordinationStoreSuite):
    """Conditional writes and ``ADD`` counters; expiry checked on every read and condition."""

    # moto_server answers in tens of ms, but hundreds under a loaded CI machine: three
    # requests must fit in the TTL of the keys the expiry tests wait out (CI saw a 0.5 s key
    # expire before it was read back).
    short_ttl: ClassVar[float] = 2.0
    expiry_margin: ClassVar[float] = 0.5

    @pytest.fixture
    def store(self, aws: SqsResources) -> DynamoCoordinationStore:
        """The coordination store on the test's table."""
        return DynamoCoordinationStore(aws.clients_for_test(), aws.table)


class TestDynamoRunStore(RunStoreSuite):
    """Run contexts in the test's table; every context from its own store and clients."""

    @pytest.fixture
    def context_factory(self, aws: SqsResources) -> Callable[[str], DynamoRunContext]:
        """Contexts on the test's table."""
        return lambda run_id: DynamoRunContext(
            DynamoRunStore(aws.clients_for_test(), aws.table), run_id
        )


async def test_commit_release_moves_leases_in_the_commits_transaction(aws: SqsResources) -> None:
    """:class:`DynamoLeasingContext`: the lease is taken before the read (None when held),
    and a commit releases the delivery's lease and takes successors' leases in its own
    transaction; a take held by another delivery is left out (reported not taken) without
    failing the commit; a refused commit releases and takes nothing."""
    from flowcraft.context import PatchOperation
    from flowcraft.distributed import IncrementalContext
    from flowcraft_sqs.dynamodb import DynamoLeasingContext

    clients = aws.clients_for_test()
    coord = DynamoCoordinationStore(clients, aws.table)
    ctx = DynamoLeasingContext(DynamoRunStore(clients, aws.table), "m", coord)
    assert isinstance(ctx, IncrementalContext)
    r0 = await ctx.commit_release([PatchOperation("set", "a", 0)], 0)
    assert (r0.ok, r0.taken) == (True, [])
    ch = await ctx.load_since(0, "", ("node:a:0", "w1", 10))
    assert ch is not None and (ch.version, ch.full, ch.sets) == (1, True, {"a": 0})
    assert await ctx.load_since(0, "", ("node:a:0", "w2", 10)) is None  # held by w1
    assert await coord.set_if_not_exist("node:c:0", "someone", 10)
    clients.stats.calls.clear()
    r1 = await ctx.commit_release(
        [PatchOperation("set", "x", 1)],
        1,
        release=[("node:a:0", "w1")],
        take=[("node:b:0", "w1"), ("node:c:0", "w1")],
        ttl_seconds=10,
    )
    assert (r1.ok, r1.taken) == (True, [True, False])
    # the take held elsewhere cancelled the first transaction; the second left it out
    assert dict(clients.stats.calls) == {"dynamodb.transact_write_items": 2}
    assert await ctx.lease_holder("node:a:0") is None
    assert await ctx.lease_holder("node:b:0") == "w1"
    assert await ctx.lease_holder("node:c:0") == "someone"
    assert (await ctx.load()).data == {"a": 0, "x": 1}
    stale = await ctx.commit_release(
        [PatchOperation("set", "y", 2)], 1, release=[("node:b:0", "w1")], take=[("d", "w1")]
    )
    assert (stale.ok, stale.taken) == (False, [])
    assert await ctx.lease_holder("node:b:0") == "w1"  # a refused commit releases nothing
    assert await ctx.lease_holder("d") is None  # and takes nothing
    not_mine = await ctx.commit_release(
        [PatchOperation("set", "y", 2)], 2, release=[("node:c:0", "w1")]
    )
    assert not_mine.ok  # releasing a lease another delivery holds leaves it alone
    assert await ctx.lease_holder("node:c:0") == "someone"
    assert await ctx.extend_lease("node:b:0", 10)
    assert not await ctx.release_lease("node:b:0", "w2")
    assert await ctx.release_lease("node:b:0", "w1")
    assert await ctx.lease_holder("node:b:0") is None
    assert (await ctx.load()).data == {"a": 0, "x": 1, "y": 2}
    # 99 keys fill the transaction (100 items with the version bump): the release that does
    # not fit is made on its own after the commit, the take is not attempted
    assert await coord.set_if_not_exist("node:e:0", "w1", 10)
    full = await ctx.commit_release(
        [PatchOperation("set", f"k{i}", i) for i in range(99)],
        3,
        release=[("node:e:0", "w1")],
        take=[("node:f:0", "w1")],
        ttl_seconds=10,
    )
    assert (full.ok, full.taken) == (True, [False])
    assert await ctx.lease_holder("node:e:0") is None
    assert await ctx.lease_holder("node:f:0") is None
