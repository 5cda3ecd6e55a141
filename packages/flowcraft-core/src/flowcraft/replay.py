"""Replay and time travel over recorded events (from an event store or a recorder).

* :func:`replay` rebuilds what a run ended with — final context, per-node statuses, errors,
  awaiting nodes and the true final status — from its events alone, without running any code.
* :func:`replay_from` runs a blueprint again starting *at* one node: everything the recorded
  run did outside that node and its descendants is taken from the events (outputs, context
  writes, failures, awaits), so ancestors are not executed again; the node and everything
  downstream of it run for real.

Upstream's ``replay`` always reported ``completed`` and credited a fallback's output to the
failed node only, and ``replayFrom`` simply started a new run that re-executed every ancestor
(bug B16). Here the status comes from ``workflow:finish``, a recovered node and its fallback
both hold the output (as in the live run), and ancestors are served from history.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .blueprint import NodeDefinition, WorkflowBlueprint, load_blueprint
from .builtins import BATCH_SCATTER, LOOP_CONTROLLER
from .errors import BlueprintValidationError, ErrorRecord
from .events import FlowcraftEvent
from .expressions import Evaluator, SafeEvaluator
from .kernel import Activation
from .nodes import NodeImplementation, NodeResult
from .plan import get_plan
from .runtime import WorkflowResult
from .state import NodeState, NodeStatus, RunState, WorkflowStatus, output_key
from .step import ServedOutcome

if TYPE_CHECKING:
    import asyncio

    from .runtime import FlowRuntime

__all__ = ["NodeTiming", "node_timings", "replay", "replay_from", "select_execution"]

_ITEM = re.compile(r"^(.*)\[(\d+)\]$")
_FINAL: frozenset[str] = frozenset(
    {"completed", "failed", "awaiting", "stalled", "cancelled", "running"}
)


def select_execution(
    events: Iterable[FlowcraftEvent],
    execution_id: str | None = None,
    blueprint_id: str | None = None,
) -> list[FlowcraftEvent]:
    """The events of one execution, in the given order.

    Without ``execution_id``: the execution of the first ``workflow:start`` (of
    ``blueprint_id`` when given), else of the first event. Events of other executions (for
    example subflow children, recorded on the same bus) are left out.
    """
    evs = list(events)
    if execution_id is None:
        starts = [
            e
            for e in evs
            if e.type == "workflow:start"
            and (blueprint_id is None or e.blueprint_id == blueprint_id)
        ]
        if starts:
            execution_id = starts[0].execution_id
        elif evs:
            execution_id = evs[0].execution_id
        else:
            return []
    return [e for e in evs if e.execution_id == execution_id]


def _load(
    blueprint: WorkflowBlueprint | Mapping[str, Any] | str | None,
) -> WorkflowBlueprint | None:
    return None if blueprint is None else load_blueprint(blueprint)


def _loop_bodies(
    bp: WorkflowBlueprint | None, evaluator: Evaluator | None
) -> dict[str, frozenset[str]]:
    if bp is None or not any(n.uses == LOOP_CONTROLLER for n in bp.nodes):
        return {}
    try:
        return dict(get_plan(bp, evaluator or SafeEvaluator()).loop_bodies)
    except BlueprintValidationError:
        return {}


class _Fold:
    """Applies events one by one to a model of the run (context, statuses, errors)."""

    def __init__(self, bp: WorkflowBlueprint | None, evaluator: Evaluator | None) -> None:
        self.bp = bp
        self.known: dict[str, NodeDefinition] = {n.id: n for n in bp.nodes} if bp else {}
        self.loop_bodies = _loop_bodies(bp, evaluator)
        self.ctx: dict[str, Any] = {}
        self.statuses: dict[str, NodeStatus] = {n: "pending" for n in self.known}
        self.awaiting: dict[str, dict[str, Any]] = {}
        self.fallback_owner: dict[str, str] = {}
        # node -> what its latest completion changed: (owner or None, [(key, had, previous)])
        self.undo: dict[str, tuple[str | None, list[tuple[str, bool, Any]]]] = {}
        self.node_errors: dict[str, dict[str, Any]] = {}
        self.status: WorkflowStatus = "running"
        self.finished = False
        self.errors: list[dict[str, Any]] = []
        self.execution_id = ""
        self.blueprint_id = bp.id if bp is not None else ""
        self.seq = 0
        self.started = False

    # -- helpers -------------------------------------------------------------------------

    def _is_item(self, node_id: str) -> str | None:
        """The scatter node id when ``node_id`` names a batch item (``scatter[3]``)."""
        if node_id in self.known or (self.bp is None and node_id in self.statuses):
            return None
        m = _ITEM.match(node_id)
        if m is None:
            return None
        base = m.group(1)
        if base in self.known or (self.bp is None and base in self.statuses):
            return base
        return None

    def _set_output(self, node_id: str, value: Any, changes: list[tuple[str, bool, Any]]) -> None:
        key = output_key(node_id)
        changes.append((key, key in self.ctx, self.ctx.get(key)))
        self.ctx[key] = value

    def _complete(self, node_id: str, output: Any, action: str | None) -> None:
        changes: list[tuple[str, bool, Any]] = []
        self._set_output(node_id, output, changes)
        self.statuses[node_id] = "completed"
        self.awaiting.pop(node_id, None)
        owner = self.fallback_owner.pop(node_id, None)
        if owner is not None:
            self._set_output(owner, output, changes)
            self.statuses[owner] = "recovered"
        self.undo[node_id] = (owner, changes)
        if action == "continue" and node_id in self.loop_bodies:
            for n in self.loop_bodies[node_id]:
                self.statuses[n] = "pending"
                self.awaiting.pop(n, None)

    def _fail(self, node_id: str, error: Any) -> None:
        undone = self.undo.pop(node_id, None)
        if undone is not None:
            # Routing after the completion failed (an edge expression raised): the live run
            # never stored the output, nor recovered the owner of a fallback.
            owner, changes = undone
            for key, had, prev in reversed(changes):
                if had:
                    self.ctx[key] = prev
                else:
                    self.ctx.pop(key, None)
            if owner is not None:
                self.statuses[owner] = "failed"
        owner = self.fallback_owner.pop(node_id, None)
        if owner is not None:
            self.statuses[owner] = "failed"
        self.statuses[node_id] = "failed"
        if isinstance(error, dict):
            self.node_errors[node_id] = error

    # -- events ----------------------------------------------------------------------------

    def apply(self, ev: FlowcraftEvent) -> None:
        t = ev.type
        p = ev.payload
        self.seq = max(self.seq, ev.seq)
        if not self.execution_id:
            self.execution_id = ev.execution_id
        if not self.blueprint_id:
            self.blueprint_id = ev.blueprint_id
        if t == "context:change":
            key = p.get("key")
            if isinstance(key, str):
                if p.get("op") == "delete":
                    self.ctx.pop(key, None)
                else:
                    self.ctx[key] = p.get("value")
            return
        node_id = p.get("nodeId")
        if t.startswith("node:") and isinstance(node_id, str):
            scatter = self._is_item(node_id)
            if scatter is not None:
                if t == "node:error" and self._item_failure_fails_batch(scatter):
                    self.statuses[scatter] = "failed"
                return
            if t == "node:start":
                self.statuses[node_id] = "running"
                self.undo.pop(node_id, None)
            elif t == "node:finish":
                result = p.get("result")
                result = result if isinstance(result, Mapping) else {}
                action = result.get("action")
                self._complete(
                    node_id, result.get("output"), action if isinstance(action, str) else None
                )
            elif t == "node:error":
                self._fail(node_id, p.get("error"))
            elif t == "node:fallback":
                fb = p.get("fallback")
                self.statuses[node_id] = "failed"
                if isinstance(fb, str):
                    self.fallback_owner[fb] = node_id
            elif t == "node:skipped":
                self.statuses[node_id] = "skipped"
            elif t == "node:awaiting":
                self.statuses[node_id] = "awaiting"
                details = p.get("details")
                self.awaiting[node_id] = dict(details) if isinstance(details, Mapping) else {}
            return
        if t == "batch:finish":
            scatter = p.get("scatterNodeId") or p.get("batchId")
            if isinstance(scatter, str):
                self._complete(scatter, p.get("results"), None)
        elif t == "workflow:start":
            if not self.started:
                self.started = True
                initial = p.get("initialContext")
                if isinstance(initial, Mapping):
                    self.ctx = {**initial, **self.ctx}
            self.status = "running"
            self.finished = False
        elif t == "workflow:resume":
            self.status = "running"
            self.finished = False
        elif t == "workflow:finish":
            status = p.get("status")
            self.status = status if status in _FINAL else "failed"
            errors = p.get("errors")
            self.errors = (
                [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
            )
            self.finished = True
            if self.status == "cancelled":
                for n, s in self.statuses.items():
                    if s == "running":
                        self.statuses[n] = "cancelled"

    def _item_failure_fails_batch(self, scatter: str) -> bool:
        node = self.known.get(scatter)
        if node is None:
            return True  # without the blueprint assume the default policy; batch:finish corrects it
        return node.uses == BATCH_SCATTER and node.params.get("onItemError", "fail") == "fail"

    def result(self) -> WorkflowResult:
        if not self.finished:
            # No workflow:finish after the last start/resume: the history is incomplete (still
            # running, or the process died). Errors are those of nodes that ended failed.
            self.errors = [
                e for n, e in self.node_errors.items() if self.statuses.get(n) == "failed"
            ]
        order = list(self.known) + [n for n in self.statuses if n not in self.known]
        statuses = {n: self.statuses[n] for n in order if n in self.statuses}
        state = RunState(
            execution_id=self.execution_id,
            blueprint_id=self.blueprint_id,
            status=self.status,
            nodes={n: NodeState(status=s) for n, s in statuses.items()},
            awaiting=dict(self.awaiting),
            errors=list(self.errors),
            started=self.started,
            seq=self.seq,
        )
        return WorkflowResult(
            execution_id=self.execution_id,
            blueprint_id=self.blueprint_id,
            status=self.status,
            context=self.ctx,
            node_statuses=statuses,
            errors=[ErrorRecord.model_validate(e) for e in self.errors],
            awaiting=dict(self.awaiting),
            state=state,
        )


def replay(
    blueprint: WorkflowBlueprint | Mapping[str, Any] | str | None,
    events: Iterable[FlowcraftEvent],
    *,
    execution_id: str | None = None,
    evaluator: Evaluator | None = None,
) -> WorkflowResult:
    """Rebuild a run's result from its recorded events, without running any code.

    * ``context``: the initial context (from ``workflow:start``), every ``context:change`` and
      each node's output from ``node:finish`` (``batch:finish`` for a batch) under
      ``_outputs.<id>``; a fallback's output is stored under the fallback *and* the node it
      recovered, as in the live run.
    * ``node_statuses``: every blueprint node (in blueprint order), ``pending`` unless an
      event says otherwise; ``recovered`` for a node whose fallback completed.
    * ``status`` and ``errors``: from the last ``workflow:finish``; ``running`` when no
      ``workflow:finish`` follows the last start/resume (an incomplete history).

    ``blueprint`` may be None (e.g. ``flowcraft inspect``): statuses then cover only the nodes
    the events mention. ``execution_id`` selects one execution when ``events`` holds several
    (see :func:`select_execution`); ``evaluator`` compiles the blueprint's expressions when it
    needs more than the default :class:`~flowcraft.expressions.SafeEvaluator` (only loop bodies
    are looked up). The returned ``state`` describes the run for inspection; to continue an
    awaiting run use the result saved by the run itself, or :func:`replay_from`.
    """
    bp = _load(blueprint)
    fold = _Fold(bp, evaluator)
    for ev in select_execution(events, execution_id, bp.id if bp is not None else None):
        fold.apply(ev)
    return fold.result()


# -- timings ---------------------------------------------------------------------------------


@dataclass(slots=True)
class NodeTiming:
    """How often and how long a node ran, from ``node:start``/``node:finish`` timestamps."""

    node_id: str
    executions: int = 0
    duration: float | None = None
    """Seconds from each ``node:start`` to the matching ``node:finish`` or ``node:error``
    (``batch:finish`` for a batch), summed; None while no execution has ended."""
    first_start: float | None = None
    last_end: float | None = None


def node_timings(events: Iterable[FlowcraftEvent]) -> dict[str, NodeTiming]:
    """Per-node timing of one execution's events (batch items count towards their batch).

    A wait or sleep runs from its ``node:start`` to the ``node:finish`` of its resume.
    """
    out: dict[str, NodeTiming] = {}
    open_: dict[str, float] = {}
    for ev in events:
        nid = ev.payload.get("scatterNodeId" if ev.type == "batch:finish" else "nodeId")
        if not isinstance(nid, str) or ev.type not in (
            "node:start",
            "node:finish",
            "node:error",
            "batch:finish",
        ):
            continue
        m = _ITEM.match(nid)
        if m is not None and m.group(1) in out:
            continue
        tm = out.setdefault(nid, NodeTiming(nid))
        if ev.type == "node:start":
            tm.executions += 1
            open_[nid] = ev.timestamp
            if tm.first_start is None:
                tm.first_start = ev.timestamp
            continue
        start = open_.pop(nid, None)
        tm.last_end = ev.timestamp
        if start is not None:
            tm.duration = (tm.duration or 0.0) + max(ev.timestamp - start, 0.0)
    return out


# -- replay_from -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Slot:
    """One recorded execution of a node (or batch item): its outcome and context writes."""

    outcome: ServedOutcome | None = None
    writes: list[tuple[str, str, Any]] = field(default_factory=list)
    finished: bool = False


def _recorded_slots(events: list[FlowcraftEvent]) -> tuple[dict[str, Any], dict[str, deque[_Slot]]]:
    """The initial context and, per node/item id, its recorded executions in order."""
    initial: dict[str, Any] = {}
    slots: dict[str, deque[_Slot]] = {}
    started = False

    def current(nid: str) -> _Slot:
        q = slots.setdefault(nid, deque())
        if not q:
            q.append(_Slot())
        return q[-1]

    for ev in events:
        p = ev.payload
        t = ev.type
        if t == "workflow:start" and not started:
            started = True
            ic = p.get("initialContext")
            if isinstance(ic, Mapping):
                initial = dict(ic)
            continue
        if t == "context:change":
            src, key = p.get("sourceNode"), p.get("key")
            if isinstance(src, str) and isinstance(key, str):
                op = "delete" if p.get("op") == "delete" else "set"
                current(src).writes.append((op, key, p.get("value")))
            continue
        nid = p.get("nodeId")
        if not isinstance(nid, str):
            continue
        if t == "node:start":
            slots.setdefault(nid, deque()).append(_Slot())
        elif t == "node:finish":
            result = p.get("result")
            result = result if isinstance(result, Mapping) else {}
            action = result.get("action")
            s = current(nid)
            s.outcome = ServedOutcome(
                "finish",
                NodeResult(result.get("output"), action if isinstance(action, str) else None),
            )
            s.finished = True
        elif t == "node:error":
            s = current(nid)
            if not s.finished:  # an error after node:finish is a routing error: keep the finish
                s.outcome = ServedOutcome("error", p.get("error"))
        elif t == "node:awaiting":
            s = current(nid)
            if not s.finished:
                details = p.get("details")
                s.outcome = ServedOutcome(
                    "awaiting", dict(details) if isinstance(details, Mapping) else {}
                )
    return initial, slots


def _rerun_set(bp: WorkflowBlueprint, from_node_id: str) -> set[str]:
    """``from_node_id``, everything reachable from it, and the fallbacks of those nodes."""
    succ: dict[str, list[str]] = {n.id: [] for n in bp.nodes}
    for e in bp.edges:
        if e.source in succ:
            succ[e.source].append(e.target)
    fallbacks = {n.id: n.config.fallback for n in bp.nodes if n.config.fallback}
    todo = [from_node_id]
    seen: set[str] = set()
    while todo:
        n = todo.pop()
        if n in seen or n not in succ:
            continue
        seen.add(n)
        todo.extend(succ[n])
        fb = fallbacks.get(n)
        if fb is not None:
            todo.append(fb)
    return seen


async def replay_from(
    runtime: FlowRuntime,
    blueprint: WorkflowBlueprint | Mapping[str, Any] | str,
    events: Iterable[FlowcraftEvent],
    from_node_id: str,
    *,
    input_overrides: Mapping[str, Any] | None = None,
    execution_id: str | None = None,
    source_execution_id: str | None = None,
    registry: Mapping[str, NodeImplementation] | None = None,
    concurrency: int | None = None,
    signal: asyncio.Event | None = None,
) -> WorkflowResult:
    """Run ``blueprint`` again, starting at ``from_node_id``, on top of a recorded run.

    Starts from the recorded initial context. A node that is neither ``from_node_id`` nor
    reachable from it (nor the fallback of such a node) is *served from history* each time it
    becomes ready: its recorded context writes are re-applied and its recorded outcome
    (output and action, error, or awaiting) is used without calling its code, so ancestors
    deliver exactly what they delivered before. ``from_node_id`` and its descendants run for
    real, as does any node whose recorded executions ran out (it never ran, or did not
    finish). Returns a new run (new execution id unless ``execution_id`` is given) with its
    own events, which replay like any other run.

    ``input_overrides`` maps node ids (of nodes that run for real) to the input they receive
    instead of the delivered one. ``source_execution_id`` picks the recorded execution when
    ``events`` holds several.
    """
    bp = load_blueprint(blueprint)
    ids = {n.id for n in bp.nodes}
    if from_node_id not in ids:
        raise ValueError(f"unknown node {from_node_id!r} in blueprint {bp.id!r}")
    overrides = dict(input_overrides or {})
    unknown = sorted(k for k in overrides if k not in ids)
    if unknown:
        raise ValueError(f"input_overrides name unknown nodes: {unknown}")
    recorded = select_execution(events, source_execution_id, bp.id)
    initial, slots = _recorded_slots(recorded)
    live = _rerun_set(bp, from_node_id)
    bad = sorted(k for k in overrides if k not in live)
    if bad:
        raise ValueError(
            f"input_overrides name nodes served from history (not {from_node_id!r} or "
            f"downstream of it): {bad}"
        )

    def serve(act: Activation) -> ServedOutcome | None:
        if act.node_id in live:
            if act.node_id in overrides and act.job_node_id == act.node_id:
                return ServedOutcome("input", overrides[act.node_id])
            return None
        q = slots.get(act.job_node_id)
        if not q:
            return None
        s = q.popleft()
        if s.outcome is None:
            return None  # that execution never ended: run it for real
        return ServedOutcome(s.outcome.kind, s.outcome.value, s.writes)

    return await runtime.run(
        bp,
        initial,
        registry=registry,
        concurrency=concurrency,
        signal=signal,
        execution_id=execution_id,
        serve=serve,
    )
