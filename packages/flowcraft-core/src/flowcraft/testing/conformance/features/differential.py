"""Differential oracle: generated workflows run in memory and on the adapter, compared at every
point a client can observe.

Each case of :func:`~..generators.differential_cases` (subflows with waits and sleeps inside,
batches, loops, joins, retries, fallbacks) is run by the in-memory :class:`FlowRuntime`,
driving every ``awaiting`` result with :meth:`FlowRuntime.resume`, and on the adapter while a
client polls :meth:`status` and resumes the waits it sees. Compared: the status timeline (the
run is ``awaiting`` only while something can be resumed; it ends with the in-memory final
status), the waits resumed, final node statuses, context (values with their key order),
errors, and how many times each node's code ran. The second test does the same with every
enqueue delivered twice and bounds the enqueues per job.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis.errors import InvalidArgument

from ....distributed.adapter import RunStatus
from ....runtime import FlowRuntime, WorkflowResult
from ....state import FINAL_STATUSES
from .. import scenarios as sc
from ..base import SuiteBase
from ..cluster import Cluster
from ..faults import FaultInjector
from ..generators import (
    ROOT_ID,
    DiffCase,
    canonical,
    differential_batches,
    differential_cases,
    differential_registry,
)
from ..helpers import assert_requeues_do_not_multiply

SLOW_ENV = "FLOWCRAFT_SLOW"
"""Set to 1 to run the ``slow`` differential sweep without selecting it with ``-m slow``."""

_MAX_ROUNDS = 200
"""Resumes of one in-memory run at most (a generated case needs far fewer)."""


@dataclass
class Observed:
    """What one run of a case showed: the final result and how it got there."""

    result: WorkflowResult
    timeline: list[str]
    """Distinct consecutive run statuses a client saw, the final one last."""
    resumed: list[tuple[str, str]] = field(default_factory=list)
    """``(blueprint id, node id)`` of every wait the driver resumed, in order."""
    awaited: set[tuple[str, str]] = field(default_factory=set)
    """``(blueprint id, node id)`` of every wait or sleep seen awaiting (inside subflows
    too)."""
    calls: list[sc.Call] = field(default_factory=list)
    """Every execution of node code of the run and its child runs, in order."""

    @property
    def counts(self) -> dict[str, int]:
        """Executions of node code per node id (retries, items and loop iterations included)."""
        out: dict[str, int] = {}
        for c in self.calls:
            out[c.node_id] = out.get(c.node_id, 0) + 1
        return out

    def inputs(self, node_id: str) -> list[Any]:
        """The inputs ``node_id``'s code ran with, in order."""
        return [c.input for c in self.calls if c.node_id == node_id]

    def errors_seen(self, node_id: str) -> list[str]:
        """The error messages fallback node ``node_id`` ran with (``ctx.error``), in order."""
        return [c.tag for c in self.calls if c.node_id == node_id]


class Case(Protocol):
    """What the drivers need of a workflow to run and resume it: :class:`DiffCase` (a
    generated one) or :class:`ScenarioCase` (a fixed scenario)."""

    @property
    def root_id(self) -> str:
        """The blueprint a run starts."""

    @property
    def initial(self) -> dict[str, Any]:
        """The initial context of a run."""

    def scenario(self, probe: sc.Probe | None = None) -> sc.Scenario:
        """Blueprints and a registry recording into a new (or the given) probe."""

    def node_order(self, blueprint_id: str) -> list[str]:
        """Node ids of ``blueprint_id`` in blueprint order."""

    def uses(self, blueprint_id: str, node_id: str) -> str:
        """The ``uses`` of a node."""

    def resume_args(self, blueprint_id: str, node_id: str) -> tuple[Any, str | None]:
        """``(output, action)`` a client resumes an awaiting wait or sleep with."""


