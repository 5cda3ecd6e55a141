"""Flowcraft on Cloudflare: a companion Worker (shipped in this package, ``worker/``) keeps run
state, coordination keys and job inboxes in SQLite-backed Durable Objects; Python workers pull
jobs from it over HTTP.

``pip install flowcraft-cloudflare``; write a deployable Worker directory with
:func:`write_worker` (or ``python -m flowcraft_cloudflare.deploy DIR``), ``wrangler deploy`` it,
set its ``FLOWCRAFT_SECRET``, then run :class:`CloudflareAdapter` workers
(``await adapter.start()``). See the README for the routes and the limits.
"""

from __future__ import annotations

from .adapter import (
    MAX_BATCH,
    MAX_DELAY_SECONDS,
    MAX_MESSAGE_BYTES,
    CloudflareAdapter,
    InboxMessage,
    from_url,
)
from .client import CloudflareError, WorkerClient, WorkerStats
from .deploy import WORKER_DIR, wrangler_config, write_worker
from .stores import MAX_VALUE_BYTES, WorkerCoordinationStore, WorkerRunContext, WorkerRunStore

__version__ = "0.1.0"

__all__ = [
    "MAX_BATCH",
    "MAX_DELAY_SECONDS",
    "MAX_MESSAGE_BYTES",
    "MAX_VALUE_BYTES",
    "WORKER_DIR",
    "CloudflareAdapter",
    "CloudflareError",
    "InboxMessage",
    "WorkerClient",
    "WorkerCoordinationStore",
    "WorkerRunContext",
    "WorkerRunStore",
    "WorkerStats",
    "from_url",
    "wrangler_config",
    "write_worker",
]
