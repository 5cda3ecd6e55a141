"""Node authoring API: results, the context a node receives, class nodes and registry keys."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from .errors import ErrorRecord, InvalidNodeResultError

if TYPE_CHECKING:
    from .context import AsyncContext


@dataclass(slots=True)
class NodeResult:
    """What a node returns: an ``output`` and optionally an ``action`` that selects edges."""

    output: Any = None
    action: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """JSON form ``{output, action?}``."""
        d: dict[str, Any] = {"output": self.output}
        if self.action is not None:
            d["action"] = self.action
        return d


_RESULT_KEYS = frozenset({"output", "action"})


def coerce_result(value: Any, node_id: str) -> NodeResult:
    """Accept a NodeResult, None, or a mapping with only ``output``/``action``; reject the rest.

    Upstream silently accepted any return value (bug B21); here a stray return is an error that
    says what to return instead.
    """
    if isinstance(value, NodeResult):
        return value
    if value is None:
        return NodeResult()
    if isinstance(value, Mapping) and value.keys() <= _RESULT_KEYS:
        action = value.get("action")
        if action is not None and not isinstance(action, str):
            raise InvalidNodeResultError(
                f"node {node_id!r} returned a non-string action {action!r}", node_id=node_id
            )
        return NodeResult(value.get("output"), action)
    raise InvalidNodeResultError(
        f"node {node_id!r} returned {type(value).__name__}; return NodeResult(output=...), "
        "a dict with only 'output'/'action', or None",
        node_id=node_id,
    )


_NODE_LOGGER = logging.getLogger("flowcraft.node")


@dataclass(slots=True)
class NodeContext:
    """Everything a node execution can see."""

    node_id: str
    context: AsyncContext
    input: Any
    params: Mapping[str, Any]
    execution_id: str
    blueprint_id: str
    attempt: int = 1
    max_attempts: int = 1
    iteration: int = 0
    dependencies: Mapping[str, Any] = field(default_factory=dict)
    cancelled: asyncio.Event | None = None
    error: ErrorRecord | None = None
    """For a fallback node: the record of the failure it replaces."""
    logger: logging.Logger = field(default_factory=lambda: _NODE_LOGGER)
    uses: str = ""
    """The implementation key being run (the node's ``uses``; the worker key for batch items)."""
    _predecessors: Callable[[], tuple[str, ...]] | None = field(default=None, repr=False)

    @property
    def predecessors(self) -> tuple[str, ...]:
        """The executions whose completion made this one ready, looking through built-in nodes.

        Node ids, or ``scatter[i]`` for batch items: the node after a batch lists the batch's
        items, the node after a wait lists the node before the wait, a fallback lists the node
        it replaces, a loop's first node lists the loop's last node. Empty for start nodes.
        """
        return self._predecessors() if self._predecessors is not None else ()

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and redeliveries of this node in this iteration of the run."""
        return f"{self.execution_id}:{self.node_id}:{self.iteration}"

    @property
    def is_last_attempt(self) -> bool:
        """True on the final attempt the retry policy allows."""
        return self.attempt >= self.max_attempts


NodeFunction: TypeAlias = Callable[[NodeContext], Awaitable[Any] | Any]


class BaseNode:
    """A class node: ``prep`` -> ``exec`` (the retried phase) -> ``post``.

    After the final failed attempt ``fallback`` may return a replacement result (the default
    re-raises); ``recover`` runs for cleanup whenever an error was not recovered.
    A new instance is built for every execution with the node's params and id.
    """

    def __init__(self, params: Mapping[str, Any] | None = None, node_id: str = "") -> None:
        self.params: Mapping[str, Any] = params or {}
        self.node_id = node_id

    async def prep(self, ctx: NodeContext) -> Any:
        """Gather what ``exec`` needs; defaults to the node's input."""
        return ctx.input

    async def exec(self, prep_result: Any, ctx: NodeContext) -> Any:
        """Do the work; this is the phase retried on failure."""
        raise NotImplementedError(f"{type(self).__name__}.exec")

    async def post(self, exec_result: Any, ctx: NodeContext) -> Any:
        """Turn the exec result into the node result; defaults to passing it through."""
        return exec_result

    async def fallback(self, error: BaseException, ctx: NodeContext) -> Any:
        """Called after the last failed ``exec`` attempt; return a result to recover."""
        raise error

    async def recover(self, error: BaseException, ctx: NodeContext) -> None:
        """Cleanup after an unrecovered failure; exceptions here are logged, not raised."""


NodeImplementation: TypeAlias = NodeFunction | type[BaseNode]


def is_node_class(impl: object) -> bool:
    """True for a :class:`BaseNode` subclass."""
    return inspect.isclass(impl) and issubclass(impl, BaseNode)


def registry_key(impl: object) -> str | None:
    """Portable registry key ``module:qualname``; None for lambdas and nested functions.

    Unlike upstream (hash + process counter), this is the same in every process, so a
    blueprint built in one process names implementations another process can find.
    """
    qual = getattr(impl, "__qualname__", None)
    mod = getattr(impl, "__module__", None)
    if not isinstance(qual, str) or not isinstance(mod, str) or "<" in qual:
        return None
    if mod == "__main__":
        mod = _main_module_name()
    return f"{mod}:{qual}"


def _main_module_name() -> str:
    """The importable name of ``__main__`` (``-m pkg.mod`` or the script's file stem), so a
    script and the workers importing it as a module agree on registry keys."""
    import sys
    from pathlib import Path

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", None):
        return str(spec.name)
    f = getattr(main, "__file__", None)
    return Path(f).stem if isinstance(f, str) else "__main__"
