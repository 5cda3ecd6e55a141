"""Ending runs and repairing them: finalizing (publish, parent notification), failing a run,
child runs of subflow nodes, and reconciling work that was lost with a crashed worker."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..blueprint import NodeDefinition, WorkflowBlueprint
from ..context import PatchOperation
from ..errors import ErrorRecord, FlowcraftError
from ..kernel import ITEM, NODE, Activation, Kernel
from ..nodes import NodeResult
from ..state import FINAL_STATUSES, RunState
from ..step import AWAIT, ERR, RunFrame
from . import statekeys as sk
from .commit import _OUTCOME_RESUME, CommitLayer
from .contracts import (
    DistributedContext,
    JobPayload,
)
from .delivery import RetryJob
from .view import SnapshotContext, clone

log = logging.getLogger("flowcraft.distributed")


class RecoveryLayer(CommitLayer):
    """See the module docstring."""

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
            if await ctx.commit(sk.diff(old, new), snap.version, st.status):
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
            if job is not None:  # the copy now carries the duty to finalize: ``recover``
                raise RetryJob(
                    job.model_copy(update={"requeues": job.requeues + 1, "recover": True}),
                    self.lease_seconds - age + 0.01,
                    "run is final; its result may still be being published",
                )
            return
        await self._finalize(ctx, state, rec)

    async def _start_child(
        self, run: RunFrame, act: Activation, node: NodeDefinition, node_input: Any
    ) -> tuple[int, Any]:
        child_bp, initial, start_input = self.runtime.subflow_start(run, node, node_input)
        child_id = f"{run.state.execution_id}/{node.id}@{act.iteration}"
        parent = {"runId": run.state.execution_id, "nodeId": node.id, "iteration": act.iteration}
        try:
            await self.start_run(
                child_bp, initial, run_id=child_id, parent=parent, start_input=start_input
            )
        except FlowcraftError as exc:
            if "already exists" not in exc.message:
                raise  # a redelivered parent job: the child was started before
        return (AWAIT, {"reason": "subflow", "blueprintId": child_bp, "childRunId": child_id})

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
        # The node's delivered input: what its fallback receives if the child failed.
        node_input = clone(Kernel(plan, st, {}).input_for(node.id))
        act = Activation(node.id, node_input, NODE, iteration=int(parent.get("iteration", 0)))
        if child.status != "completed":
            first = child.errors[0].message if child.errors else child.status
            rec = ErrorRecord(
                message=f"subflow {child.blueprint_id!r} of node {node.id!r} ended "
                f"{child.status}: {first}",
                name="FlowcraftError",
                node_id=node.id,
                execution_id=st.execution_id,
            ).to_wire()
            outcome: tuple[int, Any] = (ERR, rec)
            deltas: dict[str, PatchOperation] = {}
        else:
            tmp = RunFrame(
                plan, view.exec_state(node.id), SnapshotContext(view.data), {}, None, 1, {}
            )
            tmp.deltas = {}
            out = self.runtime.subflow_output(tmp, node, child)
            outcome = (_OUTCOME_RESUME, NodeResult(out))
            deltas = tmp.deltas
        await self._commit_outcome(pctx, view, plan, act, outcome, deltas, None, child=True)

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
