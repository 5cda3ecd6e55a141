"""Static graph analysis of a blueprint: cycles, start nodes, terminal nodes.

Everything here is iterative (no recursion), so 10k-node chains and deep graphs are fine, and
nothing is cached between calls.

The functions tolerate blueprints built with ``WorkflowBlueprint.model_construct`` (as the
linter does for raw input): edges whose source or target is not a node are ignored, and for a
duplicated node id the first definition counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from .blueprint import WorkflowBlueprint

__all__ = [
    "MAX_CYCLES",
    "BlueprintAnalysis",
    "analyze_blueprint",
    "find_cycles",
    "start_node_ids",
    "terminal_node_ids",
]

MAX_CYCLES: Final = 10_000
"""Upper bound on the cycles :func:`find_cycles` reports, so pathological graphs cannot hang."""


@dataclass(frozen=True)
class BlueprintAnalysis:
    """Summary of a blueprint's graph: its cycles, entry and exit nodes, and size."""

    cycles: list[list[str]]
    start_node_ids: list[str]
    terminal_node_ids: list[str]
    node_count: int
    edge_count: int
    is_dag: bool


@dataclass(frozen=True)
class _Graph:
    """Index-based view of a blueprint: node ``i`` is the i-th distinct id in blueprint order."""

    ids: list[str]
    pos: dict[str, int]
    succ: list[list[int]]  # distinct successors, self-loops left out
    self_loop: list[bool]
    pairs: list[tuple[int, int]]  # every edge between known nodes, parallels and loops included

    @classmethod
    def of(cls, bp: WorkflowBlueprint) -> _Graph:
        ids: list[str] = []
        pos: dict[str, int] = {}
        for node in bp.nodes:
            if node.id not in pos:
                pos[node.id] = len(ids)
                ids.append(node.id)
        n = len(ids)
        succ_sets: list[dict[int, None]] = [{} for _ in range(n)]
        self_loop = [False] * n
        pairs: list[tuple[int, int]] = []
        for edge in bp.edges:
            u = pos.get(edge.source)
            v = pos.get(edge.target)
            if u is None or v is None:
                continue
            pairs.append((u, v))
            if u == v:
                self_loop[u] = True
            else:
                succ_sets[u][v] = None
        return cls(ids, pos, [list(s) for s in succ_sets], self_loop, pairs)


def _sccs(
    vertices: Iterable[int], succ: Sequence[Sequence[int]], allowed: set[int] | None = None
) -> list[list[int]]:
    """Strongly connected components (iterative Tarjan), restricted to ``allowed`` if given."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    result: list[list[int]] = []
    counter = 0
    for root in vertices:
        if root in index:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work: list[tuple[int, Iterator[int]]] = [(root, iter(succ[root]))]
        while work:
            v, it = work[-1]
            descended = False
            for w in it:
                if allowed is not None and w not in allowed:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(succ[w])))
                    descended = True
                    break
                if w in on_stack and index[w] < low[v]:
                    low[v] = index[w]
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                if low[v] < low[parent]:
                    low[parent] = low[v]
            if low[v] == index[v]:
                comp: list[int] = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                result.append(comp)
    return result


def _circuits(s: int, adj: dict[int, list[int]]) -> Iterator[list[int]]:
    """Johnson's circuit search: every elementary cycle through ``s`` within ``adj``, once."""
    path = [s]
    blocked = {s}
    blocked_by: dict[int, set[int]] = {}
    closed = [False]
    stack: list[Iterator[int]] = [iter(adj[s])]
    while stack:
        for w in stack[-1]:
            if w == s:
                yield list(path)
                closed[-1] = True
            elif w not in blocked:
                path.append(w)
                closed.append(False)
                stack.append(iter(adj[w]))
                blocked.add(w)
                break
        else:
            stack.pop()
            v = path.pop()
            if closed.pop():
                if closed:
                    closed[-1] = True
                # Unblock v and, transitively, everything that was waiting on it.
                pending = [v]
                while pending:
                    u = pending.pop()
                    if u in blocked:
                        blocked.discard(u)
                        pending.extend(blocked_by.pop(u, ()))
            else:
                for w in adj[v]:
                    blocked_by.setdefault(w, set()).add(v)


