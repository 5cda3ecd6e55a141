"""The worker side: deliveries in, node executions, heartbeats and timers.

:meth:`WorkerLayer.handle_job` runs one delivered job; :meth:`WorkerLayer.process_delivery`
decides what happens to the message (see :mod:`.delivery`) and settles it with the adapter's
primitives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..context import PatchOperation
from ..executor import retry_delay
from ..kernel import NODE, Activation
from ..nodes import NodeResult
from ..plan import Plan
from ..state import FINAL_STATUSES
from ..step import ERR, RunFrame
from ..webhooks import rearmed, timeout_record
from . import statekeys as sk
from .commit import _OUTCOME_EXPIRE, _OUTCOME_REARM, _OUTCOME_RESUME, _Next
from .contracts import (
    DistributedContext,
    InvalidJobError,
    JobPayload,
    SimulatedCrash,
)
from .delivery import Decision, Delivery, Disposition, JobHandler, RetryJob, decide
from .leases import _Lease, _LeaseHeld
from .recovery import RecoveryLayer
from .view import RunView, SnapshotContext

log = logging.getLogger("flowcraft.distributed")


def _split_job_node(node_id: str, nodes: Mapping[str, Any]) -> tuple[str, int]:
    """(node id, batch item index or -1) of a job's ``nodeId``: ``scatter[i]`` is item ``i`` of
    batch node ``scatter``, unless the blueprint has a node literally named so (a valid id
    like ``retry[2]``; upstream blueprints may have them)."""
    if node_id.endswith("]") and node_id not in nodes:
        base, _, idx = node_id[:-1].rpartition("[")
        if idx.isascii() and idx.isdigit() and len(idx) <= 9 and base in nodes:
            return base, int(idx)
    return node_id, -1


class WorkerLayer(RecoveryLayer):
    """See the module docstring."""

    async def handle_job(
        self,
        job: JobPayload | str | bytes | dict[str, Any],
        delivery: Delivery | None = None,
    ) -> None:
        """Process one delivery of a job. Safe to call any number of times for the same job.

        ``delivery`` is the message it came in (its lease is extended by the heartbeat while
        nodes run, through :meth:`extend_delivery`). Raises :class:`InvalidJobError` for a
        malformed payload, :class:`RetryJob` to ask for a later redelivery; any other
        exception means "not processed, redeliver". Adapters call :meth:`process_delivery`,
        which turns all of that into a :class:`~flowcraft.distributed.delivery.Decision`.
        """
        if not isinstance(job, JobPayload):
            job = JobPayload.parse(job)
        t0 = time.perf_counter()
        await self.on_job_start(job)
        await self._fault("after_receive", job)
        ctx = await self.create_context(job.run_id)
        if job.kind == "timer":
            await self._process(ctx, job, None, delivery=delivery)
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
                    ran, nxt = await self._process(ctx, job, lease, budget, delivery)
                else:
                    ran = True
                    nxt = await self._run_job(
                        ctx, step.view, step.plan, job, step.act, lease, budget, delivery
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

    async def _process(
        self,
        ctx: DistributedContext,
        job: JobPayload,
        lease: _Lease | None,
        budget: int = 0,
        delivery: Delivery | None = None,
    ) -> tuple[bool, _Next | None]:
        """Load the run and act on ``job``: (whether a node was executed, the successor to run
        inline next)."""
        # Only a redelivered message (or a requeue of one) may be the one whose worker died
        # between its commit and the enqueue of the work it made ready; a first delivery is
        # a duplicate, and recovering from it would multiply duplicates.
        recovering = bool(job.recover) or delivery is None or delivery.deliveries > 1
        try:
            view = await self._view(ctx, job.run_id, lease)
        except _LeaseHeld:
            # Someone holds the node's lease: look again after it (see _sends_on_copy).
            assert lease is not None
            if job.requeues >= self.delivery_policy.max_deliveries or not (
                await self._sends_on_copy(ctx, job, lease, recovering, delivery)
            ):
                log.info("dropping job %s: node leased elsewhere", job.job_id)
                return False, None
            raise RetryJob(
                job.model_copy(
                    update={"requeues": job.requeues + 1, "recover": recovering or None}
                ),
                min(self.lease_seconds / 2 * 2**job.requeues, self.lease_seconds * 4),
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
        base, index = _split_job_node(job.node_id, plan.nodes)
        ns = state.nodes.get(base)
        if ns is None:
            raise InvalidJobError(f"job for unknown node {job.node_id!r} of {bp.id!r}")
        if job.iteration != ns.iteration:
            return False, None  # a job of a finished loop iteration
        act = self._activation(plan, state, base, index)
        if act is None or lease is None:
            # The node is done. Only a redelivery of a message may be the one whose worker
            # died between the commit and the enqueue of the work it made ready; a first
            # delivery is a duplicate, and re-publishing from it would multiply duplicates.
            if recovering:
                await self._republish(plan, state, base)
            return False, None
        return True, await self._run_job(ctx, view, plan, job, act, lease, budget, delivery)

    async def _sends_on_copy(
        self,
        ctx: DistributedContext,
        job: JobPayload,
        lease: _Lease,
        recovering: bool,
        delivery: Delivery | None,
    ) -> bool:
        """Whether this copy of ``job``, which found its node leased by another delivery, is
        requeued to look again after the lease. One copy per attempt and requeue round goes
        on; the others are dropped, so duplicates do not multiply (copies that each requeued
        would double every round).

        A plain copy is only a safeguard in case the holder dies: none once the run is final.
        A recovering copy (a redelivered message, or a requeue of one) may be the holder's
        own, back because its worker died (some brokers hand it back at once, while the dead
        worker's lease still runs), and keeps its recovery duty (re-publishing, finalizing):
        it goes on also when the run is final, one per round and delivery count, so a
        message redelivered once more (its worker died after taking the marker) still goes
        on. The marker names the attempt: a retry's job meeting a stale copy of the failed
        attempt that holds the lease for a moment must not be dropped for that attempt's
        marker, or nobody runs it. It outlives the longest requeue delay (four leases), so
        copies of one round that reach workers far apart still send on only one."""
        if recovering:
            tag = f"r{delivery.deliveries if delivery is not None else 0}"
        elif await self._is_final(ctx):
            return False
        else:
            tag = "c"
        return await self.coordination.set_if_not_exist(
            f"{lease.key}:requeue:{job.attempt}:{job.requeues}:{tag}",
            self.worker_id,
            self.lease_seconds * 5,
        )

    async def _run_job(
        self,
        ctx: DistributedContext,
        view: RunView,
        plan: Plan,
        job: JobPayload,
        act: Activation,
        lease: _Lease,
        budget: int = 0,
        delivery: Delivery | None = None,
    ) -> _Next | None:
        """Execute ``act`` under ``lease`` (held by the caller) and commit; returns the
        successor to run inline next (``budget`` > 0 allows one)."""
        node = plan.nodes[act.node_id]
        queue_mode = not self.should_retry_in_process(node)
        rt = self.runtime
        run = RunFrame(
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
                loop.create_task(self._heartbeat(ctx, delivery, lease.key, task, executing))
            ),
        )
        # A node still running after a moment also watches for its run becoming final
        # (cancelled, or failed by another branch) through the final-result source, so it
        # stops within about a second instead of at its next heartbeat.
        watch = loop.call_later(
            self.final_watch_after,
            lambda: beats.append(
                loop.create_task(self._stop_when_final(job.run_id, task, executing))
            ),
        )
        try:
            await self._fault("before_execute", job)
            run.kernel.on_started(act)
            try:
                outcome = await rt.execute_step(run, act)
            finally:
                executing[0] = False
            await run.flush()
            await self._fault("after_execute", job)
            if (
                queue_mode
                and outcome[0] == ERR
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
                    native=True,
                )
            deltas: Mapping[str, PatchOperation] = run.deltas
            return await self._commit_outcome(
                ctx, view, plan, act, outcome, deltas, job, lease=lease, inline=budget > 0
            )
        finally:
            due.cancel()
            watch.cancel()
            for b in beats:
                b.cancel()

    async def _stop_when_final(
        self, run_id: str, task: asyncio.Task[Any] | None, executing: list[bool]
    ) -> None:
        try:
            await self.final_source().wait(run_id, None)
        except Exception:
            log.debug("final watch of %s ended", run_id, exc_info=True)
            return
        if task is not None and executing[0]:
            log.info("run %s became final: stopping its running node", run_id)
            task.cancel()

    async def _is_final(self, ctx: DistributedContext) -> bool:
        rec = await ctx.get(sk.RUN_KEY)
        return isinstance(rec, Mapping) and rec.get("status") in FINAL_STATUSES

    async def _heartbeat(
        self,
        ctx: DistributedContext,
        delivery: Delivery | None,
        lease_key: str,
        task: asyncio.Task[Any] | None,
        executing: list[bool],
    ) -> None:
        interval = self._beat_interval()
        while True:
            try:
                await self._extend_lease(ctx, lease_key)
                if delivery is not None:
                    await self.extend_delivery(delivery)
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

    async def _timer(
        self, ctx: DistributedContext, view: RunView, plan: Plan, job: JobPayload
    ) -> None:
        state = view.state
        ns = state.nodes.get(job.node_id)
        d = state.awaiting.get(job.node_id)
        if ns is None or d is None or ns.iteration != job.iteration:
            return
        reason = d.get("reason")
        at = d.get("wakeUpAt") if reason == "timer" else None
        if reason == "webhook":
            at = d.get("timeoutAt")
        if not at:
            return
        remaining = datetime.fromisoformat(at).timestamp() - time.time()
        if remaining > 0.001:
            cap = self.capabilities.max_delay_seconds
            await self.enqueue_job(job, delay=min(remaining, cap) if cap else remaining)
            return
        act = Activation(job.node_id, None, NODE, iteration=ns.iteration)
        if reason == "webhook":  # no delivery before its timeout: wait again, or fail
            again = rearmed(state.execution_id, plan.nodes[job.node_id], d)
            if again is not None:
                await self._commit_outcome(ctx, view, plan, act, (_OUTCOME_REARM, again), {}, job)
                return
            rec = timeout_record(job.node_id, state.execution_id, d)
            await self._commit_outcome(ctx, view, plan, act, (_OUTCOME_EXPIRE, rec), {}, job)
            return
        out = NodeResult(d.get("input"), None)
        await self._commit_outcome(ctx, view, plan, act, (_OUTCOME_RESUME, out), {}, job)

    # -- deliveries ------------------------------------------------------------------------

    async def start(self) -> None:
        """Consume jobs until :meth:`stop`: ``process_jobs(handle_job)``."""
        await self.process_jobs(self.handle_job)

    async def process_delivery(
        self, delivery: Delivery, handler: JobHandler | None = None
    ) -> Decision:
        """Handle one received message end to end: decide (:func:`~flowcraft.distributed.
        delivery.decide`) and :meth:`settle`, keeping it hidden meanwhile when the adapter
        has a :meth:`delivery_lease_seconds` (:mod:`.keepalive`). Returns the decision. On
        shutdown mid-job the message is given back and the cancellation propagates."""
        t0 = time.perf_counter() if log.isEnabledFor(logging.INFO) else 0.0
        with self._keeper.tracking(delivery, self.delivery_lease_seconds()):
            decision = await decide(self, delivery, handler)
            await self.settle(delivery, decision)
        if t0:
            _log_job(delivery, decision, time.perf_counter() - t0)
        if decision.disposition is Disposition.ABANDON:
            raise asyncio.CancelledError()
        return decision

    async def settle(self, delivery: Delivery, decision: Decision) -> None:
        """Map ``decision`` onto the broker with :meth:`ack`, :meth:`redeliver`,
        :meth:`dead_letter` and :meth:`enqueue_job`. Adapters whose broker does some of this
        natively (a retry as a redelivery of the same message) override this and call
        ``super().settle`` for the rest."""
        kind = decision.disposition
        if kind is Disposition.ACK:
            await self.ack(delivery)
        elif kind is Disposition.RETRY:
            assert decision.job is not None
            await self.enqueue_job(decision.job, delay=decision.delay)
            await self.ack(delivery)
        elif kind is Disposition.REDELIVER:
            await self.redeliver(delivery, decision.delay)
        elif kind is Disposition.DEAD_LETTER:
            log.error("dead-lettering message: %s", decision.reason)
            await self.dead_letter(delivery, decision.reason)
        else:
            await self.redeliver(delivery, 0.0)
        delivery.settled = True

    async def ack(self, delivery: Delivery) -> None:
        """Delete a handled message from the queue (adapters using :meth:`settle` implement
        this)."""
        raise NotImplementedError(f"{type(self).__name__} must implement ack(delivery)")

    async def redeliver(self, delivery: Delivery, delay: float) -> None:
        """Make a message visible again after ``delay`` seconds (adapters using
        :meth:`settle` implement this)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement redeliver(delivery, delay)"
        )

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a message that can never succeed to the dead-letter store with ``reason`` and
        remove it from the queue (adapters using :meth:`settle` implement this)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement dead_letter(delivery, reason)"
        )


def _log_job(delivery: Delivery, decision: Decision, seconds: float) -> None:
    """One INFO line per handled message (``flowcraft worker -v``): run, node, attempt,
    outcome and duration."""
    try:
        job = JobPayload.parse(delivery.body)
    except Exception:
        log.info("message: %s (%s)", decision.disposition.name.lower(), decision.reason)
        return
    outcome = decision.disposition.name.lower()
    if decision.reason:
        outcome += f" ({decision.reason})"
    log.info(
        "job run=%s node=%s attempt=%d: %s in %.1f ms",
        job.run_id,
        job.node_id,
        job.attempt,
        outcome,
        seconds * 1000,
    )
