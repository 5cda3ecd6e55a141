"""Fluent builder: declare a workflow in Python and get a validated :class:`WorkflowBlueprint`.

The builder also collects the implementations it was handed into a :attr:`Flow.registry` keyed
by ``uses`` key, for the runtime. Keys are stable and portable between processes: an explicit
``uses=`` wins; otherwise a module-level function or class is keyed ``module:qualname``; anything
else (lambdas, closures, nested functions, callable objects) is keyed ``"<flow id>.<node id>"``.
Upstream keyed implementations by a hash plus a process-global counter, so a blueprint built in
one process named keys no other process could resolve; no counters or object ids are used here.

Batches and loops are macros over plain nodes:

* ``batch("b", ...)`` adds ``b_scatter`` (``batch-scatter``) and ``b_gather`` (``batch-gather``)
  joined by an edge; user edges into ``b`` go to ``b_scatter`` and edges out of ``b`` leave from
  ``b_gather``.
* ``loop("l", start=..., end=..., condition=...)`` adds a ``loop-controller`` node ``l``, an edge
  ``end -> l`` and an edge ``l -> start`` with action ``continue``; every other edge out of ``l``
  gets action ``break`` unless it already has an action.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from .blueprint import EdgeDefinition, NodeDefinition, WorkflowBlueprint, load_blueprint
from .builtins import (
    BATCH_GATHER,
    BATCH_SCATTER,
    BUILTIN_NODE_TYPES,
    LOOP_CONTROLLER,
    SLEEP,
    SUBFLOW,
    WAIT,
)
from .nodes import BaseNode, NodeFunction, NodeImplementation, is_node_class, registry_key

__all__ = ["Flow", "UIGraph", "create_flow"]

_DURATION_RE = re.compile(r"^\d+(?:\.\d+)?[smhd]$")
_ON_ITEM_ERROR = ("fail", "collect", "skip")


@dataclass
class UIGraph:
    """A view of a flow for drawing: loop controllers and scatter/gather pairs are collapsed."""

    nodes: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """``{"nodes": [...], "edges": [...]}``."""
        return {"nodes": self.nodes, "edges": self.edges}


@dataclass(frozen=True, slots=True)
class _BatchSpec:
    batch_id: str
    scatter_id: str
    gather_id: str
    worker_key: str
    input_key: str
    output_key: str


@dataclass(frozen=True, slots=True)
class _LoopSpec:
    loop_id: str
    start: str
    end: str
    condition: str


def _json_copy(value: Any, what: str) -> Any:
    """A deep copy of ``value``, which must survive a JSON round trip unchanged."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serializable: {exc}") from None
    back = json.loads(text)
    if back != value:
        raise ValueError(
            f"{what} does not survive a JSON round trip unchanged "
            "(use lists, str keys and finite numbers)"
        )
    return back


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _validate_duration(duration: float | str, node_id: str) -> float | str:
    if isinstance(duration, bool):
        raise ValueError(f"sleep node {node_id!r}: duration must be a number of ms or a string")
    if isinstance(duration, int | float):
        if not math.isfinite(duration) or duration < 0:
            raise ValueError(
                f"sleep node {node_id!r}: duration must be a finite number of ms >= 0, "
                f"got {duration!r}"
            )
        return duration
    if isinstance(duration, str):
        if not _DURATION_RE.match(duration):
            raise ValueError(
                f"sleep node {node_id!r}: duration {duration!r} is not a number followed by "
                "s, m, h or d (e.g. '10s', '5m', '2h', '1d')"
            )
        return duration
    raise ValueError(
        f"sleep node {node_id!r}: duration must be a number of ms or a string, "
        f"got {type(duration).__name__}"
    )


