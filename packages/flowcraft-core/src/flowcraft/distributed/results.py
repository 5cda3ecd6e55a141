"""Waiting for runs to become final, written once for every backend.

:meth:`BaseDistributedAdapter.wait_for_final <flowcraft.distributed.base.EngineBase.
wait_for_final>` asks the adapter for its :class:`FinalSource` (``final_source()``) and calls
:meth:`FinalSource.wait`. The source owns everything about waiting: the "already final?" check,
:class:`KeyError` for an unknown run, the timeout (``TimeoutError("run 'x' still running after
5 s")``), waking, re-checking, and forgetting waiters that are done. A backend supplies only its
primitive, in one of two shapes:

* :class:`PushSource`: the backend announces final runs (Redis pub/sub, PostgreSQL
  ``LISTEN``/``NOTIFY``, the in-memory broker). The adapter supplies a :data:`StatusReader` and
  a :data:`Listener` ("subscribe, then call ``notify(run_id)``"). One subscription serves every
  waiter of the source; a waiter re-reads its run's status only when its run was announced,
  when the subscription was replaced after a loss, or every ``recheck_every`` seconds.
* :class:`PullSource`: the backend can only be asked (SQLite's ``fc_runs``, DynamoDB's
  ``BatchGetItem``). The adapter supplies a :data:`StatusReader` for many runs; one poller reads
  the statuses of every waiting run per round, backing off while nothing ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence

from ..state import FINAL_STATUSES

log = logging.getLogger("flowcraft.distributed")

_WATCHDOG = 1.0
"""Seconds after which a :class:`PullSource` waiter makes sure the poller still runs."""

READ_CHUNK = 500
"""Most runs per :data:`StatusReader` call when queued status reads are taken together."""

StatusReader = Callable[[Sequence[str]], Awaitable[Mapping[str, str | None]]]
"""Reads the current status of runs: ``{run_id: status}``, with ``None`` (or no entry) for a
run that does not exist."""

Listener = Callable[[Callable[[], None], Callable[[str], None]], Awaitable[None]]
"""One subscription session of a :class:`PushSource`: ``listen(subscribed, notify)`` subscribes,
calls ``subscribed()`` once announcements can no longer be missed, then calls ``notify(run_id)``
for every run announced final. It raises (or returns) when the subscription is lost."""


def one_by_one(read: Callable[[str], Awaitable[str | None]]) -> StatusReader:
    """A :data:`StatusReader` calling ``read(run_id)`` (a status, or None for no such run) once
    per run, for stores without a read of many runs."""

    async def statuses(run_ids: Sequence[str]) -> dict[str, str | None]:
        return {rid: await read(rid) for rid in run_ids}

    return statuses


class _Waiter:
    """One call of :meth:`FinalSource.wait`: woken through ``event``; ``status`` is the last
    status a :class:`PullSource` poll saw (``polled`` once it saw one; push sources read the
    status themselves)."""

    __slots__ = ("event", "polled", "status")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.status: str | None = None
        self.polled = False


class FinalSource(ABC):
    """Where an adapter's clients wait for runs to become final (see the module docstring).

    One source serves every waiter of an adapter or store (its subscription or poller is
    shared); the adapter's ``final_source()`` returns the same object on every call and closes
    it with :meth:`aclose`.
    """

    def __init__(self, statuses: StatusReader) -> None:
        self._statuses = statuses
        self._waiting: dict[str, list[_Waiter]] = {}
        self._task: asyncio.Task[None] | None = None
        self._reading: asyncio.AbstractEventLoop | None = None  # a read is in flight there
        self._queued: dict[str, list[asyncio.Future[str | None]]] = {}
        self._drainer: asyncio.Task[None] | None = None

    # -- the waiting, for every kind of source -----------------------------------------------

    async def wait(self, run_id: str, timeout: float | None) -> None:
        """Return once ``run_id`` is final. :class:`KeyError` when there is no such run;
        :class:`TimeoutError` naming its last status when it is still not final after
        ``timeout`` seconds (``None``: wait as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        w = _Waiter()
        self._waiting.setdefault(run_id, []).append(w)
        try:
            await self._armed(deadline)
            w.event.clear()  # the check below sees whatever a wake-up so far announced
            status = await self._read(run_id)
            while True:
                if status is None:
                    raise KeyError(f"no run {run_id!r}")
                if status in FINAL_STATUSES:
                    return
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"run {run_id!r} still {status} after {timeout} s")
                await self._sleep(w, left)
                w.event.clear()  # before the re-check: a wake-up during it is kept
                status = await self._recheck(run_id, w, status)
        finally:
            self._forget(run_id, w)

    def notify(self, run_id: str) -> None:
        """Wake the waiters of ``run_id`` so they re-check its status."""
        for w in self._waiting.get(run_id, ()):
            w.event.set()

    def wake_all(self) -> None:
        """Wake every waiter so each re-checks its run's status."""
        for waiters in self._waiting.values():
            for w in waiters:
                w.event.set()

    @property
    def waiting(self) -> int:
        """How many waits are in progress."""
        return sum(len(ws) for ws in self._waiting.values())

    async def aclose(self) -> None:
        """Stop the subscription or poller (waits in progress fall back to re-checking on
        their own; a later wait starts it again)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- what the kinds of source differ in --------------------------------------------------

    @abstractmethod
    async def _armed(self, deadline: float | None) -> None:
        """Make sure wake-ups will come for the waiters just registered (start the
        subscription or poller)."""

    @abstractmethod
    async def _sleep(self, w: _Waiter, left: float | None) -> None:
        """Wait until ``w`` is woken or a re-check is due; ``left``: seconds until the
        caller's deadline (None: no deadline)."""

    @abstractmethod
    async def _recheck(self, run_id: str, w: _Waiter, last: str | None) -> str | None:
        """The run's status after :meth:`_sleep` (``last``: the status known before)."""

    async def _read(self, run_id: str) -> str | None:
        """``run_id``'s status, with at most one :data:`StatusReader` call in flight per
        source. A read asked for while another is in flight is queued, and the queue is read
        together (up to :data:`READ_CHUNK` runs per call) once that one returns: a client
        awaiting 10,000 results at once makes a few reads, not 10,000 concurrent requests
        that exhaust its connection pool, and a lone waiter reads directly."""
        loop = asyncio.get_running_loop()
        if self._reading is loop:
            fut: asyncio.Future[str | None] = loop.create_future()
            self._queued.setdefault(run_id, []).append(fut)
            return await fut
        self._reading, self._queued = loop, {}  # (a read left on a closed loop is void)
        try:
            return (await self._statuses([run_id])).get(run_id)
        finally:
            if self._queued:
                self._drainer = loop.create_task(self._drain(), name="flowcraft-status-reads")
            else:
                self._reading = None

    async def _drain(self) -> None:
        """Read the queued runs' statuses, :data:`READ_CHUNK` per call, until none are
        queued; a failed read raises in each of its waiters."""
        batch: dict[str, list[asyncio.Future[str | None]]] = {}
        try:
            while self._queued:
                ids = list(self._queued)[:READ_CHUNK]
                batch = {rid: self._queued.pop(rid) for rid in ids}
                try:
                    got = await self._statuses(ids)
                except Exception as exc:
                    for futs in batch.values():
                        for fut in futs:
                            if not fut.done():
                                fut.set_exception(exc)
                    continue
                for rid, futs in batch.items():
                    for fut in futs:
                        if not fut.done():  # (a waiter cancelled meanwhile)
                            fut.set_result(got.get(rid))
        finally:  # cancelled (its loop is closing): no waiter is left hanging
            for futs in (*batch.values(), *self._queued.values()):
                for fut in futs:
                    if not fut.done():
                        fut.cancel()
            self._queued, self._reading, self._drainer = {}, None, None

    def _forget(self, run_id: str, w: _Waiter) -> None:
        waiters = self._waiting.get(run_id)
        if waiters is not None:
            with contextlib.suppress(ValueError):
                waiters.remove(w)
            if not waiters:
                del self._waiting[run_id]

    def _running(self) -> bool:
        """True when the background task runs on the current event loop."""
        t = self._task
        return t is not None and not t.done() and t.get_loop() is asyncio.get_running_loop()


