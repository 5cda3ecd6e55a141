"""Hypothesis strategies for the differential oracle (:mod:`.features.differential`).

:func:`differential_cases` draws small workflows (3-12 nodes in the root blueprint) that mix
every feature whose distributed form differs most from the in-memory one: subflows (child
runs, with waits and sleeps inside and sometimes a nested subflow), batches (chunking, item
failures, the ``fail``/``collect``/``skip`` item policies, a fallback for a failing batch),
loops, ``all``/``any`` joins, edge actions and conditions, retries and fallback nodes.

Everything is deterministic, so the in-memory runtime and any distributed backend must end a
case identically:

* node code (:func:`differential_registry`) computes its output from its input and its
  params only (``any`` joins ignore their input: which edge wins is timing);
* failures depend only on the node and the attempt (``fails``: attempts 1..n fail);
* waits are resumed by the test driver with the output and action written in their params
  (:meth:`DiffCase.resume_args`); sleeps last 0-50 ms and pass their input through.

Classes of blueprints excluded on purpose (the runtime defines them as timing-dependent, in
memory as much as distributed, so no oracle can compare them):

* an unrecovered failure of a node that runs *concurrently* with another node: fail fast
  stops the run, and which parallel nodes had started by then is timing. A node that may
  fail for good without a fallback is therefore comparable (ancestor or descendant; an
  ``any`` join with several predecessors comes after none of them) with every other node of
  its blueprint; otherwise it gets a fallback node (or, in a full blueprint, a task
  succeeds on its last attempt);
* a batch whose ``fail`` policy may fail it runs one item at a time (``chunkSize`` 1): with
  more items in flight, how many ran before the failure is timing;
* an ``any`` join that is not a task (a sleep, subflow or wait would pass on or depend on the
  winning edge's value; the fallback of an ``any`` join, which receives that value, ignores
  it), and conditions on outputs that are not integers;
* a node merging a loop's downstream with a branch outside it: a ``continue`` resets every
  node reachable from the loop start, including such a merge that may already have fired
  from the other branch; and no branch leaves a loop body before its controller.

Not generated for the driver's sake: a loop body is a task and, sometimes, a second task or
a subflow whose child never fails for good (a fallback node lies outside the body, so no
``continue`` resets it for the next iteration), and no wait sits directly in a loop body
(``status()`` does not tell one iteration's wait from the next).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from ...blueprint import load_blueprint
from ...nodes import NodeContext, NodeImplementation, NodeResult
from . import scenarios as sc

ROOT_ID = "diff"
"""Blueprint id of a case's root workflow (children are ``diff.c<n>``)."""

ERROR_VOLATILE_KEYS = frozenset({"timestamp", "executionId", "traceback"})
"""Keys of an error record that legitimately differ between two runs of the same case (when
it happened, the run id): dropped by :func:`canonical`."""

_TASK_ACTIONS = (None, "left", "right")
_WAIT_ACTIONS = (None, "yes", "no")
_INT_CONDITIONS = (None, None, None, "output % 2 == 0", "output % 3 != 0", "output > 40")


def canonical(value: Any) -> Any:
    """``value`` as a comparable, order-preserving form: mappings become ``("{}", ((key,
    value), ...))`` in their key order, sequences ``("[]", (...))``, and error records (a
    batch's ``collect`` results, a fallback's error) lose :data:`ERROR_VOLATILE_KEYS`."""
    if isinstance(value, Mapping):
        error = "message" in value and "timestamp" in value
        return (
            "{}",
            tuple(
                (k, canonical(v))
                for k, v in value.items()
                if not (error and k in ERROR_VOLATILE_KEYS)
            ),
        )
    if isinstance(value, list | tuple):
        return ("[]", tuple(canonical(v) for v in value))
    return value


def digest(value: Any) -> int:
    """A deterministic number from ``value`` (key order included; see :func:`canonical`)."""
    text = json.dumps(canonical(value), default=repr, ensure_ascii=True)
    return zlib.crc32(text.encode())


