"""The adapter conformance suite: one base test class every distributed adapter subclasses.

Modelled on SQLAlchemy's dialect compliance suite and LangChain's standard tests: the adapter
package subclasses :class:`AdapterConformanceSuite` in a module named ``test_*.py``, with a
class named ``Test*``; it sets :attr:`~SuiteBase.adapter_class`, overrides the ``backend``
fixture and :meth:`~SuiteBase.make_worker` (and, optionally, a few hooks); pytest then runs
every scenario against that adapter. Tests needing a capability the adapter does not declare in
its ``capabilities`` are skipped with a reason naming it; where backends legitimately differ
(native queue retries, job deduplication) the adapter declares it and the test checks the
declared form. No test is ever overridden.

The tests live in feature modules (:mod:`.features`): basics, routing, retries, faults,
recovery, durable, versions, dead letters, values, load. Every scenario asserts exact outcomes:
final context, node statuses, run status, and how many times each node's code ran (node code
runs in the test process, so counters are exact). See ``docs/conformance.md``.
"""

from __future__ import annotations

from .base import SuiteBase
from .features import (
    BasicsTests,
    DeadLetterTests,
    DifferentialTests,
    DurableTests,
    FaultTests,
    LivenessTests,
    LoadTests,
    ObservableTests,
    RecoveryTests,
    RetryTests,
    RoutingTests,
    ValueTests,
    VersionTests,
    WebhookTests,
)
from .helpers import assert_same_result, in_memory, requires, until


class AdapterConformanceSuite(
    BasicsTests,
    RoutingTests,
    RetryTests,
    FaultTests,
    RecoveryTests,
    DurableTests,
    WebhookTests,
    VersionTests,
    DeadLetterTests,
    ValueTests,
    LivenessTests,
    ObservableTests,
    DifferentialTests,
    LoadTests,
):
    """Every conformance feature in one base class (pytest collects subclasses ``Test*``).

    Subclasses set :attr:`~SuiteBase.adapter_class`, override the ``backend`` fixture (yield a
    fresh, isolated backend object per test) and :meth:`~SuiteBase.make_worker`. Optional
    hooks: :meth:`~SuiteBase.enqueue_raw`, :meth:`~SuiteBase.dead_letters`,
    :meth:`~SuiteBase.write_counters`, :meth:`~SuiteBase.duplicate_delivery_kwargs`.
    Requires pytest-asyncio (``asyncio_mode = "auto"``, or decorate the ``backend`` fixture
    with ``pytest_asyncio.fixture``) and hypothesis.
    """


__all__ = [
    "AdapterConformanceSuite",
    "SuiteBase",
    "assert_same_result",
    "in_memory",
    "requires",
    "until",
]
