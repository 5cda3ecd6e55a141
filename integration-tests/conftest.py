"""Shared fixtures of the integration tests: backing services from :mod:`services`."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from services import require_service


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a Redis 7 server (env URL, testcontainers or a throwaway local server)."""
    return require_service("redis").url


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """URL of a RabbitMQ broker (env URL, testcontainers or a throwaway local node)."""
    return require_service("rabbitmq").url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a PostgreSQL server (env URL, testcontainers or a throwaway local cluster)."""
    return require_service("postgres").url


@pytest.fixture
def unique_prefix() -> Iterator[str]:
    """A key/queue prefix no other test (or test run) uses."""
    yield f"fct{uuid.uuid4().hex[:10]}"
