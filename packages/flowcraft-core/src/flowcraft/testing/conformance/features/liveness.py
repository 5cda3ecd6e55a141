"""Liveness: every failure reaches a final state.

Inputs that once made a job redeliver forever while its run stayed ``running``: values the
engine writes that no store can hold, writes into the engine's namespace, node ids shaped like
batch items, poison payloads, and duplicate storms on wide fan-outs. Each must end the run (the
way it ends in memory, or failed with an error naming the problem) at a bounded cost.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from ....blueprint import load_blueprint
from ....distributed.adapter import BaseDistributedAdapter
from ....distributed.contracts import JobPayload
from ....distributed.delivery import DeliveryPolicy
from ....nodes import NodeContext, NodeImplementation, NodeResult
from .. import scenarios as sc
from ..base import SuiteBase
from ..faults import FaultInjector
from ..helpers import assert_requeues_do_not_multiply, assert_same_result, in_memory

FAN_WIDTH = 100


def _scenario(*raw: dict[str, Any], **impls: NodeImplementation) -> sc.Scenario:
    return sc.Scenario([load_blueprint(r) for r in raw], dict(impls), sc.Probe())


def _chain(bp_id: str, *ids: str, edges: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "id": bp_id,
        "nodes": [{"id": i, "uses": i} for i in ids],
        "edges": edges
        if edges is not None
        else [{"source": a, "target": b} for a, b in itertools.pairwise(ids)],
    }


def _unstorable() -> sc.Scenario:
    """``transform``: ``a`` outputs -4 and the edge to ``b`` takes its square root (a complex
    number); ``surrogate``: ``s`` outputs a string with a lone surrogate, ``fb`` is its
    fallback; ``nan``: ``n`` outputs NaN."""

    async def minus4(ctx: NodeContext) -> NodeResult:
        return NodeResult(-4)

    async def echo(ctx: NodeContext) -> NodeResult:
        return NodeResult(ctx.input)

    async def surrogate(ctx: NodeContext) -> NodeResult:
        return NodeResult("bad\ud800")

    async def nan(ctx: NodeContext) -> NodeResult:
        return NodeResult(float("nan"))

    async def recovered(ctx: NodeContext) -> NodeResult:
        return NodeResult(f"recovered: {ctx.error.message if ctx.error else None}")

    transform = _chain(
        "transform", "a", "b", edges=[{"source": "a", "target": "b", "transform": "input ** 0.5"}]
    )
    surr = {
        "id": "surrogate",
        "nodes": [
            {"id": "s", "uses": "s", "config": {"fallback": "fb"}},
            {"id": "fb", "uses": "fb"},
        ],
        "edges": [],
    }
    return _scenario(
        transform,
        surr,
        _chain("nan", "n", "after"),
        a=minus4,
        b=echo,
        s=surrogate,
        fb=recovered,
        n=nan,
        after=echo,
    )


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["bad\ud800", "\udfff", "x" * 3000])
    | st.sets(st.integers(0, 3), max_size=2)
    | st.complex_numbers(max_magnitude=10, allow_nan=False, allow_infinity=False)
    | st.binary(max_size=3)
)
VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
"""Context values of every class: JSON ones, and ones no store can hold (sets, complex numbers,
bytes, NaN, infinities, lone surrogates), nested."""
KEYS = st.sampled_from(
    ["a", "a.b", "a/b", "x:y", "{tag}", "k\u00fc", "_fc.node.n", "_fc.run", "_fc.", "k\ud800"]
) | st.text(min_size=1, max_size=10).filter(lambda k: not k.startswith("_outputs."))
"""Context keys: separators, a hash tag, the engine prefix, a lone surrogate, anything."""


def _storable(key: str, value: Any) -> str | None:
    """None when (key, value) can be stored, else the reason the node must fail with."""
    if key.startswith("_fc."):
        return "is reserved"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError):
        return "cannot store context value"
    return None


class LivenessTests(SuiteBase):
    """Runs end: unstorable engine-written values, reserved keys, odd ids, poison, storms."""

    async def test_unstorable_transform_result_fails_the_source_node(self, backend: Any) -> None:
        """An edge transform yielding a complex number: the node whose outcome produced it
        fails with an error naming the key; the run ends ``failed`` (it used to loop)."""
        s = _unstorable()
        async with self.cluster(backend, s) as c:
            res = await c.run("transform")
        assert res.status == "failed"
        assert res.node_statuses == {"a": "failed", "b": "pending"}
        assert [e.node_id for e in res.errors] == ["a"]
        assert "_fc.in.b" in res.errors[0].message
        assert "complex" in res.errors[0].message
        assert res.context == {}

    async def test_lone_surrogate_output_goes_to_the_fallback(self, backend: Any) -> None:
        """An output no store can encode (a lone surrogate) fails its node like any failure:
        the fallback runs with the error and the run completes."""
        s = _unstorable()
        async with self.cluster(backend, s) as c:
            res = await c.run("surrogate")
        assert res.status == "completed"
        assert res.node_statuses == {"s": "recovered", "fb": "completed"}
        out = res.context["_outputs.fb"]
        assert out.startswith("recovered: cannot store context value _outputs.s")
        assert "surrogate" in out

    async def test_nan_output_fails_the_node(self, backend: Any) -> None:
        """NaN is not JSON: the node fails naming ``_outputs.n``; its successor never runs."""
        s = _unstorable()
        async with self.cluster(backend, s) as c:
            res = await c.run("nan")
        assert res.status == "failed"
        assert res.node_statuses == {"n": "failed", "after": "pending"}
        assert [e.node_id for e in res.errors] == ["n"]
        assert "_outputs.n" in res.errors[0].message

    async def test_writes_into_the_engine_namespace_fail_the_node(self, backend: Any) -> None:
        """A node writing ``_fc.node.c`` (which would mark ``c`` completed) fails instead,
        naming the key; ``c`` never runs. A gather whose ``outputKey`` is an engine key fails
        its node too."""
        calls: list[str] = []

        async def forge(ctx: NodeContext) -> NodeResult:
            calls.append(ctx.node_id)
            await ctx.context.set("_fc.node.c", {"status": "completed"})
            return NodeResult("forged")

        async def c_node(ctx: NodeContext) -> NodeResult:
            calls.append(ctx.node_id)
            return NodeResult("c ran")

        s = _scenario(_chain("forge", "f", "c"), f=forge, c=c_node)
        async with self.cluster(backend, s) as c:
            res = await c.run("forge")
        assert res.status == "failed"
        assert res.node_statuses == {"f": "failed", "c": "pending"}
        assert "'_fc.node.c' is reserved" in res.errors[0].message
        assert calls == ["f"]

    async def test_node_id_shaped_like_a_batch_item(self, backend: Any) -> None:
        """``first -> retry[2] -> last``: a valid id ending in ``[digits]`` is a node, not item 2
        of node ``retry``; the run completes exactly as in memory."""

        async def step(ctx: NodeContext) -> NodeResult:
            return NodeResult(f"{ctx.node_id}<-{ctx.input}")

        def scenario() -> sc.Scenario:
            return _scenario(
                _chain("odd-ids", "first", "retry[2]", "last"),
                first=step,
                **{"retry[2]": step},
                last=step,
            )

        async with self.cluster(backend, scenario()) as c:
            res = await c.run("odd-ids")
        assert res.status == "completed"
        assert res.context["_outputs.last"] == "last<-retry[2]<-first<-None"
        assert_same_result(res, await in_memory(scenario(), "odd-ids"))

    async def test_ids_with_separators_get_separate_leases(self, backend: Any) -> None:
        """Run ``P:b`` node ``c`` and run ``P`` node ``b:c`` would share the lease key
        ``...:P:b:c:0`` if ids were not escaped in keys: each waits for the other to be running
        at the same time, so a shared lease (the second held back until the first ends) fails
        both runs; separate leases complete them."""
        prefix = f"r{uuid.uuid4().hex[:8]}"
        pair = {(f"{prefix}:b", "c"), (prefix, "b:c")}
        running: set[tuple[str, str]] = set()
        both = asyncio.Event()

        async def step(ctx: NodeContext) -> NodeResult:
            me = (ctx.execution_id, ctx.node_id)
            if me in pair:
                running.add(me)
                if running == pair:
                    both.set()
                await asyncio.wait_for(both.wait(), 10.0)
            return NodeResult(ctx.node_id)

        raw = {"id": "seps", "nodes": [{"id": "c", "uses": "w"}, {"id": "b:c", "uses": "w"}]}
        async with self.cluster(backend, _scenario(raw, w=step)) as c:
            r1 = await c.start_run("seps", run_id=f"{prefix}:b")
            r2 = await c.start_run("seps", run_id=prefix)
            res = [await c.result(r1), await c.result(r2)]
        assert [r.status for r in res] == ["completed", "completed"]
        assert [r.context for r in res] == [{"_outputs.c": "c", "_outputs.b:c": "b:c"}] * 2
        assert running == pair

    @pytest.mark.parametrize(
        "kind", ["nested-list", "nested-object", "unknown-node", "odd-digits", "long-index"]
    )
    async def test_poison_payloads_are_dead_lettered(self, backend: Any, kind: str) -> None:
        """Poison jobs end in the dead-letter store with a reason (never redelivered forever),
        and the workers keep working."""
        s = sc.hitl()
        async with self.cluster(backend, s) as c:
            rid = await c.start_run("hitl")
            await c.wait_until(rid, lambda st: st.status == "awaiting", "awaiting")
            job = JobPayload(run_id=rid, blueprint_id="hitl", node_id="x").to_wire()
            if kind == "nested-list":
                body, needle = "[" * 200_000 + "]" * 200_000, "invalid job payload"
            elif kind == "nested-object":
                # 150k deep, under 1 MiB: the largest message SQS (and others) accept
                body, needle = '{"":' * 150_000 + "1" + "}" * 150_000, "invalid job payload"
            elif kind == "unknown-node":
                body, needle = json.dumps({**job, "nodeId": "no-such-node"}), "no-such-node"
            elif kind == "odd-digits":
                body, needle = json.dumps({**job, "nodeId": "review[\u00b2]"}), "review[\u00b2]"
            else:
                body, needle = (
                    json.dumps({**job, "nodeId": "review[" + "9" * 5000 + "]"}),
                    "review[",
                )
            if not await self.enqueue_raw(backend, body):
                pytest.skip(f"{type(self).__name__} cannot enqueue raw messages (enqueue_raw)")
            await self._dead_lettered(backend, needle)
            assert (await c.status(rid)).status == "awaiting"
            await c.client.resume(rid, output="ok", action="approve")
            res = await c.result(rid, timeout=self.scenario_timeout)
        assert res.status == "completed"

    async def test_job_failing_outside_its_node_is_dead_lettered_at_the_cap(
        self, backend: Any
    ) -> None:
        """A job whose handling fails every time (here: the run store is "down" for it) is
        redelivered with backoff and dead-lettered on delivery ``max_deliveries``, naming the
        cause; its node never runs, other runs are unaffected."""
        s = sc.linear()
        seen: list[int] = []

        def configure(adapter: BaseDistributedAdapter) -> None:
            def hook(point: str, job: JobPayload | None) -> None:
                if point == "after_receive" and job is not None and job.node_id == "a":
                    seen.append(job.attempt)
                    raise ConnectionError("run store down")

            adapter.fault_hook = hook

        policy = DeliveryPolicy(max_deliveries=3, backoff=0.01, max_backoff=0.05)
        async with self.cluster(backend, s, configure=configure, delivery_policy=policy) as c:
            rid = await c.start_run("linear", {"start": 0})
            await self._dead_lettered(
                backend, "handling failed on delivery 3 (limit 3): ConnectionError: run store down"
            )
            await asyncio.sleep(0.2)
            st = await c.status(rid)
        if self.adapter_class.capabilities.dead_letter:
            assert len(seen) == 3
        assert st.status == "running"
        assert st.node_statuses == {"a": "queued", "b": "pending", "c": "pending"}
        assert s.probe.counts() == {}

    async def _dead_lettered(self, backend: Any, needle: str) -> None:
        if not self.adapter_class.capabilities.dead_letter:
            return
        for _ in range(500):
            letters = await self.dead_letters(backend)
            if letters is None:
                self.missing_hook(
                    "dead_letters",
                    f"{self.adapter_class.__name__} declares Capabilities.dead_letter but the "
                    "suite cannot read its dead letters",
                    "dead_letters(backend) -> list of dead-lettered bodies/reasons as text",
                )
            if any(needle in x for x in letters):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"no dead letter mentions {needle!r}")

    async def test_duplicate_storm_on_a_wide_fan_out_is_bounded(self, backend: Any) -> None:
        """Every enqueue delivered twice on a 100-wide fan-out: the run completes with the exact
        result, every node runs (a few at most twice), and duplicates do not multiply: a
        node's own job, then one safeguard requeue per round while its twin holds the lease
        (:func:`assert_requeues_do_not_multiply`); late duplicates of finished nodes publish
        nothing."""
        width = FAN_WIDTH
        ids = [f"w{i}" for i in range(width)]
        ran: list[str] = []

        async def node(ctx: NodeContext) -> NodeResult:
            ran.append(ctx.node_id)
            return NodeResult(1)

        async def join(ctx: NodeContext) -> NodeResult:
            ran.append(ctx.node_id)
            return NodeResult(sum(ctx.input.values()))

        raw = {
            "id": "storm",
            "nodes": [
                {"id": "s", "uses": "w"},
                *({"id": i, "uses": "w"} for i in ids),
                {"id": "j", "uses": "j"},
            ],
            "edges": [
                *({"source": "s", "target": i} for i in ids),
                *({"source": i, "target": "j"} for i in ids),
            ],
        }
        s = _scenario(raw, w=node, j=join)
        faults = FaultInjector(seed=7).duplicate(2)
        kwargs = self.delivered_duplicates_kwargs()
        kwargs.setdefault("lease_seconds", max(self.lease_seconds, self.steady_lease_seconds))
        async with self.cluster(backend, s, faults=faults, timeout_factor=3, **kwargs) as c:
            res = await c.run("storm")
            rounds = c.client.delivery_policy.max_deliveries
        assert res.status == "completed"
        assert res.context["_outputs.j"] == width
        # Every node ran; execution is at-least-once (a message whose visibility runs out while
        # its job waits on a contended commit is delivered again), commits exactly once (the
        # exact result above). Extra executions stay a small fraction (a loaded CI machine
        # with a slow emulator, SQS through its Lambda handler, saw 6 of 102).
        assert sorted(set(ran)) == sorted(["s", *ids, "j"])
        assert len(ran) - (width + 2) <= (width + 2) // 5, sorted(ran)
        # Each node's own job (unless it ran inline), then one safeguard requeue per round
        # while a twin holds the node's lease (commit contention on a slow store).
        assert_requeues_do_not_multiply((e.job for e in faults.enqueued), rounds)

    @settings(
        max_examples=3,
        deadline=None,
        derandomize=True,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.differing_executors,
        ],
    )
    @given(pairs=st.lists(st.tuples(KEYS, VALUES), min_size=12, max_size=12))
    async def test_every_class_of_value_and_key_ends_the_run(
        self, backend: Any, pairs: list[tuple[str, Any]]
    ) -> None:
        """A node writes a generated (key, value): storable pairs round-trip exactly (JSON
        semantics) and the run completes; any other pair fails the node with an error that
        names the key, and the run ends ``failed``. Never a run left ``running``."""
        note(repr(pairs))

        async def write(ctx: NodeContext) -> NodeResult:
            key, value = pairs[ctx.input]
            await ctx.context.set(key, value)
            return NodeResult(None)

        bp = {"id": "write", "nodes": [{"id": "n", "uses": "write", "inputs": "i"}], "edges": []}
        s = _scenario(bp, write=write)
        async with self.cluster(backend, s) as c:
            ids = [await c.start_run("write", {"i": i}) for i in range(len(pairs))]
            results = [await c.result(rid, timeout=self.scenario_timeout) for rid in ids]
        for (key, value), res in zip(pairs, results, strict=True):
            why = _storable(key, value)
            if why is None:
                assert res.status == "completed", (key, value, res.errors)
                assert res.context[key] == json.loads(json.dumps(value))
            else:
                assert res.status == "failed", (key, value)
                assert res.node_statuses == {"n": "failed"}
                assert [e.node_id for e in res.errors] == ["n"]
                assert why in res.errors[0].message, (key, value, res.errors[0].message)
                assert repr(key)[1:-1] in res.errors[0].message or key in res.errors[0].message