@dataclass(frozen=True)
class ScenarioCase:
    """A fixed scenario of :mod:`..scenarios` as a :class:`Case`: ``make`` builds it (a new
    probe each time), ``root_id`` is the blueprint run with ``initial``; waits are resumed
    with ``resumes[(blueprint id, node id)]`` (default ``(None, None)``)."""

    make: Callable[[], sc.Scenario]
    root_id: str
    initial: dict[str, Any] = field(default_factory=dict)
    resumes: Mapping[tuple[str, str], tuple[Any, str | None]] = field(default_factory=dict)

    def scenario(self, probe: sc.Probe | None = None) -> sc.Scenario:
        """A new instance of the scenario (``probe`` is ignored: each has its own)."""
        return self.make()

    def _bp(self, blueprint_id: str) -> Any:
        return next(b for b in self.make().blueprints if b.id == blueprint_id)

    def node_order(self, blueprint_id: str) -> list[str]:
        """Node ids of ``blueprint_id`` in blueprint order."""
        return [n.id for n in self._bp(blueprint_id).nodes]

    def uses(self, blueprint_id: str, node_id: str) -> str:
        """The ``uses`` of a node."""
        return str(next(n.uses for n in self._bp(blueprint_id).nodes if n.id == node_id))

    def resume_args(self, blueprint_id: str, node_id: str) -> tuple[Any, str | None]:
        """``resumes[(blueprint_id, node_id)]``, else ``(None, None)``."""
        return self.resumes.get((blueprint_id, node_id), (None, None))


def _opened(s: sc.Scenario, *gates: str) -> sc.Scenario:
    """``s`` with its probe's ``gates`` already set (its nodes never block on them)."""
    for g in gates:
        s.probe.gate(g).set()
    return s


SCENARIOS: dict[str, ScenarioCase] = {
    "linear": ScenarioCase(sc.linear, "linear", {"start": 0}),
    "fan": ScenarioCase(sc.fan, "fan"),
    "branches-yes": ScenarioCase(sc.branches, "branches", {"route": "yes"}),
    "branches-no": ScenarioCase(sc.branches, "branches", {"route": "no"}),
    "retry-flaky": ScenarioCase(sc.retries, "retry-flaky"),
    "retry-class": ScenarioCase(sc.retries, "retry-class"),
    "retry-exhausted": ScenarioCase(sc.retries, "retry-exhausted"),
    "fallback": ScenarioCase(sc.fallback, "fallback"),
    "crashy": ScenarioCase(sc.crashy, "crashy"),
    "lost": ScenarioCase(sc.lost, "lost"),
    "hitl-approve": ScenarioCase(sc.hitl, "hitl", resumes={("hitl", "review"): ("ok", "approve")}),
    "hitl-reject": ScenarioCase(sc.hitl, "hitl", resumes={("hitl", "review"): ("no", "reject")}),
    "napping": ScenarioCase(lambda: sc.napping(ms=50), "napping"),
    "subflow": ScenarioCase(lambda: _opened(sc.subflows(), "child-go"), "parent"),
    "subflow-failing": ScenarioCase(lambda: _opened(sc.subflows(), "child-go"), "parent-bad"),
    "batch": ScenarioCase(sc.batch_and_loop, "batch", {"nums": [1, 2, 3]}),
    "loop": ScenarioCase(sc.batch_and_loop, "loop", {"count": 0}),
    "values": ScenarioCase(sc.values, "values"),
    "big-context": ScenarioCase(sc.big_context, "big-context"),
    "wide": ScenarioCase(sc.wide, "wide"),
}
"""Every fixed scenario of :mod:`..scenarios` that runs to its end without a test driving
it (no gates to open mid-run, no faults, every value storable), with its initial context
and the resumes of its waits."""


def _first(case: Case, bp_id: str, awaiting: Mapping[str, Any]) -> tuple[str, str]:
    """The wait or sleep ``resume(node=None)`` reaches: the first awaiting node in blueprint
    order, through awaiting subflows (their child's first awaiting node)."""
    order = case.node_order(bp_id)
    node = min(awaiting, key=order.index)
    d = awaiting[node]
    if d.get("reason") == "subflow":
        return _first(case, str(d["blueprintId"]), d["child"]["awaiting"])
    return bp_id, node


def _mem_leaves(bp_id: str, awaiting: Mapping[str, Any]) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for node, d in awaiting.items():
        if d.get("reason") == "subflow":
            out |= _mem_leaves(str(d["blueprintId"]), d["child"]["awaiting"])
        else:
            out.add((bp_id, node))
    return out


def _calls(probe: sc.Probe, run_id: str) -> list[sc.Call]:
    """The calls of run ``run_id`` and its child runs (a worker may still get jobs of an
    earlier example's runs)."""
    return [c for c in probe.calls if c.run_id == run_id or c.run_id.startswith(run_id + "/")]


