"""Flowcraft for Python: workflows that run in memory or distributed across workers, unchanged.

The names most programs need are re-exported here; everything else lives in the submodules.
"""

from __future__ import annotations

from .blueprint import (
    EdgeDefinition,
    NodeConfig,
    NodeDefinition,
    WorkflowBlueprint,
    blueprint_json_schema,
    load_blueprint,
)
from .builder import Flow, create_flow
from .context import AsyncContext, InMemoryContext, PatchOperation, TrackedContext
from .errors import (
    BlueprintValidationError,
    ErrorRecord,
    ExpressionError,
    FatalNodeError,
    FlowcraftError,
    NodeExecutionError,
    NodeTimeoutError,
    ResumeError,
    SerializationError,
)
from .events import EventBus, FlowcraftEvent, ListenerBus
from .expressions import Evaluator, SafeEvaluator
from .middleware import Middleware
from .nodes import BaseNode, NodeContext, NodeResult
from .runtime import FlowRuntime, WorkflowResult
from .scheduler import InMemoryTimerStore, TimerStore, WorkflowScheduler

__version__ = "0.1.0"

__all__ = [
    "AsyncContext",
    "BaseNode",
    "BlueprintValidationError",
    "EdgeDefinition",
    "ErrorRecord",
    "Evaluator",
    "EventBus",
    "ExpressionError",
    "FatalNodeError",
    "Flow",
    "FlowRuntime",
    "FlowcraftError",
    "FlowcraftEvent",
    "InMemoryContext",
    "InMemoryTimerStore",
    "ListenerBus",
    "Middleware",
    "NodeConfig",
    "NodeContext",
    "NodeDefinition",
    "NodeExecutionError",
    "NodeResult",
    "NodeTimeoutError",
    "PatchOperation",
    "ResumeError",
    "SafeEvaluator",
    "SerializationError",
    "TimerStore",
    "TrackedContext",
    "WorkflowBlueprint",
    "WorkflowResult",
    "WorkflowScheduler",
    "__version__",
    "blueprint_json_schema",
    "create_flow",
    "load_blueprint",
]
