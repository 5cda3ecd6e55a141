"""An idempotent Kafka producer awaited from asyncio.

``confluent_kafka.Producer.produce`` only queues a message; the broker's acknowledgement
arrives as a delivery report, served by ``poll()``. :class:`AsyncProducer` runs ``poll`` in one
daemon thread and resolves an asyncio future per message, so ``await send(...)`` returns once
the broker has the message (``acks=all``) and raises if it could not be written. Idempotence
(``enable.idempotence``) keeps librdkafka's own retries from writing a message twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 1,
}
"""Producer settings every adapter uses unless the caller overrides them."""


class AsyncProducer:
    """``await send(topic, value, key=..., headers=...)`` on a confluent-kafka ``Producer``."""

    def __init__(self, conf: Mapping[str, Any]) -> None:
        self._producer = Producer({**PRODUCER_DEFAULTS, **dict(conf)})
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="flowcraft-kafka-producer")
        self._thread.daemon = True
        self._thread.start()
        self.sent = 0
        """Messages acknowledged by the broker (for benchmarks)."""

    def _serve(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Produce one message and wait for the broker's acknowledgement."""
        if self._closed.is_set():
            raise RuntimeError("producer closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def done(err: KafkaError | None, msg: Message) -> None:
            loop.call_soon_threadsafe(_resolve, fut, err)

        while True:
            try:
                self._producer.produce(
                    topic, value, key, headers=list(headers or ()), on_delivery=done
                )
                break
            except BufferError:  # librdkafka's local queue is full: let it drain
                await asyncio.sleep(0.01)
        await fut
        self.sent += 1

    async def aclose(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout`` s), then stop the poll thread."""
        if self._closed.is_set():
            return
        await asyncio.to_thread(self._producer.flush, timeout)
        self._closed.set()
        await asyncio.to_thread(self._thread.join, 1.0)


def _resolve(fut: asyncio.Future[None], err: KafkaError | None) -> None:
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(KafkaException(err))


__all__ = ["PRODUCER_DEFAULTS", "AsyncProducer"]
