"""Flowcraft on BullMQ + Redis: ``BullMQAdapter`` workers and clients.

``pip install flowcraft-bullmq``; then ``flowcraft worker --backend redis://HOST:6379/0`` or
:class:`BullMQAdapter` from Python. Run state lives in Redis through
:mod:`flowcraft.redis` (installed with ``flowcraft-core[redis]``).
"""

from __future__ import annotations

from .adapter import BACKOFF_STRATEGY, BullMQAdapter, NodeAttemptFailed, from_url, job_id_for

__version__ = "0.1.0"

__all__ = [
    "BACKOFF_STRATEGY",
    "BullMQAdapter",
    "NodeAttemptFailed",
    "__version__",
    "from_url",
    "job_id_for",
]
