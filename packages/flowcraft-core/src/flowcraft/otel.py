"""OpenTelemetry tracing for Flowcraft runs (optional extra: ``pip install flowcraft-core[otel]``).

:class:`OpenTelemetryMiddleware` is both a middleware and an event listener; give it to the
runtime in both roles::

    otel = OpenTelemetryMiddleware(tracer_provider=provider)
    runtime = FlowRuntime(registry=..., middleware=[otel], event_bus=otel)
    # with history too: event_bus=PersistentEventBus(store, forward=otel)

Spans:

* one root span per run leg, ``flowcraft.workflow <blueprint id>``, started at
  ``workflow:start`` (or ``workflow:resume``) and ended at ``workflow:finish`` with the run's
  status (ERROR when it failed, stalled or was cancelled). A resumed leg gets a new root that
  links to the previous leg's root. A subflow's root is a child of its parent run's root.
* one span per node execution, ``flowcraft.node <node id>`` (``<scatter>[i]`` for batch
  items), a child of the root, active while the node runs (spans the node opens nest under
  it), with attributes ``flowcraft.execution.id``, ``flowcraft.blueprint.id``,
  ``flowcraft.node.id``, ``flowcraft.node.uses``, ``flowcraft.attempt`` (the attempt that
  ended it), ``flowcraft.node.iteration``; ERROR status with the exception recorded when it
  fails; a ``flowcraft.retry`` span event per failed attempt that was retried.
* each node span **links** to the spans of the executions that activated it
  (:attr:`~flowcraft.nodes.NodeContext.predecessors`: the real taken edges, looking through
  built-in nodes: the node after a batch links to every item, the node after a wait to the
  node before the wait, a fallback to the node it replaces). Upstream never linked spans.

Ids come from the :class:`~flowcraft.nodes.NodeContext`, never from context keys (upstream
read ``runId``/``blueprintId`` from the workflow context, where they usually were not).
Without the event listener role there is no root span: node spans are then children of
whatever span is current where the run was started.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "flowcraft.otel needs OpenTelemetry: install the extra 'flowcraft-core[otel]'"
    ) from exc

from .events import FlowcraftEvent
from .middleware import CallNext, Middleware
from .nodes import NodeContext, NodeResult

__all__ = ["OpenTelemetryMiddleware"]

_ERROR_STATUSES = frozenset({"failed", "stalled", "cancelled"})


@dataclass
class _Execution:
    """Tracing state of one execution id (kept across resumes until the run is final)."""

    blueprint_id: str
    root: Span | None = None
    root_context: Context | None = None
    previous_root: SpanContext | None = None
    spans: dict[str, SpanContext] = field(default_factory=dict)
    """Latest span of each node (or batch item) id, for links."""
    open: dict[str, Span] = field(default_factory=dict)
    """Spans of node executions in progress."""


class OpenTelemetryMiddleware(Middleware):
    """Traces runs with OpenTelemetry: a root span per run leg, a linked span per node.

    ``tracer_provider`` defaults to the global one; ``tracer_name`` names the tracer.
    At most ``max_executions`` executions are tracked at once (awaiting runs keep their node
    spans for links after a resume); the oldest is dropped, ending its root, beyond that.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        tracer_name: str = "flowcraft",
        *,
        max_executions: int = 10_000,
    ) -> None:
        """Create the tracer from ``tracer_provider`` (default: the global provider)."""
        from . import __version__

        self.tracer = trace.get_tracer(tracer_name, __version__, tracer_provider=tracer_provider)
        self.max_executions = max_executions
        self._executions: OrderedDict[str, _Execution] = OrderedDict()

    # -- bookkeeping -------------------------------------------------------------------------

    def _execution(self, execution_id: str, blueprint_id: str) -> _Execution:
        ex = self._executions.get(execution_id)
        if ex is None:
            ex = self._executions[execution_id] = _Execution(blueprint_id)
            while len(self._executions) > self.max_executions:
                _, old = self._executions.popitem(last=False)
                if old.root is not None:
                    old.root.end()
        else:
            self._executions.move_to_end(execution_id)
        return ex

    def _start_root(self, ex: _Execution, execution_id: str, resumed: bool) -> None:
        if ex.root is not None:
            ex.root.end()
        parent: Context | None = None
        parent_id, sep, _ = execution_id.rpartition("/")
        if sep:  # a subflow's child run: nest under the parent run's root
            p = self._executions.get(parent_id)
            if p is not None and p.root_context is not None:
                parent = p.root_context
        links = [Link(ex.previous_root)] if ex.previous_root is not None else []
        root = self.tracer.start_span(
            f"flowcraft.workflow {ex.blueprint_id}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={
                "flowcraft.execution.id": execution_id,
                "flowcraft.blueprint.id": ex.blueprint_id,
                "flowcraft.workflow.resumed": resumed,
            },
            links=links,
        )
        ex.root = root
        ex.root_context = trace.set_span_in_context(root)

    # -- event listener ----------------------------------------------------------------------

    def emit(self, event: FlowcraftEvent) -> None:
        """Event-bus role: start and end root spans, note retries on node spans."""
        t = event.type
        if t in ("workflow:start", "workflow:resume"):
            started = self._execution(event.execution_id, event.blueprint_id)
            self._start_root(started, event.execution_id, t == "workflow:resume")
            return
        ex = self._executions.get(event.execution_id)
        if t == "workflow:finish":
            if ex is None or ex.root is None:
                return
            status = str(event.payload.get("status", ""))
            errors = event.payload.get("errors") or []
            root = ex.root
            root.set_attribute("flowcraft.workflow.status", status)
            root.set_attribute("flowcraft.workflow.error_count", len(errors))
            if status in _ERROR_STATUSES:
                first = errors[0].get("message") if errors and isinstance(errors[0], dict) else None
                root.set_status(Status(StatusCode.ERROR, first or f"workflow {status}"))
            elif status == "completed":
                root.set_status(Status(StatusCode.OK))
            root.end()
            ex.previous_root = root.get_span_context()
            ex.root = None
            ex.root_context = None
            if status != "awaiting":
                self._executions.pop(event.execution_id, None)
        elif t == "node:retry":
            span = ex.open.get(str(event.payload.get("nodeId"))) if ex is not None else None
            if span is not None:
                span.add_event(
                    "flowcraft.retry",
                    {
                        "flowcraft.attempt": int(event.payload.get("attempt", 0)),
                        "flowcraft.retry.delay": float(event.payload.get("delay", 0.0)),
                        "flowcraft.retry.error": str(event.payload.get("error", "")),
                    },
                )

    # -- middleware --------------------------------------------------------------------------

    async def around_node(self, ctx: NodeContext, call_next: CallNext) -> NodeResult:
        """Run the node inside its span (see the module docstring)."""
        ex = self._execution(ctx.execution_id, ctx.blueprint_id)
        links = [Link(sc) for p in ctx.predecessors if (sc := ex.spans.get(p)) is not None]
        attributes: dict[str, Any] = {
            "flowcraft.execution.id": ctx.execution_id,
            "flowcraft.blueprint.id": ctx.blueprint_id,
            "flowcraft.node.id": ctx.node_id,
            "flowcraft.node.uses": ctx.uses,
            "flowcraft.node.iteration": ctx.iteration,
            "flowcraft.attempt": ctx.attempt,
        }
        span = self.tracer.start_span(
            f"flowcraft.node {ctx.node_id}",
            context=ex.root_context,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
        )
        ex.spans[ctx.node_id] = span.get_span_context()
        ex.open[ctx.node_id] = span
        try:
            with trace.use_span(
                span, end_on_exit=False, record_exception=False, set_status_on_exception=False
            ):
                result = await call_next()
        except BaseException as exc:
            span.set_attribute("flowcraft.attempt", ctx.attempt)
            if isinstance(exc, Exception):
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            else:
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}"))
            raise
        else:
            span.set_attribute("flowcraft.attempt", ctx.attempt)
            if result.action is not None:
                span.set_attribute("flowcraft.node.action", result.action)
            span.set_status(Status(StatusCode.OK))
            return result
        finally:
            ex.open.pop(ctx.node_id, None)
            span.end()
