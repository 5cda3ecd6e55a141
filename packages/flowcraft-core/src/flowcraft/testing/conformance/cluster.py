"""A cluster of in-process workers plus a client, for conformance scenarios.

Workers are adapters whose ``start()`` runs as an asyncio task; the client is one more adapter
on the same backend that is never started (it only calls ``start_run``/``result``/``resume``/
``cancel``/``reconcile``). Every scenario runs under a hard timeout, so a hang fails the test
with a clear message instead of blocking CI.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

from ...distributed.adapter import BaseDistributedAdapter, RunStatus
from ...runtime import WorkflowResult
from .faults import FaultInjector

log = logging.getLogger("flowcraft.conformance")

MakeWorker = Callable[..., Awaitable[BaseDistributedAdapter]]
"""``make_worker(runtime_options, **adapter_kwargs)``: a new adapter on the shared backend."""


class ScenarioTimeout(AssertionError):
    """A scenario exceeded its hard timeout (a hang is a failure, never a blocked CI job)."""


class Cluster:
    """``workers`` started adapters and one client adapter sharing a backend.

    Use as ``async with Cluster(...) as c:``; leaving the block stops every worker
    (``await adapter.stop()``, then their ``start()`` tasks are gathered) and cancels delayed
    fault enqueues. The whole block runs under ``timeout`` seconds. ``client_options`` are
    runtime options merged over ``runtime_options`` for the client only; ``configure`` is
    applied to every adapter created (client and workers), e.g. to patch a hook.
    """

    def __init__(
        self,
        make_worker: MakeWorker,
        runtime_options: Mapping[str, Any],
        *,
        workers: int = 2,
        faults: FaultInjector | None = None,
        timeout: float = 20.0,
        shutdown_timeout: float = 5.0,
        adapter_kwargs: Mapping[str, Any] | None = None,
        client_options: Mapping[str, Any] | None = None,
        configure: Callable[[BaseDistributedAdapter], None] | None = None,
    ) -> None:
        self._make = make_worker
        self.runtime_options = dict(runtime_options)
        self.initial_workers = workers
        self.faults = faults
        self.timeout = timeout
        self.shutdown_timeout = shutdown_timeout
        self.adapter_kwargs = dict(adapter_kwargs or {})
        self._client_options = dict(client_options) if client_options is not None else None
        self._configure = configure
        self.workers: list[BaseDistributedAdapter] = []
        self.tasks: list[asyncio.Task[None]] = []
        self._client: BaseDistributedAdapter | None = None
        self._deadline: asyncio.Timeout | None = None
        self.published: dict[str, list[str]] = {}
        """Run id -> statuses passed to ``publish_final_result`` by any adapter, in order."""

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Cluster:
        self._deadline = asyncio.timeout(self.timeout)
        await self._deadline.__aenter__()
        try:
            opts = self._client_options if self._client_options is not None else {}
            self._client = await self._new(
                {**self.runtime_options, **opts}, {"worker_id": "client"}
            )
            for _ in range(self.initial_workers):
                await self.add_worker()
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stop_error: BaseException | None = None
        try:
            await self.stop()
        except BaseException as e:  # also a CancelledError from the deadline firing here
            stop_error = e
            if exc is None:
                exc_type, exc, tb = type(e), e, e.__traceback__
        deadline, self._deadline = self._deadline, None
        if deadline is not None:
            try:
                await deadline.__aexit__(exc_type, exc, tb)
            except TimeoutError:
                raise ScenarioTimeout(
                    f"scenario did not finish within its hard timeout of {self.timeout} s"
                ) from exc
        if stop_error is not None:
            raise stop_error

    async def _new(
        self, runtime_options: Mapping[str, Any], extra: Mapping[str, Any]
    ) -> BaseDistributedAdapter:
        kwargs = {**self.adapter_kwargs, **extra}
        adapter = await self._make(dict(runtime_options), **kwargs)
        if self._configure is not None:
            self._configure(adapter)
        original = adapter.publish_final_result

        async def publish(run_id: str, result: Mapping[str, Any]) -> None:
            self.published.setdefault(run_id, []).append(str(result.get("status")))
            await original(run_id, result)

        adapter.publish_final_result = publish  # type: ignore[method-assign]
        if self.faults is not None:
            self.faults.install(adapter)
        return adapter

    async def add_worker(
        self, runtime_options: Mapping[str, Any] | None = None, **adapter_kwargs: Any
    ) -> BaseDistributedAdapter:
        """Create and start one more worker (``runtime_options`` default: the cluster's)."""
        opts = self.runtime_options if runtime_options is None else runtime_options
        kw = {"worker_id": f"worker-{len(self.workers) + 1}", **adapter_kwargs}
        w = await self._new(opts, kw)
        self.workers.append(w)
        self.tasks.append(asyncio.create_task(w.start(), name=f"conformance {kw['worker_id']}"))
        return w

    async def stop(self) -> None:
        """Stop every worker and wait for its ``start()`` task (bounded; then cancelled)."""
        for w in self.workers:
            try:
                await w.stop()
            except Exception:
                log.exception("stopping worker %s failed", w.worker_id)
        tasks, self.tasks = self.tasks, []
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    log.error("worker task ended with %r", t.exception())
        if self.faults is not None:
            await self.faults.aclose()

    # -- client API ---------------------------------------------------------------------------

    @property
    def client(self) -> BaseDistributedAdapter:
        """The client adapter (never started)."""
        assert self._client is not None, "use the cluster inside 'async with'"
        return self._client

    async def start_run(
        self, blueprint_id: str, initial: Mapping[str, Any] | None = None, **kw: Any
    ) -> str:
        """``client.start_run``."""
        return await self.client.start_run(blueprint_id, initial, **kw)

    async def result(self, run_id: str, timeout: float | None = None) -> WorkflowResult:
        """``client.result`` (waits until the run is final)."""
        return await self.client.result(run_id, timeout=timeout or self.timeout)

    async def run(
        self, blueprint_id: str, initial: Mapping[str, Any] | None = None, **kw: Any
    ) -> WorkflowResult:
        """Start a run and wait for its final result."""
        return await self.result(await self.start_run(blueprint_id, initial, **kw))

    async def status(self, run_id: str) -> RunStatus:
        """``client.status``."""
        return await self.client.status(run_id)

    async def wait_until(
        self,
        run_id: str,
        predicate: Callable[[RunStatus], bool],
        what: str,
        timeout: float | None = None,
    ) -> RunStatus:
        """Poll the run's status until ``predicate`` holds; AssertionError naming ``what``."""
        limit = time.monotonic() + (timeout or self.timeout)
        while True:
            st = await self.status(run_id)
            if predicate(st):
                return st
            if time.monotonic() > limit:
                raise AssertionError(
                    f"run {run_id!r} never reached: {what}; last status {st.status!r}, "
                    f"nodes {st.node_statuses}"
                )
            await asyncio.sleep(0.01)

    async def hold(self, seconds: float) -> None:
        """Let the workers run for ``seconds`` (used to show that nothing more happens)."""
        await asyncio.sleep(seconds)


__all__ = ["Cluster", "MakeWorker", "ScenarioTimeout"]
