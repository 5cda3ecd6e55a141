"""Checks for every test of this repository (packages and integration tests).

Workers verify their cached run views here: each incremental commit is compared with a full
diff and each view with a full re-read of the store (``FLOWCRAFT_VERIFY_VIEWS``); a test that
produced a mismatch fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("FLOWCRAFT_VERIFY_VIEWS", "1")


@pytest.fixture(autouse=True)
def _run_views_match_the_store() -> Iterator[None]:
    from flowcraft.distributed.adapter import BaseDistributedAdapter

    BaseDistributedAdapter.view_errors.clear()
    yield
    errors = list(BaseDistributedAdapter.view_errors)
    BaseDistributedAdapter.view_errors.clear()
    assert not errors, f"worker run views diverged from the store: {errors[:3]}"
