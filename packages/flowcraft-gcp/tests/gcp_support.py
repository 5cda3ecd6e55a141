"""Shared helpers of the GCP tests and benchmark: per-test Pub/Sub topics and subscriptions
and a Firestore collection prefix on the emulators, and a push-style worker that delivers
messages to :class:`flowcraft_gcp.PubSubPushApp` over real HTTP.

Every test gets its own topic, subscriptions and collection prefix (unique names), so tests
never see each other's messages or runs on shared emulators.

Emulator deviations (isolated here, named):

* The Pub/Sub emulator's own push delivery (a push subscription) omits ``deliveryAttempt``
  from the envelope even with a dead-letter policy (real Pub/Sub sets it), pushes at most
  about two messages at a time and ignores the subscription's retry policy. The conformance
  run of the push entry point therefore uses :class:`PushRelayAdapter`: it pulls from the
  subscription and POSTs each message to the app, served by uvicorn, in exactly Pub/Sub's
  push envelope (``deliveryAttempt`` from the pull), then acks on 2xx and nacks otherwise
  (after one second, like a retry policy with a 1 s minimum backoff). ``test_gcp_push``
  also runs a workflow through the emulator's real push subscription.
* The client libraries select the emulators from ``PUBSUB_EMULATOR_HOST`` and
  ``FIRESTORE_EMULATOR_HOST`` only; the helpers set them for the test process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from flowcraft.distributed import Delivery, JobHandler, PollingConsumer
from flowcraft_gcp import (
    ApiStats,
    GcpAdapter,
    PubSubPushApp,
    PubsubResources,
    create_resources,
    delete_resources,
)
from google.cloud.firestore import AsyncClient
from google.pubsub_v1 import PublisherAsyncClient, SubscriberAsyncClient

log = logging.getLogger("flowcraft.gcp.tests")

PROJECT = "demo-flowcraft"
SUBSCRIPTION_ACK_DEADLINE = 10
"""Pub/Sub's minimum subscription ack deadline; workers shorten it per message."""


def use_emulators(pubsub_host: str, firestore_host: str) -> None:
    """Point the client libraries at the emulators."""
    os.environ["PUBSUB_EMULATOR_HOST"] = pubsub_host
    os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_host


@dataclass
class GcpBackend:
    """One test's topics, subscriptions and Firestore prefix, and every adapter made on them."""

    name: str
    push_style: bool = False
    ack_deadline: int = 2
    res: PubsubResources | None = None
    stats: ApiStats = field(default_factory=ApiStats)
    adapters: list[GcpAdapter] = field(default_factory=list)
    publisher: PublisherAsyncClient | None = None
    subscriber: SubscriberAsyncClient | None = None

    @property
    def prefix(self) -> str:
        """Firestore collection prefix."""
        return f"{self.name}-"

    @property
    def commits(self) -> int:
        """Commits of every adapter of the test."""
        return self.stats.commits

    @property
    def bytes_written(self) -> int:
        """Bytes those commits wrote."""
        return self.stats.bytes_written

    async def create(self, **kwargs: Any) -> GcpBackend:
        """Create the topics and subscriptions."""
        self.publisher = PublisherAsyncClient()
        self.subscriber = SubscriberAsyncClient()
        self.res = await create_resources(
            PROJECT,
            self.name,
            publisher=self.publisher,
            subscriber=self.subscriber,
            ack_deadline=SUBSCRIPTION_ACK_DEADLINE,
            **kwargs,
        )
        return self

    def adapter(self, **kwargs: Any) -> GcpAdapter:
        """A worker/client adapter (push-style when the backend is) with its own clients."""
        assert self.res is not None
        cls = PushRelayAdapter if self.push_style else GcpAdapter
        kw: dict[str, Any] = {
            "project": PROJECT,
            "topic": self.res.topic,
            "subscription": self.res.subscription,
            "dead_letter_topic": self.res.dead_letter_topic,
            "firestore": AsyncClient(project=PROJECT),
            "prefix": self.prefix,
            "ack_deadline": self.ack_deadline,
            "subscription_ack_deadline": SUBSCRIPTION_ACK_DEADLINE,
            "pull_timeout": 1.0,
            "idle": (0.005, 0.05),
            "stats": self.stats,
            "concurrency": 8,
            **kwargs,
        }
        a = cls(**kw)
        self.adapters.append(a)
        return a

    async def dead_letters(self) -> list[tuple[str, str]]:
        """``(body, reason)`` of the dead-letter topic's messages."""
        assert self.res is not None
        peek = GcpAdapter(
            project=PROJECT,
            topic=self.res.topic,
            subscription=self.res.subscription,
            firestore=AsyncClient(project=PROJECT),
            prefix=self.prefix,
        )
        self.adapters.append(peek)
        return await peek.dead_letters(self.res.dead_letter_subscription)

    async def cleanup(self) -> None:
        """Close every adapter and delete the Pub/Sub resources."""
        for a in self.adapters:
            with contextlib.suppress(Exception):
                await a.aclose()
        if self.res is not None:
            with contextlib.suppress(Exception):
                await delete_resources(
                    self.res, publisher=self.publisher, subscriber=self.subscriber
                )
        for c in (self.publisher, self.subscriber):
            if c is not None:
                with contextlib.suppress(Exception):
                    await c.transport.close()


