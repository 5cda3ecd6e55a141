"""Create and delete the Pub/Sub resources of a deployment.

For a name ``N`` in project ``P``:

* topic ``N`` (jobs) and subscription ``N-workers`` on it, with a dead-letter policy
  (``max_delivery_attempts``, forwarding to ``N-dead``) — which is also what makes Pub/Sub set
  ``delivery_attempt``, the delivery count the engine caps;
* topic ``N-dead`` (dead letters: the engine publishes poison messages there with an
  ``fc-reason`` attribute) and subscription ``N-dead-sub`` on it, so dead letters are kept
  (a topic without subscriptions drops what is published to it);
* optionally a push endpoint (Cloud Run / Cloud Functions, see :mod:`flowcraft_gcp.push`),
  with a retry policy so a non-2xx answer is retried with backoff instead of at once.

IAM (see the package README): the worker's service account needs ``roles/pubsub.subscriber``
on ``N-workers``, ``roles/pubsub.publisher`` on ``N`` and ``N-dead``, ``roles/datastore.user``
on the Firestore database; the Pub/Sub service agent
(``service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com``) needs
``roles/pubsub.publisher`` on ``N-dead`` and ``roles/pubsub.subscriber`` on ``N-workers`` for
the dead-letter policy to forward messages.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass

from google.api_core import exceptions as gexc
from google.pubsub_v1 import (
    DeadLetterPolicy,
    PublisherAsyncClient,
    PushConfig,
    RetryPolicy,
    SubscriberAsyncClient,
    Subscription,
)

__all__ = ["PubsubResources", "create_resources", "delete_resources"]


@dataclass(frozen=True)
class PubsubResources:
    """Full names of a deployment's topics and subscriptions."""

    project: str
    topic: str
    subscription: str
    dead_letter_topic: str
    dead_letter_subscription: str


def names(project: str, name: str) -> PubsubResources:
    """The resource names for ``name`` in ``project`` (ids need at least 3 characters)."""
    p = f"projects/{project}"
    return PubsubResources(
        project,
        f"{p}/topics/{name}",
        f"{p}/subscriptions/{name}-workers",
        f"{p}/topics/{name}-dead",
        f"{p}/subscriptions/{name}-dead-sub",
    )


def _seconds(s: float) -> dt.timedelta:
    return dt.timedelta(seconds=s)


async def create_resources(
    project: str,
    name: str,
    *,
    publisher: PublisherAsyncClient | None = None,
    subscriber: SubscriberAsyncClient | None = None,
    ack_deadline: int = 60,
    max_delivery_attempts: int = 30,
    push_endpoint: str | None = None,
    retry_backoff: tuple[float, float] | None = None,
) -> PubsubResources:
    """Create (or reuse) the topics and subscriptions for ``name`` (see the module docstring).

    ``ack_deadline`` (10-600) is the subscription's; give workers the same ``ack_deadline``.
    ``max_delivery_attempts`` (5-100) should exceed the engine's ``DeliveryPolicy.
    max_deliveries`` (default 20): the engine dead-letters first, with a reason.
    ``retry_backoff=(min, max)`` seconds sets a retry policy (default for push: (1, 60));
    leave it unset for pull workers, which time redeliveries themselves."""
    pub = publisher or PublisherAsyncClient()
    sub = subscriber or SubscriberAsyncClient()
    r = names(project, name)
    for topic in (r.topic, r.dead_letter_topic):
        with contextlib.suppress(gexc.AlreadyExists):
            await pub.create_topic(name=topic)
    with contextlib.suppress(gexc.AlreadyExists):
        await sub.create_subscription(
            request=Subscription(name=r.dead_letter_subscription, topic=r.dead_letter_topic)
        )
    if push_endpoint is not None and retry_backoff is None:
        retry_backoff = (1.0, 60.0)
    s = Subscription(
        name=r.subscription,
        topic=r.topic,
        ack_deadline_seconds=max(10, min(int(ack_deadline), 600)),
        dead_letter_policy=DeadLetterPolicy(
            dead_letter_topic=r.dead_letter_topic,
            max_delivery_attempts=max(5, min(int(max_delivery_attempts), 100)),
        ),
    )
    if retry_backoff is not None:
        s.retry_policy = RetryPolicy(
            minimum_backoff=_seconds(retry_backoff[0]), maximum_backoff=_seconds(retry_backoff[1])
        )
    if push_endpoint is not None:
        s.push_config = PushConfig(push_endpoint=push_endpoint)
    with contextlib.suppress(gexc.AlreadyExists):
        await sub.create_subscription(request=s)
    return r


async def delete_resources(
    r: PubsubResources,
    *,
    publisher: PublisherAsyncClient | None = None,
    subscriber: SubscriberAsyncClient | None = None,
) -> None:
    """Delete the subscriptions and topics (missing ones are ignored)."""
    pub = publisher or PublisherAsyncClient()
    sub = subscriber or SubscriberAsyncClient()
    for s in (r.subscription, r.dead_letter_subscription):
        with contextlib.suppress(gexc.NotFound):
            await sub.delete_subscription(subscription=s)
    for t in (r.topic, r.dead_letter_topic):
        with contextlib.suppress(gexc.NotFound):
            await pub.delete_topic(topic=t)
