"""The distributed contracts: job payloads, the coordination store and the run context store.

Adapters implement these against a real queue and database; everything else (routing, joins,
retries, leases, recovery) lives once, in
:class:`~flowcraft.distributed.adapter.BaseDistributedAdapter`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..context import AsyncContext, PatchOperation

JobKind = Literal["node", "timer"]


class SimulatedCrash(BaseException):
    """Raised by fault injection to model a worker dying at a named step point.

    A BaseException, so no ``except Exception`` recovers from it: the job is neither acked nor
    cleaned up (its lease is left to expire), exactly as if the process had been killed.
    """


class InvalidJobError(ValueError):
    """A queue message is not a valid job payload; it should be dead-lettered."""


class JobPayload(BaseModel):
    """One queue message = one node execution. Wire names are upstream's camelCase.

    ``nodeId`` is ``<scatter>[<i>]`` for batch items. ``iteration`` tells loop iterations apart
    so deduplication never swallows the next iteration. ``kind="timer"`` wakes a sleep node.
    """

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")

    run_id: str = Field(alias="runId", min_length=1)
    blueprint_id: str = Field(alias="blueprintId", min_length=1)
    node_id: str = Field(alias="nodeId", min_length=1)
    attempt: int = Field(default=1, ge=1)
    is_last_attempt: bool | None = Field(default=None, alias="isLastAttempt")
    iteration: int = Field(default=0, ge=0)
    blueprint_version: str | None = Field(default=None, alias="blueprintVersion")
    kind: JobKind = "node"
    requeues: int = Field(default=0, ge=0)
    recover: bool | None = None
    """Set on a requeue of a redelivered message: it keeps the recovery duty of the original
    (re-publishing the work its node made ready, finalizing the run) across the requeue."""

    @property
    def job_id(self) -> str:
        """Deduplication id: run, node, iteration, attempt and kind (never just run+node)."""
        return f"{self.run_id}:{self.node_id}:{self.iteration}:{self.attempt}:{self.kind}"

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON object put on the queue."""
        return self.model_dump(by_alias=True, exclude_none=True)

    def to_json(self) -> str:
        """:meth:`to_wire` as compact JSON text."""
        return json.dumps(self.to_wire(), separators=(",", ":"))

    @classmethod
    def parse(cls, raw: str | bytes | dict[str, Any]) -> JobPayload:
        """Parse a queue message; :class:`InvalidJobError` names what is wrong."""
        try:
            data = json.loads(raw) if isinstance(raw, str | bytes) else raw
            if not isinstance(data, dict):
                raise InvalidJobError(f"job must be a JSON object, got {type(data).__name__}")
            return cls.model_validate(data)
        except InvalidJobError:
            raise
        except (ValueError, ValidationError) as exc:
            raise InvalidJobError(f"invalid job payload: {exc}") from None
        except (RecursionError, TypeError) as exc:
            raise InvalidJobError(f"invalid job payload: {type(exc).__name__}: {exc}") from None


@runtime_checkable
class CoordinationStore(Protocol):
    """Atomic key/value operations for leases and markers (upstream's ICoordinationStore).

    Every TTL is in seconds. Values are strings. An expired key must behave as absent on every
    operation, also on stores that delete expired data lazily.
    """

    async def increment(self, key: str, ttl_seconds: float) -> int:
        """Atomically add one and return the new value (a missing key counts as 0)."""
        ...

    async def set_if_not_exist(self, key: str, value: str, ttl_seconds: float) -> bool:
        """Store ``value`` only when ``key`` is absent; True when it was stored."""
        ...

    async def extend_ttl(self, key: str, ttl_seconds: float) -> bool:
        """Give an existing key a new TTL; False when it does not exist."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key`` (no error when absent)."""
        ...

    async def get(self, key: str) -> str | None:
        """The value of ``key``, or None."""
        ...

    async def compare_and_delete(self, key: str, value: str) -> bool:
        """Atomically delete ``key`` only while it holds ``value``; True when it did. Lease
        release: a worker never removes a lease that expired and was taken by another."""
        ...


ICoordinationStore = CoordinationStore
"""Upstream's name for :class:`CoordinationStore`."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything stored for a run (user context and engine keys) and its version."""

    data: dict[str, Any]
    version: int


@runtime_checkable
class DistributedContext(AsyncContext, Protocol):
    """A run's context in a backend store, with versioned atomic commits.

    ``load`` reads every key of the run (user keys and the engine's ``_fc.`` keys) with the
    version; ``commit`` applies all operations atomically if and only if the stored version still
    equals ``expected_version`` (then increments it) and returns whether it did. A run that does
    not exist has version 0 and no keys.
    """

    async def load(self) -> Snapshot:
        """All keys of the run and its version."""
        ...

    async def commit(
        self,
        ops: Sequence[PatchOperation],
        expected_version: int,
        status: str | None = None,
    ) -> bool:
        """Apply ``ops`` atomically when the version matches; True on success. ``status`` is
        the run's status after the commit (None: unchanged, e.g. a plain context write); a
        store that indexes runs by status (for :meth:`list_active_runs`, retention) keeps it
        from here and never decodes the engine's keys."""
        ...


