"""The in-memory runtime: runs a blueprint to completion (or until it awaits) in one process.

Work is scheduled by :class:`flowcraft.kernel.Kernel` and executed in a sliding pool of at most
``concurrency`` node tasks; independent branches keep running while another branch waits.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import types
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .analysis import find_cycles, terminal_node_ids
from .blueprint import NodeConfig, NodeDefinition, WorkflowBlueprint, load_blueprint
from .builtins import (
    BATCH_GATHER,
    BATCH_SCATTER,
    BUILTIN_NODE_TYPES,
    LOOP_CONTROLLER,
    SLEEP,
    SUBFLOW,
    WAIT,
    WEBHOOK,
    parse_duration,
)
from .context import InMemoryContext, PatchOperation, TrackedContext
from .errors import (
    BlueprintValidationError,
    ErrorRecord,
    ExpressionError,
    FatalNodeError,
    FlowcraftError,
    LoopLimitExceededError,
    ResumeError,
)
from .events import EventBus
from .executor import Sleep, run_class, run_function
from .expressions import Evaluator, SafeEvaluator
from .kernel import EXPLICIT_INPUT, FALLBACK, ITEM, NODE, Activation, Scope
from .middleware import compose
from .nodes import NodeContext, NodeImplementation, NodeResult, coerce_result, is_node_class
from .plan import Plan, get_plan
from .serializer import JsonSerializer, Serializer
from .state import (
    DONE_NODE_STATUSES,
    ENGINE_PREFIX,
    NodeStatus,
    RunState,
    WorkflowStatus,
    output_key,
)
from .step import AWAIT as _AWAIT
from .step import ERR as _ERR
from .step import OK as _OK
from .step import SCATTER as _SCATTER
from .step import RunFrame as _Run
from .step import Serve, ServedOutcome
from .webhooks import rearmed, timed_out, timeout_record, webhook_details

if TYPE_CHECKING:
    from .scheduler import TimerStore

log = logging.getLogger("flowcraft.runtime")

DEFAULT_CONCURRENCY = 32

_COROUTINE = types.CoroutineType
_ID_PREFIX = uuid.uuid4().hex[:20]
_ID_COUNTER = itertools.count(1)


def new_execution_id() -> str:
    """A unique execution id: a random per-process prefix and a counter (no syscall per run)."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):012d}"


DEFAULT_MAX_ITERATIONS = 10_000


