"""Shared helpers of the Cloudflare tests and benchmark: the companion Worker on workerd
(service ``cloudflare`` of :mod:`flowcraft.testing.services`: Miniflare's Node API on a free
127.0.0.1 port, started once per test session, stopped at exit and on SIGTERM) and a fresh
namespace per test (``X-Flowcraft-Namespace``), so tests never see each other's runs, keys or
queues on the shared Worker."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from flowcraft.testing import services
from flowcraft_cloudflare import CloudflareAdapter, WorkerClient, WorkerStats


def worker_service() -> tuple[str, str]:
    """``(url, secret)`` of the test Worker (a failure under CI when it cannot be started)."""
    svc = services.require_service("cloudflare")
    return svc.url, services.CLOUDFLARE_TEST_SECRET


@dataclass
class CloudflareResources:
    """One test's namespace on the shared Worker, and every client and adapter made on it."""

    url: str
    secret: str
    namespace: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:16]}")
    queue: str = "jobs"
    visibility_timeout: float = 1.0
    stats: WorkerStats = field(default_factory=WorkerStats)
    clients: list[WorkerClient] = field(default_factory=list)
    adapters: list[CloudflareAdapter] = field(default_factory=list)

    @property
    def commits(self) -> int:
        """Commits of every adapter of the test."""
        return self.stats.commits

    @property
    def bytes_written(self) -> int:
        """Bytes those commits sent."""
        return self.stats.bytes_written

    def client(self) -> WorkerClient:
        """A new HTTP client in the test's namespace (closed by :meth:`cleanup`)."""
        c = WorkerClient(self.url, self.secret, namespace=self.namespace, stats=self.stats)
        self.clients.append(c)
        return c

    def adapter(self, **kwargs: Any) -> CloudflareAdapter:
        """A worker/client adapter with a short visibility timeout (crashed jobs come back
        after a second)."""
        kw: dict[str, Any] = {
            "url": self.url,
            "secret": self.secret,
            "namespace": self.namespace,
            "queue": self.queue,
            "stats": self.stats,
            "visibility_timeout": self.visibility_timeout,
            "poll_interval": (0.005, 0.05),
            "concurrency": 8,
            **kwargs,
        }
        a = CloudflareAdapter(**kw)
        self.adapters.append(a)
        return a

    async def send_raw(self, body: str) -> None:
        """Put ``body`` on the test's queue as it is."""
        c = self.client()
        await c.queue(self.queue, "messages", {"body": body})

    async def cleanup(self) -> None:
        """Close every adapter and client; empty the test's queue."""
        for a in self.adapters:
            with contextlib.suppress(Exception):
                await a.aclose()
        with contextlib.suppress(Exception):
            await self.client().queue(self.queue, "purge", {})
        for c in self.clients:
            with contextlib.suppress(Exception):
                await c.aclose()


@contextlib.asynccontextmanager
async def resources(**kwargs: Any) -> AsyncIterator[CloudflareResources]:
    """Fresh resources for one test, cleaned up afterwards."""
    url, secret = worker_service()
    res = CloudflareResources(url, secret, **kwargs)
    try:
        yield res
    finally:
        await res.cleanup()
