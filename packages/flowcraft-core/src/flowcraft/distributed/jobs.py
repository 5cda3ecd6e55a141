"""Turning activations into queue jobs: payloads, (bulk) enqueueing, durable timers, and
re-publishing the queued work a finished node made ready."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from ..kernel import FALLBACK, ITEM, NODE, Activation, Kernel
from ..plan import Plan
from ..state import RunState
from .contracts import (
    JobPayload,
)
from .leases import LeaseLayer
from .view import clone

log = logging.getLogger("flowcraft.distributed")


class JobsLayer(LeaseLayer):
    """See the module docstring."""

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
        bulk = type(self).enqueue_jobs is not JobsLayer.enqueue_jobs
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
        if d is None:
            return
        # A sleep wakes at wakeUpAt; a webhook with a timeout fails at timeoutAt.
        at = d.get("wakeUpAt") if d.get("reason") == "timer" else None
        if d.get("reason") == "webhook":
            at = d.get("timeoutAt")
        if not at:
            return
        wake = datetime.fromisoformat(at).timestamp()
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