async def _wait_event(ev: asyncio.Event, seconds: float | None) -> bool:
    """True when ``ev`` was set within ``seconds`` (None: no limit)."""
    if seconds is None:
        await ev.wait()
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ev.wait(), seconds)
    return ev.is_set()


class PushSource(FinalSource):
    """A source whose backend announces final runs (see the module docstring).

    ``listen`` is one subscription session (:data:`Listener`). A wait first makes sure the
    subscription is up (up to ``ready_timeout`` seconds), then checks the status, so an
    announcement between the two is never missed. Announcements are hints: a woken waiter
    re-reads its run's status (one read per wake-up) and waits again when the run is not final.
    Besides, each waiter re-reads every ``recheck_every`` seconds (an announcement lost with a
    connection). A lost subscription is re-established after ``resubscribe_delay`` seconds, and
    once it is up again every waiter re-checks once. ``stay_subscribed=False`` ends the
    subscription when the last waiter leaves (for subscriptions that cost nothing to renew).
    """

    def __init__(
        self,
        statuses: StatusReader,
        listen: Listener,
        *,
        recheck_every: float = 2.0,
        ready_timeout: float = 10.0,
        resubscribe_delay: float = 0.2,
        stay_subscribed: bool = True,
    ) -> None:
        super().__init__(statuses)
        self._listen = listen
        self.recheck_every = recheck_every
        """Seconds between two status reads of a waiter that is not woken."""
        self.ready_timeout = ready_timeout
        """How long a wait waits for the subscription before checking anyway."""
        self.resubscribe_delay = resubscribe_delay
        """Pause before re-subscribing after a loss."""
        self.stay_subscribed = stay_subscribed
        """False: unsubscribe when nobody waits."""
        self._ready = asyncio.Event()

    async def _armed(self, deadline: float | None) -> None:
        if not self._running():
            self._ready = asyncio.Event()
            self._task = asyncio.create_task(self._subscription(), name="flowcraft-final")
        if self._ready.is_set():
            return
        limit = self.ready_timeout
        if deadline is not None:
            limit = max(min(limit, deadline - time.monotonic()), 0.0)
        if not await _wait_event(self._ready, limit) and limit >= self.ready_timeout:
            log.warning("final-result subscription not ready after %.1f s; checking anyway", limit)

    async def _sleep(self, w: _Waiter, left: float | None) -> None:
        wait = self.recheck_every if left is None else min(self.recheck_every, left)
        await _wait_event(w.event, wait)

    async def _recheck(self, run_id: str, w: _Waiter, last: str | None) -> str | None:
        return await self._read(run_id)

    def _forget(self, run_id: str, w: _Waiter) -> None:
        super()._forget(run_id, w)
        if not self._waiting and not self.stay_subscribed and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _subscription(self) -> None:
        ready = self._ready
        lost = False

        def subscribed() -> None:
            ready.set()
            if lost:
                self.wake_all()  # announcements may have been missed while unsubscribed

        while True:
            try:
                await self._listen(subscribed, self.notify)
                log.warning("final-result subscription ended; resubscribing")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("final-result subscription lost; resubscribing", exc_info=True)
            ready.clear()
            lost = True
            await asyncio.sleep(self.resubscribe_delay)


