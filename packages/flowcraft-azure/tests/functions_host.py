"""An emulation of the Azure Functions host's queue trigger, for the conformance suite's second
run: workers whose every received message goes through
:class:`flowcraft_azure.QueueTriggerHandler`, the way the Functions host invokes a queue-triggered
function.

What the host does, and this emulation with it (Azure WebJobs ``QueueListener``):

* it receives messages (``visibility_timeout`` = the adapter's) and base64-decodes the body
  before the function sees it (``messageEncoding: base64``);
* while a function runs, it renews the message's visibility (its own pop receipt);
* when the function returns, it deletes the message; when it raises, it makes the message
  visible again after ``host.json`` ``visibilityTimeout`` (default 0); once a failing message
  reached ``maxDequeueCount`` it moves the content as is to ``<queue>-poison``;
* a worker that dies (``SimulatedCrash`` here) does nothing more: the message returns when its
  visibility ends.

``MAX_DEQUEUE_COUNT`` is above the engine's delivery cap (20), as the package README tells
deployers to configure it, so the engine's own dead letter (with its reason) comes first.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from flowcraft.distributed import JobHandler
from flowcraft.distributed.contracts import SimulatedCrash
from flowcraft_azure import AzureAdapter, QueueTriggerHandler

log = logging.getLogger("flowcraft.azure.tests.host")

MAX_DEQUEUE_COUNT = 30
HOST_VISIBILITY_TIMEOUT = 0


@dataclass
class HostQueueMessage:
    """What ``azure.functions.QueueMessage`` offers the function (duck-typed)."""

    id: str
    body: bytes
    dequeue_count: int
    pop_receipt: str | None = None

    def get_body(self) -> bytes:
        """The decoded body."""
        return self.body


@dataclass(eq=False)
class _Held:
    id: str
    pop_receipt: str
    content: str
    dequeue_count: int
    renewed_at: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    done: bool = False


class FunctionsHostAdapter(AzureAdapter):
    """An :class:`AzureAdapter` whose worker loop is the emulated Functions host invoking a
    :class:`QueueTriggerHandler` per message (up to ``concurrency`` at once)."""

    async def _renew(self, held: dict[int, _Held]) -> None:
        period = max(self.visibility_timeout / 4, 0.2)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for h in list(held.values()):
                if now - h.renewed_at < self.visibility_timeout / 3:
                    continue
                async with h.lock:
                    if h.done:
                        continue
                    h.renewed_at = now
                    with contextlib.suppress(Exception):
                        r = await self._client(self.queue).update_message(
                            h.id, h.pop_receipt, visibility_timeout=self.visibility_timeout
                        )
                        h.pop_receipt = r.pop_receipt

    async def _invoke(self, lam: QueueTriggerHandler, h: _Held, held: dict[int, _Held]) -> None:
        q = self._client(self.queue)
        try:
            body = base64.b64decode(h.content, validate=True)
        except (binascii.Error, ValueError):
            body = h.content.encode()
        msg = HostQueueMessage(h.id, body, h.dequeue_count, h.pop_receipt)
        held[id(h)] = h
        outcome = "crash"
        try:
            await lam(msg)
            outcome = "ok"
        except SimulatedCrash:
            outcome = "crash"
        except asyncio.CancelledError:
            outcome = "failed"
            raise
        except Exception as exc:
            log.info("function failed for %s: %r", h.id, exc)
            outcome = "failed"
        finally:
            held.pop(id(h), None)
            async with h.lock:
                h.done = True
                with contextlib.suppress(Exception):
                    if outcome == "ok":
                        await q.delete_message(h.id, h.pop_receipt)
                    elif outcome == "failed" and h.dequeue_count >= MAX_DEQUEUE_COUNT:
                        await self._client(self.poison_queue).send_message(h.content)
                        await q.delete_message(h.id, h.pop_receipt)
                    elif outcome == "failed":
                        await q.update_message(
                            h.id, h.pop_receipt, visibility_timeout=HOST_VISIBILITY_TIMEOUT
                        )

    async def process_jobs(self, handler: JobHandler) -> None:
        """Receive messages and invoke the handler on each until :meth:`stop`."""
        lam = QueueTriggerHandler(self)
        q = self._client(self.queue)
        free = asyncio.Semaphore(self.concurrency)
        held: dict[int, _Held] = {}
        tasks: set[asyncio.Task[Any]] = set()
        renew = asyncio.create_task(self._renew(held))
        pause = self.poll_interval[0]
        stop = self.stop_event()
        try:
            while not self.stopping:
                await free.acquire()
                slots = 1
                while slots < min(self.concurrency, 32) and not free.locked():
                    await free.acquire()
                    slots += 1
                try:
                    msgs = [
                        m
                        async for m in q.receive_messages(
                            messages_per_page=slots,
                            max_messages=slots,
                            visibility_timeout=self.visibility_timeout,
                        )
                    ]
                except Exception as exc:
                    log.warning("host receive failed: %s", exc)
                    msgs = []
                for _ in range(slots - len(msgs)):
                    free.release()
                if not msgs:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), pause)
                    pause = min(pause * 2, self.poll_interval[1])
                    continue
                pause = self.poll_interval[0]
                for m in msgs:
                    h = _Held(m.id, m.pop_receipt, str(m.content), int(m.dequeue_count or 1))
                    t = asyncio.create_task(self._invoke(lam, h, held))
                    tasks.add(t)

                    def done(t: asyncio.Task[Any]) -> None:
                        tasks.discard(t)
                        free.release()

                    t.add_done_callback(done)
            if tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
        except asyncio.CancelledError:
            for t in list(tasks):
                t.cancel()
            raise
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