@dataclass
class WorkflowResult:
    """Outcome of a run (or of one leg of it, when it stopped to await)."""

    execution_id: str
    blueprint_id: str
    status: WorkflowStatus
    context: dict[str, Any]
    node_statuses: dict[str, NodeStatus]
    errors: list[ErrorRecord]
    awaiting: dict[str, dict[str, Any]]
    state: RunState = field(repr=False)

    @property
    def outputs(self) -> dict[str, Any]:
        """Node outputs by node id (nodes that produced one)."""
        n = len("_outputs.")
        return {k[n:]: v for k, v in self.context.items() if k.startswith("_outputs.")}

    @property
    def error(self) -> ErrorRecord | None:
        """The first error, if the run failed."""
        return self.errors[0] if self.errors else None

    def to_dict(self) -> dict[str, Any]:
        """camelCase JSON form; ``state`` holds what :meth:`FlowRuntime.resume` needs."""
        return {
            "executionId": self.execution_id,
            "blueprintId": self.blueprint_id,
            "status": self.status,
            "context": self.context,
            "nodeStatuses": self.node_statuses,
            "errors": [e.to_wire() for e in self.errors],
            "awaiting": self.awaiting,
            "state": self.state.to_dict(),
        }

    def serialize(self, serializer: Serializer | None = None) -> str:
        """The result as text (strict JSON by default; unsupported values raise)."""
        return (serializer or JsonSerializer()).serialize(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkflowResult:
        """Inverse of :meth:`to_dict`."""
        state = RunState.from_dict(dict(data["state"]))
        return cls(
            execution_id=state.execution_id,
            blueprint_id=state.blueprint_id,
            status=data.get("status", state.status),
            context=dict(data.get("context", {})),
            node_statuses={k: v.status for k, v in state.nodes.items()},
            errors=[ErrorRecord.model_validate(e) for e in data.get("errors", [])],
            awaiting=dict(state.awaiting),
            state=state,
        )

    @classmethod
    def deserialize(cls, text: str, serializer: Serializer | None = None) -> WorkflowResult:
        """Inverse of :meth:`serialize`."""
        return cls.from_dict((serializer or JsonSerializer()).deserialize(text))


class FlowRuntime:
    """Runs blueprints in memory.

    ``registry`` maps ``uses`` keys to node functions or :class:`~flowcraft.nodes.BaseNode`
    subclasses; ``blueprints`` holds blueprints that subflows (and the scheduler) refer to by id.
    ``sleep`` is the coroutine function awaited between retry attempts (default
    :func:`asyncio.sleep`; inject a fake one to test backoff without waiting).
    """

    def __init__(
        self,
        *,
        registry: Mapping[str, NodeImplementation] | None = None,
        blueprints: Mapping[str, WorkflowBlueprint] | Iterable[WorkflowBlueprint] | None = None,
        dependencies: Mapping[str, Any] | None = None,
        evaluator: Evaluator | None = None,
        middleware: Sequence[Any] = (),
        event_bus: EventBus | None = None,
        serializer: Serializer | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        strict: bool = False,
        timer_store: TimerStore | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        self.registry: dict[str, NodeImplementation] = dict(registry or {})
        self.blueprints: dict[str, WorkflowBlueprint] = {}
        if blueprints is not None:
            items = blueprints.values() if isinstance(blueprints, Mapping) else blueprints
            for bp in items:
                self.add_blueprint(bp)
        self.dependencies: Mapping[str, Any] = dependencies or {}
        self.evaluator: Evaluator = evaluator or SafeEvaluator()
        self.middleware = list(middleware)
        self.event_bus = event_bus
        self.serializer: Serializer = serializer or JsonSerializer()
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.concurrency = concurrency
        self.strict = strict
        self.timer_store = timer_store
        self.sleep: Sleep = sleep or asyncio.sleep  # waits between retry attempts (injectable)
        self._active: dict[str, _Run] = {}

    # -- registration ------------------------------------------------------------------------

    def add_blueprint(self, blueprint: WorkflowBlueprint | Mapping[str, Any] | str) -> None:
        """Register a blueprint for subflows and scheduled resumes."""
        bp = load_blueprint(blueprint)
        self.blueprints[bp.id] = bp

    def get_blueprint(self, blueprint_id: str) -> WorkflowBlueprint:
        """A registered blueprint; KeyError naming the id when unknown."""
        try:
            return self.blueprints[blueprint_id]
        except KeyError:
            raise KeyError(f"unknown blueprint {blueprint_id!r}") from None

    def prepare(
        self,
        blueprint: WorkflowBlueprint | Mapping[str, Any] | str,
        registry: Mapping[str, NodeImplementation] | None = None,
        *,
        strict: bool | None = None,
    ) -> tuple[Plan, Mapping[str, NodeImplementation]]:
        """Validate a blueprint against the registry and compile its plan (cached)."""
        bp = load_blueprint(blueprint)
        reg: Mapping[str, NodeImplementation] = (
            self.registry if not registry else {**self.registry, **registry}
        )
        plan = get_plan(bp, self.evaluator)
        strict = self.strict if strict is None else strict
        if plan.checked_registry is not reg or strict:
            self._check(plan, reg, strict)
            plan.checked_registry = reg
            plan.fast_nodes = frozenset(
                n.id
                for n in plan.blueprint.nodes
                if n.uses not in BUILTIN_NODE_TYPES
                and n.inputs is None
                and n.config.max_retries == 1
                and n.config.timeout is None
                and not isinstance(reg.get(n.uses), type)
            )
            plan.fast_registry = reg
        return plan, reg

    def _check(self, plan: Plan, reg: Mapping[str, Any], strict: bool) -> None:
        problems = []
        for n in plan.blueprint.nodes:
            if n.uses not in BUILTIN_NODE_TYPES and n.uses not in reg:
                problems.append(f"node {n.id!r}: unknown implementation uses={n.uses!r}")
            if n.uses == BATCH_SCATTER:
                w = n.params.get("workerUsesKey")
                if isinstance(w, str) and w not in reg and w not in BUILTIN_NODE_TYPES:
                    problems.append(f"node {n.id!r}: unknown batch worker {w!r}")
        if strict:
            for cyc in find_cycles(plan.blueprint):
                if not any(plan.nodes[x].uses == LOOP_CONTROLLER for x in cyc):
                    problems.append(f"cycle {' -> '.join([*cyc, cyc[0]])} (strict mode)")
        if problems:
            raise BlueprintValidationError(plan.blueprint.id, problems)

    # -- public API --------------------------------------------------------------------------

    async def run(
        self,
        blueprint: WorkflowBlueprint | Mapping[str, Any] | str,
        initial: Mapping[str, Any] | None = None,
        *,
        registry: Mapping[str, NodeImplementation] | None = None,
        concurrency: int | None = None,
        strict: bool | None = None,
        signal: asyncio.Event | None = None,
        execution_id: str | None = None,
        stop_at: Iterable[str] = (),
        start_input: Any = None,
        serve: Serve | None = None,
    ) -> WorkflowResult:
        """Run ``blueprint`` from its start nodes with ``initial`` as the context.

        Returns when no work is left: ``completed``, ``failed``, ``awaiting`` (a wait, sleep or
        subflow is pending; continue with :meth:`resume`), ``stalled`` (``stop_at`` reached or
        work left that can never become ready) or ``cancelled`` (:meth:`cancel` or ``signal``).
        ``serve`` is the hook :func:`flowcraft.replay.replay_from` uses to take outcomes from
        a recorded run instead of executing nodes.
        """
        plan, reg = self.prepare(blueprint, registry, strict=strict)
        bp = plan.blueprint
        state = RunState(
            execution_id=execution_id or new_execution_id(),
            blueprint_id=bp.id,
            blueprint_version=bp.version,
        )
        run = _Run(
            plan,
            state,
            InMemoryContext(initial),
            reg,
            self.event_bus,
            self._concurrency(concurrency),
            self.dependencies,
        )
        run.stop_at = frozenset(stop_at)
        run.serve = serve
        run.plain = serve is None and self.event_bus is None and not self.middleware
        start: dict[str, Any] = {"blueprintId": bp.id}
        if initial and run.bus is not None:
            start["initialContext"] = dict(initial)  # lets history replay rebuild the context
        run.emit("workflow:start", start)
        acts = run.kernel.start()
        if start_input is not None:
            for a in acts:
                a.input = start_input
                # Recorded as delivered (as a distributed run does): a subflow start node that
                # awaits and then fails hands it to its fallback.
                run.state.inputs[a.node_id] = {EXPLICIT_INPUT: start_input}
        return await self._go(run, acts, signal)

    async def resume(
        self,
        blueprint: WorkflowBlueprint | Mapping[str, Any] | str,
        state: WorkflowResult | str | Mapping[str, Any],
        node_id: str | None = None,
        *,
        output: Any = None,
        action: str | None = None,
        registry: Mapping[str, NodeImplementation] | None = None,
        concurrency: int | None = None,
        signal: asyncio.Event | None = None,
    ) -> WorkflowResult:
        """Continue an awaiting run: complete ``node_id`` (default: the only or first awaiting
        node in blueprint order) with ``output`` and route on ``action``.

        The execution id stays the same across resumes. A sleep node resumed without an output
        passes its input through. A subflow node resumes its child run first.
        """
        prev = self._load(state)
        plan, reg = self.prepare(blueprint, registry)
        if prev.state.blueprint_id != plan.blueprint.id:
            raise ResumeError(
                f"state belongs to blueprint {prev.state.blueprint_id!r}, not {plan.blueprint.id!r}"
            )
        if prev.state.status != "awaiting" or not prev.state.awaiting:
            raise ResumeError(
                f"run {prev.execution_id!r} is {prev.state.status!r}, not awaiting",
                execution_id=prev.execution_id,
            )
        awaiting = prev.state.awaiting
        if node_id is None:
            node_id = min(awaiting, key=lambda n: plan.order.get(n, 1 << 30))
        elif node_id not in awaiting:
            raise ResumeError(
                f"node {node_id!r} is not awaiting; awaiting: {sorted(awaiting)}",
                node_id=node_id,
                execution_id=prev.execution_id,
            )
        st = prev.state
        st.status = "running"
        run = _Run(
            plan,
            st,
            InMemoryContext(prev.context),
            reg,
            self.event_bus,
            self._concurrency(concurrency),
            self.dependencies,
        )
        run.plain = self.event_bus is None and not self.middleware
        details = awaiting[node_id]
        if self.timer_store is not None and details.get("reason") in ("timer", "webhook"):
            # Resumed by hand (or by the scheduler, which already claimed it): a stale timer
            # would resume this snapshot again later and run the downstream nodes twice.
            await self.timer_store.remove(st.execution_id, node_id)
        run.emit("workflow:resume", {"nodeId": node_id, "action": action})
        awaiting.pop(node_id)  # no longer awaiting, whether it now completes or fails
        if details.get("reason") == "subflow":
            child = await self._resume_child(plan.nodes[node_id], details, output, action, reg)
            if child.status == "awaiting":
                awaiting[node_id] = {**details, "child": child.to_dict()}
                st.status = "awaiting"
                run.emit("workflow:finish", {"status": "awaiting", "errors": []})
                await run.flush()
                return self._result(run)
            acts = self._complete_subflow(run, plan.nodes[node_id], child)
        elif details.get("reason") == "webhook" and output is None and timed_out(details):
            # The scheduler's timeout timer (or a late resume without a delivery): the node
            # waits again on a new endpoint while maxRetries allows, then fails with
            # WebhookTimeoutError and its fallback runs.
            again = rearmed(st.execution_id, plan.nodes[node_id], details)
            if again is not None:
                self.apply_outcome(run, Activation(node_id, details.get("input")), (_AWAIT, again))
                acts = []
            else:
                rec = timeout_record(node_id, st.execution_id, details)
                run.emit("node:error", {"nodeId": node_id, "error": rec})
                acts = self.apply_outcome(
                    run, Activation(node_id, details.get("input")), (_ERR, rec)
                )
        else:
            if details.get("reason") == "timer" and output is None:
                output = details.get("input")
            # node:finish precedes the routing events (edge:evaluate, node:skipped), as in run().
            run.emit(
                "node:finish", {"nodeId": node_id, "result": NodeResult(output, action).to_wire()}
            )
            # Through _apply: an edge expression that fails fails the node, as in run().
            acts = self.apply_outcome(
                run, Activation(node_id, output), (_OK, NodeResult(output, action))
            )
        return await self._go(run, acts, signal)

    def cancel(self, execution_id: str) -> bool:
        """Cancel a run in progress: running nodes are cancelled, state so far is kept."""
        run = self._active.get(execution_id)
        if run is None:
            return False
        run.cancel_requested = True
        for t in run.running:
            t.cancel()
        if run.driver is not None:
            run.driver.cancel()
        return True

    # -- driving -----------------------------------------------------------------------------

    def _concurrency(self, c: int | None) -> int:
        if c is None:
            return self.concurrency
        if c < 1:
            raise ValueError(f"concurrency must be >= 1, got {c}")
        return c

    def _load(self, state: WorkflowResult | str | Mapping[str, Any]) -> WorkflowResult:
        if isinstance(state, WorkflowResult):
            return WorkflowResult.from_dict(state.to_dict())  # never mutate the caller's result
        if isinstance(state, str):
            return WorkflowResult.deserialize(state, self.serializer)
        return WorkflowResult.from_dict(state)

    async def _go(
        self, run: _Run, acts: list[Activation], signal: asyncio.Event | None
    ) -> WorkflowResult:
        exec_id = run.state.execution_id
        self._active[exec_id] = run
        run.driver = asyncio.current_task()
        watcher: asyncio.Task[Any] | None = None
        if signal is not None:

            async def watch() -> None:
                await signal.wait()
                self.cancel(exec_id)

            watcher = asyncio.create_task(watch())
        try:
            await run.flush()
            await self._drive(run, acts)
        except asyncio.CancelledError:
            for t in list(run.running):
                t.cancel()
            if run.running:
                await asyncio.gather(*run.running, return_exceptions=True)
            for a in run.running.values():
                self._mark_cancelled(run, a)
            run.running.clear()
            # A node run inline (not in run.running) was cancelled too; queued work never started.
            for ns in run.state.nodes.values():
                if ns.status == "running":
                    ns.status = "cancelled"
                elif ns.status == "queued":
                    ns.status = "pending"
            for bs in run.state.batches.values():
                bs.item_status = [
                    "cancelled" if s == "running" else "pending" if s == "queued" else s
                    for s in bs.item_status
                ]
            if not run.cancel_requested:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            self._active.pop(exec_id, None)
            if watcher is not None:
                watcher.cancel()
        return await self._finish(run)

    def _mark_cancelled(self, run: _Run, act: Activation) -> None:
        if act.kind == ITEM:
            run.state.batches[act.node_id].item_status[act.index] = "cancelled"
        else:
            ns = run.state.nodes[act.node_id]
            if ns.status == "running":
                ns.status = "cancelled"

    async def _drive(self, run: _Run, ready_list: list[Activation]) -> None:
        ready: deque[Activation] = deque(ready_list)
        running = run.running
        done: deque[asyncio.Task[Any]] = deque()
        loop = asyncio.get_running_loop()
        waiter: list[asyncio.Future[None] | None] = [None]
        kernel = run.kernel
        state = run.state

        def on_done(t: asyncio.Task[Any]) -> None:
            done.append(t)
            w = waiter[0]
            if w is not None and not w.done():
                w.set_result(None)

        while True:
            while (
                ready
                and len(running) < run.concurrency
                and not (
                    state.errors or run.cancel_requested or (run.stop_at and self._halted(run))
                )
            ):
                act = ready.popleft()
                kernel.on_started(act)
                if not running and not ready:
                    # Sole piece of work: run inline, no task needed.
                    outcome = await self.execute_step(run, act)
                    ready.extend(self.apply_outcome(run, act, outcome))
                    if run.pending:
                        await run.flush()
                    continue
                t = loop.create_task(self.execute_step(run, act))
                running[t] = act
                t.add_done_callback(on_done)
            if not running:
                break
            if not done:
                fut: asyncio.Future[None] = loop.create_future()
                waiter[0] = fut
                await fut
                waiter[0] = None
            while done:
                t = done.popleft()
                act = running.pop(t)
                ready.extend(self.apply_outcome(run, act, t.result()))
            if run.pending:
                await run.flush()
        if ready:
            for a in ready:
                if a.kind == ITEM:
                    state.batches[a.node_id].item_status[a.index] = "pending"
                elif state.nodes[a.node_id].status == "queued":
                    state.nodes[a.node_id].status = "pending"
                if a.kind == FALLBACK and a.owner is not None and a.error is not None:
                    # The run stopped before this fallback could recover its owner.
                    state.fallbacks.pop(a.node_id, None)
                    state.errors.append(a.error)

    def _halted(self, run: _Run) -> bool:
        st = run.state
        if st.errors or run.cancel_requested:
            return True
        done = DONE_NODE_STATUSES
        return bool(run.stop_at) and all(
            st.nodes[n].status in done for n in run.stop_at if n in st.nodes
        )

    def apply_outcome(
        self, run: _Run, act: Activation, outcome: tuple[int, Any]
    ) -> list[Activation]:
        """Apply one step's outcome with the run's kernel; returns the activations it made
        ready (an edge expression that fails fails the node)."""
        kernel = run.kernel
        tag, value = outcome
        try:
            if act.kind == ITEM:
                if tag == _OK:
                    return kernel.on_item_done(act.node_id, act.index, value.output)
                return kernel.on_item_done(act.node_id, act.index, error=value)
            if tag == _OK:
                return kernel.on_complete(act.node_id, value, act.owner)
            if tag == _AWAIT:
                kernel.on_awaiting(act.node_id, value)
                run.emit("node:awaiting", {"nodeId": act.node_id, "details": value})
                return []
            if tag == _SCATTER:
                return kernel.on_scatter(act.node_id, value)
            return kernel.on_failed(act.node_id, value, act.input, act.owner)
        except ExpressionError as exc:
            rec = ErrorRecord.from_exception(
                exc,
                node_id=act.node_id,
                execution_id=run.state.execution_id,
                blueprint_id=run.blueprint.id,
            ).to_wire()
            run.emit("node:error", {"nodeId": act.node_id, "error": rec})
            return kernel.on_failed(act.node_id, rec, act.input, act.owner, allow_fallback=False)

    # -- executing one activation ------------------------------------------------------------

    async def execute_step(self, run: _Run, act: Activation) -> tuple[int, Any]:
        """Run one activation; returns an outcome tag and value, never raises (but cancels)."""
        plan = run.plan
        node = plan.nodes[act.node_id]
        if (
            act.kind == NODE
            and run.plain
            and act.node_id in plan.fast_nodes
            and plan.fast_registry is run.registry
        ):
            return await self._execute_plain(run, act, node)
        node_id = act.job_node_id
        served = run.serve(act) if run.serve is not None else None
        try:
            node_input = (
                act.input
                if node.inputs is None or act.kind == ITEM
                else self._resolve_inputs(node, run.ctx.data)
            )
            if served is not None and served.kind == "input":
                node_input, served = served.value, None
            if act.kind == ITEM:
                bs = run.state.batches[act.node_id]
                impl_key = bs.worker
                config = node.config
            else:
                impl_key = node.uses
                config = node.config
            em = run.bus is not None
            if em:
                run.emit("node:start", {"nodeId": node_id, "input": node_input})
            if served is not None:
                outcome = self._served(run, node_id, served)
            elif act.kind != ITEM and impl_key in BUILTIN_NODE_TYPES:
                run.via[node_id] = self._sources(run, act)
                outcome = await self._builtin(run, act, node, node_input)
            else:
                res = await self._user(run, act, node_id, impl_key, config, node_input)
                outcome = (_OK, res)
            if em and outcome[0] == _OK:
                r = outcome[1]
                run.emit("node:finish", {"nodeId": node_id, "result": r.to_wire()})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            rec = ErrorRecord.from_exception(
                exc,
                node_id=node_id,
                blueprint_id=run.blueprint.id,
                execution_id=run.state.execution_id,
            ).to_wire()
            if run.bus is not None:
                run.emit("node:error", {"nodeId": node_id, "error": rec})
            return (_ERR, rec)
        return outcome

    async def _execute_plain(
        self, run: _Run, act: Activation, node: NodeDefinition
    ) -> tuple[int, Any]:
        """Fast path for the common node: a plain function with one attempt, no timeout, no
        explicit ``inputs``, and nothing observing the run (no bus, middleware or deltas)."""
        node_id = act.node_id
        try:
            nctx = NodeContext(
                node_id,
                run.ctx,
                act.input,
                node.params,
                run.state.execution_id,
                run.blueprint.id,
                1,
                1,
                act.iteration,
                run.deps,
                uses=node.uses,
                _predecessors=lambda: self._sources(run, act),
            )
            fn: Any = run.registry[node.uses]
            r = fn(nctx)
            if type(r) is _COROUTINE or inspect.isawaitable(r):
                r = await r
            if type(r) is not NodeResult:
                r = coerce_result(r, node_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            rec = ErrorRecord.from_exception(
                exc,
                node_id=node_id,
                blueprint_id=run.blueprint.id,
                execution_id=run.state.execution_id,
            ).to_wire()
            return (_ERR, rec)
        return (_OK, r)

    def _node_context(
        self, run: _Run, act: Activation, node_id: str, node_input: Any, config: NodeConfig
    ) -> NodeContext:
        node = run.plan.nodes[act.node_id]
        ctx: Any = run.ctx
        if run.bus is not None or run.deltas is not None:
            emit = run.emit if run.bus is not None else None
            deltas = run.deltas

            def listener(op: str, key: str, value: Any) -> None:
                if deltas is not None:
                    if key.startswith(ENGINE_PREFIX):
                        raise ValueError(
                            f"context key {key!r} is reserved: keys starting with "
                            f"{ENGINE_PREFIX!r} hold the engine's run state; rename it"
                        )
                    deltas.pop(key, None)
                    deltas[key] = (
                        PatchOperation("set", key, value)
                        if op == "set"
                        else (PatchOperation("delete", key))
                    )
                if emit is not None:
                    emit(
                        "context:change",
                        {"sourceNode": node_id, "key": key, "op": op, "value": value},
                    )

            ctx = TrackedContext(run.ctx, node_id, listener=listener)
        return NodeContext(
            node_id=node_id,
            context=ctx,
            input=node_input,
            params=node.params,
            execution_id=run.state.execution_id,
            blueprint_id=run.blueprint.id,
            max_attempts=config.max_retries,
            iteration=act.iteration,
            dependencies=run.deps,
            error=ErrorRecord.model_validate(act.error)
            if act.kind == FALLBACK and act.error
            else None,
            uses=run.state.batches[act.node_id].worker if act.kind == ITEM else node.uses,
            _predecessors=lambda: self._sources(run, act),
        )

    def _sources(self, run: _Run, act: Activation) -> tuple[str, ...]:
        """The executions whose completion activated ``act`` (see NodeContext.predecessors)."""
        if act.kind == ITEM:
            return run.via.get(act.node_id) or self._expand(run, (act.node_id,), set())
        if act.kind == FALLBACK:
            direct: tuple[str, ...] = (act.owner,) if act.owner else ()
        elif act.sources:
            direct = act.sources
        else:
            direct = tuple(k for k in run.state.inputs.get(act.node_id, ()) if k)
        return self._expand(run, direct, set())

    def _expand(self, run: _Run, direct: Iterable[str], seen: set[str]) -> tuple[str, ...]:
        out: list[str] = []
        nodes = run.plan.nodes
        for p in direct:
            n = nodes.get(p)
            if n is not None and n.config.fallback and run.state.nodes[p].status == "recovered":
                p = n.config.fallback  # the fallback delivered in place of the failed node
                n = nodes.get(p)
            if n is None or n.uses not in BUILTIN_NODE_TYPES:
                out.append(p)
            elif n.uses == BATCH_SCATTER and p in run.state.batches:
                out.extend(f"{p}[{i}]" for i in range(len(run.state.batches[p].items)))
            elif p in run.via:
                out.extend(run.via[p])
            elif p not in seen:  # a built-in that ran in an earlier leg: use its delivery slot
                seen.add(p)
                slot = run.state.inputs.get(p, ())
                out.extend(self._expand(run, [k for k in slot if k], seen))
        return tuple(dict.fromkeys(out))

    def _served(self, run: _Run, node_id: str, served: ServedOutcome) -> tuple[int, Any]:
        """Apply a recorded outcome's context writes and return it as this execution's."""
        for op, key, value in served.writes:
            if op == "set":
                run.write(key, value, node_id)
            else:
                run.ctx.data.pop(key, None)
                run.emit("context:change", {"sourceNode": node_id, "key": key, "op": "delete"})
        if served.kind == "finish":
            return (_OK, served.value)
        if served.kind == "awaiting":
            return (_AWAIT, served.value)
        run.emit("node:error", {"nodeId": node_id, "error": served.value})
        return (_ERR, served.value)

    async def _user(
        self,
        run: _Run,
        act: Activation,
        node_id: str,
        impl_key: str,
        config: NodeConfig,
        node_input: Any,
    ) -> NodeResult:
        impl = run.registry[impl_key]
        nctx = self._node_context(run, act, node_id, node_input, config)
        if (
            config.max_retries == 1
            and config.timeout is None
            and not self.middleware
            and run.attempt_window is None
            and not isinstance(impl, type)
        ):
            # Fast path: a plain function node with nothing around it.
            r = impl(nctx)
            if inspect.isawaitable(r):
                r = await r
            return r if type(r) is NodeResult else coerce_result(r, node_id)
        on_retry = None
        if run.bus is not None:

            def on_retry(attempt: int, delay: float, exc: BaseException) -> None:
                run.emit(
                    "node:retry",
                    {
                        "nodeId": node_id,
                        "attempt": attempt,
                        "delay": delay,
                        "error": str(exc) or type(exc).__name__,
                    },
                )

        window: dict[str, int] = {}
        if run.attempt_window is not None:
            window = {"first_attempt": run.attempt_window[0], "last_attempt": run.attempt_window[1]}
        if is_node_class(impl):
            cls: Any = impl

            async def call(c: NodeContext) -> NodeResult:
                return await run_class(
                    cls, c, config, on_retry=on_retry, sleep=self.sleep, **window
                )
        else:
            fn: Any = impl

            async def call(c: NodeContext) -> NodeResult:
                return await run_function(
                    fn, c, config, on_retry=on_retry, sleep=self.sleep, **window
                )

        if self.middleware:
            r = await compose(self.middleware, call)(nctx)
            return coerce_result(r, node_id)
        return await call(nctx)

    def _resolve_inputs(self, node: NodeDefinition, ctx: Mapping[str, Any]) -> Any:
        spec = node.inputs
        if isinstance(spec, str):
            return resolve_input_ref(spec, ctx)
        assert spec is not None
        return {k: resolve_input_ref(v, ctx) for k, v in spec.items()}

    # -- built-in nodes ----------------------------------------------------------------------

    async def _builtin(
        self, run: _Run, act: Activation, node: NodeDefinition, node_input: Any
    ) -> tuple[int, Any]:
        uses = node.uses
        if uses == WAIT:
            return (_AWAIT, {"reason": "external_event", "eventName": node.params.get("eventName")})
        if uses == WEBHOOK:
            return (_AWAIT, webhook_details(run.state.execution_id, node, node_input))
        if uses == SLEEP:
            ms = parse_duration(node.params.get("duration"))
            if ms <= 0:
                return (_OK, NodeResult(node_input))
            wake = datetime.now(UTC) + timedelta(milliseconds=ms)
            return (
                _AWAIT,
                {
                    "reason": "timer",
                    "wakeUpAt": wake.isoformat(),
                    "duration": ms,
                    "input": node_input,
                },
            )
        if uses == LOOP_CONTROLLER:
            return (_OK, self._loop_step(run, node, node_input))
        if uses == BATCH_SCATTER:
            if not isinstance(node_input, list | tuple):
                raise FatalNodeError(
                    f"batch node {node.id!r} needs a list input, got {type(node_input).__name__}",
                    node_id=node.id,
                )
            return (_SCATTER, list(node_input))
        if uses == BATCH_GATHER:
            key = node.params.get("outputKey") or node.id
            run.write(key, node_input, node.id)
            return (_OK, NodeResult(node_input))
        if uses == SUBFLOW:
            return await self._subflow(run, act, node, node_input)
        raise FlowcraftError(f"unknown built-in {uses!r}")  # pragma: no cover

    def _loop_step(self, run: _Run, node: NodeDefinition, node_input: Any) -> NodeResult:
        fn = run.plan.loop_conditions[node.id]
        ns = run.state.nodes[node.id]
        try:
            go = bool(fn(Scope(run.ctx.data, NodeResult(node_input))))
        except ExpressionError as exc:
            raise ExpressionError(exc.expression, f"loop {node.id!r}: {exc.reason}") from exc
        if go:
            limit = node.params.get("maxIterations") or DEFAULT_MAX_ITERATIONS
            if ns.iteration + 1 >= limit:
                raise LoopLimitExceededError(
                    f"loop {node.id!r} reached maxIterations={limit}",
                    node_id=node.id,
                    is_fatal=True,
                )
            return NodeResult(node_input, "continue")
        return NodeResult(node_input, "break")

    def subflow_start(
        self, run: _Run, node: NodeDefinition, node_input: Any
    ) -> tuple[str, dict[str, Any], Any]:
        """Validate a subflow node; returns the child blueprint id, the child's initial context
        (``params.inputs``: child key -> parent reference) and its start nodes' input."""
        child_id = node.params.get("blueprintId")
        if not isinstance(child_id, str) or not child_id:
            raise FatalNodeError(
                f"subflow node {node.id!r} needs params.blueprintId", node_id=node.id
            )
        if child_id not in self.blueprints:
            raise FatalNodeError(
                f"subflow node {node.id!r}: unknown blueprint {child_id!r}", node_id=node.id
            )
        mapping = node.params.get("inputs")
        if isinstance(mapping, Mapping):
            initial = {ck: resolve_input_ref(pk, run.ctx.data) for ck, pk in mapping.items()}
            return child_id, initial, None
        return child_id, {}, node_input

    async def _subflow(
        self, run: _Run, act: Activation, node: NodeDefinition, node_input: Any
    ) -> tuple[int, Any]:
        child_id, initial, start_input = self.subflow_start(run, node, node_input)
        child = await self.run(
            self.blueprints[child_id],
            initial,
            registry=run.registry,
            execution_id=f"{run.state.execution_id}/{node.id}",
            start_input=start_input,
        )
        if child.status == "awaiting":
            return (
                _AWAIT,
                {"reason": "subflow", "blueprintId": child_id, "child": child.to_dict()},
            )
        if child.status != "completed":
            first = child.errors[0].message if child.errors else child.status
            raise FlowcraftError(
                f"subflow {child_id!r} of node {node.id!r} ended {child.status}: {first}",
                node_id=node.id,
            )
        return (_OK, NodeResult(self.subflow_output(run, node, child)))

    def subflow_output(self, run: _Run, node: NodeDefinition, child: WorkflowResult) -> Any:
        """The output of a subflow node from its finished child run (``outputs`` mapping)."""
        outs = node.params.get("outputs")
        if isinstance(outs, Mapping):
            res: dict[str, Any] = {}
            for pk, ck in outs.items():
                v = child.context.get(output_key(ck), child.context.get(ck))
                res[pk] = v
                run.write(pk, v, node.id)
            return res
        bp = self.blueprints[child.blueprint_id]
        terms = [t for t in terminal_node_ids(bp) if child.node_statuses.get(t) == "completed"]
        if len(terms) == 1:
            return child.context.get(output_key(terms[0]))
        return {t: child.context.get(output_key(t)) for t in terms}

    async def _resume_child(
        self,
        node: NodeDefinition,
        details: Mapping[str, Any],
        output: Any,
        action: str | None,
        reg: Mapping[str, NodeImplementation],
    ) -> WorkflowResult:
        child_state = details["child"]
        bp = self.get_blueprint(details["blueprintId"])
        return await self.resume(bp, child_state, output=output, action=action, registry=reg)

    def _complete_subflow(
        self, run: _Run, node: NodeDefinition, child: WorkflowResult
    ) -> list[Activation]:
        """Complete subflow ``node`` from its resumed ``child`` exactly as when the child ended
        without awaiting (and as the distributed engine does): the same error message, the
        node's delivered input for its fallback, and no action (the resume's action routed
        the child's resumed node, not the subflow node)."""
        if child.status != "completed":
            first = child.errors[0].message if child.errors else child.status
            rec = ErrorRecord(
                message=f"subflow {child.blueprint_id!r} of node {node.id!r} ended "
                f"{child.status}: {first}",
                name="FlowcraftError",
                node_id=node.id,
                execution_id=run.state.execution_id,
            ).to_wire()
            run.emit("node:error", {"nodeId": node.id, "error": rec})
            return run.kernel.on_failed(node.id, rec, run.kernel.input_for(node.id))
        out = self.subflow_output(run, node, child)
        res = NodeResult(out)
        run.emit("node:finish", {"nodeId": node.id, "result": res.to_wire()})
        return self.apply_outcome(run, Activation(node.id, None), (_OK, res))

    # -- finishing ---------------------------------------------------------------------------

    async def _finish(self, run: _Run) -> WorkflowResult:
        st = run.state
        status: WorkflowStatus
        if run.cancel_requested:
            status = "cancelled"
        elif st.errors:
            status = "failed"
        elif st.awaiting:
            status = "awaiting"
        elif any(ns.status not in DONE_NODE_STATUSES for ns in st.nodes.values()):
            status = "stalled"
            remaining = [n for n, ns in st.nodes.items() if ns.status not in DONE_NODE_STATUSES]
            run.emit("workflow:stall", {"remainingNodes": remaining})
        else:
            status = "completed"
        st.status = status
        if status == "awaiting":
            run.emit("workflow:pause", {"awaitingNodeIds": list(st.awaiting)})
        run.emit("workflow:finish", {"status": status, "errors": st.errors})
        await run.flush()
        result = self._result(run)
        if status == "awaiting" and self.timer_store is not None:
            await self._register_timers(result)
        return result

    async def _register_timers(self, result: WorkflowResult) -> None:
        from .scheduler import Timer

        assert self.timer_store is not None
        for node_id, d in result.awaiting.items():
            # A sleep wakes at wakeUpAt; a webhook with a timeout fails at timeoutAt.
            at = d.get("wakeUpAt") if d.get("reason") == "timer" else None
            if d.get("reason") == "webhook":
                at = d.get("timeoutAt")
            if at:
                await self.timer_store.add(
                    Timer(
                        execution_id=result.execution_id,
                        blueprint_id=result.blueprint_id,
                        node_id=node_id,
                        wake_at=datetime.fromisoformat(at).timestamp(),
                        state=result.to_dict(),
                    )
                )

    def _result(self, run: _Run) -> WorkflowResult:
        st = run.state
        return WorkflowResult(
            execution_id=st.execution_id,
            blueprint_id=st.blueprint_id,
            status=st.status,
            context=run.ctx.data,
            node_statuses={k: v.status for k, v in st.nodes.items()},
            errors=[ErrorRecord.model_validate(e) for e in st.errors],
            awaiting=dict(st.awaiting),
            state=st,
        )


def resolve_input_ref(ref: str, ctx: Mapping[str, Any]) -> Any:
    """Resolve one ``inputs`` reference against the context.

    ``_key`` reads that raw context key; ``node.a.b`` walks node ``node``'s output (falling back
    to the context key ``node`` when no such node output exists); a bare name is that node's
    output if it has one, else the context key of that name; missing values are None.
    """
    if ref.startswith("_"):
        return ctx.get(ref)
    ok = output_key(ref)
    if ok in ctx:
        return ctx[ok]
    if "." in ref:
        base, *path = ref.split(".")
        ob = output_key(base)
        value = ctx[ob] if ob in ctx else ctx.get(base)
        for p in path:
            if isinstance(value, Mapping):
                value = value.get(p)
            elif isinstance(value, list | tuple) and p.lstrip("-").isdigit():
                i = int(p)
                value = value[i] if -len(value) <= i < len(value) else None
            else:
                return ctx.get(ref)
        return value
    return ctx.get(ref)


def run_sync(coro: Awaitable[Any] | Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine to completion from synchronous code (scripts, the CLI)."""
    if not inspect.isawaitable(coro):
        coro = coro()

    async def main() -> Any:
        return await coro

    return asyncio.run(main())
