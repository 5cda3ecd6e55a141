"""BullMQAdapter: Flowcraft workers and clients on a BullMQ queue, with run state in Redis.

The queue is a BullMQ ``Queue``/``Worker`` pair; run contexts, leases and the active-run index
are the shared Redis stores of :mod:`flowcraft.redis`. All orchestration (routing, joins,
exactly-once commits, leases, recovery) is :class:`~flowcraft.distributed.adapter.
BaseDistributedAdapter`'s; this module only maps it onto BullMQ:

* job ids: ``fc|<run>|<blueprint>|<node>|<iteration>|<attempt>|<kind>|<requeues>[|<gen>][|t<wake>]``
  (``:``, ``|`` and ``%`` escaped). Re-enqueueing the same work while its job is still known to
  BullMQ is a no-op, but a loop iteration, a delegated attempt, a requeue, a reconcile pass
  (its own generation) or a re-armed timer always gets a new id, so deduplication never blocks
  progress or recovery (upstream bugs A1, C4).
* retries: in-process by default; with ``retry_in_process=False`` (or an overridden
  :meth:`should_retry_in_process`) each attempt is one BullMQ attempt: the job carries
  ``attempts``/``backoff`` and a failed non-final attempt makes the processor raise, so BullMQ
  itself schedules the retry with its backoff.
* deliveries: the engine decides (``attemptsStarted`` counts deliveries); the processor's
  outcome settles: return = ack, ``DelayedError`` after ``moveToDelayed`` = redeliver (no
  attempt spent), ``UnrecoverableError`` = dead letter (BullMQ's failed set, with the reason).
* crash recovery: BullMQ's job lock (renewed while the processor runs) and its stalled-job
  check redeliver the job of a worker that died; the node lease in Redis keeps a slow node from
  running twice.
* dead letters: an unparseable or invalid job, or one delivered ``delivery_policy.
  max_deliveries`` times without success, is failed in BullMQ without retry and logged.
* shutdown: :meth:`stop` closes the BullMQ worker, which waits for active jobs to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

from bullmq import Job, Queue, Worker
from bullmq.custom_errors import DelayedError, UnrecoverableError
from flowcraft.blueprint import NodeDefinition
from flowcraft.distributed import (
    BaseDistributedAdapter,
    Capabilities,
    Decision,
    Delivery,
    Disposition,
    JobHandler,
    JobPayload,
    Option,
    SimulatedCrash,
    parse_url,
)
from flowcraft.distributed.results import PushSource
from flowcraft.executor import retry_delay
from flowcraft.redis import RedisRunContext, RedisStateStore, RedisStoreStats, connect

BACKOFF_STRATEGY: Final = "flowcraft"
"""BullMQ backoff type computed by Flowcraft's own retry policy (used when a node's jitter or
``maxRetryDelay`` cap cannot be expressed by BullMQ's ``fixed``/``exponential``)."""

DEFAULT_REMOVE_ON_COMPLETE: Final[Mapping[str, int]] = {"age": 3600, "count": 100_000}
DEFAULT_REMOVE_ON_FAIL: Final[Mapping[str, int]] = {"age": 7 * 24 * 3600}

_GENERATION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "flowcraft_bullmq_generation", default=None
)
_RAISE: Final = "raise"  # Delivery.attributes: what the processor raises to settle the job
_NATIVE: Final = "native_retry"  # Delivery.attributes: the attempt BullMQ would run next


class NodeAttemptFailed(Exception):
    """Raised from the BullMQ processor when a delegated (queue-native) attempt failed and
    BullMQ should retry the job with its backoff."""


def _esc(part: str) -> str:
    return part.replace("%", "%25").replace(":", "%3A").replace("|", "%7C")


def job_id_for(
    job: JobPayload, *, generation: str | None = None, wake_ms: int | None = None
) -> str:
    """The BullMQ job id of ``job`` (see the module docstring). Never contains ``:`` (BullMQ
    rejects it) and is never an integer."""
    parts = [
        "fc",
        _esc(job.run_id),
        _esc(job.blueprint_id),
        _esc(job.node_id),
        str(job.iteration),
        str(job.attempt),
        job.kind,
        str(job.requeues),
    ]
    if generation:
        parts.append(_esc(generation))
    if wake_ms is not None:
        parts.append(f"t{wake_ms}")
    return "|".join(parts)


