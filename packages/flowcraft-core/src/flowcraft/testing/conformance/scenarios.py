"""Workflows and instrumented node implementations used by the conformance scenarios.

Node code runs in the test process (workers are in-process), so a :class:`Probe` shared by a
scenario's node implementations counts executions exactly, whatever worker ran them. Every
builder returns a :class:`Scenario`: blueprints plus a registry bound to one probe.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from ...blueprint import WorkflowBlueprint, load_blueprint
from ...nodes import BaseNode, NodeContext, NodeImplementation, NodeResult


@dataclass(frozen=True)
class Call:
    """One execution (attempt) of node code as seen by a :class:`Probe`."""

    node_id: str
    attempt: int
    iteration: int
    input: Any
    tag: str = ""
    run_id: str = ""


@dataclass
class Probe:
    """Records every node execution of a scenario; ``gate(name)`` events order node code."""

    calls: list[Call] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    """Node ids whose code returned (in order)."""
    cancelled: list[str] = field(default_factory=list)
    """Node ids whose code was cancelled while running."""
    failed: list[str] = field(default_factory=list)
    """Node ids whose code raised (in order)."""
    errors: list[tuple[str, str]] = field(default_factory=list)
    """``(node id, message)`` seen by fallback nodes in ``ctx.error``."""
    _gates: dict[str, asyncio.Event] = field(default_factory=dict)

    def record(self, ctx: NodeContext, tag: str = "") -> None:
        """Note that ``ctx.node_id`` started an attempt."""
        self.calls.append(
            Call(ctx.node_id, ctx.attempt, ctx.iteration, ctx.input, tag, ctx.execution_id)
        )

    def count(self, node_id: str) -> int:
        """How many times the code of ``node_id`` started."""
        return sum(1 for c in self.calls if c.node_id == node_id)

    def counts(self) -> dict[str, int]:
        """Executions per node id."""
        out: dict[str, int] = {}
        for c in self.calls:
            out[c.node_id] = out.get(c.node_id, 0) + 1
        return out

    def inputs(self, node_id: str) -> list[Any]:
        """The inputs ``node_id`` was called with, in order."""
        return [c.input for c in self.calls if c.node_id == node_id]

    def attempts(self, node_id: str) -> list[int]:
        """``ctx.attempt`` of every execution of ``node_id``, in order."""
        return [c.attempt for c in self.calls if c.node_id == node_id]

    def tags(self, node_id: str) -> list[str]:
        """The tags (e.g. which worker pool's registry ran it) of ``node_id``'s executions."""
        return [c.tag for c in self.calls if c.node_id == node_id]

    def gate(self, name: str) -> asyncio.Event:
        """A named event (created on first use)."""
        ev = self._gates.get(name)
        if ev is None:
            ev = self._gates[name] = asyncio.Event()
        return ev

    def node(
        self,
        output: Any = None,
        *,
        action: str | Callable[[NodeContext], str | None] | None = None,
        writes: Mapping[str, Any] | None = None,
        wait: str | None = None,
        started: str | None = None,
        sleep: float = 0.0,
        fail: str | None = None,
        fail_before_attempt: int = 0,
        count_key: bool = False,
        tag: str = "",
    ) -> Callable[[NodeContext], Any]:
        """A node function: records the call, sets gate ``started``, awaits gate ``wait``,
        sleeps ``sleep`` s, writes ``writes``, then raises ``fail`` (or fails every attempt
        below ``fail_before_attempt``) or returns ``output`` (a value or a function of the
        context) with ``action``. ``count_key`` adds one to context key ``ran.<node id>``."""

        async def impl(ctx: NodeContext) -> NodeResult:
            self.record(ctx, tag)
            if started is not None:
                self.gate(started).set()
            try:
                if wait is not None:
                    await self.gate(wait).wait()
                if sleep:
                    await asyncio.sleep(sleep)
            except asyncio.CancelledError:
                self.cancelled.append(ctx.node_id)
                raise
            if count_key:
                key = f"ran.{ctx.node_id}"
                await ctx.context.set(key, (await ctx.context.get(key, 0)) + 1)
            for k, v in (writes or {}).items():
                await ctx.context.set(k, v)
            if fail is not None:
                self.failed.append(ctx.node_id)
                raise RuntimeError(fail)
            if ctx.attempt < fail_before_attempt:
                self.failed.append(ctx.node_id)
                raise RuntimeError(f"{ctx.node_id} attempt {ctx.attempt} failed")
            out = output(ctx) if callable(output) else output
            act = action(ctx) if callable(action) else action
            self.finished.append(ctx.node_id)
            return NodeResult(out, act)

        return impl


@dataclass
class Scenario:
    """Blueprints and the registry (bound to :attr:`probe`) a scenario's workers need."""

    blueprints: list[WorkflowBlueprint]
    registry: dict[str, NodeImplementation]
    probe: Probe

    @property
    def runtime_options(self) -> dict[str, Any]:
        """``runtime_options`` for :meth:`AdapterConformanceSuite.make_worker`."""
        return {"registry": self.registry, "blueprints": list(self.blueprints)}


def _bp(raw: Mapping[str, Any]) -> WorkflowBlueprint:
    return load_blueprint(dict(raw))


def _nodes(*specs: str | Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"id": s, "uses": s} if isinstance(s, str) else dict(s) for s in specs]