async def make_backend(
    pubsub_host: str, firestore_host: str, *, push_style: bool = False, **kwargs: Any
) -> GcpBackend:
    """Fresh, uniquely named resources on the emulators."""
    use_emulators(pubsub_host, firestore_host)
    b = GcpBackend(f"fct{uuid.uuid4().hex[:12]}", push_style=push_style)
    return await b.create(**kwargs)


# -- push over HTTP ----------------------------------------------------------------------------


def push_envelope(received: Any, subscription: str) -> bytes:
    """A pulled ``ReceivedMessage`` as the JSON body Pub/Sub POSTs to a push endpoint."""
    m = received.message
    publish = m.publish_time.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    env: dict[str, Any] = {
        "message": {
            "data": base64.b64encode(m.data).decode(),
            "attributes": dict(m.attributes),
            "messageId": m.message_id,
            "message_id": m.message_id,
            "publishTime": publish,
            "publish_time": publish,
        },
        "subscription": subscription,
    }
    if received.delivery_attempt:
        env["deliveryAttempt"] = received.delivery_attempt
    return json.dumps(env).encode()


async def http_post(host: str, port: int, path: str, body: bytes) -> int:
    """POST ``body`` (JSON) over a new HTTP/1.1 connection; returns the status code."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        line = await reader.readline()
        return int(line.split()[1])
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def serve(app: Any) -> Any:
    """Serve the ASGI ``app`` with uvicorn on a free 127.0.0.1 port; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()


class _Relay:
    """The pull-to-push bridge a :class:`PollingConsumer` drives (it plays Pub/Sub's push
    delivery: one POST per message, ack on 2xx, nack otherwise)."""

    def __init__(self, adapter: PushRelayAdapter, port: int) -> None:
        self.adapter = adapter
        self.port = port

    @property
    def stopping(self) -> bool:
        return self.adapter.stopping

    def stop_event(self) -> asyncio.Event:
        return self.adapter.stop_event()

    async def receive(self, n: int) -> list[Delivery]:
        a = self.adapter
        try:
            r = await a.subscriber.pull(
                subscription=a.subscription, max_messages=n, timeout=a.pull_timeout
            )
        except Exception as exc:
            if "Deadline" in type(exc).__name__:
                return []
            raise
        return [Delivery(b"", m) for m in r.received_messages]

    async def process_delivery(self, d: Delivery, handler: Any = None) -> None:
        a = self.adapter
        m = d.message
        try:
            status = await http_post("127.0.0.1", self.port, "/", push_envelope(m, a.subscription))
        except Exception as exc:
            log.warning("push POST failed: %r", exc)
            status = 599
        if 200 <= status < 300:
            await a.subscriber.acknowledge(subscription=a.subscription, ack_ids=[m.ack_id])
        else:
            await a.subscriber.modify_ack_deadline(
                subscription=a.subscription, ack_ids=[m.ack_id], ack_deadline_seconds=1
            )


class PushRelayAdapter(GcpAdapter):
    """A :class:`GcpAdapter` whose worker loop is a push deployment: its
    :class:`PubSubPushApp` served by uvicorn on 127.0.0.1, fed by a relay that delivers the
    subscription's messages as Pub/Sub push requests (see the module docstring). Up to
    ``concurrency`` requests in flight."""

    async def process_jobs(self, handler: JobHandler) -> None:
        """Serve the push app and relay messages to it until :meth:`stop`."""
        app = PubSubPushApp(self, handler=handler, max_hold=8.0)
        async with serve(app) as port:
            relay = _Relay(self, port)
            consumer = PollingConsumer(
                relay,  # type: ignore[arg-type]
                relay.receive,
                concurrency=self.concurrency,
                batch=self.concurrency,
                idle=self.idle,
            )
            await consumer.run()