class Flow:
    """Fluent builder of a workflow blueprint plus the registry of its implementations.

    Every method that adds to the flow returns the flow, so calls chain. Problems that can be
    seen at once (duplicate ids, bad config values, key collisions) raise ``ValueError`` at the
    call; problems that depend on the whole graph (edges naming unknown nodes) are reported by
    :meth:`to_blueprint`.
    """

    def __init__(
        self,
        flow_id: str,
        *,
        version: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Start an empty flow ``flow_id``; ``version`` is stored as ``metadata["version"]``."""
        self._id = _check_id(flow_id, "flow id")
        meta: dict[str, Any] = (
            _json_copy(dict(metadata), f"flow {flow_id!r}: metadata") if metadata else {}
        )
        if version is not None:
            if "version" in meta and meta["version"] != version:
                raise ValueError(
                    f"flow {flow_id!r}: version={version!r} conflicts with "
                    f"metadata['version']={meta['version']!r}"
                )
            meta["version"] = version
        entries = meta.get("cycleEntryPoints")
        if entries is not None and not isinstance(entries, list):
            raise ValueError(f"flow {flow_id!r}: metadata['cycleEntryPoints'] must be a list")
        self._metadata = meta
        self._nodes: list[NodeDefinition] = []
        self._node_ids: set[str] = set()
        self._edges: list[EdgeDefinition] = []
        self._registry: dict[str, NodeImplementation] = {}
        self._key_owner: dict[str, str] = {}  # registry key -> node that registered it
        self._batches: dict[str, _BatchSpec] = {}
        self._loops: dict[str, _LoopSpec] = {}
        self._continue_edges: set[int] = set()  # indexes into _edges (edges are only appended)

    @property
    def id(self) -> str:
        """The flow (and blueprint) id."""
        return self._id

    # -- registration ------------------------------------------------------------------------

    def _resolve_key(
        self,
        impl: NodeFunction | type[BaseNode] | str,
        uses: str | None,
        owner: str,
        fallback_key: str,
    ) -> tuple[str, NodeImplementation | None]:
        """The ``uses`` key of ``impl`` for node ``owner`` and what to register under it.

        Nothing is registered here (see :meth:`_register`), so a node rejected later leaves
        no stray registry entry.
        """
        if isinstance(impl, str):
            if not impl:
                raise ValueError(f"node {owner!r}: implementation key must not be empty")
            if uses is not None and uses != impl:
                raise ValueError(
                    f"node {owner!r}: implementation is the registry key {impl!r} but "
                    f"uses={uses!r} names another"
                )
            return impl, None
        if isinstance(impl, type) and not is_node_class(impl):
            raise TypeError(
                f"node {owner!r}: class {impl!r} is not a BaseNode subclass; pass a function, "
                "a BaseNode subclass or a registry key"
            )
        if not callable(impl):
            raise TypeError(
                f"node {owner!r}: implementation must be a function, a BaseNode subclass or a "
                f"registry key, got {type(impl).__name__}"
            )
        if uses is not None:
            key = _check_id(uses, f"node {owner!r}: uses")
            if key in BUILTIN_NODE_TYPES:
                raise ValueError(
                    f"node {owner!r}: uses={key!r} is reserved for a built-in node type"
                )
        else:
            key = registry_key(impl) or fallback_key
        existing = self._registry.get(key)
        if existing is not None:
            if existing is impl or existing == impl:
                return key, None
            raise ValueError(
                f"registry key {key!r} of node {owner!r} is already used by node "
                f"{self._key_owner[key]!r} for a different implementation; pass uses= to "
                "give one of them another key"
            )
        return key, impl

    def _register(self, key: str, impl: NodeImplementation | None, owner: str) -> None:
        if impl is not None:
            self._registry[key] = impl
            self._key_owner[key] = owner

    def _claim_id(self, node_id: str, what: str = "node id") -> str:
        _check_id(node_id, what)
        if node_id in self._node_ids:
            raise ValueError(f"flow {self._id!r}: duplicate node id {node_id!r}")
        if node_id in self._batches:
            raise ValueError(
                f"flow {self._id!r}: duplicate node id {node_id!r} (already a batch id)"
            )
        return node_id

    def _add_node(
        self,
        node_id: str,
        uses: str,
        params: Mapping[str, Any] | None = None,
        inputs: str | Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        raw: dict[str, Any] = {"id": node_id, "uses": uses}
        if params:
            raw["params"] = _json_copy(dict(params), f"node {node_id!r}: params")
        if inputs is not None:
            raw["inputs"] = inputs if isinstance(inputs, str) else dict(inputs)
        if config:
            raw["config"] = dict(config)
        try:
            node = NodeDefinition.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                ".".join(str(p) for p in e.get("loc", ())) + ": " + str(e.get("msg"))
                for e in exc.errors()
            )
            raise ValueError(f"node {node_id!r}: {problems}") from None
        self._nodes.append(node)
        self._node_ids.add(node_id)

    def _add_edge(self, raw: Mapping[str, Any]) -> None:
        try:
            self._edges.append(EdgeDefinition.model_validate(dict(raw)))
        except ValidationError as exc:
            problems = "; ".join(
                ".".join(str(p) for p in e.get("loc", ())) + ": " + str(e.get("msg"))
                for e in exc.errors()
            )
            raise ValueError(
                f"edge {raw.get('source')!r} -> {raw.get('target')!r}: {problems}"
            ) from None

    # -- public builder API ------------------------------------------------------------------

    def node(
        self,
        node_id: str,
        impl: NodeFunction | type[BaseNode] | str,
        *,
        uses: str | None = None,
        params: Mapping[str, Any] | None = None,
        inputs: str | Mapping[str, str] | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        backoff: str | None = None,
        timeout: float | None = None,
        fallback: str | None = None,
        join: Literal["all", "any"] | None = None,
    ) -> Flow:
        """Add node ``node_id`` run by ``impl`` (a function, a BaseNode subclass or a key).

        A string ``impl`` names an existing registry key (or a built-in type) and adds no
        registry entry. The config keywords map to ``NodeConfig`` (``maxRetries``,
        ``retryDelay``, ``backoff``, ``timeout`` in ms, ``fallback``, ``joinStrategy``);
        None leaves the default.
        """
        self._claim_id(node_id)
        key, to_register = self._resolve_key(impl, uses, node_id, f"{self._id}.{node_id}")
        config: dict[str, Any] = {}
        for wire, value in (
            ("maxRetries", max_retries),
            ("retryDelay", retry_delay),
            ("backoff", backoff),
            ("timeout", timeout),
            ("fallback", fallback),
            ("joinStrategy", join),
        ):
            if value is not None:
                config[wire] = value
        self._add_node(node_id, key, params, inputs, config)
        self._register(key, to_register, node_id)
        return self

    def edge(
        self,
        source: str,
        target: str,
        *,
        action: str | None = None,
        condition: str | None = None,
        transform: str | None = None,
    ) -> Flow:
        """Add an edge ``source -> target``, taken on ``action`` and when ``condition`` holds.

        ``source``/``target`` may be a batch id (the edge then leaves the batch's gather node /
        enters its scatter node). Unknown node ids are reported by :meth:`to_blueprint`.
        """
        raw: dict[str, Any] = {"source": source, "target": target}
        for name, value in (("action", action), ("condition", condition), ("transform", transform)):
            if value is not None:
                raw[name] = value
        self._add_edge(raw)
        return self

    def batch(
        self,
        batch_id: str,
        worker: NodeFunction | type[BaseNode] | str,
        *,
        input_key: str,
        output_key: str | None = None,
        chunk_size: int | None = None,
        on_item_error: Literal["fail", "collect", "skip"] = "fail",
        worker_uses: str | None = None,
    ) -> Flow:
        """Run ``worker`` over every item of the list at ``input_key``, gathering the results.

        Adds ``<batch_id>_scatter`` and ``<batch_id>_gather`` and an edge between them; the
        gathered list is stored under ``output_key`` (default ``"<batch_id>_gather"``).
        """
        scatter_id, gather_id = f"{batch_id}_scatter", f"{batch_id}_gather"
        self._claim_id(batch_id, "batch id")
        self._claim_id(scatter_id)
        self._claim_id(gather_id)
        _check_id(input_key, f"batch {batch_id!r}: input_key")
        out_key = gather_id
        if output_key is not None:
            out_key = _check_id(output_key, f"batch {batch_id!r}: output_key")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(
                f"batch {batch_id!r}: chunk_size must be a positive int, got {chunk_size!r}"
            )
        if on_item_error not in _ON_ITEM_ERROR:
            raise ValueError(
                f"batch {batch_id!r}: on_item_error must be one of {_ON_ITEM_ERROR}, "
                f"got {on_item_error!r}"
            )
        worker_key, to_register = self._resolve_key(
            worker, worker_uses, f"{batch_id}_worker", f"{self._id}.{batch_id}_worker"
        )
        scatter_params: dict[str, Any] = {
            "workerUsesKey": worker_key,
            "gatherNodeId": gather_id,
            "outputKey": out_key,
        }
        if chunk_size is not None:
            scatter_params["chunkSize"] = chunk_size
        scatter_params["onItemError"] = on_item_error
        self._add_node(scatter_id, BATCH_SCATTER, scatter_params, inputs=input_key)
        self._add_node(
            gather_id,
            BATCH_GATHER,
            {"gatherNodeId": gather_id, "outputKey": out_key},
            config={"joinStrategy": "all"},
        )
        self._add_edge({"source": scatter_id, "target": gather_id})
        self._register(worker_key, to_register, f"{batch_id}_worker")
        self._batches[batch_id] = _BatchSpec(
            batch_id, scatter_id, gather_id, worker_key, input_key, out_key
        )
        return self

    def loop(
        self,
        loop_id: str,
        *,
        start: str,
        end: str,
        condition: str,
        max_iterations: int | None = None,
    ) -> Flow:
        """Repeat ``start``..``end`` while ``condition`` holds, via a controller node ``loop_id``.

        Edges out of ``loop_id`` other than the ``continue`` edge back to ``start`` are taken
        when the loop ends (they get action ``break``). ``start`` and ``end`` may be added
        later but must exist when :meth:`to_blueprint` is called.
        """
        self._claim_id(loop_id, "loop id")
        _check_id(start, f"loop {loop_id!r}: start")
        _check_id(end, f"loop {loop_id!r}: end")
        _check_id(condition, f"loop {loop_id!r}: condition")
        if max_iterations is not None and (
            isinstance(max_iterations, bool)
            or not isinstance(max_iterations, int)
            or max_iterations < 1
        ):
            raise ValueError(
                f"loop {loop_id!r}: max_iterations must be a positive int, got {max_iterations!r}"
            )
        params: dict[str, Any] = {"condition": condition}
        if max_iterations is not None:
            params["maxIterations"] = max_iterations
        self._add_node(loop_id, LOOP_CONTROLLER, params, config={"joinStrategy": "any"})
        self._add_edge({"source": end, "target": loop_id})
        self._add_edge({"source": loop_id, "target": start, "action": "continue"})
        self._continue_edges.add(len(self._edges) - 1)
        self._loops[loop_id] = _LoopSpec(loop_id, start, end, condition)
        return self

    def sleep(self, node_id: str, duration: float | str) -> Flow:
        """Add a timer node; ``duration`` is ms (number) or ``"10s"``/``"5m"``/``"2h"``/``"1d"``."""
        self._claim_id(node_id)
        self._add_node(node_id, SLEEP, {"duration": _validate_duration(duration, node_id)})
        return self

    def wait(self, node_id: str, *, event_name: str | None = None) -> Flow:
        """Add a node that suspends the run until it is resumed (optionally by ``event_name``)."""
        self._claim_id(node_id)
        params: dict[str, Any] = {}
        if event_name is not None:
            params["eventName"] = _check_id(event_name, f"wait node {node_id!r}: event_name")
        self._add_node(node_id, WAIT, params)
        return self

    def subflow(
        self,
        node_id: str,
        blueprint_id: str,
        *,
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
    ) -> Flow:
        """Add a node that runs blueprint ``blueprint_id``, mapping context keys in and out."""
        self._claim_id(node_id)
        params: dict[str, Any] = {
            "blueprintId": _check_id(blueprint_id, f"subflow node {node_id!r}: blueprint_id")
        }
        if inputs is not None:
            params["inputs"] = dict(inputs)
        if outputs is not None:
            params["outputs"] = dict(outputs)
        self._add_node(node_id, SUBFLOW, params)
        return self

    def set_cycle_entry_point(self, node_id: str) -> Flow:
        """Mark ``node_id`` as where a cycle is entered (``metadata["cycleEntryPoints"]``)."""
        _check_id(node_id, "cycle entry point")
        entries: list[Any] = self._metadata.setdefault("cycleEntryPoints", [])
        if node_id not in entries:
            entries.append(node_id)
        return self

    # -- output ------------------------------------------------------------------------------

    def _map_source(self, node_id: str) -> str:
        b = self._batches.get(node_id)
        return b.gather_id if b else node_id

    def _map_target(self, node_id: str) -> str:
        b = self._batches.get(node_id)
        return b.scatter_id if b else node_id

    def to_blueprint(self) -> WorkflowBlueprint:
        """A new validated, immutable blueprint of the flow as it is now.

        Raises ``ValueError`` for an empty flow or a loop whose start/end node is missing, and
        :class:`~flowcraft.errors.BlueprintValidationError` for edges, fallbacks or cycle entry
        points naming unknown nodes.
        """
        if not self._nodes:
            raise ValueError(f"flow {self._id!r} has no nodes")
        for spec in self._loops.values():
            for role, ref in (("start", spec.start), ("end", spec.end)):
                if ref not in self._node_ids and ref not in self._batches:
                    raise ValueError(
                        f"loop {spec.loop_id!r}: {role} node {ref!r} does not exist in flow "
                        f"{self._id!r}"
                    )

        nodes: list[dict[str, Any]] = []
        for n in self._nodes:
            raw = n.model_dump(by_alias=True, exclude_defaults=True)
            fb = n.config.fallback
            if fb is not None and fb in self._batches:
                raw.setdefault("config", {})["fallback"] = self._map_target(fb)
            nodes.append(raw)

        edges: list[dict[str, Any]] = []
        for i, e in enumerate(self._edges):
            raw = e.model_dump(by_alias=True, exclude_none=True)
            raw["source"] = self._map_source(e.source)
            raw["target"] = self._map_target(e.target)
            loop = self._loops.get(e.source)
            if loop is not None and raw.get("action") is None and not self._is_continue(i):
                raw["action"] = "break"
            edges.append(raw)
        seen: dict[str, int] = {}
        for i, raw in enumerate(edges):
            key = f"{raw['source']}->{raw['target']}#{raw.get('action') or ''}"
            if key in seen:
                raise ValueError(
                    f"flow {self._id!r}: edges[{seen[key]}] and edges[{i}] are both "
                    f"{raw['source']!r} -> {raw['target']!r}"
                    + (f" with action {raw['action']!r}" if raw.get("action") else "")
                )
            seen[key] = i

        metadata = copy.deepcopy(self._metadata)
        entries = metadata.get("cycleEntryPoints")
        if isinstance(entries, list):
            metadata["cycleEntryPoints"] = [
                self._map_target(x) if isinstance(x, str) else x for x in entries
            ]
        raw_bp: dict[str, Any] = {"id": self._id, "nodes": nodes, "edges": edges}
        if metadata:
            raw_bp["metadata"] = metadata
        return load_blueprint(copy.deepcopy(raw_bp))

    def _is_continue(self, edge_index: int) -> bool:
        """True for a ``loop -> start`` continue edge that :meth:`loop` added."""
        return edge_index in self._continue_edges

    @property
    def registry(self) -> dict[str, NodeFunction | type[BaseNode]]:
        """``uses`` key -> implementation for every implementation handed to this flow.

        A fresh dict each time; string implementations and built-in types have no entry.
        """
        return dict(self._registry)

    def to_graph_representation(self) -> UIGraph:
        """A drawing-friendly view of the flow.

        Each loop controller is dropped: its ``continue`` edge becomes a direct
        ``end -> start`` edge marked ``data["isLoopback"]`` and its break edges leave from
        ``end``. Each batch's scatter/gather pair becomes a single ``batch-worker`` node named
        by the batch id.
        """
        if not self._nodes:
            return UIGraph()
        bp = self.to_blueprint()
        ui_id: dict[str, str] = {}
        batch_by_scatter: dict[str, _BatchSpec] = {}
        gathers: set[str] = set()
        for b in self._batches.values():
            ui_id[b.scatter_id] = b.batch_id
            ui_id[b.gather_id] = b.batch_id
            batch_by_scatter[b.scatter_id] = b
            gathers.add(b.gather_id)

        def ui(node_id: str) -> str:
            return ui_id.get(node_id, node_id)

        nodes: list[dict[str, Any]] = []
        for n in bp.nodes:
            if n.id in self._loops or n.id in gathers:
                continue
            batch = batch_by_scatter.get(n.id)
            if batch is not None:
                nodes.append(
                    {
                        "id": batch.batch_id,
                        "type": "batch-worker",
                        "data": {
                            "workerUsesKey": batch.worker_key,
                            "inputKey": batch.input_key,
                            "outputKey": batch.output_key,
                        },
                    }
                )
                continue
            data: dict[str, Any] = {"label": n.id}
            if n.inputs is not None:
                data["inputs"] = copy.deepcopy(n.inputs)
            config = n.config.model_dump(by_alias=True, exclude_defaults=True)
            if config:
                data["config"] = config
            nodes.append(
                {
                    "id": n.id,
                    "uses": n.uses,
                    "params": copy.deepcopy(n.params),
                    "data": data,
                    "type": n.uses,
                }
            )

        edges: list[dict[str, Any]] = []
        for i, e in enumerate(bp.edges):
            loop_in = self._loops.get(e.target)
            loop_out = self._loops.get(e.source)
            if e.source in batch_by_scatter and e.target == batch_by_scatter[e.source].gather_id:
                continue  # the internal scatter -> gather edge
            if loop_in is not None:
                cond = loop_in.condition
                edges.append(
                    {
                        "source": ui(e.source),
                        "target": ui(loop_in.start),
                        "data": {
                            "isLoopback": True,
                            "condition": cond,
                            "label": f"continue if: {cond}",
                        },
                    }
                )
                continue
            if loop_out is not None:
                if self._is_continue(i):
                    continue
                source = ui(self._map_source(loop_out.end))
            else:
                source = ui(e.source)
            edge: dict[str, Any] = {"source": source, "target": ui(e.target)}
            for name in ("action", "condition", "transform"):
                value = getattr(e, name)
                if value is not None:
                    edge[name] = value
            edge["data"] = {"label": e.action} if e.action else {}
            edges.append(edge)
        return UIGraph(nodes=nodes, edges=edges)


def create_flow(flow_id: str, **kw: Any) -> Flow:
    """Alias constructor: ``create_flow("id", version="1")`` is ``Flow("id", version="1")``."""
    return Flow(flow_id, **kw)
