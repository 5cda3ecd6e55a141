"""Redis-backed distributed stores (``pip install flowcraft-core[redis]``).

Written once and reused by every adapter whose state lives in Redis (BullMQ, and the Redis
variants of the cloud adapters). See :mod:`flowcraft.redis.store` for the key layout.
"""

from __future__ import annotations

from .store import (
    EPOCH_FIELD,
    VERSION_FIELD,
    RedisCoordinationStore,
    RedisKeyLayout,
    RedisRunContext,
    RedisStateStore,
    RedisStoreStats,
    connect,
)

__all__ = [
    "EPOCH_FIELD",
    "VERSION_FIELD",
    "RedisCoordinationStore",
    "RedisKeyLayout",
    "RedisRunContext",
    "RedisStateStore",
    "RedisStoreStats",
    "connect",
]
