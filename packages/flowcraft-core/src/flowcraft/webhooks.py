"""Webhook nodes: an endpoint a run waits on, and signed deliveries that resume it.

A node ``{"uses": "webhook", "params": {"path": "/hooks/payment", "secretName":
"PAYMENT_HOOK_SECRET", "timeout": "1h", "event": "paid"}}`` pauses its run like ``wait`` and
records an endpoint in the run's awaiting details (``status().awaiting[node]``, the
``node:awaiting`` event, ``flowcraft inspect``): ``url`` = ``<path>/<endpoint id>``. The id is
unguessable (128 random bits) and names its run and node, so a receiver needs no index: it reads
the run, compares the id in constant time, checks the signature and resumes the node.

Signing (:func:`sign`, :func:`verify`): header ``Flowcraft-Signature: t=<unix seconds>,v1=<hex
HMAC-SHA256 of "<t>.<raw body>" with the secret>``; a timestamp outside ``tolerance`` seconds is
refused (replays). The secret comes from the node's ``secretName`` (an environment variable of
the receiving process, so blueprints need not carry secrets) or, discouraged, ``secret``.

A delivery resumes the node with :func:`request_output` (body parsed as JSON when it is JSON,
headers, query, delivery id) as its output, routing on the ``Flowcraft-Event`` header or the
node's ``event``. The same delivery id twice resumes once (the second gets 200 ``duplicate``);
a delivery for a finished endpoint gets 410, for an unknown one 404; neither changes anything.
:class:`WebhookReceiver` implements this on any distributed client; :mod:`flowcraft.http`
serves it over HTTP.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .builtins import WEBHOOK, parse_duration
from .errors import FlowcraftError, ResumeError

if TYPE_CHECKING:
    from .blueprint import NodeDefinition
    from .distributed.adapter import BaseDistributedAdapter

SIGNATURE_HEADER = "flowcraft-signature"
"""Header carrying ``t=<unix seconds>,v1=<hex HMAC-SHA256>`` (header names are lowercase here;
HTTP header names are case-insensitive)."""
DELIVERY_HEADER = "flowcraft-delivery"
"""Header carrying the sender's delivery id (idempotency key); default: the signature."""
EVENT_HEADER = "flowcraft-event"
"""Header naming the event (the resume action), overriding the node's ``event`` param."""
DEFAULT_PATH = "/hooks"
"""Route prefix of a webhook node without a ``path`` param."""
DEFAULT_TOLERANCE = 300.0
"""Seconds a signature timestamp may differ from the receiver's clock."""
DEFAULT_MAX_BODY = 1 << 20
"""Largest accepted body, bytes."""


class WebhookTimeoutError(FlowcraftError, TimeoutError):
    """A webhook node's ``timeout`` passed without a delivery; the node fails (its fallback
    runs)."""


def check_params(node: NodeDefinition) -> list[str]:
    """Problems with a webhook node's params (for blueprint validation), each naming the node
    and what to change; empty when they are fine."""
    p, where = node.params, f"webhook node {node.id!r}"
    out: list[str] = []
    name, literal = p.get("secretName"), p.get("secret")
    if not (isinstance(name, str) and name) and not (isinstance(literal, str) and literal):
        out.append(
            f"{where} needs params.secretName (an environment variable holding the signing "
            "secret) or params.secret"
        )
    path = p.get("path", DEFAULT_PATH)
    if not isinstance(path, str) or not path.startswith("/") or "?" in path or "#" in path:
        out.append(f"{where}: params.path must be a route like '/hooks/payment', got {path!r}")
    if "timeout" in p:
        try:
            parse_duration(p["timeout"])
        except ValueError as exc:
            out.append(f"{where}: params.timeout: {exc}")
    if "event" in p and not isinstance(p["event"], str):
        out.append(f"{where}: params.event must be a string, got {p['event']!r}")
    return out


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_endpoint_id(run_id: str, node_id: str) -> str:
    """A fresh endpoint id for ``node_id`` of ``run_id``: the pair (base64url JSON) and 128
    random bits, so it names its run without an index and cannot be guessed."""
    pair = json.dumps([run_id, node_id], ensure_ascii=False).encode("utf-8")
    return f"{_b64(pair)}.{secrets.token_urlsafe(16)}"


def parse_endpoint_id(endpoint_id: str) -> tuple[str, str]:
    """``(run id, node id)`` named by an endpoint id; ValueError when it is not one."""
    head, sep, token = endpoint_id.partition(".")
    if not sep or not token:
        raise ValueError("not a webhook endpoint id")
    try:
        pair = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValueError("not a webhook endpoint id") from None
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
        raise ValueError("not a webhook endpoint id")
    return pair[0], pair[1]