def _edges(*pairs: tuple[str, str] | tuple[str, str, str | None]) -> list[dict[str, Any]]:
    out = []
    for p in pairs:
        e: dict[str, Any] = {"source": p[0], "target": p[1]}
        if len(p) > 2 and p[2] is not None:
            e["action"] = p[2]
        out.append(e)
    return out


# -- 1. linear chain -------------------------------------------------------------------------


LINEAR_CONTEXT: dict[str, Any] = {
    "start": 0,
    "greeting": "hi",
    "b.seen": True,
    "_outputs.a": 1,
    "_outputs.b": 2,
    "_outputs.c": "c:2",
}
"""The final context of :func:`linear` run with ``{"start": 0}``."""


def linear(probe: Probe | None = None) -> Scenario:
    """``a -> b -> c``: context writes and outputs passed along."""
    p = probe or Probe()
    reg: dict[str, NodeImplementation] = {
        "a": p.node(1, writes={"greeting": "hi"}),
        "b": p.node(lambda c: c.input + 1, writes={"b.seen": True}),
        "c": p.node(lambda c: f"c:{c.input}"),
    }
    bp = _bp(
        {"id": "linear", "nodes": _nodes("a", "b", "c"), "edges": _edges(("a", "b"), ("b", "c"))}
    )
    return Scenario([bp], reg, p)


# -- 2. fan-out / fan-in -----------------------------------------------------------------------


def fan(probe: Probe | None = None, *, count_keys: bool = False) -> Scenario:
    """``s`` fans out to ``a``, ``b``, ``c``; ``all_j`` joins all three, and so does ``any_j``
    with ``any`` (three successful arrivals, one execution: A4); ``t`` joins both joins."""
    p = probe or Probe()
    ck = count_keys
    reg: dict[str, NodeImplementation] = {
        "s": p.node("S", count_key=ck),
        "a": p.node("A", writes={"seen.a": True}, count_key=ck),
        "b": p.node("B", writes={"seen.b": True}, count_key=ck),
        "c": p.node("C", writes={"seen.c": True}, count_key=ck),
        "all_j": p.node(lambda c: dict(c.input), count_key=ck),
        "any_j": p.node("any", count_key=ck),
        "t": p.node(lambda c: dict(c.input), count_key=ck),
    }
    bp = _bp(
        {
            "id": "fan",
            "nodes": _nodes(
                "s",
                "a",
                "b",
                "c",
                "all_j",
                {"id": "any_j", "uses": "any_j", "config": {"joinStrategy": "any"}},
                "t",
            ),
            "edges": _edges(
                ("s", "a"),
                ("s", "b"),
                ("s", "c"),
                ("a", "all_j"),
                ("b", "all_j"),
                ("c", "all_j"),
                ("a", "any_j"),
                ("b", "any_j"),
                ("c", "any_j"),
                ("all_j", "t"),
                ("any_j", "t"),
            ),
        }
    )
    return Scenario([bp], reg, p)


