"""Helpers for testing and debugging workflows.

* :class:`EventRecorder`: an event bus that records every event (``types()``, ``find()``,
  ``filter()``, ``format()``, ``print()``).
* :func:`run_with_trace`: run with a recorder attached; prints the trace when the run did not
  complete (or always with ``FLOWCRAFT_DEBUG`` set) and returns a :class:`TracedResult`
  whose ``.trace`` is the recorder.
* :class:`Stepper`: execute a run one node at a time (``await stepper.next()``), step back
  (``await stepper.prev()``), start over (``stepper.reset()``).

Submodules for backend authors: :mod:`.conformance` (the adapter conformance suite and the
store suites; needs the ``testing`` extra), :mod:`.services` (backing servers for tests) and
:mod:`.plugin` (the pytest plugin: run-view check, service fixtures).
"""

from __future__ import annotations

from .recorder import EventRecorder, format_event, format_events
from .stepper import Step, StepKind, Stepper
from .trace import DEBUG_ENV, TracedResult, run_with_trace

__all__ = [
    "DEBUG_ENV",
    "EventRecorder",
    "Step",
    "StepKind",
    "Stepper",
    "TracedResult",
    "format_event",
    "format_events",
    "run_with_trace",
]
