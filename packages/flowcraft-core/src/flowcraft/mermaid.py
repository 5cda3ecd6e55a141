"""Mermaid ``flowchart`` rendering of a blueprint, optionally highlighted with a run's outcome.

Node ids may contain anything (spaces, quotes, brackets, ``-->``, unicode), so they are never
written into the diagram source as Mermaid ids. Each node gets a generated id ``n0``, ``n1``, …
in blueprint order, and its real id appears only inside a double-quoted label.

Escaping scheme (see :func:`escape_label`), applied to every piece of user text (node ids,
``uses`` keys, edge actions, conditions and transforms), using Mermaid entity codes:

==========================  ==================
character                   written as
==========================  ==================
``"``                       ``#quot;``
``#``                       ``#35;``
``<``                       ``#lt;``
``>``                       ``#gt;``
``&``                       ``#amp;``
``|``                       ``#124;``
backtick                    ``#96;``
control characters          ``#<decimal code>;`` (e.g. newline is ``#10;``)
==========================  ==================

Everything else (including non-ASCII text) is written as is. The only raw markup the generator
adds is the ``<br/>`` between a node's id and its ``uses``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from .blueprint import EdgeDefinition, WorkflowBlueprint

__all__ = [
    "STATUS_STYLES",
    "TAKEN_EDGE_STYLE",
    "escape_label",
    "generate_mermaid",
    "generate_mermaid_for_run",
]

STATUS_STYLES: Final[Mapping[str, str]] = {
    "completed": "fill:#dcfce7,stroke:#16a34a,color:#14532d",
    "failed": "fill:#fee2e2,stroke:#dc2626,color:#7f1d1d",
    "skipped": "fill:#f3f4f6,stroke:#9ca3af,color:#6b7280,stroke-dasharray:4 3",
    "awaiting": "fill:#fef9c3,stroke:#ca8a04,color:#713f12",
    "recovered": "fill:#ffedd5,stroke:#ea580c,color:#7c2d12",
    "running": "fill:#dbeafe,stroke:#2563eb,color:#1e3a8a",
    "pending": "fill:#ffffff,stroke:#d1d5db,color:#374151",
    "cancelled": "fill:#e5e7eb,stroke:#4b5563,color:#1f2937,stroke-dasharray:2 2",
}
"""``classDef`` style of each node status a run can report, in the order classes are emitted."""

TAKEN_EDGE_STYLE: Final = "stroke-width:3px,stroke:#2563eb"
"""``linkStyle`` applied to the edges a run took."""

_INDENT: Final = "    "
_ESCAPES: Final[Mapping[str, str]] = {
    '"': "#quot;",
    "#": "#35;",
    "<": "#lt;",
    ">": "#gt;",
    "&": "#amp;",
    "|": "#124;",
    "`": "#96;",
}


def escape_label(text: str) -> str:
    """Escape user text for use inside a double-quoted Mermaid label (scheme in module doc)."""
    out: list[str] = []
    for ch in text:
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"#{ord(ch)};")
        else:
            out.append(ch)
    return "".join(out)


def _edge_label(edge: EdgeDefinition) -> str:
    parts = [p for p in (edge.action, edge.condition, edge.transform) if p]
    return " | ".join(parts)


def _diagram(bp: WorkflowBlueprint) -> tuple[list[str], dict[str, str]]:
    """The base diagram's lines and the generated Mermaid id of every node id."""
    lines = ["flowchart TD"]
    ids: dict[str, str] = {}
    for node in bp.nodes:
        if node.id in ids:
            continue  # a duplicate id (only possible in unvalidated input) is drawn once
        ids[node.id] = f"n{len(ids)}"
        lines.append(
            f'{_INDENT}{ids[node.id]}["{escape_label(node.id)}<br/>{escape_label(node.uses)}"]'
        )
    # Endpoints that are not nodes (only in unvalidated input) still get a box, so that every
    # edge is drawn and linkStyle indexes match positions in bp.edges.
    for edge in bp.edges:
        for end in (edge.source, edge.target):
            if end not in ids:
                ids[end] = f"n{len(ids)}"
                lines.append(f'{_INDENT}{ids[end]}["{escape_label(end)}"]')
    if not ids:
        lines.append(f'{_INDENT}n0["(empty workflow)"]')
    for edge in bp.edges:
        label = _edge_label(edge)
        arrow = f'-->|"{escape_label(label)}"|' if label else "-->"
        lines.append(f"{_INDENT}{ids[edge.source]} {arrow} {ids[edge.target]}")
    # Fallback links come after the edges, so linkStyle indexes still match bp.edges.
    for node in bp.nodes:
        fb = node.config.fallback
        if fb is not None and fb in ids and node.id in ids:
            lines.append(f'{_INDENT}{ids[node.id]} -.->|"fallback"| {ids[fb]}')
    return lines, ids


def generate_mermaid(bp: WorkflowBlueprint) -> str:
    """Mermaid ``flowchart TD`` source for ``bp`` (no trailing newline).

    Each node is drawn as ``nK["<id><br/><uses>"]`` and each edge, in ``bp.edges`` order, as
    ``nA --> nB`` or ``nA -->|"<action> | <condition> | <transform>"| nB`` (present parts only);
    then each node's fallback as a dotted ``nA -.->|"fallback"| nF``. An empty blueprint yields
    a diagram with a single placeholder node.
    """
    lines, _ = _diagram(bp)
    return "\n".join(lines)


def generate_mermaid_for_run(
    bp: WorkflowBlueprint, node_statuses: Mapping[str, str], taken_edges: Iterable[str] = ()
) -> str:
    """Mermaid source for ``bp`` highlighted with a run's outcome.

    ``node_statuses`` maps node ids to a status (``completed``, ``failed``, ``skipped``,
    ``awaiting``, ``recovered``, ``running``, ``pending`` or ``cancelled``); a ``classDef`` is
    emitted for each status in use, then ``class nK <status>`` for each node in blueprint order.
    Unknown statuses and ids that are not nodes are ignored. ``taken_edges`` holds edge keys
    (:attr:`EdgeDefinition.key`); every edge with such a key gets a ``linkStyle <index>`` line,
    the index being its position in ``bp.edges``.
    """
    lines, ids = _diagram(bp)
    assigned: list[tuple[str, str]] = []
    for node_id, mermaid_id in ids.items():
        status = node_statuses.get(node_id)
        if status is not None and status in STATUS_STYLES:
            assigned.append((mermaid_id, status))
    used = {status for _, status in assigned}
    lines.extend(
        f"{_INDENT}classDef {status} {style}"
        for status, style in STATUS_STYLES.items()
        if status in used
    )
    lines.extend(f"{_INDENT}class {mermaid_id} {status}" for mermaid_id, status in assigned)
    taken = set(taken_edges)
    lines.extend(
        f"{_INDENT}linkStyle {i} {TAKEN_EDGE_STYLE}"
        for i, edge in enumerate(bp.edges)
        if edge.key in taken
    )
    return "\n".join(lines)
