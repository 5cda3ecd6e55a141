"""Blueprint model: the JSON wire format of a workflow, its validation and its JSON Schema.

Field names on the wire are upstream Flowcraft's camelCase (``maxRetries``, ``joinStrategy``,
``cycleEntryPoints``) so that a blueprint exported from the TypeScript Flowcraft loads unchanged;
Python attributes are snake_case. Models are frozen: a running workflow never mutates its blueprint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import BlueprintValidationError

JoinStrategy = Literal["all", "any"]
Backoff = Literal["fixed", "exponential"]


class NodeConfig(BaseModel):
    """Per-node execution policy: attempts, delays, timeout, fallback and join strategy.

    Strict types (``"3"`` is not a number here), matching the JSON Schema.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)

    max_retries: int = Field(
        default=1, ge=1, alias="maxRetries", description="Total attempts, including the first."
    )
    retry_delay: float = Field(
        default=0, ge=0, alias="retryDelay", description="Delay before the 2nd attempt, in ms."
    )
    backoff: Backoff = Field(
        default="exponential", description="How the delay grows between later attempts."
    )
    max_retry_delay: float = Field(
        default=30_000, ge=0, alias="maxRetryDelay", description="Cap on any retry delay, in ms."
    )
    jitter: float = Field(
        default=0.1, ge=0, le=1, description="Random spread applied to each delay (fraction)."
    )
    timeout: float | None = Field(
        default=None, gt=0, description="Per-attempt time limit in ms; the attempt is cancelled."
    )
    fallback: str | None = Field(
        default=None, min_length=1, description="Node id run after the final failed attempt."
    )
    join_strategy: JoinStrategy = Field(default="all", alias="joinStrategy")


class NodeDefinition(BaseModel):
    """One node of a blueprint: which implementation it ``uses`` and how it is fed."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    id: str = Field(min_length=1)
    uses: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: str | dict[str, str] | None = None
    config: NodeConfig = Field(default_factory=NodeConfig)

    @field_validator("params", mode="before")
    @classmethod
    def _none_params(cls, v: Any) -> Any:
        return {} if v is None else v

    @field_validator("config", mode="before")
    @classmethod
    def _none_config(cls, v: Any) -> Any:
        return {} if v is None else v


class EdgeDefinition(BaseModel):
    """A directed edge, optionally gated by an ``action`` and a ``condition``."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    source: str = Field(min_length=1)
    target: str = Field(min_length=1)
    action: str | None = None
    condition: str | None = None
    transform: str | None = None

    @property
    def key(self) -> str:
        """Stable identity of the edge within a blueprint (used for join bookkeeping)."""
        return f"{self.source}->{self.target}" + (f"#{self.action}" if self.action else "")


