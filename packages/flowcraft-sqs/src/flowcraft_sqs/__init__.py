"""Flowcraft on AWS: SQS queue workers, a Lambda handler, and run state in DynamoDB.

``pip install flowcraft-sqs``; create the resources with :func:`create_table` and
:func:`create_queues`, then run :class:`SqsAdapter` workers (``await adapter.start()``), or
deploy :class:`SqsLambdaHandler` behind an SQS event source mapping. See the README for the
table layout and the IAM permissions.
"""

from __future__ import annotations

from .adapter import (
    MAX_DELAY_SECONDS,
    SqsAdapter,
    SqsMessage,
    create_queues,
    delay_seconds,
    delete_queues,
    from_url,
    message_delivery,
)
from .aws import ApiStats, AwsClients, AwsConfig
from .dynamodb import (
    MAX_VALUE_BYTES,
    DynamoCoordinationStore,
    DynamoRunContext,
    DynamoRunStore,
    create_table,
    delete_table,
)
from .lambda_handler import SqsLambdaHandler

__version__ = "0.1.0"

__all__ = [
    "MAX_DELAY_SECONDS",
    "MAX_VALUE_BYTES",
    "ApiStats",
    "AwsClients",
    "AwsConfig",
    "DynamoCoordinationStore",
    "DynamoRunContext",
    "DynamoRunStore",
    "SqsAdapter",
    "SqsLambdaHandler",
    "SqsMessage",
    "__version__",
    "create_queues",
    "create_table",
    "delay_seconds",
    "delete_queues",
    "delete_table",
    "from_url",
    "message_delivery",
]
