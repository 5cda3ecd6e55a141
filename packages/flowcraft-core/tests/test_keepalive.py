"""The delivery keeper (flowcraft.distributed.keepalive): every message being handled is
extended once it has been held for half its lease, in one batched call; settled or finished
deliveries are not; the heartbeat extends at a third; the task lives only while something is
tracked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from flowcraft.distributed import Delivery
from flowcraft.distributed.keepalive import DeliveryKeeper, heartbeat


class Recorder:
    """An ``extend`` that records each call's deliveries."""

    def __init__(self) -> None:
        self.calls: list[list[Delivery]] = []
        self.called = asyncio.Event()

    async def __call__(self, deliveries: Sequence[Delivery]) -> None:
        self.calls.append(list(deliveries))
        self.called.set()


async def test_due_deliveries_are_extended_together_and_only_they() -> None:
    rec = Recorder()
    keeper = DeliveryKeeper(rec)
    lease = 0.8
    old1, old2, fresh, settled = (Delivery(body=str(i)) for i in range(4))
    for d in (old1, old2, settled):
        d.extended_at -= lease
    settled.settled = True
    with (
        keeper.tracking(old1, lease),
        keeper.tracking(old2, lease),
        keeper.tracking(fresh, lease),
        keeper.tracking(settled, lease),
    ):
        await asyncio.wait_for(rec.called.wait(), 5)
        assert rec.calls == [[old1, old2]]
        assert time.monotonic() - old1.extended_at < lease / 2  # re-stamped
        assert len(keeper) == 4
    assert len(keeper) == 0
    assert keeper._task is None


async def test_without_a_lease_nothing_is_tracked() -> None:
    rec = Recorder()
    keeper = DeliveryKeeper(rec)
    d = Delivery(body="x")
    with keeper.tracking(d, None):
        assert len(keeper) == 0
        assert keeper._task is None
    assert rec.calls == []


async def test_the_keeper_task_ends_with_the_last_delivery() -> None:
    rec = Recorder()
    keeper = DeliveryKeeper(rec)
    a, b = Delivery(body="a"), Delivery(body="b")
    with keeper.tracking(a, 60.0):
        task = keeper._task
        assert task is not None
        with keeper.tracking(b, 60.0):
            assert keeper._task is task
        assert not task.done()
    await asyncio.sleep(0)
    assert task.cancelled()
    assert rec.calls == []


async def test_heartbeat_extends_at_a_third_of_the_lease() -> None:
    rec = Recorder()
    d = Delivery(body="x")
    await heartbeat(d, 30.0, rec)
    assert rec.calls == []  # just received
    d.extended_at -= 10.5
    await heartbeat(d, 30.0, rec)
    assert rec.calls == [[d]]
    await heartbeat(d, 30.0, rec)
    assert rec.calls == [[d]]  # re-stamped
    d.extended_at -= 20
    d.settled = True
    await heartbeat(d, 30.0, rec)
    assert rec.calls == [[d]]  # acked or given back: nothing to extend
    await heartbeat(Delivery(body="y", extended_at=0.0), None, rec)
    assert rec.calls == [[d]]  # no lease