async def run_in_memory(case: Case) -> Observed:
    """Run ``case`` with :class:`FlowRuntime`; while it awaits, resume the first awaiting node
    (a wait with its params' output and action, a sleep by hand) as a client would."""
    s = case.scenario()
    rt = FlowRuntime(registry=s.registry, blueprints=s.blueprints)
    root = case.root_id
    bp = rt.get_blueprint(root)
    res = await rt.run(bp, dict(case.initial))
    seen = Observed(res, ["running"])
    for _ in range(_MAX_ROUNDS):
        if res.status != "awaiting":
            break
        seen.timeline += ["awaiting", "running"]
        seen.awaited |= _mem_leaves(root, res.to_dict()["awaiting"])
        order = case.node_order(root)
        node = min(res.awaiting, key=order.index)
        leaf_bp, leaf = _first(case, root, res.to_dict()["awaiting"])
        output, action = case.resume_args(leaf_bp, leaf)
        if case.uses(leaf_bp, leaf) == "wait":
            seen.resumed.append((leaf_bp, leaf))
        res = await rt.resume(bp, res, node, output=output, action=action)
    else:
        raise AssertionError(f"in-memory run still awaiting after {_MAX_ROUNDS} resumes")
    seen.timeline.append(res.status)
    seen.result = res
    seen.calls = _calls(s.probe, res.execution_id)
    return seen


async def _dist_leaves(
    c: Cluster, bp_id: str, run_id: str, st: RunStatus
) -> list[tuple[str, str, str, str]]:
    """``(blueprint id, run id, node id, reason)`` of the waits and sleeps a client can
    resume now, through subflows whose child run awaits."""
    out: list[tuple[str, str, str, str]] = []
    for node, d in st.awaiting.items():
        if d.get("reason") == "subflow":
            child = await c.status(str(d["childRunId"]))
            if child.status == "awaiting":
                out += await _dist_leaves(c, str(d["blueprintId"]), child.run_id, child)
        else:
            out.append((bp_id, run_id, node, str(d.get("reason"))))
    return out


async def run_distributed(c: Cluster, case: Case, probe: sc.Probe, poll: float = 0.005) -> Observed:
    """Start ``case`` on the cluster and poll its status every ``poll`` seconds until final,
    resuming every wait the client sees (in the run that holds it: a subflow's child run)
    once; sleeps wake by their timers. Fails when the run is seen ``awaiting`` with nothing a
    client can resume."""
    rid = await c.start_run(case.root_id, dict(case.initial))
    timeline: list[str] = []
    resumed: list[tuple[str, str]] = []
    awaited: set[tuple[str, str]] = set()
    done: set[tuple[str, str]] = set()
    empty = 0
    limit = time.monotonic() + c.timeout
    while True:
        st = await c.status(rid)
        if not timeline or timeline[-1] != st.status:
            timeline.append(st.status)
        if st.status in FINAL_STATUSES:
            break
        if st.status == "awaiting":
            leaves = await _dist_leaves(c, case.root_id, rid, st)
            # A child resumed by its timer between the two reads is a race, not a finding;
            # the run staying awaiting with nothing to resume is one.
            empty = 0 if leaves else empty + 1
            assert empty < 3, (
                f"run is awaiting but nothing can be resumed: {st.awaiting}, timeline {timeline}"
            )
            for bp_id, run_id, node, reason in leaves:
                awaited.add((bp_id, node))
                if reason == "timer" or (run_id, node) in done:
                    continue
                done.add((run_id, node))
                output, action = case.resume_args(bp_id, node)
                await c.client.resume(run_id, node, output=output, action=action)
                resumed.append((bp_id, node))
        assert time.monotonic() < limit, f"run not final in {c.timeout} s: {timeline}"
        await asyncio.sleep(poll)
    res = await c.result(rid)
    again = await c.status(rid)
    assert (res.status, again.status) == (timeline[-1], timeline[-1])
    return Observed(res, timeline, resumed, awaited, _calls(probe, rid))


def _context(ctx: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(k, canonical(ctx[k])) for k in sorted(ctx)]


