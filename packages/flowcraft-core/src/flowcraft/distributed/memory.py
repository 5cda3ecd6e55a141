"""In-memory backend: a queue with visibility timeouts, a versioned run store and a
coordination store, all in one asyncio process. Workers are adapters sharing one
:class:`MemoryBroker`. Used for tests and as the reference for the conformance suite.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..context import PatchOperation
from ..state import FINAL_STATUSES
from .adapter import BaseDistributedAdapter
from .codec import decode_value, encode_value
from .consumer import PollingConsumer
from .contracts import Capabilities, JobPayload, Snapshot
from .delivery import Delivery, JobHandler
from .results import PushSource

log = logging.getLogger("flowcraft.memory")


class InMemoryCoordinationStore:
    """:class:`~flowcraft.distributed.contracts.CoordinationStore` in a dict; expiry is checked
    on every read, so an expired key is absent."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[str, float]] = {}

    def _live(self, key: str) -> tuple[str, float] | None:
        item = self._data.get(key)
        if item is not None and item[1] <= time.monotonic():
            del self._data[key]
            return None
        return item

    async def increment(self, key: str, ttl_seconds: float) -> int:
        """See CoordinationStore."""
        item = self._live(key)
        n = int(item[0]) + 1 if item else 1
        self._data[key] = (str(n), time.monotonic() + ttl_seconds)
        return n

    async def set_if_not_exist(self, key: str, value: str, ttl_seconds: float) -> bool:
        """See CoordinationStore."""
        if self._live(key) is not None:
            return False
        self._data[key] = (value, time.monotonic() + ttl_seconds)
        return True

    async def extend_ttl(self, key: str, ttl_seconds: float) -> bool:
        """See CoordinationStore."""
        item = self._live(key)
        if item is None:
            return False
        self._data[key] = (item[0], time.monotonic() + ttl_seconds)
        return True

    async def delete(self, key: str) -> None:
        """See CoordinationStore."""
        self._data.pop(key, None)

    async def get(self, key: str) -> str | None:
        """See CoordinationStore."""
        item = self._live(key)
        return item[0] if item else None

    async def compare_and_delete(self, key: str, value: str) -> bool:
        """Delete ``key`` only when it holds ``value`` (atomic here)."""
        item = self._live(key)
        if item is not None and item[0] == value:
            del self._data[key]
            return True
        return False


@dataclass
class _Message:
    id: int
    body: str
    available_at: float
    receive_count: int = 0
    invisible_until: float = 0.0


