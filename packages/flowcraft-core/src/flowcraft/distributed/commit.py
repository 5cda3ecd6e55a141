"""Applying a node's outcome with the kernel and committing it atomically.

Outcomes of one run that finish together in one worker share one conditional commit (group
commit); a lost compare-and-set refreshes the view and re-applies. Exactly-once: an outcome
whose node another delivery committed first is dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..context import InMemoryContext, PatchOperation, apply_ops
from ..errors import ErrorRecord, FlowcraftError, ResumeError
from ..kernel import ITEM, Activation, Kernel
from ..nodes import NodeResult
from ..plan import Plan
from ..state import FINAL_STATUSES, RunState
from ..step import AWAIT, ERR, RunFrame
from . import statekeys as sk
from .base import EngineBase
from .codec import UnstorableValueError
from .contracts import (
    DistributedContext,
    JobPayload,
)
from .jobs import JobsLayer
from .leases import _Lease
from .view import Changes, RunView

log = logging.getLogger("flowcraft.distributed")

_OUTCOME_RESUME = 10
_OUTCOME_EXPIRE = 11
"""An awaiting node (a webhook past its timeout) fails with the error record it carries."""
_OUTCOME_REARM = 12
"""An awaiting webhook past its timeout waits again, on the new details it carries."""

_MAX_CAS = 1000


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
        "keys",
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
        self.keys: set[str] = set()
        """The context keys this outcome writes (to attribute a value the store refuses)."""
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


class CommitLayer(JobsLayer):
    """See the module docstring."""

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
            if outcome[0] == _OUTCOME_RESUME and job is None and not child:
                # A client's resume that lost to another (two webhook deliveries at once):
                # as in memory, resuming a node that no longer awaits is an error.
                raise ResumeError(
                    f"node {act.node_id!r} of run {view.state.execution_id!r} is no longer "
                    "awaiting (resumed or finished meanwhile)",
                    node_id=act.node_id,
                    execution_id=view.state.execution_id,
                )
            return None  # another delivery committed it first: exactly-once commit
        await self._fault("after_commit", job)
        nxt, got, acts = entry.nxt, entry.got, entry.acts
        if nxt is not None and not got:
            # An atomic store took the lease with the commit or it is held elsewhere.
            atomic = self._access(ctx).atomic
            nxt = None if atomic else await self._lease_after_commit(ctx, view, nxt)
        if nxt is not None:
            acts = [a for a in acts if a is not nxt.act]
            nxt.view = view
            nxt.act = self._activation(plan, view.state, nxt.act.node_id, nxt.act.index) or nxt.act
        state = entry.state
        assert state is not None
        await self._enqueue_activations(plan, state, acts, job)
        if outcome[0] in (AWAIT, _OUTCOME_REARM) and outcome[1].get("reason") in (
            "timer",
            "webhook",
        ):
            await self._schedule_timer(plan, state, act.node_id)
        if entry.final:
            await self._finalize(ctx, state, entry.rec)
        return nxt

    async def _commit(
        self,
        ctx: DistributedContext,
        ops: list[PatchOperation],
        view: RunView,
        group: Sequence[_Pending],
        status: str,
    ) -> tuple[bool, set[str], Changes | None]:
        """One conditional commit at ``view``'s version. Where the store can, the same
        request releases the leases of ``group`` and takes the leases of their chosen inline
        successors. Returns (committed, the keys of successor leases taken with the run
        exactly as committed, the changes since the view's version when the store returned
        them with a conflict). Without an atomic store the run may change between the commit
        and a lease, so a successor is then run inline only from a fresh read."""
        acc = self._access(ctx)
        release = [(e.lease.key, e.lease.token) for e in group if e.lease and not e.lease.released]
        take = [(e.nxt.lease.key, e.nxt.lease.token) for e in group if e.nxt is not None]
        ok, taken, changes = await acc.commit(ops, view.version, view.epoch, release, take, status)
        if not ok:
            return False, set(), changes
        if acc.atomic:
            for e in group:
                if e.lease is not None:
                    e.lease.released = True
        return True, {k for (k, _), got in zip(take, taken, strict=True) if got}, None

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
                try:
                    ok, taken, changes = await self._commit(ctx, ops, view, live, new.status)
                except UnstorableValueError as exc:
                    # A value the store refuses fails the node that wrote it (its fallback
                    # applies) instead of the job failing, and being redelivered, forever.
                    culprit = next((e for e in live if self._wrote(plan, e, exc.key)), None)
                    if culprit is None and len(live) == 1:
                        culprit = live[0]
                    if culprit is None:
                        raise
                    for e in live:
                        e.nxt = None
                    self._fail_entry(culprit, group, exc, run_id)
                    continue
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
        run = RunFrame(plan, new, InMemoryContext(), rt.registry, None, 1, rt.dependencies)
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
            start = len(kernel.ops)
            try:
                if e.child:
                    new.awaiting.pop(e.act.node_id, None)
                apply_ops(data, e.deltas.values())
                ops.extend(e.deltas.values())
                kernel.on_started(e.act)
                if e.outcome[0] == _OUTCOME_RESUME:
                    res: NodeResult = e.outcome[1]
                    e.acts = kernel.resume(e.act.node_id, res.output, res.action)
                elif e.outcome[0] == _OUTCOME_REARM:
                    kernel.on_awaiting(e.act.node_id, e.outcome[1])
                    e.acts = []
                elif e.outcome[0] == _OUTCOME_EXPIRE:
                    d = new.awaiting.pop(e.act.node_id, {})
                    failing = Activation(e.act.node_id, d.get("input"), iteration=e.act.iteration)
                    e.acts = rt.apply_outcome(run, failing, (ERR, e.outcome[1]))
                else:
                    e.acts = rt.apply_outcome(run, e.act, e.outcome)
            except Exception as exc:
                e.settle(error=exc)
                group.remove(e)
                return None
            e.keys = {*e.deltas, *(op.key for op in kernel.ops[start:])}
            reserved = sorted(k for k in e.keys if k.startswith(sk.PREFIX))
            if reserved:
                self._fail_entry(
                    e,
                    group,
                    ValueError(
                        f"context key {reserved[0]!r} is reserved: keys starting with "
                        f"{sk.PREFIX!r} hold the engine's run state; rename it (an outputKey "
                        "or a subflow's outputs, or a write made by the node)"
                    ),
                    new.execution_id,
                )
                return None
            activated |= bool(e.acts)
            live.append(e)
            self._settle(new, activated)  # a run that became final takes no more outcomes
        rec = sk.run_record(new, {**view.rec, "updatedAt": time.time()})
        engine = view.engine_ops(new, rec)
        if self.verify_views:
            self._verify_ops(view, new, rec, engine)
        return new, data, rec, live, ops + kernel.ops + engine

    @staticmethod
    def _wrote(plan: Plan, e: _Pending, key: str) -> bool:
        """Whether applying ``e`` wrote ``key``: its own writes, its node's records, or the
        input slot of a node its outcome feeds (an edge transform's result)."""
        if key in e.keys:
            return True
        node = e.act.node_id
        if key in (sk.NODE_PREFIX + node, sk.BATCH_PREFIX + node):
            return True
        if key.startswith(sk.IN_PREFIX):
            target = key[len(sk.IN_PREFIX) :]
            return target == plan.nodes[node].config.fallback or any(
                ed.target == target for ed in plan.out_edges[node]
            )
        return False

    def _fail_entry(self, e: _Pending, group: list[_Pending], exc: Exception, run_id: str) -> None:
        """Turn ``e``'s outcome into a failure of its node caused by ``exc`` (retried by the
        caller with the group). A resume, or an outcome that is already a failure, cannot be
        turned into one: its caller gets ``exc``."""
        if e.outcome[0] == ERR or (e.outcome[0] == _OUTCOME_RESUME and not e.child):
            e.settle(error=exc)
            group.remove(e)
            return
        rec = ErrorRecord.from_exception(
            exc, node_id=e.act.job_node_id, execution_id=run_id
        ).to_wire()
        e.outcome = (ERR, rec)
        e.deltas = {}

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
        EngineBase.view_errors.append(msg)

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
        if outcome[0] in (_OUTCOME_RESUME, _OUTCOME_EXPIRE, _OUTCOME_REARM):
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