def assert_same_observation(dist: Observed, mem: Observed, *, exact_counts: bool = True) -> None:
    """``dist`` (on the adapter) shows what ``mem`` (in memory) showed.

    * Timeline: the last status is the in-memory final status, and every earlier one is
      ``running`` or ``awaiting``. A polling client may miss short phases (a 5 ms sleep), so
      the distributed timeline is not required to have as many ``awaiting`` phases; but it
      is ``awaiting`` only on waits and sleeps that awaited in memory too, never when memory
      never awaited, and the waits resumed are exactly those resumed in memory.
    * Final node statuses, in blueprint order; errors (node, type, message), in order.
    * Context: the same keys and values; values compare with their key order (a fan-in's
      input dict is keyed in blueprint edge order; subflow outputs in terminal order). The
      order of the context's own keys is not compared: it is the order of writes, which
      parallel branches make timing-dependent in memory as much as on a queue, so keys are
      compared sorted.
    * Executions of node code per node: equal; or, without ``exact_counts`` (duplicate
      delivery), at least once and at most twice each, repeated for a few nodes only
      (execution is at-least-once: a copy delivered after its twin's visibility ran out
      under a contended commit runs again; its commit is dropped, so results are exact).
    """
    r, m = dist.result, mem.result
    assert dist.timeline[-1] == m.status, (dist.timeline, mem.timeline)
    assert set(dist.timeline[:-1]) <= {"running", "awaiting"}, dist.timeline
    assert m.status in FINAL_STATUSES, mem.timeline
    if "awaiting" not in mem.timeline:
        assert "awaiting" not in dist.timeline, (dist.timeline, dist.awaited)
    assert dist.awaited <= mem.awaited, (dist.awaited, mem.awaited)
    assert sorted(dist.resumed) == sorted(mem.resumed)
    assert r.status == m.status
    assert list(r.node_statuses.items()) == list(m.node_statuses.items())
    assert [(e.node_id, e.name, e.message) for e in r.errors] == [
        (e.node_id, e.name, e.message) for e in m.errors
    ]
    assert _context(r.context) == _context(m.context)
    assert r.awaiting == m.awaiting == {}
    if exact_counts:
        assert dist.counts == mem.counts
        return
    got, want = dist.counts, mem.counts
    assert set(got) == set(want), (got, want)
    assert all(want[n] <= got[n] <= 2 * want[n] for n in want), (got, want)
    repeated = [n for n in want if got[n] > want[n]]
    assert len(repeated) <= 1 + len(want) // 20, (got, want)


DEFAULT_EXAMPLES = 30
"""Default of :attr:`DifferentialTests.differential_examples`."""

DEFAULT_BATCH = 10
"""Default of :attr:`DifferentialTests.differential_batch`."""

DEFAULT_SLOW_EXAMPLES = 1000
"""Default of :attr:`DifferentialTests.differential_slow_examples`."""

_DOCS = {
    "test_differential_matches_in_memory": """Generated workflows (subflows with waits and
        sleeps, batches, loops, joins, retries, fallbacks) end as in memory, through the same
        observable timeline (see :func:`assert_same_observation`).""",
    "test_differential_under_duplicate_delivery": """The same with every enqueue delivered
        twice: the same timeline, statuses, context and errors; every node executed (a few at
        most twice: execution is at-least-once, commits exactly once), and duplicates do not
        multiply enqueues (see :func:`_assert_enqueue_bound`).""",
    "test_differential_slow_sweep": """The ``slow`` sweep: ``differential_slow_examples``
        generated cases; runs only on demand (``pytest -m slow`` or ``FLOWCRAFT_SLOW=1``).""",
}

_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.differing_executors,  # one test body, one subclass per adapter
    ],
}


class Box:
    """The test's backend under a short ``repr`` (hypothesis prints a failing example's
    arguments; a broker's repr can be megabytes). Not a dataclass: hypothesis prints a
    dataclass field by field, whatever its ``__repr__``."""

    __slots__ = ("backend",)

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def __repr__(self) -> str:
        return f"Box({type(self.backend).__name__})"


def _build(name: str, examples: int, batch: int = 1) -> Callable[..., Coroutine[Any, Any, None]]:
    """The hypothesis test ``name`` of :class:`DifferentialTests` over ``examples`` examples
    of ``batch`` cases each (the slow sweep: one case each)."""
    test: Any
    if name == "test_differential_slow_sweep":

        async def slow(
            self: DifferentialTests, slow_sweep_selected: None, diff_backend: Box, case: DiffCase
        ) -> None:
            note(f"blueprints={list(case.blueprints)!r} initial={case.initial!r}")
            await self.check_case(diff_backend.backend, case, duplicates=False)

        test = pytest.mark.slow(
            settings(max_examples=examples, **_SETTINGS)(given(case=differential_cases())(slow))
        )
    else:
        duplicates = name == "test_differential_under_duplicate_delivery"

        async def fast(
            self: DifferentialTests, diff_backend: Box, cases: tuple[DiffCase, ...]
        ) -> None:
            for i, case in enumerate(cases):
                note(f"case {i}: blueprints={list(case.blueprints)!r} initial={case.initial!r}")
            await self.check_cases(diff_backend.backend, cases, duplicates=duplicates)

        given_cases = given(cases=differential_batches(batch))
        test = settings(max_examples=examples, **_SETTINGS)(given_cases(fast))
    test.__name__ = test.__qualname__ = name
    test.__doc__ = _DOCS[name]
    test._differential_examples = (examples, batch)
    return test  # type: ignore[no-any-return]