def differential_registry(probe: sc.Probe | None = None) -> dict[str, NodeImplementation]:
    """The node implementations of every :class:`DiffCase`, recording into ``probe``:

    * ``task``: sleeps ``params.ms`` ms; adds one to context key ``params.counter`` (loop
      bodies); fails attempts ``1..params.fails``; else writes ``v.<node id>`` and returns
      an integer from its input and ``params.k`` (from ``k`` alone for ``any`` joins) with
      action ``params.action``;
    * ``item``: a batch item: fails attempts ``1..params.fails`` for the items listed in
      ``params.failItems``, else returns ``item * 10 + 1``;
    * ``fb``: a fallback: an integer from its input (unless ``params.ignoreInput``: the
      fallback of an ``any`` join) and the error it replaces (recorded as the call's tag).
    """
    p = probe or sc.Probe()

    async def task(ctx: NodeContext) -> NodeResult:
        p.record(ctx)
        params = ctx.params
        ms = int(params.get("ms") or 0)
        if ms:
            await asyncio.sleep(ms / 1000)
        counter = params.get("counter")
        if isinstance(counter, str):
            await ctx.context.set(counter, int(await ctx.context.get(counter, 0) or 0) + 1)
        if ctx.attempt <= int(params.get("fails") or 0):
            raise RuntimeError(f"{ctx.node_id} attempt {ctx.attempt} failed")
        k = int(params["k"])
        out = (k * 7) % 11 if params.get("join") == "any" else (digest(ctx.input) + k) % 100
        await ctx.context.set(f"v.{ctx.node_id}", out)
        return NodeResult(out, params.get("action"))

    async def item(ctx: NodeContext) -> NodeResult:
        p.record(ctx)
        params = ctx.params
        if ctx.input in (params.get("failItems") or ()) and ctx.attempt <= int(
            params.get("fails") or 0
        ):
            raise RuntimeError(f"item {ctx.input} attempt {ctx.attempt} failed")
        return NodeResult(int(ctx.input) * 10 + 1)

    async def fb(ctx: NodeContext) -> NodeResult:
        message = ctx.error.message if ctx.error is not None else ""
        p.record(ctx, tag=message)
        seen = None if ctx.params.get("ignoreInput") else ctx.input
        return NodeResult((digest(seen) + digest(message)) % 100)

    return {"task": task, "item": item, "fb": fb}


@dataclass(frozen=True)
class DiffCase:
    """One generated workflow: its blueprints (the root, id :data:`ROOT_ID`, first) and the
    initial context of a run (the batches' item lists)."""

    blueprints: tuple[dict[str, Any], ...]
    initial: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> dict[str, Any]:
        """The root blueprint (raw form)."""
        return self.blueprints[0]

    @property
    def root_id(self) -> str:
        """The id of the blueprint a run starts (:data:`ROOT_ID`)."""
        return str(self.root["id"])

    def scenario(self, probe: sc.Probe | None = None) -> sc.Scenario:
        """The blueprints and :func:`differential_registry` bound to ``probe``."""
        p = probe or sc.Probe()
        return sc.Scenario(
            [load_blueprint(dict(b)) for b in self.blueprints], differential_registry(p), p
        )

    def node(self, blueprint_id: str, node_id: str) -> dict[str, Any]:
        """The raw definition of ``node_id`` in blueprint ``blueprint_id``."""
        for b in self.blueprints:
            if b["id"] == blueprint_id:
                for n in b["nodes"]:
                    if n["id"] == node_id:
                        return dict(n)
        raise KeyError(f"{blueprint_id}:{node_id}")

    def uses(self, blueprint_id: str, node_id: str) -> str:
        """The ``uses`` of ``node_id`` in blueprint ``blueprint_id``."""
        return str(self.node(blueprint_id, node_id)["uses"])

    def node_order(self, blueprint_id: str) -> list[str]:
        """Node ids of ``blueprint_id`` in blueprint order."""
        for b in self.blueprints:
            if b["id"] == blueprint_id:
                return [n["id"] for n in b["nodes"]]
        raise KeyError(blueprint_id)

    def renamed(self, prefix: str) -> DiffCase:
        """This case with every blueprint id (and every subflow's ``blueprintId``) prefixed
        by ``prefix``, so that several cases can share one set of workers."""
        ids = {b["id"] for b in self.blueprints}

        def node(n: dict[str, Any]) -> dict[str, Any]:
            params = n.get("params") or {}
            if params.get("blueprintId") in ids:
                return {**n, "params": {**params, "blueprintId": prefix + params["blueprintId"]}}
            return n

        return DiffCase(
            tuple(
                {**b, "id": prefix + b["id"], "nodes": [node(n) for n in b["nodes"]]}
                for b in self.blueprints
            ),
            dict(self.initial),
        )

    def resume_args(self, blueprint_id: str, node_id: str) -> tuple[Any, str | None]:
        """What the driver resumes wait ``node_id`` with: ``(params.value,
        params.resumeAction)``; a sleep resumed by hand gets ``(None, None)`` (its input
        passes through, as when its timer fires)."""
        n = self.node(blueprint_id, node_id)
        if n["uses"] != "wait":
            return None, None
        params = n.get("params") or {}
        return params.get("value"), params.get("resumeAction")


