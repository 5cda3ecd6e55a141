"""A worker's decoded copy of a run, kept between jobs.

Without it every job would read, decode and re-encode the whole run (O(run size) per node, so
quadratic over a long chain). A :class:`RunView` holds the run's user context, its
:class:`~flowcraft.state.RunState` and run record at a known version; a job refreshes it with
only the keys changed since (stores that can tell, see :class:`IncrementalContext`), applies its
outcome to a private :meth:`RunView.fork`, commits exactly the keys that differ
(:meth:`RunView.engine_ops`) and, when the commit succeeded, :meth:`RunView.adopt`\\ s the fork.
A failed commit leaves the view as it was. The store stays the only source of truth: every
commit is still a compare-and-set on the version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from ..context import InMemoryContext, PatchOperation
from ..state import BatchState, NodeState, RunState
from . import statekeys as sk
from .contracts import Changes, CommitResult, IncrementalContext, Snapshot


def clone(value: Any) -> Any:
    """A copy of a JSON-like value deep enough that changing it never changes ``value``."""
    t = type(value)
    if t is dict:
        return {k: clone(v) for k, v in value.items()}
    if t is list:
        return [clone(v) for v in value]
    return value


class SnapshotContext(InMemoryContext):
    """The context a node sees in a worker: reads hand out copies of lists and dicts, so a
    node that changes a value it read (without ``set``) cannot alter the worker's cached run."""

    __slots__ = ()

    async def get(self, key: str, default: Any = None) -> Any:
        """See :meth:`AsyncContext.get` (a copy of mutable values)."""
        return clone(self.data.get(key, default))

    async def to_dict(self) -> dict[str, Any]:
        """See :meth:`AsyncContext.to_dict` (copies)."""
        return clone(self.data)  # type: ignore[no-any-return]