class DifferentialTests(SuiteBase):
    """Generated workflows: the adapter matches the in-memory runtime at every observable
    point, also when every enqueue is delivered twice."""

    differential_examples: ClassVar[int] = DEFAULT_EXAMPLES
    """Generated cases per differential test (two tests per suite class). A suite subclass
    for a slow backend sets fewer; the tests are rebuilt with its count when the subclass is
    defined."""
    differential_batch: ClassVar[int] = DEFAULT_BATCH
    """Generated cases run at the same time on one set of workers per example, so a backend
    whose every run costs seconds of polling still checks hundreds of cases (and its
    workers see concurrent runs); ``differential_examples * differential_batch`` cases per
    test."""
    differential_slow_examples: ClassVar[int] = DEFAULT_SLOW_EXAMPLES
    """Cases of the ``slow`` sweep (on demand: ``pytest -m slow`` or ``FLOWCRAFT_SLOW=1``)."""
    differential_poll_seconds: ClassVar[float] = 0.005
    """How often each case's client reads the run's status (a full run load). A backend
    served by one emulator process sets more, so a batch of polling clients does not crowd
    out its workers; a client polling less often may miss short phases, which the oracle
    allows (see :func:`assert_same_observation`)."""
    differential_adapter_kwargs: ClassVar[Mapping[str, Any]] = {}
    """Adapter keyword arguments of differential runs, which inject no crash and compare
    execution counts exactly: for example a longer visibility timeout than the crash tests
    use, where a batch of runs on one emulator can delay a message's visibility extension
    until after it became visible again (its redelivery would run the node twice)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Rebuild the hypothesis tests of a subclass that changes the example counts."""
        super().__init_subclass__(**kwargs)
        for name in _DOCS:
            slow = "slow" in name
            n = int(getattr(cls, "differential_slow_examples" if slow else "differential_examples"))
            batch = 1 if slow else int(cls.differential_batch)
            if getattr(getattr(cls, name), "_differential_examples", None) != (n, batch):
                setattr(cls, name, _build(name, n, batch))

    test_differential_matches_in_memory = _build(
        "test_differential_matches_in_memory", DEFAULT_EXAMPLES, DEFAULT_BATCH
    )
    test_differential_under_duplicate_delivery = _build(
        "test_differential_under_duplicate_delivery", DEFAULT_EXAMPLES, DEFAULT_BATCH
    )
    test_differential_slow_sweep = _build("test_differential_slow_sweep", DEFAULT_SLOW_EXAMPLES)

    @pytest.fixture
    def diff_backend(self, backend: Any) -> Box:
        """The ``backend`` fixture, boxed (see :class:`Box`)."""
        return Box(backend)

    @pytest.fixture
    def slow_sweep_selected(self, request: pytest.FixtureRequest) -> None:
        """Skip the slow sweep unless it was asked for (``-m slow`` or ``FLOWCRAFT_SLOW=1``)."""
        expr = str(request.config.getoption("markexpr", "") or "")
        asked = "slow" in expr and "not slow" not in expr
        if not asked and os.environ.get(SLOW_ENV) != "1":
            pytest.skip(f"the slow differential sweep runs on demand: -m slow or {SLOW_ENV}=1")

    # -- the check ----------------------------------------------------------------------------

    def _diff_kwargs(self, duplicates: bool) -> dict[str, Any]:
        """Cluster keyword arguments of a differential run: the steady lease (no crash is
        injected, and execution counts are compared with the in-memory run's), plus the
        adapter's own for duplicate delivery."""
        kwargs: dict[str, Any] = {
            "lease_seconds": max(self.lease_seconds, self.steady_lease_seconds),
            **self.differential_adapter_kwargs,
        }
        if duplicates:
            kwargs.update(self.delivered_duplicates_kwargs())
        return kwargs

    async def check_case(
        self, backend: Any, case: Case, *, duplicates: bool = False
    ) -> tuple[Observed, Observed]:
        """Run ``case`` in memory and on the adapter (with every enqueue delivered twice when
        ``duplicates``, then enqueues as :func:`_assert_enqueue_bound` allows and
        executions at least once), check that a client observes the same
        (:func:`assert_same_observation`); returns the
        observations ``(distributed, in memory)``."""
        mem = await run_in_memory(case)
        s = case.scenario()
        faults = FaultInjector(seed=11).duplicate(2) if duplicates else FaultInjector()
        kwargs = self._diff_kwargs(duplicates)
        async with self.cluster(backend, s, faults=faults, **kwargs) as c:
            dist = await run_distributed(c, case, s.probe, self.differential_poll_seconds)
            rounds = c.client.delivery_policy.max_deliveries
        _note(f"memory timeline {mem.timeline}, distributed {dist.timeline}")
        assert_same_observation(dist, mem, exact_counts=not duplicates)
        if duplicates:
            _assert_enqueue_bound(faults, dist.result.execution_id, rounds)
        return dist, mem

    async def check_cases(
        self, backend: Any, cases: tuple[DiffCase, ...], *, duplicates: bool = False
    ) -> list[tuple[Observed, Observed]]:
        """:meth:`check_case` for generated cases with distinct blueprint ids, run at the same
        time on one cluster (the hard timeout grows with their number)."""
        if len(cases) == 1:
            return [await self.check_case(backend, cases[0], duplicates=duplicates)]
        mems = [await run_in_memory(case) for case in cases]
        probe = sc.Probe()
        blueprints = [b for case in cases for b in case.scenario(probe).blueprints]
        s = sc.Scenario(blueprints, differential_registry(probe), probe)
        faults = FaultInjector(seed=11).duplicate(2) if duplicates else FaultInjector()
        kwargs = self._diff_kwargs(duplicates)
        factor = 1.0 + len(cases) / 4
        async with self.cluster(backend, s, faults=faults, timeout_factor=factor, **kwargs) as c:
            poll = self.differential_poll_seconds
            dists = await asyncio.gather(*(run_distributed(c, case, probe, poll) for case in cases))
            rounds = c.client.delivery_policy.max_deliveries
        out = []
        for i, (dist, mem) in enumerate(zip(dists, mems, strict=True)):
            _note(f"case {i}: memory timeline {mem.timeline}, distributed {dist.timeline}")
            try:
                assert_same_observation(dist, mem, exact_counts=not duplicates)
                if duplicates:
                    _assert_enqueue_bound(faults, dist.result.execution_id, rounds)
            except AssertionError as exc:
                raise AssertionError(f"case {i} of the batch: {exc}") from exc
            out.append((dist, mem))
        return out

    @pytest.mark.parametrize("duplicates", [False, True], ids=["once", "twice"])
    @pytest.mark.parametrize("name", sorted(SCENARIOS))
    async def test_scenario_matches_in_memory(
        self, backend: Any, name: str, duplicates: bool
    ) -> None:
        """Every self-driving fixed scenario (:data:`SCENARIOS`) through the same oracle as
        the generated workflows, delivered once and with every enqueue delivered twice."""
        await self.check_case(backend, SCENARIOS[name], duplicates=duplicates)

    # -- regression tests: what the oracle found, minimised ----------------------------------

    async def test_resumed_subflow_routes_without_the_resume_action(self, backend: Any) -> None:
        """A subflow whose child awaited and was resumed with action ``yes`` completes without
        an action, like a child that never awaited: its plain edge is taken, its ``yes``
        edge is not (in memory the resume's action used to route the subflow node too)."""
        dist, mem = await self.check_case(backend, _subflow_action_case())
        for seen in (dist, mem):
            assert seen.result.status == "completed"
            assert seen.result.node_statuses == {
                "n1": "completed",
                "n2": "skipped",
                "n3": "completed",
            }
            assert seen.result.context["_outputs.n1"] == 7
            assert seen.counts == {"n3": 1}
            assert seen.resumed == [("diff.c0", "w")]

    @pytest.mark.parametrize("shape", ["direct", "after-wait", "nested-start"])
    async def test_failed_subflow_fallback_gets_the_node_input(
        self, backend: Any, shape: str
    ) -> None:
        """A subflow node whose child run fails hands its own delivered input to its
        fallback, and names the child blueprint in its error, whether the child failed at
        once, after a resume, or (``nested-start``) the subflow is the start node of a
        child run that got its input from its parent (the distributed engine used to give
        the fallback ``None``; in memory, so did a resumed child)."""
        dist, mem = await self.check_case(backend, _subflow_fallback_case(shape))
        owner, fb = ("m", "m_fb") if shape == "nested-start" else ("n2", "n2_fb")
        failed = "diff.c1" if shape == "nested-start" else "diff.c0"
        for seen in (dist, mem):
            assert seen.result.status == "completed"
            assert seen.result.node_statuses["n2"] == (
                "completed" if shape == "nested-start" else "recovered"
            )
            n1 = seen.result.context["_outputs.n1"]
            assert seen.inputs(fb) == [n1]
            assert seen.counts == {"n1": 1, "x": 1, fb: 1}
            expected = f"subflow {failed!r} of node {owner!r} ended failed: x attempt 1 failed"
            assert seen.errors_seen(fb) == [expected]


