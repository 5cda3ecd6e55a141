"""Flowcraft on Azure: Storage Queue workers, an Azure Functions queue-trigger handler, and run
state and coordination in Cosmos DB (no Redis).

``pip install flowcraft-azure``; create the resources with :func:`create_queues` and
:func:`create_container`, then run :class:`AzureAdapter` workers (``await adapter.start()``),
or deploy :class:`QueueTriggerHandler` in a queue-triggered function. See the README for the
item layout and the RBAC roles.
"""

from __future__ import annotations

from .adapter import MAX_RECEIVE, AzureAdapter, from_url, message_delivery
from .coordination import CosmosCoordinationStore
from .cosmos import ApiStats, CosmosConfig, CosmosContainer, create_container, delete_database
from .functions import QueueMessageLike, QueueTriggerHandler, RedeliveryRequested
from .queue import (
    MAX_DELAY_SECONDS,
    AzureMessage,
    StorageConfig,
    create_queues,
    delete_queues,
    poison_queue_name,
)
from .runstore import MAX_ITEM_BYTES, MAX_VALUE_BYTES, CosmosRunContext, CosmosRunStore

__version__ = "0.1.0"

__all__ = [
    "MAX_DELAY_SECONDS",
    "MAX_ITEM_BYTES",
    "MAX_RECEIVE",
    "MAX_VALUE_BYTES",
    "ApiStats",
    "AzureAdapter",
    "AzureMessage",
    "CosmosConfig",
    "CosmosContainer",
    "CosmosCoordinationStore",
    "CosmosRunContext",
    "CosmosRunStore",
    "QueueMessageLike",
    "QueueTriggerHandler",
    "RedeliveryRequested",
    "StorageConfig",
    "__version__",
    "create_container",
    "create_queues",
    "delete_database",
    "delete_queues",
    "from_url",
    "message_delivery",
    "poison_queue_name",
]