class Tracked(dict[str, Any]):
    """A dict that records every key written, removed or (with ``copier``) read: values are
    then copied on first access, so objects shared with another state are never changed.
    Lets a fork of a large run cost what the transition touches, not the run's size."""

    __slots__ = ("copier", "touched")

    def __init__(self, data: Mapping[str, Any], copier: Any = None) -> None:
        super().__init__(data)
        self.touched: set[str] = set()
        self.copier = copier

    def __getitem__(self, key: str) -> Any:
        if self.copier is not None and key not in self.touched:
            value = self.copier(dict.__getitem__(self, key))
            dict.__setitem__(self, key, value)
            self.touched.add(key)
            return value
        return dict.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """See dict.get (copies on first access like ``d[key]``)."""
        return self[key] if key in self else default  # noqa: SIM401 (self.get is this)

    def __setitem__(self, key: str, value: Any) -> None:
        self.touched.add(key)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        self.touched.add(key)
        dict.__delitem__(self, key)

    def pop(self, key: str, *default: Any) -> Any:
        """See dict.pop (records ``key``)."""
        self.touched.add(key)
        return dict.pop(self, key, *default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        """See dict.setdefault (records ``key``)."""
        if key not in self:
            self[key] = default
        return self[key]


def _copy_node(ns: NodeState) -> NodeState:
    return NodeState(
        ns.status,
        ns.iteration,
        ns.attempts,
        ns.action,
        ns.error,
        ns.unresolved,
        ns.taken,
        ns.counted,
    )


def _copy_batch(bs: BatchState) -> BatchState:
    return BatchState(
        bs.items,
        bs.chunk,
        bs.policy,
        bs.worker,
        bs.released,
        bs.done,
        list(bs.results),
        list(bs.item_status),
    )


def _node_changed(a: NodeState, b: NodeState) -> bool:
    return (
        a.status != b.status
        or a.iteration != b.iteration
        or a.attempts != b.attempts
        or a.action != b.action
        or a.error != b.error
    )


def _touched(d: dict[str, Any]) -> Iterable[str]:
    return d.touched if isinstance(d, Tracked) else d.keys() | set()


def _diff_nodes(
    ops: list[PatchOperation],
    old: dict[str, NodeState],
    new: dict[str, NodeState],
    keys: Iterable[str],
) -> None:
    for k in keys:
        ns = dict.get(new, k)
        o = dict.get(old, k)
        if ns is None:
            if o is not None:
                ops.append(PatchOperation("delete", sk.NODE_PREFIX + k))
        elif o is None or _node_changed(o, ns):
            ops.append(PatchOperation("set", sk.NODE_PREFIX + k, ns.to_dict()))
    if not isinstance(new, Tracked):
        for k in old:
            if k not in new:
                ops.append(PatchOperation("delete", sk.NODE_PREFIX + k))


def _diff_plain(
    ops: list[PatchOperation],
    prefix: str,
    old: dict[str, Any],
    new: dict[str, Any],
    keys: Iterable[str],
) -> None:
    missing = _MISSING
    for k in keys:
        v = dict.get(new, k, missing)
        o = dict.get(old, k, missing)
        if v is missing:
            if o is not missing:
                ops.append(PatchOperation("delete", prefix + k))
        elif o is missing or o != v:
            ops.append(PatchOperation("set", prefix + k, v))
    if not isinstance(new, Tracked):
        for k in old:
            if k not in new:
                ops.append(PatchOperation("delete", prefix + k))


def _diff_inputs(
    ops: list[PatchOperation],
    old: dict[str, dict[str, Any]],
    new: dict[str, dict[str, Any]],
    keys: Iterable[str],
) -> None:
    for k in keys:
        slot = dict.get(new, k)
        was = dict.get(old, k)
        if slot is was or slot == was:
            continue
        if slot:
            ops.append(PatchOperation("set", sk.IN_PREFIX + k, slot))
        elif was:
            ops.append(PatchOperation("delete", sk.IN_PREFIX + k))
    if not isinstance(new, Tracked):
        for k, was in old.items():
            if was and k not in new:
                ops.append(PatchOperation("delete", sk.IN_PREFIX + k))


_MISSING: Any = object()


class RunView:
    """A decoded run at ``version``: user context ``data``, ``state`` and run record ``rec``.

    ``lock`` serialises fork, commit and adopt among this worker's jobs of the run (so they do
    not race each other's compare-and-set); loads need no lock (:meth:`apply` ignores replies
    older than the view).
    """

    __slots__ = ("data", "epoch", "lock", "pending", "rec", "state", "version")

    def __init__(
        self,
        version: int,
        epoch: str,
        data: dict[str, Any],
        state: RunState,
        rec: dict[str, Any],
    ) -> None:
        self.version = version
        self.epoch = epoch
        self.data = data
        self.state = state
        self.rec = rec
        self.lock = asyncio.Lock()
        self.pending: list[Any] = []
        """Outcomes waiting for the next group commit (see the adapter)."""

    @classmethod
    def from_snapshot(cls, snap: Snapshot, epoch: str = "") -> RunView | None:
        """The view of a full snapshot; None when the run does not exist."""
        dec = sk.decode(snap.data)
        if dec is None:
            return None
        return cls(snap.version, epoch, sk.user_context(snap.data), dec[0], dec[1])

    def reset(self, other: RunView) -> None:
        """Take ``other``'s content (a full reload), keeping this view's lock."""
        self.version = other.version
        self.epoch = other.epoch
        self.data = other.data
        self.state = other.state
        self.rec = other.rec

    def apply(self, ch: Changes) -> bool:
        """Bring the view to ``ch.version`` (False: ``ch`` is a full reload or of another
        epoch; build a new view instead). Replies not newer than the view are ignored."""
        if ch.full or ch.epoch != self.epoch:
            return False
        if ch.version <= self.version:
            return True
        st, data = self.state, self.data
        edges_changed = False
        for k, v in ch.sets.items():
            if not k.startswith(sk.PREFIX):
                data[k] = v
            elif k == sk.RUN_KEY:
                self.rec = dict(v)
                sk.apply_run_record(st, v)
            else:
                edges_changed |= sk.apply_engine_key(st, k, v)
        for k in ch.deletes:
            if not k.startswith(sk.PREFIX):
                data.pop(k, None)
            else:
                edges_changed |= sk.apply_engine_key(st, k, None)
        if edges_changed:
            for ns in st.nodes.values():
                ns.counted = False  # join counters are recounted from the new edges
        self.version = ch.version
        return True

    def fork(self) -> tuple[RunState, dict[str, Any]]:
        """A private copy of the state and the user context to apply one outcome to: node
        records and batches are copied when first touched (:class:`Tracked`), so
        :meth:`engine_ops` only looks at what the transition touched. Input slots are shared:
        use a kernel with ``shared_inputs=True``."""
        st = self.state
        new = RunState(
            execution_id=st.execution_id,
            blueprint_id=st.blueprint_id,
            blueprint_version=st.blueprint_version,
            status=st.status,
            nodes=Tracked(st.nodes, _copy_node),
            edges=Tracked(st.edges),
            inputs=Tracked(st.inputs),
            awaiting=dict(st.awaiting),
            errors=list(st.errors),
            batches=Tracked(st.batches, _copy_batch),
            fallbacks=dict(st.fallbacks),
            started=st.started,
            seq=st.seq,
        )
        return new, dict(self.data)

    def exec_state(self, node_id: str) -> RunState:
        """A copy of the state for executing ``node_id``: only that node's record and batch are
        private (execution marks them running); everything else is shared, read-only."""
        st = self.state
        nodes = dict(st.nodes)
        ns = nodes.get(node_id)
        if ns is not None:
            nodes[node_id] = _copy_node(ns)
        batches = st.batches
        if node_id in batches:
            batches = dict(batches)
            batches[node_id] = _copy_batch(batches[node_id])
        return RunState(
            execution_id=st.execution_id,
            blueprint_id=st.blueprint_id,
            blueprint_version=st.blueprint_version,
            status=st.status,
            nodes=nodes,
            edges=st.edges,
            inputs=st.inputs,
            awaiting=st.awaiting,
            errors=st.errors,
            batches=batches,
            fallbacks=st.fallbacks,
            started=st.started,
            seq=st.seq,
        )

    def engine_ops(self, new: RunState, rec: Mapping[str, Any]) -> list[PatchOperation]:
        """The engine-key operations turning this view's state into ``new`` (a :meth:`fork`
        whose run record is ``rec``): changed keys only, the run record always. Only keys the
        fork's :class:`Tracked` dicts saw touched are compared."""
        old = self.state
        ops = [PatchOperation("set", sk.RUN_KEY, sk.run_record(new, rec))]
        _diff_nodes(ops, old.nodes, new.nodes, _touched(new.nodes))
        _diff_plain(ops, sk.EDGE_PREFIX, old.edges, new.edges, _touched(new.edges))
        _diff_inputs(ops, old.inputs, new.inputs, _touched(new.inputs))
        ob = old.batches
        for k in _touched(new.batches):
            bs = dict.get(new.batches, k)
            if bs is None:
                if k in ob:
                    ops.append(PatchOperation("delete", sk.BATCH_PREFIX + k))
            elif ob.get(k) != bs:
                ops.append(PatchOperation("set", sk.BATCH_PREFIX + k, bs.to_dict()))
        return ops

    def full_engine_ops(self, new: RunState, rec: Mapping[str, Any]) -> list[PatchOperation]:
        """:meth:`engine_ops` computed by comparing every key (for verification)."""
        old_keys = sk.encode(self.state, self.rec)
        new_keys = sk.encode(new, rec)
        return sk.diff(old_keys, new_keys)

    def adopt(
        self, version: int, state: RunState, data: dict[str, Any], rec: dict[str, Any]
    ) -> None:
        """After a successful commit at ``version``: the fork becomes the view (with plain
        dicts again: the view is only read)."""
        for name in ("nodes", "edges", "inputs", "batches"):
            d = getattr(state, name)
            if type(d) is Tracked:
                setattr(state, name, dict(d))
        self.version = version
        self.state = state
        self.data = data
        self.rec = rec


__all__ = ["Changes", "CommitResult", "IncrementalContext", "RunView", "SnapshotContext", "clone"]
