"""The HTTP client of the companion Worker: one ``httpx.AsyncClient``, the bearer secret on every
request, ``POST /v1/<route>`` with a JSON body, ``{"result": ...}`` or ``{"error": ...}`` back.

No retries here: a failed call raises, and the engine decides (a store outage during a job is a
redelivery with backoff, see ``flowcraft.distributed.delivery``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import httpx

__all__ = ["DEFAULT_TIMEOUT", "CloudflareError", "WorkerClient", "WorkerStats"]

DEFAULT_TIMEOUT: Final = 30.0
"""Seconds an HTTP request to the Worker may take."""


class CloudflareError(RuntimeError):
    """The Worker refused a request or failed: ``status`` is the HTTP status, the message is the
    Worker's ``error`` text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass
class WorkerStats:
    """What the clients sent: requests per route, commits and the bytes of their changes."""

    requests: Counter[str] = field(default_factory=Counter)
    commits: int = 0
    bytes_written: int = 0

    @property
    def total_requests(self) -> int:
        """Every request, all routes."""
        return sum(self.requests.values())


class WorkerClient:
    """Calls the companion Worker at ``url`` (``https://flowcraft.<account>.workers.dev``)
    with ``secret`` (the Worker's ``FLOWCRAFT_SECRET``). ``namespace`` (letters, digits, ``-``,
    ``_``; at most 64) keeps the runs, keys and queues of several deployments or test runs of
    one Worker apart. ``stats`` counts requests."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        namespace: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        stats: WorkerStats | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not secret:
            raise ValueError("the Worker's secret is required (FLOWCRAFT_SECRET)")
        self.url = url.rstrip("/")
        self.namespace = namespace
        self.stats = stats if stats is not None else WorkerStats()
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers={"authorization": f"Bearer {secret}", "x-flowcraft-namespace": namespace},
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    async def call(self, route: str, payload: dict[str, Any], *, repeatable: bool = True) -> Any:
        """``POST /v1/<route>`` with ``payload``; the ``result`` of the answer, or
        :class:`CloudflareError`. A ``repeatable`` call is sent once more when the connection
        closes before any answer (see below); pass ``False`` for one a repeat would apply
        twice (a counter's increment)."""
        self.stats.requests[route.split("/", 2)[-1] if route.startswith("queues/") else route] += 1
        try:
            r = await self._http.post(f"/v1/{route}", json=payload)
        except httpx.RemoteProtocolError:
            # A kept-alive connection the server closed as we reused it (the keep-alive
            # race): no answer came back, and almost always the request was never read.
            # Send once more on a fresh connection. The engine's calls tolerate a repeat of
            # one that did apply: commits carry the expected version (the repeat is refused
            # as a conflict and the engine re-reads), sends are at-least-once, what a lost
            # pull took comes back after its visibility timeout, acks and deletes are
            # idempotent, and a lease the repeat finds taken (by us) runs out.
            if not repeatable:
                raise
            r = await self._http.post(f"/v1/{route}", json=payload)
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200 or not isinstance(body, dict) or "result" not in body:
            err = body.get("error") if isinstance(body, dict) else None
            raise CloudflareError(r.status_code, str(err or r.text[:500]))
        return body["result"]

    async def queue(self, queue: str, action: str, payload: dict[str, Any]) -> Any:
        """``POST /v1/queues/<queue>/<action>``."""
        return await self.call(f"queues/{quote(queue, safe='')}/{action}", payload)

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()