@dataclass
class _Node:
    """Generation-time facts about one node of a blueprint being drawn."""

    id: str
    kind: str
    region: frozenset[str] = frozenset()
    int_out: bool = False
    actions: tuple[str | None, ...] = (None,)
    may_fail: bool = False
    """Fails for good when it runs (retries exhausted, a failing child run or batch)."""
    raw: dict[str, Any] = field(default_factory=dict)


class _Builder:
    """One blueprint being drawn: nodes, edges, attachable exits and what each node may do."""

    def __init__(self, bp_id: str, prefix: str) -> None:
        self.bp_id = bp_id
        self.prefix = prefix
        self.nodes: list[_Node] = []
        self.edges: list[dict[str, Any]] = []
        self.exits: list[_Node] = []
        self.fallbacks: dict[str, str] = {}
        self.counter = 0

    def new_id(self) -> str:
        self.counter += 1
        return f"{self.prefix}n{self.counter}"

    def add(self, node: _Node, raw: dict[str, Any]) -> _Node:
        node.raw = raw
        self.nodes.append(node)
        return node

    def edge(self, draw: st.DrawFn, src: _Node, target: str) -> None:
        e: dict[str, Any] = {"source": src.id, "target": target}
        action = draw(st.sampled_from(src.actions))
        if action is not None:
            e["action"] = action
        if src.int_out:
            cond = draw(st.sampled_from(_INT_CONDITIONS))
            if cond is not None:
                e["condition"] = cond
        self.edges.append(e)

    def add_fallback(self, owner: _Node) -> None:
        fb = f"{owner.id}_fb"
        self.fallbacks[owner.id] = fb
        owner.raw.setdefault("config", {})["fallback"] = fb
        owner.may_fail = False
        raw: dict[str, Any] = {"id": fb, "uses": "fb"}
        if owner.raw.get("config", {}).get("joinStrategy") == "any":
            raw["params"] = {"ignoreInput": True}  # the owner's input is the winning edge's
        self.nodes.append(_Node(fb, "fb", owner.region, True, raw=raw))

    # -- whole-graph facts ------------------------------------------------------------------

    def _successors(self) -> dict[str, set[str]]:
        """Node -> the nodes that cannot start before it ends. An ``any`` join with several
        predecessors may start after any one of them, so its in-edges order nothing."""
        succ: dict[str, set[str]] = {n.id: set() for n in self.nodes}
        preds: dict[str, set[str]] = {}
        for e in self.edges:
            if e.get("action") != "continue":
                preds.setdefault(e["target"], set()).add(e["source"])
        anys = {n.id for n in self.nodes if n.raw.get("config", {}).get("joinStrategy") == "any"}
        for e in self.edges:
            if e.get("action") == "continue":
                continue
            if e["target"] in anys and len(preds[e["target"]]) > 1:
                continue
            succ[e["source"]].add(e["target"])
        for owner, fb in self.fallbacks.items():
            succ[owner].add(fb)
            succ[fb] |= succ[owner] - {fb}
        return succ

    def _reach(self) -> dict[str, set[str]]:
        succ = self._successors()
        reach: dict[str, set[str]] = {}
        for n in self.nodes:
            seen: set[str] = set()
            todo = list(succ[n.id])
            while todo:
                x = todo.pop()
                if x not in seen:
                    seen.add(x)
                    todo.extend(succ[x])
            reach[n.id] = seen
        return reach

    def settle_failures(self, size: int) -> None:
        """Give a fallback to every node that may fail for good while another node of the
        blueprint may run concurrently (see the module docstring); a task of a blueprint
        that has ``size`` nodes already succeeds on its last attempt instead."""
        reach = self._reach()
        for n in list(self.nodes):
            if not n.may_fail:
                continue
            ids = [m.id for m in self.nodes if m.id != n.id]
            if all(m in reach[n.id] or n.id in reach[m] for m in ids):
                continue
            if n.kind == "task" and len(self.nodes) >= size:
                n.raw["params"]["fails"] = n.raw["config"]["maxRetries"] - 1
                n.may_fail = False
                continue
            self.add_fallback(n)
            reach = self._reach()

    def may_fail(self) -> bool:
        """Whether a run of this blueprint may end ``failed``."""
        return any(n.may_fail for n in self.nodes)

    def blueprint(self) -> dict[str, Any]:
        return {"id": self.bp_id, "nodes": [n.raw for n in self.nodes], "edges": self.edges}