@dataclass
class MemoryBroker:
    """The shared backend of in-memory workers: queue, run store, results and coordination.

    Values are stored as JSON text (the same codec as every real backend), so a value that
    could not survive a real store fails here too.
    """

    visibility_timeout: float = 30.0
    max_value_bytes: int | None = None
    coordination: InMemoryCoordinationStore = field(default_factory=InMemoryCoordinationStore)
    runs: dict[str, tuple[dict[str, str], int]] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    """Each run's status as the engine committed it (the run index)."""
    dead_letters: list[tuple[str, str]] = field(default_factory=list)
    commits: int = 0
    bytes_written: int = 0
    _messages: dict[int, _Message] = field(default_factory=dict)
    _ready: list[tuple[float, int]] = field(default_factory=list)
    _ids: Any = field(default_factory=itertools.count)
    _cond: asyncio.Condition | None = None
    _final_listeners: list[Callable[[str], None]] = field(default_factory=list)
    _final_source: PushSource | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    # queue
    async def put(self, body: str, delay: float = 0.0) -> None:
        """Enqueue a message deliverable after ``delay`` seconds."""
        mid = next(self._ids)
        at = time.monotonic() + max(delay, 0.0)
        self._messages[mid] = _Message(mid, body, at)
        heapq.heappush(self._ready, (at, mid))
        cond = self._condition()
        async with cond:
            cond.notify_all()

    async def receive(self, timeout: float) -> _Message | None:
        """Take the next visible message (it becomes invisible for the visibility timeout)."""
        deadline = time.monotonic() + timeout
        cond = self._condition()
        while True:
            now = time.monotonic()
            while self._ready and self._ready[0][0] <= now:
                at, mid = heapq.heappop(self._ready)
                m = self._messages.get(mid)
                if m is None or m.available_at != at:
                    continue
                m.receive_count += 1
                m.invisible_until = now + self.visibility_timeout
                m.available_at = m.invisible_until
                heapq.heappush(self._ready, (m.available_at, mid))
                return m
            if now >= deadline:
                return None
            wait = deadline - now
            if self._ready:
                wait = min(wait, max(self._ready[0][0] - now, 0.0))
            async with cond:
                try:
                    await asyncio.wait_for(cond.wait(), timeout=max(wait, 0.0005))
                except TimeoutError:
                    pass

    def ack(self, message: _Message) -> None:
        """Delete a delivered message."""
        self._messages.pop(message.id, None)

    async def nack(self, message: _Message, delay: float = 0.0) -> None:
        """Make a delivered message visible again after ``delay``."""
        m = self._messages.get(message.id)
        if m is None:
            return
        m.available_at = time.monotonic() + delay
        heapq.heappush(self._ready, (m.available_at, m.id))
        cond = self._condition()
        async with cond:
            cond.notify_all()

    def extend(self, message_id: int, seconds: float) -> None:
        """Keep a delivered message invisible for ``seconds`` more."""
        m = self._messages.get(message_id)
        if m is not None:
            m.available_at = time.monotonic() + seconds
            heapq.heappush(self._ready, (m.available_at, m.id))

    def pending(self) -> int:
        """Messages not yet acked (queued or in flight)."""
        return len(self._messages)

    # final results
    def announce_final(self, run_id: str) -> None:
        """Tell every subscribed waiter that ``run_id`` became final."""
        for notify in list(self._final_listeners):
            notify(run_id)

    async def listen_final(
        self, subscribed: Callable[[], None], notify: Callable[[str], None]
    ) -> None:
        """A :data:`~flowcraft.distributed.results.Listener`: ``notify`` hears every run
        :meth:`announce_final` announces, until cancelled."""
        self._final_listeners.append(notify)
        try:
            subscribed()
            await asyncio.get_running_loop().create_future()
        finally:
            self._final_listeners.remove(notify)

    def final_source(self) -> PushSource:
        """The waiting for final runs of every adapter on this broker (subscribed only while
        someone waits)."""
        if self._final_source is None:

            async def statuses(run_ids: Sequence[str]) -> dict[str, str | None]:
                return {rid: self.statuses.get(rid) for rid in run_ids}

            self._final_source = PushSource(statuses, self.listen_final, stay_subscribed=False)
        return self._final_source


class MemoryRunContext:
    """A run's record in a :class:`MemoryBroker` (DistributedContext)."""

    __slots__ = ("_broker", "_run_id")

    def __init__(self, broker: MemoryBroker, run_id: str) -> None:
        self._broker = broker
        self._run_id = run_id

    def _rec(self) -> tuple[dict[str, str], int]:
        return self._broker.runs.get(self._run_id, ({}, 0))

    async def get(self, key: str, default: Any = None) -> Any:
        """See AsyncContext."""
        data, _ = self._rec()
        return decode_value(data[key]) if key in data else default

    async def set(self, key: str, value: Any) -> None:
        """See AsyncContext (bumps the version)."""
        await self.patch([PatchOperation("set", key, value)])

    async def has(self, key: str) -> bool:
        """See AsyncContext."""
        return key in self._rec()[0]

    async def delete(self, key: str) -> bool:
        """See AsyncContext."""
        had = await self.has(key)
        await self.patch([PatchOperation("delete", key)])
        return had

    async def to_dict(self) -> dict[str, Any]:
        """See AsyncContext."""
        return {k: decode_value(v) for k, v in self._rec()[0].items()}

    async def patch(self, ops: Iterable[PatchOperation]) -> None:
        """See AsyncContext."""
        _, version = self._rec()
        await self.commit(list(ops), version)

    async def load(self) -> Snapshot:
        """See DistributedContext."""
        data, version = self._rec()
        return Snapshot({k: decode_value(v) for k, v in data.items()}, version)

    async def commit(
        self,
        ops: Sequence[PatchOperation],
        expected_version: int,
        status: str | None = None,
    ) -> bool:
        """See DistributedContext."""
        b = self._broker
        data, version = self._rec()
        if version != expected_version:
            return False
        encoded = [
            (op, encode_value(op.key, op.value, b.max_value_bytes) if op.op == "set" else "")
            for op in ops
        ]
        new = dict(data)
        for op, text in encoded:
            if op.op == "set":
                new[op.key] = text
                b.bytes_written += len(op.key) + len(text)
            else:
                new.pop(op.key, None)
        b.runs[self._run_id] = (new, version + 1)
        if status is not None:
            b.statuses[self._run_id] = status
        b.commits += 1
        return True


