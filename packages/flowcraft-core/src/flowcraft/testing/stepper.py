"""Step through a run one node at a time, and step back, for tests and debugging.

A :class:`Stepper` drives the same :class:`~flowcraft.kernel.Kernel` and the same
single-activation execution the in-memory runtime uses, but one activation per call: each
:meth:`Stepper.next` runs exactly the next ready node (first made ready, first run; the order
the runtime follows with ``concurrency=1``). Batch items are steps of their own (``scatter[0]``,
``scatter[1]``, …); a subflow node runs its whole child workflow in one step.
"""

from __future__ import annotations

import copy
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..blueprint import WorkflowBlueprint
from ..context import InMemoryContext
from ..errors import ResumeError
from ..events import EventBus
from ..kernel import FALLBACK, ITEM, Activation
from ..nodes import NodeImplementation, NodeResult
from ..runtime import FlowRuntime, WorkflowResult
from ..state import RunState, WorkflowStatus, output_key
from ..step import AWAIT, ERR, OK, RunFrame

__all__ = ["Step", "StepKind", "Stepper"]

StepKind = Literal["node", "fallback", "item", "resume"]
"""What a step did: ran a node, ran a fallback in place of a failed node, ran one batch item,
or resumed an awaiting node (:meth:`Stepper.resume`)."""

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class Step:
    """What one step did.

    ``node_id`` is the node that ran (``scatter[2]`` for item 2 of a batch); ``status`` is its
    status right after the step (a batch item's own status for items; ``running`` for a
    batch-scatter whose items are now queued); ``activated`` lists the nodes (or batch items)
    the step made ready, in the order they will run.
    """

    node_id: str
    kind: StepKind
    status: str
    input: Any = None
    output: Any = None
    action: str | None = None
    error: dict[str, Any] | None = None
    details: dict[str, Any] | None = None
    activated: tuple[str, ...] = ()
    iteration: int = 0


@dataclass(slots=True)
class _Snapshot:
    state: dict[str, Any]
    context: dict[str, Any]
    ready: list[Activation]
    announced: bool


_KINDS: dict[int, StepKind] = {FALLBACK: "fallback", ITEM: "item"}


