"""Exception hierarchy and the plain error record stored in run results."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class FlowcraftError(Exception):
    """Base class of every error Flowcraft raises; carries where it happened."""

    def __init__(
        self,
        message: str,
        *,
        node_id: str | None = None,
        blueprint_id: str | None = None,
        execution_id: str | None = None,
        is_fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.node_id = node_id
        self.blueprint_id = blueprint_id
        self.execution_id = execution_id
        self.is_fatal = is_fatal


class BlueprintValidationError(FlowcraftError, ValueError):
    """A blueprint is malformed; ``problems`` lists every problem found, each naming its place."""

    def __init__(self, blueprint_id: str | None, problems: list[str]) -> None:
        self.problems = problems
        head = f"invalid blueprint {blueprint_id!r}" if blueprint_id else "invalid blueprint"
        super().__init__(
            head + ":\n" + "\n".join(f"  - {p}" for p in problems),
            blueprint_id=blueprint_id,
            is_fatal=True,
        )


class ExpressionError(FlowcraftError, ValueError):
    """An expression could not be parsed, is not allowed, or failed to evaluate."""

    def __init__(self, expression: str, reason: str) -> None:
        self.expression = expression
        self.reason = reason
        super().__init__(f"expression {expression!r}: {reason}", is_fatal=True)


class NodeExecutionError(FlowcraftError):
    """A node raised; the original exception is ``__cause__``."""


class NodeTimeoutError(NodeExecutionError, TimeoutError):
    """A node attempt ran longer than its ``timeout``."""


class FatalNodeError(FlowcraftError):
    """Raise from node code to fail the node at once: no further retries, no fallback."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs["is_fatal"] = True
        super().__init__(message, **kwargs)


class WorkflowCancelledError(FlowcraftError):
    """The run was cancelled."""


class SerializationError(FlowcraftError, TypeError):
    """A value cannot be serialized by the configured serializer."""


class InvalidNodeResultError(NodeExecutionError, TypeError):
    """A node returned something that is not a NodeResult, a mapping or None."""


class ResumeError(FlowcraftError, ValueError):
    """A resume request does not match the run's awaiting state."""


class LoopLimitExceededError(FlowcraftError):
    """A loop controller ran more iterations than its ``maxIterations``."""


class ErrorRecord(BaseModel):
    """Plain, serializable description of a failure, kept in run results and events."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    message: str
    name: str = "Error"
    node_id: str | None = Field(default=None, alias="nodeId")
    blueprint_id: str | None = Field(default=None, alias="blueprintId")
    execution_id: str | None = Field(default=None, alias="executionId")
    is_fatal: bool = Field(default=False, alias="isFatal")
    timestamp: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    cause: str | None = None
    cause_type: str | None = Field(default=None, alias="causeType")
    traceback: str | None = None

    @classmethod
    def from_exception(
        cls,
        exc: BaseException,
        *,
        node_id: str | None = None,
        blueprint_id: str | None = None,
        execution_id: str | None = None,
        with_traceback: bool = False,
    ) -> ErrorRecord:
        """Describe ``exc`` (and its cause) as a record; explicit ids override the exception's."""
        cause = exc.__cause__
        fe = exc if isinstance(exc, FlowcraftError) else None
        message = str(exc) or type(exc).__name__
        return cls(
            message=message,
            name=type(exc).__name__,
            node_id=node_id or (fe.node_id if fe else None),
            blueprint_id=blueprint_id or (fe.blueprint_id if fe else None),
            execution_id=execution_id or (fe.execution_id if fe else None),
            is_fatal=bool(fe and fe.is_fatal),
            cause=(str(cause) or type(cause).__name__) if cause is not None else None,
            cause_type=type(cause).__name__ if cause is not None else None,
            traceback=("".join(traceback.format_exception(exc)) if with_traceback else None),
        )

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON form used in results and job payloads."""
        return self.model_dump(by_alias=True, exclude_none=True)
