"""Encoding of a :class:`~flowcraft.state.RunState` as context keys under the ``_fc.`` prefix.

Stored beside the user's keys in the same run record, so one atomic commit covers a node's
context writes, its completion and every join/edge decision it caused. Only changed keys travel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ..context import PatchOperation
from ..state import ENGINE_PREFIX, BatchState, NodeState, RunState

PREFIX: Final = ENGINE_PREFIX
RUN_KEY: Final = "_fc.run"
NODE_PREFIX: Final = "_fc.node."
EDGE_PREFIX: Final = "_fc.edge."
IN_PREFIX: Final = "_fc.in."
BATCH_PREFIX: Final = "_fc.batch."


def is_engine_key(key: str) -> bool:
    """True for keys the engine owns (hidden from the user-visible context)."""
    return key.startswith(PREFIX)


def user_context(data: Mapping[str, Any]) -> dict[str, Any]:
    """The user-visible context: every key that is not an engine key."""
    return {k: v for k, v in data.items() if not k.startswith(PREFIX)}


def run_record(state: RunState, extra_run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``_fc.run`` record: run-level state fields over ``extra_run`` (createdAt,
    updatedAt, parent: fields the state does not hold); the state's own fields win."""
    run: dict[str, Any] = dict(extra_run) if extra_run else {}
    run |= {
        "executionId": state.execution_id,
        "blueprintId": state.blueprint_id,
        "blueprintVersion": state.blueprint_version,
        "status": state.status,
        "started": state.started,
        "awaiting": state.awaiting,
        "errors": state.errors,
        "fallbacks": state.fallbacks,
        "seq": state.seq,
    }
    return run


def encode(state: RunState, extra_run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """RunState -> engine keys (see :func:`run_record` for ``extra_run``)."""
    out: dict[str, Any] = {RUN_KEY: run_record(state, extra_run)}
    for k, ns in state.nodes.items():
        out[NODE_PREFIX + k] = ns.to_dict()
    for k, taken in state.edges.items():
        out[EDGE_PREFIX + k] = taken
    for k, slot in state.inputs.items():
        if slot:
            out[IN_PREFIX + k] = slot
    for k, bs in state.batches.items():
        out[BATCH_PREFIX + k] = bs.to_dict()
    return out


def apply_run_record(st: RunState, run: Mapping[str, Any]) -> None:
    """Set the run-level fields of ``st`` from a ``_fc.run`` record."""
    st.execution_id = run["executionId"]
    st.blueprint_id = run["blueprintId"]
    st.blueprint_version = run.get("blueprintVersion")
    st.status = run.get("status", "running")
    st.awaiting = dict(run.get("awaiting") or {})
    st.errors = list(run.get("errors") or [])
    st.fallbacks = dict(run.get("fallbacks") or {})
    st.started = bool(run.get("started", False))
    st.seq = int(run.get("seq", 0))


def apply_engine_key(st: RunState, key: str, value: Any) -> bool:
    """Set (``value``) or remove (None) one engine key other than ``_fc.run`` in ``st``;
    True when it was an edge (join counters must be recounted)."""
    if key.startswith(NODE_PREFIX):
        k = key[len(NODE_PREFIX) :]
        if value is None:
            st.nodes.pop(k, None)
        else:
            st.nodes[k] = NodeState(
                status=value["status"],
                iteration=value.get("iteration", 0),
                attempts=value.get("attempts", 0),
                action=value.get("action"),
                error=value.get("error"),
            )
    elif key.startswith(EDGE_PREFIX):
        k = key[len(EDGE_PREFIX) :]
        if value is None:
            st.edges.pop(k, None)
        else:
            st.edges[k] = bool(value)
        return True
    elif key.startswith(IN_PREFIX):
        k = key[len(IN_PREFIX) :]
        if value is None:
            st.inputs.pop(k, None)
        else:
            st.inputs[k] = dict(value)
    elif key.startswith(BATCH_PREFIX):
        k = key[len(BATCH_PREFIX) :]
        if value is None:
            st.batches.pop(k, None)
        else:
            st.batches[k] = BatchState.from_dict(value)
    return False


def decode(data: Mapping[str, Any]) -> tuple[RunState, dict[str, Any]] | None:
    """Engine keys -> (RunState, the raw run record); None when the run does not exist."""
    run = data.get(RUN_KEY)
    if not isinstance(run, Mapping):
        return None
    st = RunState(execution_id=run["executionId"], blueprint_id=run["blueprintId"])
    apply_run_record(st, run)
    for k, v in data.items():
        if k.startswith(PREFIX) and k != RUN_KEY:
            apply_engine_key(st, k, v)
    return st, dict(run)


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[PatchOperation]:
    """Operations turning the engine keys ``old`` into ``new`` (changed keys only)."""
    ops = [PatchOperation("set", k, v) for k, v in new.items() if k not in old or old[k] != v]
    ops.extend(PatchOperation("delete", k) for k in old if k not in new)
    return ops


def engine_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """Only the engine keys of a snapshot."""
    return {k: v for k, v in data.items() if k.startswith(PREFIX)}
