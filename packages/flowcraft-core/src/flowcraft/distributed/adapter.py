"""BaseDistributedAdapter: technology-agnostic distributed execution, correct under
at-least-once delivery and worker crashes.

One job = one node execution. A worker:

1. takes a lease on ``run:node:iteration`` (so two deliveries never execute the same node at
   once; taken before reading the run, so no delivery can act on a read that predates another
   delivery's commit) and extends it with a heartbeat while the node runs;
2. loads the run (user context + engine keys + version) in one read;
3. drops the job when the run is final (re-publishing the result if the worker that ended the
   run died before publishing it), the node is already done (after re-publishing the
   successors it made ready, in case the previous delivery crashed before enqueueing them), or
   the job is for an older loop iteration;
4. runs the node with the same executor as the in-memory runtime, buffering its context writes;
5. applies the outcome with the shared :class:`~flowcraft.kernel.Kernel` and commits the node's
   writes, its completion, every edge/join decision and the run status in ONE conditional write
   (compare-and-set on the run's version). On a conflict it reloads and re-applies; if another
   delivery committed the node first, nothing of this execution is written (exactly-once commit);
6. only then enqueues the jobs the commit made ready, publishes a final result if the run ended,
   releases the lease and lets the queue ack.

A crash anywhere before step 5 leaves no trace (the job is redelivered when its queue lease
expires); a crash after step 5 is repaired by the redelivery (step 3 re-publishes) or by
:meth:`reconcile`, which only re-enqueues queued work that nobody holds a lease on. A run that
became final stops its running nodes at their next heartbeat (their outcome would be dropped).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from ..blueprint import NodeDefinition, WorkflowBlueprint
from ..context import InMemoryContext, PatchOperation, apply_ops
from ..errors import ErrorRecord, FlowcraftError, ResumeError, SerializationError
from ..events import EventBus, FlowcraftEvent
from ..executor import is_fatal, retry_delay
from ..kernel import FALLBACK, ITEM, NODE, Activation, Kernel
from ..nodes import NodeResult
from ..plan import Plan
from ..runtime import _AWAIT, _ERR, _OK, FlowRuntime, WorkflowResult, _Run
from ..state import FINAL_STATUSES, RunState, WorkflowStatus
from . import statekeys as sk
from .codec import encode_value
from .contracts import (
    Capabilities,
    CoordinationStore,
    DistributedContext,
    InvalidJobError,
    JobPayload,
    SimulatedCrash,
    Snapshot,
    delete_if_equals,
)
from .view import Changes, IncrementalContext, RunView, SnapshotContext, clone

log = logging.getLogger("flowcraft.distributed")

JobHandler = Callable[[JobPayload], Awaitable[None]]


class RetryJob(Exception):
    """Raised by :meth:`BaseDistributedAdapter.handle_job` to ask the queue for redelivery.

    ``job`` is the payload to deliver again (attempt/requeue counters already advanced) after
    ``delay`` seconds. Adapters with native retries may use their own mechanism instead; the
    generic handling is: enqueue ``job`` with ``delay``, then ack the current message.
    """

    def __init__(self, job: JobPayload, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.job = job
        self.delay = delay
        self.reason = reason


@dataclass
class RunStatus:
    """What a client sees of a run."""

    run_id: str
    blueprint_id: str
    status: WorkflowStatus
    node_statuses: dict[str, str]
    awaiting: dict[str, dict[str, Any]]
    errors: list[dict[str, Any]]
    updated_at: float | None


_OUTCOME_RESUME = 10
_MAX_CAS = 1000


def _split_job_node(node_id: str) -> tuple[str, int]:
    if node_id.endswith("]") and "[" in node_id:
        base, _, idx = node_id[:-1].rpartition("[")
        if idx.isdigit():
            return base, int(idx)
    return node_id, -1


class _Lease:
    """A node lease held by one delivery: ``key``, ``token``; ``released`` once given back."""

    __slots__ = ("key", "released", "token")

    def __init__(self, key: str, token: str) -> None:
        self.key = key
        self.token = token
        self.released = False


_INCREMENTAL: dict[type, bool] = {}


def _incremental(ctx: DistributedContext) -> IncrementalContext | None:
    """``ctx`` when its store offers :class:`IncrementalContext` (checked once per type:
    protocol checks are slow)."""
    t = type(ctx)
    inc = _INCREMENTAL.get(t)
    if inc is None:
        inc = isinstance(ctx, IncrementalContext)
        if not hasattr(t, "__getattr__"):  # a delegating wrapper answers per instance
            _INCREMENTAL[t] = inc
    return ctx if inc else None  # type: ignore[return-value]


@dataclass(slots=True)
class _Next:
    """A successor to run inline: its activation, job payload and the lease already taken."""

    view: RunView
    plan: Plan
    act: Activation
    job: JobPayload
    lease: _Lease


class _Pending:
    """One outcome waiting to be committed (see ``_commit_group``) and, once settled, what
    its commit did."""

    __slots__ = (
        "act",
        "acts",
        "child",
        "committed",
        "deltas",
        "done",
        "error",
        "final",
        "got",
        "inline",
        "job",
        "lease",
        "nxt",
        "outcome",
        "rec",
        "state",
    )

    def __init__(
        self,
        act: Activation,
        outcome: tuple[int, Any],
        deltas: Mapping[str, PatchOperation],
        job: JobPayload | None,
        child: bool,
        lease: _Lease | None,
        inline: bool,
    ) -> None:
        self.act = act
        self.outcome = outcome
        self.deltas = deltas
        self.job = job
        self.child = child
        self.lease = lease
        self.inline = inline
        self.acts: list[Activation] = []
        self.nxt: _Next | None = None
        self.done = False
        self.committed = False
        self.error: BaseException | None = None
        self.state: RunState | None = None
        self.rec: dict[str, Any] = {}
        self.final = False
        self.got = False

    def settle(
        self,
        *,
        error: BaseException | None = None,
        state: RunState | None = None,
        rec: dict[str, Any] | None = None,
        final: bool = False,
        got: bool = False,
    ) -> None:
        """Record the result: an ``error``, committed (``state`` given) or not needed."""
        self.done = True
        self.error = error
        self.committed = state is not None
        self.state = state
        self.rec = rec or {}
        self.final = final
        self.got = got
        if not self.committed:
            self.nxt = None


class _LeaseHeld(Exception):
    """The node's lease is held by another delivery."""


class _DistributedRuntime(FlowRuntime):
    """The runtime used by workers: subflows become child runs instead of in-process runs."""

    adapter: BaseDistributedAdapter

    async def _subflow(
        self, run: _Run, act: Activation, node: NodeDefinition, node_input: Any
    ) -> tuple[int, Any]:
        return await self.adapter._start_child(run, act, node, node_input)


