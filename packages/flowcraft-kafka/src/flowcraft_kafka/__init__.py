"""Flowcraft on Kafka: ``KafkaAdapter`` workers and clients, run state in Redis or Cassandra.

``pip install flowcraft-kafka``; then ``flowcraft worker --backend kafka://HOST:9092?...`` or
:class:`KafkaAdapter` from Python. Coordination (node leases, delivery counts) lives in Redis
through :mod:`flowcraft.redis`; runs in Redis (``run_store="redis"``) or in Cassandra
(:class:`flowcraft_kafka.cassandra.CassandraRunStore`).
"""

from __future__ import annotations

from .adapter import DEFAULT_MAX_HOLD, KafkaAdapter, RunStore, from_url
from .topics import DELIVERIES_HEADER, DUE_HEADER, REASON_HEADER, Topics, ensure_topics

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_HOLD",
    "DELIVERIES_HEADER",
    "DUE_HEADER",
    "REASON_HEADER",
    "KafkaAdapter",
    "RunStore",
    "Topics",
    "__version__",
    "ensure_topics",
    "from_url",
]
