"""Encoding of a :class:`~flowcraft.state.RunState` as context keys under the ``_fc.`` prefix.

Stored beside the user's keys in the same run record, so one atomic commit covers a node's
context writes, its completion and every join/edge decision it caused. Only changed keys travel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ..context import PatchOperation
from ..state import BatchState, NodeState, RunState

PREFIX: Final = "_fc."
RUN_KEY: Final = "_fc.run"
_NODE: Final = "_fc.node."
_EDGE: Final = "_fc.edge."
_IN: Final = "_fc.in."
_BATCH: Final = "_fc.batch."


def is_engine_key(key: str) -> bool:
    """True for keys the engine owns (hidden from the user-visible context)."""
    return key.startswith(PREFIX)


def user_context(data: Mapping[str, Any]) -> dict[str, Any]:
    """The user-visible context: every key that is not an engine key."""
    return {k: v for k, v in data.items() if not k.startswith(PREFIX)}


def encode(state: RunState, extra_run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """RunState -> engine keys; ``extra_run`` carries run-record fields the state does not
    hold (createdAt, updatedAt, parent); the state's own fields always win."""
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
    out: dict[str, Any] = {RUN_KEY: run}
    for k, ns in state.nodes.items():
        out[_NODE + k] = ns.to_dict()
    for k, taken in state.edges.items():
        out[_EDGE + k] = taken
    for k, slot in state.inputs.items():
        if slot:
            out[_IN + k] = slot
    for k, bs in state.batches.items():
        out[_BATCH + k] = bs.to_dict()
    return out


def decode(data: Mapping[str, Any]) -> tuple[RunState, dict[str, Any]] | None:
    """Engine keys -> (RunState, the raw run record); None when the run does not exist."""
    run = data.get(RUN_KEY)
    if not isinstance(run, Mapping):
        return None
    st = RunState(
        execution_id=run["executionId"],
        blueprint_id=run["blueprintId"],
        blueprint_version=run.get("blueprintVersion"),
        status=run.get("status", "running"),
        awaiting=dict(run.get("awaiting") or {}),
        errors=list(run.get("errors") or []),
        fallbacks=dict(run.get("fallbacks") or {}),
        started=bool(run.get("started", False)),
        seq=int(run.get("seq", 0)),
    )
    for k, v in data.items():
        if not k.startswith(PREFIX) or k == RUN_KEY:
            continue
        if k.startswith(_NODE):
            st.nodes[k[len(_NODE) :]] = NodeState(
                status=v["status"],
                iteration=v.get("iteration", 0),
                attempts=v.get("attempts", 0),
                action=v.get("action"),
                error=v.get("error"),
            )
        elif k.startswith(_EDGE):
            st.edges[k[len(_EDGE) :]] = bool(v)
        elif k.startswith(_IN):
            st.inputs[k[len(_IN) :]] = dict(v)
        elif k.startswith(_BATCH):
            st.batches[k[len(_BATCH) :]] = BatchState.from_dict(v)
    return st, dict(run)


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[PatchOperation]:
    """Operations turning the engine keys ``old`` into ``new`` (changed keys only)."""
    ops = [PatchOperation("set", k, v) for k, v in new.items() if k not in old or old[k] != v]
    ops.extend(PatchOperation("delete", k) for k in old if k not in new)
    return ops


def engine_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """Only the engine keys of a snapshot."""
    return {k: v for k, v in data.items() if k.startswith(PREFIX)}
