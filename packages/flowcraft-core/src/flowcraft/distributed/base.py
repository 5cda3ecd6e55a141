"""The engine's foundation: the adapter contract (what a backend implements), its hooks,
configuration, and reading a run's status and result.

The engine is split by responsibility into layers, each a module and a class built on the one
below: ``base`` -> :mod:`.leases` (node leases, run views) -> :mod:`.jobs` (enqueueing) ->
:mod:`.commit` (applying outcomes, group commit) -> :mod:`.recovery` (finalizing, failing,
reconciling, child runs) -> :mod:`.worker` (deliveries and node execution) -> :mod:`.client`
(start, resume, cancel, wait) -> :class:`~flowcraft.distributed.adapter.BaseDistributedAdapter`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..blueprint import NodeDefinition, WorkflowBlueprint
from ..errors import ErrorRecord
from ..events import EventBus, FlowcraftEvent
from ..runtime import FlowRuntime, WorkflowResult
from ..state import FINAL_STATUSES, RunState, WorkflowStatus
from . import keepalive
from . import statekeys as sk
from .contracts import (
    Capabilities,
    CoordinationStore,
    DistributedContext,
    JobPayload,
    Snapshot,
)
from .delivery import Delivery, DeliveryPolicy, JobHandler
from .results import FinalSource, PullSource, one_by_one
from .view import RunView

log = logging.getLogger("flowcraft.distributed")


@dataclass
class RunStatus:
    """What a client sees of a run."""

    run_id: str
    blueprint_id: str
    status: WorkflowStatus
    node_statuses: dict[str, str]
    awaiting: dict[str, dict[str, Any]]
    errors: list[dict[str, Any]]
    updated_at: float | None


class EngineBase(ABC):
    """See the module docstring."""

    capabilities: ClassVar[Capabilities] = Capabilities()
    view_errors: ClassVar[list[str]] = []
    """Mismatches found with ``FLOWCRAFT_VERIFY_VIEWS=1`` (a test-suite check that a worker's
    cached run and its incremental commits equal a full re-read and a full diff)."""
    final_marker_ttl: ClassVar[float] = 7 * 24 * 3600.0
    """How long the "result published" marker of a final run is kept (seconds); a job of the
    run arriving later than this re-publishes the result once more."""

    def __init__(
        self,
        *,
        coordination_store: CoordinationStore,
        runtime_options: Mapping[str, Any] | None = None,
        event_bus: EventBus | None = None,
        lease_seconds: float = 30.0,
        version_requeue_limit: int = 20,
        version_requeue_delay: float = 1.0,
        worker_id: str | None = None,
        view_cache: int = 256,
        inline_successors: int = 0,
        delivery_policy: DeliveryPolicy | None = None,
    ) -> None:
        opts = dict(runtime_options or {})
        self.runtime = self._make_runtime(opts)
        self.coordination = coordination_store
        self.event_bus = event_bus
        self.lease_seconds = lease_seconds
        self.version_requeue_limit = version_requeue_limit
        self.version_requeue_delay = version_requeue_delay
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        # Lease tokens: unique per adapter instance (worker ids may be shared) and cheap.
        self._token_prefix = f"{self.worker_id}:{uuid.uuid4().hex[:8]}:"
        self._tokens = itertools.count()
        self.fault_hook: Callable[[str, JobPayload | None], Awaitable[None] | None] | None = None
        self.view_cache = view_cache
        self.verify_views = os.environ.get("FLOWCRAFT_VERIFY_VIEWS") == "1"
        """How many runs this worker keeps decoded between jobs (0: decode every job)."""
        self._views: OrderedDict[str, RunView] = OrderedDict()
        self.inline_successors = inline_successors
        """How many successor nodes one delivered job may run right after its own node, in
        this worker, instead of sending them through the queue (0: never). See
        docs/distributed.md, "Inline successors"."""
        self.final_watch_after = 0.25
        """Seconds after which a running node starts watching for its run becoming final."""
        self.delivery_policy = delivery_policy or DeliveryPolicy()

        """Delivery cap and redelivery backoff (see :mod:`.delivery`)."""
        self._stopping = False
        self._stop_waiters: list[asyncio.Event] = []
        self._keeper = keepalive.DeliveryKeeper(self.extend_deliveries)

    @abstractmethod
    async def create_context(self, run_id: str) -> DistributedContext:
        """The run's context in the backend store."""

    @abstractmethod
    async def process_jobs(self, handler: JobHandler) -> None:
        """Consume the queue until :meth:`stop`, wrapping each message in a
        :class:`~flowcraft.distributed.delivery.Delivery` and calling
        ``self.process_delivery(delivery, handler)`` (pull queues: run a
        :class:`~flowcraft.distributed.consumer.PollingConsumer`). Return once the jobs in
        progress have finished."""

    @abstractmethod
    async def enqueue_job(
        self, job: JobPayload, *, delay: float = 0.0, options: Mapping[str, Any] | None = None
    ) -> None:
        """Put ``job`` on the queue, deliverable after ``delay`` seconds."""

    @abstractmethod
    async def publish_final_result(self, run_id: str, result: Mapping[str, Any]) -> None:
        """Announce a run's final result (``{status, context, errors, ...}``) to clients."""

    def should_retry_in_process(self, node: NodeDefinition) -> bool:
        """True (default): retries run inside the worker. False: one attempt per job, the
        queue redelivers failed attempts (``attempt``/``isLastAttempt`` travel in the job)."""
        return True

    def get_queue_retry_options(self, node: NodeDefinition) -> Mapping[str, Any] | None:
        """Queue-specific retry options for jobs of ``node`` when retries are delegated."""
        return None

    async def on_job_start(self, job: JobPayload) -> None:
        """Called when a job is received (before anything else)."""

    async def extend_delivery(self, delivery: Delivery) -> None:
        """Heartbeat hook: keep the message ``delivery`` invisible to other workers while its
        nodes run (called every third of ``lease_seconds``). Default: with a
        :meth:`delivery_lease_seconds`, :meth:`extend_deliveries` once a third of that lease
        has passed; else nothing (brokers whose lease outlives the job, or that renew it
        themselves)."""
        await keepalive.heartbeat(delivery, self.delivery_lease_seconds(), self.extend_deliveries)

    def delivery_lease_seconds(self) -> float | None:
        """Seconds a received message stays hidden before the broker hands it to another
        worker (a visibility timeout, an ack deadline); None (default) when the lease lasts as
        long as the handling (a consumer's connection, a broker that renews it). With a lease,
        the engine keeps every message it handles hidden: the heartbeat extends it while a
        node runs, and a keeper task (:mod:`.keepalive`) extends, in one
        :meth:`extend_deliveries` call, every message held for half its lease."""
        return None

    async def extend_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        """Extend the lease of these messages by :meth:`delivery_lease_seconds` (one batched
        call where the broker allows; a message acked or redelivered meanwhile is skipped or
        its error logged, never raised). Adapters with a lease implement this."""
        raise NotImplementedError(
            f"{type(self).__name__} declares delivery_lease_seconds() but does not implement "
            "extend_deliveries(deliveries)"
        )

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """A page of run ids that are not final, and the next cursor (None at the end)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list runs")

    async def wait_for_final(self, run_id: str, timeout: float | None) -> None:
        """Return once the run is final; KeyError when there is no such run, TimeoutError
        after ``timeout`` seconds. The waiting is :meth:`final_source`'s (:mod:`.results`)."""
        await self.final_source().wait(run_id, timeout)

    def final_source(self) -> FinalSource:
        """Where :meth:`wait_for_final` learns that runs became final: the same
        :class:`~flowcraft.distributed.results.FinalSource` on every call (it holds the
        subscription or poller and the waiters). Adapters whose backend announces final runs
        return a :class:`~flowcraft.distributed.results.PushSource`; stores that can read many
        statuses at once a :class:`~flowcraft.distributed.results.PullSource` over that read.
        Default: a pull source reading :meth:`status` run by run."""
        src: FinalSource | None = getattr(self, "_final_source", None)
        if src is None:

            async def read(run_id: str) -> str | None:
                try:
                    return (await self.status(run_id)).status
                except KeyError:
                    return None

            src = PullSource(one_by_one(read))
            self._final_source: FinalSource = src
        return src

    async def _fault(self, point: str, job: JobPayload | None = None) -> None:
        hook = self.fault_hook
        if hook is not None:
            r = hook(point, job)
            if r is not None:
                await r

    async def _emit(self, type_: str, payload: dict[str, Any]) -> None:
        if self.event_bus is None:
            return
        ev = FlowcraftEvent(type_, payload, payload.get("runId", ""), time.time(), 0)
        try:
            r = self.event_bus.emit(ev)
            if r is not None:
                await r
        except Exception:
            log.exception("adapter event bus failed")

    def _blueprint(self, blueprint_id: str) -> WorkflowBlueprint | None:
        return self.runtime.blueprints.get(blueprint_id)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called: a stopping worker takes no new message and
        finishes its running nodes, but starts no inline successor (those are enqueued)."""
        return self._stopping

    async def stop(self) -> None:
        """Stop consuming; jobs in progress finish. Adapters extending this call
        ``super().stop()`` first."""
        self._stopping = True
        for ev in self._stop_waiters:
            ev.set()

    def stop_event(self) -> asyncio.Event:
        """An event set by :meth:`stop` (for consume loops that wait on their broker)."""
        ev = asyncio.Event()
        if self._stopping:
            ev.set()
        self._stop_waiters.append(ev)
        return ev

    async def aclose(self) -> None:
        """Release connections and threads (after :meth:`stop`). Adapters override this."""

    async def _load_run(self, run_id: str) -> tuple[Snapshot, RunState, dict[str, Any]]:
        """The run's snapshot, decoded state and run record; KeyError when there is no run."""
        snap = await (await self.create_context(run_id)).load()
        dec = sk.decode(snap.data)
        if dec is None:
            raise KeyError(f"no run {run_id!r}")
        return snap, dec[0], dec[1]

    async def status(self, run_id: str) -> RunStatus:
        """The run's current status (KeyError when there is no such run).

        A subflow node waits on its child run; it counts as ``awaiting`` (and so does the run)
        only while the child itself is awaiting something a client can resume, exactly as in
        memory: while the child runs, the node is ``running`` and so is the run."""
        _, st, rec = await self._load_run(run_id)
        status, nodes, awaiting = st.status, self._ordered_statuses(st), st.awaiting
        if status not in FINAL_STATUSES and any(
            d.get("reason") == "subflow" for d in awaiting.values()
        ):
            awaiting = dict(awaiting)
            for node_id, d in st.awaiting.items():
                if d.get("reason") != "subflow":
                    continue
                try:
                    child = await self.status(str(d["childRunId"]))
                except KeyError:
                    continue
                if child.status != "awaiting":
                    del awaiting[node_id]
                    nodes[node_id] = "running"
            if status == "awaiting" and not awaiting:
                status = "running"
        return RunStatus(
            run_id=run_id,
            blueprint_id=st.blueprint_id,
            status=status,
            node_statuses=nodes,
            awaiting=awaiting,
            errors=st.errors,
            updated_at=rec.get("updatedAt"),
        )

    def _ordered_statuses(self, st: RunState) -> dict[str, Any]:
        bp = self._blueprint(st.blueprint_id)
        order = {n.id: i for i, n in enumerate(bp.nodes)} if bp is not None else {}
        keys = sorted(st.nodes, key=lambda k: (order.get(k, 1 << 30), k))
        return {k: st.nodes[k].status for k in keys}

    async def get_result(self, run_id: str) -> WorkflowResult:
        """The run as a :class:`WorkflowResult` (whatever its status)."""
        snap, st, _ = await self._load_run(run_id)
        return WorkflowResult(
            execution_id=run_id,
            blueprint_id=st.blueprint_id,
            status=st.status,
            context=sk.user_context(snap.data),
            node_statuses=self._ordered_statuses(st),
            errors=[ErrorRecord.model_validate(e) for e in st.errors],
            awaiting=dict(st.awaiting),
            state=st,
        )

    async def _publish(self, run_id: str, ctx: DistributedContext) -> None:
        res = await self.get_result(run_id)
        await self.publish_final_result(run_id, res.to_dict())

    # -- implemented by the layers above ----------------------------------------------------

    def _make_runtime(self, options: dict[str, Any]) -> FlowRuntime:
        """The runtime executing nodes (the adapter's subclass runs subflows as child runs)."""
        return FlowRuntime(**options)

    async def _finalize(
        self, ctx: DistributedContext, state: RunState, rec: Mapping[str, Any]
    ) -> None:
        """Publish a run that became final (see :mod:`.recovery`)."""
        raise NotImplementedError

    async def start_run(
        self,
        blueprint_id: str,
        initial: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        parent: Mapping[str, Any] | None = None,
        start_input: Any = None,
    ) -> str:
        """Create a run and enqueue its start nodes (see :mod:`.client`)."""
        raise NotImplementedError