FAN_NODES = ("s", "a", "b", "c", "all_j", "any_j", "t")
"""The node ids of :func:`fan`."""

FAN_CONTEXT: dict[str, Any] = {
    "seen.a": True,
    "seen.b": True,
    "seen.c": True,
    "_outputs.s": "S",
    "_outputs.a": "A",
    "_outputs.b": "B",
    "_outputs.c": "C",
    "_outputs.all_j": {"a": "A", "b": "B", "c": "C"},
    "_outputs.any_j": "any",
    "_outputs.t": {"all_j": {"a": "A", "b": "B", "c": "C"}, "any_j": "any"},
}
"""The exact final context of :func:`fan` (without ``count_keys``)."""


# -- 3. conditional branches -------------------------------------------------------------------


def branches(probe: Probe | None = None) -> Scenario:
    """``check`` routes on the action in context key ``route``: ``yes -> yes_end`` or
    ``no -> no_end`` (two different terminal nodes)."""
    p = probe or Probe()

    async def route(ctx: NodeContext) -> str | None:
        r = await ctx.context.get("route")
        return r if isinstance(r, str) else None

    async def check(ctx: NodeContext) -> NodeResult:
        p.record(ctx)
        return NodeResult("checked", await route(ctx))

    reg: dict[str, NodeImplementation] = {
        "check": check,
        "yes": p.node(lambda c: f"yes:{c.input}"),
        "yes_end": p.node("YES"),
        "no": p.node(lambda c: f"no:{c.input}"),
        "no_end": p.node("NO"),
    }
    bp = _bp(
        {
            "id": "branches",
            "nodes": _nodes("check", "yes", "yes_end", "no", "no_end"),
            "edges": _edges(
                ("check", "yes", "yes"),
                ("check", "no", "no"),
                ("yes", "yes_end"),
                ("no", "no_end"),
            ),
        }
    )
    return Scenario([bp], reg, p)


# -- 4. failures -------------------------------------------------------------------------------


def failures(probe: Probe | None = None) -> Scenario:
    """``fail-fast``: ``s -> bad`` (raises once ``slow`` started) and ``s -> slow`` (blocks
    until cancelled), both into ``after``. ``fail-join`` (the seed example): ``A`` fails once
    gate ``A-go`` is set; ``B`` (succeeds) and ``A2`` (fails) run when gate ``b-go`` is set;
    ``C`` joins ``any`` of A and B, ``D`` joins ``all`` of A, B and A2."""
    p = probe or Probe()
    reg: dict[str, NodeImplementation] = {
        "s": p.node("S"),
        "bad": p.node(fail="boom", wait="slow-started"),
        "slow": p.node("SLOW", wait="never", started="slow-started"),
        "after": p.node("AFTER"),
        "A": p.node(fail="A failed", wait="A-go"),
        "A2": p.node(fail="A2 failed", wait="b-go", started="A2-started"),
        "B": p.node("B succeeded", wait="b-go", started="B-started"),
        "C": p.node(lambda c: f"Result: {c.input}"),
        "D": p.node("D"),
    }
    fast = _bp(
        {
            "id": "fail-fast",
            "nodes": _nodes("s", "bad", "slow", "after"),
            "edges": _edges(("s", "bad"), ("s", "slow"), ("bad", "after"), ("slow", "after")),
        }
    )
    join = _bp(
        {
            "id": "fail-join",
            "nodes": _nodes(
                "A", "A2", "B", {"id": "C", "uses": "C", "config": {"joinStrategy": "any"}}, "D"
            ),
            "edges": _edges(("A", "C"), ("B", "C"), ("A", "D"), ("B", "D"), ("A2", "D")),
        }
    )
    return Scenario([fast, join], reg, p)