class WorkflowBlueprint(BaseModel):
    """A serializable workflow: nodes, edges and free-form metadata."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    id: str = Field(min_length=1)
    nodes: tuple[NodeDefinition, ...] = ()
    edges: tuple[EdgeDefinition, ...] = ()
    metadata: dict[str, Any] = Field(default_factory=dict)
    _plan: Any = PrivateAttr(default=None)  # compiled execution plan cache (see flowcraft.plan)

    @field_validator("nodes", "edges", mode="before")
    @classmethod
    def _accept_mapping(cls, v: Any) -> Any:
        # Upstream accepts nodes/edges given as an object keyed by id.
        if v is None:
            return ()
        if isinstance(v, Mapping):
            return list(v.values())
        return v

    @field_validator("metadata", mode="before")
    @classmethod
    def _none_metadata(cls, v: Any) -> Any:
        return {} if v is None else v

    @model_validator(mode="after")
    def _check_graph(self) -> WorkflowBlueprint:
        problems = structural_problems(self)
        if problems:
            raise BlueprintValidationError(self.id, problems)
        return self

    @property
    def version(self) -> str | None:
        """``metadata.version`` as a string, or None when the blueprint is unversioned."""
        v = self.metadata.get("version")
        return None if v is None else str(v)

    def node(self, node_id: str) -> NodeDefinition:
        """The node with this id; KeyError naming the id if there is none."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(f"blueprint {self.id!r} has no node {node_id!r}")

    def to_dict(self) -> dict[str, Any]:
        """The camelCase wire form, without defaults."""
        return self.model_dump(by_alias=True, exclude_defaults=True, mode="json") | {
            "id": self.id,
            "nodes": [n.model_dump(by_alias=True, exclude_defaults=True) for n in self.nodes],
            "edges": [e.model_dump(by_alias=True, exclude_none=True) for e in self.edges],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The wire form as JSON text."""
        return json.dumps(self.to_dict(), indent=indent)


def structural_problems(bp: WorkflowBlueprint) -> list[str]:
    """Graph-level problems that make a blueprint unrunnable, each naming the node or edge."""
    problems: list[str] = []
    seen: set[str] = set()
    for i, n in enumerate(bp.nodes):
        if n.id in seen:
            problems.append(f"nodes[{i}]: duplicate node id {n.id!r}")
        seen.add(n.id)
    for i, e in enumerate(bp.edges):
        if e.source not in seen:
            problems.append(f"edges[{i}] ({e.source} -> {e.target}): unknown source {e.source!r}")
        if e.target not in seen:
            problems.append(f"edges[{i}] ({e.source} -> {e.target}): unknown target {e.target!r}")
    for n in bp.nodes:
        fb = n.config.fallback
        if fb is not None:
            if fb == n.id:
                problems.append(f"node {n.id!r}: config.fallback names the node itself")
            elif fb not in seen:
                problems.append(f"node {n.id!r}: config.fallback names unknown node {fb!r}")
    entry = bp.metadata.get("cycleEntryPoints")
    if entry is not None:
        if not isinstance(entry, list) or not all(isinstance(x, str) for x in entry):
            problems.append("metadata.cycleEntryPoints: must be a list of node ids")
        else:
            problems.extend(
                f"metadata.cycleEntryPoints: unknown node {x!r}" for x in entry if x not in seen
            )
    return problems


def _format_pydantic(err: ValidationError, raw: Any) -> list[str]:
    out: list[str] = []
    for e in err.errors():
        loc = list(e.get("loc", ()))
        where = ""
        # Name the node/edge by id when the location points into one.
        if len(loc) >= 2 and loc[0] in ("nodes", "edges") and isinstance(loc[1], int):
            try:
                item = raw[loc[0]][loc[1]] if isinstance(raw, Mapping) else None
            except (KeyError, IndexError, TypeError):
                item = None
            label = ""
            if isinstance(item, Mapping):
                if loc[0] == "nodes" and isinstance(item.get("id"), str):
                    label = f" (node {item['id']!r})"
                elif loc[0] == "edges":
                    label = f" ({item.get('source')!r} -> {item.get('target')!r})"
            where = f"{loc[0]}[{loc[1]}]{label}" + "".join(f".{p}" for p in loc[2:])
        else:
            where = ".".join(str(p) for p in loc) or "<root>"
        msg = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}" if loc else "unknown field"
        out.append(f"{where}: {msg}")
    return out


def load_blueprint(
    source: WorkflowBlueprint | Mapping[str, Any] | str | bytes | Path,
) -> WorkflowBlueprint:
    """Parse and validate a blueprint from a model, a mapping, JSON text/bytes or a file path.

    Every failure is a :class:`BlueprintValidationError` whose message names the offending
    node or edge.
    """
    if isinstance(source, WorkflowBlueprint):
        return source
    raw: Any = source
    if isinstance(source, Path):
        try:
            raw = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise BlueprintValidationError(None, [f"cannot read {source}: {exc}"]) from exc
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # Recursion: too deep
            raise BlueprintValidationError(None, [f"not valid JSON: {exc}"]) from exc
    if not isinstance(raw, Mapping):
        raise BlueprintValidationError(
            None, [f"a blueprint must be a JSON object, got {type(raw).__name__}"]
        )
    bp_id = raw.get("id") if isinstance(raw.get("id"), str) else None
    try:
        return WorkflowBlueprint.model_validate(raw)
    except BlueprintValidationError:
        raise
    except ValidationError as exc:
        for e in exc.errors():
            inner = (e.get("ctx") or {}).get("error")
            if isinstance(inner, BlueprintValidationError):
                raise inner from None
        raise BlueprintValidationError(bp_id, _format_pydantic(exc, raw)) from None
    except (TypeError, ValueError) as exc:  # odd inputs pydantic did not wrap
        raise BlueprintValidationError(bp_id, [str(exc)]) from None


def blueprint_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the blueprint wire format."""
    return WorkflowBlueprint.model_json_schema(by_alias=True, mode="validation")
