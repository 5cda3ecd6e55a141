"""The store contract suites against the Firestore stores of :mod:`flowcraft_gcp.firestore`,
on the Firestore emulator of flowcraft-core's pytest plugin (``firestore_host``: an env URL,
testcontainers or a throwaway local emulator). Each test uses its own collection prefix."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest
from flowcraft.testing.conformance import CoordinationStoreSuite, RunStoreSuite
from flowcraft_gcp import FirestoreCoordinationStore, FirestoreRunContext, FirestoreRunStore
from google.cloud.firestore import AsyncClient

PROJECT = "demo-flowcraft"


@pytest.fixture
def client(firestore_host: str) -> AsyncClient:
    """A client on the emulator (the client library selects it from the environment)."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_host
    return AsyncClient(project=PROJECT)


@pytest.fixture
def prefix() -> str:
    """Collection prefix of this test."""
    return f"fct{uuid.uuid4().hex[:10]}-"


class TestFirestoreCoordinationStore(CoordinationStoreSuite):
    """create / Increment / precondition deletes; expiry checked on every read."""

    @pytest.fixture
    def store(self, client: AsyncClient, prefix: str) -> FirestoreCoordinationStore:
        """The coordination store under the test's prefix."""
        return FirestoreCoordinationStore(client, prefix)


class TestFirestoreRunStore(RunStoreSuite):
    """Run contexts under the test's prefix; every context from its own client."""

    @pytest.fixture
    def context_factory(
        self, firestore_host: str, prefix: str
    ) -> Callable[[str], FirestoreRunContext]:
        """Contexts on the test's collections."""
        os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_host
        return lambda run_id: FirestoreRunStore(AsyncClient(project=PROJECT), prefix).context(
            run_id
        )