# -- 5. retries --------------------------------------------------------------------------------


class AlwaysFailsWithFallback(BaseNode):
    """A class node whose ``exec`` always fails and whose ``fallback`` returns ``"fb"``."""

    probe: Probe = Probe()

    async def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
        """Record the attempt and fail."""
        self.probe.record(ctx, "exec")
        raise RuntimeError(f"exec attempt {ctx.attempt} failed")

    async def fallback(self, error: BaseException, ctx: NodeContext) -> Any:
        """Record the attempt the fallback ran on and recover."""
        self.probe.record(ctx, "fallback")
        return {"output": f"fb after {error}"}


def retries(probe: Probe | None = None) -> Scenario:
    """``retry-flaky``: ``flaky`` fails attempts 1 and 2 (maxRetries 3) then ``after``;
    ``retry-class``: class node ``klass`` (maxRetries 3) recovers in ``fallback``;
    ``retry-exhausted``: ``hopeless`` always fails (maxRetries 2)."""
    p = probe or Probe()
    klass = type("BoundFallbackNode", (AlwaysFailsWithFallback,), {"probe": p})
    reg: dict[str, NodeImplementation] = {
        "flaky": p.node(lambda c: f"ok on {c.attempt}", fail_before_attempt=3),
        "after": p.node(lambda c: c.input),
        "klass": klass,
        "hopeless": p.node(fail="never works"),
    }
    cfg3 = {"maxRetries": 3, "retryDelay": 0}
    flaky = _bp(
        {
            "id": "retry-flaky",
            "nodes": _nodes({"id": "flaky", "uses": "flaky", "config": cfg3}, "after"),
            "edges": _edges(("flaky", "after")),
        }
    )
    cls_bp = _bp(
        {
            "id": "retry-class",
            "nodes": _nodes({"id": "klass", "uses": "klass", "config": cfg3}, "after"),
            "edges": _edges(("klass", "after")),
        }
    )
    hopeless = _bp(
        {
            "id": "retry-exhausted",
            "nodes": _nodes(
                {"id": "hopeless", "uses": "hopeless", "config": {"maxRetries": 2}}, "after"
            ),
            "edges": _edges(("hopeless", "after")),
        }
    )
    return Scenario([flaky, cls_bp, hopeless], reg, p)


# -- 6. fallback node --------------------------------------------------------------------------


def fallback(probe: Probe | None = None) -> Scenario:
    """``s -> risky -> after``; ``risky`` fails and names ``fb`` as its fallback."""
    p = probe or Probe()

    async def fb(ctx: NodeContext) -> NodeResult:
        p.record(ctx)
        err = ctx.error
        p.errors.append((err.node_id or "", err.message) if err is not None else ("", ""))
        return NodeResult(f"fb:{ctx.input}")

    reg: dict[str, NodeImplementation] = {
        "s": p.node("S"),
        "risky": p.node(fail="risky broke"),
        "fb": fb,
        "after": p.node(lambda c: f"after:{c.input}"),
    }
    bp = _bp(
        {
            "id": "fallback",
            "nodes": _nodes(
                "s", {"id": "risky", "uses": "risky", "config": {"fallback": "fb"}}, "fb", "after"
            ),
            "edges": _edges(("s", "risky"), ("risky", "after")),
        }
    )
    return Scenario([bp], reg, p)


# -- 9. crash workflow ------------------------------------------------------------------------


CRASH_NODES = ("start", "a", "b", "mid", "c", "d", "end")


