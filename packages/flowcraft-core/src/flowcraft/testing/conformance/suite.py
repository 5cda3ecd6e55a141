"""The adapter conformance suite: one base test class every distributed adapter subclasses.

Modelled on SQLAlchemy's dialect compliance suite and LangChain's standard tests: the adapter
package subclasses :class:`AdapterConformanceSuite` in a module named ``test_*.py``, with a
class named ``Test*``; it sets :attr:`~AdapterConformanceSuite.adapter_class`, overrides the
``backend`` fixture and :meth:`~AdapterConformanceSuite.make_worker` (and, optionally, a few
hooks); pytest then runs every scenario against that adapter. Tests needing a capability the
adapter does not declare in its ``capabilities`` are skipped with a reason naming it.

Every scenario asserts exact outcomes: final context, node statuses, run status, and how many
times each node's code ran (node code runs in the test process, so counters are exact).
See ``docs/conformance.md`` for the scenario list.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, given, note, settings

from ...distributed.adapter import BaseDistributedAdapter
from ...distributed.contracts import JobPayload
from ...errors import ResumeError
from ...runtime import FlowRuntime, WorkflowResult
from ...state import FINAL_STATUSES
from . import scenarios as sc
from .cluster import Cluster
from .faults import STEP_POINTS, FaultInjector

F = TypeVar("F", bound=Callable[..., Any])

_REQUIRES_ATTR = "__conformance_requires__"
_DELIVERY_POINTS = ("after_receive", "between_enqueues")
"""Step points of a delivered job only (an inline successor is not received or enqueued)."""
_INLINE_POINTS = tuple(p for p in STEP_POINTS if p not in _DELIVERY_POINTS)


def requires(*capabilities: str) -> Callable[[F], F]:
    """Mark a test as needing ``Capabilities`` fields (truthy) or, written ``extra:<flag>``,
    a truthy ``Capabilities.extra[<flag>]``; it is skipped otherwise."""

    def deco(fn: F) -> F:
        setattr(fn, _REQUIRES_ATTR, (*getattr(fn, _REQUIRES_ATTR, ()), *capabilities))
        return fn

    return deco


def assert_same_result(actual: WorkflowResult, expected: WorkflowResult) -> None:
    """Distributed and in-memory results agree on status, context, node statuses, errors."""
    assert actual.status == expected.status
    assert actual.node_statuses == expected.node_statuses
    assert actual.context == expected.context
    assert [(e.node_id, e.message) for e in actual.errors] == [
        (e.node_id, e.message) for e in expected.errors
    ]


async def in_memory(
    scenario: sc.Scenario, blueprint_id: str, initial: Mapping[str, Any] | None = None
) -> WorkflowResult:
    """Run ``blueprint_id`` of ``scenario`` with the in-memory :class:`FlowRuntime`."""
    rt = FlowRuntime(registry=scenario.registry, blueprints=scenario.blueprints)
    return await rt.run(rt.get_blueprint(blueprint_id), dict(initial or {}))


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` every 5 ms; AssertionError naming ``what`` after ``timeout`` s."""
    limit = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > limit:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.005)


def _queue_retries(adapter: BaseDistributedAdapter) -> None:
    adapter.should_retry_in_process = lambda node: False  # type: ignore[method-assign]


