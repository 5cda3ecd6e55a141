"""Flowcraft on RabbitMQ + PostgreSQL + Redis: ``RabbitMQAdapter`` workers and clients.

``pip install flowcraft-rabbitmq``; then ``flowcraft worker --backend amqp://HOST:5672/?...`` or
:class:`RabbitMQAdapter` from Python. Jobs travel through RabbitMQ (``aio-pika``), run state
and node leases live in PostgreSQL (:mod:`flowcraft_rabbitmq.postgres`, ``psycopg`` 3) and
the other coordination keys in Redis (:mod:`flowcraft.redis`, installed with
``flowcraft-core[redis]``).
"""

from __future__ import annotations

from .adapter import (
    DELIVERIES_HEADER,
    DUE_HEADER,
    MAX_DELAY_BUCKET_MS,
    REASON_HEADER,
    WATCHDOG_HEADER,
    RabbitMQAdapter,
    delay_bucket_ms,
    from_url,
)
from .postgres import (
    SCHEMA_VERSION,
    PostgresRunContext,
    PostgresRunStore,
    PostgresStoreStats,
    decode_key,
    encode_key,
)

__version__ = "0.1.0"

__all__ = [
    "DELIVERIES_HEADER",
    "DUE_HEADER",
    "MAX_DELAY_BUCKET_MS",
    "REASON_HEADER",
    "SCHEMA_VERSION",
    "WATCHDOG_HEADER",
    "PostgresRunContext",
    "PostgresRunStore",
    "PostgresStoreStats",
    "RabbitMQAdapter",
    "__version__",
    "decode_key",
    "delay_bucket_ms",
    "encode_key",
    "from_url",
]
