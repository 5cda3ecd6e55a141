"""What happens to a delivered job, decided once for every backend.

An adapter receives messages from its broker and wraps each one in a :class:`Delivery` (the
broker's handle, the raw body and how many times the broker has delivered it). The engine
decides a :class:`Decision` for it with :func:`decide` (parse, delivery cap, run the job,
classify what it raised) and the adapter maps that decision onto its broker: acknowledge,
enqueue a retry, make the message visible again later, move it to a dead-letter store, or give
it back on shutdown. No adapter decides any of this itself, so every backend treats a poison
message, a transient failure or a shutdown the same way.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .contracts import InvalidJobError, JobPayload

if TYPE_CHECKING:
    from .worker import WorkerLayer

log = logging.getLogger("flowcraft.distributed")

__all__ = [
    "Decision",
    "Delivery",
    "DeliveryPolicy",
    "Disposition",
    "JobHandler",
    "RetryJob",
    "decide",
]


class RetryJob(Exception):
    """Raised by the engine to ask for ``job`` to be delivered again after ``delay`` seconds.

    ``job`` has its attempt or requeue counter already advanced. ``native`` marks a failed
    attempt of a node whose retries are delegated to the queue: a broker with native retries
    may redeliver the same message after ``delay`` instead of enqueueing ``job``.
    """

    def __init__(self, job: JobPayload, delay: float, reason: str, *, native: bool = False) -> None:
        super().__init__(reason)
        self.job = job
        self.delay = delay
        self.reason = reason
        self.native = native


class Disposition(enum.Enum):
    """What the adapter does with a handled message."""

    ACK = "ack"
    """Done: delete the message."""
    RETRY = "retry"
    """Enqueue :attr:`Decision.job` after :attr:`Decision.delay`, then delete the message (or,
    for a native retry, redeliver this message after the delay)."""
    REDELIVER = "redeliver"
    """Handling failed for a reason outside the node (a store or broker outage): make this
    message visible again after :attr:`Decision.delay`."""
    DEAD_LETTER = "dead_letter"
    """The message can never succeed: move it to the dead-letter store with
    :attr:`Decision.reason`, then delete it."""
    ABANDON = "abandon"
    """The worker is shutting down mid-job: give the message back at once (nothing of the job
    was committed), so another worker takes it."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's verdict on one delivery (see :class:`Disposition`)."""

    disposition: Disposition
    delay: float = 0.0
    job: JobPayload | None = None
    reason: str = ""
    native: bool = False
    """RETRY only: a failed attempt of a queue-delegated retry (see :class:`RetryJob`)."""


@dataclass(eq=False)
class Delivery:
    """One message being handled, as the adapter received it.

    ``message`` is the broker's own handle (receipt, tag, job object); the engine never looks at
    it. ``deliveries`` is how many times the broker has delivered this message, this time
    included (a receive count, redelivery counter or attempts-started field; 1 when the broker
    cannot tell). ``native_attempts`` is how many of those deliveries were node attempts the
    queue redelivered on purpose (queue-native retries): they do not count against the
    delivery cap. ``settled`` is set by the adapter once the message was acked or given back.
    """

    body: str | bytes | dict[str, Any]
    message: Any = None
    deliveries: int = 1
    native_attempts: int = 0
    settled: bool = False
    job: JobPayload | None = None
    """The parsed payload, once :func:`decide` parsed it."""
    attributes: dict[str, Any] = field(default_factory=dict)
    """Adapter-specific metadata (headers, message attributes)."""
    extended_at: float = field(default_factory=time.monotonic)
    """When the message's lease was last set (received or extended; ``time.monotonic()``),
    for adapters with a ``delivery_lease_seconds`` (see :mod:`.keepalive`)."""


JobHandler = Callable[[JobPayload, "Delivery | None"], Awaitable[None]]
"""Handles one job (``BaseDistributedAdapter.handle_job``); the delivery is passed along so the
engine's heartbeat can extend the message's lease."""


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """Delivery limits shared by every backend.

    ``max_deliveries``: a message delivered more often than this (not counting queue-native
    node attempts) is dead-lettered before it is handled again: a job that kills its worker or
    fails outside the node every time ends instead of looping. ``backoff`` and
    ``max_backoff``: the redelivery delay after the n-th failed handling is
    ``backoff * 2**(n-1)`` seconds, at most ``max_backoff``.
    """

    max_deliveries: int = 20
    backoff: float = 0.05
    max_backoff: float = 30.0

    def redelivery_delay(self, failures: int) -> float:
        """Seconds before a message whose handling failed ``failures`` times comes back."""
        return float(min(self.backoff * 2.0 ** max(min(failures, 40) - 1, 0), self.max_backoff))


def parse(delivery: Delivery) -> JobPayload:
    """The job of ``delivery``; :class:`InvalidJobError` for any malformed body (also one
    nested too deeply to decode, or not UTF-8)."""
    body = delivery.body
    try:
        if isinstance(body, bytes):
            body = body.decode("utf-8")
        return JobPayload.parse(body)
    except InvalidJobError:
        raise
    except (ValueError, RecursionError, TypeError) as exc:
        raise InvalidJobError(f"invalid job payload: {type(exc).__name__}: {exc}") from None


async def decide(
    engine: WorkerLayer,
    delivery: Delivery,
    handler: JobHandler | None = None,
) -> Decision:
    """Handle ``delivery`` with ``handler`` (default ``engine.handle_job``) and return what to do
    with the message.

    Cancellation: when the engine is stopping, the message is abandoned and the cancellation
    propagates (after the caller settles, see :func:`settle`); a node cancelled because its run
    ended (the heartbeat) is acked. A :class:`~flowcraft.distributed.contracts.SimulatedCrash`
    propagates untouched: a dead process settles nothing.
    """
    policy = engine.delivery_policy
    try:
        job = parse(delivery)
    except InvalidJobError as exc:
        return Decision(Disposition.DEAD_LETTER, reason=str(exc))
    delivery.job = job
    counted = delivery.deliveries - delivery.native_attempts
    if counted > policy.max_deliveries:
        return Decision(
            Disposition.DEAD_LETTER,
            job=job,
            reason=f"delivered {counted} times (limit {policy.max_deliveries}) without "
            "being handled; the job kills or stalls its worker",
        )
    try:
        await (handler or engine.handle_job)(job, delivery)
    except RetryJob as exc:
        return Decision(Disposition.RETRY, exc.delay, exc.job, exc.reason, exc.native)
    except InvalidJobError as exc:
        log.error("dead-lettering job %s: %s", job.job_id, exc)
        return Decision(Disposition.DEAD_LETTER, job=job, reason=str(exc))
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if engine.stopping or task is None:
            return Decision(Disposition.ABANDON, job=job, reason="worker stopping")
        task.uncancel()
        log.info("job %s cancelled with its run", job.job_id)
        return Decision(Disposition.ACK, job=job)
    except Exception as exc:
        if counted >= policy.max_deliveries:
            log.exception("job %s failed on delivery %d; dead-lettering it", job.job_id, counted)
            return Decision(
                Disposition.DEAD_LETTER,
                job=job,
                reason=f"handling failed on delivery {counted} (limit "
                f"{policy.max_deliveries}): {type(exc).__name__}: {exc}",
            )
        delay = policy.redelivery_delay(counted)
        log.exception("job %s failed; redelivering in %.2f s", job.job_id, delay)
        return Decision(Disposition.REDELIVER, delay, job, f"{type(exc).__name__}: {exc}")
    return Decision(Disposition.ACK, job=job)