class Changes:
    """What a store returns for "the run since version ``since``": the current ``version``,
    the store's ``epoch`` of the run (changes when the run was deleted and created again),
    ``full`` (``sets`` holds every key: replace, don't patch), changed keys and deleted keys."""

    __slots__ = ("deletes", "epoch", "full", "sets", "version")

    def __init__(
        self,
        version: int,
        epoch: str,
        full: bool,
        sets: dict[str, Any],
        deletes: Iterable[str] = (),
    ) -> None:
        self.version = version
        self.epoch = epoch
        self.full = full
        self.sets = sets
        self.deletes = tuple(deletes)


class CommitResult:
    """Outcome of :meth:`IncrementalContext.commit_release`: ``ok``, the run's ``epoch``,
    which of the leases to take were ``taken`` (in order), and on a conflict possibly the
    ``changes`` since the expected version."""

    __slots__ = ("changes", "epoch", "ok", "taken")

    def __init__(
        self,
        ok: bool,
        epoch: str = "",
        taken: list[bool] | None = None,
        changes: Changes | None = None,
    ) -> None:
        self.ok = ok
        self.epoch = epoch
        self.taken = taken or []
        self.changes = changes


@runtime_checkable
class IncrementalContext(Protocol):
    """Optional fast path of a :class:`DistributedContext`, declared by implementing it (the
    engine checks once per context type). Everything else the engine calls is in
    :class:`DistributedContext` and :class:`CoordinationStore`.

    ``load_since`` returns only what changed after ``since`` (``epoch`` as returned before) and,
    with ``lease=(key, token, ttl_seconds)``, first takes that lease (``SET NX``) in the same
    request: None when the lease is held by someone else. ``commit_release`` is ``commit`` that
    also releases the committing deliveries' leases when it succeeds and then takes the
    leases of successors, all in one atomic request (so the run is exactly as committed when
    those leases are taken).
    ``lease_holder``, ``extend_lease`` and ``release_lease`` operate on the same lease keys.
    Stores without it get full loads.
    """

    async def load_since(
        self, since: int, epoch: str, lease: tuple[str, str, float] | None = None
    ) -> Changes | None:
        """Changes since ``since`` (None: ``lease`` not taken)."""
        ...

    async def commit_release(
        self,
        ops: list[PatchOperation],
        expected_version: int,
        release: Sequence[tuple[str, str]] = (),
        take: Sequence[tuple[str, str]] = (),
        ttl_seconds: float = 0.0,
        epoch: str = "",
        status: str | None = None,
    ) -> CommitResult:
        """Commit; on success release the leases ``release`` ((key, token) pairs) and take
        the leases ``take`` for ``ttl_seconds``. On a version mismatch, may return the
        changes since ``expected_version`` (when ``epoch`` is the run's), so no reload is
        needed."""
        ...

    async def lease_holder(self, key: str) -> str | None:
        """The token holding lease ``key``, or None."""
        ...

    async def extend_lease(self, key: str, ttl_seconds: float) -> bool:
        """Give lease ``key`` a new TTL; False when it is gone."""
        ...

    async def release_lease(self, key: str, token: str) -> bool:
        """Delete lease ``key`` if ``token`` holds it."""
        ...


@dataclass(frozen=True)
class Capabilities:
    """What an adapter's backend can do; the conformance suite runs or skips tests by these,
    and picks the form of a test where backends legitimately differ.

    Modelled on SQLAlchemy dialect requirements: declare, don't detect.
    """

    queue_native_retries: bool = False
    """A delegated retry (``should_retry_in_process`` False) redelivers the SAME job and the
    queue counts attempts (BullMQ ``attempts``, SQS receive count): one enqueue per node, not
    one per attempt. The suite's delegated-retry tests assert that form."""
    delayed_delivery: bool = False
    """``enqueue_job(delay=...)`` is durable (a timer survives worker restarts): sleep nodes."""
    multi_process: bool = False
    """Workers in separate processes or machines may share the backend. Informational, for
    deployers: the in-process conformance suite cannot observe it and does not read it."""
    redelivery_on_crash: bool = True
    """A job whose worker died without acknowledging it is delivered again."""
    dead_letter: bool = False
    """Invalid jobs go to an inspectable dead-letter store (the suite's ``dead_letters`` hook)."""
    deduplicates_jobs: bool = False
    """Enqueues are deduplicated by job id, so an injected duplicate of the same job is
    swallowed; the suite's ``duplicate_delivery_kwargs`` hook must then turn that off for the
    duplicate-delivery tests."""
    max_delay_seconds: float | None = None
    """Longest delay the queue accepts natively (longer sleeps are chained); None: no limit."""
    max_value_bytes: int | None = None
    """Largest encoded context value the run store accepts; None: no limit."""
    extra: dict[str, Any] | None = None
    """Backend-specific flags; the suite reads ``bytes_counter`` (commits and bytes written
    are counted: delta persistence) and ``lambda_handler`` (a Lambda entry point exists)."""
