"""The distributed-adapter conformance suite and the store suites, importable by third-party
adapter and store packages (``pip install "flowcraft-core[testing]"``).

Subclass :class:`AdapterConformanceSuite` in a ``test_*.py`` module::

    from flowcraft.testing.conformance import AdapterConformanceSuite

    class TestMyAdapter(AdapterConformanceSuite):
        adapter_class = MyAdapter

        @pytest.fixture
        async def backend(self):
            yield make_isolated_backend()

        async def make_worker(self, backend, runtime_options, **adapter_kwargs):
            return MyAdapter(backend, runtime_options=runtime_options, **adapter_kwargs)

A store author runs :class:`CoordinationStoreSuite` / :class:`RunStoreSuite` alone (one
``store`` / ``context_factory`` fixture). Needs pytest, pytest-asyncio and hypothesis (the
``testing`` extra; importing this package is the only thing in Flowcraft that requires them).
flowcraft-core's pytest plugin adds the run-view check and the service fixtures. See
``docs/conformance.md``.
"""

from __future__ import annotations

try:
    import hypothesis  # noqa: F401
    import pytest
    import pytest_asyncio  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover - exercised by scripts/check-wheel
    raise ImportError(
        f"flowcraft.testing.conformance needs the test-only dependencies pytest, "
        f"pytest-asyncio and hypothesis ({exc.name!r} is missing): "
        'pip install "flowcraft-core[testing]"'
    ) from exc

# Plain ``assert`` in the suite should report values like a test module's asserts do (the
# modules must be registered before they are imported).
pytest.register_assert_rewrite(
    "flowcraft.testing.conformance.base",
    "flowcraft.testing.conformance.cluster",
    "flowcraft.testing.conformance.faults",
    "flowcraft.testing.conformance.features",
    "flowcraft.testing.conformance.helpers",
    "flowcraft.testing.conformance.stores",
    "flowcraft.testing.conformance.suite",
)

from . import scenarios  # noqa: E402
from .base import SuiteBase  # noqa: E402
from .cluster import Cluster, ScenarioTimeout  # noqa: E402
from .faults import STEP_POINTS, Enqueued, FaultInjector  # noqa: E402
from .features import (  # noqa: E402
    BasicsTests,
    DeadLetterTests,
    DurableTests,
    FaultTests,
    LoadTests,
    RecoveryTests,
    RetryTests,
    RoutingTests,
    ValueTests,
    VersionTests,
)
from .helpers import (  # noqa: E402
    assert_same_result,
    in_memory,
    queue_retries,
    requires,
    until,
)
from .scenarios import Probe, Scenario  # noqa: E402
from .stores import CoordinationStoreSuite, RunStoreSuite  # noqa: E402
from .suite import AdapterConformanceSuite  # noqa: E402

__all__ = [
    "STEP_POINTS",
    "AdapterConformanceSuite",
    "BasicsTests",
    "Cluster",
    "CoordinationStoreSuite",
    "DeadLetterTests",
    "DurableTests",
    "Enqueued",
    "FaultInjector",
    "FaultTests",
    "LoadTests",
    "Probe",
    "RecoveryTests",
    "RetryTests",
    "RoutingTests",
    "RunStoreSuite",
    "Scenario",
    "ScenarioTimeout",
    "SuiteBase",
    "ValueTests",
    "VersionTests",
    "assert_same_result",
    "in_memory",
    "queue_retries",
    "requires",
    "scenarios",
    "until",
]