_ROOT_KINDS = ("task", "task", "task", "wait", "sleep", "subflow", "batch", "loop")
_CHILD_KINDS = ("task", "task", "wait", "wait", "sleep", "sleep", "subflow")


@st.composite
def _attempts(draw: st.DrawFn, permanent_ok: bool) -> tuple[int, int, bool]:
    """``(maxRetries, fails, fails for good)``."""
    tries = draw(st.integers(1, 3))
    modes = ("ok", "ok", "transient", "permanent") if permanent_ok else ("ok", "transient")
    mode = draw(st.sampled_from(modes))
    if mode == "ok" or (mode == "transient" and tries == 1):
        return tries, 0, False
    if mode == "transient":
        return tries, tries - 1, False
    return tries, tries, True


def _draw_blueprint(
    draw: st.DrawFn,
    bp_id: str,
    prefix: str,
    size: int,
    depth: int,
    out: list[dict[str, Any]],
    initial: dict[str, Any],
    permanent_ok: bool = True,
) -> _Builder:
    """Draw blueprint ``bp_id`` of about ``size`` nodes (its children go to ``out``, batch
    item lists to ``initial``); ``permanent_ok``: nodes may fail for good."""
    b = _Builder(bp_id, prefix)
    kinds = _ROOT_KINDS if depth == 0 else _CHILD_KINDS
    k = 0
    while len(b.nodes) < size:
        kind = draw(st.sampled_from(kinds))
        room = size - len(b.nodes)
        if (kind == "subflow" and depth >= 2) or (kind in ("batch", "loop") and room < 3):
            kind = "task"
        # preds: none for the first block (and sometimes another start node), else 1-2 exits
        # sharing one loop region
        preds: list[_Node] = []
        if b.exits and draw(st.integers(0, 5)) > 0:
            first = draw(st.sampled_from(b.exits))
            same = [x for x in b.exits if x.region == first.region and x is not first]
            preds = [first]
            if len(same) > 0 and draw(st.booleans()):
                preds.append(draw(st.sampled_from(same)))
        if kind == "loop" and not preds:
            kind = "task"  # a loop start's only in-edge would be its back edge: never started
        region = preds[0].region if preds else frozenset()
        k += 1
        join = "all"
        if kind == "task" and len(preds) > 1:
            join = draw(st.sampled_from(("all", "any")))
        nid = b.new_id()
        entry: str
        exit_node: _Node
        if kind == "task":
            tries, fails, permanent = draw(_attempts(permanent_ok))
            action = draw(st.sampled_from(_TASK_ACTIONS))
            raw: dict[str, Any] = {
                "id": nid,
                "uses": "task",
                "params": {
                    "k": k,
                    "action": action,
                    "join": join,
                    "fails": fails,
                    "ms": draw(st.sampled_from((0, 0, 0, 5, 20))),
                },
                "config": {"maxRetries": tries, "joinStrategy": join},
            }
            node = b.add(_Node(nid, kind, region, True, (None, "left", "right"), permanent), raw)
            if room > 1 and draw(st.integers(0, 3)) == 0:
                b.add_fallback(node)
            entry, exit_node = nid, node
        elif kind == "wait":
            raw = {
                "id": nid,
                "uses": "wait",
                "params": {
                    "eventName": f"e.{nid}",
                    "value": draw(st.integers(0, 99)),
                    "resumeAction": draw(st.sampled_from(_WAIT_ACTIONS)),
                },
            }
            node = b.add(_Node(nid, kind, region, True, _WAIT_ACTIONS), raw)
            entry, exit_node = nid, node
        elif kind == "sleep":
            raw = {
                "id": nid,
                "uses": "sleep",
                "params": {"duration": draw(st.sampled_from((0, 5, 20, 50)))},
            }
            node = b.add(_Node(nid, kind, region), raw)
            entry, exit_node = nid, node
        elif kind == "subflow":
            node = _draw_subflow(draw, b, nid, region, depth, out, initial, permanent_ok)
            entry, exit_node = nid, node
        elif kind == "batch":
            gid = f"{nid}_g"
            items = draw(st.lists(st.integers(0, 9), max_size=5))
            initial[f"items_{nid}"] = items
            tries, fails, permanent = draw(_attempts(True))
            policy = draw(st.sampled_from(("fail", "collect", "skip")))
            fail_items = draw(st.lists(st.integers(0, 9), max_size=2, unique=True))
            hits = bool(set(fail_items) & set(items))
            chunk = draw(st.sampled_from((None, 1, 2, 3)))
            fails_for_good = permanent and hits and policy == "fail"
            if fails_for_good:
                chunk = 1
            sparams: dict[str, Any] = {
                "workerUsesKey": "item",
                "gatherNodeId": gid,
                "onItemError": policy,
                "failItems": fail_items,
                "fails": fails,
            }
            if chunk is not None:
                sparams["chunkSize"] = chunk
            raw = {
                "id": nid,
                "uses": "batch-scatter",
                "inputs": f"items_{nid}",
                "params": sparams,
                "config": {"maxRetries": tries},
            }
            scatter = b.add(_Node(nid, "scatter", region, False, (None,), fails_for_good), raw)
            if room > 3 and draw(st.integers(0, 3)) == 0:
                b.add_fallback(scatter)
            gather = b.add(
                _Node(gid, "gather", region),
                {"id": gid, "uses": "batch-gather", "params": {"outputKey": f"out_{gid}"}},
            )
            b.edges.append({"source": nid, "target": gid})
            entry, exit_node = nid, gather
        else:  # loop: body (1-2 tasks) -> controller, continue back to the body's start
            lid = f"{nid}_loop"
            counter = f"cnt_{lid}"
            second = draw(st.sampled_from((None, "task", "subflow"))) if room > 3 else None
            body = [nid] + ([f"{nid}_b"] if second else [])
            loop_region = region | {lid}
            last: _Node | None = None
            for i, bid in enumerate(body):
                if i == 1 and second == "subflow" and depth < 2:
                    # a child run per iteration; it never fails (a fallback outside the loop
                    # body is used up by the first iteration that needs it)
                    last = _draw_subflow(draw, b, bid, loop_region, depth, out, initial, False)
                    continue
                tries, fails, _ = draw(_attempts(False))
                bjoin = join if i == 0 else "all"
                bparams: dict[str, Any] = {
                    "k": k * 10 + i,
                    "join": bjoin,
                    "fails": fails,
                    "ms": draw(st.sampled_from((0, 0, 5))),
                }
                if i == 0:
                    bparams["counter"] = counter
                last = b.add(
                    _Node(bid, "task", loop_region, True),
                    {
                        "id": bid,
                        "uses": "task",
                        "params": bparams,
                        "config": {"maxRetries": tries, "joinStrategy": bjoin},
                    },
                )
            for a, c in itertools.pairwise(body):
                b.edges.append({"source": a, "target": c})
            limit = draw(st.integers(1, 3))
            assert last is not None
            ctl = b.add(
                _Node(lid, "loop", loop_region, last.int_out, (None, "break")),
                {
                    "id": lid,
                    "uses": "loop-controller",
                    "params": {"condition": f"{counter} < {limit}"},
                    "config": {"joinStrategy": "any"},
                },
            )
            b.edges.append({"source": body[-1], "target": lid})
            b.edges.append({"source": lid, "target": nid, "action": "continue"})
            entry, exit_node = nid, ctl
        for p in preds:
            b.edge(draw, p, entry)
        b.exits.append(exit_node)
    b.settle_failures(size)
    return b


