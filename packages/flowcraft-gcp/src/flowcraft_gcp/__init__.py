"""Flowcraft on Google Cloud: Pub/Sub pull workers and a push entry point (ASGI), with run
state and coordination in Firestore (no Redis).

``GcpAdapter`` is the worker/client; ``PubSubPushApp`` the push entry point;
``create_resources`` makes the topics and subscriptions; the Firestore stores can be used on
their own. See the package README.
"""

__version__ = "0.1.0"

from .adapter import (
    DUE_ATTRIBUTE,
    MAX_DELAY_SECONDS,
    REASON_ATTRIBUTE,
    GcpAdapter,
    PubsubHandle,
    from_url,
    message_delivery,
)
from .firestore import (
    MAX_VALUE_BYTES,
    FirestoreCoordinationStore,
    FirestoreRunContext,
    FirestoreRunStore,
)
from .push import PubSubPushApp, parse_envelope
from .resources import PubsubResources, create_resources, delete_resources
from .stats import ApiStats

__all__ = [
    "DUE_ATTRIBUTE",
    "MAX_DELAY_SECONDS",
    "MAX_VALUE_BYTES",
    "REASON_ATTRIBUTE",
    "ApiStats",
    "FirestoreCoordinationStore",
    "FirestoreRunContext",
    "FirestoreRunStore",
    "GcpAdapter",
    "PubSubPushApp",
    "PubsubHandle",
    "PubsubResources",
    "create_resources",
    "delete_resources",
    "from_url",
    "message_delivery",
    "parse_envelope",
]
