"""Invalid jobs and garbage on the queue are dead-lettered; workers keep working."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, ClassVar

import pytest

from ....distributed.contracts import JobPayload
from .. import scenarios as sc
from ..base import SuiteBase


class DeadLetterTests(SuiteBase):
    """Invalid jobs and unparseable messages."""

    dead_letter_wait_seconds: ClassVar[float] = 5.0
    """How long a dead letter may take to show in the ``dead_letters`` hook (a backend whose
    every read of its dead-letter store is slow, such as a fresh consumer on a Kafka topic,
    sets more)."""

    # == 18. invalid jobs =======================================================================

    async def _assert_dead_lettered(self, backend: Any, needle: str) -> None:
        """With ``Capabilities.dead_letter``: some dead letter mentions ``needle`` within
        :attr:`dead_letter_wait_seconds` (the ``dead_letters`` hook must be implemented
        then)."""
        if not self.adapter_class.capabilities.dead_letter:
            return
        if await self.dead_letters(backend) is None:
            self.missing_hook(
                "dead_letters",
                f"{self.adapter_class.__name__} declares Capabilities.dead_letter but the suite "
                "cannot read its dead letters",
                "dead_letters(backend) -> list of dead-lettered bodies/reasons as text",
            )

        async def found() -> bool:
            return any(needle in x for x in (await self.dead_letters(backend) or []))

        limit = time.monotonic() + self.dead_letter_wait_seconds
        while not await found():
            assert time.monotonic() < limit, (
                f"no dead letter mentions {needle!r} within {self.dead_letter_wait_seconds} s"
            )
            await asyncio.sleep(0.01)

    async def test_job_for_unknown_run_is_dead_lettered(self, backend: Any) -> None:
        """A job for a run that does not exist is dead-lettered; workers keep working."""
        s = sc.linear()
        ghost = f"no-such-run-{uuid.uuid4().hex[:8]}"
        async with self.cluster(backend, s) as c:
            await c.client.enqueue_job(JobPayload(run_id=ghost, blueprint_id="linear", node_id="a"))
            await self._assert_dead_lettered(backend, ghost)
            res = await c.run("linear")
        assert res.status == "completed"
        assert s.probe.counts() == {"a": 1, "b": 1, "c": 1}

    async def test_job_naming_another_blueprint_is_dead_lettered(self, backend: Any) -> None:
        """A job whose blueprint id is not its run's is invalid: dead-lettered, the run is
        untouched and still completes."""
        s = sc.hitl()
        async with self.cluster(backend, s) as c:
            rid = await c.start_run("hitl")
            await c.wait_until(rid, lambda st: st.status == "awaiting", "awaiting")
            await c.client.enqueue_job(
                JobPayload(run_id=rid, blueprint_id="no-such-blueprint", node_id="s")
            )
            await self._assert_dead_lettered(backend, "no-such-blueprint")
            await c.hold(0.1)
            st = await c.status(rid)
            assert st.status == "awaiting"
            assert st.errors == []
            await c.client.resume(rid, "review", output="ok", action="approve")
            res = await c.result(rid)
        assert res.status == "completed"
        assert s.probe.counts() == {"s": 1, "approve": 1}

    async def test_unparseable_message_is_dead_lettered(self, backend: Any) -> None:
        """Garbage on the queue is dead-lettered with a reason; workers keep working."""
        s = sc.linear()
        async with self.cluster(backend, s) as c:
            if not await self.enqueue_raw(backend, "{not json"):
                pytest.skip(
                    f"{type(self).__name__} does not implement the hook enqueue_raw(backend, "
                    "body) (put raw text on the queue; return True)"
                )
            assert await self.enqueue_raw(backend, '{"runId": "", "nodeId": 7}')
            await self._assert_dead_lettered(backend, "{not json")
            await self._assert_dead_lettered(backend, '"nodeId": 7')
            res = await c.run("linear")
        assert res.status == "completed"
        assert s.probe.counts() == {"a": 1, "b": 1, "c": 1}
