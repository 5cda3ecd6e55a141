"""Fault injection for any adapter built on
:class:`~flowcraft.distributed.adapter.BaseDistributedAdapter`.

A :class:`FaultInjector` holds one fault plan shared by every adapter it is installed on (all
workers and the client of a cluster), so "crash the first time node ``m`` reaches
``after_commit``" means the first time on *any* worker. It works only by wrapping public
methods of the adapter instance (``enqueue_job``) and by setting its ``fault_hook``: no
backend-specific code, so a third-party adapter gets the same faults as the in-memory one.

Faults:

* duplicate delivery: every matching job is enqueued ``times`` times;
* late / reordered delivery: duplicates (and optionally the original) get random extra delays;
* dropped enqueue: matching jobs are swallowed (only ``reconcile`` can recover them);
* crashes: :class:`~flowcraft.distributed.contracts.SimulatedCrash` is raised the first
  ``count`` times a chosen node reaches a chosen step point;
* holds: a chosen node's job stops at a step point until an event is set (a slow worker);
* store latency: every ``load``/``commit`` of the run store sleeps a random short time, which
  widens the windows between reading a run and acting on it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ...distributed.adapter import BaseDistributedAdapter
from ...distributed.contracts import JobPayload, SimulatedCrash

STEP_POINTS: Final = (
    "after_receive",
    "before_execute",
    "after_execute",
    "before_commit",
    "after_commit",
    "between_enqueues",
)
"""The named step points at which :meth:`BaseDistributedAdapter.handle_job` calls its
``fault_hook`` (``between_enqueues`` only when a commit made two or more jobs ready)."""

Observer = Callable[[str, JobPayload | None, BaseDistributedAdapter], None]
"""Called as ``observer(point, job, adapter)`` at every step point, before any crash rule."""


@dataclass
class _EnqueueRule:
    nodes: frozenset[str] | None
    times: int
    max_delay: float
    delay_original: bool

    def matches(self, job: JobPayload) -> bool:
        return self.nodes is None or job.node_id in self.nodes


@dataclass
class _DropRule:
    node_id: str
    remaining: int
    kind: str


@dataclass
class _CrashRule:
    node_id: str
    point: str
    remaining: int


@dataclass
class _HoldRule:
    node_id: str
    point: str
    gate: asyncio.Event
    remaining: int


class _SlowContext:
    """Delegates to a run context; ``load`` results (and ``commit`` calls) are delayed."""

    def __init__(self, inner: Any, delay: Callable[[], float], commits: bool) -> None:
        self._inner = inner
        self._delay = delay
        self._commits = commits

    async def load(self) -> Any:
        # The snapshot is taken first and arrives late: by then it may be stale.
        snap = await self._inner.load()
        await asyncio.sleep(self._delay())
        return snap

    async def commit(self, ops: Any, expected_version: int, status: str | None = None) -> bool:
        if self._commits:
            await asyncio.sleep(self._delay())
        return bool(await self._inner.commit(ops, expected_version, status))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name == "load_since":  # the incremental load arrives late too

            async def load_since(*args: Any, **kwargs: Any) -> Any:
                ch = await attr(*args, **kwargs)
                await asyncio.sleep(self._delay())
                return ch

            return load_since
        if name == "commit_release" and self._commits:

            async def commit_release(*args: Any, **kwargs: Any) -> Any:
                await asyncio.sleep(self._delay())
                return await attr(*args, **kwargs)

            return commit_release
        return attr


@dataclass(frozen=True)
class Enqueued:
    """One ``enqueue_job`` call seen by the injector (before any fault was applied)."""

    job: JobPayload
    delay: float
    worker_id: str


@dataclass
class FaultInjector:
    """A fault plan plus a journal of what happened; install it on every adapter of a cluster.

    Configure with :meth:`duplicate`, :meth:`late`, :meth:`drop` and :meth:`crash` (each returns
    the injector so calls chain), then :meth:`install` it on each adapter. The journal
    (:attr:`enqueued`, :attr:`dropped`, :attr:`crashes`) lets tests assert exactly which faults
    fired. ``seed`` makes random delays reproducible.
    """

    seed: int = 0
    enqueued: list[Enqueued] = field(default_factory=list)
    """Every ``enqueue_job`` call on any installed adapter, in order."""
    dropped: list[JobPayload] = field(default_factory=list)
    """Jobs swallowed by :meth:`drop` rules."""
    crashes: list[tuple[str, str, str]] = field(default_factory=list)
    """``(point, job node id, worker id)`` of every simulated crash."""
    _rng: random.Random = field(init=False)
    _enqueue_rules: list[_EnqueueRule] = field(default_factory=list)
    _drop_rules: list[_DropRule] = field(default_factory=list)
    _crash_rules: list[_CrashRule] = field(default_factory=list)
    _hold_rules: list[_HoldRule] = field(default_factory=list)
    _latency: float = 0.0
    _latency_commits: bool = False
    _observers: list[Observer] = field(default_factory=list)
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    # -- configuring ------------------------------------------------------------------------

    def duplicate(self, times: int = 2, *, nodes: Iterable[str] | None = None) -> FaultInjector:
        """Enqueue every job (or every job of ``nodes``) ``times`` times, at once."""
        if times < 1:
            raise ValueError("times must be >= 1")
        self._enqueue_rules.append(
            _EnqueueRule(None if nodes is None else frozenset(nodes), times, 0.0, False)
        )
        return self

    def late(
        self,
        max_delay: float,
        *,
        times: int = 2,
        nodes: Iterable[str] | None = None,
        delay_original: bool = True,
    ) -> FaultInjector:
        """Enqueue every matching job ``times`` times; the copies (and, with
        ``delay_original``, the original too, which reorders jobs) get a random extra delay of
        up to ``max_delay`` seconds."""
        if times < 1:
            raise ValueError("times must be >= 1")
        self._enqueue_rules.append(
            _EnqueueRule(
                None if nodes is None else frozenset(nodes), times, max_delay, delay_original
            )
        )
        return self

    def drop(self, node_id: str, *, count: int = 1, kind: str = "node") -> FaultInjector:
        """Swallow the first ``count`` enqueues of jobs for ``node_id`` (of ``kind``)."""
        self._drop_rules.append(_DropRule(node_id, count, kind))
        return self

    def crash(self, node_id: str, point: str, *, count: int = 1) -> FaultInjector:
        """Raise :class:`SimulatedCrash` the first ``count`` times a job of ``node_id``
        reaches step ``point`` (one of :data:`STEP_POINTS`)."""
        if point not in STEP_POINTS:
            raise ValueError(f"unknown step point {point!r}; choose one of {STEP_POINTS}")
        self._crash_rules.append(_CrashRule(node_id, point, count))
        return self

    def hold(
        self, node_id: str, point: str, gate: asyncio.Event, *, count: int = 1
    ) -> FaultInjector:
        """The first ``count`` times a job of ``node_id`` reaches ``point`` it waits there
        until ``gate`` is set (a slow or paused worker)."""
        if point not in STEP_POINTS:
            raise ValueError(f"unknown step point {point!r}; choose one of {STEP_POINTS}")
        self._hold_rules.append(_HoldRule(node_id, point, gate, count))
        return self

    def latency(self, max_delay: float, *, commits: bool = False) -> FaultInjector:
        """Every ``load`` of a run context returns its snapshot a random time up to
        ``max_delay`` s late (so it may be stale), and with ``commits`` every ``commit`` is
        sent that late. Configure before :meth:`install`."""
        self._latency = max_delay
        self._latency_commits = commits
        return self

    def observe(self, observer: Observer) -> FaultInjector:
        """Call ``observer(point, job, adapter)`` at every step point of every adapter."""
        self._observers.append(observer)
        return self

    # -- journal helpers --------------------------------------------------------------------

    def enqueue_count(self, node_id: str) -> int:
        """How many times a job for ``node_id`` was handed to ``enqueue_job``."""
        return sum(1 for e in self.enqueued if e.job.node_id == node_id)

    def jobs_for(self, node_id: str) -> list[JobPayload]:
        """The jobs enqueued for ``node_id``, in order."""
        return [e.job for e in self.enqueued if e.job.node_id == node_id]

    # -- installing -------------------------------------------------------------------------

    def install(self, adapter: BaseDistributedAdapter) -> BaseDistributedAdapter:
        """Wrap ``adapter.enqueue_job`` and chain ``adapter.fault_hook``; returns the adapter."""
        original = adapter.enqueue_job
        native_delay = adapter.capabilities.delayed_delivery

        async def send(job: JobPayload, delay: float, options: Mapping[str, Any] | None) -> None:
            if delay <= 0 or native_delay:
                await original(job, delay=delay, options=options)
                return

            async def later() -> None:
                await asyncio.sleep(delay)
                await original(job, options=options)

            t = asyncio.get_running_loop().create_task(later())
            self._background.add(t)
            t.add_done_callback(self._background.discard)

        async def enqueue_job(
            job: JobPayload, *, delay: float = 0.0, options: Mapping[str, Any] | None = None
        ) -> None:
            self.enqueued.append(Enqueued(job, delay, adapter.worker_id))
            for d in self._drop_rules:
                if d.remaining > 0 and d.node_id == job.node_id and d.kind == job.kind:
                    d.remaining -= 1
                    self.dropped.append(job)
                    return
            copies, max_delay, delay_first = 1, 0.0, False
            for r in self._enqueue_rules:
                if r.matches(job):
                    copies = max(copies, r.times)
                    max_delay = max(max_delay, r.max_delay)
                    delay_first = delay_first or r.delay_original
            for i in range(copies):
                extra = 0.0
                if max_delay > 0 and (i > 0 or delay_first):
                    extra = self._rng.uniform(0.0, max_delay)
                await send(job, delay + extra, options)

        adapter.enqueue_job = enqueue_job  # type: ignore[method-assign]
        if self._latency > 0:
            make_context = adapter.create_context
            rng = self._rng
            limit = self._latency
            commits = self._latency_commits

            async def create_context(run_id: str) -> Any:
                inner = await make_context(run_id)
                return _SlowContext(inner, lambda: rng.uniform(0, limit), commits)

            adapter.create_context = create_context  # type: ignore[method-assign]
        previous = adapter.fault_hook

        async def hook(point: str, job: JobPayload | None) -> None:
            if previous is not None:
                r = previous(point, job)
                if isinstance(r, Awaitable):
                    await r
            for obs in self._observers:
                obs(point, job, adapter)
            if job is None:
                return
            for h in self._hold_rules:
                if h.remaining > 0 and h.point == point and h.node_id == job.node_id:
                    h.remaining -= 1
                    await h.gate.wait()
            for c in self._crash_rules:
                if c.remaining > 0 and c.point == point and c.node_id == job.node_id:
                    c.remaining -= 1
                    self.crashes.append((point, job.node_id, adapter.worker_id))
                    raise SimulatedCrash(f"simulated crash of {job.node_id!r} at {point}")

        adapter.fault_hook = hook
        return adapter

    async def aclose(self) -> None:
        """Cancel delayed enqueues still waiting (for backends without native delays)."""
        for t in list(self._background):
            t.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


__all__ = ["STEP_POINTS", "Enqueued", "FaultInjector", "Observer"]
