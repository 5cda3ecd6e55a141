"""Execution plan: a blueprint compiled once into the lookup tables the engine needs.

The plan separates *forward* edges (which count for joins) from *back* edges (which close a
cycle). Back edges never hold a join open; a taken back edge out of a ``loop-controller``
re-enters the loop body, any other taken back edge is ignored (a plain cycle runs once).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .analysis import start_node_ids
from .blueprint import NodeDefinition, WorkflowBlueprint
from .builtins import BATCH_GATHER, BATCH_SCATTER, LOOP_CONTROLLER, SUBFLOW, WEBHOOK
from .errors import BlueprintValidationError, ExpressionError
from .expressions import Evaluator
from .state import ENGINE_PREFIX

Compiled = Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True, slots=True, eq=False)  # identity equality: fast `in` checks
class EdgeSpec:
    """One edge with its compiled expressions and its role in the graph."""

    index: int
    key: str
    source: str
    target: str
    action: str | None
    condition: str | None
    transform: str | None
    condition_fn: Compiled | None
    transform_fn: Compiled | None
    is_back: bool


@dataclass(slots=True)
class Plan:
    """Lookup tables for one blueprint (and one evaluator)."""

    blueprint: WorkflowBlueprint
    evaluator: Evaluator
    nodes: dict[str, NodeDefinition]
    order: dict[str, int]
    out_edges: dict[str, tuple[EdgeSpec, ...]]
    in_forward: dict[str, tuple[EdgeSpec, ...]]
    forward_sources: dict[str, tuple[str, ...]]
    start_nodes: tuple[str, ...]
    fallback_owners: dict[str, tuple[str, ...]]
    loop_bodies: dict[str, frozenset[str]]
    needs_scope: dict[str, bool]
    has_condition_or_transform: bool
    loop_conditions: dict[str, Compiled] = field(default_factory=dict)
    checked_registry: object = None  # the registry this plan was last validated against
    fast_nodes: frozenset[str] = frozenset()
    """Nodes eligible for the runtime's plain-function fast path (for ``fast_registry``)."""
    fast_registry: object = None
    has_fallbacks: bool = False
    has_back_edges: bool = False
    join_any: frozenset[str] = frozenset()
    fan_in_nodes: frozenset[str] = frozenset()
    plain_out: dict[str, bool] = field(default_factory=dict)
    """Nodes whose out-edges carry no action, condition or transform (routing fast path)."""

    def fan_in(self, node_id: str) -> bool:
        """True when the node has two or more distinct forward predecessors."""
        return len(self.forward_sources[node_id]) > 1


def get_plan(bp: WorkflowBlueprint, evaluator: Evaluator) -> Plan:
    """The cached plan for ``bp`` compiled with ``evaluator`` (built on first use)."""
    private = bp.__pydantic_private__  # direct dict access: pydantic's __getattr__ is slow
    cached = private.get("_plan") if private is not None else None
    if cached is not None and cached.blueprint is bp and cached.evaluator is evaluator:
        return cached  # type: ignore[no-any-return]
    plan = build_plan(bp, evaluator)
    bp._plan = plan
    return plan


def _compile(
    evaluator: Evaluator, expr: str | None, where: str, problems: list[str]
) -> Compiled | None:
    if expr is None:
        return None
    try:
        return evaluator.compile(expr)
    except ExpressionError as exc:
        problems.append(f"{where}: {exc.reason} in {expr!r}")
        return None


def _back_edges(bp: WorkflowBlueprint, roots: list[str], succ: dict[str, list[int]]) -> set[int]:
    """Indexes of edges that close a cycle, by iterative DFS from ``roots`` (then the rest)."""
    edges = bp.edges
    state: dict[str, int] = {}  # 1 = on stack, 2 = done
    back: set[int] = set()
    ordered = roots + [n.id for n in bp.nodes if n.id not in roots]
    for root in ordered:
        if root in state:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        state[root] = 1
        while stack:
            node, i = stack[-1]
            outs = succ[node]
            if i < len(outs):
                stack[-1] = (node, i + 1)
                ei = outs[i]
                tgt = edges[ei].target
                st = state.get(tgt)
                if st == 1:
                    back.add(ei)
                elif st is None:
                    state[tgt] = 1
                    stack.append((tgt, 0))
            else:
                state[node] = 2
                stack.pop()
    return back