def _assert_enqueue_bound(faults: FaultInjector, rid: str, rounds: int) -> None:
    """:func:`assert_requeues_do_not_multiply` for run ``rid`` and its child runs."""
    mine = [
        e.job for e in faults.enqueued if e.job.run_id == rid or e.job.run_id.startswith(rid + "/")
    ]
    assert_requeues_do_not_multiply(mine, rounds)


def _note(text: str) -> None:
    """:func:`hypothesis.note` inside a hypothesis test; nothing elsewhere."""
    try:
        note(text)
    except InvalidArgument:
        pass


def _subflow_action_case() -> DiffCase:
    """``n1`` runs child ``diff.c0`` (one wait ``w``, resumed with 7 and action ``yes``);
    ``n1 -(yes)-> n2`` and ``n1 -> n3``."""
    task = {"uses": "task", "params": {"k": 1}}
    root = {
        "id": ROOT_ID,
        "nodes": [
            {"id": "n1", "uses": "subflow", "params": {"blueprintId": "diff.c0"}},
            {"id": "n2", **task},
            {"id": "n3", **task},
        ],
        "edges": [
            {"source": "n1", "target": "n2", "action": "yes"},
            {"source": "n1", "target": "n3"},
        ],
    }
    wait = {"id": "w", "uses": "wait", "params": {"value": 7, "resumeAction": "yes"}}
    return DiffCase((root, {"id": "diff.c0", "nodes": [wait], "edges": []}))


