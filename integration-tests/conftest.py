"""The integration tests' own modules (``services``, ``sqs_support``, ``rabbitmq_support``,
``*_proc_app``) are imported by name from this directory. The service fixtures (``redis_url``,
``rabbitmq_url``, ``postgres_url``, ``moto_url``, ``unique_prefix``) and the run-view check
come from flowcraft-core's pytest plugin (:mod:`flowcraft.testing.plugin`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every integration test needs the backing services: mark it ``needs_services`` (the
    plugin's marker), so ``scripts/test`` runs it after the services are installed."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker("needs_services")