def build_plan(bp: WorkflowBlueprint, evaluator: Evaluator) -> Plan:
    """Compile ``bp``; every expression problem is reported at once, naming its edge or node."""
    problems: list[str] = []
    nodes = {n.id: n for n in bp.nodes}
    order = {n.id: i for i, n in enumerate(bp.nodes)}
    succ: dict[str, list[int]] = {n.id: [] for n in bp.nodes}
    for i, e in enumerate(bp.edges):
        succ[e.source].append(i)
    starts = start_node_ids(bp)
    back = _back_edges(bp, list(starts), succ)

    specs: list[EdgeSpec] = []
    keys: set[str] = set()
    for i, e in enumerate(bp.edges):
        where = f"edge {e.source!r} -> {e.target!r}"
        # Parallel edges (same source, target and action) need distinct join bookkeeping keys.
        key = e.key if e.key not in keys else f"{e.key}~{i}"
        keys.add(key)
        specs.append(
            EdgeSpec(
                index=i,
                key=key,
                source=e.source,
                target=e.target,
                action=e.action,
                condition=e.condition,
                transform=e.transform,
                condition_fn=_compile(evaluator, e.condition, where + " condition", problems),
                transform_fn=_compile(evaluator, e.transform, where + " transform", problems),
                # A loop's `continue` edge always re-enters; it never holds a join open.
                is_back=i in back
                or (nodes[e.source].uses == LOOP_CONTROLLER and e.action == "continue"),
            )
        )
    out: dict[str, list[EdgeSpec]] = {n: [] for n in nodes}
    inf: dict[str, list[EdgeSpec]] = {n: [] for n in nodes}
    for s in specs:
        out[s.source].append(s)
        if not s.is_back:
            inf[s.target].append(s)

    owners: dict[str, list[str]] = {}
    for n in bp.nodes:
        if n.config.fallback:
            owners.setdefault(n.config.fallback, []).append(n.id)

    loop_conditions: dict[str, Compiled] = {}
    loop_bodies: dict[str, frozenset[str]] = {}
    for n in bp.nodes:
        if n.uses == LOOP_CONTROLLER:
            cond = n.params.get("condition")
            if not isinstance(cond, str) or not cond:
                problems.append(f"node {n.id!r}: loop-controller needs params.condition")
            else:
                fn = _compile(evaluator, cond, f"node {n.id!r} loop condition", problems)
                if fn is not None:
                    loop_conditions[n.id] = fn
            mi = n.params.get("maxIterations")
            if mi is not None and (not isinstance(mi, int) or isinstance(mi, bool) or mi < 1):
                problems.append(f"node {n.id!r}: params.maxIterations must be a positive integer")
            cont = [s for s in out[n.id] if s.action == "continue"]
            if not cont:
                problems.append(f"node {n.id!r}: loop-controller has no 'continue' edge")
            body: set[str] = {n.id}
            todo = [s.target for s in cont]
            while todo:
                x = todo.pop()
                if x in body:
                    continue
                body.add(x)
                todo.extend(s.target for s in out[x] if not s.is_back)
            loop_bodies[n.id] = frozenset(body)
        elif n.uses == BATCH_SCATTER:
            if not isinstance(n.params.get("workerUsesKey"), str):
                problems.append(f"node {n.id!r}: batch-scatter needs params.workerUsesKey")
            cs = n.params.get("chunkSize")
            if cs is not None and (not isinstance(cs, int) or isinstance(cs, bool) or cs < 1):
                problems.append(f"node {n.id!r}: params.chunkSize must be a positive integer")
            pol = n.params.get("onItemError", "fail")
            if pol not in ("fail", "collect", "skip"):
                problems.append(
                    f"node {n.id!r}: params.onItemError must be 'fail', 'collect' or 'skip'"
                )
        elif n.uses == BATCH_GATHER and not isinstance(n.params.get("outputKey", ""), str):
            problems.append(f"node {n.id!r}: params.outputKey must be a string")
        elif n.uses == WEBHOOK:
            from .webhooks import check_params

            problems.extend(check_params(n))
        problems.extend(_reserved_keys(n))
    if problems:
        raise BlueprintValidationError(bp.id, problems)

    out_t = {k: tuple(v) for k, v in out.items()}
    in_t = {k: tuple(v) for k, v in inf.items()}
    sources = {k: tuple(dict.fromkeys(s.source for s in v)) for k, v in in_t.items()}
    needs_scope = {
        k: any(s.condition_fn is not None or s.transform_fn is not None for s in v)
        for k, v in out_t.items()
    }
    return Plan(
        blueprint=bp,
        evaluator=evaluator,
        nodes=nodes,
        order=order,
        out_edges=out_t,
        in_forward=in_t,
        forward_sources=sources,
        start_nodes=tuple(starts),
        fallback_owners={k: tuple(v) for k, v in owners.items()},
        loop_bodies=loop_bodies,
        needs_scope=needs_scope,
        has_condition_or_transform=any(needs_scope.values()),
        loop_conditions=loop_conditions,
        has_fallbacks=bool(owners),
        has_back_edges=any(sp.is_back for sp in specs),
        join_any=frozenset(n.id for n in bp.nodes if n.config.join_strategy == "any"),
        fan_in_nodes=frozenset(k for k, v in sources.items() if len(v) > 1),
        plain_out={
            k: all(
                e.action is None and e.condition_fn is None and e.transform_fn is None for e in v
            )
            for k, v in out_t.items()
        },
    )


def _reserved_keys(n: NodeDefinition) -> list[str]:
    """Problems for context keys a node's params would write under the engine's prefix."""
    keys: list[tuple[str, Any]] = []
    if n.uses == BATCH_GATHER:
        keys.append(("params.outputKey", n.params.get("outputKey")))
    outs = n.params.get("outputs") if n.uses == SUBFLOW else None
    if isinstance(outs, Mapping):
        keys.extend(("params.outputs key", k) for k in outs)
    return [
        f"node {n.id!r}: {where} {key!r} starts with {ENGINE_PREFIX!r}, which is reserved for "
        "the engine's run state; rename it"
        for where, key in keys
        if isinstance(key, str) and key.startswith(ENGINE_PREFIX)
    ]
