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
import logging
import time
import uuid
from abc import ABC, abstractmethod
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
        self.fault_hook: Callable[[str, JobPayload | None], Awaitable[None] | None] | None = None

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
        snap = await ctx.load()
        dec = sk.decode(snap.data)
        if dec is None:
            raise KeyError(f"no run {run_id!r}")
        st, _ = dec
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
            ctx, snap, plan, act, (_OUTCOME_RESUME, NodeResult(output, action)), {}, None
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
        if job.kind == "timer":
            await self._process(job, None)
            return
        # Take the node's lease BEFORE reading the run: a delivery that read the run before
        # another delivery's commit could otherwise execute the node a second time.
        lease_key = self._lease_key(job.run_id, job.node_id, job.iteration)
        token = f"{self.worker_id}:{uuid.uuid4().hex[:8]}"
        if not await self.coordination.set_if_not_exist(lease_key, token, self.lease_seconds):
            # Someone is executing this node right now; look again after their lease.
            raise RetryJob(
                job.model_copy(update={"requeues": job.requeues + 1}),
                self.lease_seconds / 2,
                "node is leased by another worker",
            )
        crashed = False
        try:
            ran = await self._process(job, lease_key)
        except SimulatedCrash:
            crashed = True  # a dead process releases nothing: the lease must expire
            raise
        finally:
            if not crashed:
                await delete_if_equals(self.coordination, lease_key, token)
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

    @staticmethod
    def _lease_key(run_id: str, job_node_id: str, iteration: int) -> str:
        return f"flowcraft:lease:{run_id}:{job_node_id}:{iteration}"

    async def _process(self, job: JobPayload, lease_key: str | None) -> bool:
        """Load the run and act on ``job``; True when a node was executed."""
        ctx = await self.create_context(job.run_id)
        snap = await ctx.load()
        dec = sk.decode(snap.data)
        if dec is None:
            raise InvalidJobError(f"job for unknown run {job.run_id!r}")
        state, rec = dec
        if state.status in FINAL_STATUSES:
            await self._ensure_finalized(ctx, state, rec, job)
            return False
        if job.blueprint_id != state.blueprint_id:
            raise InvalidJobError(
                f"job names blueprint {job.blueprint_id!r} but run {job.run_id!r} is of "
                f"blueprint {state.blueprint_id!r}"
            )
        bp = self._blueprint(job.blueprint_id)
        if bp is None or bp.version != state.blueprint_version:
            await self._wrong_version(ctx, job, bp, state)
            return False
        plan, _ = self.runtime.prepare(bp)
        if job.kind == "timer":
            await self._timer(ctx, snap, plan, state, job)
            return False
        base, index = _split_job_node(job.node_id)
        ns = state.nodes.get(base)
        if ns is None:
            raise InvalidJobError(f"job for unknown node {job.node_id!r} of {bp.id!r}")
        if job.iteration != ns.iteration:
            return False  # a job of a finished loop iteration
        act = self._activation(plan, state, base, index)
        if act is None or lease_key is None:
            await self._republish(plan, state, base)
            return False
        await self._run_job(ctx, snap, plan, state, job, act, lease_key)
        return True

    def _activation(
        self, plan: Plan, state: RunState, node_id: str, index: int
    ) -> Activation | None:
        ns = state.nodes[node_id]
        kernel = Kernel(plan, state, {})
        if index >= 0:
            bs = state.batches.get(node_id)
            if bs is None or ns.status != "running" or index >= len(bs.items):
                return None
            if bs.item_status[index] not in ("queued", "running", "pending"):
                return None
            return Activation(node_id, bs.items[index], ITEM, index=index, iteration=ns.iteration)
        if ns.status not in ("queued", "running") or node_id in state.batches:
            return None
        owner = state.fallbacks.get(node_id)
        if owner is not None:
            return Activation(
                node_id,
                kernel.input_for(node_id),
                FALLBACK,
                owner=owner,
                error=state.nodes[owner].error,
                iteration=ns.iteration,
            )
        return Activation(node_id, kernel.input_for(node_id), NODE, iteration=ns.iteration)

    async def _run_job(
        self,
        ctx: DistributedContext,
        snap: Snapshot,
        plan: Plan,
        state: RunState,
        job: JobPayload,
        act: Activation,
        lease_key: str,
    ) -> None:
        """Execute ``act`` under the lease ``lease_key`` (held by the caller) and commit."""
        node = plan.nodes[act.node_id]
        queue_mode = not self.should_retry_in_process(node)
        rt = self.runtime
        run = _Run(
            plan,
            state,
            InMemoryContext(sk.user_context(snap.data)),
            rt.registry,
            rt.event_bus,
            1,
            rt.dependencies,
        )
        run.deltas = {}
        if queue_mode:
            run.attempt_window = (job.attempt, job.attempt)
        task = asyncio.current_task()
        beat = asyncio.create_task(self._heartbeat(ctx, job, lease_key, task))
        try:
            await self._fault("before_execute", job)
            run.kernel.on_started(act)
            outcome = await rt._execute(run, act)
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
            await self._commit_outcome(ctx, snap, plan, act, outcome, deltas, job)
        finally:
            beat.cancel()

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
    ) -> None:
        interval = max(self.lease_seconds / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.coordination.extend_ttl(lease_key, self.lease_seconds)
                await self.extend_job_lease(job)
                rec = await ctx.get(sk.RUN_KEY)
                # A final run (cancelled, or failed by another branch: A5) discards this
                # node's outcome anyway, so stop the node now.
                if isinstance(rec, Mapping) and rec.get("status") in FINAL_STATUSES and task:
                    task.cancel()
                    return
            except Exception:
                log.exception("heartbeat for %s failed", lease_key)

    async def _commit_outcome(
        self,
        ctx: DistributedContext,
        snap: Snapshot,
        plan: Plan,
        act: Activation,
        outcome: tuple[int, Any],
        deltas: Mapping[str, PatchOperation],
        job: JobPayload | None,
        *,
        child: bool = False,
    ) -> None:
        """Apply ``outcome`` with the kernel and commit it atomically (CAS with reload).

        ``child``: the outcome of a subflow node's child run, which may arrive before the
        parent's own job committed the node as awaiting the child."""
        rt = self.runtime
        for _ in range(_MAX_CAS):
            dec = sk.decode(snap.data)
            if dec is None:
                return
            state, rec = dec
            if state.status in FINAL_STATUSES or not self._still_expected(
                state, act, outcome, child
            ):
                return  # another delivery committed it first: exactly-once commit
            if child:
                state.awaiting.pop(act.node_id, None)
            data = sk.user_context(snap.data)
            apply_ops(data, deltas.values())
            kernel = Kernel(plan, state, data, collect_ops=True)
            run = _Run(plan, state, InMemoryContext(data), rt.registry, None, 1, rt.dependencies)
            run.kernel = kernel
            kernel.on_started(act)
            if outcome[0] == _OUTCOME_RESUME:
                res: NodeResult = outcome[1]
                acts = kernel.resume(act.node_id, res.output, res.action)
            else:
                acts = rt._apply(run, act, outcome)
            final = self._settle(state)
            await self._fault("before_commit", job)
            new = sk.encode(state, {**rec, "updatedAt": time.time()})
            ops = list(deltas.values()) + kernel.ops + sk.diff(sk.engine_keys(snap.data), new)
            if await ctx.commit(ops, snap.version):
                await self._fault("after_commit", job)
                await self._enqueue_activations(plan, state, acts, job)
                if outcome[0] == _AWAIT and outcome[1].get("reason") == "timer":
                    await self._schedule_timer(plan, state, act.node_id)
                if final:
                    await self._finalize(ctx, state, rec)
                return
            snap = await ctx.load()
        raise FlowcraftError(f"could not commit node {act.node_id!r}: too much contention")

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

    def _settle(self, state: RunState) -> bool:
        """Set the run status after a transition; True when it just became final."""
        if state.errors:
            state.status = "failed"
            return True
        busy = any(ns.status in ("queued", "running") for ns in state.nodes.values())
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

    async def _enqueue_activations(
        self,
        plan: Plan,
        state: RunState,
        acts: Sequence[Activation],
        cause: JobPayload | None = None,
    ) -> None:
        bp = plan.blueprint
        first = True
        for a in acts:
            if not first:
                await self._fault("between_enqueues", cause)
            first = False
            node = plan.nodes[a.node_id]
            queue_mode = not self.should_retry_in_process(node)
            job = JobPayload(
                run_id=state.execution_id,
                blueprint_id=bp.id,
                node_id=a.job_node_id,
                iteration=a.iteration,
                blueprint_version=bp.version,
                attempt=1,
                is_last_attempt=(node.config.max_retries <= 1) if queue_mode else None,
            )
            opts = self.get_queue_retry_options(node) if queue_mode else None
            await self.enqueue_job(job, options=opts)
            await self._emit(
                "job:enqueued",
                {"runId": state.execution_id, "blueprintId": bp.id, "nodeId": job.node_id},
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
        self,
        ctx: DistributedContext,
        snap: Snapshot,
        plan: Plan,
        state: RunState,
        job: JobPayload,
    ) -> None:
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
        await self._commit_outcome(ctx, snap, plan, act, (_OUTCOME_RESUME, out), {}, job)

    async def _republish(self, plan: Plan, state: RunState, node_id: str) -> None:
        """Re-enqueue the queued work a finished node made ready (idempotent)."""
        acts: list[Activation] = []
        targets = {e.target for e in plan.out_edges[node_id]}
        owner_fb = plan.nodes[node_id].config.fallback
        if owner_fb:
            targets.add(owner_fb)
        for t in targets:
            ns = state.nodes.get(t)
            if ns is not None and ns.status == "queued":
                acts.append(Activation(t, None, NODE, iteration=ns.iteration))
        bs = state.batches.get(node_id)
        if bs is not None:
            it = state.nodes[node_id].iteration
            for i, s in enumerate(bs.item_status):
                if s in ("queued", "running"):
                    acts.append(Activation(node_id, None, ITEM, index=i, iteration=it))
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
        snap = await pctx.load()
        dec = sk.decode(snap.data)
        if dec is None:
            return
        st, _ = dec
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
            tmp = _Run(plan, st, InMemoryContext(sk.user_context(snap.data)), {}, None, 1, {})
            tmp.deltas = {}
            out = self.runtime._subflow_output(tmp, node, child)
            outcome = (_OUTCOME_RESUME, NodeResult(out))
            deltas = tmp.deltas
        await self._commit_outcome(pctx, snap, plan, act, outcome, deltas, None, child=True)

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
            if await self.coordination.get(key) is None:
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