def _cycle_indices(g: _Graph, limit: int = MAX_CYCLES) -> list[list[int]]:
    """Elementary cycles as index lists, each rotated to start at its lowest index (unsorted).

    Johnson's algorithm works with any order of start vertices: enumerate the cycles through
    ``s`` inside its strongly connected component, delete ``s``, split what is left into
    components again, repeat. Each search costs about the size of the component, so ``s`` is
    taken from the middle of the component's DFS order: on chain-like components (a ladder of
    2-cycles, say) that halves them, giving O(V log V) instead of O(V^2) work.
    """
    cycles: list[list[int]] = [[v] for v in range(len(g.ids)) if g.self_loop[v]]
    work = [comp for comp in _sccs(range(len(g.ids)), g.succ) if len(comp) > 1]
    while work and len(cycles) < limit:
        comp = work.pop()
        s = comp[len(comp) // 2]
        members = set(comp)
        adj = {v: [w for w in g.succ[v] if w in members] for v in comp}
        for cycle in _circuits(s, adj):
            low = cycle.index(min(cycle))
            cycles.append(cycle[low:] + cycle[:low])
            if len(cycles) >= limit:
                break
        # Every cycle through s is found; search the rest of the component without it.
        members.discard(s)
        rest = [v for v in comp if v != s]
        work.extend(sub for sub in _sccs(rest, g.succ, members) if len(sub) > 1)
    return cycles


def find_cycles(bp: WorkflowBlueprint) -> list[list[str]]:
    """Every elementary cycle of the blueprint's graph, each reported exactly once.

    A cycle is a list of node ids without repeating the first node, rotated to start at the
    node that comes first in ``bp.nodes``; a self-loop ``a -> a`` is ``["a"]``. Cycles are sorted
    by (position of the first node, length, ids). Parallel edges do not duplicate cycles. At most
    :data:`MAX_CYCLES` cycles are reported.
    """
    g = _Graph.of(bp)
    found = _cycle_indices(g)
    unique = {tuple(c) for c in found}
    named = [[g.ids[i] for i in c] for c in unique]
    named.sort(key=lambda c: (g.pos[c[0]], len(c), c))
    return named[:MAX_CYCLES]


def start_node_ids(bp: WorkflowBlueprint) -> list[str]:
    """Nodes a run begins with, in blueprint order.

    These are nodes without incoming edges, excluding nodes that serve as some node's
    ``config.fallback``. When that leaves nothing in a non-empty graph (every node sits on or
    behind a cycle), ``metadata.cycleEntryPoints`` is used if present; otherwise the first node
    (blueprint order) of each cyclic strongly connected component with no edge entering it
    from outside; and as a last resort the first node of the blueprint.
    """
    g = _Graph.of(bp)
    n = len(g.ids)
    indegree = [0] * n
    for _, v in g.pairs:
        indegree[v] += 1
    fallback_targets = {
        g.pos[node.config.fallback]
        for node in bp.nodes
        if node.config.fallback is not None and node.config.fallback in g.pos
    }
    starts = [g.ids[v] for v in range(n) if indegree[v] == 0 and v not in fallback_targets]
    if starts or n == 0:
        return starts

    entry = bp.metadata.get("cycleEntryPoints")
    if isinstance(entry, list):
        declared = list(dict.fromkeys(x for x in entry if isinstance(x, str) and x in g.pos))
        if declared:
            return declared

    comps = _sccs(range(n), g.succ)
    comp_of = [0] * n
    for ci, comp in enumerate(comps):
        for v in comp:
            comp_of[v] = ci
    entered = [False] * len(comps)
    for u, v in g.pairs:
        if comp_of[u] != comp_of[v]:
            entered[comp_of[v]] = True
    firsts = sorted(
        min(comp)
        for ci, comp in enumerate(comps)
        if not entered[ci] and (len(comp) > 1 or g.self_loop[comp[0]])
    )
    return [g.ids[v] for v in firsts] or [g.ids[0]]


def terminal_node_ids(bp: WorkflowBlueprint) -> list[str]:
    """Nodes without outgoing edges, in blueprint order (fallback targets included)."""
    g = _Graph.of(bp)
    has_out = [False] * len(g.ids)
    for u, _ in g.pairs:
        has_out[u] = True
    return [node_id for node_id, out in zip(g.ids, has_out, strict=True) if not out]


def analyze_blueprint(bp: WorkflowBlueprint) -> BlueprintAnalysis:
    """Run every analysis on ``bp`` and return the combined :class:`BlueprintAnalysis`."""
    cycles = find_cycles(bp)
    return BlueprintAnalysis(
        cycles=cycles,
        start_node_ids=start_node_ids(bp),
        terminal_node_ids=terminal_node_ids(bp),
        node_count=len(bp.nodes),
        edge_count=len(bp.edges),
        is_dag=not cycles,
    )
