"""The consume loop: a consumer group member that runs many jobs of each partition at once.

``confluent_kafka.Consumer`` is blocking and not meant for concurrent calls, so every call on
it (``consume``, ``commit``, ``pause``/``resume``, ``close``, and the rebalance callbacks it
runs) happens in ONE dedicated thread; the event loop only hands it work. Per poll step the
thread applies pause/resume, commits the positions that advanced (:mod:`.window`), and
consumes a batch. Each message becomes an asyncio task:

1. a delayed message (``fc-due`` header) is held until due, at most ``max_hold`` seconds
   (a longer wait is re-produced to the delay topic by ``hop``);
2. it waits for one of ``concurrency`` slots and is handled (``deliver``: the engine decides
   and the adapter settles, marking the record done);
3. a done record leaves its window; a handling that died unsettled (a crash the worker
   survived) is handed out again after ``redelivery_timeout`` (Kafka has no visibility
   timeout: this stands in for one); an abandoned one (shutdown) stays uncommitted for the
   partition's next owner.

Rebalances: on revoke, tasks of the revoked partitions that have not started are dropped,
running ones get ``revoke_timeout`` seconds to finish, and the positions are committed
synchronously before the partitions move. A lost assignment commits nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from flowcraft.distributed import SimulatedCrash

from .topics import DUE_HEADER, Topics, header_map
from .window import Record, TopicPartitionKey, Windows

log = logging.getLogger("flowcraft.kafka")

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "session.timeout.ms": 10000,
    "heartbeat.interval.ms": 1000,
    "max.poll.interval.ms": 300000,
}
"""Consumer settings every worker uses unless the caller overrides them (offsets are committed
by the worker only, never automatically)."""


class JobConsumer:
    """One consumer group member feeding ``deliver`` (see the module docstring)."""

    def __init__(
        self,
        *,
        stopping: Callable[[], bool],
        stop_event: asyncio.Event,
        conf: Mapping[str, Any],
        topics: Topics,
        deliver: Callable[[Record], Awaitable[None]],
        hop: Callable[[Record], Awaitable[None]],
        concurrency: int,
        window: int,
        delay_window: int,
        batch: int,
        poll_timeout: float,
        revoke_timeout: float,
        redelivery_timeout: float,
        max_hold: float,
        count_delivery: Callable[[Record], Awaitable[None]] | None = None,
    ) -> None:
        self._stopping = stopping
        self._stop = stop_event
        self.conf = {**CONSUMER_DEFAULTS, **dict(conf)}
        self.topics = topics
        self._deliver = deliver
        self._hop = hop
        self._count = count_delivery
        self.concurrency = concurrency
        self.batch = batch
        self.poll_timeout = poll_timeout
        self.revoke_timeout = revoke_timeout
        self.redelivery_timeout = redelivery_timeout
        self.max_hold = max_hold
        self.windows = Windows({topics.jobs: window, topics.delay: delay_window})
        self._slots = asyncio.Semaphore(concurrency)
        self._waiting = 0  # records of the jobs topic waiting for a slot
        self._records: dict[TopicPartitionKey, set[Record]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Consumer | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "flowcraft-kafka-consumer")
        self._closing = False
        self._assigned: set[TopicPartitionKey] = set()
        """Partitions assigned and not yet revoked (kept by the rebalance callbacks)."""
        self.close_timeout = 10.0
        """Seconds :meth:`run` waits for the consumer to leave its group at the end."""
        self.rebalances = 0
        """Revocations handled (for tests and metrics)."""

    # -- the consumer thread ----------------------------------------------------------------

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._thread, fn, *args)

    def _open(self) -> None:
        c = Consumer(self.conf)
        self._consumer = c
        c.subscribe(
            self.topics.consumed,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _on_assign(self, c: Consumer, parts: list[TopicPartition]) -> None:
        got = []
        for tp in parts:
            try:
                _, high = c.get_watermark_offsets(tp, timeout=5.0, cached=False)
            except KafkaException:
                high = 1 << 62  # unknown: count every delivery
            got.append((tp.topic, tp.partition, high))
        self.windows.assign(got)
        self._assigned.update((t, p) for t, p, _ in got)
        self._settle(c, parts, assign=True)
        # librdkafka keeps a partition paused by the application across a revoke and a later
        # re-assignment, while its new window starts unpaused: it would never be resumed
        # (a worker got its partitions back after a rebalance and consumed nothing more).
        with contextlib.suppress(KafkaException):
            c.resume(parts)
        log.info("assigned %s", [f"{t}/{p}" for t, p, _ in got])

    def _settle(self, c: Consumer, parts: list[TopicPartition], *, assign: bool) -> None:
        """Apply the rebalance from inside its callback (``assign``/``unassign``, or their
        incremental forms under a cooperative strategy). Without this call confluent-kafka
        applies it itself after the callback, first asking librdkafka for the rebalance
        protocol while it holds the GIL; that request was seen never to be answered (a
        consumer closing while its group rebalanced), which froze every thread of the
        worker, signal handlers included."""
        cooperative = "cooperative" in str(self.conf.get("partition.assignment.strategy", ""))
        try:
            if cooperative:
                (c.incremental_assign if assign else c.incremental_unassign)(parts)
            elif assign:
                c.assign(parts)
            else:
                c.unassign()
        except KafkaException as exc:
            log.warning("applying the rebalance failed: %s", exc)

    def _on_revoke(self, c: Consumer, parts: list[TopicPartition]) -> None:
        self.rebalances += 1
        keys = [(tp.topic, tp.partition) for tp in parts]
        loop = self._loop
        if loop is not None and not loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(self._release(keys), loop)
            try:
                fut.result(self.revoke_timeout + 5.0)
            except Exception as exc:  # the loop is gone or too slow: commit what we know
                log.warning("releasing revoked partitions failed: %r", exc)
        offsets = [TopicPartition(t, p, o) for t, p, o in self.windows.revoke(keys)]
        if offsets and not self._closing:  # _close committed them already
            try:
                c.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.warning("commit on revoke failed: %s", exc)
        self._assigned.difference_update(keys)
        self._settle(c, parts, assign=False)
        log.info("revoked %s", [f"{t}/{p}" for t, p in keys])

    def _on_lost(self, c: Consumer, parts: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in parts]
        loop = self._loop
        if loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._release(keys, wait=False), loop)
        self.windows.revoke(keys)  # another member owns them now: commit nothing
        self._assigned.difference_update(keys)
        self._settle(c, parts, assign=False)
        log.warning("lost partitions %s", keys)

    def _step(self) -> list[Record]:
        """One poll step in the consumer thread: pause/resume, commit, consume. Each message
        is taken into its partition's window at once, in this thread: a rebalance that runs
        during the rest of the step (inside ``consume``) then revokes it with its window, and
        the loop drops it (its offset was not committed past: the next owner re-reads it)."""
        c = self._consumer
        assert c is not None
        hold_back = {self.topics.jobs} if self._waiting >= self.concurrency else set()
        pause, resume = self.windows.pause_plan(hold_back)
        if pause:
            c.pause([TopicPartition(w.topic, w.partition) for w in pause])
        if resume:
            c.resume([TopicPartition(w.topic, w.partition) for w in resume])
        offsets = [TopicPartition(t, p, o) for t, p, o in self.windows.to_commit()]
        if offsets:
            try:
                c.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:
                log.warning("commit failed: %s", exc)
        out: list[Record] = []
        # consume(n, timeout) waits until n messages or the timeout: wait for the first only.
        first = c.poll(self.poll_timeout)
        if first is None:
            return out
        self._take(first, out)
        if self.batch > 1:
            for m in c.consume(self.batch - 1, 0):
                self._take(m, out)
        return out

    def _take(self, m: Message, out: list[Record]) -> None:
        err = m.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", err)
            return
        topic, part, off = m.topic(), m.partition(), m.offset()
        if topic is None or part is None or off is None:
            return
        rec = self.windows.take(
            topic, part, off, m.key(), m.value() or b"", header_map(m.headers())
        )
        if rec is not None:
            out.append(rec)

    def _close(self) -> None:
        c = self._consumer
        if c is None:
            return
        self._consumer = None
        offsets = [TopicPartition(t, p, o) for t, p, o in self.windows.to_commit()]
        if offsets:
            with contextlib.suppress(KafkaException):
                c.commit(offsets=offsets, asynchronous=False)
        # Leave the partitions before closing: librdkafka can wait forever for an assign or
        # protocol request made from a rebalance callback that close() itself triggers
        # (librdkafka issues 4041 and 4884), and confluent-kafka makes it holding the GIL,
        # which freezes the whole process. Unsubscribing first revokes them through a normal
        # rebalance (served by poll, answered as usual); close() then has nothing to revoke.
        with contextlib.suppress(KafkaException, RuntimeError):
            c.unsubscribe()
            deadline = time.monotonic() + self.revoke_timeout + 5.0
            while self._assigned and time.monotonic() < deadline:
                c.poll(0.05)  # messages fetched now are dropped: their offsets stay uncommitted
        if self._assigned:
            log.warning("partitions %s not revoked before close", sorted(self._assigned))
        self._closing = True
        # Leaving the group. librdkafka's close can wait a long time for a rebalance that a
        # departing member no longer takes part in (seen on Tansu when two members leave at
        # once): it runs in a daemon thread and is given close_timeout seconds.
        closer = threading.Thread(target=c.close, name="flowcraft-kafka-close", daemon=True)
        closer.start()
        closer.join(self.close_timeout)
        if closer.is_alive():
            log.warning(
                "consumer close still waiting after %.1f s; left behind", self.close_timeout
            )

    # -- the event loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until the engine stops; then let running jobs finish, commit, leave the
        group. Cancelling this coroutine cancels the jobs in progress too."""
        self._loop = asyncio.get_running_loop()
        try:
            await self._call(self._open)
            errors = 0
            while not self._stopping():
                try:
                    got = await self._call(self._step)
                except KafkaException as exc:
                    errors += 1
                    wait = min(0.05 * 2 ** min(errors, 8), 5.0)
                    log.warning("consumer step failed (%s); retrying in %.2f s", exc, wait)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), wait)
                    continue
                errors = 0
                for rec in got:
                    if not rec.window.revoked:
                        self._start(rec)
            await self._drain()
        except asyncio.CancelledError:
            for recs in list(self._records.values()):
                for r in list(recs):
                    if r.task is not None:
                        r.task.cancel()
            raise
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._call(self._close))
            self._thread.shutdown(wait=False)

    async def _drain(self) -> None:
        """Shutdown: drop what has not started, wait for running jobs."""
        tasks = []
        for recs in self._records.values():
            for r in recs:
                if r.task is None:
                    continue
                if r.running:
                    tasks.append(r.task)
                else:
                    r.task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _release(self, keys: list[TopicPartitionKey], wait: bool = True) -> None:
        """Revocation on the loop: cancel the revoked partitions' jobs that have not started,
        wait up to ``revoke_timeout`` for the running ones."""
        running = []
        for k in keys:
            for r in self._records.pop(k, set()):
                if r.task is None or r.task.done():
                    continue
                if r.running and wait:
                    running.append(r.task)
                else:
                    r.task.cancel()
        if running:
            _, pending = await asyncio.wait(running, timeout=self.revoke_timeout)
            if pending:
                log.warning("%d jobs still running after revocation; released", len(pending))

    def _start(self, rec: Record) -> None:
        self._records.setdefault(rec.window.key, set()).add(rec)
        rec.task = asyncio.create_task(self._run(rec), name=f"flowcraft-kafka {rec!r}")

    async def _run(self, rec: Record) -> None:
        counted_wait = False
        try:
            due = rec.headers.get(DUE_HEADER)
            if due is not None and not await self._hold(rec, due):
                return
            if rec.suspect and self._count is not None:
                await self._count(rec)
            if rec.topic == self.topics.jobs:
                self._waiting += 1
                counted_wait = True
            async with self._slots:
                if counted_wait:
                    self._waiting -= 1
                    counted_wait = False
                rec.running = True
                try:
                    await self._deliver(rec)
                except SimulatedCrash as exc:
                    log.warning("handling of %r died unsettled: %r", rec, exc)
                finally:
                    rec.running = False
        except asyncio.CancelledError:
            if not rec.done:
                return  # revoked or shutting down: the partition's next owner redelivers it
            raise
        except Exception:
            log.exception("handling %r failed outside the engine", rec)
        finally:
            if counted_wait:
                self._waiting -= 1
            if rec.done:
                self.windows.finish(rec)
                self._records.get(rec.window.key, set()).discard(rec)
        if not rec.done and not self._stopping() and not rec.window.revoked:
            rec.task = asyncio.create_task(self._redeliver_later(rec))

    async def _redeliver_later(self, rec: Record) -> None:
        """A handling died unsettled: hand the message out again after the timeout."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self.redelivery_timeout)
        if self._stopping() or rec.window.revoked:
            return
        rec.local_redeliveries += 1
        await self._run(rec)

    async def _hold(self, rec: Record, due_text: str) -> bool:
        """Wait until a delayed message is due; False when it was re-produced instead (too
        far away) or the worker stopped meanwhile."""
        try:
            due = int(due_text) / 1000.0
        except ValueError:
            return True  # a malformed header: handle now (the engine rejects bad bodies)
        remaining = due - time.time()
        if remaining > self.max_hold:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.max_hold)
            if self._stopping():
                return False
            await self._hop(rec)
            return False
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), remaining)
            if self._stopping():
                return False
        return True


__all__ = ["CONSUMER_DEFAULTS", "JobConsumer"]