def crashy(probe: Probe | None = None) -> Scenario:
    """``start -> a, b -> mid (all) -> c, d -> end (all)``. Every node adds one to context
    key ``ran.<id>``; ``mid`` also appends to the list ``trail`` read from the context."""
    p = probe or Probe()
    reg: dict[str, NodeImplementation] = {
        n: p.node(n.upper(), count_key=True) for n in CRASH_NODES if n != "mid"
    }
    inner = p.node(lambda c: dict(c.input), count_key=True)

    async def mid(ctx: NodeContext) -> Any:
        trail = await ctx.context.get("trail", [])
        await ctx.context.set("trail", [*trail, "mid"])
        return await inner(ctx)

    reg["mid"] = mid
    bp = _bp(
        {
            "id": "crashy",
            "nodes": _nodes(*CRASH_NODES),
            "edges": _edges(
                ("start", "a"),
                ("start", "b"),
                ("a", "mid"),
                ("b", "mid"),
                ("mid", "c"),
                ("mid", "d"),
                ("c", "end"),
                ("d", "end"),
            ),
        }
    )
    return Scenario([bp], reg, p)


CRASHY_CONTEXT: dict[str, Any] = {
    "trail": ["mid"],
    **{f"ran.{n}": 1 for n in CRASH_NODES},
    "_outputs.start": "START",
    "_outputs.a": "A",
    "_outputs.b": "B",
    "_outputs.mid": {"a": "A", "b": "B"},
    "_outputs.c": "C",
    "_outputs.d": "D",
    "_outputs.end": "END",
}
"""The exact final context of :func:`crashy`."""


# -- 10/11/13. slow, lost and cancelled work ---------------------------------------------------


def slow(probe: Probe | None = None, seconds: float = 0.8) -> Scenario:
    """``s -> slow -> after``; ``slow`` sleeps ``seconds`` (longer than the lease)."""
    p = probe or Probe()
    reg: dict[str, NodeImplementation] = {
        "s": p.node("S"),
        "slow": p.node("SLOW", sleep=seconds, started="slow-started"),
        "after": p.node(lambda c: f"after:{c.input}"),
    }
    bp = _bp(
        {
            "id": "slow",
            "nodes": _nodes("s", "slow", "after"),
            "edges": _edges(("s", "slow"), ("slow", "after")),
        }
    )
    return Scenario([bp], reg, p)


def lost(probe: Probe | None = None) -> Scenario:
    """``lost``: ``a -(yes)-> b -> c`` and ``a -(no)-> x -> c``; ``a`` answers ``yes``.
    ``held``: ``a -> held -> c`` where ``held`` blocks on gate ``go`` (sets ``held-started``)."""
    p = probe or Probe()
    reg: dict[str, NodeImplementation] = {
        "a": p.node("A", action="yes"),
        "b": p.node(lambda c: f"b:{c.input}"),
        "x": p.node("X"),
        "c": p.node(lambda c: {"c got": c.input}),
        "held": p.node("HELD", wait="go", started="held-started"),
    }
    lost_bp = _bp(
        {
            "id": "lost",
            "nodes": _nodes("a", "b", "x", "c"),
            "edges": _edges(("a", "b", "yes"), ("a", "x", "no"), ("b", "c"), ("x", "c")),
        }
    )
    held = _bp(
        {
            "id": "held",
            "nodes": _nodes("a", "held", "c"),
            "edges": _edges(("a", "held", "yes"), ("held", "c")),
        }
    )
    return Scenario([lost_bp, held], reg, p)


def cancellable(probe: Probe | None = None) -> Scenario:
    """``s -> stuck -> after``; ``stuck`` blocks until cancelled (sets ``stuck-started``)."""
    p = probe or Probe()
    reg: dict[str, NodeImplementation] = {
        "s": p.node("S"),
        "stuck": p.node("STUCK", wait="never", started="stuck-started"),
        "after": p.node("AFTER"),
    }
    bp = _bp(
        {
            "id": "cancellable",
            "nodes": _nodes("s", "stuck", "after"),
            "edges": _edges(("s", "stuck"), ("stuck", "after")),
        }
    )
    return Scenario([bp], reg, p)


# -- 12/14. wait and sleep ---------------------------------------------------------------------


