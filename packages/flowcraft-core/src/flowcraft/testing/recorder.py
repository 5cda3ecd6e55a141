"""An event bus that records every event of a run, for assertions and readable traces."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TextIO

from ..events import EventBus, FlowcraftEvent

__all__ = ["EventRecorder", "format_event", "format_events"]

_VALUE_LIMIT = 60


def _short(value: Any, limit: int = _VALUE_LIMIT) -> str:
    """Compact one-line JSON-ish rendering of ``value``, cut to ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_text(error: Any) -> str:
    if isinstance(error, Mapping):
        name = error.get("name")
        message = error.get("message", "")
        return f"{name}: {message}" if name else str(message)
    return str(error)


def _ids(values: Any) -> str:
    if isinstance(values, list | tuple):
        return ", ".join(str(v) for v in values) or "-"
    return str(values)


def _details(ev: FlowcraftEvent) -> str:
    p = ev.payload
    t = ev.type
    node = p.get("nodeId", "")
    if t == "workflow:start":
        return f"blueprint={p.get('blueprintId', ev.blueprint_id)}"
    if t == "workflow:resume":
        action = p.get("action")
        return f"node={node}" + (f" action={action}" if action is not None else "")
    if t == "workflow:finish":
        errors = p.get("errors") or []
        return f"status={p.get('status')}" + (f" errors={len(errors)}" if errors else "")
    if t == "workflow:pause":
        return f"awaiting={_ids(p.get('awaitingNodeIds', []))}"
    if t == "workflow:stall":
        return f"remaining={_ids(p.get('remainingNodes', []))}"
    if t == "node:start":
        return f"{node} input={_short(p.get('input'))}"
    if t == "node:finish":
        result = p.get("result") or {}
        action = result.get("action") if isinstance(result, Mapping) else None
        output = result.get("output") if isinstance(result, Mapping) else result
        return f"{node} output={_short(output)}" + (f" action={action}" if action else "")
    if t == "node:error":
        return f"{node} {_error_text(p.get('error'))}"
    if t == "node:retry":
        return f"{node} attempt={p.get('attempt')} delay={p.get('delay')} error={p.get('error')}"
    if t == "node:fallback":
        return f"{node} -> fallback {p.get('fallback')}"
    if t == "node:skipped":
        return f"{node} ({p.get('reason')})"
    if t == "node:awaiting":
        details = p.get("details") or {}
        reason = details.get("reason") if isinstance(details, Mapping) else None
        return f"{node} reason={reason}"
    if t == "edge:evaluate":
        return (
            f"{p.get('source')} -> {p.get('target')} "
            f"condition={p.get('condition')!r} result={p.get('result')}"
        )
    if t == "context:change":
        src = p.get("sourceNode", "")
        if p.get("op") == "delete":
            return f"{src} delete {p.get('key')}"
        return f"{src} set {p.get('key')}={_short(p.get('value'))}"
    if t == "batch:start":
        return f"{p.get('batchId')} items={p.get('itemCount')}"
    if t == "batch:finish":
        return f"{p.get('batchId')} results={_short(p.get('results'))}"
    return _short(p, 100)


def format_event(event: FlowcraftEvent) -> str:
    """One readable line for ``event``: sequence number, type and a summary of its payload.

    For example ``  4 node:finish       a output=1`` or
    ``  6 context:change    b set total=3``. Long values are cut with an ellipsis.
    """
    return f"{event.seq:>3} {event.type:<17} {_details(event)}"


def format_events(events: list[FlowcraftEvent], title: str | None = None) -> str:
    """A multi-line trace of ``events``: a header line, then one :func:`format_event` line each.

    When the events come from more than one execution (subflows), a ``-- execution <id> --``
    line is inserted wherever the execution changes.
    """
    head = title or "Flowcraft trace"
    lines = [f"{head} ({len(events)} event{'s' if len(events) != 1 else ''})"]
    multi = len({e.execution_id for e in events}) > 1
    current: str | None = None
    for ev in events:
        if multi and ev.execution_id != current:
            current = ev.execution_id
            lines.append(f"-- execution {current} --")
        lines.append(format_event(ev))
    return "\n".join(lines)


class EventRecorder:
    """An :class:`~flowcraft.events.EventBus` that keeps every event it receives, in order.

    Pass it as a runtime's ``event_bus`` and inspect :attr:`events` afterwards. ``forward``
    (optional) is another bus every event is passed on to, so existing listeners keep working.
    """

    def __init__(self, forward: EventBus | None = None) -> None:
        """Start with no events; pass each later event on to ``forward`` when given."""
        self.events: list[FlowcraftEvent] = []
        """Every recorded event, in the order received."""
        self.forward = forward

    def emit(self, event: FlowcraftEvent) -> Awaitable[None] | None:
        """Record ``event`` (and pass it on to :attr:`forward`)."""
        self.events.append(event)
        if self.forward is not None:
            return self.forward.emit(event)
        return None

    def types(self) -> list[str]:
        """The type of every recorded event, in order."""
        return [e.type for e in self.events]

    def _matches(self, type_: str, node_id: str | None) -> Callable[[FlowcraftEvent], bool]:
        def match(e: FlowcraftEvent) -> bool:
            return e.type == type_ and (node_id is None or e.payload.get("nodeId") == node_id)

        return match

    def find(self, type_: str, *, node_id: str | None = None) -> FlowcraftEvent | None:
        """The first event of type ``type_`` (about node ``node_id`` when given), or None."""
        match = self._matches(type_, node_id)
        return next((e for e in self.events if match(e)), None)

    def filter(self, type_: str, *, node_id: str | None = None) -> list[FlowcraftEvent]:
        """Every event of type ``type_`` (about node ``node_id`` when given), in order."""
        match = self._matches(type_, node_id)
        return [e for e in self.events if match(e)]

    def clear(self) -> None:
        """Forget every recorded event."""
        self.events.clear()

    def format(self, title: str | None = None) -> str:
        """The recorded events as a readable multi-line trace (see :func:`format_events`)."""
        return format_events(self.events, title)

    def print(self, title: str | None = None, file: TextIO | None = None) -> None:
        """Write :meth:`format` to ``file`` (default: standard error)."""
        print(self.format(title), file=file if file is not None else sys.stderr)

    def __len__(self) -> int:
        """The number of recorded events."""
        return len(self.events)

    def __iter__(self) -> Iterator[FlowcraftEvent]:
        """Iterate over the recorded events."""
        return iter(self.events)
