"""Topic names, message headers, and creating the topics.

A deployment uses three topics, all named after ``topic``:

* ``<topic>``: jobs ready to run (``partitions`` partitions; the consumer group's work);
* ``<topic>.delay``: jobs due later (retry backoff, redeliveries after a failure, ``sleep``
  timers): each carries :data:`DUE_HEADER`, and a worker holds it until then;
* ``<topic>.dead``: dead letters, the original body with :data:`REASON_HEADER`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

log = logging.getLogger("flowcraft.kafka")

DELIVERIES_HEADER: Final = "fc-deliveries"
"""Deliveries of the job's earlier copies (a redelivery produces a new copy of the message);
they count against the delivery cap."""
DUE_HEADER: Final = "fc-due"
"""Epoch milliseconds at which a message of the delay topic is due."""
REASON_HEADER: Final = "fc-reason"
"""Why a message was dead-lettered."""
SOURCE_HEADER: Final = "fc-source"
"""``topic/partition/offset`` of the message a dead letter or a redelivery was made from."""


@dataclass(frozen=True)
class Topics:
    """The three topic names of one deployment (see the module docstring)."""

    jobs: str
    delay: str
    dead: str

    @classmethod
    def named(cls, topic: str) -> Topics:
        """``topic``, ``topic.delay`` and ``topic.dead``."""
        if not topic:
            raise ValueError("topic must not be empty")
        return cls(topic, f"{topic}.delay", f"{topic}.dead")

    @property
    def consumed(self) -> list[str]:
        """The topics a worker consumes (jobs and delayed jobs)."""
        return [self.jobs, self.delay]


def header_map(
    headers: Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None,
) -> dict[str, str]:
    """A message's headers as text (the last value of a repeated header wins)."""
    out: dict[str, str] = {}
    items = headers.items() if isinstance(headers, Mapping) else headers or ()
    for k, v in items:
        if v is None:
            continue
        out[k] = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return out


def _create(
    conf: Mapping[str, Any], topics: Topics, partitions: int, replication: int, timeout: float
) -> None:
    admin = AdminClient(dict(conf))
    wanted = [
        NewTopic(topics.jobs, partitions, replication),
        NewTopic(topics.delay, partitions, replication),
        NewTopic(topics.dead, 1, replication),
    ]
    futures = admin.create_topics(wanted, request_timeout=timeout, operation_timeout=timeout)
    for name, fut in futures.items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise
        log.info("created topic %s", name)


async def ensure_topics(
    conf: Mapping[str, Any],
    topics: Topics,
    *,
    partitions: int = 8,
    replication: int = 1,
    timeout: float = 15.0,
) -> None:
    """Create the deployment's topics unless they exist (the admin API is blocking: it runs in
    a thread). Existing topics are left as they are, whatever their partition count."""
    await asyncio.to_thread(_create, conf, topics, partitions, replication, timeout)


__all__ = [
    "DELIVERIES_HEADER",
    "DUE_HEADER",
    "REASON_HEADER",
    "SOURCE_HEADER",
    "Topics",
    "ensure_topics",
    "header_map",
]
