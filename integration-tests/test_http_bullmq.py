"""The HTTP front door over real HTTP on a queue backend: BullMQ + Redis. The tests are core's
(``packages/flowcraft-core/tests/test_http.py``), run here with a BullMQ worker and client."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "packages" / "flowcraft-core" / "tests"))

from flowcraft.http import create_app
from flowcraft_bullmq import BullMQAdapter
from test_http import (  # the shared scenarios, collected here with this module's `front`
    OPTIONS,
    SECRET,
    TOKEN,
    serving,
    test_run_api_refuses_requests_without_the_token,
    test_run_api_start_status_resume_result,
    test_webhook_deliveries_over_http,
    test_webhook_timeout_runs_the_fallback,
)

__all__ = [
    "test_run_api_refuses_requests_without_the_token",
    "test_run_api_start_status_resume_result",
    "test_webhook_deliveries_over_http",
    "test_webhook_timeout_runs_the_fallback",
]


@pytest.fixture
async def front(
    redis_url: str, unique_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, Any]]:
    """A BullMQ worker and the front door on its own client (fresh key prefix)."""
    monkeypatch.setenv("FC_TEST_HOOK_SECRET", SECRET)

    def make() -> BullMQAdapter:
        return BullMQAdapter(
            redis_url, prefix=unique_prefix, runtime_options=OPTIONS, lease_seconds=2.0
        )

    worker, client = make(), make()
    task = asyncio.create_task(worker.start())
    try:
        async with serving(create_app(client, token=TOKEN, max_body=1000)) as url:
            yield url, client
    finally:
        await worker.stop()
        await task
        await worker.aclose()
        await client.aclose()
