"""The client API: start a run, wait for its result, resume, cancel."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ..context import PatchOperation
from ..errors import FlowcraftError, ResumeError
from ..kernel import NODE, Activation, Kernel
from ..nodes import NodeResult
from ..runtime import WorkflowResult
from ..state import FINAL_STATUSES, RunState
from . import statekeys as sk
from .commit import _OUTCOME_RESUME
from .worker import WorkerLayer

log = logging.getLogger("flowcraft.distributed")


class ClientLayer(WorkerLayer):
    """See the module docstring."""

    async def start_run(
        self,
        blueprint_id: str,
        initial: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        parent: Mapping[str, Any] | None = None,
        start_input: Any = None,
    ) -> str:
        """Create a run and enqueue its start nodes; returns the run id.

        Creating a run that exists already is an error (run ids are unique).
        """
        bp = self._blueprint(blueprint_id)
        if bp is None:
            raise FlowcraftError(f"unknown blueprint {blueprint_id!r}", blueprint_id=blueprint_id)
        plan, _ = self.runtime.prepare(bp)
        run_id = run_id or str(uuid.uuid4())
        ctx = await self.create_context(run_id)
        state = RunState(execution_id=run_id, blueprint_id=bp.id, blueprint_version=bp.version)
        data = dict(initial or {})
        bad = [k for k in data if sk.is_engine_key(k)]
        if bad:
            raise ValueError(f"initial context keys may not start with '_fc.': {bad}")
        kernel = Kernel(plan, state, data)
        acts = kernel.start()
        if start_input is not None:
            for a in acts:
                state.inputs[a.node_id] = {"": start_input}
        now = time.time()
        extra: dict[str, Any] = {"createdAt": now, "updatedAt": now}
        if parent:
            extra["parent"] = dict(parent)
        ops = [PatchOperation("set", k, v) for k, v in data.items()]
        ops += [PatchOperation("set", k, v) for k, v in sk.encode(state, extra).items()]
        if not await ctx.commit(ops, 0, state.status):
            raise FlowcraftError(f"run {run_id!r} already exists", execution_id=run_id)
        await self._enqueue_activations(plan, state, acts)
        return run_id

    async def result(self, run_id: str, timeout: float | None = None) -> WorkflowResult:
        """Wait until the run is final (``completed``/``failed``/``stalled``/``cancelled``) and
        return it; TimeoutError after ``timeout`` seconds."""
        await self.wait_for_final(run_id, timeout)
        return await self.get_result(run_id)

    async def resume(
        self,
        run_id: str,
        node_id: str | None = None,
        output: Any = None,
        action: str | None = None,
    ) -> None:
        """Complete an awaiting node (a ``wait``) with ``output``, routing on ``action``."""
        ctx = await self.create_context(run_id)
        view = await self._view(ctx, run_id)
        if view is None:
            raise KeyError(f"no run {run_id!r}")
        st = view.state
        if not st.awaiting:
            raise ResumeError(f"run {run_id!r} is {st.status!r}, not awaiting", execution_id=run_id)
        bp = self._blueprint(st.blueprint_id)
        if bp is None:
            raise FlowcraftError(f"unknown blueprint {st.blueprint_id!r}")
        plan, _ = self.runtime.prepare(bp)
        if node_id is None:
            node_id = min(st.awaiting, key=lambda n: plan.order.get(n, 1 << 30))
        if node_id not in st.awaiting:
            raise ResumeError(
                f"node {node_id!r} is not awaiting; awaiting: {sorted(st.awaiting)}",
                node_id=node_id,
                execution_id=run_id,
            )
        details = st.awaiting[node_id]
        if details.get("reason") == "subflow":
            await self.resume(details["childRunId"], None, output, action)
            return
        if details.get("reason") == "timer" and output is None:
            output = details.get("input")
        act = Activation(node_id, None, NODE, iteration=st.nodes[node_id].iteration)
        await self._commit_outcome(
            ctx, view, plan, act, (_OUTCOME_RESUME, NodeResult(output, action)), {}, None
        )

    async def cancel(self, run_id: str) -> bool:
        """Mark the run ``cancelled`` (final), as in memory: nodes that were running (a
        worker holds their lease) become ``cancelled`` and stop within about a second (see
        ``final_watch_after``), queued ones ``pending`` (their jobs are dropped). False when
        the run was already final."""
        ctx = await self.create_context(run_id)
        while True:
            snap = await ctx.load()
            dec = sk.decode(snap.data)
            if dec is None:
                raise KeyError(f"no run {run_id!r}")
            st, rec = dec
            if st.status in FINAL_STATUSES:
                return False
            old = sk.engine_keys(snap.data)
            for node_id, ns in st.nodes.items():
                if ns.status in ("queued", "running"):
                    key = self._lease_key(run_id, node_id, ns.iteration)
                    ns.status = "cancelled" if await self._lease_held(run_id, key) else "pending"
            st.status = "cancelled"
            new = sk.encode(st, {**rec, "updatedAt": time.time()})
            if await ctx.commit(sk.diff(old, new), snap.version, st.status):
                break
        await self._finalize(ctx, st, rec)
        return True
