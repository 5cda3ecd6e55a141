"""Blueprint linter: reports every problem of a blueprint at once instead of stopping at the first.

:func:`lint_blueprint` accepts a validated :class:`~flowcraft.blueprint.WorkflowBlueprint` or a raw
mapping (e.g. parsed from a JSON file). Raw input is parsed leniently, node by node and edge by
edge, so one malformed item does not hide the problems of the rest.

Issue codes (severity ``error`` unless noted):

- ``INVALID_BLUEPRINT``: top-level shape problems of raw input (``id``, ``nodes``, ``edges``,
  ``metadata``, ``metadata.cycleEntryPoints``).
- ``INVALID_NODE`` / ``INVALID_EDGE``: a node or edge of raw input fails the schema.
- ``DUPLICATE_NODE_ID``: two nodes share an id.
- ``INVALID_EDGE_SOURCE`` / ``INVALID_EDGE_TARGET``: an edge names a node that does not exist.
- ``INVALID_FALLBACK``: ``config.fallback`` names an unknown node or the node itself.
- ``MISSING_NODE_IMPLEMENTATION``: with a registry, ``uses`` is neither registered nor built in.
- ``ORPHAN_NODE`` (warning): not reachable from any start node via edges and fallback links.
- ``INVALID_BATCH_WORKER_KEY``: a ``batch-scatter`` without ``params.workerUsesKey``, or (with a
  registry) naming a key that is neither registered nor built in.
- ``INVALID_SUBFLOW_BLUEPRINT_ID``: a ``subflow`` without ``params.blueprintId``, or (with
  ``blueprints``) naming an unknown blueprint.
- ``INVALID_LOOP``: a ``loop-controller`` without ``params.condition`` or without an outgoing edge
  whose action is ``continue``.
- ``INVALID_EXPRESSION``: an edge ``condition``/``transform`` or a loop ``params.condition`` that
  :func:`flowcraft.expressions.validate_expression` rejects (skipped if that module is absent).
- ``CYCLE`` (warning): one per elementary cycle that does not pass through a ``loop-controller``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

from pydantic import ValidationError

from .analysis import find_cycles, start_node_ids
from .blueprint import EdgeDefinition, NodeDefinition, WorkflowBlueprint
from .builtins import BATCH_SCATTER, BUILTIN_NODE_TYPES, LOOP_CONTROLLER, SUBFLOW

__all__ = ["LintIssue", "LintResult", "Severity", "lint_blueprint"]

Severity = Literal["error", "warning"]
"""How serious a lint issue is; only errors make a blueprint invalid."""


@dataclass(frozen=True)
class LintIssue:
    """One problem found by the linter, with the node (and related node) it concerns.

    For edge issues ``node_id`` is the edge's source and ``related_id`` its target; for fallback
    issues ``related_id`` is the fallback id.
    """

    code: str
    message: str
    node_id: str | None = None
    related_id: str | None = None
    severity: Severity = "error"


@dataclass(frozen=True)
class LintResult:
    """Outcome of :func:`lint_blueprint`: every issue, and whether none of them is an error."""

    is_valid: bool
    issues: list[LintIssue] = field(default_factory=list)

    @property
    def errors(self) -> list[LintIssue]:
        """The issues of severity ``error``."""
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[LintIssue]:
        """The issues of severity ``warning``."""
        return [i for i in self.issues if i.severity == "warning"]


def _validation_details(exc: ValidationError) -> str:
    parts: list[str] = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _edge_name(source: object, target: object) -> str:
    return f"edge {source!r} -> {target!r}"


@dataclass
class _Parsed:
    bp: WorkflowBlueprint
    placeholders: set[int]  # indexes into bp.nodes of nodes that failed the schema


def _as_items(value: Any, name: str, issues: list[LintIssue]) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return list(value.values())
    if isinstance(value, list | tuple):
        return list(value)
    issues.append(
        LintIssue(
            "INVALID_BLUEPRINT",
            f"blueprint: {name!r} must be a list (or an object keyed by id), "
            f"got {type(value).__name__}",
        )
    )
    return []


def _parse_raw(raw: Mapping[str, Any], issues: list[LintIssue]) -> _Parsed:
    bp_id = raw.get("id")
    if not isinstance(bp_id, str) or not bp_id:
        issues.append(LintIssue("INVALID_BLUEPRINT", "blueprint: 'id' must be a non-empty string"))
        bp_id = "<unnamed>"

    nodes: list[NodeDefinition] = []
    placeholders: set[int] = set()
    for i, item in enumerate(_as_items(raw.get("nodes"), "nodes", issues)):
        try:
            nodes.append(NodeDefinition.model_validate(item))
            continue
        except ValidationError as exc:
            details = _validation_details(exc)
        raw_id = item.get("id") if isinstance(item, Mapping) else None
        if isinstance(raw_id, str) and raw_id:
            issues.append(
                LintIssue("INVALID_NODE", f"node {raw_id!r} (nodes[{i}]): {details}", raw_id)
            )
            # Keep the node in the graph so edges to it are not reported as dangling.
            raw_uses = item.get("uses")
            placeholders.add(len(nodes))
            nodes.append(
                NodeDefinition.model_construct(
                    id=raw_id, uses=raw_uses if isinstance(raw_uses, str) else ""
                )
            )
        else:
            issues.append(LintIssue("INVALID_NODE", f"nodes[{i}]: {details}"))

    edges: list[EdgeDefinition] = []
    for i, item in enumerate(_as_items(raw.get("edges"), "edges", issues)):
        try:
            edges.append(EdgeDefinition.model_validate(item))
        except ValidationError as exc:
            details = _validation_details(exc)
            src = item.get("source") if isinstance(item, Mapping) else None
            tgt = item.get("target") if isinstance(item, Mapping) else None
            where = f"{_edge_name(src, tgt)} (edges[{i}])" if isinstance(item, Mapping) else ""
            issues.append(
                LintIssue(
                    "INVALID_EDGE",
                    f"{where or f'edges[{i}]'}: {details}",
                    src if isinstance(src, str) else None,
                    tgt if isinstance(tgt, str) else None,
                )
            )

    metadata = raw.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, Mapping):
        issues.append(
            LintIssue(
                "INVALID_BLUEPRINT",
                f"blueprint: 'metadata' must be an object, got {type(metadata).__name__}",
            )
        )
        metadata = {}
    bp = WorkflowBlueprint.model_construct(
        id=bp_id, nodes=tuple(nodes), edges=tuple(edges), metadata=dict(metadata)
    )
    return _Parsed(bp, placeholders)


def _expression_checker() -> Callable[[str], str | None] | None:
    """``expr -> reason it is invalid, or None``; None when no expression validator exists."""
    try:
        module = importlib.import_module("flowcraft.expressions")
    except ModuleNotFoundError as exc:
        if exc.name in ("flowcraft.expressions", "flowcraft"):
            return None
        raise
    validate = getattr(module, "validate_expression", None)
    if not callable(validate):
        return None

    def check(expr: str) -> str | None:
        try:
            verdict = validate(expr)
        except Exception as exc:  # a rejected expression (ExpressionError) or a crash on it
            reason = getattr(exc, "reason", None)
            return str(reason) if reason else (str(exc) or type(exc).__name__)
        if verdict is None or verdict is True:
            return None
        if verdict is False:
            return "rejected by the expression validator"
        if isinstance(verdict, str):
            return verdict or None
        if isinstance(verdict, Sequence):
            return "; ".join(str(v) for v in verdict) or None
        return None

    return check


def _non_empty_str(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value)


def lint_blueprint(
    source: WorkflowBlueprint | Mapping[str, Any],
    registry: Mapping[str, object] | None = None,
    blueprints: Mapping[str, WorkflowBlueprint] | None = None,
) -> LintResult:
    """Check a blueprint for every problem the linter knows (codes in the module doc).

    ``source`` is a validated blueprint or a raw mapping, which is parsed leniently and never
    raises on bad content. ``registry`` (node implementations by ``uses`` key) enables the
    implementation checks; ``blueprints`` (by id) enables the subflow target check. Every issue
    message names the node or edge concerned. ``is_valid`` is true when no issue is an error.
    """
    issues: list[LintIssue] = []
    if isinstance(source, WorkflowBlueprint):
        parsed = _Parsed(source, set())
    elif isinstance(source, Mapping):
        parsed = _parse_raw(source, issues)
    else:
        raise TypeError(
            f"lint_blueprint expects a WorkflowBlueprint or a mapping, got {type(source).__name__}"
        )
    bp = parsed.bp

    # Node ids: duplicates, and the first definition of each id.
    first: dict[str, int] = {}
    for i, node in enumerate(bp.nodes):
        if node.id in first:
            issues.append(
                LintIssue(
                    "DUPLICATE_NODE_ID",
                    f"node {node.id!r} (nodes[{i}]): duplicate node id, "
                    f"first defined at nodes[{first[node.id]}]",
                    node.id,
                )
            )
        else:
            first[node.id] = i
    by_id = {node_id: bp.nodes[i] for node_id, i in first.items()}

    for edge in bp.edges:
        name = _edge_name(edge.source, edge.target)
        if edge.source not in by_id:
            issues.append(
                LintIssue(
                    "INVALID_EDGE_SOURCE",
                    f"{name}: source {edge.source!r} does not exist",
                    edge.source,
                    edge.target,
                )
            )
        if edge.target not in by_id:
            issues.append(
                LintIssue(
                    "INVALID_EDGE_TARGET",
                    f"{name}: target {edge.target!r} does not exist",
                    edge.source,
                    edge.target,
                )
            )

    entry = bp.metadata.get("cycleEntryPoints")
    if entry is not None:
        if not isinstance(entry, list) or not all(isinstance(x, str) for x in entry):
            issues.append(
                LintIssue(
                    "INVALID_BLUEPRINT", "metadata.cycleEntryPoints: must be a list of node ids"
                )
            )
        else:
            issues.extend(
                LintIssue(
                    "INVALID_BLUEPRINT",
                    f"metadata.cycleEntryPoints: node {x!r} does not exist",
                    x,
                )
                for x in entry
                if x not in by_id
            )

    checked = [
        node
        for i, node in enumerate(bp.nodes)
        if i not in parsed.placeholders and first[node.id] == i
    ]

    for node in checked:
        fb = node.config.fallback
        if fb is None:
            continue
        if fb == node.id:
            issues.append(
                LintIssue(
                    "INVALID_FALLBACK",
                    f"node {node.id!r}: fallback names the node itself",
                    node.id,
                    fb,
                )
            )
        elif fb not in by_id:
            issues.append(
                LintIssue(
                    "INVALID_FALLBACK",
                    f"node {node.id!r}: fallback {fb!r} does not exist",
                    node.id,
                    fb,
                )
            )

    def implemented(key: str) -> bool:
        return key in BUILTIN_NODE_TYPES or (registry is not None and key in registry)

    if registry is not None:
        issues.extend(
            LintIssue(
                "MISSING_NODE_IMPLEMENTATION",
                f"node {node.id!r}: uses {node.uses!r}, which is not in the registry",
                node.id,
            )
            for node in checked
            if not implemented(node.uses)
        )

    continue_sources = {e.source for e in bp.edges if e.action == "continue"}
    for node in checked:
        if node.uses == BATCH_SCATTER:
            key = node.params.get("workerUsesKey")
            if not _non_empty_str(key):
                issues.append(
                    LintIssue(
                        "INVALID_BATCH_WORKER_KEY",
                        f"node {node.id!r}: batch-scatter requires params.workerUsesKey",
                        node.id,
                    )
                )
            elif registry is not None and not implemented(key):
                issues.append(
                    LintIssue(
                        "INVALID_BATCH_WORKER_KEY",
                        f"node {node.id!r}: params.workerUsesKey {key!r} is not in the registry",
                        node.id,
                    )
                )
        elif node.uses == SUBFLOW:
            target = node.params.get("blueprintId")
            if not _non_empty_str(target):
                issues.append(
                    LintIssue(
                        "INVALID_SUBFLOW_BLUEPRINT_ID",
                        f"node {node.id!r}: subflow requires params.blueprintId",
                        node.id,
                    )
                )
            elif blueprints is not None and target not in blueprints:
                issues.append(
                    LintIssue(
                        "INVALID_SUBFLOW_BLUEPRINT_ID",
                        f"node {node.id!r}: params.blueprintId {target!r} is not a known blueprint",
                        node.id,
                    )
                )
        elif node.uses == LOOP_CONTROLLER:
            if not _non_empty_str(node.params.get("condition")):
                issues.append(
                    LintIssue(
                        "INVALID_LOOP",
                        f"node {node.id!r}: loop-controller requires params.condition",
                        node.id,
                    )
                )
            if node.id not in continue_sources:
                issues.append(
                    LintIssue(
                        "INVALID_LOOP",
                        f"node {node.id!r}: loop-controller has no outgoing edge "
                        "with action 'continue'",
                        node.id,
                    )
                )

    check_expression = _expression_checker()
    if check_expression is not None:
        for edge in bp.edges:
            for attr in ("condition", "transform"):
                expr = getattr(edge, attr)
                if expr is None:
                    continue
                reason = check_expression(expr)
                if reason is not None:
                    issues.append(
                        LintIssue(
                            "INVALID_EXPRESSION",
                            f"{_edge_name(edge.source, edge.target)}: {attr} {expr!r} "
                            f"is not a valid expression: {reason}",
                            edge.source,
                            edge.target,
                        )
                    )
        for node in checked:
            cond = node.params.get("condition")
            if node.uses == LOOP_CONTROLLER and _non_empty_str(cond):
                reason = check_expression(cond)
                if reason is not None:
                    issues.append(
                        LintIssue(
                            "INVALID_EXPRESSION",
                            f"node {node.id!r}: params.condition {cond!r} "
                            f"is not a valid expression: {reason}",
                            node.id,
                        )
                    )

    # Reachability from the start nodes, along edges and fallback links.
    if len(by_id) > 1:
        links: dict[str, list[str]] = {node_id: [] for node_id in by_id}
        for edge in bp.edges:
            if edge.source in by_id and edge.target in by_id:
                links[edge.source].append(edge.target)
        for node_id, node in by_id.items():
            fb = node.config.fallback
            if fb is not None and fb in by_id:
                links[node_id].append(fb)
        reached = set(start_node_ids(bp))
        frontier = list(reached)
        while frontier:
            for nxt in links[frontier.pop()]:
                if nxt not in reached:
                    reached.add(nxt)
                    frontier.append(nxt)
        issues.extend(
            LintIssue(
                "ORPHAN_NODE",
                f"node {node_id!r}: not reachable from any start node",
                node_id,
                severity="warning",
            )
            for node_id in by_id
            if node_id not in reached
        )

    for cycle in find_cycles(bp):
        if any(by_id[n].uses == LOOP_CONTROLLER for n in cycle):
            continue
        path = " -> ".join(repr(n) for n in [*cycle, cycle[0]])
        issues.append(
            LintIssue(
                "CYCLE",
                f"cycle {path} does not pass through a loop-controller",
                cycle[0],
                cycle[1] if len(cycle) > 1 else cycle[0],
                severity="warning",
            )
        )

    return LintResult(is_valid=not any(i.severity == "error" for i in issues), issues=issues)
