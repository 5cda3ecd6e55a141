"""Flowcraft's pytest plugin, registered by flowcraft-core as the ``pytest11`` entry point
``flowcraft`` (pytest loads it in every environment where flowcraft-core is installed; disable
it with ``-p no:flowcraft``). It needs pytest only.

It brings:

* **run-view verification**: ``FLOWCRAFT_VERIFY_VIEWS=1`` is set for the session unless the
  environment already sets it, so workers compare each incremental commit with a full diff and
  each cached run view with a full re-read of the store; an autouse fixture fails a test during
  which a mismatch was recorded (``BaseDistributedAdapter.view_errors``).
* **backing services** (:mod:`flowcraft.testing.services`), as session fixtures:
  ``redis_url``, ``rabbitmq_url``, ``postgres_url``, ``moto_url``, ``pubsub_host``,
  ``firestore_host``, ``azurite_connection_string`` and ``cosmos_url`` (an env URL
  ``FLOWCRAFT_TEST_<NAME>_URL``, else testcontainers, else a throwaway local server; a failure
  under ``CI``, a skip elsewhere; servers are stopped at exit and on SIGTERM), plus
  ``unique_prefix``, a fresh key/queue prefix per test.
* the marker ``needs_services``, added automatically to every test that uses one of the service
  fixtures (select with ``-m needs_services`` / ``-m "not needs_services"``).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator

import pytest

from . import services

VERIFY_VIEWS_ENV = "FLOWCRAFT_VERIFY_VIEWS"
"""The environment variable that turns run-view verification on in workers."""

SERVICE_FIXTURES = frozenset(
    {
        "redis_url",
        "rabbitmq_url",
        "postgres_url",
        "moto_url",
        "pubsub_host",
        "firestore_host",
        "azurite_connection_string",
        "cosmos_url",
        "kafka_bootstrap",
    }
)
"""Fixture names that provision a backing service; tests using them get ``needs_services``."""

NEEDS_SERVICES = "needs_services"
"""The marker of tests that need a backing service."""


def pytest_configure(config: pytest.Config) -> None:
    """Turn run-view verification on (unless set) and register the ``needs_services`` and
    ``slow`` markers."""
    os.environ.setdefault(VERIFY_VIEWS_ENV, "1")
    config.addinivalue_line(
        "markers",
        f"{NEEDS_SERVICES}: the test uses a backing service; added automatically to tests "
        "using one of the service fixtures (" + ", ".join(sorted(SERVICE_FIXTURES)) + ")",
    )
    config.addinivalue_line("markers", "slow: long-running test, run on demand (-m slow)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test whose fixtures include a service fixture with ``needs_services``."""
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(NEEDS_SERVICES)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the servers this session started (``atexit`` does it too; this is earlier)."""
    services.stop_all()


def _view_errors() -> list[str] | None:
    """The shared list of run-view mismatches, or None when no adapter was ever imported."""
    module = sys.modules.get("flowcraft.distributed.adapter")
    if module is None:
        return None
    errors: list[str] = module.BaseDistributedAdapter.view_errors
    return errors


@pytest.fixture(autouse=True)
def _flowcraft_run_views_match_the_store() -> Iterator[None]:
    """Fail a test during which a worker's cached run view or incremental commit diverged from
    the store (recorded only while ``FLOWCRAFT_VERIFY_VIEWS=1``)."""
    errors = _view_errors()
    if errors is not None:
        errors.clear()
    yield
    errors = _view_errors()
    if errors:
        found = list(errors)
        errors.clear()
        pytest.fail(f"worker run views diverged from the store: {found[:3]}", pytrace=False)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a Redis 7 server (env URL, testcontainers or a throwaway local server)."""
    return services.require_service("redis").url


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """URL of a RabbitMQ broker (env URL, testcontainers or a throwaway local node)."""
    return services.require_service("rabbitmq").url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a PostgreSQL server (env URL, testcontainers or a throwaway local cluster)."""
    return services.require_service("postgres").url


@pytest.fixture(scope="session")
def moto_url() -> str:
    """URL of a moto server, SQS and DynamoDB (env URL, testcontainers or a local server)."""
    return services.require_service("moto").url


@pytest.fixture(scope="session")
def pubsub_host() -> str:
    """``host:port`` of a Pub/Sub emulator (env, testcontainers or a local emulator), the value
    for ``PUBSUB_EMULATOR_HOST``."""
    return services.require_service("pubsub").url


@pytest.fixture(scope="session")
def firestore_host() -> str:
    """``host:port`` of a Firestore emulator (env, testcontainers or a local emulator), the
    value for ``FIRESTORE_EMULATOR_HOST``."""
    return services.require_service("firestore").url


@pytest.fixture(scope="session")
def azurite_connection_string() -> str:
    """Connection string of an Azurite queue service (env, testcontainers or a local one)."""
    return services.require_service("azurite").url


@pytest.fixture(scope="session")
def cosmos_url() -> str:
    """Endpoint URL of a Cosmos DB (SQL API) server (env, Microsoft's emulator image, or a
    local ``cosmosdb-server``; both use the emulator's well-known key)."""
    return services.require_service("cosmos").url


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """``host:port`` of a Kafka-protocol broker (env, testcontainers or a local Tansu), the
    value for ``bootstrap.servers``."""
    return services.require_service("kafka").url


@pytest.fixture
def unique_prefix() -> str:
    """A key/queue/schema prefix no other test (or test run) uses: ``fct`` + 10 hex digits."""
    return f"fct{uuid.uuid4().hex[:10]}"


__all__ = [
    "NEEDS_SERVICES",
    "SERVICE_FIXTURES",
    "VERIFY_VIEWS_ENV",
    "azurite_connection_string",
    "cosmos_url",
    "firestore_host",
    "kafka_bootstrap",
    "moto_url",
    "postgres_url",
    "pubsub_host",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_unconfigure",
    "rabbitmq_url",
    "redis_url",
    "unique_prefix",
]
