"""Run state: per-node status records, edge resolutions, deliveries and awaiting details.

This is plain data (JSON-serializable) so the same state can live in a Python dict for an
in-memory run or in a backend store for a distributed one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

NodeStatus = Literal[
    "pending",
    "queued",
    "running",
    "completed",
    "failed",
    "skipped",
    "awaiting",
    "recovered",
    "cancelled",
]
"""Lifecycle of one node in one run.

``recovered``: the node failed and its ``fallback`` node completed in its place.
``queued``: ready and handed to an executor or queue, not started yet.
``skipped``: no taken edge leads to the node (an untaken branch), so it will never run.
"""

WorkflowStatus = Literal["running", "completed", "failed", "awaiting", "stalled", "cancelled"]
"""Status of a run; everything but ``running`` and ``awaiting`` is final."""

FINAL_STATUSES: Final = frozenset({"completed", "failed", "stalled", "cancelled"})
DONE_NODE_STATUSES: Final = frozenset({"completed", "skipped", "recovered"})

OUTPUTS_PREFIX: Final = "_outputs."

ENGINE_PREFIX: Final = "_fc."
"""Context keys starting with this hold the engine's own run state in distributed runs;
user code, blueprints and start inputs may not write them."""


def output_key(node_id: str) -> str:
    """The context key holding a node's output (upstream's ``_outputs.<id>``)."""
    return OUTPUTS_PREFIX + node_id


@dataclass(slots=True)
class NodeState:
    """What the engine knows about one node in the current run."""

    status: NodeStatus = "pending"
    iteration: int = 0
    attempts: int = 0
    action: str | None = None
    error: dict[str, Any] | None = None
    unresolved: int = 0
    taken: int = 0
    counted: bool = field(default=False, compare=False)
    """True when ``unresolved``/``taken`` are current (the kernel counts lazily)."""

    def to_dict(self) -> dict[str, Any]:
        """Compact JSON form (counters are derived, not stored)."""
        d: dict[str, Any] = {"status": self.status}
        if self.iteration:
            d["iteration"] = self.iteration
        if self.attempts:
            d["attempts"] = self.attempts
        if self.action is not None:
            d["action"] = self.action
        if self.error is not None:
            d["error"] = self.error
        return d


@dataclass(slots=True)
class BatchState:
    """Progress of one batch scatter: its items, how far they got and their results."""

    items: list[Any]
    chunk: int
    policy: str
    worker: str
    released: int = 0
    done: int = 0
    results: list[Any] = field(default_factory=list)
    item_status: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "items": self.items,
            "chunk": self.chunk,
            "policy": self.policy,
            "worker": self.worker,
            "released": self.released,
            "done": self.done,
            "results": self.results,
            "itemStatus": self.item_status,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BatchState:
        """Inverse of :meth:`to_dict`."""
        return cls(
            items=list(d["items"]),
            chunk=int(d["chunk"]),
            policy=str(d["policy"]),
            worker=str(d["worker"]),
            released=int(d["released"]),
            done=int(d["done"]),
            results=list(d["results"]),
            item_status=list(d["itemStatus"]),
        )


@dataclass(slots=True)
class RunState:
    """All engine bookkeeping for one run (the context is kept beside it)."""

    execution_id: str
    blueprint_id: str
    blueprint_version: str | None = None
    status: WorkflowStatus = "running"
    nodes: dict[str, NodeState] = field(default_factory=dict)
    edges: dict[str, bool] = field(default_factory=dict)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    awaiting: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    batches: dict[str, BatchState] = field(default_factory=dict)
    fallbacks: dict[str, str] = field(default_factory=dict)
    started: bool = False
    cancel_requested: bool = False
    seq: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form, stable across versions of this package (camelCase keys)."""
        return {
            "executionId": self.execution_id,
            "blueprintId": self.blueprint_id,
            "blueprintVersion": self.blueprint_version,
            "status": self.status,
            "nodes": {k: v.to_dict() for k, v in self.nodes.items()},
            "edges": dict(self.edges),
            "inputs": self.inputs,
            "awaiting": self.awaiting,
            "errors": self.errors,
            "batches": {k: v.to_dict() for k, v in self.batches.items()},
            "fallbacks": dict(self.fallbacks),
            "started": self.started,
            "seq": self.seq,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        """Inverse of :meth:`to_dict` (join counters are recomputed by the kernel)."""
        nodes = {
            k: NodeState(
                status=v["status"],
                iteration=v.get("iteration", 0),
                attempts=v.get("attempts", 0),
                action=v.get("action"),
                error=v.get("error"),
            )
            for k, v in d.get("nodes", {}).items()
        }
        return cls(
            execution_id=d["executionId"],
            blueprint_id=d["blueprintId"],
            blueprint_version=d.get("blueprintVersion"),
            status=d.get("status", "running"),
            nodes=nodes,
            edges={k: bool(v) for k, v in d.get("edges", {}).items()},
            inputs={k: dict(v) for k, v in d.get("inputs", {}).items()},
            awaiting=dict(d.get("awaiting", {})),
            errors=list(d.get("errors", [])),
            batches={k: BatchState.from_dict(v) for k, v in d.get("batches", {}).items()},
            fallbacks=dict(d.get("fallbacks", {})),
            started=bool(d.get("started", False)),
            seq=int(d.get("seq", 0)),
        )