def _subflow_fallback_case(shape: str) -> DiffCase:
    """``n1 -> n2``, ``n2`` a subflow. ``direct``: its child ``x`` fails; ``after-wait``:
    its child waits (``w``) then ``x`` fails; both with fallback ``n2_fb``. ``nested-start``:
    the child's start node ``m`` (fallback ``m_fb``) is a subflow whose child waits then
    fails."""
    fail = {"id": "x", "uses": "task", "params": {"k": 2, "fails": 1}}
    wait = {"id": "w", "uses": "wait", "params": {"value": 3}}
    waits_then_fails = {
        "nodes": [wait, fail],
        "edges": [{"source": "w", "target": "x"}],
    }
    sub: dict[str, Any] = {"id": "n2", "uses": "subflow", "params": {"blueprintId": "diff.c0"}}
    children: list[dict[str, Any]]
    if shape == "direct":
        children = [{"id": "diff.c0", "nodes": [fail], "edges": []}]
    elif shape == "after-wait":
        children = [{"id": "diff.c0", **waits_then_fails}]
    else:
        mid = {
            "id": "m",
            "uses": "subflow",
            "params": {"blueprintId": "diff.c1"},
            "config": {"fallback": "m_fb"},
        }
        children = [
            {"id": "diff.c0", "nodes": [mid, {"id": "m_fb", "uses": "fb"}], "edges": []},
            {"id": "diff.c1", **waits_then_fails},
        ]
    nodes = [{"id": "n1", "uses": "task", "params": {"k": 1}}, sub]
    if shape != "nested-start":
        sub["config"] = {"fallback": "n2_fb"}
        nodes.append({"id": "n2_fb", "uses": "fb"})
    root = {"id": ROOT_ID, "nodes": nodes, "edges": [{"source": "n1", "target": "n2"}]}
    return DiffCase((root, *children))