class InMemoryAdapter(BaseDistributedAdapter):
    """A worker of the in-memory backend. Create several on one broker to get several workers."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        delayed_delivery=True,
        redelivery_on_crash=True,
        dead_letter=True,
        extra={"bytes_counter": True},  # MemoryBroker.commits / .bytes_written
    )

    def __init__(
        self,
        broker: MemoryBroker,
        *,
        concurrency: int = 8,
        poll_timeout: float = 0.05,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("coordination_store", broker.coordination)
        super().__init__(**kwargs)
        self.broker = broker
        self.concurrency = concurrency
        self.poll_timeout = poll_timeout

    async def create_context(self, run_id: str) -> MemoryRunContext:
        """See BaseDistributedAdapter."""
        return MemoryRunContext(self.broker, run_id)

    async def enqueue_job(
        self, job: JobPayload, *, delay: float = 0.0, options: Mapping[str, Any] | None = None
    ) -> None:
        """See BaseDistributedAdapter."""
        await self.broker.put(job.to_json(), delay)

    async def publish_final_result(self, run_id: str, result: Mapping[str, Any]) -> None:
        """See BaseDistributedAdapter: stored and signalled to waiting clients."""
        self.broker.results[run_id] = dict(result)
        self.broker.announce_final(run_id)

    def final_source(self) -> PushSource:
        """See BaseDistributedAdapter: the broker announces published results."""
        return self.broker.final_source()

    async def extend_delivery(self, delivery: Delivery) -> None:
        """Keep the message invisible while its nodes run."""
        self.broker.extend(delivery.message.id, self.broker.visibility_timeout)

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """Run ids in sorted order after ``cursor`` whose status is not final."""
        ids = sorted(rid for rid, st in self.broker.statuses.items() if st not in FINAL_STATUSES)
        if cursor is not None:
            ids = [i for i in ids if i > cursor]
        page = ids[:limit]
        return page, (page[-1] if len(ids) > limit else None)

    async def process_jobs(self, handler: JobHandler) -> None:
        """Receive and handle jobs until :meth:`stop`; up to ``concurrency`` at once."""
        await PollingConsumer(
            self, self._receive, concurrency=self.concurrency, handler=handler
        ).run()

    async def _receive(self, n: int) -> list[Delivery]:
        m = await self.broker.receive(self.poll_timeout)
        msgs = []
        while m is not None:
            msgs.append(Delivery(m.body, m, m.receive_count))
            m = await self.broker.receive(0) if len(msgs) < n else None
        return msgs

    async def ack(self, delivery: Delivery) -> None:
        """Delete the message."""
        self.broker.ack(delivery.message)

    async def redeliver(self, delivery: Delivery, delay: float) -> None:
        """Make the message visible again after ``delay``."""
        await self.broker.nack(delivery.message, delay)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Record ``(body, reason)`` in :attr:`MemoryBroker.dead_letters`; delete the message."""
        body = delivery.body
        self.broker.dead_letters.append((body if isinstance(body, str) else str(body), reason))
        self.broker.ack(delivery.message)