class Stepper:
    """Runs a blueprint one node per :meth:`next`, with :meth:`prev` and :meth:`reset`.

    ``registry`` is merged over the runtime's registry (as in :meth:`FlowRuntime.run`);
    ``event_bus`` defaults to the runtime's. Validation problems raise
    :class:`~flowcraft.errors.BlueprintValidationError` from the constructor.

    :meth:`prev` restores the run state and context from a snapshot taken before the last
    step; side effects outside the context (calls, I/O) are not undone, so the values in the
    context must be deep-copyable.
    """

    def __init__(
        self,
        runtime: FlowRuntime,
        blueprint: WorkflowBlueprint | Mapping[str, Any] | str,
        initial: Mapping[str, Any] | None = None,
        *,
        registry: Mapping[str, NodeImplementation] | None = None,
        event_bus: EventBus | None = None,
        execution_id: str | None = None,
    ) -> None:
        """Prepare a run of ``blueprint`` from ``initial``; nothing executes until :meth:`next`."""
        self.runtime = runtime
        self._plan, self._registry = runtime.prepare(blueprint, registry)
        self.blueprint: WorkflowBlueprint = self._plan.blueprint
        self._initial = copy.deepcopy(dict(initial or {}))
        self._bus = runtime.event_bus if event_bus is None else event_bus
        self.execution_id: str = execution_id or str(uuid.uuid4())
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------------

    def _new_run(self, state: RunState, context: dict[str, Any]) -> RunFrame:
        return RunFrame(
            self._plan,
            state,
            InMemoryContext(context),
            self._registry,
            self._bus,
            1,
            self.runtime.dependencies,
        )

    def reset(self) -> None:
        """Start over: a fresh run with the initial context and the same execution id."""
        bp = self.blueprint
        state = RunState(
            execution_id=self.execution_id, blueprint_id=bp.id, blueprint_version=bp.version
        )
        self._run = self._new_run(state, copy.deepcopy(self._initial))
        self._ready: deque[Activation] = deque(self._run.kernel.start())
        self._history: list[Step] = []
        self._snapshots: list[_Snapshot] = []
        self._announced = False
        self._result: WorkflowResult | None = None

    # -- inspection --------------------------------------------------------------------------

    @property
    def state(self) -> RunState:
        """The live run state (node statuses, edges, awaiting details, errors)."""
        return self._run.state

    @property
    def context(self) -> dict[str, Any]:
        """The live context data (node outputs live under ``_outputs.<id>``)."""
        return self._run.ctx.data

    @property
    def status(self) -> WorkflowStatus:
        """``running`` until the run stops, then its final status (or ``awaiting``)."""
        return self._run.state.status

    @property
    def ready(self) -> list[str]:
        """The nodes (and batch items) queued to run, in the order :meth:`next` runs them."""
        return [a.job_node_id for a in self._ready]

    @property
    def history(self) -> list[Step]:
        """The steps taken so far (undone steps are removed)."""
        return list(self._history)

    @property
    def done(self) -> bool:
        """True when :meth:`next` has nothing left to run (the run finished or awaits)."""
        return self._result is not None or not self._has_work()

    def result(self) -> WorkflowResult:
        """The run's result: final once :attr:`done`, else a snapshot with status ``running``."""
        if self._result is not None:
            return self._result
        return self.runtime._result(self._run)

    def _has_work(self) -> bool:
        return bool(self._ready) and not self._run.state.errors

    # -- stepping ----------------------------------------------------------------------------

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(
            state=copy.deepcopy(self._run.state.to_dict()),
            context=copy.deepcopy(self._run.ctx.data),
            ready=copy.deepcopy(list(self._ready)),
            announced=self._announced,
        )

    def _announce(self) -> None:
        if not self._announced:
            self._announced = True
            self._run.emit("workflow:start", {"blueprintId": self.blueprint.id})

    async def _finish_if_idle(self) -> None:
        run = self._run
        await run.flush()
        if self._has_work():
            return
        for a in self._ready:  # left over when the run failed: back to pending, as the runtime
            if a.kind == ITEM:
                run.state.batches[a.node_id].item_status[a.index] = "pending"
            elif run.state.nodes[a.node_id].status == "queued":
                run.state.nodes[a.node_id].status = "pending"
        self._ready.clear()
        self._result = await self.runtime._finish(run)

    async def next(self) -> Step | None:
        """Run exactly the next ready node; returns what it did, or None when :attr:`done`."""
        if self._result is not None:
            return None
        run = self._run
        if not self._has_work():
            self._announce()
            await self._finish_if_idle()
            return None
        self._snapshots.append(self._snapshot())
        self._announce()
        act = self._ready.popleft()
        node = self._plan.nodes[act.node_id]
        node_input = act.input
        if node.inputs is not None and act.kind != ITEM:
            try:
                node_input = self.runtime._resolve_inputs(node, run.ctx.data)
            except Exception:  # reported by the execution itself
                node_input = act.input
        run.kernel.on_started(act)
        outcome = await self.runtime.execute_step(run, act)
        new = self.runtime.apply_outcome(run, act, outcome)
        self._ready.extend(new)
        step = self._describe(act, node_input, outcome, new)
        self._history.append(step)
        await self._finish_if_idle()
        return step

    def _describe(
        self,
        act: Activation,
        node_input: Any,
        outcome: tuple[int, Any],
        new: list[Activation],
    ) -> Step:
        st = self._run.state
        tag, value = outcome
        error: dict[str, Any] | None = None
        if act.kind == ITEM:
            status = st.batches[act.node_id].item_status[act.index]
        else:
            ns = st.nodes[act.node_id]
            status = ns.status
            if status == "failed":
                error = ns.error
        if tag == ERR:
            error = value
        result = value if tag == OK and isinstance(value, NodeResult) else None
        return Step(
            node_id=act.job_node_id,
            kind=_KINDS.get(act.kind, "node"),
            status=status,
            input=node_input,
            output=result.output if result is not None else None,
            action=result.action if result is not None else None,
            error=error,
            details=value if tag == AWAIT else None,
            activated=tuple(a.job_node_id for a in new),
            iteration=act.iteration,
        )

    async def prev(self) -> Step | None:
        """Undo the last step (or resume): restore the state, context and ready queue from
        before it. Returns the undone step, or None when there is nothing to undo."""
        if not self._snapshots:
            return None
        snap = self._snapshots.pop()
        await self._run.flush()
        self._run = self._new_run(
            RunState.from_dict(copy.deepcopy(snap.state)), copy.deepcopy(snap.context)
        )
        self._ready = deque(copy.deepcopy(snap.ready))
        self._announced = snap.announced
        self._result = None
        return self._history.pop()

    async def run_to_end(self) -> WorkflowResult:
        """Step until :attr:`done`; returns the result."""
        while await self.next() is not None:
            pass
        if self._result is None:
            await self._finish_if_idle()
        return self.result()

    async def resume(
        self, node_id: str | None = None, *, output: Any = _UNSET, action: str | None = None
    ) -> Step:
        """Complete an awaiting node (default: the first awaiting one in blueprint order) with
        ``output``, routing on ``action``, as :meth:`FlowRuntime.resume` does; stepping can then
        continue. A sleep node resumed without ``output`` passes its input through. The resume is
        recorded as a step of kind ``resume`` (so :meth:`prev` can undo it)."""
        run = self._run
        st = run.state
        if st.status != "awaiting" or not st.awaiting:
            raise ResumeError(f"run {self.execution_id!r} is {st.status!r}, not awaiting")
        if node_id is None:
            node_id = min(st.awaiting, key=lambda n: self._plan.order.get(n, 1 << 30))
        elif node_id not in st.awaiting:
            raise ResumeError(
                f"node {node_id!r} is not awaiting; awaiting: {sorted(st.awaiting)}",
                node_id=node_id,
            )
        self._snapshots.append(self._snapshot())
        details = st.awaiting[node_id]
        out = None if output is _UNSET else output
        st.status = "running"
        self._result = None
        run.emit("workflow:resume", {"nodeId": node_id, "action": action})
        node = self._plan.nodes[node_id]
        acts: list[Activation]
        if details.get("reason") == "subflow":
            child = await self.runtime._resume_child(node, details, out, action, self._registry)
            if child.status == "awaiting":
                st.awaiting[node_id] = {**details, "child": child.to_dict()}
                acts = []
            else:
                acts = self.runtime._complete_subflow(run, node, child)
        else:
            if details.get("reason") == "timer" and output is _UNSET:
                out = details.get("input")
            acts = run.kernel.resume(node_id, out, action)
            run.emit(
                "node:finish", {"nodeId": node_id, "result": {"output": out, "action": action}}
            )
        self._ready.extend(acts)
        ns = st.nodes[node_id]
        step = Step(
            node_id=node_id,
            kind="resume",
            status=ns.status,
            output=run.ctx.data.get(output_key(node_id)) if ns.status == "completed" else None,
            action=action,
            error=ns.error if ns.status == "failed" else None,
            details=details,
            activated=tuple(a.job_node_id for a in acts),
            iteration=ns.iteration,
        )
        self._history.append(step)
        await self._finish_if_idle()
        return step
