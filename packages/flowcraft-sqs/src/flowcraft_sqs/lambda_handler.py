"""An AWS Lambda entry point for SQS event source mappings.

::

    # handler.py (the Lambda function's module)
    from flowcraft_sqs import SqsAdapter, SqsLambdaHandler

    def make_adapter() -> SqsAdapter:
        return SqsAdapter(
            queue=os.environ["FLOWCRAFT_QUEUE_URL"],
            table=os.environ["FLOWCRAFT_TABLE"],
            dead_letter_queue=os.environ.get("FLOWCRAFT_DLQ_URL"),
            runtime_options={"registry": REGISTRY, "blueprints": BLUEPRINTS},
        )

    lambda_handler = SqsLambdaHandler(make_adapter)

Configure the event source mapping with ``FunctionResponseTypes: ["ReportBatchItemFailures"]``.
Each record is one job, handled exactly as a polling worker handles a message
(:meth:`SqsAdapter.process_delivery <flowcraft_sqs.SqsAdapter.process_delivery>`: the engine
decides, the adapter settles; records of one batch run concurrently), except that the adapter
does not delete a record itself: the handler returns ``{"batchItemFailures": [...]}`` naming
only the records that were not acked, and the event source mapping deletes the others:

* handled (including jobs dropped as duplicates, and jobs the engine asked to retry later:
  those were re-enqueued with their delay): success, the record is deleted;
* poison (unparseable, unknown run or node, another blueprint, or delivered more than the
  adapter's ``delivery_policy.max_deliveries`` times): sent to the dead-letter queue (when
  configured) with its reason and reported as success;
* a failed non-final attempt with ``retry_in_process=False``: the record's visibility is set to
  the backoff delay and it is reported as failed, so the same message comes back with a higher
  ``ApproximateReceiveCount`` (its attempt number);
* any other error (the store is unreachable, ...): reported as failed, its visibility set to
  the policy's redelivery backoff.

The function's timeout must be shorter than the queue's visibility timeout (AWS recommends the
visibility timeout be six times the function timeout). Give the adapter the queue's visibility
timeout (``visibility_timeout=``): while an invocation runs, records that outlive half of it are
extended (the engine's keeper and node heartbeat, through the adapter's ``extend_deliveries``),
so a slow batch is not delivered a second time meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from .adapter import SqsAdapter, SqsMessage, message_delivery

log = logging.getLogger("flowcraft.sqs.lambda")

__all__ = ["SqsLambdaHandler"]


class SqsLambdaHandler:
    """A Lambda handler (``handler(event, context)``) over an :class:`SqsAdapter`.

    ``adapter`` is an adapter or a factory called once, inside the handler's event loop, on the
    first invocation (so the AWS clients are created in the loop that uses them). The handler
    keeps one event loop for the life of the Lambda execution environment; warm invocations
    reuse it and the adapter's connections.
    """

    def __init__(self, adapter: SqsAdapter | Callable[[], SqsAdapter]) -> None:
        self._factory = (
            adapter if callable(adapter) and not isinstance(adapter, SqsAdapter) else None
        )
        self._adapter: SqsAdapter | None = adapter if isinstance(adapter, SqsAdapter) else None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def adapter(self) -> SqsAdapter:
        """The adapter (created by the factory on first use)."""
        if self._adapter is None:
            assert self._factory is not None
            self._adapter = self._factory()
        return self._adapter

    async def handle_record(self, record: Mapping[str, Any]) -> bool:
        """Handle one SQS record; True when it may be deleted (a success for Lambda)."""
        d = message_delivery(record, lambda_record=True)
        await self.adapter.process_delivery(d)
        assert isinstance(d.message, SqsMessage)
        return d.message.acked

    async def handle_event(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Handle a Lambda SQS event; returns the partial batch response."""
        records = list(event.get("Records") or [])
        results = await asyncio.gather(
            *(self.handle_record(r) for r in records), return_exceptions=True
        )
        failures = []
        for record, res in zip(records, results, strict=True):
            if res is True:
                continue
            if isinstance(res, BaseException):
                log.error("record %s failed: %r", record.get("messageId"), res)
            failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}

    def __call__(self, event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
        """The synchronous Lambda entry point."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(self.handle_event(event))

    def close(self) -> None:
        """Close the adapter's clients and the event loop (tests; Lambda never calls it)."""
        if self._loop is None:
            return
        if self._adapter is not None:
            self._loop.run_until_complete(self._adapter.aclose())
        self._loop.close()
        self._loop = None