def hitl(probe: Probe | None = None) -> Scenario:
    """``s -> review`` (wait) ``-(approve)-> approve`` / ``-(reject)-> reject``."""
    p = probe or Probe()
    reg: dict[str, NodeImplementation] = {
        "s": p.node("draft"),
        "approve": p.node(lambda c: f"approved:{c.input}"),
        "reject": p.node(lambda c: f"rejected:{c.input}"),
    }
    bp = _bp(
        {
            "id": "hitl",
            "nodes": _nodes("s", {"id": "review", "uses": "wait"}, "approve", "reject"),
            "edges": _edges(
                ("s", "review"), ("review", "approve", "approve"), ("review", "reject", "reject")
            ),
        }
    )
    return Scenario([bp], reg, p)


def napping(probe: Probe | None = None, ms: int = 200) -> Scenario:
    """``s -> nap`` (sleep ``ms``) ``-> after``."""
    p = probe or Probe()
    reg: dict[str, NodeImplementation] = {
        "s": p.node("S"),
        "after": p.node(lambda c: f"after:{c.input}"),
    }
    bp = _bp(
        {
            "id": "napping",
            "nodes": _nodes(
                "s", {"id": "nap", "uses": "sleep", "params": {"duration": ms}}, "after"
            ),
            "edges": _edges(("s", "nap"), ("nap", "after")),
        }
    )
    return Scenario([bp], reg, p)


# -- 15. subflows ------------------------------------------------------------------------------


def subflows(probe: Probe | None = None) -> Scenario:
    """``parent``: ``p1 -> sub`` (runs ``child``: ``c1 -> c2``) ``-> p2``; ``parent-bad`` runs
    ``child-bad`` whose ``c1`` fails. Both ``c1`` wait for gate ``child-go``."""
    p = probe or Probe()
    reg: dict[str, NodeImplementation] = {
        "p1": p.node(5),
        "c1": p.node(lambda c: c.input * 10, writes={"child.c1": True}, wait="child-go"),
        "c2": p.node(lambda c: c.input + 1),
        "c1bad": p.node(fail="child exploded", wait="child-go"),
        "p2": p.node(lambda c: f"p2:{c.input}"),
    }
    child = _bp({"id": "child", "nodes": _nodes("c1", "c2"), "edges": _edges(("c1", "c2"))})
    child_bad = _bp(
        {
            "id": "child-bad",
            "nodes": _nodes({"id": "c1", "uses": "c1bad"}, "c2"),
            "edges": _edges(("c1", "c2")),
        }
    )
    parent = _bp(
        {
            "id": "parent",
            "nodes": _nodes(
                "p1", {"id": "sub", "uses": "subflow", "params": {"blueprintId": "child"}}, "p2"
            ),
            "edges": _edges(("p1", "sub"), ("sub", "p2")),
        }
    )
    parent_bad = _bp(
        {
            "id": "parent-bad",
            "nodes": _nodes(
                "p1",
                {"id": "sub", "uses": "subflow", "params": {"blueprintId": "child-bad"}},
                "p2",
            ),
            "edges": _edges(("p1", "sub"), ("sub", "p2")),
        }
    )
    return Scenario([child, child_bad, parent, parent_bad], reg, p)


# -- 16. batches and loops ---------------------------------------------------------------------


