"""Open a distributed backend from a URL, for the CLI and for scripts.

``sqlite:PATH`` (or ``sqlite:///PATH``) is built in. Adapter packages add schemes through the
``flowcraft.backends`` entry-point group: the entry point's name is the URL scheme and its
object a callable ``factory(url, **adapter_kwargs) -> BaseDistributedAdapter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any

from ..blueprint import WorkflowBlueprint
from .adapter import BaseDistributedAdapter


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:`` URL."""
    rest = url[len("sqlite:") :]
    if rest.startswith("//"):
        rest = rest[2:]
    if not rest:
        raise ValueError(f"backend {url!r}: missing database path (sqlite:PATH)")
    return rest


def open_adapter(url: str, **adapter_kwargs: Any) -> BaseDistributedAdapter:
    """An adapter (worker or client) for the backend at ``url``."""
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        from .sqlite import SqliteAdapter

        return SqliteAdapter(sqlite_path(url), **adapter_kwargs)
    for ep in entry_points(group="flowcraft.backends"):
        if ep.name == scheme:
            factory = ep.load()
            adapter = factory(url, **adapter_kwargs)
            if not isinstance(adapter, BaseDistributedAdapter):
                raise TypeError(f"backend {scheme!r} factory returned {type(adapter).__name__}")
            return adapter
    known = ["sqlite", *sorted(ep.name for ep in entry_points(group="flowcraft.backends"))]
    raise ValueError(f"unknown backend {url!r}: known schemes are {', '.join(known)}")


async def run_worker(
    url: str,
    *,
    registry: Mapping[str, Any],
    blueprints: Iterable[WorkflowBlueprint],
    concurrency: int = 8,
    stop: asyncio.Event | None = None,
    **adapter_kwargs: Any,
) -> BaseDistributedAdapter:
    """Run one worker until SIGTERM/SIGINT (or ``stop`` is set); in-flight jobs finish first."""
    adapter = open_adapter(
        url,
        runtime_options={"registry": dict(registry), "blueprints": list(blueprints)},
        concurrency=concurrency,
        **adapter_kwargs,
    )
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    async def stopper() -> None:
        await stop.wait()
        await adapter.stop()

    watcher = asyncio.create_task(stopper())
    try:
        await adapter.start()
    finally:
        watcher.cancel()
        await adapter.aclose()
    return adapter