def webhook_details(
    run_id: str, node: NodeDefinition, node_input: Any, attempt: int = 1
) -> dict[str, Any]:
    """The awaiting details a webhook node records when it is reached, or re-armed for
    ``attempt`` after a timeout (no secret in them: clients read them through ``status()``)."""
    path = str(node.params.get("path", DEFAULT_PATH)).rstrip("/") or ""
    eid = new_endpoint_id(run_id, node.id)
    details: dict[str, Any] = {
        "reason": "webhook",
        "endpointId": eid,
        "path": path or "/",
        "url": f"{path}/{eid}",
        "eventName": node.params.get("event"),
        "input": node_input,
        "attempt": attempt,
    }
    if "timeout" in node.params:
        ms = parse_duration(node.params["timeout"])
        details["timeoutAt"] = (datetime.now(UTC) + timedelta(milliseconds=ms)).isoformat()
    return details


def timeout_record(node_id: str, execution_id: str, details: Mapping[str, Any]) -> dict[str, Any]:
    """The error (wire form) a webhook node fails with when its ``timeoutAt`` has passed."""
    from .errors import ErrorRecord

    exc = WebhookTimeoutError(
        f"webhook {details.get('url')!r} received no delivery before {details.get('timeoutAt')}",
        node_id=node_id,
        execution_id=execution_id,
    )
    return ErrorRecord.from_exception(exc, node_id=node_id, execution_id=execution_id).to_wire()


def rearmed(run_id: str, node: NodeDefinition, details: Mapping[str, Any]) -> dict[str, Any] | None:
    """After a timeout: fresh details (a new endpoint and timeout) for the next attempt when
    the node's ``maxRetries`` allows one, else None (the node fails)."""
    attempt = int(details.get("attempt", 1))
    if attempt >= node.config.max_retries:
        return None
    return webhook_details(run_id, node, details.get("input"), attempt + 1)


def timed_out(details: Mapping[str, Any], now: float | None = None) -> bool:
    """Whether webhook awaiting ``details`` have a ``timeoutAt`` that has passed."""
    at = details.get("timeoutAt")
    if not at:
        return False
    return datetime.fromisoformat(at).timestamp() <= (time.time() if now is None else now)


def resolve_secret(node: NodeDefinition, env: Mapping[str, str] | None = None) -> bytes:
    """The signing secret of a webhook node: the environment variable ``secretName`` (of this
    process, or ``env``) or the literal ``secret``; LookupError naming the variable when unset."""
    name = node.params.get("secretName")
    if isinstance(name, str) and name:
        value = (os.environ if env is None else env).get(name)
        if not value:
            raise LookupError(
                f"webhook node {node.id!r}: environment variable {name!r} (its secretName) is "
                "not set in the receiving process"
            )
        return value.encode("utf-8")
    literal = node.params.get("secret")
    if isinstance(literal, str) and literal:
        return literal.encode("utf-8")
    raise LookupError(f"webhook node {node.id!r} has no secretName or secret")


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    """The ``Flowcraft-Signature`` header value for ``body`` (senders and tests use this)."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_mac(key, t, body)}"


class WebhookRejected(Exception):
    """A delivery refused with an HTTP ``status`` and a ``message`` saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def verify(
    secret: bytes,
    body: bytes,
    header: str | None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Check a ``Flowcraft-Signature`` header (constant-time); :class:`WebhookRejected` (401)
    when it is missing, malformed, wrong, or its timestamp is outside ``tolerance`` seconds."""
    if not header:
        raise WebhookRejected(401, "missing Flowcraft-Signature header")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        k, sep, v = item.strip().partition("=")
        if sep:
            parts.setdefault(k, []).append(v)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        raise WebhookRejected(401, "malformed Flowcraft-Signature header") from None
    if abs((time.time() if now is None else now) - t) > tolerance:
        raise WebhookRejected(401, f"signature timestamp outside the {tolerance:g} s tolerance")
    want = _mac(secret, t, body)
    if not any(hmac.compare_digest(want, got) for got in parts.get("v1", [])):
        raise WebhookRejected(401, "signature does not match")


def request_output(
    endpoint_id: str,
    body: bytes,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    delivery_id: str,
) -> dict[str, Any]:
    """The webhook node's output for a delivery: ``body`` (JSON when it parses as JSON, else
    text), ``headers`` (lowercase names, the signature left out), ``query``, ``deliveryId``,
    ``endpointId`` and ``receivedAt``."""
    text = body.decode("utf-8", errors="replace")
    parsed: Any
    try:
        parsed = json.loads(text) if text.strip() else None
    except ValueError:
        parsed = text
    return {
        "body": parsed,
        "headers": {k.lower(): v for k, v in headers.items() if k.lower() != SIGNATURE_HEADER},
        "query": dict(query),
        "deliveryId": delivery_id,
        "endpointId": endpoint_id,
        "receivedAt": datetime.now(UTC).isoformat(),
    }


@dataclass
class WebhookResponse:
    """What a receiver answers: an HTTP ``status`` and a JSON ``body``."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)


