"""Run a workflow with every event recorded, and print the trace when something went wrong."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TextIO

from ..blueprint import WorkflowBlueprint
from ..runtime import FlowRuntime, WorkflowResult
from .recorder import EventRecorder

__all__ = ["DEBUG_ENV", "TracedResult", "run_with_trace"]

DEBUG_ENV = "FLOWCRAFT_DEBUG"
"""When this environment variable is set (to anything but ``""``, ``0`` or ``false``),
:func:`run_with_trace` prints the trace of every run, not only of runs that did not complete."""


@dataclass
class TracedResult(WorkflowResult):
    """A :class:`~flowcraft.runtime.WorkflowResult` that also carries the run's event trace."""

    trace: EventRecorder = field(default_factory=EventRecorder, repr=False, compare=False)
    """The recorder that saw every event of the run (``trace.types()``, ``trace.format()``)."""


def _debug_enabled() -> bool:
    value = os.environ.get(DEBUG_ENV, "")
    return value.strip().lower() not in ("", "0", "false", "no")


def _sibling(runtime: FlowRuntime, recorder: EventRecorder) -> FlowRuntime:
    """A runtime configured like ``runtime`` but emitting to ``recorder``."""
    return FlowRuntime(
        registry=runtime.registry,
        blueprints=runtime.blueprints,
        dependencies=runtime.dependencies,
        evaluator=runtime.evaluator,
        middleware=runtime.middleware,
        event_bus=recorder,
        serializer=runtime.serializer,
        concurrency=runtime.concurrency,
        strict=runtime.strict,
        timer_store=runtime.timer_store,
    )


async def run_with_trace(
    runtime: FlowRuntime,
    blueprint: WorkflowBlueprint | Mapping[str, Any] | str,
    initial: Mapping[str, Any] | None = None,
    *,
    print_trace: bool | None = None,
    file: TextIO | None = None,
    **run_kwargs: Any,
) -> TracedResult:
    """Run ``blueprint`` like ``runtime.run(blueprint, initial, **run_kwargs)``, recording events.

    The run happens on a sibling runtime with the same registry, blueprints, dependencies,
    evaluator, middleware, serializer, concurrency, strictness and timer store, whose event bus
    is a fresh :class:`EventRecorder` forwarding to ``runtime.event_bus``; ``runtime`` itself is
    not changed (so ``runtime.cancel`` does not reach this run: pass ``signal=`` instead).

    Returns a :class:`TracedResult`: the usual result plus ``.trace``, the recorder.

    The trace is written to ``file`` (default: standard error) when ``print_trace`` is True;
    when it is None (the default), it is written when the run did not complete (failed,
    awaiting, stalled or cancelled), when the run raised (the exception is then re-raised), or
    when the ``FLOWCRAFT_DEBUG`` environment variable is set. ``print_trace=False`` never prints.
    """
    recorder = EventRecorder(forward=runtime.event_bus)
    sibling = _sibling(runtime, recorder)
    out = file if file is not None else sys.stderr
    try:
        result = await sibling.run(blueprint, initial, **run_kwargs)
    except Exception:
        if print_trace is not False:
            recorder.print("Flowcraft trace (run raised)", file=out)
        raise
    traced = TracedResult(
        **{f.name: getattr(result, f.name) for f in fields(WorkflowResult)}, trace=recorder
    )
    show = print_trace
    if show is None:
        show = result.status != "completed" or _debug_enabled()
    if show:
        recorder.print(f"Flowcraft trace of {result.blueprint_id!r}: {result.status}", file=out)
    return traced
