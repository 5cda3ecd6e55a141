"""BaseDistributedAdapter: technology-agnostic distributed execution, correct under
at-least-once delivery and worker crashes.

One job = one node execution. A worker:

1. takes a lease on ``run:node:iteration`` (so two deliveries never execute the same node at
   once; taken before reading the run, so no delivery can act on a read that predates another
   delivery's commit) and extends it with a heartbeat while the node runs;
2. loads the run (user context + engine keys + version) in one read;
3. drops the job when the run is final (re-publishing the result if the worker that ended the
   run died before publishing it), the node is already done (after re-publishing the
   successors it made ready, in case the previous delivery crashed before enqueueing them), or
   the job is for an older loop iteration;
4. runs the node with the same executor as the in-memory runtime, buffering its context writes;
5. applies the outcome with the shared :class:`~flowcraft.kernel.Kernel` and commits the node's
   writes, its completion, every edge/join decision and the run status in ONE conditional write
   (compare-and-set on the run's version). On a conflict it reloads and re-applies; if another
   delivery committed the node first, nothing of this execution is written (exactly-once commit);
6. only then enqueues the jobs the commit made ready, publishes a final result if the run ended,
   releases the lease and lets the queue ack.

A crash anywhere before step 5 leaves no trace (the job is redelivered when its queue lease
expires); a crash after step 5 is repaired by the redelivery (step 3 re-publishes) or by
:meth:`reconcile`, which only re-enqueues queued work that nobody holds a lease on. A run that
became final stops its running nodes at their next heartbeat (their outcome would be dropped).
"""

from __future__ import annotations

from typing import Any

from ..blueprint import NodeDefinition
from ..executor import is_fatal
from ..kernel import Activation
from ..runtime import FlowRuntime
from ..step import RunFrame
from .base import RunStatus
from .client import ClientLayer
from .delivery import JobHandler, RetryJob


class _DistributedRuntime(FlowRuntime):
    """The runtime used by workers: subflows become child runs instead of in-process runs."""

    adapter: BaseDistributedAdapter

    async def _subflow(
        self, run: RunFrame, act: Activation, node: NodeDefinition, node_input: Any
    ) -> tuple[int, Any]:
        return await self.adapter._start_child(run, act, node, node_input)


class BaseDistributedAdapter(ClientLayer):
    """Base class of every queue adapter.

    Subclasses implement :meth:`create_context`, :meth:`process_jobs`, :meth:`enqueue_job` and
    :meth:`publish_final_result`, map delivery decisions onto their broker (:meth:`ack`,
    :meth:`redeliver`, :meth:`dead_letter`, or :meth:`settle` as a whole), and declare their
    :attr:`capabilities`. Everything else (routing, joins, retries, leases, commits,
    recovery) is the engine's: see the modules named in :mod:`flowcraft.distributed.base`.
    """

    def _make_runtime(self, options: dict[str, Any]) -> FlowRuntime:
        rt = _DistributedRuntime(**options)
        rt.adapter = self
        return rt


__all__ = ["BaseDistributedAdapter", "JobHandler", "RetryJob", "RunStatus", "is_fatal"]