class WebhookReceiver:
    """Verifies deliveries and resumes the runs they are for, on a distributed ``client`` (any
    adapter: it reads with ``status``/``get_result`` and resumes with ``resume``, whose
    compare-and-set commit lets exactly one of two racing deliveries win).

    ``max_body`` bytes at most; ``tolerance`` seconds of clock skew for signatures; ``env``
    where ``secretName`` variables are read (default: this process's environment)."""

    def __init__(
        self,
        client: BaseDistributedAdapter,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        tolerance: float = DEFAULT_TOLERANCE,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.client = client
        self.max_body = max_body
        self.tolerance = tolerance
        self.env = env

    async def deliver(
        self,
        endpoint_id: str,
        body: bytes,
        headers: Mapping[str, str],
        query: Mapping[str, str] | None = None,
        path: str | None = None,
    ) -> WebhookResponse:
        """Handle one delivery to ``endpoint_id`` (``path``: the route prefix it came in on,
        checked against the node's when given). 202 resumed, 200 duplicate, 401 bad signature
        or stale timestamp, 404 unknown endpoint, 410 finished endpoint, 413 body too large."""
        try:
            return await self._deliver(endpoint_id, body, headers, query or {}, path)
        except WebhookRejected as exc:
            return WebhookResponse(exc.status, {"error": exc.message})

    async def _deliver(
        self,
        eid: str,
        body: bytes,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        path: str | None,
    ) -> WebhookResponse:
        if len(body) > self.max_body:
            raise WebhookRejected(413, f"body larger than {self.max_body} bytes")
        headers = {k.lower(): v for k, v in headers.items()}
        try:
            run_id, node_id = parse_endpoint_id(eid)
            st = await self.client.status(run_id)
        except (ValueError, KeyError):
            raise WebhookRejected(404, "unknown webhook endpoint") from None
        try:  # a run of a blueprint this receiver does not know, or an id naming no node
            node = self.client.runtime.get_blueprint(st.blueprint_id).node(node_id)
        except KeyError:
            raise WebhookRejected(404, "unknown webhook endpoint") from None
        if node.uses != WEBHOOK:
            raise WebhookRejected(404, "unknown webhook endpoint")
        d = st.awaiting.get(node_id)
        live = (
            d is not None
            and d.get("reason") == "webhook"
            and hmac.compare_digest(str(d.get("endpointId", "")), eid)
        )
        if (
            live
            and d is not None
            and path is not None
            and path.rstrip("/") != d["path"].rstrip("/")
        ):
            raise WebhookRejected(404, "unknown webhook endpoint")
        try:
            secret = resolve_secret(node, self.env)
        except LookupError as exc:
            return WebhookResponse(500, {"error": str(exc)})
        verify(secret, body, headers.get(SIGNATURE_HEADER), tolerance=self.tolerance)
        delivery = headers.get(DELIVERY_HEADER) or headers[SIGNATURE_HEADER]
        if live and d is not None:
            output = request_output(eid, body, headers, query, delivery)
            action = headers.get(EVENT_HEADER) or d.get("eventName")
            try:
                await self.client.resume(run_id, node_id, output, action)
            except ResumeError:
                pass  # another delivery won the race: answered below from the stored output
            else:
                return WebhookResponse(202, {"status": "resumed", "runId": run_id})
        return await self._finished(run_id, node_id, eid, delivery)

    async def _finished(
        self, run_id: str, node_id: str, eid: str, delivery: str
    ) -> WebhookResponse:
        """A verified delivery for an endpoint that no longer waits: 200 when this very
        delivery resumed it, 410 when another one did, 404 when it never took a delivery."""
        res = await self.client.get_result(run_id)
        out = res.context.get(f"_outputs.{node_id}")
        if isinstance(out, Mapping) and hmac.compare_digest(str(out.get("endpointId", "")), eid):
            if out.get("deliveryId") == delivery:
                return WebhookResponse(200, {"status": "duplicate", "runId": run_id})
            return WebhookResponse(410, {"error": "webhook endpoint already received a delivery"})
        raise WebhookRejected(404, "unknown webhook endpoint")


__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_PATH",
    "DEFAULT_TOLERANCE",
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "WebhookReceiver",
    "WebhookRejected",
    "WebhookResponse",
    "WebhookTimeoutError",
    "check_params",
    "new_endpoint_id",
    "parse_endpoint_id",
    "rearmed",
    "request_output",
    "resolve_secret",
    "sign",
    "timed_out",
    "timeout_record",
    "verify",
    "webhook_details",
]