class PullSource(FinalSource):
    """A source whose backend can only be asked (see the module docstring).

    A wait checks its run once itself; afterwards one poller reads the statuses of all waiting
    runs, ``batch`` runs per :data:`StatusReader` call, and wakes the waiters of runs that
    ended or vanished. The pause between rounds starts at ``min_delay`` and grows by half each
    round up to ``max_delay``; it starts over when a run ended or a new wait began. A failed
    read is logged and retried next round. The poller stops when nobody waits.
    """

    def __init__(
        self,
        statuses: StatusReader,
        *,
        min_delay: float = 0.005,
        max_delay: float = 0.25,
        batch: int = 100,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        super().__init__(statuses)
        self.min_delay = min_delay
        """First pause between two polls (and the pause after a run ended)."""
        self.max_delay = max_delay
        """Longest pause between two polls."""
        self.batch = batch
        """Runs per status read."""
        self._joined = asyncio.Event()
        self._poked = False

    def poke(self) -> None:
        """Read the statuses now: the backend says a run's status changed (a doorbell).
        Harmless when nobody waits."""
        if self._running():
            self._poked = True
            self._joined.set()

    async def _armed(self, deadline: float | None) -> None:
        if self._running():
            self._joined.set()  # poll again soon: the new run is checked at min_delay
        else:
            self._joined = asyncio.Event()
            self._task = asyncio.create_task(self._poll(), name="flowcraft-final-poll")

    async def _sleep(self, w: _Waiter, left: float | None) -> None:
        if not self._running():  # closed meanwhile: start polling again
            self._joined = asyncio.Event()
            self._task = asyncio.create_task(self._poll(), name="flowcraft-final-poll")
        await _wait_event(w.event, _WATCHDOG if left is None else min(left, _WATCHDOG))

    async def _recheck(self, run_id: str, w: _Waiter, last: str | None) -> str | None:
        return w.status if w.polled else last

    async def _poll(self) -> None:
        delay = self.min_delay
        due = time.monotonic() + delay
        while self._waiting:
            left = due - time.monotonic()
            if left > 0 and await _wait_event(self._joined, left):
                self._joined.clear()
                delay = self.min_delay
                due = min(due, time.monotonic() + (0.0 if self._poked else delay))
                self._poked = False
                continue
            ended = await self._round()
            delay = self.min_delay if ended else min(delay * 1.5, self.max_delay)
            due = time.monotonic() + delay

    async def _round(self) -> bool:
        """Read every waiting run's status once; True when one of them ended or vanished."""
        ended = False
        ids = list(self._waiting)
        for i in range(0, len(ids), self.batch):
            chunk = ids[i : i + self.batch]
            try:
                got = await self._statuses(chunk)
            except Exception as exc:
                log.warning("reading run statuses failed: %s", exc)
                continue
            for rid in chunk:
                st = got.get(rid)
                done = st is None or st in FINAL_STATUSES
                ended = ended or done
                for w in self._waiting.get(rid, ()):
                    w.status = st
                    w.polled = True
                    if done:
                        w.event.set()
        return ended


__all__ = ["FinalSource", "Listener", "PullSource", "PushSource", "StatusReader", "one_by_one"]