class AdapterConformanceSuite:
    """Base class of an adapter's conformance tests (pytest collects subclasses ``Test*``).

    Subclasses set :attr:`adapter_class`, override the ``backend`` fixture (yield a fresh,
    isolated backend object per test: a broker, a database path, a URL plus a unique prefix)
    and :meth:`make_worker`. Optional hooks: :meth:`enqueue_raw`, :meth:`dead_letters` and
    :meth:`write_counters`. Requires pytest-asyncio (``asyncio_mode = "auto"``, or decorate
    the ``backend`` fixture with ``pytest_asyncio.fixture``) and hypothesis.
    """

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.asyncio]

    adapter_class: ClassVar[type[BaseDistributedAdapter]]
    """The adapter under test; its ``capabilities`` decide which tests run."""
    workers: ClassVar[int] = 2
    """In-process workers per scenario."""
    lease_seconds: ClassVar[float] = 0.3
    """Node lease passed as ``lease_seconds`` to every worker (crash recovery waits on it)."""
    scenario_timeout: ClassVar[float] = 20.0
    """Hard timeout of each scenario (a hang fails the test)."""
    load_runs: ClassVar[int] = 50
    """Concurrent runs of the load smoke test."""

    # -- what a subclass provides -----------------------------------------------------------

    @pytest.fixture
    async def backend(self) -> Any:
        """The shared backend of one test's workers: subclasses override this fixture (a
        plain or yield fixture) and give each test an isolated backend."""
        pytest.fail(f"{type(self).__name__} must override the 'backend' fixture")

    async def make_worker(
        self, backend: Any, runtime_options: dict[str, Any], **adapter_kwargs: Any
    ) -> BaseDistributedAdapter:
        """A new worker adapter on ``backend`` built with ``runtime_options`` and
        ``adapter_kwargs`` (``lease_seconds``, ``worker_id``, ...). Subclasses implement this."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_worker()")

    async def enqueue_raw(self, backend: Any, body: str) -> bool:
        """Put a raw message ``body`` on the backend's queue; False (default) when the backend
        cannot (the unparseable-message test is then skipped)."""
        return False

    async def dead_letters(self, backend: Any) -> list[str] | None:
        """The dead-lettered messages (bodies and/or reasons, as text) of ``backend``; None
        (default) when the backend does not expose them. Adapters declaring
        ``Capabilities.dead_letter`` must implement this."""
        return None

    def write_counters(self, backend: Any) -> tuple[int, int]:
        """``(commits, bytes written)`` so far; used when ``Capabilities.extra`` has
        ``bytes_counter``. Default: the backend's ``commits`` and ``bytes_written``."""
        return int(backend.commits), int(backend.bytes_written)

    # -- plumbing -----------------------------------------------------------------------------

    @pytest.fixture(autouse=True)
    def _conformance_capabilities(self, request: pytest.FixtureRequest) -> None:
        """Skip tests whose required capabilities the adapter does not declare."""
        cls = getattr(type(self), "adapter_class", None)
        if cls is None:
            pytest.fail(f"{type(self).__name__} must set adapter_class")
        caps = cls.capabilities
        for need in getattr(request.function, _REQUIRES_ATTR, ()):
            if need.startswith("extra:"):
                flag = need[len("extra:") :]
                if not (caps.extra or {}).get(flag):
                    pytest.skip(f"{cls.__name__} lacks capability Capabilities.extra[{flag!r}]")
            elif not getattr(caps, need):
                pytest.skip(f"{cls.__name__} lacks capability Capabilities.{need}")

    def cluster(
        self,
        backend: Any,
        scenario: sc.Scenario | Mapping[str, Any],
        *,
        workers: int | None = None,
        faults: FaultInjector | None = None,
        client_options: Mapping[str, Any] | None = None,
        configure: Callable[[BaseDistributedAdapter], None] | None = None,
        **adapter_kwargs: Any,
    ) -> Cluster:
        """A :class:`Cluster` of this adapter on ``backend`` running ``scenario``'s workflows."""
        kwargs = {
            "lease_seconds": self.lease_seconds,
            "version_requeue_delay": 0.02,
            **adapter_kwargs,
        }
        opts = scenario.runtime_options if isinstance(scenario, sc.Scenario) else scenario

        async def make(runtime_options: dict[str, Any], **kw: Any) -> BaseDistributedAdapter:
            return await self.make_worker(backend, runtime_options, **kw)

        return Cluster(
            make,
            opts,
            workers=self.workers if workers is None else workers,
            faults=faults,
            timeout=self.scenario_timeout,
            adapter_kwargs=kwargs,
            client_options=client_options,
            configure=configure,
        )

    # == 1. linear chain ========================================================================

    async def test_linear_chain(self, backend: Any) -> None:
        """a -> b -> c: exact context, statuses, one execution each; same as in memory."""
        s = sc.linear()
        async with self.cluster(backend, s) as c:
            res = await c.run("linear", {"start": 0})
        assert res.status == "completed"
        assert res.node_statuses == {"a": "completed", "b": "completed", "c": "completed"}
        assert res.context == sc.LINEAR_CONTEXT
        assert res.errors == []
        assert s.probe.counts() == {"a": 1, "b": 1, "c": 1}
        assert c.published[res.execution_id] == ["completed"]
        assert_same_result(res, await in_memory(sc.linear(), "linear", {"start": 0}))

    # == 2. fan-out / fan-in ====================================================================

    async def test_fan_out_fan_in(self, backend: Any) -> None:
        """``all`` join gets a dict keyed by predecessor; ``any`` join runs exactly once."""
        s = sc.fan()
        async with self.cluster(backend, s) as c:
            res = await c.run("fan")
        assert res.status == "completed"
        assert res.node_statuses == {n: "completed" for n in sc.FAN_NODES}
        assert res.context == sc.FAN_CONTEXT
        assert s.probe.inputs("all_j") == [{"a": "A", "b": "B", "c": "C"}]
        assert s.probe.count("any_j") == 1
        assert s.probe.inputs("any_j")[0] in ("A", "B", "C")
        assert s.probe.inputs("t") == [{"all_j": {"a": "A", "b": "B", "c": "C"}, "any_j": "any"}]
        assert s.probe.counts() == {n: 1 for n in sc.FAN_NODES}
        assert_same_result(res, await in_memory(sc.fan(), "fan"))

    # == 3. conditional branches ================================================================

    @pytest.mark.parametrize(
        ("route", "statuses", "context"),
        [
            (
                "yes",
                {"yes": "completed", "yes_end": "completed", "no": "skipped", "no_end": "skipped"},
                {"_outputs.yes": "yes:checked", "_outputs.yes_end": "YES"},
            ),
            (
                "no",
                {"yes": "skipped", "yes_end": "skipped", "no": "completed", "no_end": "completed"},
                {"_outputs.no": "no:checked", "_outputs.no_end": "NO"},
            ),
            (
                "maybe",
                {"yes": "skipped", "yes_end": "skipped", "no": "skipped", "no_end": "skipped"},
                {},
            ),
        ],
    )
    async def test_conditional_branches(
        self,
        backend: Any,
        route: str,
        statuses: dict[str, str],
        context: dict[str, Any],
    ) -> None:
        """Exclusive branches ending in different terminals complete (A2/A3); the untaken
        branch is skipped; an action no edge carries runs nothing behind it."""
        s = sc.branches()
        async with self.cluster(backend, s) as c:
            res = await c.run("branches", {"route": route})
        assert res.status == "completed"
        assert res.node_statuses == {"check": "completed", **statuses}
        assert res.context == {"route": route, "_outputs.check": "checked", **context}
        ran = {n for n, st in statuses.items() if st == "completed"}
        assert s.probe.counts() == {"check": 1, **{n: 1 for n in ran}}
        assert c.published[res.execution_id] == ["completed"]
        assert_same_result(res, await in_memory(sc.branches(), "branches", {"route": route}))

    # == 4. failures ============================================================================

    async def test_failing_node_fails_run_promptly(self, backend: Any) -> None:
        """A failure fails the run at once (error names the node) while another branch is
        still running; the running node is cancelled and nothing runs behind either."""
        s = sc.failures()
        async with self.cluster(backend, s) as c:
            res = await c.run("fail-fast")
            assert "slow" not in s.probe.finished  # the run failed while 'slow' still ran
            assert res.status == "failed"
            assert [(e.node_id, e.message) for e in res.errors] == [("bad", "boom")]
            await until(lambda: s.probe.cancelled == ["slow"], "'slow' to be cancelled")
        final = await c.client.get_result(res.execution_id)
        assert final.status == "failed"
        assert final.node_statuses == {
            "s": "completed",
            "bad": "failed",
            "slow": "queued",
            "after": "pending",
        }
        assert final.context == {"_outputs.s": "S"}
        assert s.probe.counts() == {"s": 1, "bad": 1, "slow": 1}
        assert c.published[res.execution_id] == ["failed"]

    async def test_failed_predecessor_poisons_any_and_all_joins(self, backend: Any) -> None:
        """Seed example: A fails, then B succeeds and A2 fails: the run stays ``failed`` with
        A's error only, C (``any`` of A, B) and D (``all`` of A, B, A2) never run, and later
        completions/failures neither overwrite the status nor publish again (A5)."""
        s = sc.failures()
        g = s.probe.gate
        # A long lease: the heartbeat must not cancel B before its late completion is tried.
        async with self.cluster(backend, s, lease_seconds=5.0) as c:
            rid = await c.start_run("fail-join")
            await until(lambda: g("B-started").is_set() and g("A2-started").is_set(), "B, A2")
            g("A-go").set()
            await c.wait_until(rid, lambda st: st.status == "failed", "failed")
            g("b-go").set()
            await until(lambda: "B" in s.probe.finished and "A2" in s.probe.failed, "B and A2")
        res = await c.client.get_result(rid)
        assert res.status == "failed"
        assert [(e.node_id, e.message) for e in res.errors] == [("A", "A failed")]
        assert res.node_statuses == {
            "A": "failed",
            "A2": "queued",
            "B": "queued",
            "C": "pending",
            "D": "pending",
        }
        assert res.context == {}
        assert s.probe.counts() == {"A": 1, "A2": 1, "B": 1}
        assert c.published[rid] == ["failed"]

    # == 5. retries =============================================================================

    async def test_retries_in_process(self, backend: Any) -> None:
        """A flaky node succeeds on attempt 3 of maxRetries=3: exactly 3 calls, one job."""
        s = sc.retries()
        faults = FaultInjector()
        async with self.cluster(backend, s, faults=faults) as c:
            res = await c.run("retry-flaky")
        assert res.status == "completed"
        assert res.node_statuses == {"flaky": "completed", "after": "completed"}
        assert res.context == {"_outputs.flaky": "ok on 3", "_outputs.after": "ok on 3"}
        assert s.probe.attempts("flaky") == [1, 2, 3]
        assert faults.enqueue_count("flaky") == 1

    async def test_queue_delegated_retries(self, backend: Any) -> None:
        """With ``should_retry_in_process`` False each attempt is its own job (A1): the node
        sees attempts 1, 2, 3 and succeeds; the job carries ``isLastAttempt``."""
        s = sc.retries()
        faults = FaultInjector()
        async with self.cluster(backend, s, faults=faults, configure=_queue_retries) as c:
            res = await c.run("retry-flaky")
        assert res.status == "completed"
        assert res.context == {"_outputs.flaky": "ok on 3", "_outputs.after": "ok on 3"}
        assert s.probe.attempts("flaky") == [1, 2, 3]
        jobs = faults.jobs_for("flaky")
        assert [(j.attempt, j.is_last_attempt) for j in jobs] == [
            (1, False),
            (2, False),
            (3, True),
        ]

    async def test_queue_delegated_class_fallback_only_on_last_attempt(self, backend: Any) -> None:
        """A class node retried through the queue runs ``exec`` on attempts 1-3 and its
        ``fallback`` only on attempt 3."""
        s = sc.retries()
        async with self.cluster(backend, s, configure=_queue_retries) as c:
            res = await c.run("retry-class")
        assert res.status == "completed"
        assert res.node_statuses == {"klass": "completed", "after": "completed"}
        out = "fb after exec attempt 3 failed"
        assert res.context == {"_outputs.klass": out, "_outputs.after": out}
        assert [(x.tag, x.attempt) for x in s.probe.calls if x.node_id == "klass"] == [
            ("exec", 1),
            ("exec", 2),
            ("exec", 3),
            ("fallback", 3),
        ]

    async def test_queue_delegated_retries_exhausted(self, backend: Any) -> None:
        """maxRetries=2 exhausted through the queue: 2 attempts, 2 jobs, the run fails."""
        s = sc.retries()
        faults = FaultInjector()
        async with self.cluster(backend, s, faults=faults, configure=_queue_retries) as c:
            res = await c.run("retry-exhausted")
        assert res.status == "failed"
        assert res.node_statuses == {"hopeless": "failed", "after": "pending"}
        assert [(e.node_id, e.message) for e in res.errors] == [("hopeless", "never works")]
        assert s.probe.attempts("hopeless") == [1, 2]
        assert [j.attempt for j in faults.jobs_for("hopeless")] == [1, 2]
        assert s.probe.count("after") == 0
        assert c.published[res.execution_id] == ["failed"]

    # == 6. fallback node =======================================================================

    async def test_fallback_node(self, backend: Any) -> None:
        """The fallback runs with the failing node's input and error; the owner is
        ``recovered`` and its successors get the fallback's output."""
        s = sc.fallback()
        async with self.cluster(backend, s) as c:
            res = await c.run("fallback")
        assert res.status == "completed"
        assert res.node_statuses == {
            "s": "completed",
            "risky": "recovered",
            "fb": "completed",
            "after": "completed",
        }
        assert s.probe.inputs("fb") == ["S"]
        assert s.probe.errors == [("risky", "risky broke")]
        assert res.context == {
            "_outputs.s": "S",
            "_outputs.fb": "fb:S",
            "_outputs.risky": "fb:S",
            "_outputs.after": "after:fb:S",
        }
        assert s.probe.counts() == {"s": 1, "risky": 1, "fb": 1, "after": 1}
        assert_same_result(res, await in_memory(sc.fallback(), "fallback"))

    # == 7/8. duplicate and late delivery =======================================================

    async def _duplicated_fan(self, backend: Any, faults: FaultInjector, times: int) -> None:
        s = sc.fan(count_keys=True)
        deliveries: dict[str, int] = {}

        def seen(point: str, job: JobPayload | None, adapter: BaseDistributedAdapter) -> None:
            if point == "after_receive" and job is not None:
                deliveries[job.node_id] = deliveries.get(job.node_id, 0) + 1

        faults.observe(seen)
        async with self.cluster(backend, s, faults=faults) as c:
            res = await c.run("fan")
            # Let late copies arrive: they must change nothing. (Nodes run as inline
            # successors had no job of their own.)
            await until(
                lambda: all(deliveries.get(e.job.node_id, 0) >= times for e in faults.enqueued),
                f"{times} deliveries of every job",
            )
        assert res.status == "completed"
        assert res.node_statuses == {n: "completed" for n in sc.FAN_NODES}
        assert res.context == {**sc.FAN_CONTEXT, **{f"ran.{n}": 1 for n in sc.FAN_NODES}}
        assert s.probe.counts() == {n: 1 for n in sc.FAN_NODES}
        final = await c.client.get_result(res.execution_id)
        assert final.context == res.context
        assert final.node_statuses == res.node_statuses
        assert c.published[res.execution_id] == ["completed"]
        assert_same_result(res, await in_memory(sc.fan(count_keys=True), "fan"))

    @pytest.mark.parametrize(("times", "latency"), [(2, 0.0), (3, 0.0), (2, 0.02), (3, 0.02)])
    async def test_duplicate_delivery(self, backend: Any, times: int, latency: float) -> None:
        """Every job enqueued 2 or 3 times (also with a slow run store, which widens the gap
        between reading a run and acting on it): same result, every node and join ran once."""
        faults = FaultInjector(seed=times).duplicate(times)
        if latency:
            faults.latency(latency)
        await self._duplicated_fan(backend, faults, times)

    @pytest.mark.parametrize("seed", [1, 2])
    async def test_late_reordered_duplicates(self, backend: Any, seed: int) -> None:
        """Jobs and their duplicates delivered late and out of order: same result."""
        await self._duplicated_fan(backend, FaultInjector(seed=seed).late(0.15, times=2), 2)

    # == 9. crashes =============================================================================

    @requires("redelivery_on_crash")
    @pytest.mark.parametrize("point", STEP_POINTS)
    async def test_crash_at_step_point(self, backend: Any, point: str) -> None:
        """A worker dies at ``point`` while processing the fan-in node ``mid``: the run
        completes exactly; ``mid`` ran twice only when it died between executing and
        committing, and every node's context writes were committed exactly once."""
        s = sc.crashy()
        faults = FaultInjector().crash("mid", point)
        # Receiving and enqueueing are steps of a delivered job: make ``mid`` one.
        jobs_only: dict[str, Any] = {"inline_successors": 0} if point in _DELIVERY_POINTS else {}
        async with self.cluster(backend, s, faults=faults, **jobs_only) as c:
            res = await c.run("crashy")
        assert [(p, n) for p, n, _ in faults.crashes] == [(point, "mid")]
        assert res.status == "completed"
        assert res.node_statuses == {n: "completed" for n in sc.CRASH_NODES}
        assert res.context == sc.CRASHY_CONTEXT
        twice = point in ("after_execute", "before_commit")
        assert s.probe.counts() == {n: 2 if n == "mid" and twice else 1 for n in sc.CRASH_NODES}
        assert c.published[res.execution_id] == ["completed"]
        assert_same_result(res, await in_memory(sc.crashy(), "crashy"))

    @requires("redelivery_on_crash")
    async def test_crash_after_final_commit_still_publishes(self, backend: Any) -> None:
        """The worker committing the run's final state dies before publishing: the redelivery
        publishes the result (once) and waiting clients get it."""
        s = sc.crashy()
        faults = FaultInjector().crash("end", "after_commit")
        async with self.cluster(backend, s, faults=faults) as c:
            res = await c.run("crashy")
            # A client polling the store may see the final status before the repair publishes.
            await until(lambda: res.execution_id in c.published, "the result to be published")
        assert [(p, n) for p, n, _ in faults.crashes] == [("after_commit", "end")]
        assert res.status == "completed"
        assert res.context == sc.CRASHY_CONTEXT
        assert s.probe.counts() == {n: 1 for n in sc.CRASH_NODES}
        assert c.published[res.execution_id] == ["completed"]

    @requires("redelivery_on_crash")
    async def test_crash_after_commit_keeps_routing(self, backend: Any) -> None:
        """A node routed by an action dies after its commit: the redelivery enqueues only the
        branch the committed action chose (the action is not lost on replay: A6)."""
        s = sc.branches()
        faults = FaultInjector().crash("check", "after_commit")
        async with self.cluster(backend, s, faults=faults) as c:
            res = await c.run("branches", {"route": "no"})
        assert [(p, n) for p, n, _ in faults.crashes] == [("after_commit", "check")]
        assert res.status == "completed"
        assert res.node_statuses == {
            "check": "completed",
            "yes": "skipped",
            "yes_end": "skipped",
            "no": "completed",
            "no_end": "completed",
        }
        assert s.probe.counts() == {"check": 1, "no": 1, "no_end": 1}
        # The crash came before the enqueue: only the redelivery's repair sent 'no'.
        assert [j.node_id for j in faults.jobs_for("no")] == ["no"]
        assert faults.jobs_for("yes") == []

    # == 9b. inline successors ================================================================

    async def test_inline_successors_run_in_the_delivering_worker(self, backend: Any) -> None:
        """With ``inline_successors``, the worker that commits a node runs the node it made
        ready itself: a chain needs one job, with the exact result and one execution each."""
        s = sc.linear()
        faults = FaultInjector()
        async with self.cluster(backend, s, faults=faults, inline_successors=8) as c:
            res = await c.run("linear", {"start": 0})
        assert res.status == "completed"
        assert res.context == sc.LINEAR_CONTEXT
        assert s.probe.counts() == {"a": 1, "b": 1, "c": 1}
        assert [e.job.node_id for e in faults.enqueued] == ["a"]
        assert c.published[res.execution_id] == ["completed"]

    async def test_inline_budget_sends_the_rest_through_the_queue(self, backend: Any) -> None:
        """One inline successor per delivered job at most (``inline_successors=1``): the
        chain alternates a queued job and an inline node."""
        s = sc.linear()
        faults = FaultInjector()
        async with self.cluster(backend, s, faults=faults, inline_successors=1) as c:
            res = await c.run("linear", {"start": 0})
        assert res.status == "completed"
        assert res.context["_outputs.c"] == "c:2"
        assert s.probe.counts() == {"a": 1, "b": 1, "c": 1}
        assert [e.job.node_id for e in faults.enqueued] == ["a", "c"]

    @requires("redelivery_on_crash")
    @pytest.mark.parametrize("point", _INLINE_POINTS)
    async def test_crash_in_inline_successor(self, backend: Any, point: str) -> None:
        """A worker dies at ``point`` while running ``b`` as an inline successor of ``a``'s
        job: the redelivered job of ``a`` finds the queued work behind the finished nodes and
        the run completes exactly (``b`` ran twice only when it died before committing)."""
        s = sc.linear()
        faults = FaultInjector().crash("b", point)
        async with self.cluster(backend, s, faults=faults, inline_successors=8) as c:
            res = await c.run("linear", {"start": 0})
        assert [(p, n) for p, n, _ in faults.crashes] == [(point, "b")]
        assert res.status == "completed"
        assert res.context["_outputs.c"] == "c:2"
        assert res.context["b.seen"] is True
        twice = point in ("after_execute", "before_commit")
        assert s.probe.counts() == {"a": 1, "b": 2 if twice else 1, "c": 1}
        assert c.published[res.execution_id] == ["completed"]
        assert_same_result(res, await in_memory(sc.linear(), "linear", {"start": 0}))

    # == 10. slow node ==========================================================================

    async def test_slow_node_keeps_its_lease(self, backend: Any) -> None:
        """A node running longer than its lease keeps it by heartbeat: duplicates of its job
        delivered meanwhile never run it a second time."""
        s = sc.slow(seconds=max(0.8, self.lease_seconds * 3))
        deliveries: list[str] = []

        def seen(point: str, job: JobPayload | None, adapter: BaseDistributedAdapter) -> None:
            if point == "after_receive" and job is not None and job.node_id == "slow":
                deliveries.append(adapter.worker_id)

        faults = (
            FaultInjector(seed=3)
            .late(self.lease_seconds * 2, times=3, nodes=["slow"], delay_original=False)
            .observe(seen)
        )
        async with self.cluster(backend, s, faults=faults, inline_successors=0) as c:
            res = await c.run("slow")
        assert res.status == "completed"
        assert res.context == {
            "_outputs.s": "S",
            "_outputs.slow": "SLOW",
            "_outputs.after": "after:SLOW",
        }
        assert s.probe.counts() == {"s": 1, "slow": 1, "after": 1}
        assert len(deliveries) >= 3

    # == 11. lost jobs and reconcile ============================================================

    async def test_lost_job_is_recovered_by_reconcile(self, backend: Any) -> None:
        """A dropped enqueue stalls the run in ``running``; ``reconcile`` re-enqueues exactly
        the lost node, never the untaken branch (C1), and the run completes."""
        s = sc.lost()
        faults = FaultInjector().drop("b")
        async with self.cluster(backend, s, faults=faults, inline_successors=0) as c:
            rid = await c.start_run("lost")
            st = await c.wait_until(
                rid, lambda st: st.node_statuses.get("a") == "completed", "a completed"
            )
            # The enqueue follows the commit: a status read may see "completed" first.
            await until(lambda: bool(faults.dropped), "b's enqueue to be dropped")
            assert [j.node_id for j in faults.dropped] == ["b"]
            await c.hold(self.lease_seconds * 2)
            st = await c.status(rid)
            assert st.status == "running"
            assert st.node_statuses == {
                "a": "completed",
                "b": "queued",
                "x": "skipped",
                "c": "pending",
            }
            assert await c.client.reconcile(rid) == ["b"]
            res = await c.result(rid)
            assert await c.client.reconcile(rid) == []
        assert res.status == "completed"
        assert res.node_statuses == {
            "a": "completed",
            "b": "completed",
            "x": "skipped",
            "c": "completed",
        }
        assert res.context == {
            "_outputs.a": "A",
            "_outputs.b": "b:A",
            "_outputs.c": {"c got": {"b": "b:A"}},
        }
        assert s.probe.counts() == {"a": 1, "b": 1, "c": 1}

    async def test_reconcile_does_not_duplicate_running_node(self, backend: Any) -> None:
        """``reconcile`` of a healthy run whose node is running (holding its lease) enqueues
        nothing and the node runs once (C2)."""
        s = sc.lost()
        async with self.cluster(backend, s) as c:
            rid = await c.start_run("held")
            await until(s.probe.gate("held-started").is_set, "'held' to start")
            assert await c.client.reconcile(rid) == []
            await c.hold(self.lease_seconds * 1.5)  # longer than the lease: heartbeats
            assert await c.client.reconcile(rid) == []
            s.probe.gate("go").set()
            res = await c.result(rid)
        assert res.status == "completed"
        assert res.context == {
            "_outputs.a": "A",
            "_outputs.held": "HELD",
            "_outputs.c": {"c got": "HELD"},
        }
        assert s.probe.counts() == {"a": 1, "held": 1, "c": 1}

    # == 12. wait and resume ====================================================================

    @pytest.mark.parametrize(
        ("action", "taken", "untaken"),
        [("approve", "approve", "reject"), ("reject", "reject", "approve")],
    )
    async def test_wait_resume_routes_on_action(
        self, backend: Any, action: str, taken: str, untaken: str
    ) -> None:
        """``resume(run, node, output, action)`` routes on the action (A7); resuming a run
        that is not awaiting, or a node that is not awaiting, raises ResumeError."""
        s = sc.hitl()
        async with self.cluster(backend, s) as c:
            rid = await c.start_run("hitl")
            st = await c.wait_until(rid, lambda st: st.status == "awaiting", "awaiting")
            assert list(st.awaiting) == ["review"]
            assert st.node_statuses == {
                "s": "completed",
                "review": "awaiting",
                "approve": "pending",
                "reject": "pending",
            }
            with pytest.raises(ResumeError):
                await c.client.resume(rid, "s", output="x")
            await c.client.resume(rid, "review", output="ok", action=action)
            res = await c.result(rid)
            with pytest.raises(ResumeError):
                await c.client.resume(rid, "review", output="again", action=action)
        assert res.status == "completed"
        assert res.node_statuses == {
            "s": "completed",
            "review": "completed",
            taken: "completed",
            untaken: "skipped",
        }
        assert res.context == {
            "_outputs.s": "draft",
            "_outputs.review": "ok",
            f"_outputs.{taken}": {"approve": "approved:ok", "reject": "rejected:ok"}[taken],
        }
        assert s.probe.counts() == {"s": 1, taken: 1}
        mem_s = sc.hitl()
        rt = FlowRuntime(registry=mem_s.registry, blueprints=mem_s.blueprints)
        bp = rt.get_blueprint("hitl")
        mem = await rt.run(bp)
        mem = await rt.resume(bp, mem, "review", output="ok", action=action)
        assert_same_result(res, mem)

    # == 13. cancel =============================================================================

    async def test_cancel_during_slow_node(self, backend: Any) -> None:
        """``cancel`` makes the run ``cancelled`` for good: the running node is cancelled,
        nothing behind it runs, a second cancel returns False."""
        s = sc.cancellable()
        async with self.cluster(backend, s) as c:
            rid = await c.start_run("cancellable")
            await until(s.probe.gate("stuck-started").is_set, "'stuck' to start")
            assert await c.client.cancel(rid) is True
            res = await c.result(rid)
            assert res.status == "cancelled"
            await until(lambda: s.probe.cancelled == ["stuck"], "'stuck' to be cancelled")
            assert await c.client.cancel(rid) is False
            with pytest.raises(ResumeError):
                await c.client.resume(rid, "stuck")
        final = await c.client.get_result(rid)
        assert final.status == "cancelled"
        assert final.node_statuses == {"s": "completed", "stuck": "queued", "after": "pending"}
        assert final.context == {"_outputs.s": "S"}
        assert s.probe.counts() == {"s": 1, "stuck": 1}
        assert c.published[rid] == ["cancelled"]

    # == 14. sleep ==============================================================================

    @requires("delayed_delivery")
    async def test_sleep_is_a_durable_timer(self, backend: Any) -> None:
        """A 200 ms sleep node awaits a timer and completes without any client action."""
        s = sc.napping(ms=200)
        async with self.cluster(backend, s) as c:
            rid = await c.start_run("napping")
            st = await c.wait_until(rid, lambda st: st.status == "awaiting", "awaiting")
            assert st.awaiting["nap"]["reason"] == "timer"
            assert st.node_statuses == {"s": "completed", "nap": "awaiting", "after": "pending"}
            res = await c.result(rid)
        assert res.status == "completed"
        assert res.node_statuses == {"s": "completed", "nap": "completed", "after": "completed"}
        assert res.context == {"_outputs.s": "S", "_outputs.nap": "S", "_outputs.after": "after:S"}
        assert s.probe.counts() == {"s": 1, "after": 1}

    # == 15. subflows ===========================================================================

    async def _run_parent(self, backend: Any, s: sc.Scenario, bp: str, order: str) -> Any:
        """Run ``bp`` with the child finishing before (``child-first``: the parent's job is
        held before its commit) or after (``parent-first``) the parent node awaits it."""
        gate = asyncio.Event()
        faults = FaultInjector()
        if order == "child-first":
            faults.hold("sub", "before_commit", gate)
        async with self.cluster(backend, s, faults=faults) as c:
            rid = await c.start_run(bp)
            child_id = f"{rid}/sub@0"
            if order == "child-first":
                s.probe.gate("child-go").set()
                await until(lambda: s.probe.count("c1") == 1, "the child to start")
                await c.wait_until(child_id, lambda st: st.status in FINAL_STATUSES, "final")
                gate.set()
            else:
                await c.wait_until(rid, lambda st: st.status == "awaiting", "awaiting")
                assert (await c.status(rid)).awaiting["sub"]["childRunId"] == child_id
                s.probe.gate("child-go").set()
            res = await c.result(rid)
            child = await c.client.get_result(child_id)
        return res, child

    @pytest.mark.parametrize("order", ["parent-first", "child-first"])
    async def test_subflow_runs_as_child_run(self, backend: Any, order: str) -> None:
        """A subflow node starts a child run; the child's output becomes the node's output,
        whether the child ends before or after the parent node is recorded as awaiting."""
        s = sc.subflows()
        res, child = await self._run_parent(backend, s, "parent", order)
        assert res.status == "completed"
        assert res.node_statuses == {"p1": "completed", "sub": "completed", "p2": "completed"}
        assert res.context == {"_outputs.p1": 5, "_outputs.sub": 51, "_outputs.p2": "p2:51"}
        assert res.awaiting == {}
        assert child.status == "completed"
        assert child.context == {"child.c1": True, "_outputs.c1": 50, "_outputs.c2": 51}
        assert s.probe.counts() == {"p1": 1, "c1": 1, "c2": 1, "p2": 1}
        mem_s = sc.subflows()
        mem_s.probe.gate("child-go").set()
        assert_same_result(res, await in_memory(mem_s, "parent"))

    @pytest.mark.parametrize("order", ["parent-first", "child-first"])
    async def test_subflow_failure_fails_parent(self, backend: Any, order: str) -> None:
        """A failing child run fails the parent's subflow node and the parent run."""
        s = sc.subflows()
        res, child = await self._run_parent(backend, s, "parent-bad", order)
        assert child.status == "failed"
        assert res.status == "failed"
        assert res.node_statuses == {"p1": "completed", "sub": "failed", "p2": "pending"}
        assert res.awaiting == {}
        assert len(res.errors) == 1
        assert res.errors[0].node_id == "sub"
        assert "child exploded" in res.errors[0].message
        assert "child-bad" in res.errors[0].message
        assert s.probe.counts() == {"p1": 1, "c1": 1}

    # == 16. batches and loops ==================================================================

    async def test_batch_items_run_as_jobs(self, backend: Any) -> None:
        """Each batch item is its own job (``scatter[i]``); results keep item order."""
        s = sc.batch_and_loop()
        faults = FaultInjector()
        async with self.cluster(backend, s, faults=faults, inline_successors=0) as c:
            res = await c.run("batch", {"nums": [1, 2, 3]})
        assert res.status == "completed"
        assert res.node_statuses == {
            "scatter": "completed",
            "gather": "completed",
            "after": "completed",
        }
        assert res.context == {
            "nums": [1, 2, 3],
            "_outputs.scatter": [10, 20, 30],
            "out": [10, 20, 30],
            "_outputs.gather": [10, 20, 30],
            "_outputs.after": [10, 20, 30],
        }
        items = sorted((x.node_id, x.input) for x in s.probe.calls if x.node_id != "after")
        assert items == [("scatter[0]", 1), ("scatter[1]", 2), ("scatter[2]", 3)]
        assert sorted(e.job.node_id for e in faults.enqueued if "[" in e.job.node_id) == [
            "scatter[0]",
            "scatter[1]",
            "scatter[2]",
        ]
        assert_same_result(res, await in_memory(sc.batch_and_loop(), "batch", {"nums": [1, 2, 3]}))

    async def test_loop_iterations(self, backend: Any) -> None:
        """A loop body runs 3 times (iterations 0, 1, 2): iteration ids keep deduplication
        from swallowing later iterations."""
        s = sc.batch_and_loop()
        async with self.cluster(backend, s) as c:
            res = await c.run("loop", {"count": 0})
        assert res.status == "completed"
        assert res.node_statuses == {
            "init": "completed",
            "body": "completed",
            "lp": "completed",
            "done": "completed",
        }
        assert [(x.iteration, x.input) for x in s.probe.calls if x.node_id == "body"] == [
            (0, []),
            (1, [0]),
            (2, [0, 1]),
        ]
        assert res.context["count"] == 3
        assert res.context["_outputs.done"] == {"final": [0, 1, 2]}
        assert s.probe.counts() == {"init": 1, "body": 3, "done": 1}
        assert_same_result(res, await in_memory(sc.batch_and_loop(), "loop", {"count": 0}))

    # == 17. blueprint versions =================================================================

    async def test_wrong_version_worker_requeues(self, backend: Any) -> None:
        """A worker lacking the run's blueprint version requeues its jobs; a worker with the
        right version runs them."""
        probe = sc.Probe()
        v1 = sc.versioned("1", probe, "v1")
        v2 = sc.versioned("2", probe, "v2")
        requeued: list[JobPayload] = []

        def seen(point: str, job: JobPayload | None, adapter: BaseDistributedAdapter) -> None:
            if point == "after_receive" and job is not None and job.requeues > 0:
                requeued.append(job)

        faults = FaultInjector().observe(seen)
        # A requeue limit no scheduling delay can exhaust: the run must wait for the v2 worker.
        async with self.cluster(
            backend, v2, workers=0, faults=faults, version_requeue_limit=1_000_000
        ) as c:
            await c.add_worker(v1.runtime_options)
            rid = await c.start_run("versioned")
            await until(lambda: bool(requeued), "a requeued job to be delivered again")
            assert probe.calls == []
            await c.add_worker(v2.runtime_options)
            res = await c.result(rid)
        assert res.status == "completed"
        assert res.context == {"_outputs.a": "A", "_outputs.b": "b:A"}
        assert probe.tags("a") == ["v2"]
        assert probe.tags("b") == ["v2"]

    async def test_no_worker_with_the_version_fails_the_run(self, backend: Any) -> None:
        """With no capable worker the run fails after the requeue limit, naming blueprint and
        version."""
        probe = sc.Probe()
        v1 = sc.versioned("1", probe, "v1")
        v2 = sc.versioned("2", probe, "v2")
        async with self.cluster(
            backend,
            v2,
            workers=0,
            version_requeue_limit=2,
        ) as c:
            await c.add_worker(v1.runtime_options)
            res = await c.run("versioned")
        assert res.status == "failed"
        assert len(res.errors) == 1
        msg = res.errors[0].message
        assert "'versioned'" in msg
        assert "version '2'" in msg
        assert probe.calls == []
        assert res.node_statuses == {"a": "queued", "b": "pending"}

    # == 18. invalid jobs =======================================================================

    async def _assert_dead_lettered(self, backend: Any, needle: str) -> None:
        if not self.adapter_class.capabilities.dead_letter:
            return
        letters = await self.dead_letters(backend)
        assert letters is not None, (
            f"{type(self).__name__}: the adapter declares dead_letter; implement dead_letters()"
        )

        async def found() -> bool:
            return any(needle in x for x in (await self.dead_letters(backend) or []))

        limit = time.monotonic() + 5
        while not await found():
            assert time.monotonic() < limit, f"no dead letter mentions {needle!r}"
            await asyncio.sleep(0.01)

    async def test_job_for_unknown_run_is_dead_lettered(self, backend: Any) -> None:
        """A job for a run that does not exist is dead-lettered; workers keep working."""
        s = sc.linear()
        ghost = f"no-such-run-{uuid.uuid4().hex[:8]}"
        async with self.cluster(backend, s) as c:
            await c.client.enqueue_job(JobPayload(run_id=ghost, blueprint_id="linear", node_id="a"))
            await self._assert_dead_lettered(backend, ghost)
            res = await c.run("linear")
        assert res.status == "completed"
        assert s.probe.counts() == {"a": 1, "b": 1, "c": 1}

    async def test_job_naming_another_blueprint_is_dead_lettered(self, backend: Any) -> None:
        """A job whose blueprint id is not its run's is invalid: dead-lettered, the run is
        untouched and still completes."""
        s = sc.hitl()
        async with self.cluster(backend, s) as c:
            rid = await c.start_run("hitl")
            await c.wait_until(rid, lambda st: st.status == "awaiting", "awaiting")
            await c.client.enqueue_job(
                JobPayload(run_id=rid, blueprint_id="no-such-blueprint", node_id="s")
            )
            await self._assert_dead_lettered(backend, "no-such-blueprint")
            await c.hold(0.1)
            st = await c.status(rid)
            assert st.status == "awaiting"
            assert st.errors == []
            await c.client.resume(rid, "review", output="ok", action="approve")
            res = await c.result(rid)
        assert res.status == "completed"
        assert s.probe.counts() == {"s": 1, "approve": 1}

    async def test_unparseable_message_is_dead_lettered(self, backend: Any) -> None:
        """Garbage on the queue is dead-lettered with a reason; workers keep working."""
        s = sc.linear()
        async with self.cluster(backend, s) as c:
            if not await self.enqueue_raw(backend, "{not json"):
                pytest.skip(f"{type(self).__name__} does not implement enqueue_raw()")
            assert await self.enqueue_raw(backend, '{"runId": "", "nodeId": 7}')
            await self._assert_dead_lettered(backend, "{not json")
            await self._assert_dead_lettered(backend, '"nodeId": 7')
            res = await c.run("linear")
        assert res.status == "completed"
        assert s.probe.counts() == {"a": 1, "b": 1, "c": 1}

    # == 19. values ==============================================================================

    async def test_none_values_and_awkward_keys_round_trip(self, backend: Any) -> None:
        """``None`` outputs and values, keys with dots, slashes and non-ASCII round-trip."""
        s = sc.values()
        async with self.cluster(backend, s) as c:
            res = await c.run("values", {"in.put/key": None})
        assert res.status == "completed"
        assert res.node_statuses == {"w": "completed", "r": "completed"}
        assert res.context == {
            "in.put/key": None,
            **sc.VALUE_WRITES,
            "_outputs.w": None,
            "_outputs.r": {"input": None, "read": sc.VALUE_WRITES},
        }
        assert_same_result(res, await in_memory(sc.values(), "values", {"in.put/key": None}))

    async def test_unstorable_value_fails_the_node(self, backend: Any) -> None:
        """A value the backend cannot store fails its node with an error naming the key;
        the job is not retried forever."""
        s = sc.values()
        async with self.cluster(backend, s) as c:
            res = await c.run("unstorable")
            await c.hold(self.lease_seconds * 2)
        assert res.status == "failed"
        assert res.node_statuses == {"bad": "failed", "after": "pending"}
        assert len(res.errors) == 1
        assert res.errors[0].node_id == "bad"
        assert "bad.key" in res.errors[0].message
        assert res.context == {}
        assert s.probe.counts() == {"bad": 1}

    # == 20. differential =======================================================================

    @settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.differing_executors,  # one test body, one subclass per adapter
        ],
    )
    @given(raw=sc.random_dags())
    async def test_random_dags_match_in_memory(self, backend: Any, raw: dict[str, Any]) -> None:
        """Random DAGs (random joins, actions, conditions) end identically in memory and
        distributed: same status, context and node statuses; every node ran at most once."""
        note(repr(raw))
        mem_reg, _ = sc.dag_registry()
        rt = FlowRuntime(registry=mem_reg)
        mem = await rt.run(raw)
        reg, probe = sc.dag_registry()
        opts = {"registry": reg, "blueprints": [raw]}
        async with self.cluster(backend, opts) as c:
            res = await c.run("random-dag")
        assert_same_result(res, mem)
        assert all(n == 1 for n in probe.counts().values())
        assert set(probe.counts()) == {
            n for n, st in res.node_statuses.items() if st == "completed"
        }

    # == 21. delta persistence ==================================================================

    @requires("extra:bytes_counter")
    async def test_commits_write_only_deltas(self, backend: Any) -> None:
        """A 100 kB value written once is not re-written by later nodes' commits."""
        s = sc.big_context()
        per_commit: dict[str, list[int]] = {}
        before: dict[str, tuple[int, int]] = {}

        def seen(point: str, job: JobPayload | None, adapter: BaseDistributedAdapter) -> None:
            if job is None:
                return
            if point == "before_commit":
                before[job.node_id] = self.write_counters(backend)
            elif point == "after_commit":
                commits, written = self.write_counters(backend)
                c0, b0 = before[job.node_id]
                per_commit[job.node_id] = [commits - c0, written - b0]

        async with self.cluster(backend, s, faults=FaultInjector().observe(seen)) as c:
            res = await c.run("big-context")
        assert res.status == "completed"
        assert res.context["blob"] == "x" * sc.BIG_VALUE_BYTES
        assert set(per_commit) == {"big", "n1", "n2", "n3", "n4"}
        assert per_commit["big"][0] == 1
        assert per_commit["big"][1] >= sc.BIG_VALUE_BYTES
        for n in ("n1", "n2", "n3", "n4"):
            commits, written = per_commit[n]
            assert commits == 1
            assert written < sc.BIG_VALUE_BYTES // 20, (n, written)

    # == load smoke =============================================================================

    async def test_load_smoke(self, backend: Any) -> None:
        """Many concurrent runs of a 10-node fan-out/fan-in: all complete, every node of every
        run executed and committed exactly once."""
        s = sc.wide()
        nodes = {"s", "j", *(f"w{i}" for i in range(1, sc.LOAD_WIDTH + 1))}
        async with self.cluster(backend, s) as c:
            rids = await asyncio.gather(*(c.start_run("wide") for _ in range(self.load_runs)))
            results = await asyncio.gather(*(c.result(r) for r in rids))
        total = sum(range(1, sc.LOAD_WIDTH + 1))
        for res in results:
            assert res.status == "completed"
            assert res.node_statuses == {n: "completed" for n in nodes}
            outputs = {k for k in res.context if k.startswith("_outputs.")}
            assert outputs == {f"_outputs.{n}" for n in nodes}
            assert res.context["_outputs.j"] == total
        per_run: dict[tuple[str, str], int] = {}
        for x in s.probe.calls:
            per_run[(x.run_id, x.node_id)] = per_run.get((x.run_id, x.node_id), 0) + 1
        assert len(per_run) == self.load_runs * len(nodes)
        assert set(per_run.values()) == {1}
        assert {r: c.published[r] for r in rids} == {r: ["completed"] for r in rids}


__all__ = ["AdapterConformanceSuite", "assert_same_result", "in_memory", "requires", "until"]
