"""The push entry point: a plain ASGI app for Pub/Sub push subscriptions (Cloud Run, Cloud
Functions 2nd gen, any ASGI server), no web framework needed.

::

    # main.py
    from flowcraft_gcp import GcpAdapter, PubSubPushApp

    def make_adapter() -> GcpAdapter:
        return GcpAdapter(
            project=os.environ["GOOGLE_CLOUD_PROJECT"],
            topic="flowcraft", subscription="flowcraft-workers",
            dead_letter_topic="flowcraft-dead", ack_deadline=600,
            runtime_options={"registry": REGISTRY, "blueprints": BLUEPRINTS},
        )

    app = PubSubPushApp(make_adapter)     # uvicorn main:app --port $PORT

Pub/Sub POSTs one envelope per message::

    {"message": {"data": "<base64>", "messageId": "...", "attributes": {...},
                 "publishTime": "..."},
     "subscription": "projects/P/subscriptions/S", "deliveryAttempt": 3}

and the answer settles it: **2xx acks, anything else is redelivered** (after the
subscription's retry-policy backoff). The app hands each message to
:meth:`GcpAdapter.process_delivery <flowcraft_gcp.GcpAdapter.process_delivery>`, exactly as a
pull worker does (the engine decides, the adapter settles):

* handled, duplicate, retried later (a new message was published with its delay), or
  dead-lettered (published to the dead-letter topic with its reason): 204;
* the handling failed outside the node (a Firestore outage, ...) or the app is shutting down:
  503, so Pub/Sub redelivers it; ``deliveryAttempt`` (set when the subscription has a
  dead-letter policy) is the delivery count the engine caps;
* a delayed job (``fc-due``) due within ``max_hold`` seconds is held until due, then handled;
  one due later is answered 429 and comes back after the retry-policy backoff;
* a body that is not a push envelope: 400. ``GET`` answers 200 (health checks).

A push request must finish within the subscription's ack deadline (up to 600 s): give the
adapter the same ``ack_deadline`` (then ``max_hold`` defaults to it minus 5 s) and keep nodes
shorter, or run pull workers. Authenticate the push (OIDC token) at the platform (Cloud Run
``--no-allow-unauthenticated`` with the push subscription's service account as invoker).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from flowcraft.distributed import JobHandler, SimulatedCrash

from .adapter import GcpAdapter, PubsubHandle, _due, message_delivery

log = logging.getLogger("flowcraft.gcp.push")

__all__ = ["PubSubPushApp", "parse_envelope"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class EnvelopeError(ValueError):
    """The request body is not a Pub/Sub push envelope."""


def _time(raw: Any) -> float | None:
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return dt.datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def parse_envelope(body: bytes) -> tuple[bytes, str, dict[str, str], int, float | None]:
    """``(data, message id, attributes, delivery attempt, publish time)`` of a push envelope;
    :class:`EnvelopeError` when it is not one."""
    try:
        env = json.loads(body)
        msg = env["message"]
        if not isinstance(msg, dict):
            raise TypeError("message is not an object")
        data = base64.b64decode(msg.get("data") or "", validate=True)
        attrs = {str(k): str(v) for k, v in (msg.get("attributes") or {}).items()}
        mid = str(msg.get("messageId") or msg.get("message_id") or "")
        attempt = int(env.get("deliveryAttempt") or 0)
        publish = _time(msg.get("publishTime") or msg.get("publish_time"))
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise EnvelopeError(f"not a Pub/Sub push envelope: {type(exc).__name__}: {exc}") from None
    return data, mid, attrs, attempt, publish


class PubSubPushApp:
    """An ASGI application handling Pub/Sub push deliveries with a :class:`GcpAdapter`.

    ``adapter`` is an adapter or a factory called once, on the first request (or at ASGI
    lifespan startup), inside the server's event loop. ``handler`` replaces the engine's
    ``handle_job`` (tests). ``max_hold``: longest wait for a delayed job (default: the
    adapter's ``ack_deadline`` minus 5 s). ``max_body``: larger requests get 413.
    """

    def __init__(
        self,
        adapter: GcpAdapter | Callable[[], GcpAdapter],
        *,
        handler: JobHandler | None = None,
        max_hold: float | None = None,
        max_body: int = 16 * 1024 * 1024,
    ) -> None:
        self._factory = adapter if not isinstance(adapter, GcpAdapter) else None
        self._adapter = adapter if isinstance(adapter, GcpAdapter) else None
        self.handler = handler
        self._max_hold = max_hold
        self.max_body = max_body
        self.requests = 0
        """Push requests answered (any status)."""

    @property
    def adapter(self) -> GcpAdapter:
        """The adapter (created by the factory on first use)."""
        if self._adapter is None:
            assert self._factory is not None
            self._adapter = self._factory()
        return self._adapter

    @property
    def max_hold(self) -> float:
        """Longest wait for a delayed job before answering 429."""
        if self._max_hold is not None:
            return self._max_hold
        return max(self.adapter.ack_deadline - 5.0, 0.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method = scope.get("method", "GET")
        if method in ("GET", "HEAD"):
            await _answer(send, 200, b"ok")
            return
        if method != "POST":
            await _answer(send, 405, b"POST a Pub/Sub push envelope")
            return
        body = await _read(receive, self.max_body)
        if body is None:
            await _answer(send, 413, b"request too large")
            return
        status, text = await self.handle(body)
        self.requests += 1
        await _answer(send, status, text.encode())

    async def handle(self, body: bytes) -> tuple[int, str]:
        """Handle one push request body; returns ``(HTTP status, text)``."""
        try:
            data, mid, attrs, attempt, publish = parse_envelope(body)
        except EnvelopeError as exc:
            return 400, str(exc)
        adapter = self.adapter
        due = _due(attrs)
        if due is not None:
            remaining = due - _now()
            if remaining > self.max_hold:
                return 429, f"not due for {remaining:.1f} s"
        d = message_delivery(
            data, mid, attrs, attempt, publish_time=publish, hold_seconds=self.max_hold
        )
        try:
            decision = await adapter.process_delivery(d, self.handler)
        except asyncio.CancelledError:
            return 503, "shutting down"
        except (Exception, SimulatedCrash) as exc:
            # A real crash would drop the connection: Pub/Sub redelivers either way.
            log.warning("push delivery %s failed: %r", mid, exc)
            return 500, f"{type(exc).__name__}"
        h = d.message
        assert isinstance(h, PubsubHandle)
        if h.acked:
            return 204, ""
        return 503, f"{decision.disposition.value}: {decision.reason}"[:200]

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                _ = self.adapter
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if self._adapter is not None:
                    await self._adapter.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _now() -> float:
    return time.time()


async def _read(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not msg.get("more_body"):
            break
    return b"".join(chunks)


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
