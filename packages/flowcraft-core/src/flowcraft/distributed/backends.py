"""Open a distributed backend from a URL, for the CLI and for scripts.

``sqlite:PATH`` (or ``sqlite:///PATH``) and ``memory:NAME`` (one process only) are built in.
Adapter packages add schemes through the
``flowcraft.backends`` entry-point group: the entry point's name is the URL scheme and its
object a callable ``factory(url, **adapter_kwargs) -> BaseDistributedAdapter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..blueprint import WorkflowBlueprint
from .adapter import BaseDistributedAdapter

log = logging.getLogger("flowcraft.worker")


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:`` URL."""
    rest = url[len("sqlite:") :]
    if rest.startswith("//"):
        rest = rest[2:]
    if not rest:
        raise ValueError(f"backend {url!r}: missing database path (sqlite:PATH)")
    return rest


_brokers: dict[str, Any] = {}


def memory_broker(url: str) -> Any:
    """The process-wide in-memory broker named by ``memory:NAME`` (``memory:`` is the default
    one): workers and clients opened on the same URL in one process share it."""
    from .memory import MemoryBroker

    name = url.split(":", 1)[1].lstrip("/")
    if name not in _brokers:
        _brokers[name] = MemoryBroker()
    return _brokers[name]


PROVIDERS: dict[str, str] = {
    "redis": "flowcraft-bullmq",
    "rediss": "flowcraft-bullmq",
    "bullmq": "flowcraft-bullmq",
    "sqs": "flowcraft-sqs",
    "amqp": "flowcraft-rabbitmq",
    "amqps": "flowcraft-rabbitmq",
    "rabbitmq": "flowcraft-rabbitmq",
    "pubsub": "flowcraft-gcp",
    "azure": "flowcraft-azure",
    "kafka": "flowcraft-kafka",
    "cloudflare": "flowcraft-cloudflare",
    "cloudflare+http": "flowcraft-cloudflare",
    "cloudflare+https": "flowcraft-cloudflare",
}
"""URL scheme -> the distribution whose adapter provides it (for "pip install ..." hints)."""


class BackendUnavailable(Exception):
    """The backend at a URL cannot be reached (the message names the URL and the cause)."""


def open_adapter(url: str, **adapter_kwargs: Any) -> BaseDistributedAdapter:
    """An adapter (worker or client) for the backend at ``url``. ValueError naming the
    problem for an unknown scheme (with the package that provides it) or a scheme two
    installed adapters claim."""
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        from .memory import InMemoryAdapter

        return InMemoryAdapter(memory_broker(url), **adapter_kwargs)
    if scheme == "sqlite":
        from .sqlite import SqliteAdapter

        return SqliteAdapter(sqlite_path(url), **adapter_kwargs)
    eps = list(entry_points(group="flowcraft.backends"))
    claims = [ep for ep in eps if ep.name == scheme]
    if len({ep.value for ep in claims}) > 1:
        owners = ", ".join(sorted(ep.value for ep in claims))
        raise ValueError(
            f"backend scheme {scheme!r} is claimed by several installed adapters ({owners}); "
            "uninstall all but one"
        )
    if claims:
        factory = claims[0].load()
        adapter = factory(url, **adapter_kwargs)
        if not isinstance(adapter, BaseDistributedAdapter):
            raise TypeError(f"backend {scheme!r} factory returned {type(adapter).__name__}")
        return adapter
    known = ["memory", "sqlite", *sorted({ep.name for ep in eps})]
    hint = f" (pip install {PROVIDERS[scheme]})" if scheme in PROVIDERS else ""
    raise ValueError(
        f"unknown backend {url!r}: no installed adapter provides {scheme!r}{hint}; "
        f"installed schemes: {', '.join(known)}"
    )


async def check_backend(adapter: BaseDistributedAdapter, url: str, timeout: float = 5.0) -> None:
    """Fail fast when the backend is unreachable: read a run that does not exist (one round
    trip to the run store). :class:`BackendUnavailable` names the URL and the cause."""
    try:
        async with asyncio.timeout(timeout):
            await adapter.status("flowcraft-connectivity-check")
    except KeyError:
        return  # the store answered: no such run
    except TimeoutError:
        raise BackendUnavailable(f"backend {url} did not answer within {timeout:g} s") from None
    except Exception as exc:
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackendUnavailable(f"backend {url} is unreachable: {cause}") from exc


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for log and error lines)."""
    try:
        parts = urlsplit(url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
            return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        pass
    return url


async def run_worker(
    url: str,
    *,
    registry: Mapping[str, Any],
    blueprints: Iterable[WorkflowBlueprint],
    concurrency: int = 8,
    stop: asyncio.Event | None = None,
    grace: float = 30.0,
    check: bool = True,
    on_ready: Callable[[BaseDistributedAdapter], None] | None = None,
    **adapter_kwargs: Any,
) -> BaseDistributedAdapter:
    """Run one worker until SIGTERM/SIGINT (or ``stop`` is set).

    ``check``: first read the run store once and raise :class:`BackendUnavailable` (naming
    the URL and the cause) when it does not answer within 5 s, instead of retrying forever.
    On the first signal the worker stops taking jobs and gives the jobs in flight ``grace``
    seconds to finish (then they are cancelled: their messages come back to the queue); a
    second signal cancels them at once. ``on_ready`` is called once the backend answered."""
    adapter = open_adapter(
        url,
        runtime_options={"registry": dict(registry), "blueprints": list(blueprints)},
        concurrency=concurrency,
        **adapter_kwargs,
    )
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    hurry = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            hurry.set()
        stop.set()

    # asyncio's remove_signal_handler resets a signal to its default, not to the handler it
    # replaced: keep the caller's to put back (a worker inside a larger program or a test).
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    try:
        if check:
            checking = asyncio.create_task(check_backend(adapter, redact(url)))
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({checking, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not checking.done():  # a signal while the backend does not answer
                checking.cancel()
                return adapter
            checking.result()
        if on_ready is not None:
            on_ready(adapter)
        await _serve_until_stopped(adapter, stop, hurry, grace)
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                if loop.remove_signal_handler(sig) and handler is not None:
                    signal.signal(sig, handler)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(adapter.aclose(), 5.0)
    return adapter


async def _serve_until_stopped(
    adapter: BaseDistributedAdapter, stop: asyncio.Event, hurry: asyncio.Event, grace: float
) -> None:
    """``adapter.start()`` until ``stop``; then a draining stop bounded by ``grace`` seconds
    (or until ``hurry``), after which the jobs still running are cancelled."""
    task = asyncio.create_task(adapter.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not task.done():
        rushed = asyncio.create_task(hurry.wait())
        draining = asyncio.create_task(adapter.stop())
        await asyncio.wait({task, rushed}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        rushed.cancel()
        if not task.done():
            log.warning("jobs still running after the grace period: cancelling them")
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not draining.done():
            draining.cancel()
        await asyncio.gather(draining, return_exceptions=True)
        return
    await task  # start() ended by itself: its error (if any) is the caller's
