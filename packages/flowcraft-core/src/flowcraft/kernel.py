"""The scheduling kernel: pure state transitions shared by every execution mode.

Given a plan, a :class:`RunState` and the run's context data, the kernel decides what happens
when a node completes, fails, awaits or is resumed: which edges are taken or skipped, which
nodes become ready (with which input), which nodes are skipped because no taken edge can reach
them, and when a join fires. It performs no I/O and never awaits, so the in-memory runtime and
the distributed adapters apply exactly the same rules.

Rules (documented in docs/semantics.md):

* Routing: with an ``action``, edges carrying that action are candidates; when none carries it,
  edges without an action are the default route. Without an action only edges without an action
  are candidates. A candidate is taken when its ``condition`` (if any) is truthy. A result that
  matches no edge takes none: nothing runs behind it (upstream bug B1 fixed).
* Joins count *forward* edges only. ``all``: the node is ready once every forward in-edge is
  resolved and at least one was taken; ``any``: ready at the first taken in-edge, once.
  A node whose forward in-edges are all resolved and none taken is ``skipped``, and its own
  out-edges resolve as not taken (skip propagation; upstream bug B4 fixed).
* Fan-in input: a node with two or more distinct forward predecessors receives a dict keyed by
  predecessor id (taken edges only, in blueprint order); otherwise the delivered value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .builtins import LOOP_CONTROLLER
from .context import PatchOperation
from .errors import BlueprintValidationError, ExpressionError
from .nodes import NodeResult
from .plan import EdgeSpec, Plan
from .state import DONE_NODE_STATUSES, BatchState, NodeState, RunState, output_key

NODE: Final = 0
FALLBACK: Final = 1
ITEM: Final = 2

Emit = Callable[[str, dict[str, Any]], None]

EXPLICIT_INPUT: Final = ""  # never a node id (ids are non-empty)
"""Delivery slot holding a node's input verbatim (loop re-entry, any-join winner, fallback)."""

_RESERVED: Final = frozenset({"result", "output", "input", "context", "outputs"})


@dataclass(slots=True)
class Activation:
    """A unit of work the kernel made ready: run ``node_id`` with ``input``.

    ``kind`` is NODE, FALLBACK (run in place of ``owner``, which failed with ``error``) or
    ITEM (item ``index`` of the batch scattered by ``node_id``).
    """

    node_id: str
    input: Any
    kind: int = NODE
    owner: str | None = None
    error: dict[str, Any] | None = None
    index: int = -1
    iteration: int = 0
    sources: tuple[str, ...] = ()
    """Set when the delivery slot does not tell who activated the node: the any-join winner,
    or the loop controller that re-entered its body."""

    @property
    def job_node_id(self) -> str:
        """The id used for jobs and idempotency: ``scatter[3]`` for batch items."""
        return f"{self.node_id}[{self.index}]" if self.kind == ITEM else self.node_id


