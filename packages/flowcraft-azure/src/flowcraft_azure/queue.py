"""Azure Storage Queue access: connection settings, the message encoding, the message handle of
a delivery, poison-message envelopes, and helpers that create and delete the queues.

Messages are UTF-8 text, base64-encoded, which is what the Azure Functions queue trigger
expects by default (``host.json`` ``extensions.queues.messageEncoding: base64``) and what the
SDKs' ``TextBase64EncodePolicy``/``BinaryBase64EncodePolicy`` write. The adapter decodes itself
instead of installing a decode policy: a message that is not valid base64 (written by some other
producer) is kept as its raw text and dead-lettered as an invalid job, instead of making the
whole receive fail on every poll.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Final

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.queue.aio import QueueClient

__all__ = [
    "MAX_DELAY_SECONDS",
    "MAX_MESSAGE_CHARS",
    "AzureMessage",
    "StorageConfig",
    "create_queues",
    "decode_content",
    "delete_queues",
    "encode_content",
    "poison_envelope",
    "poison_queue_name",
    "read_poison",
    "visibility_seconds",
]

MAX_DELAY_SECONDS: Final = 7 * 24 * 3600
"""Longest visibility timeout of ``send_message``/``update_message`` (7 days)."""
MAX_MESSAGE_CHARS: Final = 65_536
"""Largest message content (after base64) Azure Storage Queues accept (64 KiB)."""


def poison_queue_name(queue: str) -> str:
    """The poison queue of ``queue`` (the Azure Functions convention: ``<queue>-poison``)."""
    return f"{queue}-poison"


@dataclass(frozen=True)
class StorageConfig:
    """Where the storage account is and how to authenticate: a ``connection_string``, or an
    ``account_url`` (``https://<account>.queue.core.windows.net``) with a ``credential`` (an
    account key, SAS token, ``AzureNamedKeyCredential`` or async token credential; None uses
    ``azure.identity.aio.DefaultAzureCredential``)."""

    connection_string: str | None = None
    account_url: str | None = None
    credential: Any = None

    def queue_client(self, name: str) -> QueueClient:
        """A client of queue ``name`` (no encode/decode policy: see the module docstring)."""
        if self.connection_string:
            return QueueClient.from_connection_string(self.connection_string, name)
        if not self.account_url:
            raise ValueError("StorageConfig needs a connection_string or an account_url")
        cred = self.credential
        if cred is None:
            from azure.identity.aio import DefaultAzureCredential

            cred = DefaultAzureCredential()
        return QueueClient(self.account_url, name, credential=cred)


def encode_content(text: str) -> str:
    """Message content for ``text``: its UTF-8 bytes in base64."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def decode_content(content: str | bytes | None) -> str:
    """The text of a message: base64-decoded UTF-8, or the content as it is when it is not
    base64 of UTF-8 text (the engine then dead-letters it as an invalid job)."""
    if content is None:
        return ""
    raw = content.encode("utf-8") if isinstance(content, str) else content
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return raw.decode("utf-8", "replace")


def visibility_seconds(delay: float, cap: int = MAX_DELAY_SECONDS) -> int:
    """A visibility timeout for ``delay``: whole seconds, rounded UP (never early), at most
    ``cap`` (7 days)."""
    if delay <= 0:
        return 0
    return int(min(math.ceil(delay - 1e-9), cap))


@dataclass(eq=False)
class AzureMessage:
    """The queue side of a :class:`~flowcraft.distributed.Delivery`: the message id and its
    CURRENT pop receipt (every ``update_message`` returns a new one; ``lock`` serializes the
    operations on it, so a heartbeat finishing late never uses a receipt that an ack or a
    redelivery already replaced or consumed)."""

    id: str
    pop_receipt: str | None
    dequeue_count: int = 1
    content: str = ""
    """The raw content as stored (base64), for the poison queue."""
    host: bool = False
    """True for a message delivered by the Azure Functions host: the host deletes it when the
    function returns, retries it when the function raises, and renews its visibility; the
    adapter never touches it."""
    acked: bool = False
    """Set by ack (deleted, or to be deleted by the Functions host)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def poison_envelope(body: str, reason: str, message_id: str, dequeue_count: int, queue: str) -> str:
    """The poison-queue message for a dead letter: JSON ``{"flowcraftPoison": 1, "reason",
    "queue", "messageId", "dequeueCount", "body"}`` (base64-encoded). A body too large to fit
    the 64 KiB message limit is cut (``truncated`` holds its size in bytes)."""
    env: dict[str, Any] = {
        "flowcraftPoison": 1,
        "reason": reason[:4000] or "invalid",
        "queue": queue,
        "messageId": message_id,
        "dequeueCount": dequeue_count,
        "body": body,
    }
    text = json.dumps(env, ensure_ascii=False)
    room = MAX_MESSAGE_CHARS // 4 * 3 - 512
    if len(text.encode("utf-8")) > room:
        raw = body.encode("utf-8")
        env["truncated"] = len(raw)
        keep = room
        while len(text.encode("utf-8")) > room:
            keep //= 2
            env["body"] = raw[:keep].decode("utf-8", "ignore")
            text = json.dumps(env, ensure_ascii=False)
    return encode_content(text)


def read_poison(content: str) -> tuple[str, str]:
    """``(body, reason)`` of a poison-queue message: a Flowcraft envelope, or a message the
    Functions host moved there as it was (reason ``moved by the host``)."""
    text = decode_content(content)
    with contextlib.suppress(ValueError):
        env = json.loads(text)
        if isinstance(env, dict) and env.get("flowcraftPoison") == 1:
            return str(env.get("body", "")), str(env.get("reason", ""))
    return text, "moved by the host (maxDequeueCount)"


async def create_queues(storage: StorageConfig, name: str, *, poison: bool = True) -> None:
    """Create the job queue ``name`` and, with ``poison``, ``<name>-poison`` (existing queues
    are kept). Queue names: 3-63 lowercase letters, digits and single dashes."""
    for q in (name, poison_queue_name(name)) if poison else (name,):
        async with storage.queue_client(q) as client:
            with contextlib.suppress(ResourceExistsError):
                await client.create_queue()


async def delete_queues(storage: StorageConfig, *names: str) -> None:
    """Delete queues (missing ones are ignored)."""
    for q in names:
        async with storage.queue_client(q) as client:
            with contextlib.suppress(ResourceNotFoundError):
                await client.delete_queue()