def _draw_subflow(
    draw: st.DrawFn,
    b: _Builder,
    nid: str,
    region: frozenset[str],
    depth: int,
    out: list[dict[str, Any]],
    initial: dict[str, Any],
    permanent_ok: bool,
) -> _Node:
    """Add subflow node ``nid`` to ``b`` with a new child blueprint (1-4 nodes)."""
    child_id = f"{ROOT_ID}.c{len(out)}"
    out.append({})  # reserve the slot: nested children come after
    slot = len(out) - 1
    child = _draw_blueprint(
        draw,
        child_id,
        f"{child_id.replace('.', '_')}_",
        draw(st.integers(1, 4)),
        depth + 1,
        out,
        initial,
        permanent_ok,
    )
    out[slot] = child.blueprint()
    params: dict[str, Any] = {"blueprintId": child_id}
    if draw(st.integers(0, 3)) == 0:
        params["outputs"] = {f"so_{nid}": child.nodes[-1].id}
    raw = {"id": nid, "uses": "subflow", "params": params}
    return b.add(_Node(nid, "subflow", region, False, _WAIT_ACTIONS, child.may_fail()), raw)


@st.composite
def differential_cases(draw: st.DrawFn, min_nodes: int = 3, max_nodes: int = 12) -> DiffCase:
    """A :class:`DiffCase` whose root blueprint has ``min_nodes``-``max_nodes`` nodes (plus
    the fallback nodes that failures concurrent with other nodes need)."""
    size = draw(st.integers(min_nodes, max_nodes))
    children: list[dict[str, Any]] = []
    initial: dict[str, Any] = {}
    root = _draw_blueprint(draw, ROOT_ID, "", size, 0, children, initial)
    return DiffCase((root.blueprint(), *children), initial)


def differential_batches(size: int) -> st.SearchStrategy[tuple[DiffCase, ...]]:
    """``size`` :func:`differential_cases` with distinct blueprint ids (``b<i>.`` prefixes),
    to run at the same time on one set of workers."""
    if size < 1:
        raise ValueError(f"a batch holds at least one case, got {size}")
    return st.lists(differential_cases(), min_size=size, max_size=size).map(
        lambda cases: tuple(c.renamed(f"b{i}.") for i, c in enumerate(cases))
    )


__all__ = [
    "ERROR_VOLATILE_KEYS",
    "ROOT_ID",
    "DiffCase",
    "canonical",
    "differential_batches",
    "differential_cases",
    "differential_registry",
    "digest",
]
