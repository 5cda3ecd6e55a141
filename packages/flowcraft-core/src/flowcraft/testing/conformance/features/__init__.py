"""The conformance suite's feature classes, one module per feature. Each is a
:class:`~flowcraft.testing.conformance.base.SuiteBase` subclass holding that feature's tests;
:class:`~flowcraft.testing.conformance.AdapterConformanceSuite` composes them all. Subclass a
single one (``class TestMyQueueRetries(RetryTests)``) to run only that feature while
developing an adapter."""

from __future__ import annotations

from .basics import BasicsTests
from .dead_letters import DeadLetterTests
from .differential import DifferentialTests
from .durable import DurableTests
from .faults import FaultTests
from .liveness import LivenessTests
from .load import LoadTests
from .observable import ObservableTests
from .recovery import RecoveryTests
from .retries import RetryTests
from .routing import RoutingTests
from .values import ValueTests
from .versions import VersionTests
from .webhooks import WebhookTests

FEATURES: tuple[type, ...] = (
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
)
"""Every feature class, in the order :class:`AdapterConformanceSuite` composes them."""

__all__ = [
    "FEATURES",
    "BasicsTests",
    "DeadLetterTests",
    "DifferentialTests",
    "DurableTests",
    "FaultTests",
    "LivenessTests",
    "LoadTests",
    "ObservableTests",
    "RecoveryTests",
    "RetryTests",
    "RoutingTests",
    "ValueTests",
    "VersionTests",
    "WebhookTests",
]
