"""The distributed-adapter conformance suite, importable by third-party adapter packages.

Subclass :class:`AdapterConformanceSuite` in a ``test_*.py`` module::

    from flowcraft.testing.conformance import AdapterConformanceSuite

    class TestMyAdapter(AdapterConformanceSuite):
        adapter_class = MyAdapter

        @pytest.fixture
        async def backend(self):
            yield make_isolated_backend()

        async def make_worker(self, backend, runtime_options, **adapter_kwargs):
            return MyAdapter(backend, runtime_options=runtime_options, **adapter_kwargs)

Needs pytest, pytest-asyncio and hypothesis (test-only dependencies; importing this package
is the only thing in Flowcraft that requires them). See ``docs/conformance.md``.
"""

from __future__ import annotations

import pytest

# Plain ``assert`` in the suite should report values like a test module's asserts do.
pytest.register_assert_rewrite(
    "flowcraft.testing.conformance.suite",
    "flowcraft.testing.conformance.cluster",
    "flowcraft.testing.conformance.faults",
)

from . import scenarios  # noqa: E402
from .cluster import Cluster, ScenarioTimeout  # noqa: E402
from .faults import STEP_POINTS, Enqueued, FaultInjector  # noqa: E402
from .scenarios import Probe, Scenario  # noqa: E402
from .suite import AdapterConformanceSuite, assert_same_result, in_memory, requires, until  # noqa: E402

__all__ = [
    "STEP_POINTS",
    "AdapterConformanceSuite",
    "Cluster",
    "Enqueued",
    "FaultInjector",
    "Probe",
    "Scenario",
    "ScenarioTimeout",
    "assert_same_result",
    "in_memory",
    "requires",
    "scenarios",
    "until",
]