def batch_and_loop(probe: Probe | None = None) -> Scenario:
    """``batch``: scatter the context list ``nums`` over worker ``item`` (x10), gather into
    ``out``, then ``after``. ``loop``: ``init -> body -> lp`` looping while ``count < 3``,
    then ``done``."""
    p = probe or Probe()

    async def body(ctx: NodeContext) -> NodeResult:
        p.record(ctx)
        n = await ctx.context.get("count", 0)
        await ctx.context.set("count", n + 1)
        return NodeResult([*(ctx.input or []), ctx.iteration])

    reg: dict[str, NodeImplementation] = {
        "item": p.node(lambda c: c.input * 10),
        "after": p.node(lambda c: list(c.input)),
        "init": p.node([]),
        "body": body,
        "done": p.node(lambda c: {"final": c.input}),
    }
    batch = _bp(
        {
            "id": "batch",
            "nodes": [
                {
                    "id": "scatter",
                    "uses": "batch-scatter",
                    "inputs": "nums",
                    "params": {"workerUsesKey": "item", "gatherNodeId": "gather"},
                },
                {"id": "gather", "uses": "batch-gather", "params": {"outputKey": "out"}},
                {"id": "after", "uses": "after"},
            ],
            "edges": _edges(("scatter", "gather"), ("gather", "after")),
        }
    )
    loop = _bp(
        {
            "id": "loop",
            "nodes": _nodes(
                "init",
                "body",
                {
                    "id": "lp",
                    "uses": "loop-controller",
                    "params": {"condition": "count < 3"},
                    "config": {"joinStrategy": "any"},
                },
                "done",
            ),
            "edges": _edges(
                ("init", "body"),
                ("body", "lp"),
                ("lp", "body", "continue"),
                ("lp", "done", "break"),
            ),
        }
    )
    return Scenario([batch, loop], reg, p)


# -- 17. versions ------------------------------------------------------------------------------


def versioned(version: str, probe: Probe, tag: str) -> Scenario:
    """Blueprint ``versioned`` at ``version``: ``a -> b``; executions are tagged ``tag``."""
    reg: dict[str, NodeImplementation] = {
        "a": probe.node("A", tag=tag),
        "b": probe.node(lambda c: f"b:{c.input}", tag=tag),
    }
    bp = _bp(
        {
            "id": "versioned",
            "metadata": {"version": version},
            "nodes": _nodes("a", "b"),
            "edges": _edges(("a", "b")),
        }
    )
    return Scenario([bp], reg, probe)


# -- 19. values --------------------------------------------------------------------------------


VALUE_WRITES: dict[str, Any] = {
    "a.b": None,
    "x/y": {"k": None, "list": [None, 1, "two"]},
    "plain": None,
    "unicode ключ": "значение",
    "nested.dots/and/slashes.": [{"a.b": 1}],
}
"""Context writes of the ``values`` workflow: ``None`` values and awkward keys."""


def values(probe: Probe | None = None) -> Scenario:
    """``values``: ``w`` writes :data:`VALUE_WRITES` and outputs None; ``r`` reads them back
    and outputs them. ``unstorable``: ``bad`` writes a ``set()`` under ``bad.key``."""
    p = probe or Probe()

    async def r(ctx: NodeContext) -> NodeResult:
        p.record(ctx)
        got = {k: await ctx.context.get(k, "MISSING") for k in VALUE_WRITES}
        return NodeResult({"input": ctx.input, "read": got})

    reg: dict[str, NodeImplementation] = {
        "w": p.node(None, writes=VALUE_WRITES),
        "r": r,
        "bad": p.node("never stored", writes={"bad.key": {1, 2}}),
        "after": p.node("AFTER"),
    }
    vals = _bp({"id": "values", "nodes": _nodes("w", "r"), "edges": _edges(("w", "r"))})
    bad = _bp(
        {"id": "unstorable", "nodes": _nodes("bad", "after"), "edges": _edges(("bad", "after"))}
    )
    return Scenario([vals, bad], reg, p)


# -- 21. delta persistence / load --------------------------------------------------------------


BIG_VALUE_BYTES = 100_000


def big_context(probe: Probe | None = None) -> Scenario:
    """``big -> n1 -> n2 -> n3 -> n4``: ``big`` writes a 100 kB string to ``blob``; later nodes
    write one small key each."""
    p = probe or Probe()
    reg: dict[str, NodeImplementation] = {
        "big": p.node("small", writes={"blob": "x" * BIG_VALUE_BYTES})
    }
    chain = ["big", "n1", "n2", "n3", "n4"]
    for n in chain[1:]:
        reg[n] = p.node(n, writes={f"k.{n}": 1})
    bp = _bp(
        {
            "id": "big-context",
            "nodes": _nodes(*chain),
            "edges": _edges(*itertools.pairwise(chain)),
        }
    )
    return Scenario([bp], reg, p)