class BaseDistributedAdapter(ABC):
    """Base class of every queue adapter.

    Subclasses implement :meth:`create_context`, :meth:`process_jobs`, :meth:`enqueue_job` and
    :meth:`publish_final_result`, and declare their :attr:`capabilities`.
    """

    capabilities: ClassVar[Capabilities] = Capabilities()
    view_errors: ClassVar[list[str]] = []
    """Mismatches found with ``FLOWCRAFT_VERIFY_VIEWS=1`` (a test-suite check that a worker's
    cached run and its incremental commits equal a full re-read and a full diff)."""
    final_marker_ttl: ClassVar[float] = 7 * 24 * 3600.0
    """How long the "result published" marker of a final run is kept (seconds); a job of the
    run arriving later than this re-publishes the result once more."""

    def __init__(
        self,
        *,
        coordination_store: CoordinationStore,
        runtime_options: Mapping[str, Any] | None = None,
        event_bus: EventBus | None = None,
        lease_seconds: float = 30.0,
        version_requeue_limit: int = 20,
        version_requeue_delay: float = 1.0,
        worker_id: str | None = None,
        view_cache: int = 256,
        inline_successors: int = 0,
    ) -> None:
        opts = dict(runtime_options or {})
        self.runtime = _DistributedRuntime(**opts)
        self.runtime.adapter = self
        self.coordination = coordination_store
        self.event_bus = event_bus
        self.lease_seconds = lease_seconds
        self.version_requeue_limit = version_requeue_limit
        self.version_requeue_delay = version_requeue_delay
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        # Lease tokens: unique per adapter instance (worker ids may be shared) and cheap.
        self._token_prefix = f"{self.worker_id}:{uuid.uuid4().hex[:8]}:"
        self._tokens = itertools.count()
        self.fault_hook: Callable[[str, JobPayload | None], Awaitable[None] | None] | None = None
        self.view_cache = view_cache
        self.verify_views = os.environ.get("FLOWCRAFT_VERIFY_VIEWS") == "1"
        """How many runs this worker keeps decoded between jobs (0: decode every job)."""
        self._views: OrderedDict[str, RunView] = OrderedDict()
        self.inline_successors = inline_successors
        """How many successor nodes one delivered job may run right after its own node, in
        this worker, instead of sending them through the queue (0: never). See
        docs/distributed.md, "Inline successors"."""

    # -- what adapters implement -------------------------------------------------------------

    @abstractmethod
    async def create_context(self, run_id: str) -> DistributedContext:
        """The run's context in the backend store."""

    @abstractmethod
    async def process_jobs(self, handler: JobHandler) -> None:
        """Consume the queue until stopped, calling ``handler`` per job.

        Ack after ``handler`` returns; on :class:`RetryJob` enqueue ``exc.job`` with
        ``exc.delay`` (or use native retry) and ack; on :class:`InvalidJobError` dead-letter or
        log and ack; on any other exception do not ack (let the message be redelivered).
        """

    @abstractmethod
    async def enqueue_job(
        self, job: JobPayload, *, delay: float = 0.0, options: Mapping[str, Any] | None = None
    ) -> None:
        """Put ``job`` on the queue, deliverable after ``delay`` seconds."""

    @abstractmethod
    async def publish_final_result(self, run_id: str, result: Mapping[str, Any]) -> None:
        """Announce a run's final result (``{status, context, errors, ...}``) to clients."""

    # -- hooks -------------------------------------------------------------------------------

    def should_retry_in_process(self, node: NodeDefinition) -> bool:
        """True (default): retries run inside the worker. False: one attempt per job, the
        queue redelivers failed attempts (``attempt``/``isLastAttempt`` travel in the job)."""
        return True

    def get_queue_retry_options(self, node: NodeDefinition) -> Mapping[str, Any] | None:
        """Queue-specific retry options for jobs of ``node`` when retries are delegated."""
        return None

    async def on_job_start(self, job: JobPayload) -> None:
        """Called when a job is received (before anything else)."""

    async def extend_job_lease(self, job: JobPayload) -> None:
        """Heartbeat hook: keep the queue message invisible while the node runs."""

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """A page of run ids that are not final, and the next cursor (None at the end)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list runs")

    async def wait_for_final(self, run_id: str, timeout: float | None) -> None:
        """Return once the run is final (or raise TimeoutError). Default: polls with backoff."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            st = await self.status(run_id)
            if st.status in FINAL_STATUSES:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id!r} still {st.status} after {timeout} s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    # -- plumbing ------------------------------------------------------------------------------

    async def _fault(self, point: str, job: JobPayload | None = None) -> None:
        hook = self.fault_hook
        if hook is not None:
            r = hook(point, job)
            if r is not None:
                await r

    async def _emit(self, type_: str, payload: dict[str, Any]) -> None:
        if self.event_bus is None:
            return
        ev = FlowcraftEvent(type_, payload, payload.get("runId", ""), time.time(), 0)
        try:
            r = self.event_bus.emit(ev)
            if r is not None:
                await r
        except Exception:
            log.exception("adapter event bus failed")

    def _blueprint(self, blueprint_id: str) -> WorkflowBlueprint | None:
        return self.runtime.blueprints.get(blueprint_id)

    async def start(self) -> None:
        """Consume jobs: ``process_jobs(handle_job)``."""
        await self.process_jobs(self.handle_job)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (adapters override this): a stopping worker
        finishes its running nodes but starts no inline successor; those are enqueued."""
        return False

    async def stop(self) -> None:
        """Stop consuming; jobs in progress finish. Adapters override this."""

    async def aclose(self) -> None:
        """Release connections and threads (after :meth:`stop`). Adapters override this."""

    # -- client API ------------------------------------------------------------------------------

    async def start_run(
        self,
        blueprint_id: str,
        initial: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        parent: Mapping[str, Any] | None = None,
        start_input: Any = None,
    ) -> str:
        """Create a run and enqueue its start nodes; returns the run id.

        Creating a run that exists already is an error (run ids are unique).
        """
        bp = self._blueprint(blueprint_id)
        if bp is None:
            raise FlowcraftError(f"unknown blueprint {blueprint_id!r}", blueprint_id=blueprint_id)
        plan, _ = self.runtime.prepare(bp)
        run_id = run_id or str(uuid.uuid4())
        ctx = await self.create_context(run_id)
        state = RunState(execution_id=run_id, blueprint_id=bp.id, blueprint_version=bp.version)
        data = dict(initial or {})
        bad = [k for k in data if sk.is_engine_key(k)]
        if bad:
            raise ValueError(f"initial context keys may not start with '_fc.': {bad}")
        kernel = Kernel(plan, state, data)
        acts = kernel.start()
        if start_input is not None:
            for a in acts:
                state.inputs[a.node_id] = {"": start_input}
        now = time.time()
        extra: dict[str, Any] = {"createdAt": now, "updatedAt": now}
        if parent:
            extra["parent"] = dict(parent)
        ops = [PatchOperation("set", k, v) for k, v in data.items()]
        ops += [PatchOperation("set", k, v) for k, v in sk.encode(state, extra).items()]
        if not await ctx.commit(ops, 0):
            raise FlowcraftError(f"run {run_id!r} already exists", execution_id=run_id)
        await self._enqueue_activations(plan, state, acts)
        return run_id

    async def _load_run(self, run_id: str) -> tuple[Snapshot, RunState, dict[str, Any]]:
        """The run's snapshot, decoded state and run record; KeyError when there is no run."""
        snap = await (await self.create_context(run_id)).load()
        dec = sk.decode(snap.data)
        if dec is None:
            raise KeyError(f"no run {run_id!r}")
        return snap, dec[0], dec[1]

    async def status(self, run_id: str) -> RunStatus:
        """The run's current status (KeyError when there is no such run)."""
        _, st, rec = await self._load_run(run_id)
        return RunStatus(
            run_id=run_id,
            blueprint_id=st.blueprint_id,
            status=st.status,
            node_statuses=self._ordered_statuses(st),
            awaiting=st.awaiting,
            errors=st.errors,
            updated_at=rec.get("updatedAt"),
        )

    def _ordered_statuses(self, st: RunState) -> dict[str, Any]:
        bp = self._blueprint(st.blueprint_id)
        order = {n.id: i for i, n in enumerate(bp.nodes)} if bp is not None else {}
        keys = sorted(st.nodes, key=lambda k: (order.get(k, 1 << 30), k))
        return {k: st.nodes[k].status for k in keys}

    async def get_result(self, run_id: str) -> WorkflowResult:
        """The run as a :class:`WorkflowResult` (whatever its status)."""
        snap, st, _ = await self._load_run(run_id)
        return WorkflowResult(
            execution_id=run_id,
            blueprint_id=st.blueprint_id,
            status=st.status,
            context=sk.user_context(snap.data),
            node_statuses=self._ordered_statuses(st),
            errors=[ErrorRecord.model_validate(e) for e in st.errors],
            awaiting=dict(st.awaiting),
            state=st,
        )

    async def result(self, run_id: str, timeout: float | None = None) -> WorkflowResult:
        """Wait until the run is final (``completed``/``failed``/``stalled``/``cancelled``) and
        return it; TimeoutError after ``timeout`` seconds."""
        await self.wait_for_final(run_id, timeout)
        return await self.get_result(run_id)

    async def resume(
        self,
        run_id: str,
        node_id: str | None = None,
        output: Any = None,
        action: str | None = None,
    ) -> None:
        """Complete an awaiting node (a ``wait``) with ``output``, routing on ``action``."""
        ctx = await self.create_context(run_id)
        view = await self._view(ctx, run_id)
        if view is None:
            raise KeyError(f"no run {run_id!r}")
        st = view.state
        if not st.awaiting:
            raise ResumeError(f"run {run_id!r} is {st.status!r}, not awaiting", execution_id=run_id)
        bp = self._blueprint(st.blueprint_id)
        if bp is None:
            raise FlowcraftError(f"unknown blueprint {st.blueprint_id!r}")
        plan, _ = self.runtime.prepare(bp)
        if node_id is None:
            node_id = min(st.awaiting, key=lambda n: plan.order.get(n, 1 << 30))
        if node_id not in st.awaiting:
            raise ResumeError(
                f"node {node_id!r} is not awaiting; awaiting: {sorted(st.awaiting)}",
                node_id=node_id,
                execution_id=run_id,
            )
        details = st.awaiting[node_id]
        if details.get("reason") == "subflow":
            await self.resume(details["childRunId"], None, output, action)
            return
        if details.get("reason") == "timer" and output is None:
            output = details.get("input")
        act = Activation(node_id, None, NODE, iteration=st.nodes[node_id].iteration)
        await self._commit_outcome(
            ctx, view, plan, act, (_OUTCOME_RESUME, NodeResult(output, action)), {}, None
        )

    async def cancel(self, run_id: str) -> bool:
        """Mark the run ``cancelled`` (final); running nodes are cancelled at their next
        heartbeat and queued jobs are dropped. False when the run was already final."""
        ctx = await self.create_context(run_id)
        while True:
            snap = await ctx.load()
            dec = sk.decode(snap.data)
            if dec is None:
                raise KeyError(f"no run {run_id!r}")
            st, rec = dec
            if st.status in FINAL_STATUSES:
                return False
            old = sk.engine_keys(snap.data)
            st.status = "cancelled"
            new = sk.encode(st, {**rec, "updatedAt": time.time()})
            if await ctx.commit(sk.diff(old, new), snap.version):
                break
        await self._finalize(ctx, st, rec)
        return True

    # -- the worker side -------------------------------------------------------------------------

    async def handle_job(self, job: JobPayload | str | bytes | dict[str, Any]) -> None:
        """Process one delivery of a job. Safe to call any number of times for the same job.

        Raises :class:`InvalidJobError` for a malformed payload, :class:`RetryJob` to ask for a
        later redelivery; any other exception means "not processed, redeliver".
        """
        if not isinstance(job, JobPayload):
            job = JobPayload.parse(job)
        t0 = time.perf_counter()
        await self.on_job_start(job)
        await self._fault("after_receive", job)
        ctx = await self.create_context(job.run_id)
        if job.kind == "timer":
            await self._process(ctx, job, None)
            return
        # The node's lease is taken BEFORE reading the run (in the same request where the
        # store allows): a delivery that read the run before another delivery's commit could
        # otherwise execute the node a second time.
        lease = _Lease(
            self._lease_key(job.run_id, job.node_id, job.iteration),
            self._new_token(),
        )
        budget = self.inline_successors
        step: _Next | None = None
        while True:
            crashed = False
            try:
                if step is None:
                    ran, nxt = await self._process(ctx, job, lease, budget)
                else:
                    ran = True
                    nxt = await self._run_job(
                        ctx, step.view, step.plan, job, step.act, lease, budget
                    )
            except SimulatedCrash:
                crashed = True  # a dead process releases nothing: the lease must expire
                raise
            finally:
                if not crashed and not lease.released:
                    await self._release_lease(ctx, lease)
            if ran:
                await self._emit(
                    "job:processed",
                    {
                        "runId": job.run_id,
                        "blueprintId": job.blueprint_id,
                        "nodeId": job.node_id,
                        "duration": time.perf_counter() - t0,
                        "success": True,
                    },
                )
            if nxt is None:
                return
            # Run the successor here: its lease was taken together with the commit.
            step, job, lease, budget = nxt, nxt.job, nxt.lease, budget - 1
            t0 = time.perf_counter()

    def _new_token(self) -> str:
        return f"{self._token_prefix}{next(self._tokens)}"

    @staticmethod
    def _lease_key(run_id: str, job_node_id: str, iteration: int) -> str:
        return f"flowcraft:lease:{run_id}:{job_node_id}:{iteration}"

    # -- leases and views --------------------------------------------------------------------

    async def _release_lease(self, ctx: DistributedContext, lease: _Lease) -> None:
        lease.released = True
        inc = _incremental(ctx)
        if inc is not None:
            await inc.release_lease(lease.key, lease.token)
        else:
            await delete_if_equals(self.coordination, lease.key, lease.token)

    async def _extend_lease(self, ctx: DistributedContext, key: str) -> None:
        inc = _incremental(ctx)
        if inc is not None:
            await inc.extend_lease(key, self.lease_seconds)
        else:
            await self.coordination.extend_ttl(key, self.lease_seconds)

    async def _lease_held(self, run_id: str, key: str) -> bool:
        """True when some delivery holds the lease ``key`` of run ``run_id``."""
        inc = _incremental(await self.create_context(run_id))
        if inc is not None:
            return await inc.lease_holder(key) is not None
        return await self.coordination.get(key) is not None

    def _cached_view(self, run_id: str) -> RunView | None:
        views = self._views
        view = views.get(run_id)
        if view is not None:
            views.move_to_end(run_id)
        return view

    def _keep_view(self, run_id: str, view: RunView) -> RunView:
        if self.view_cache > 0:
            views = self._views
            views[run_id] = view
            views.move_to_end(run_id)
            while len(views) > self.view_cache:
                views.popitem(last=False)
        return view

    async def _view(
        self, ctx: DistributedContext, run_id: str, lease: _Lease | None = None
    ) -> RunView | None:
        """The run, current as of now (only what changed since this worker last saw it is
        read when the store can tell). With ``lease``, the lease is taken first (in the same
        request when possible): :class:`RetryJob`-worthy ``LookupError`` when it is held."""
        view = self._cached_view(run_id)
        inc = _incremental(ctx)
        if inc is None:
            if lease is not None and not await self.coordination.set_if_not_exist(
                lease.key, lease.token, self.lease_seconds
            ):
                lease.released = True  # never held
                raise _LeaseHeld()
            snap = await ctx.load()
            fresh = RunView.from_snapshot(snap)
            if fresh is None:
                return None
            if view is None:
                return self._keep_view(run_id, fresh)
            view.reset(fresh)
            return view
        since, epoch = (view.version, view.epoch) if view is not None else (0, "")
        ch = await inc.load_since(
            since, epoch, (lease.key, lease.token, self.lease_seconds) if lease else None
        )
        if ch is None:
            assert lease is not None
            lease.released = True  # never held
            raise _LeaseHeld()
        if view is not None and view.apply(ch):
            return view
        return self._full_view(run_id, view, ch)

    def _full_view(self, run_id: str, view: RunView | None, ch: Changes) -> RunView | None:
        fresh = RunView.from_snapshot(Snapshot(ch.sets, ch.version), ch.epoch)
        if fresh is None:
            self._views.pop(run_id, None)
            return None
        if view is None:
            return self._keep_view(run_id, fresh)
        view.reset(fresh)
        return view

    async def _refresh(self, ctx: DistributedContext, view: RunView, run_id: str) -> bool:
        """Bring ``view`` up to date after a lost compare-and-set; False when the run is gone."""
        inc = _incremental(ctx)
        if inc is None:
            fresh = RunView.from_snapshot(await ctx.load())
            if fresh is None:
                return False
            view.reset(fresh)
            return True
        ch = await inc.load_since(view.version, view.epoch)
        assert ch is not None
        if view.apply(ch):
            return True
        return self._full_view(run_id, view, ch) is not None

    async def _commit(
        self,
        ctx: DistributedContext,
        ops: list[PatchOperation],
        view: RunView,
        group: Sequence[_Pending],
    ) -> tuple[bool, set[str], Changes | None]:
        """One conditional commit at ``view``'s version. Where the store can, the same
        request releases the leases of ``group`` and takes the leases of their chosen inline
        successors. Returns (committed, the keys of successor leases taken with the run
        exactly as committed, the changes since the view's version when the store returned
        them with a conflict)."""
        inc = _incremental(ctx)
        if inc is not None:
            release = [
                (e.lease.key, e.lease.token) for e in group if e.lease and not e.lease.released
            ]
            take = [(e.nxt.lease.key, e.nxt.lease.token) for e in group if e.nxt is not None]
            r = await inc.commit_release(
                ops, view.version, release, take, self.lease_seconds, view.epoch
            )
            if not r.ok:
                return False, set(), r.changes
            for e in group:
                if e.lease is not None:
                    e.lease.released = True
            return True, {k for (k, _), got in zip(take, r.taken, strict=True) if got}, None
        if not await ctx.commit(ops, view.version):
            return False, set(), None
        # Without an atomic store request the run may change between the commit and the
        # lease, so a successor is run inline only from a fresh read (not this commit).
        return True, set(), None

    # -- jobs ----------------------------------------------------------------------------------

    async def _process(
        self, ctx: DistributedContext, job: JobPayload, lease: _Lease | None, budget: int = 0
    ) -> tuple[bool, _Next | None]:
        """Load the run and act on ``job``: (whether a node was executed, the successor to run
        inline next)."""
        try:
            view = await self._view(ctx, job.run_id, lease)
        except _LeaseHeld:
            # Someone is executing this node right now; look again after their lease.
            raise RetryJob(
                job.model_copy(update={"requeues": job.requeues + 1}),
                self.lease_seconds / 2,
                "node is leased by another worker",
            ) from None
        if view is None:
            raise InvalidJobError(f"job for unknown run {job.run_id!r}")
        state = view.state
        if state.status in FINAL_STATUSES:
            await self._ensure_finalized(ctx, state, view.rec, job)
            return False, None
        if job.blueprint_id != state.blueprint_id:
            raise InvalidJobError(
                f"job names blueprint {job.blueprint_id!r} but run {job.run_id!r} is of "
                f"blueprint {state.blueprint_id!r}"
            )
        bp = self._blueprint(job.blueprint_id)
        if bp is None or bp.version != state.blueprint_version:
            await self._wrong_version(ctx, job, bp, state)
            return False, None
        plan, _ = self.runtime.prepare(bp)
        if job.kind == "timer":
            await self._timer(ctx, view, plan, job)
            return False, None
        base, index = _split_job_node(job.node_id)
        ns = state.nodes.get(base)
        if ns is None:
            raise InvalidJobError(f"job for unknown node {job.node_id!r} of {bp.id!r}")
        if job.iteration != ns.iteration:
            return False, None  # a job of a finished loop iteration
        act = self._activation(plan, state, base, index)
        if act is None or lease is None:
            await self._republish(plan, state, base)
            return False, None
        return True, await self._run_job(ctx, view, plan, job, act, lease, budget)

    def _activation(
        self, plan: Plan, state: RunState, node_id: str, index: int
    ) -> Activation | None:
        ns = state.nodes[node_id]
        if index >= 0:
            bs = state.batches.get(node_id)
            if bs is None or ns.status != "running" or index >= len(bs.items):
                return None
            if bs.item_status[index] not in ("queued", "running", "pending"):
                return None
            item = clone(bs.items[index])
            return Activation(node_id, item, ITEM, index=index, iteration=ns.iteration)
        if ns.status not in ("queued", "running") or node_id in state.batches:
            return None
        kernel = Kernel(plan, state, {})
        node_input = clone(kernel.input_for(node_id))
        owner = state.fallbacks.get(node_id)
        if owner is not None:
            return Activation(
                node_id,
                node_input,
                FALLBACK,
                owner=owner,
                error=state.nodes[owner].error,
                iteration=ns.iteration,
            )
        return Activation(node_id, node_input, NODE, iteration=ns.iteration)

    async def _run_job(
        self,
        ctx: DistributedContext,
        view: RunView,
        plan: Plan,
        job: JobPayload,
        act: Activation,
        lease: _Lease,
        budget: int = 0,
    ) -> _Next | None:
        """Execute ``act`` under ``lease`` (held by the caller) and commit; returns the
        successor to run inline next (``budget`` > 0 allows one)."""
        node = plan.nodes[act.node_id]
        queue_mode = not self.should_retry_in_process(node)
        rt = self.runtime
        run = _Run(
            plan,
            view.exec_state(act.node_id),
            SnapshotContext(view.data),
            rt.registry,
            rt.event_bus,
            1,
            rt.dependencies,
        )
        run.deltas = {}
        if queue_mode:
            run.attempt_window = (job.attempt, job.attempt)
        task = asyncio.current_task()
        # The heartbeat starts only once a beat is due: most nodes finish before that, and
        # a timer is cheaper than a task per node.
        loop = asyncio.get_running_loop()
        beats: list[asyncio.Task[None]] = []
        executing = [True]  # the heartbeat cancels the node, never its commit or publish
        due = loop.call_later(
            self._beat_interval(),
            lambda: beats.append(
                loop.create_task(self._heartbeat(ctx, job, lease.key, task, executing))
            ),
        )
        try:
            await self._fault("before_execute", job)
            run.kernel.on_started(act)
            try:
                outcome = await rt._execute(run, act)
            finally:
                executing[0] = False
            await run.flush()
            await self._fault("after_execute", job)
            if (
                queue_mode
                and outcome[0] == _ERR
                and job.attempt < node.config.max_retries
                and not outcome[1].get("isFatal")
            ):
                await self._emit(
                    "job:failed",
                    {"runId": job.run_id, "nodeId": job.node_id, "error": outcome[1]},
                )
                raise RetryJob(
                    job.model_copy(
                        update={
                            "attempt": job.attempt + 1,
                            "is_last_attempt": job.attempt + 1 >= node.config.max_retries,
                        }
                    ),
                    retry_delay(node.config, job.attempt),
                    f"attempt {job.attempt} failed: {outcome[1].get('message')}",
                )
            deltas: Mapping[str, PatchOperation] = run.deltas
            if outcome[0] != _ERR:
                outcome, deltas = self._check_values(act, outcome, deltas, run)
            return await self._commit_outcome(
                ctx, view, plan, act, outcome, deltas, job, lease=lease, inline=budget > 0
            )
        finally:
            due.cancel()
            for b in beats:
                b.cancel()

    def _check_values(
        self,
        act: Activation,
        outcome: tuple[int, Any],
        deltas: Mapping[str, PatchOperation],
        run: _Run,
    ) -> tuple[tuple[int, Any], Mapping[str, PatchOperation]]:
        """Refuse values the backend cannot store: the node fails with an error naming the key
        instead of the job failing (and being redelivered) forever."""
        limit = self.capabilities.max_value_bytes
        try:
            for op in deltas.values():
                if op.op == "set":
                    encode_value(op.key, op.value, limit)
            if outcome[0] == _OK:
                encode_value(f"_outputs.{act.node_id}", outcome[1].output, limit)
        except SerializationError as exc:
            rec = ErrorRecord.from_exception(
                exc,
                node_id=act.job_node_id,
                blueprint_id=run.blueprint.id,
                execution_id=run.state.execution_id,
            ).to_wire()
            return (_ERR, rec), {}
        return outcome, deltas

    async def _heartbeat(
        self,
        ctx: DistributedContext,
        job: JobPayload,
        lease_key: str,
        task: asyncio.Task[Any] | None,
        executing: list[bool],
    ) -> None:
        interval = self._beat_interval()
        while True:
            try:
                await self._extend_lease(ctx, lease_key)
                await self.extend_job_lease(job)
                rec = await ctx.get(sk.RUN_KEY)
                # A final run (cancelled, or failed by another branch: A5) discards this
                # node's outcome anyway, so stop the node now.
                if (
                    isinstance(rec, Mapping)
                    and rec.get("status") in FINAL_STATUSES
                    and task
                    and executing[0]
                ):
                    task.cancel()
                    return
            except Exception:
                log.exception("heartbeat for %s failed", lease_key)
            await asyncio.sleep(interval)

    def _beat_interval(self) -> float:
        return max(self.lease_seconds / 3, 0.05)

    async def _commit_outcome(
        self,
        ctx: DistributedContext,
        view: RunView,
        plan: Plan,
        act: Activation,
        outcome: tuple[int, Any],
        deltas: Mapping[str, PatchOperation],
        job: JobPayload | None,
        *,
        child: bool = False,
        lease: _Lease | None = None,
        inline: bool = False,
    ) -> _Next | None:
        """Apply ``outcome`` with the kernel and commit it atomically (CAS with reload).

        Outcomes of one run that finish in this worker while another of its commits is in
        flight are committed together, in one request (group commit): fewer round trips and
        fewer version conflicts on wide fan-outs, with the same result as one by one.
        ``child``: the outcome of a subflow node's child run, which may arrive before the
        parent's own job committed the node as awaiting the child. ``inline``: the commit
        also takes the lease of one node it made ready, which is returned to be run next in
        this worker instead of being enqueued."""
        entry = _Pending(act, outcome, deltas, job, child, lease, inline)
        view.pending.append(entry)
        async with view.lock:
            if not entry.done:
                await self._commit_group(ctx, view, plan, entry)
        if entry.error is not None:
            raise entry.error
        if not entry.committed:
            return None  # another delivery committed it first: exactly-once commit
        await self._fault("after_commit", job)
        nxt, got, acts = entry.nxt, entry.got, entry.acts
        if nxt is not None and not got:
            atomic = _incremental(ctx) is not None  # then the lease is simply held elsewhere
            nxt = None if atomic else await self._lease_after_commit(ctx, view, nxt)
        if nxt is not None:
            acts = [a for a in acts if a is not nxt.act]
            nxt.view = view
            nxt.act = self._activation(plan, view.state, nxt.act.node_id, nxt.act.index) or nxt.act
        state = entry.state
        assert state is not None
        await self._enqueue_activations(plan, state, acts, job)
        if outcome[0] == _AWAIT and outcome[1].get("reason") == "timer":
            await self._schedule_timer(plan, state, act.node_id)
        if entry.final:
            await self._finalize(ctx, state, entry.rec)
        return nxt

    async def _commit_group(
        self, ctx: DistributedContext, view: RunView, plan: Plan, mine: _Pending
    ) -> None:
        """Commit every pending outcome of ``view`` in one conditional commit (the caller,
        whose outcome is ``mine``, holds ``view.lock``); settles each entry. Should the
        commit itself fail, the other entries go back to wait for their own attempt."""
        group, view.pending = view.pending, []
        run_id = view.state.execution_id
        try:
            for e in group:  # a crash here is that job's alone
                try:
                    await self._fault("before_commit", e.job)
                except BaseException as exc:
                    e.settle(error=exc)
            group = [e for e in group if not e.done]
            for _ in range(_MAX_CAS):
                if not group:
                    return
                base = view.version
                applied = self._apply_group(view, plan, group)
                if applied is None:
                    continue  # an entry failed to apply and was dropped: again without it
                new, data, rec, live, ops = applied
                if not live:
                    for e in group:
                        e.settle()
                    return
                for e in live:
                    e.nxt = (
                        self._pick_inline(plan, run_id, e.acts)
                        if e.inline and not self.stopping
                        else None
                    )
                ok, taken, changes = await self._commit(ctx, ops, view, live)
                if ok:
                    if view.version == base:
                        view.adopt(base + 1, new, data, rec)
                        if self.verify_views:
                            await self._verify_view(ctx, view)
                    final = new.status in FINAL_STATUSES
                    for e in group:
                        if e not in live:
                            e.settle()
                            continue
                        got = e.nxt is not None and e.nxt.lease.key in taken
                        if got and view.version != base + 1:
                            assert e.nxt is not None
                            await self._release_lease(ctx, e.nxt.lease)
                            e.nxt, got = None, False
                        e.settle(state=new, rec=rec, final=final, got=got)
                        final = False  # one entry finalizes the run
                    return
                for e in live:
                    e.nxt = None
                if changes is not None and view.apply(changes):
                    continue  # the conflict's changes came with the refusal: no reload
                if not await self._refresh(ctx, view, run_id):
                    for e in group:
                        e.settle()
                    return
            nodes = ", ".join(repr(e.act.node_id) for e in group)
            raise FlowcraftError(f"could not commit node(s) {nodes}: too much contention")
        except BaseException:
            view.pending[:0] = [e for e in group if not e.done and e is not mine]
            raise

    def _apply_group(
        self, view: RunView, plan: Plan, group: list[_Pending]
    ) -> (
        tuple[RunState, dict[str, Any], dict[str, Any], list[_Pending], list[PatchOperation]] | None
    ):
        """Apply the outcomes of ``group`` to a fork of ``view`` in order: (state, context,
        run record, the entries still expected, the operations to commit). An entry whose
        outcome cannot be applied gets its error and None is returned (retry without it)."""
        rt = self.runtime
        new, data = view.fork()
        kernel = Kernel(plan, new, data, collect_ops=True, shared_inputs=True)
        run = _Run(plan, new, InMemoryContext(), rt.registry, None, 1, rt.dependencies)
        run.ctx.data = data
        run.kernel = kernel
        live: list[_Pending] = []
        ops: list[PatchOperation] = []
        activated = False
        for e in group:
            e.acts = []
            if new.status in FINAL_STATUSES or not self._still_expected(
                new, e.act, e.outcome, e.child
            ):
                continue
            try:
                if e.child:
                    new.awaiting.pop(e.act.node_id, None)
                apply_ops(data, e.deltas.values())
                ops.extend(e.deltas.values())
                kernel.on_started(e.act)
                if e.outcome[0] == _OUTCOME_RESUME:
                    res: NodeResult = e.outcome[1]
                    e.acts = kernel.resume(e.act.node_id, res.output, res.action)
                else:
                    e.acts = rt._apply(run, e.act, e.outcome)
            except Exception as exc:
                e.settle(error=exc)
                group.remove(e)
                return None
            activated |= bool(e.acts)
            live.append(e)
            self._settle(new, activated)  # a run that became final takes no more outcomes
        rec = sk.run_record(new, {**view.rec, "updatedAt": time.time()})
        engine = view.engine_ops(new, rec)
        if self.verify_views:
            self._verify_ops(view, new, rec, engine)
        return new, data, rec, live, ops + kernel.ops + engine

    async def _lease_after_commit(
        self, ctx: DistributedContext, view: RunView, nxt: _Next
    ) -> _Next | None:
        """For stores without an atomic commit-and-lease: take the successor's lease, then read
        the run afresh (lease before load) and check that the node is still waiting for us."""
        lease = nxt.lease
        if not await self.coordination.set_if_not_exist(lease.key, lease.token, self.lease_seconds):
            return None
        a = nxt.act
        if (
            await self._refresh(ctx, view, view.state.execution_id)
            and view.state.status not in FINAL_STATUSES
            and view.state.nodes[a.node_id].iteration == a.iteration
            and self._activation(nxt.plan, view.state, a.node_id, a.index) is not None
        ):
            return nxt
        await self._release_lease(ctx, lease)
        return None

    def _verify_ops(
        self, view: RunView, new: RunState, rec: Mapping[str, Any], ops: list[PatchOperation]
    ) -> None:
        def key(o: list[PatchOperation]) -> dict[str, tuple[str, Any]]:
            return {p.key: (p.op, p.value) for p in o}

        full = key(view.full_engine_ops(new, rec))
        got = key(ops)
        if full != got:
            self._view_error(f"incremental ops {got} != full diff {full}")

    async def _verify_view(self, ctx: DistributedContext, view: RunView) -> None:
        snap = await ctx.load()
        if snap.version != view.version:
            return  # moved on meanwhile: nothing to compare
        stored = sk.engine_keys(snap.data)
        mine = sk.encode(view.state, view.rec)
        if stored != mine or sk.user_context(snap.data) != view.data:
            self._view_error(
                f"view of {view.state.execution_id} at {view.version} differs from the store: "
                f"engine {sk.diff(stored, mine)}, user {view.data} vs {sk.user_context(snap.data)}"
            )

    def _view_error(self, msg: str) -> None:
        log.error("run view check failed: %s", msg)
        BaseDistributedAdapter.view_errors.append(msg)

    def _pick_inline(self, plan: Plan, run_id: str, acts: Sequence[Activation]) -> _Next | None:
        """The first ready node that may run inline (its retries run in process)."""
        for a in acts:
            if self.should_retry_in_process(plan.nodes[a.node_id]):
                job, _ = self._job_for(plan, run_id, a)
                lease = _Lease(
                    self._lease_key(run_id, a.job_node_id, a.iteration),
                    self._new_token(),
                )
                return _Next(None, plan, a, job, lease)  # type: ignore[arg-type]
        return None

    def _still_expected(
        self, state: RunState, act: Activation, outcome: tuple[int, Any], child: bool = False
    ) -> bool:
        ns = state.nodes.get(act.node_id)
        if ns is None or ns.iteration != act.iteration:
            return False
        if child:
            return ns.status in ("queued", "running", "awaiting")
        if outcome[0] == _OUTCOME_RESUME:
            return ns.status == "awaiting"
        if act.kind == ITEM:
            bs = state.batches.get(act.node_id)
            return (
                bs is not None
                and ns.status == "running"
                and bs.item_status[act.index] in ("queued", "running", "pending")
            )
        return ns.status in ("queued", "running") and act.node_id not in state.batches

    def _settle(self, state: RunState, activated: bool = False) -> bool:
        """Set the run status after a transition (``activated``: it made nodes ready);
        True when the run just became final."""
        if state.errors:
            state.status = "failed"
            return True
        busy = activated or any(ns.status in ("queued", "running") for ns in state.nodes.values())
        if busy:
            state.status = "running"
            return False
        if state.awaiting:
            state.status = "awaiting"
            return False
        done = ("completed", "skipped", "recovered")
        state.status = (
            "completed" if all(ns.status in done for ns in state.nodes.values()) else "stalled"
        )
        return True

    def _job_for(self, plan: Plan, run_id: str, a: Activation) -> tuple[JobPayload, Any]:
        """The job payload of activation ``a`` and its queue options."""
        bp = plan.blueprint
        node = plan.nodes[a.node_id]
        queue_mode = not self.should_retry_in_process(node)
        job = JobPayload(
            run_id=run_id,
            blueprint_id=bp.id,
            node_id=a.job_node_id,
            iteration=a.iteration,
            blueprint_version=bp.version,
            attempt=1,
            is_last_attempt=(node.config.max_retries <= 1) if queue_mode else None,
        )
        return job, self.get_queue_retry_options(node) if queue_mode else None

    async def enqueue_jobs(
        self, jobs: Sequence[tuple[JobPayload, Mapping[str, Any] | None]]
    ) -> None:
        """Put several jobs on the queue (``(job, options)`` pairs). Default: one
        :meth:`enqueue_job` each; adapters override this with their queue's batch call."""
        for job, opts in jobs:
            await self.enqueue_job(job, options=opts)

    async def _enqueue_activations(
        self,
        plan: Plan,
        state: RunState,
        acts: Sequence[Activation],
        cause: JobPayload | None = None,
    ) -> None:
        run_id = state.execution_id
        bp_id = plan.blueprint.id
        bulk = type(self).enqueue_jobs is not BaseDistributedAdapter.enqueue_jobs
        if bulk and len(acts) > 2 and self.fault_hook is None:
            # The queue's batch call (fault injection wraps enqueue_job: then one by one).
            jobs = [self._job_for(plan, run_id, a) for a in acts]
            await self.enqueue_job(jobs[0][0], options=jobs[0][1])
            await self._fault("between_enqueues", cause)
            await self.enqueue_jobs(jobs[1:])
            for job, _ in jobs:
                await self._emit(
                    "job:enqueued", {"runId": run_id, "blueprintId": bp_id, "nodeId": job.node_id}
                )
            return
        first = True
        for a in acts:
            if not first:
                await self._fault("between_enqueues", cause)
            first = False
            job, opts = self._job_for(plan, run_id, a)
            await self.enqueue_job(job, options=opts)
            await self._emit(
                "job:enqueued", {"runId": run_id, "blueprintId": bp_id, "nodeId": job.node_id}
            )

    async def _schedule_timer(self, plan: Plan, state: RunState, node_id: str) -> None:
        d = state.awaiting.get(node_id)
        if d is None or d.get("reason") != "timer":
            return
        wake = datetime.fromisoformat(d["wakeUpAt"]).timestamp()
        job = JobPayload(
            run_id=state.execution_id,
            blueprint_id=plan.blueprint.id,
            node_id=node_id,
            iteration=state.nodes[node_id].iteration,
            blueprint_version=plan.blueprint.version,
            kind="timer",
        )
        delay = max(wake - time.time(), 0.0)
        cap = self.capabilities.max_delay_seconds
        await self.enqueue_job(job, delay=min(delay, cap) if cap else delay)

    async def _timer(
        self, ctx: DistributedContext, view: RunView, plan: Plan, job: JobPayload
    ) -> None:
        state = view.state
        ns = state.nodes.get(job.node_id)
        d = state.awaiting.get(job.node_id)
        if ns is None or d is None or d.get("reason") != "timer" or ns.iteration != job.iteration:
            return
        remaining = datetime.fromisoformat(d["wakeUpAt"]).timestamp() - time.time()
        if remaining > 0.001:
            cap = self.capabilities.max_delay_seconds
            await self.enqueue_job(job, delay=min(remaining, cap) if cap else remaining)
            return
        act = Activation(job.node_id, None, NODE, iteration=ns.iteration)
        out = NodeResult(d.get("input"), None)
        await self._commit_outcome(ctx, view, plan, act, (_OUTCOME_RESUME, out), {}, job)

    async def _republish(self, plan: Plan, state: RunState, node_id: str) -> None:
        """Re-enqueue the queued work a finished node made ready (idempotent).

        With inline successors a delivery may have run a whole stretch of nodes after this one
        before it died, so the walk continues through finished successors to the queued work
        behind them."""
        acts: list[Activation] = []
        walk = self.inline_successors > 0
        seen: set[str] = set()
        todo = [node_id]
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            ns = state.nodes.get(n)
            if ns is None:
                continue
            if n != node_id and ns.status == "queued":
                acts.append(Activation(n, None, NODE, iteration=ns.iteration))
                continue
            bs = state.batches.get(n)
            if bs is not None and ns.status == "running":
                for i, s in enumerate(bs.item_status):
                    if s in ("queued", "running") and i < bs.released:
                        acts.append(Activation(n, None, ITEM, index=i, iteration=ns.iteration))
            if n == node_id or (
                walk and ns.status in ("completed", "recovered", "skipped", "failed")
            ):
                todo.extend(e.target for e in plan.out_edges[n])
                fb = plan.nodes[n].config.fallback
                if fb:
                    todo.append(fb)
        if acts:
            await self._enqueue_activations(plan, state, acts)

    async def _wrong_version(
        self,
        ctx: DistributedContext,
        job: JobPayload,
        bp: WorkflowBlueprint | None,
        state: RunState,
    ) -> None:
        have = "no such blueprint" if bp is None else f"version {bp.version!r}"
        want = f"{state.blueprint_id!r} version {state.blueprint_version!r}"
        if job.requeues < self.version_requeue_limit:
            log.warning("worker has %s, run needs %s: requeueing", have, want)
            raise RetryJob(
                job.model_copy(update={"requeues": job.requeues + 1}),
                self.version_requeue_delay,
                f"worker has {have}; run needs {want}",
            )
        reason = f"no worker could run blueprint {want} after {job.requeues} requeues"
        await self._fail_run(ctx, job.run_id, reason)

    async def _fail_run(self, ctx: DistributedContext, run_id: str, reason: str) -> None:
        while True:
            snap = await ctx.load()
            dec = sk.decode(snap.data)
            if dec is None:
                return
            st, rec = dec
            if st.status in FINAL_STATUSES:
                return
            old = sk.engine_keys(snap.data)
            st.status = "failed"
            st.errors.append(
                ErrorRecord(message=reason, name="FlowcraftError", execution_id=run_id).to_wire()
            )
            new = sk.encode(st, {**rec, "updatedAt": time.time()})
            if await ctx.commit(sk.diff(old, new), snap.version):
                await self._finalize(ctx, st, rec)
                return

    async def _finalize(
        self, ctx: DistributedContext, state: RunState, rec: Mapping[str, Any]
    ) -> None:
        """Publish a final run, tell its parent run (a subflow), then mark it finalized (in
        the coordination store: the run record keeps one commit per node)."""
        await self._publish(state.execution_id, ctx)
        parent = rec.get("parent")
        if isinstance(parent, Mapping):
            await self._child_finished(parent, state.execution_id)
        await self.coordination.set_if_not_exist(
            self._final_key(state.execution_id), self.worker_id, self.final_marker_ttl
        )

    @staticmethod
    def _final_key(run_id: str) -> str:
        return f"flowcraft:finalized:{run_id}"

    async def _ensure_finalized(
        self,
        ctx: DistributedContext,
        state: RunState,
        rec: Mapping[str, Any],
        job: JobPayload | None,
    ) -> None:
        """Repair a final run whose finalizing worker died between its final commit and the
        publish: once a lease's time has passed since that commit, finalize it here (a job
        seeing it earlier asks to be redelivered then; ``reconcile`` just leaves it)."""
        if await self.coordination.get(self._final_key(state.execution_id)) is not None:
            return
        age = time.time() - float(rec.get("updatedAt") or 0.0)
        if age < self.lease_seconds:
            if job is not None:
                raise RetryJob(
                    job.model_copy(update={"requeues": job.requeues + 1}),
                    self.lease_seconds - age + 0.01,
                    "run is final; its result may still be being published",
                )
            return
        await self._finalize(ctx, state, rec)

    async def _publish(self, run_id: str, ctx: DistributedContext) -> None:
        res = await self.get_result(run_id)
        await self.publish_final_result(run_id, res.to_dict())

    # -- subflows --------------------------------------------------------------------------------

    async def _start_child(
        self, run: _Run, act: Activation, node: NodeDefinition, node_input: Any
    ) -> tuple[int, Any]:
        child_bp, initial, start_input = self.runtime._subflow_start(run, node, node_input)
        child_id = f"{run.state.execution_id}/{node.id}@{act.iteration}"
        parent = {"runId": run.state.execution_id, "nodeId": node.id, "iteration": act.iteration}
        try:
            await self.start_run(
                child_bp, initial, run_id=child_id, parent=parent, start_input=start_input
            )
        except FlowcraftError as exc:
            if "already exists" not in exc.message:
                raise  # a redelivered parent job: the child was started before
        return (_AWAIT, {"reason": "subflow", "blueprintId": child_bp, "childRunId": child_id})

    async def _child_finished(self, parent: Mapping[str, Any], child_id: str) -> None:
        child = await self.get_result(child_id)
        pctx = await self.create_context(parent["runId"])
        view = await self._view(pctx, parent["runId"])
        if view is None:
            return
        st = view.state
        bp = self._blueprint(st.blueprint_id)
        if bp is None:
            return
        plan, _ = self.runtime.prepare(bp)
        node = plan.nodes[parent["nodeId"]]
        act = Activation(node.id, None, NODE, iteration=int(parent.get("iteration", 0)))
        if child.status != "completed":
            first = child.errors[0].message if child.errors else child.status
            rec = ErrorRecord(
                message=f"subflow {child.blueprint_id!r} of node {node.id!r} ended "
                f"{child.status}: {first}",
                name="FlowcraftError",
                node_id=node.id,
                execution_id=st.execution_id,
            ).to_wire()
            outcome: tuple[int, Any] = (_ERR, rec)
            deltas: dict[str, PatchOperation] = {}
        else:
            tmp = _Run(plan, view.exec_state(node.id), SnapshotContext(view.data), {}, None, 1, {})
            tmp.deltas = {}
            out = self.runtime._subflow_output(tmp, node, child)
            outcome = (_OUTCOME_RESUME, NodeResult(out))
            deltas = tmp.deltas
        await self._commit_outcome(pctx, view, plan, act, outcome, deltas, None, child=True)

    # -- recovery --------------------------------------------------------------------------------

    async def reconcile(self, run_id: str) -> list[str]:
        """Re-enqueue queued work of a run that no worker holds a lease on; returns job node ids.

        Safe at any time: a job that is in fact still queued is simply delivered twice, and the
        second delivery is dropped by the run state. Never touches untaken branches: only nodes
        the kernel activated (status ``queued``) and due timers are considered.
        """
        ctx = await self.create_context(run_id)
        snap = await ctx.load()
        dec = sk.decode(snap.data)
        if dec is None:
            return []
        st, rec = dec
        if st.status in FINAL_STATUSES:
            await self._ensure_finalized(ctx, st, rec, None)
            return []
        bp = self._blueprint(st.blueprint_id)
        if bp is None:
            return []
        plan, _ = self.runtime.prepare(bp)
        acts: list[Activation] = []
        for nid, ns in st.nodes.items():
            if ns.status == "queued":
                acts.append(Activation(nid, None, NODE, iteration=ns.iteration))
            bs = st.batches.get(nid)
            if bs is not None and ns.status == "running":
                for i, s in enumerate(bs.item_status):
                    if s in ("queued", "running", "pending") and i < bs.released:
                        acts.append(Activation(nid, None, ITEM, index=i, iteration=ns.iteration))
        now = time.time()
        for nid, d in st.awaiting.items():
            if d.get("reason") == "timer" and (
                datetime.fromisoformat(d["wakeUpAt"]).timestamp() < now - self.lease_seconds
            ):
                await self._schedule_timer(plan, st, nid)  # an overdue timer job was lost
        lost = []
        for a in acts:
            key = self._lease_key(run_id, a.job_node_id, a.iteration)
            if not await self._lease_held(run_id, key):
                lost.append(a)
        await self._enqueue_activations(plan, st, lost)
        return [a.job_node_id for a in lost]

    async def reconcile_all(
        self, stale_after: float = 60.0, page_size: int = 100
    ) -> dict[str, int]:
        """Reconcile every non-final run whose last progress is older than ``stale_after`` s,
        paging through :meth:`list_active_runs`. Returns counts."""
        cursor: str | None = None
        scanned = reconciled = enqueued = 0
        now = time.time()
        while True:
            ids, cursor = await self.list_active_runs(cursor, page_size)
            for rid in ids:
                scanned += 1
                try:
                    st = await self.status(rid)
                except KeyError:
                    continue
                if st.status in FINAL_STATUSES:
                    continue
                if st.updated_at is not None and now - st.updated_at < stale_after:
                    continue
                n = len(await self.reconcile(rid))
                reconciled += 1 if n else 0
                enqueued += n
            if cursor is None:
                break
        return {"scanned": scanned, "reconciled": reconciled, "enqueued": enqueued}


__all__ = ["BaseDistributedAdapter", "RetryJob", "RunStatus", "is_fatal"]
