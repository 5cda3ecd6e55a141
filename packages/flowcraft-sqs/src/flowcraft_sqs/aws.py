"""AWS clients for the SQS adapter: one SQS and one DynamoDB client per adapter, created lazily
with aiobotocore, with every API call counted (for benchmarks and cost estimates).

aiobotocore, not boto3: boto3 is synchronous (urllib3), so every call would block the event
loop, including 20-second long polls, the heartbeats that extend leases and visibility
timeouts, and the commits of other jobs. Wrapping boto3 in threads works but costs a thread per
in-flight call and cannot cancel a long poll on shutdown. aiobotocore is the same botocore
(same API models, retries, credential chain) over aiohttp, natively async and cancellable.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

__all__ = ["ApiStats", "AwsClients", "AwsConfig", "error_code"]


@dataclass
class ApiStats:
    """Counters shared by every client (and store) that is given the same object."""

    calls: Counter[str] = field(default_factory=Counter)
    """API calls by ``service.operation`` (e.g. ``dynamodb.transact_write_items``)."""
    commits: int = 0
    """Successful run-store commits."""
    bytes_written: int = 0
    """Bytes of keys and JSON values written by those commits."""

    @property
    def total_calls(self) -> int:
        """All API calls so far."""
        return sum(self.calls.values())

    def snapshot(self) -> dict[str, int]:
        """A copy of :attr:`calls`."""
        return dict(self.calls)


@dataclass(frozen=True)
class AwsConfig:
    """Where and how to reach AWS. Unset credentials use the default chain (environment,
    shared config, the Lambda/ECS/EC2 role); ``endpoint_url`` points at an emulator such as
    ``moto_server``."""

    region_name: str | None = None
    endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    max_pool_connections: int = 64
    read_timeout: float = 70.0
    """Must exceed the long-poll wait (at most 20 s)."""
    max_attempts: int = 5
    """botocore's own retries (``standard`` mode) of throttled and transient errors."""

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``session.create_client``."""
        kw: dict[str, Any] = {
            "config": AioConfig(
                max_pool_connections=self.max_pool_connections,
                read_timeout=self.read_timeout,
                retries={"mode": "standard", "max_attempts": self.max_attempts},
            )
        }
        for name in (
            "region_name",
            "endpoint_url",
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
        ):
            value = getattr(self, name)
            if value is not None:
                kw[name] = value
        return kw


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ``ClientError`` (None for anything else)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code"))
    return None


class AwsClients:
    """An SQS and a DynamoDB client (aiobotocore), opened on first use, closed by
    :meth:`aclose`. Calls go through :meth:`sqs` / :meth:`ddb`, which count them in
    :attr:`stats`."""

    def __init__(self, config: AwsConfig | None = None, stats: ApiStats | None = None) -> None:
        self.config = config or AwsConfig()
        self.stats = stats if stats is not None else ApiStats()
        self._stack: contextlib.AsyncExitStack | None = None
        self._clients: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def client(self, service: str) -> Any:
        """The aiobotocore client of ``service`` (``sqs`` or ``dynamodb``)."""
        c = self._clients.get(service)
        if c is not None:
            return c
        async with self._lock:
            c = self._clients.get(service)
            if c is None:
                if self._stack is None:
                    self._stack = contextlib.AsyncExitStack()
                session = get_session()
                c = await self._stack.enter_async_context(
                    session.create_client(service, **self.config.client_kwargs())
                )
                self._clients[service] = c
        return c

    async def call(self, service: str, operation: str, **kwargs: Any) -> dict[str, Any]:
        """``client.<operation>(**kwargs)``, counted."""
        c = await self.client(service)
        self.stats.calls[f"{service}.{operation}"] += 1
        result: dict[str, Any] = await getattr(c, operation)(**kwargs)
        return result

    async def sqs(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """An SQS call (snake_case operation name, e.g. ``send_message``)."""
        return await self.call("sqs", operation, **kwargs)

    async def ddb(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """A DynamoDB call (snake_case operation name, e.g. ``transact_write_items``)."""
        return await self.call("dynamodb", operation, **kwargs)

    async def aclose(self) -> None:
        """Close both clients (their HTTP sessions)."""
        stack, self._stack = self._stack, None
        self._clients = {}
        if stack is not None:
            await stack.aclose()