class BullMQAdapter(BaseDistributedAdapter):
    """A Flowcraft worker (``await adapter.start()``) or client (``start_run``/``result``/...)
    on BullMQ + Redis.

    ``url`` is a ``redis://`` / ``rediss://`` URL. ``queue_name`` and ``prefix`` name the
    BullMQ queue (keys ``<prefix>:<queue_name>:*``); the run state lives under
    ``<prefix>:state:`` (see :mod:`flowcraft.redis.store`). ``concurrency`` is the number of
    jobs one worker processes at once. ``lock_duration``/``stalled_interval`` (seconds) bound
    how long a dead worker's job waits before redelivery; ``max_stalled_count`` is how often a
    job may be recovered that way before BullMQ gives up on it (the reconciler can still
    recover the run). ``cache_runs`` is how many runs the state store remembers so that
    reloading one transfers only what changed (0 disables). ``deduplicate=False`` lets BullMQ
    generate job ids (every enqueue is a new job). ``job_options`` are merged into every job's
    options; ``worker_options`` into the BullMQ ``Worker`` options. Other keyword arguments go to
    :class:`~flowcraft.distributed.adapter.BaseDistributedAdapter`.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        queue_native_retries=True,
        deduplicates_jobs=True,
        delayed_delivery=True,
        multi_process=True,
        redelivery_on_crash=True,
        dead_letter=True,
        max_value_bytes=64 * 1024 * 1024,
        extra={"bytes_counter": True},
    )

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        queue_name: str = "flowcraft",
        prefix: str = "flowcraft",
        concurrency: int = 8,
        retry_in_process: bool = True,
        deduplicate: bool = True,
        lock_duration: float = 30.0,
        stalled_interval: float = 30.0,
        max_stalled_count: int = 10,
        retention_seconds: float | None = 7 * 24 * 3600,
        shards: int = 16,
        cache_runs: int = 256,
        job_options: Mapping[str, Any] | None = None,
        worker_options: Mapping[str, Any] | None = None,
        stats: RedisStoreStats | None = None,
        inline_successors: int = 64,
        **kwargs: Any,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.url = url
        self.queue_name = queue_name
        self.prefix = prefix
        self.concurrency = concurrency
        self.retry_in_process = retry_in_process
        self.deduplicate = deduplicate
        self.lock_duration = lock_duration
        self.stalled_interval = stalled_interval
        self.max_stalled_count = max_stalled_count
        self.job_options: dict[str, Any] = {
            "removeOnComplete": dict(DEFAULT_REMOVE_ON_COMPLETE),
            "removeOnFail": dict(DEFAULT_REMOVE_ON_FAIL),
            **dict(job_options or {}),
        }
        self.worker_options = dict(worker_options or {})
        self.redis = connect(url)
        self.store = RedisStateStore(
            self.redis,
            prefix=f"{prefix}:state:",
            shards=shards,
            retention_seconds=retention_seconds,
            max_value_bytes=self.capabilities.max_value_bytes,
            stats=stats,
            cache_runs=cache_runs,
        )
        kwargs.setdefault("coordination_store", self.store.coordination)
        super().__init__(inline_successors=inline_successors, **kwargs)
        self._queue: Queue | None = None
        self._worker: Worker | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._close_task: asyncio.Future[None] | None = None
        self.dead_lettered: list[tuple[str, str]] = []
        """``(job data, reason)`` of every job this adapter dead-lettered (also in BullMQ's
        failed set)."""

    # -- BaseDistributedAdapter ----------------------------------------------------------------

    async def create_context(self, run_id: str) -> RedisRunContext:
        """The run's hash in Redis."""
        return self.store.context(run_id)

    @property
    def queue(self) -> Queue:
        """The BullMQ queue jobs are added to (created on first use)."""
        if self._queue is None:
            client = connect(self.url, decode_responses=True)  # (a blocking pool)
            self._queue = Queue(self.queue_name, {"connection": client, "prefix": self.prefix})
        return self._queue

    def _job_opts(
        self, job: JobPayload, delay: float, options: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        opts: dict[str, Any] = dict(self.job_options)
        delay_ms = math.ceil(delay * 1000) if delay > 0 else 0
        if delay_ms:
            opts["delay"] = delay_ms
        if options:
            opts.update(options)
        if self.deduplicate:
            wake = int(time.time() * 1000) + delay_ms if job.kind == "timer" else None
            opts["jobId"] = job_id_for(job, generation=_GENERATION.get(), wake_ms=wake)
        return opts

    async def enqueue_job(
        self, job: JobPayload, *, delay: float = 0.0, options: Mapping[str, Any] | None = None
    ) -> None:
        """Add ``job`` to the BullMQ queue (after ``delay`` s); ``options`` are BullMQ job
        options (``attempts``/``backoff`` from :meth:`get_queue_retry_options`)."""
        await self.queue.add(job.node_id, job.to_wire(), self._job_opts(job, delay, options))

    async def enqueue_jobs(
        self, jobs: Sequence[tuple[JobPayload, Mapping[str, Any] | None]]
    ) -> None:
        """Add several jobs in one ``addBulk`` (one pipeline) instead of one request each."""
        await self.queue.addBulk(
            [
                {"name": j.node_id, "data": j.to_wire(), "opts": self._job_opts(j, 0.0, o)}
                for j, o in jobs
            ]
        )

    async def publish_final_result(self, run_id: str, result: Mapping[str, Any]) -> None:
        """Announce the final status on the run's pub/sub channel (waiting clients wake up;
        the result itself is the run's hash, readable until its retention ends)."""
        await self.store.publish_final(run_id, str(result.get("status")))

    def final_source(self) -> PushSource:
        """See BaseDistributedAdapter: the store's pub/sub announcements (no busy polling)."""
        return self.store.final_source()

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """Non-final runs from the Redis active-run index (paged, oldest progress first)."""
        return await self.store.list_active_runs(cursor, limit)

    async def reconcile(self, run_id: str) -> list[str]:
        """See BaseDistributedAdapter; jobs enqueued by this pass get a fresh generation in
        their ids, so retained (completed or failed) jobs never swallow the recovery."""
        token = _GENERATION.set(f"r{time.time_ns() // 1000:x}")
        try:
            return await super().reconcile(run_id)
        finally:
            _GENERATION.reset(token)

    # -- retries -----------------------------------------------------------------------------

    def should_retry_in_process(self, node: NodeDefinition) -> bool:
        """``retry_in_process`` (constructor option); False delegates attempts to BullMQ."""
        return self.retry_in_process

    def get_queue_retry_options(self, node: NodeDefinition) -> Mapping[str, Any] | None:
        """BullMQ ``attempts``/``backoff`` equal to the node's retry policy: BullMQ's own
        ``fixed``/``exponential`` when they express it exactly, else the ``flowcraft``
        strategy (jitter, ``maxRetryDelay`` cap)."""
        cfg = node.config
        attempts = max(int(cfg.max_retries), 1)
        opts: dict[str, Any] = {"attempts": attempts}
        if cfg.retry_delay > 0:
            delay = int(cfg.retry_delay)
            biggest = delay * (2 ** max(attempts - 2, 0)) if cfg.backoff == "exponential" else delay
            exact = not cfg.jitter and biggest <= cfg.max_retry_delay and delay == cfg.retry_delay
            kind = cfg.backoff if exact else BACKOFF_STRATEGY
            opts["backoff"] = {"type": kind, "delay": delay}
        return opts

    def _backoff(self, attempts_made: int, type_: str, err: Any, job: Any) -> int:
        """The ``flowcraft`` BullMQ backoff strategy (milliseconds)."""
        data = getattr(job, "data", None)
        if isinstance(data, Mapping):
            bp = self._blueprint(str(data.get("blueprintId")))
            node_id = str(data.get("nodeId")).split("[", 1)[0]  # batch item 'node[i]'
            with contextlib.suppress(KeyError):
                if bp is not None:
                    cfg = bp.node(node_id).config
                    return max(1, round(retry_delay(cfg, attempts_made) * 1000))
        opts = getattr(job, "opts", None) or {}
        return int((opts.get("backoff") or {}).get("delay") or 0)

    # -- worker ------------------------------------------------------------------------------

    def _worker_opts(self) -> dict[str, Any]:
        return {
            "connection": self.url,
            "prefix": self.prefix,
            "concurrency": self.concurrency,
            "autorun": False,
            "lockDuration": max(1, round(self.lock_duration * 1000)),
            "stalledInterval": max(1, round(self.stalled_interval * 1000)),
            "maxStalledCount": self.max_stalled_count,
            "settings": {"backoffStrategy": self._backoff},
            **self.worker_options,
        }

    async def process_jobs(self, handler: JobHandler) -> None:
        """Run a BullMQ ``Worker`` on the queue until :meth:`stop`; returns once every job
        it started has finished."""
        if self.stopping:
            return
        processor = functools.partial(self._on_job, handler)
        self._worker = Worker(self.queue_name, processor, self._worker_opts())
        blocking = getattr(self._worker.backend, "blocking_connection", None)
        if blocking is not None:
            # BullMQ reads the server version only on its main connection, so the blocking
            # wait for delayed jobs would round its timeout up to whole seconds: a 50 ms
            # backoff or sleep would wake up to 1 s late. Probe the blocking connection too.
            with contextlib.suppress(Exception):
                await blocking.getRedisVersion()
        try:
            await self._worker.run()
        except asyncio.CancelledError:
            # stop() cancels the worker's idle fetches; BullMQ's loop re-raises that
            # cancellation. Only a cancellation of this task itself is propagated.
            task = asyncio.current_task()
            if self._close_task is None or (task is not None and task.cancelling()):
                raise
        finally:
            await self._drain()
            if self._close_task is not None:
                await asyncio.shield(self._close_task)

    async def _drain(self) -> None:
        """Wait for the jobs being processed, then for BullMQ to ack them (bounded by the
        lock duration: an ack that cannot happen leaves the job to the stalled check)."""
        while self._inflight:
            await asyncio.wait(set(self._inflight))
        w = self._worker
        limit = time.monotonic() + self.lock_duration
        # BullMQ signals no "job acked" event we could await; shutdown only, so poll.
        while w is not None and w.jobs and time.monotonic() < limit:  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    async def _on_job(self, handler: JobHandler, bjob: Job, token: str) -> None:
        """BullMQ's processor: the engine decides, :meth:`settle` leaves what to raise."""
        attempts = int((bjob.opts or {}).get("attempts") or 0)
        made = int(bjob.attemptsMade or 0) if attempts > 1 else 0  # queue-native attempts
        body = bjob.data if isinstance(bjob.data, str | bytes | dict) else json.dumps(bjob.data)
        delivery = Delivery(body, (bjob, token), max(int(bjob.attemptsStarted or 0), 1), made)

        async def run(job: JobPayload, d: Delivery | None) -> None:
            if attempts > 1:  # BullMQ redelivers the same data for each of its attempts
                last = made + 1 >= attempts
                job = job.model_copy(
                    update={"attempt": job.attempt + made, "is_last_attempt": last}
                )
                if not last:  # BullMQ itself retries a failure of this attempt
                    delivery.attributes[_NATIVE] = job.attempt + 1
            await handler(job, d)

        task = asyncio.current_task()
        assert task is not None  # BullMQ runs each processor in a task
        self._inflight.add(task)
        try:
            await self.process_delivery(delivery, run)
        except SimulatedCrash:
            # A dead process completes nothing: leave the job active; once its lock expires
            # BullMQ's stalled-job check hands it to a worker again.
            raise DelayedError() from None
        except asyncio.CancelledError:  # given back on shutdown: hide it from BullMQ's loop
            if not delivery.settled or (self._worker is not None and self._worker.forceClosing):
                raise
        finally:
            self._inflight.discard(task)
        if _RAISE in delivery.attributes:
            raise delivery.attributes[_RAISE]

    async def settle(self, delivery: Delivery, decision: Decision) -> None:
        """A failed attempt of a queue-delegated retry with BullMQ attempts left is retried by
        BullMQ with its backoff (:class:`NodeAttemptFailed`); the rest as in the base class."""
        nxt = decision.job  # the next attempt, not a requeue:
        native = nxt is not None and nxt.attempt == delivery.attributes.get(_NATIVE)
        if decision.disposition is Disposition.RETRY and native:
            delivery.attributes[_RAISE] = NodeAttemptFailed(decision.reason)
            delivery.settled = True
        else:
            await super().settle(delivery, decision)

    async def ack(self, delivery: Delivery) -> None:
        """Nothing to do: BullMQ completes the job when the processor returns."""

    async def redeliver(self, delivery: Delivery, delay: float) -> None:
        """Delay the job by ``delay`` s without spending one of its BullMQ attempts."""
        bjob, token = delivery.message
        await bjob.moveToDelayed(int((time.time() + delay) * 1000), token)
        delivery.attributes[_RAISE] = DelayedError()

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Record the job in :attr:`dead_lettered` and fail it in BullMQ without retry."""
        body = delivery.body
        text = body if isinstance(body, str) else json.dumps(body, default=str)
        self.dead_lettered.append((text, reason))
        delivery.attributes[_RAISE] = UnrecoverableError(reason)

    async def dead_letters(self) -> list[tuple[str, str]]:
        """``(job data as text, reason)`` of every job in the queue's failed set (dead
        letters and jobs that exhausted their BullMQ attempts)."""
        out = []
        for j in await self.queue.getJobs(["failed"]):
            d = j.data
            out.append((d if isinstance(d, str) else json.dumps(d), str(j.failedReason or "")))
        return out

    async def stop(self) -> None:
        """Stop taking jobs; jobs in progress finish first, then the worker's connections
        close. (BullMQ's own graceful ``close()`` can wait forever on an idle fetch when
        ``concurrency > 1``, so the idle fetches are cancelled once the active jobs are done;
        the close runs in its own task, so cancelling the caller cannot interrupt it.)"""
        await super().stop()
        if self._worker is None:
            return
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close_worker(self._worker))
        await asyncio.shield(self._close_task)

    async def _close_worker(self, w: Worker) -> None:
        w.closing = True  # the worker loop starts no new fetch
        if w.waiting is not None:
            w.waiting.cancel()
        await self._drain()
        await w.close(force=True)

    async def aclose(self) -> None:
        """Stop (if working) and close every Redis connection of this adapter."""
        await self.stop()
        if self._queue is not None:
            with contextlib.suppress(Exception):
                await self._queue.close()
            self._queue = None
        await self.store.aclose()
        await self.redis.aclose()


_URL_OPTIONS: Final[Mapping[str, Option]] = {
    "queue": Option("queue_name"),
    "prefix": Option("prefix"),
    "concurrency": Option("concurrency", int),
    "shards": Option("shards", int),
    "inline": Option("inline_successors", int),
}
_SCHEMES: Final = {"redis": "redis", "rediss": "rediss", "bullmq": "redis"}


def from_url(url: str, **kwargs: Any) -> BullMQAdapter:
    """Entry point of the ``redis``/``rediss``/``bullmq`` backend schemes:
    ``redis://host:port/db?queue=NAME&prefix=PREFIX&concurrency=N&shards=N&inline=N``
    (``bullmq://`` is an alias of ``redis://``; other query items go to the Redis client).
    Query options override keyword arguments."""
    u = parse_url(url, _URL_OPTIONS, schemes=_SCHEMES, kwargs=kwargs)
    return BullMQAdapter(u.url, **u.kwargs)


__all__ = [
    "BACKOFF_STRATEGY",
    "BullMQAdapter",
    "NodeAttemptFailed",
    "from_url",
    "job_id_for",
]