class OutputsView(Mapping[str, Any]):
    """Read-only view of node outputs by node id over a context dict."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: Mapping[str, Any]) -> None:
        self._ctx = ctx

    def __getitem__(self, key: str) -> Any:
        return self._ctx[output_key(key)]

    def __iter__(self) -> Iterator[str]:
        n = len("_outputs.")
        return (k[n:] for k in self._ctx if k.startswith("_outputs."))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Scope(Mapping[str, Any]):
    """The names an edge condition, transform or loop condition can use.

    In order of precedence: ``result`` (``{"output", "action"}`` of the source node),
    ``output`` and ``input`` (the source node's output), ``context`` (the whole context),
    ``outputs`` (node outputs by id); then any node id (its output); then any context key.
    """

    __slots__ = ("_ctx", "_output", "_result", "_source")

    def __init__(
        self, ctx: Mapping[str, Any], result: NodeResult | None, source: str | None = None
    ) -> None:
        self._ctx = ctx
        self._result = result
        self._output = result.output if result is not None else None
        # The source node's own output is not in ctx yet while its edges are decided.
        self._source = source

    def __getitem__(self, key: str) -> Any:
        if key in _RESERVED:
            if key == "result":
                r = self._result
                return {"output": r.output, "action": r.action} if r is not None else None
            if key in ("output", "input"):
                return self._output
            if key == "context":
                return self._ctx
            if self._source is not None:
                return {**OutputsView(self._ctx), self._source: self._output}
            return OutputsView(self._ctx)
        if key == self._source:
            return self._output
        ctx = self._ctx
        ok = output_key(key)
        if ok in ctx:
            return ctx[ok]
        return ctx[key]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        return (
            key in _RESERVED
            or key == self._source
            or output_key(key) in self._ctx
            or key in self._ctx
        )

    def __iter__(self) -> Iterator[str]:
        yield from _RESERVED
        yield from self._ctx

    def __len__(self) -> int:
        return len(_RESERVED) + len(self._ctx)


def _truthy(value: Any) -> bool:
    return bool(value)


class Kernel:
    """Applies node outcomes to a run state; returns the activations they make ready."""

    __slots__ = ("_owned", "collect", "ctx", "emit", "ops", "plan", "shared_inputs", "state")

    def __init__(
        self,
        plan: Plan,
        state: RunState,
        ctx: dict[str, Any],
        emit: Emit | None = None,
        *,
        collect_ops: bool = False,
        shared_inputs: bool = False,
    ) -> None:
        self.plan = plan
        self.state = state
        self.ctx = ctx
        self.emit = emit
        self.collect = collect_ops
        self.ops: list[PatchOperation] = []
        # shared_inputs: the delivery slots in state.inputs may be shared with another copy of
        # the state (a worker's cached run), so each slot is copied before its first change.
        self.shared_inputs = shared_inputs
        self._owned: set[str] = set()
        self._init_nodes()

    # -- setup -------------------------------------------------------------------------------

    def _init_nodes(self) -> None:
        """Make sure every node has a record. Join counters of a fresh run are the in-degrees;
        otherwise they are counted lazily, when an edge into the node resolves, so building a
        kernel over a large stored run costs nothing per node."""
        nodes = self.state.nodes
        in_forward = self.plan.in_forward
        if len(nodes) < len(in_forward):
            for nid in in_forward:
                if nid not in nodes:
                    nodes[nid] = NodeState()
        if not self.state.edges:
            for nid, ins in in_forward.items():
                ns = nodes[nid]
                if not ns.counted:
                    ns.unresolved = len(ins)
                    ns.taken = 0
                    ns.counted = True

    def _count(self, ns: NodeState, node_id: str) -> None:
        edges = self.state.edges
        ins = self.plan.in_forward[node_id]
        ns.unresolved = sum(1 for e in ins if e.key not in edges)
        ns.taken = sum(1 for e in ins if edges.get(e.key))
        ns.counted = True

    def _slot(self, node_id: str) -> dict[str, Any]:
        """The delivery slot of ``node_id``, safe to change."""
        inputs = self.state.inputs
        slot = inputs.get(node_id)
        if slot is None:
            slot = inputs[node_id] = {}
        elif self.shared_inputs and node_id not in self._owned:
            slot = inputs[node_id] = dict(slot)
        if self.shared_inputs:
            self._owned.add(node_id)
        return slot

    def start(self) -> list[Activation]:
        """Activate the start nodes of a fresh run."""
        if self.state.started:
            return []
        self.state.started = True
        if not self.plan.start_nodes and self.plan.nodes:
            raise BlueprintValidationError(
                self.plan.blueprint.id,
                ["no start node: every node has an incoming edge (set metadata.cycleEntryPoints)"],
            )
        acts = []
        for nid in self.plan.start_nodes:
            self.state.nodes[nid].status = "queued"
            acts.append(Activation(nid, None))
        return acts

    # -- context writes ----------------------------------------------------------------------

    def _set(self, key: str, value: Any) -> None:
        self.ctx[key] = value
        if self.collect:
            self.ops.append(PatchOperation("set", key, value))

    # -- outcomes ----------------------------------------------------------------------------

    def on_started(self, act: Activation) -> None:
        """Record that ``act`` began executing."""
        if act.kind == ITEM:
            self.state.batches[act.node_id].item_status[act.index] = "running"
        else:
            self.state.nodes[act.node_id].status = "running"

    def on_complete(
        self, node_id: str, result: NodeResult, owner: str | None = None
    ) -> list[Activation]:
        """``node_id`` succeeded with ``result`` (in place of ``owner`` when a fallback).

        Idempotent: a second completion of a finished node changes nothing.
        """
        plan = self.plan
        ns = self.state.nodes[node_id]
        if ns.status in DONE_NODE_STATUSES or ns.status == "failed":
            return []
        # Decide everything first (may raise ExpressionError) and mutate afterwards.
        decisions = self._decide(node_id, plan.out_edges[node_id], result)
        if owner is not None:
            # The owner's edges route the fallback's result as the owner's (by owner id too).
            decisions += self._decide(owner, plan.out_edges[owner], result)
        ns.status = "completed"
        ns.action = result.action
        if self.state.awaiting:
            self.state.awaiting.pop(node_id, None)
        self._set(output_key(node_id), result.output)
        if owner is not None:
            self.state.nodes[owner].status = "recovered"
            self.state.fallbacks.pop(node_id, None)
            self._set(output_key(owner), result.output)
        acts: list[Activation] = []
        if result.action == "continue" and plan.nodes[node_id].uses == LOOP_CONTROLLER:
            for e, taken, value in decisions:
                if taken and e.is_back and e.action == "continue":
                    self._reenter(node_id, e.target, value, acts)
            return acts
        if decisions:
            work = [d for d in decisions if not d[0].is_back] if plan.has_back_edges else decisions
            self._resolve(work, acts)
        if plan.has_fallbacks:
            self._settle_fallback(owner or node_id, acts)
        return acts

    def _decide(
        self, source: str, edges: tuple[EdgeSpec, ...], result: NodeResult
    ) -> list[tuple[EdgeSpec, bool, Any]]:
        if not edges:
            return []
        action = result.action
        if (
            action is None
            and self.plan.plain_out[source]
            and len(edges) == len(self.plan.out_edges[source])
        ):
            out_value = result.output
            return [(e, True, out_value) for e in edges]
        if action is not None:
            cands = [e for e in edges if e.action == action]
            if not cands:
                cands = [e for e in edges if e.action is None]
        else:
            cands = [e for e in edges if e.action is None]
        out: list[tuple[EdgeSpec, bool, Any]] = []
        scope: Scope | None = None
        em = self.emit
        for e in edges:
            taken = False
            value: Any = None
            if e in cands:
                taken = True
                if e.condition_fn is not None:
                    if scope is None:
                        scope = Scope(self.ctx, result, source)
                    try:
                        taken = _truthy(e.condition_fn(scope))
                    except ExpressionError as exc:
                        raise ExpressionError(
                            e.condition or "", f"edge {e.source!r} -> {e.target!r}: {exc.reason}"
                        ) from exc
                    if em is not None:
                        em(
                            "edge:evaluate",
                            {
                                "source": e.source,
                                "target": e.target,
                                "condition": e.condition,
                                "result": taken,
                            },
                        )
                if taken:
                    if e.transform_fn is not None:
                        if scope is None:
                            scope = Scope(self.ctx, result, source)
                        try:
                            value = e.transform_fn(scope)
                        except ExpressionError as exc:
                            raise ExpressionError(
                                e.transform or "",
                                f"edge {e.source!r} -> {e.target!r}: {exc.reason}",
                            ) from exc
                    else:
                        value = result.output
            out.append((e, taken, value))
        return out

    def _activate(self, node_id: str, value: Any, acts: list[Activation], source: str) -> None:
        ns = self.state.nodes[node_id]
        ns.status = "queued"
        acts.append(Activation(node_id, value, iteration=ns.iteration, sources=(source,)))

    def input_for(self, node_id: str) -> Any:
        """The delivered input of a ready node (a dict by predecessor for fan-in nodes)."""
        d = self.state.inputs.get(node_id)
        if not d:
            return None
        if EXPLICIT_INPUT in d:
            return d[EXPLICIT_INPUT]
        if self.plan.fan_in(node_id):
            return {s: d[s] for s in self.plan.forward_sources[node_id] if s in d}
        return next(iter(d.values()))

    def _resolve(self, work: list[tuple[EdgeSpec, bool, Any]], acts: list[Activation]) -> None:
        plan = self.plan
        st = self.state
        nodes = st.nodes
        resolved = st.edges
        join_any = plan.join_any
        fan_in = plan.fan_in_nodes
        work.reverse()
        while work:
            e, taken, value = work.pop()
            if e.key in resolved:
                continue
            resolved[e.key] = taken
            t = e.target
            ts = nodes[t]
            if ts.counted:
                ts.unresolved -= 1
                if taken:
                    ts.taken += 1
            else:
                self._count(ts, t)
            if taken:
                self._slot(t)[e.source] = value
            if ts.status != "pending":
                continue
            if taken and t in join_any:
                self._slot(t)[EXPLICIT_INPUT] = value  # first arrival wins, also after reload
                self._activate(t, value, acts, e.source)
            elif ts.unresolved <= 0:
                if ts.taken:
                    if taken and ts.taken == 1 and t not in fan_in:
                        inp = value  # the common case: the one delivered value
                    else:
                        inp = self.input_for(t)
                    ts.status = "queued"
                    acts.append(Activation(t, inp, iteration=ts.iteration))
                else:
                    self._skip(t, work, acts)

    def _skip(
        self, node_id: str, work: list[tuple[EdgeSpec, bool, Any]], acts: list[Activation]
    ) -> None:
        self.state.nodes[node_id].status = "skipped"
        if self.emit is not None:
            self.emit("node:skipped", {"nodeId": node_id, "reason": "no taken edge reaches it"})
        work.extend(
            (e, False, None) for e in reversed(self.plan.out_edges[node_id]) if not e.is_back
        )
        fb = self.plan.nodes[node_id].config.fallback
        if fb is not None:
            self._maybe_skip_fallback(fb, work)

    def _settle_fallback(self, node_id: str, acts: list[Activation]) -> None:
        fb = self.plan.nodes[node_id].config.fallback
        if fb is None:
            return
        work: list[tuple[EdgeSpec, bool, Any]] = []
        self._maybe_skip_fallback(fb, work)
        if work:
            self._resolve(work, acts)

    def _maybe_skip_fallback(self, fb: str, work: list[tuple[EdgeSpec, bool, Any]]) -> None:
        nodes = self.state.nodes
        fs = nodes[fb]
        if fs.status != "pending" or self.plan.in_forward[fb]:
            return
        owners = self.plan.fallback_owners.get(fb, ())
        if all(nodes[o].status in ("completed", "skipped") for o in owners):
            fs.status = "skipped"
            if self.emit is not None:
                self.emit("node:skipped", {"nodeId": fb, "reason": "fallback not needed"})
            work.extend((e, False, None) for e in self.plan.out_edges[fb] if not e.is_back)

    def _reenter(self, controller: str, target: str, value: Any, acts: list[Activation]) -> None:
        """Reset a loop body for its next iteration and activate the loop start."""
        plan = self.plan
        st = self.state
        body = plan.loop_bodies[controller]
        for n in body:
            ns = st.nodes[n]
            ns.status = "pending"
            ns.iteration += 1
            ns.action = None
            ns.error = None
            st.awaiting.pop(n, None)
            st.batches.pop(n, None)
            for e in plan.out_edges[n]:
                st.edges.pop(e.key, None)
            if st.inputs.get(n):
                slot = self._slot(n)
                for src in [s for s in slot if s in body or s == EXPLICIT_INPUT]:
                    del slot[src]
        for n in body:
            st.nodes[n].counted = False  # recounted when an edge into it resolves
        self._slot(target)[EXPLICIT_INPUT] = value
        self._activate(target, value, acts, controller)

    def on_failed(
        self,
        node_id: str,
        error: dict[str, Any],
        node_input: Any,
        owner: str | None = None,
        *,
        allow_fallback: bool = True,
    ) -> list[Activation]:
        """``node_id`` failed for good (retries exhausted or fatal).

        With a ``config.fallback`` (and a non-fatal error) the fallback node is activated with
        the failing node's input and the error; otherwise the node is ``failed`` and the error
        is recorded on the run.
        """
        st = self.state
        ns = st.nodes[node_id]
        if ns.status in DONE_NODE_STATUSES or ns.status == "failed":
            return []
        ns.error = error
        fb = self.plan.nodes[node_id].config.fallback
        if (
            owner is None
            and allow_fallback
            and fb is not None
            and not error.get("isFatal")
            and st.nodes[fb].status == "pending"
        ):
            ns.status = "failed"
            st.nodes[fb].status = "queued"
            st.fallbacks[fb] = node_id
            st.inputs[fb] = {EXPLICIT_INPUT: node_input}
            if self.emit is not None:
                self.emit("node:fallback", {"nodeId": node_id, "fallback": fb})
            return [
                Activation(
                    fb,
                    node_input,
                    FALLBACK,
                    owner=node_id,
                    error=error,
                    iteration=st.nodes[fb].iteration,
                )
            ]
        ns.status = "failed"
        st.errors.append(error)
        if owner is not None:
            st.nodes[owner].status = "failed"
            st.fallbacks.pop(node_id, None)
        return []

    def on_awaiting(self, node_id: str, details: dict[str, Any]) -> None:
        """``node_id`` paused the run (wait, sleep, awaiting subflow) with ``details``."""
        self.state.nodes[node_id].status = "awaiting"
        self.state.awaiting[node_id] = details

    # -- batches -----------------------------------------------------------------------------

    def on_scatter(self, node_id: str, items: list[Any]) -> list[Activation]:
        """A batch scatter produced ``items``: record the batch and release the first items."""
        params = self.plan.nodes[node_id].params
        n = len(items)
        chunk = params.get("chunkSize") or max(n, 1)
        bs = BatchState(
            items=list(items),
            chunk=int(chunk),
            policy=str(params.get("onItemError", "fail")),
            worker=str(params["workerUsesKey"]),
            results=[None] * n,
            item_status=["pending"] * n,
        )
        self.state.batches[node_id] = bs
        if self.emit is not None:
            self.emit(
                "batch:start",
                {"batchId": node_id, "scatterNodeId": node_id, "itemCount": n},
            )
        if n == 0:
            return self._finish_batch(node_id, bs)
        acts: list[Activation] = []
        while bs.released < n and bs.released < bs.chunk:
            self._release(node_id, bs, acts)
        return acts

    def _release(self, node_id: str, bs: BatchState, acts: list[Activation]) -> None:
        i = bs.released
        bs.released += 1
        bs.item_status[i] = "queued"
        acts.append(
            Activation(
                node_id, bs.items[i], ITEM, index=i, iteration=self.state.nodes[node_id].iteration
            )
        )

    def on_item_done(
        self,
        node_id: str,
        index: int,
        output: Any = None,
        error: dict[str, Any] | None = None,
    ) -> list[Activation]:
        """Item ``index`` of batch ``node_id`` finished (``error`` set when it failed)."""
        bs = self.state.batches.get(node_id)
        if bs is None or self.state.nodes[node_id].status != "running":
            return []
        if bs.item_status[index] in ("completed", "failed"):
            return []
        if error is None:
            bs.item_status[index] = "completed"
            bs.results[index] = output
        else:
            bs.item_status[index] = "failed"
            if bs.policy == "fail":
                record = dict(error)
                record["message"] = f"batch item {index} failed: {error.get('message', '')}"
                record["nodeId"] = node_id
                return self.on_failed(node_id, record, bs.items)
            bs.results[index] = error if bs.policy == "collect" else None
        bs.done += 1
        acts: list[Activation] = []
        if bs.released < len(bs.items):
            self._release(node_id, bs, acts)
        if bs.done == len(bs.items):
            acts.extend(self._finish_batch(node_id, bs))
        return acts

    def _finish_batch(self, node_id: str, bs: BatchState) -> list[Activation]:
        if self.emit is not None:
            self.emit(
                "batch:finish",
                {"batchId": node_id, "scatterNodeId": node_id, "results": bs.results},
            )
        return self.on_complete(node_id, NodeResult(list(bs.results)))

    # -- resume ------------------------------------------------------------------------------

    def resume(self, node_id: str, output: Any, action: str | None) -> list[Activation]:
        """Complete an awaiting node with ``output``, routing on ``action``."""
        return self.on_complete(node_id, NodeResult(output, action))

    def pending_nodes(self) -> list[str]:
        """Nodes that are neither done, failed nor awaiting (for stall reports)."""
        return [
            n
            for n, ns in self.state.nodes.items()
            if ns.status not in DONE_NODE_STATUSES and ns.status not in ("failed", "awaiting")
        ]
