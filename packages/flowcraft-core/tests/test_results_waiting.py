"""Waiting for final runs (:mod:`flowcraft.distributed.results`), on an in-process status table
(the :data:`StatusReader`) and an in-process announcement channel (the :data:`Listener`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence

import pytest
from flowcraft.distributed.results import (
    READ_CHUNK,
    FinalSource,
    PullSource,
    PushSource,
    one_by_one,
)


class Table:
    """Run statuses; every read is logged (the ids it asked for, in order)."""

    def __init__(self, **status: str) -> None:
        self.status: dict[str, str] = dict(status)
        self.reads: list[list[str]] = []
        self.read_at: list[float] = []
        self.fail_next = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate: asyncio.Event | None = None  # set: reads wait for it

    async def statuses(self, run_ids: Sequence[str]) -> Mapping[str, str | None]:
        """The :data:`StatusReader`."""
        self.reads.append(list(run_ids))
        self.read_at.append(time.monotonic())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # a real read yields to the loop
            if self.gate is not None:
                await self.gate.wait()
            if self.fail_next:
                self.fail_next -= 1
                raise ConnectionError("store unavailable")
            return {rid: self.status.get(rid) for rid in run_ids}
        finally:
            self.in_flight -= 1


class Channel:
    """Announcements of final runs; a subscription can be dropped like a lost connection."""

    def __init__(self) -> None:
        self.sessions = 0
        self.active = False
        self._notify: Callable[[str], None] | None = None
        self._drop: asyncio.Future[None] | None = None

    async def listen(self, subscribed: Callable[[], None], notify: Callable[[str], None]) -> None:
        """The :data:`Listener`."""
        self.sessions += 1
        self._drop = asyncio.get_running_loop().create_future()
        self._notify = notify
        self.active = True
        subscribed()
        try:
            await self._drop
        finally:
            self._notify = None
            self.active = False

    def announce(self, run_id: str) -> None:
        """Publish "``run_id`` is final" (lost when nobody is subscribed)."""
        if self._notify is not None:
            self._notify(run_id)

    def drop(self) -> None:
        """Lose the current subscription."""
        assert self._drop is not None
        self._drop.set_exception(ConnectionError("subscription lost"))


async def until(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait until ``cond()`` holds (fails the test after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.002)


def push(table: Table, channel: Channel, **kw: float | bool) -> PushSource:
    """A push source on ``table`` and ``channel``; re-checks only when asked to."""
    kw.setdefault("recheck_every", 60.0)
    kw.setdefault("resubscribe_delay", 0.01)
    return PushSource(table.statuses, channel.listen, **kw)  # type: ignore[arg-type]


async def closed(src: FinalSource) -> None:
    """Close ``src`` and check that no waiter is left."""
    assert src.waiting == 0
    await src.aclose()


# -- push ----------------------------------------------------------------------------------------


async def test_push_returns_at_once_for_a_final_run_after_one_read() -> None:
    table, channel = Table(r="completed"), Channel()
    src = push(table, channel)
    await src.wait("r", 1)
    assert table.reads == [["r"]]
    assert channel.sessions == 1
    await closed(src)


async def test_push_wakes_on_notify_and_reads_once_per_wake_up() -> None:
    table, channel = Table(r="running"), Channel()
    src = push(table, channel)
    waiter = asyncio.create_task(src.wait("r", 10))
    await until(lambda: len(table.reads) == 1)
    await asyncio.sleep(0.05)
    assert not waiter.done()
    table.status["r"] = "completed"
    channel.announce("r")
    await asyncio.wait_for(waiter, 1)
    assert table.reads == [["r"], ["r"]]
    await closed(src)


async def test_push_early_wake_up_is_cleared_not_a_busy_loop() -> None:
    """An announcement that comes before the run is final costs one read, then the waiter
    sleeps again (the event is cleared)."""
    table, channel = Table(r="running"), Channel()
    src = push(table, channel)
    waiter = asyncio.create_task(src.wait("r", 10))
    await until(lambda: len(table.reads) == 1)
    channel.announce("r")
    await asyncio.sleep(0.3)
    assert len(table.reads) == 2
    assert not waiter.done()
    table.status["r"] = "failed"
    channel.announce("r")
    await asyncio.wait_for(waiter, 1)
    assert len(table.reads) == 3
    await closed(src)


async def test_push_unknown_run_raises_key_error() -> None:
    table, channel = Table(), Channel()
    src = push(table, channel)
    with pytest.raises(KeyError, match="no run 'nope'"):
        await src.wait("nope", 1)
    assert table.reads == [["nope"]]
    await closed(src)


async def test_push_run_deleted_while_waiting_raises_key_error() -> None:
    table, channel = Table(r="running"), Channel()
    src = push(table, channel)
    waiter = asyncio.create_task(src.wait("r", 10))
    await until(lambda: len(table.reads) == 1)
    del table.status["r"]
    channel.announce("r")
    with pytest.raises(KeyError, match="no run 'r'"):
        await asyncio.wait_for(waiter, 1)
    await closed(src)


async def test_push_times_out_naming_the_status() -> None:
    table, channel = Table(r="running"), Channel()
    src = push(table, channel)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as err:
        await src.wait("r", 0.1)
    assert str(err.value) == "run 'r' still running after 0.1 s"
    assert 0.1 <= time.monotonic() - t0 < 1.0
    assert table.reads == [["r"], ["r"]]  # the check, then the last look at the deadline
    await closed(src)


async def test_push_lost_subscription_resubscribes_and_every_waiter_rechecks_once() -> None:
    """The run ends while the subscription is down (its announcement is lost): once the
    subscription is back, each waiter re-reads its run once."""
    table, channel = Table(r="running", s="running"), Channel()
    src = push(table, channel)
    waiters = [asyncio.create_task(src.wait(rid, 10)) for rid in ("r", "s")]
    await until(lambda: len(table.reads) == 2)
    table.status["r"] = "completed"  # announced to nobody
    channel.drop()
    await asyncio.wait_for(waiters[0], 1)
    await until(lambda: len(table.reads) == 4)
    await asyncio.sleep(0.1)
    assert sorted(map(tuple, table.reads)) == [("r",), ("r",), ("s",), ("s",)]
    assert channel.sessions == 2
    assert not waiters[1].done()
    table.status["s"] = "cancelled"
    channel.announce("s")
    await asyncio.wait_for(waiters[1], 1)
    await closed(src)


async def test_push_rechecks_on_its_own_when_an_announcement_is_lost() -> None:
    table, channel = Table(r="running"), Channel()
    src = push(table, channel, recheck_every=0.05)
    waiter = asyncio.create_task(src.wait("r", 5))
    await until(lambda: len(table.reads) == 1)
    table.status["r"] = "completed"  # never announced
    await asyncio.wait_for(waiter, 1)
    assert table.reads == [["r"], ["r"]]
    await closed(src)


async def test_push_many_waiters_on_one_run_share_one_subscription() -> None:
    table, channel = Table(r="running"), Channel()
    src = push(table, channel)
    waiters = [asyncio.create_task(src.wait("r", 10)) for _ in range(5)]
    await until(lambda: src.waiting == 5 and len(table.reads) == 2 and not table.in_flight)
    assert table.reads == [["r"], ["r"]]  # the first check, then the four queued behind it
    table.status["r"] = "completed"
    channel.announce("r")
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert table.reads == [["r"]] * 4  # the five re-checks likewise
    assert channel.sessions == 1
    await closed(src)


async def test_push_forgets_waiters_that_return_time_out_fail_or_are_cancelled() -> None:
    table, channel = Table(done="completed", slow="running"), Channel()
    src = push(table, channel)
    await src.wait("done", 1)
    with pytest.raises(TimeoutError):
        await src.wait("slow", 0.02)
    with pytest.raises(KeyError):
        await src.wait("gone", 1)
    cancelled = asyncio.create_task(src.wait("slow", None))
    await until(lambda: src.waiting == 1)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert src.waiting == 0
    assert channel.active  # stays subscribed for the next wait
    await closed(src)
    assert not channel.active


async def test_push_can_unsubscribe_when_nobody_waits() -> None:
    table, channel = Table(r="running"), Channel()
    src = push(table, channel, stay_subscribed=False)
    waiter = asyncio.create_task(src.wait("r", 10))
    await until(lambda: len(table.reads) == 1)
    assert channel.active
    table.status["r"] = "completed"
    channel.announce("r")
    await asyncio.wait_for(waiter, 1)
    await until(lambda: not channel.active)
    await src.wait("r", 1)  # subscribes again
    assert channel.sessions == 2
    await closed(src)


# -- pull ----------------------------------------------------------------------------------------


def pull(table: Table, **kw: float) -> PullSource:
    """A pull source on ``table`` polling every 10 to 50 ms."""
    kw.setdefault("min_delay", 0.01)
    kw.setdefault("max_delay", 0.05)
    return PullSource(table.statuses, **kw)  # type: ignore[arg-type]


async def test_pull_returns_at_once_for_a_final_run_after_one_read() -> None:
    table = Table(r="stalled")
    src = pull(table)
    await src.wait("r", 1)
    assert table.reads == [["r"]]
    await closed(src)


async def test_pull_wakes_when_a_poll_sees_the_run_final() -> None:
    table = Table(r="running")
    src = pull(table)
    waiter = asyncio.create_task(src.wait("r", 10))
    await until(lambda: len(table.reads) >= 3)
    assert not waiter.done()
    table.status["r"] = "completed"
    await asyncio.wait_for(waiter, 1)
    assert all(ids == ["r"] for ids in table.reads)
    await closed(src)


async def test_pull_one_poll_reads_every_waiting_run_in_batches() -> None:
    table = Table(a="running", b="running", c="running")
    src = pull(table, batch=2)
    waiters = [asyncio.create_task(src.wait(rid, 10)) for rid in "abc"]
    await until(lambda: len(table.reads) >= 6)
    assert table.reads[:2] == [["a"], ["b", "c"]]  # own checks: one, then the queued two
    assert table.reads[2:6] == [["a", "b"], ["c"], ["a", "b"], ["c"]]  # then shared polls
    for rid in "abc":
        table.status[rid] = "completed"
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    await closed(src)


async def test_pull_unknown_or_deleted_run_raises_key_error() -> None:
    table = Table(r="running")
    src = pull(table)
    with pytest.raises(KeyError, match="no run 'nope'"):
        await src.wait("nope", 1)
    waiter = asyncio.create_task(src.wait("r", 10))
    await until(lambda: len(table.reads) >= 3)
    del table.status["r"]
    with pytest.raises(KeyError, match="no run 'r'"):
        await asyncio.wait_for(waiter, 1)
    await closed(src)


async def test_pull_times_out_naming_the_last_status_seen() -> None:
    table = Table(r="running")
    src = pull(table)
    waiter = asyncio.create_task(src.wait("r", 0.3))
    await until(lambda: len(table.reads) >= 2)
    table.status["r"] = "awaiting"
    with pytest.raises(TimeoutError) as err:
        await waiter
    assert str(err.value) == "run 'r' still awaiting after 0.3 s"
    await closed(src)


async def test_pull_many_waiters_on_one_run_read_it_once_per_poll() -> None:
    table = Table(r="running")
    src = pull(table)
    waiters = [asyncio.create_task(src.wait("r", 10)) for _ in range(4)]
    await until(lambda: len(table.reads) >= 6)
    assert all(ids == ["r"] for ids in table.reads[4:])
    table.status["r"] = "completed"
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    await closed(src)


async def test_pull_poller_backs_off_and_stops_when_nobody_waits() -> None:
    table = Table(r="running")
    src = pull(table, min_delay=0.01, max_delay=0.05)
    waiter = asyncio.create_task(src.wait("r", 0.6))
    with pytest.raises(TimeoutError):
        await waiter
    gaps = [b - a for a, b in zip(table.read_at[1:], table.read_at[2:], strict=False)]
    assert len(table.reads) <= 20  # 10 ms growing by half to 50 ms: no busy polling
    assert gaps[-1] >= 0.045
    n = len(table.reads)
    await asyncio.sleep(0.2)
    assert len(table.reads) == n  # the poller stopped with its last waiter
    await closed(src)


async def test_pull_a_failed_read_is_retried_at_the_next_poll() -> None:
    table = Table(r="running")
    src = pull(table)
    waiter = asyncio.create_task(src.wait("r", 10))
    await until(lambda: len(table.reads) == 1)
    table.fail_next = 2
    table.status["r"] = "completed"
    await asyncio.wait_for(waiter, 1)
    assert len(table.reads) == 4  # own check, two failed polls, the poll that saw it
    await closed(src)


async def test_pull_new_waiter_is_polled_soon_even_when_the_poller_backed_off() -> None:
    table = Table(old="running", new="running")
    src = pull(table, min_delay=0.05, max_delay=5.0)
    old = asyncio.create_task(src.wait("old", 30))
    await asyncio.sleep(1.2)  # the poller's pause grew to more than half a second
    n = len(table.reads)
    await until(lambda: len(table.reads) > n, 3)  # it just polled: a long pause begins
    new = asyncio.create_task(src.wait("new", 30))
    await until(lambda: table.reads[-1] == ["new"])
    table.status["new"] = "completed"
    t0 = time.monotonic()
    await asyncio.wait_for(new, 2)
    assert time.monotonic() - t0 < 0.3
    old.cancel()
    with pytest.raises(asyncio.CancelledError):
        await old
    await closed(src)


async def test_one_by_one_reads_each_run() -> None:
    seen: list[str] = []

    async def read(rid: str) -> str | None:
        seen.append(rid)
        return {"a": "running"}.get(rid)

    assert await one_by_one(read)(["a", "b"]) == {"a": "running", "b": None}
    assert seen == ["a", "b"]


@pytest.mark.parametrize("kind", ["push", "pull"])
async def test_thousands_of_waiters_at_once_make_one_read_at_a_time(kind: str) -> None:
    """2,000 waits begun together (``gather`` over ``result()``): the first reads its run
    alone, the others queue meanwhile and are read together, READ_CHUNK runs per read, never
    two reads at once (one request per waiter exhausted a client's Redis connection pool at
    100 BullMQ runs); every waiter still gets its own answer."""
    ids = [f"r{i}" for i in range(2000)]
    table = Table(**dict.fromkeys(ids, "completed"))
    del table.status["r7"]  # no such run: that waiter alone raises
    # (the poller's first round would come after a minute: only the waiters' own reads)
    src = push(table, Channel()) if kind == "push" else pull(table, min_delay=60, max_delay=60)
    got = await asyncio.gather(*(src.wait(rid, 5) for rid in ids), return_exceptions=True)
    assert [i for i, g in enumerate(got) if g is not None] == [7]
    assert isinstance(got[7], KeyError)
    assert [len(r) for r in table.reads] == [1, READ_CHUNK, READ_CHUNK, READ_CHUNK, 499]
    assert [rid for r in table.reads for rid in r] == ids
    assert table.most_in_flight == 1
    await closed(src)


async def test_a_lone_waiter_reads_directly() -> None:
    """One wait at a time: one read of its own run each, no queue, no reading task."""
    table = Table(a="completed", b="completed")
    src = push(table, Channel())
    await src.wait("a", 5)
    await src.wait("b", 5)
    assert table.reads == [["a"], ["b"]]
    assert src._drainer is None
    await closed(src)


@pytest.mark.parametrize("failures", [1, 2])
async def test_a_failed_read_fails_exactly_its_waiters(failures: int) -> None:
    """A read that raises reaches each waiter it was for, and only them (a run's status is
    never made up): the first read failing fails its waiter alone and the queue behind it is
    still read; both failing fail all three. The source reads normally afterwards."""
    table = Table(a="completed", b="completed", c="completed")
    src = push(table, Channel())
    table.gate = asyncio.Event()
    lead = asyncio.create_task(src.wait("a", 5))
    await until(lambda: table.in_flight == 1)
    queued = [asyncio.create_task(src.wait(rid, 5)) for rid in "bc"]
    await until(lambda: src.waiting == 3)
    table.fail_next = failures
    table.gate.set()
    got = await asyncio.gather(lead, *queued, return_exceptions=True)
    expected = ["ConnectionError"] + ["ConnectionError" if failures == 2 else "NoneType"] * 2
    assert [type(g).__name__ for g in got] == expected
    assert table.reads == [["a"], ["b", "c"]]
    assert await src.wait("b", 5) is None
    await closed(src)


async def test_a_cancelled_reader_still_hands_the_queue_on() -> None:
    """The waiter whose read is in flight is cancelled: the waiters queued behind it are
    read anyway, and a waiter cancelled in the queue does not disturb the others."""
    table = Table(a="running", b="completed", c="completed")
    src = push(table, Channel())
    table.gate = asyncio.Event()
    first = asyncio.create_task(src.wait("a", 5))
    await until(lambda: table.in_flight == 1)
    second = asyncio.create_task(src.wait("b", 5))
    third = asyncio.create_task(src.wait("c", 5))
    await until(lambda: src.waiting == 3)
    first.cancel()
    third.cancel()
    table.gate.set()
    await asyncio.wait_for(second, 1)
    assert first.cancelled() and third.cancelled()
    assert table.reads == [["a"], ["b", "c"]]
    assert src._drainer is None
    await closed(src)