LOAD_WIDTH = 8


def wide(probe: Probe | None = None) -> Scenario:
    """10 nodes: ``s -> w1..w8 -> j`` (``all``)."""
    p = probe or Probe()
    ws = [f"w{i}" for i in range(1, LOAD_WIDTH + 1)]
    reg: dict[str, NodeImplementation] = {
        "s": p.node(0),
        "j": p.node(lambda c: sum(c.input.values())),
    }
    for i, w in enumerate(ws, 1):
        reg[w] = p.node(lambda c, i=i: c.input + i)
    bp = _bp(
        {
            "id": "wide",
            "nodes": _nodes("s", *ws, "j"),
            "edges": _edges(*[("s", w) for w in ws], *[(w, "j") for w in ws]),
        }
    )
    return Scenario([bp], reg, p)


# -- 20. random DAGs ---------------------------------------------------------------------------

_ACTIONS = (None, "left", "right")
_CONDITIONS = (None, None, "output % 2 == 0", "output % 3 != 0", "output > 5")


@st.composite
def random_dags(draw: st.DrawFn, min_nodes: int = 6, max_nodes: int = 10) -> dict[str, Any]:
    """A random DAG blueprint (raw dict) for the ``gen`` node: one start node ``n0``; every
    other node has 1-3 earlier predecessors; random join strategies, node actions, edge
    actions and edge conditions on the source's integer output."""
    n = draw(st.integers(min_nodes, max_nodes))
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for i in range(n):
        join = draw(st.sampled_from(("all", "any")))
        action = draw(st.sampled_from(_ACTIONS))
        nodes.append(
            {
                "id": f"n{i}",
                "uses": "gen",
                "params": {"k": i, "action": action, "join": join},
                "config": {"joinStrategy": join},
            }
        )
        if i == 0:
            continue
        preds = draw(st.lists(st.integers(0, i - 1), min_size=1, max_size=min(3, i), unique=True))
        for s in sorted(preds):
            e: dict[str, Any] = {"source": f"n{s}", "target": f"n{i}"}
            a = draw(st.sampled_from(_ACTIONS))
            c = draw(st.sampled_from(_CONDITIONS))
            if a is not None:
                e["action"] = a
            if c is not None:
                e["condition"] = c
            edges.append(e)
    return {"id": "random-dag", "nodes": nodes, "edges": edges}


def dag_registry(probe: Probe | None = None) -> tuple[dict[str, NodeImplementation], Probe]:
    """The ``gen`` node of :func:`random_dags`: a deterministic integer output from its input
    (``any`` joins ignore their input, whose winner depends on timing), a context write
    ``v.<id>`` and the node's configured action."""
    p = probe or Probe()

    async def gen(ctx: NodeContext) -> NodeResult:
        p.record(ctx)
        k = int(ctx.params["k"])
        inp = ctx.input
        if ctx.params.get("join") == "any":
            out = (k * 7) % 11
        elif isinstance(inp, dict):
            out = (sum(v for v in inp.values() if isinstance(v, int)) + k) % 13
        elif isinstance(inp, int):
            out = (inp + k) % 13
        else:
            out = k
        await ctx.context.set(f"v.{ctx.node_id}", out)
        return NodeResult(out, ctx.params.get("action"))

    return {"gen": gen}, p


__all__ = [
    "BIG_VALUE_BYTES",
    "CRASHY_CONTEXT",
    "CRASH_NODES",
    "FAN_CONTEXT",
    "FAN_NODES",
    "LOAD_WIDTH",
    "VALUE_WRITES",
    "AlwaysFailsWithFallback",
    "Call",
    "Probe",
    "Scenario",
    "batch_and_loop",
    "big_context",
    "branches",
    "cancellable",
    "crashy",
    "dag_registry",
    "failures",
    "fallback",
    "fan",
    "hitl",
    "linear",
    "lost",
    "napping",
    "random_dags",
    "retries",
    "slow",
    "subflows",
    "values",
    "versioned",
    "wide",
]
