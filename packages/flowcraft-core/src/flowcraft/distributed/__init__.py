"""Distributed execution: the adapter-author API.

An adapter package imports only from here. It implements, against its broker and database:

* a :class:`DistributedContext` (the run store: versioned atomic commits) and a
  :class:`CoordinationStore` (leases, markers), or reuses core's (:mod:`flowcraft.redis`);
* a subclass of :class:`BaseDistributedAdapter` with ``create_context``, ``enqueue_job``,
  ``publish_final_result`` and ``process_jobs`` (a :class:`PollingConsumer` for pull queues),
  and the delivery primitives ``ack``, ``redeliver`` and ``dead_letter`` (or ``settle`` when
  the broker does retries natively);
* its :class:`Capabilities`, and a :class:`FinalSource` if clients should wait without polling.

Optional fast paths are declared by implementing :class:`IncrementalContext` on the run context.
Everything else (routing, joins, retries, leases, commits, delivery decisions, recovery) is the
engine's. See ``docs/adapters.md``.
"""

from __future__ import annotations

from .adapter import BaseDistributedAdapter, RunStatus
from .backends import open_adapter, run_worker
from .codec import decode_value, encode_value
from .consumer import PollingConsumer
from .contracts import (
    Capabilities,
    Changes,
    CommitResult,
    CoordinationStore,
    DistributedContext,
    ICoordinationStore,
    IncrementalContext,
    InvalidJobError,
    JobPayload,
    SimulatedCrash,
    Snapshot,
)
from .delivery import Decision, Delivery, DeliveryPolicy, Disposition, JobHandler, RetryJob
from .results import FinalSource, PullSource, PushSource
from .urls import BackendURL, Option, parse_url

__all__ = [
    "BackendURL",
    "BaseDistributedAdapter",
    "Capabilities",
    "Changes",
    "CommitResult",
    "CoordinationStore",
    "Decision",
    "Delivery",
    "DeliveryPolicy",
    "Disposition",
    "DistributedContext",
    "FinalSource",
    "ICoordinationStore",
    "IncrementalContext",
    "InvalidJobError",
    "JobHandler",
    "JobPayload",
    "Option",
    "PollingConsumer",
    "PullSource",
    "PushSource",
    "RetryJob",
    "RunStatus",
    "SimulatedCrash",
    "Snapshot",
    "decode_value",
    "encode_value",
    "open_adapter",
    "parse_url",
    "run_worker",
]
