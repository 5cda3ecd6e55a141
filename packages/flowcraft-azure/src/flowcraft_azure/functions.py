"""An Azure Functions entry point: a queue-trigger handler over an :class:`AzureAdapter`.

::

    # function_app.py (Python v2 programming model)
    import azure.functions as func
    from flowcraft_azure import AzureAdapter, CosmosConfig, QueueTriggerHandler, StorageConfig

    app = func.FunctionApp()
    handler = QueueTriggerHandler(lambda: AzureAdapter(
        queue="flowcraft",
        storage=StorageConfig(connection_string=os.environ["AzureWebJobsStorage"]),
        cosmos=CosmosConfig(os.environ["COSMOS_ENDPOINT"], key=os.environ.get("COSMOS_KEY")),
        runtime_options={"registry": REGISTRY, "blueprints": BLUEPRINTS},
    ))

    @app.queue_trigger(arg_name="msg", queue_name="flowcraft", connection="AzureWebJobsStorage")
    async def flowcraft_job(msg: func.QueueMessage) -> None:
        await handler(msg)

The handler depends on nothing of ``azure-functions``: it reads ``msg.get_body()`` (the host
has already base64-decoded it), ``msg.id``, ``msg.dequeue_count`` and, when present,
``msg.pop_receipt``. Each message is handled exactly as a polling worker handles one
(:meth:`AzureAdapter.process_delivery`: the engine decides, the adapter settles), except that
the message belongs to the Functions host, which deletes it when the function returns, makes it
visible again when the function raises (after ``host.json`` ``visibilityTimeout``), renews its
visibility while the function runs, and moves it to ``<queue>-poison`` after
``maxDequeueCount`` failed attempts:

* handled, a duplicate, a retry the engine re-enqueued with its delay: the function returns;
* dead-lettered by the engine (unparseable, invalid, delivered more than the adapter's
  ``delivery_policy.max_deliveries`` times): the handler puts it into ``<queue>-poison`` with
  the reason itself, then returns (so the host deletes it);
* to be redelivered (the store is unreachable, the worker is stopping): the handler raises
  :class:`RedeliveryRequested` and the host retries.

Set ``maxDequeueCount`` in ``host.json`` above the adapter's ``delivery_policy.max_deliveries``
(default 20), so the engine's dead letter, with its reason, comes before the host's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from .adapter import AzureAdapter, message_delivery
from .queue import AzureMessage

log = logging.getLogger("flowcraft.azure.functions")

__all__ = ["QueueMessageLike", "QueueTriggerHandler", "RedeliveryRequested"]


class QueueMessageLike(Protocol):
    """What the handler reads of ``azure.functions.QueueMessage``."""

    @property
    def id(self) -> str | None:
        """The message id."""
        ...

    @property
    def dequeue_count(self) -> int | None:
        """How many times the message was delivered, this time included."""
        ...

    def get_body(self) -> bytes:
        """The decoded message body."""
        ...


class RedeliveryRequested(RuntimeError):
    """Raised by the handler so the Functions host makes the message visible again (a store
    outage, a worker shutting down): the message was not handled."""


class QueueTriggerHandler:
    """``await handler(msg)`` in a queue-triggered function (see the module docstring).

    ``adapter`` is an adapter or a factory called once, on the first message, inside the
    function's event loop (so its clients belong to that loop); warm invocations reuse it.
    """

    def __init__(self, adapter: AzureAdapter | Callable[[], AzureAdapter]) -> None:
        self._adapter = adapter if isinstance(adapter, AzureAdapter) else None
        self._factory = None if isinstance(adapter, AzureAdapter) else adapter

    @property
    def adapter(self) -> AzureAdapter:
        """The adapter (created by the factory on first use)."""
        if self._adapter is None:
            assert self._factory is not None
            self._adapter = self._factory()
        return self._adapter

    async def __call__(self, msg: QueueMessageLike) -> None:
        """Handle one message: return when the host may delete it, raise when it should
        retry it."""
        body = msg.get_body()
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        d = message_delivery(
            str(msg.id or ""),
            getattr(msg, "pop_receipt", None),
            None,
            msg.dequeue_count,
            host=True,
            decoded=text,
        )
        try:
            await self.adapter.process_delivery(d)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the invocation itself is cancelled: let the cancellation propagate
            # The worker is stopping (the engine gave the job back): the host retries it.
            raise RedeliveryRequested(f"message {msg.id}: the worker is stopping") from None
        assert isinstance(d.message, AzureMessage)
        if not d.message.acked:
            raise RedeliveryRequested(f"message {msg.id} was not handled; the host retries it")

    async def aclose(self) -> None:
        """Close the adapter's clients (tests; the Functions host never calls it)."""
        if self._adapter is not None:
            await self._adapter.aclose()
