"""Webhook nodes: a run waits on an endpoint; signed deliveries resume it exactly once.

Deliveries go through :class:`~flowcraft.webhooks.WebhookReceiver` on the adapter's client (the
same object :mod:`flowcraft.http` serves over HTTP), so every adapter checks the parts that are
its business: the awaiting details in its store, a resume as one compare-and-set commit (two
racing deliveries, one winner), and the timeout as a durable timer.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from ....blueprint import load_blueprint
from ....nodes import NodeContext, NodeResult
from ....webhooks import WebhookReceiver, sign
from .. import scenarios as sc
from ..base import SuiteBase
from ..helpers import requires

SECRET = "conformance-webhook-secret"
SECRET_ENV = {"FC_HOOK_SECRET": SECRET}


def _hook_scenario(timeout: str | None = None, attempts: int = 1) -> sc.Scenario:
    """``s -> hook -> after``; ``hook`` is a webhook (secret from ``FC_HOOK_SECRET``) with
    ``fb`` as its fallback; ``after`` echoes the delivered body, ``fb`` the error."""

    probe = sc.Probe()

    async def start(ctx: NodeContext) -> NodeResult:
        probe.record(ctx)
        return NodeResult({"order": 7})

    async def after(ctx: NodeContext) -> NodeResult:
        probe.record(ctx)
        if not isinstance(ctx.input, dict):  # the fallback's result, routed as the hook's
            return NodeResult({"fallback": ctx.input})
        return NodeResult({"paid": ctx.input["body"], "event": ctx.input["query"].get("e")})

    async def fallback(ctx: NodeContext) -> NodeResult:
        probe.record(ctx)
        return NodeResult(f"timed out: {ctx.error.message if ctx.error else None}")

    params: dict[str, Any] = {"path": "/hooks/payment", "secretName": "FC_HOOK_SECRET"}
    if timeout is not None:
        params["timeout"] = timeout
    raw = {
        "id": "hooked",
        "nodes": [
            {"id": "s", "uses": "start"},
            {
                "id": "hook",
                "uses": "webhook",
                "params": params,
                "config": {"fallback": "fb", "maxRetries": attempts},
            },
            {"id": "after", "uses": "after"},
            {"id": "fb", "uses": "fb"},
        ],
        "edges": [{"source": "s", "target": "hook"}, {"source": "hook", "target": "after"}],
    }
    return sc.Scenario(
        [load_blueprint(raw)], {"start": start, "after": after, "fb": fallback}, probe
    )


def _signed(
    body: bytes, delivery: str, *, secret: str = SECRET, age: float = 0.0
) -> dict[str, str]:
    return {
        "Flowcraft-Signature": sign(secret, body, int(time.time() - age)),
        "Flowcraft-Delivery": delivery,
        "Content-Type": "application/json",
    }


class WebhookTests(SuiteBase):
    """The ``webhook`` node on the adapter: wait, verified resume, idempotency, timeout."""

    async def test_signed_delivery_resumes_the_run_once(self, backend: Any) -> None:
        """The run waits on the webhook (its endpoint in ``status().awaiting``); bad
        signatures, stale timestamps, oversize bodies and unknown endpoints are refused and
        change nothing; a signed delivery resumes it with the body as the node's output; the
        same delivery again is a 200 duplicate, another delivery a 410."""
        s = _hook_scenario()
        async with self.cluster(backend, s) as c:
            rx = WebhookReceiver(c.client, env=SECRET_ENV, max_body=1000)
            rid = await c.start_run("hooked")
            st = await c.wait_until(rid, lambda st: st.status == "awaiting", "awaiting")
            d = st.awaiting["hook"]
            assert d["reason"] == "webhook"
            assert d["path"] == "/hooks/payment"
            assert d["url"] == f"/hooks/payment/{d['endpointId']}"
            assert d["input"] == {"order": 7}
            eid = d["endpointId"]
            body = json.dumps({"amount": 12}).encode()

            async def deliver(b: bytes, h: dict[str, str], e: str = eid) -> tuple[int, Any]:
                r = await rx.deliver(e, b, h, {"e": "paid"}, path="/hooks/payment")
                return r.status, r.body

            refused = [
                (await deliver(body, _signed(body, "d1", secret="wrong")))[0],
                (await deliver(body, _signed(body, "d1", age=3600)))[0],
                (await deliver(body, {}))[0],
                (await deliver(b"x" * 1001, _signed(b"x" * 1001, "d1")))[0],
                (await deliver(body, _signed(body, "d1"), e=eid[:-2] + "zz"))[0],
                (await deliver(body, _signed(body, "d1"), e="nonsense"))[0],
            ]
            assert refused == [401, 401, 401, 413, 404, 404]
            assert (await c.status(rid)).status == "awaiting"
            assert await deliver(body, _signed(body, "d1")) == (
                202,
                {"status": "resumed", "runId": rid},
            )
            res = await c.result(rid)
            assert await deliver(body, _signed(body, "d1")) == (
                200,
                {"status": "duplicate", "runId": rid},
            )
            assert (await deliver(body, _signed(body, "d2")))[0] == 410
        assert res.status == "completed"
        assert res.node_statuses == {
            "s": "completed",
            "hook": "completed",
            "after": "completed",
            "fb": "skipped",
        }
        out = res.context["_outputs.hook"]
        assert out["body"] == {"amount": 12}
        assert out["deliveryId"] == "d1"
        assert out["endpointId"] == eid
        assert out["query"] == {"e": "paid"}
        assert "flowcraft-signature" not in out["headers"]
        assert res.context["_outputs.after"] == {"paid": {"amount": 12}, "event": "paid"}

    async def test_racing_deliveries_resume_once(self, backend: Any) -> None:
        """Five different deliveries at once: exactly one resumes (202), the others get 410;
        ``after`` runs once with the winner's body."""
        s = _hook_scenario()
        async with self.cluster(backend, s) as c:
            rx = WebhookReceiver(c.client, env=SECRET_ENV)
            rid = await c.start_run("hooked")
            st = await c.wait_until(rid, lambda st: st.status == "awaiting", "awaiting")
            eid = st.awaiting["hook"]["endpointId"]
            bodies = [json.dumps({"n": i}).encode() for i in range(5)]
            answers = await asyncio.gather(
                *(rx.deliver(eid, b, _signed(b, f"d{i}")) for i, b in enumerate(bodies))
            )
            res = await c.result(rid)
        statuses = sorted(a.status for a in answers)
        assert statuses == [202, 410, 410, 410, 410]
        winner = next(i for i, a in enumerate(answers) if a.status == 202)
        assert res.context["_outputs.hook"]["body"] == {"n": winner}
        assert res.context["_outputs.after"] == {"paid": {"n": winner}, "event": None}
        assert s.probe.counts() == {"s": 1, "after": 1}

    @requires("delayed_delivery")
    async def test_timeout_fails_the_node_and_its_fallback_runs(self, backend: Any) -> None:
        """A webhook with a 300 ms timeout and no delivery: the node fails with
        WebhookTimeoutError (a durable timer, no client action), its fallback runs and its
        result goes on as the webhook's; a delivery afterwards gets 404 and changes nothing."""
        s = _hook_scenario(timeout="300ms")
        async with self.cluster(backend, s) as c:
            rx = WebhookReceiver(c.client, env=SECRET_ENV)
            rid = await c.start_run("hooked")
            st = await c.wait_until(rid, lambda st: st.status == "awaiting", "awaiting")
            eid = st.awaiting["hook"]["endpointId"]
            assert "timeoutAt" in st.awaiting["hook"]
            res = await c.result(rid)
            body = b"{}"
            late = await rx.deliver(eid, body, _signed(body, "late"))
        assert late.status == 404
        assert res.status == "completed"
        assert res.node_statuses == {
            "s": "completed",
            "hook": "recovered",
            "after": "completed",
            "fb": "completed",
        }
        assert res.context["_outputs.fb"].startswith("timed out: webhook '/hooks/payment/")
        assert "received no delivery before" in res.context["_outputs.fb"]
        # The fallback's result is routed as the webhook's.
        assert res.context["_outputs.after"] == {"fallback": res.context["_outputs.fb"]}
        assert s.probe.counts() == {"s": 1, "fb": 1, "after": 1}

    @requires("delayed_delivery")
    async def test_timeout_with_retries_waits_again_on_a_new_endpoint(self, backend: Any) -> None:
        """``maxRetries: 2``: the first timeout re-arms the webhook (attempt 2, a new endpoint
        and timeout; the old endpoint is gone), and a delivery to the new one resumes it."""
        s = _hook_scenario(timeout="300ms", attempts=2)
        async with self.cluster(backend, s) as c:
            rx = WebhookReceiver(c.client, env=SECRET_ENV)
            rid = await c.start_run("hooked")
            st = await c.wait_until(rid, lambda st: st.status == "awaiting", "awaiting")
            first = st.awaiting["hook"]
            assert first["attempt"] == 1
            st = await c.wait_until(
                rid,
                lambda st: st.awaiting.get("hook", {}).get("attempt") == 2,
                "the webhook to wait again",
            )
            second = st.awaiting["hook"]
            assert second["endpointId"] != first["endpointId"]
            assert second["timeoutAt"] > first["timeoutAt"]
            body = b'{"late": false}'
            old = await rx.deliver(first["endpointId"], body, _signed(body, "d1"))
            new = await rx.deliver(second["endpointId"], body, _signed(body, "d1"))
            res = await c.result(rid)
        assert (old.status, new.status) == (404, 202)
        assert res.status == "completed"
        assert res.node_statuses["hook"] == "completed"
        assert res.context["_outputs.after"] == {"paid": {"late": False}, "event": None}
        assert s.probe.counts() == {"s": 1, "after": 1}
