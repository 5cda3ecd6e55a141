"""Node leases and the worker's cached run views.

A lease on ``run:node:iteration`` keeps two deliveries from executing one node at once. Stores
with an atomic incremental API (:class:`~flowcraft.distributed.view.IncrementalContext`) take
the lease together with the read and release it together with the commit; plain stores use the
coordination store. :class:`StoreAccess` is that choice, made once per run context.
"""

from __future__ import annotations

import logging

from ..context import PatchOperation
from .base import EngineBase
from .contracts import CoordinationStore, DistributedContext, Snapshot
from .view import Changes, IncrementalContext, RunView

log = logging.getLogger("flowcraft.distributed")


class _Lease:
    """A node lease held by one delivery: ``key``, ``token``; ``released`` once given back."""

    __slots__ = ("key", "released", "token")

    def __init__(self, key: str, token: str) -> None:
        self.key = key
        self.token = token
        self.released = False


class _LeaseHeld(Exception):
    """The node's lease is held by another delivery."""


def _esc(part: str) -> str:
    return part.replace("%", "%25").replace(":", "%3A")


def lease_key(run_id: str, job_node_id: str, iteration: int) -> str:
    """The coordination key of the lease on one node (or batch item) of one loop iteration;
    every id component is escaped, so no two (run, node) pairs share a key."""
    return f"flowcraft:lease:{_esc(run_id)}:{_esc(job_node_id)}:{iteration}"


class StoreAccess:
    """How the engine reads, leases and commits one run: with a plain store (the coordination
    store holds leases, every read is a full load) or, when the run context implements
    :class:`~flowcraft.distributed.view.IncrementalContext`, atomically (the lease travels
    with the read and the commit, reads return only what changed)."""

    __slots__ = ("coord", "ctx", "ttl")

    atomic: bool = False
    """True when a commit can take successor leases in the same request."""

    def __init__(self, ctx: DistributedContext, coord: CoordinationStore, ttl: float) -> None:
        self.ctx = ctx
        self.coord = coord
        self.ttl = ttl

    async def read(self, since: int, epoch: str, lease: _Lease | None) -> Changes:
        """The run since ``since`` (full when the store cannot tell); with ``lease``, take it
        first. Raises :class:`_LeaseHeld` when another delivery holds the lease."""
        if lease is not None and not await self.coord.set_if_not_exist(
            lease.key, lease.token, self.ttl
        ):
            lease.released = True  # never held
            raise _LeaseHeld()
        snap = await self.ctx.load()
        return Changes(snap.version, "", True, snap.data)

    async def commit(
        self,
        ops: list[PatchOperation],
        version: int,
        epoch: str,
        release: list[tuple[str, str]],
        take: list[tuple[str, str]],
        status: str,
    ) -> tuple[bool, list[bool], Changes | None]:
        """Commit ``ops`` at ``version`` (``status``: the run's status after it): (committed,
        which of ``take`` were leased with it, the changes since ``version`` when the store
        returned them with a refusal). A plain store takes no lease with the commit and
        releases none (the caller does)."""
        ok = await self.ctx.commit(ops, version, status)
        return ok, [False] * len(take), None

    async def release(self, lease: _Lease) -> None:
        """Give ``lease`` back (only if still ours)."""
        lease.released = True
        await self.coord.compare_and_delete(lease.key, lease.token)

    async def extend(self, key: str) -> None:
        """Renew the lease ``key`` for another TTL."""
        await self.coord.extend_ttl(key, self.ttl)

    async def held(self, key: str) -> bool:
        """True when some delivery holds the lease ``key``."""
        return await self.coord.get(key) is not None


class _AtomicAccess(StoreAccess):
    """:class:`StoreAccess` of an :class:`~flowcraft.distributed.view.IncrementalContext`."""

    __slots__ = ()
    atomic = True

    @property
    def inc(self) -> IncrementalContext:
        """The run context as its incremental protocol."""
        return self.ctx  # type: ignore[return-value]

    async def read(self, since: int, epoch: str, lease: _Lease | None) -> Changes:
        """See :meth:`StoreAccess.read` (lease and read in one request)."""
        ch = await self.inc.load_since(
            since, epoch, (lease.key, lease.token, self.ttl) if lease else None
        )
        if ch is None:
            assert lease is not None
            lease.released = True  # never held
            raise _LeaseHeld()
        return ch

    async def commit(
        self,
        ops: list[PatchOperation],
        version: int,
        epoch: str,
        release: list[tuple[str, str]],
        take: list[tuple[str, str]],
        status: str,
    ) -> tuple[bool, list[bool], Changes | None]:
        """See :meth:`StoreAccess.commit` (releases ``release`` and takes ``take`` with it)."""
        r = await self.inc.commit_release(ops, version, release, take, self.ttl, epoch, status)
        if not r.ok:
            return False, [], r.changes
        return True, list(r.taken), None

    async def release(self, lease: _Lease) -> None:
        """See :meth:`StoreAccess.release`."""
        lease.released = True
        await self.inc.release_lease(lease.key, lease.token)

    async def extend(self, key: str) -> None:
        """See :meth:`StoreAccess.extend`."""
        await self.inc.extend_lease(key, self.ttl)

    async def held(self, key: str) -> bool:
        """See :meth:`StoreAccess.held`."""
        return await self.inc.lease_holder(key) is not None


_ACCESS: dict[type, type[StoreAccess]] = {}


def store_access(ctx: DistributedContext, coord: CoordinationStore, ttl: float) -> StoreAccess:
    """The :class:`StoreAccess` for ``ctx`` (the protocol check is made once per context type:
    it is slow)."""
    t = type(ctx)
    kind = _ACCESS.get(t)
    if kind is None:
        kind = _AtomicAccess if isinstance(ctx, IncrementalContext) else StoreAccess
        if not hasattr(t, "__getattr__"):  # a delegating wrapper answers per instance
            _ACCESS[t] = kind
    return kind(ctx, coord, ttl)


class LeaseLayer(EngineBase):
    """See the module docstring."""

    def _access(self, ctx: DistributedContext) -> StoreAccess:
        return store_access(ctx, self.coordination, self.lease_seconds)

    def _new_token(self) -> str:
        return f"{self._token_prefix}{next(self._tokens)}"

    @staticmethod
    def _lease_key(run_id: str, job_node_id: str, iteration: int) -> str:
        return lease_key(run_id, job_node_id, iteration)

    async def _release_lease(self, ctx: DistributedContext, lease: _Lease) -> None:
        await self._access(ctx).release(lease)

    async def _extend_lease(self, ctx: DistributedContext, key: str) -> None:
        await self._access(ctx).extend(key)

    async def _lease_held(self, run_id: str, key: str) -> bool:
        """True when some delivery holds the lease ``key`` of run ``run_id``."""
        return await self._access(await self.create_context(run_id)).held(key)

    def _cached_view(self, run_id: str) -> RunView | None:
        views = self._views
        view = views.get(run_id)
        if view is not None:
            views.move_to_end(run_id)
        return view

    def _keep_view(self, run_id: str, view: RunView) -> RunView:
        if self.view_cache > 0:
            views = self._views
            views[run_id] = view
            views.move_to_end(run_id)
            while len(views) > self.view_cache:
                views.popitem(last=False)
        return view

    async def _view(
        self, ctx: DistributedContext, run_id: str, lease: _Lease | None = None
    ) -> RunView | None:
        """The run, current as of now (only what changed since this worker last saw it is
        read when the store can tell). With ``lease``, the lease is taken first (in the same
        request when possible): :class:`_LeaseHeld` when another delivery holds it."""
        view = self._cached_view(run_id)
        since, epoch = (view.version, view.epoch) if view is not None else (0, "")
        ch = await self._access(ctx).read(since, epoch, lease)
        if view is not None and view.apply(ch):
            return view
        return self._full_view(run_id, view, ch)

    def _full_view(self, run_id: str, view: RunView | None, ch: Changes) -> RunView | None:
        fresh = RunView.from_snapshot(Snapshot(ch.sets, ch.version), ch.epoch)
        if fresh is None:
            self._views.pop(run_id, None)
            return None
        if view is None:
            return self._keep_view(run_id, fresh)
        view.reset(fresh)
        return view

    async def _refresh(self, ctx: DistributedContext, view: RunView, run_id: str) -> bool:
        """Bring ``view`` up to date after a lost compare-and-set; False when the run is gone."""
        ch = await self._access(ctx).read(view.version, view.epoch, None)
        if view.apply(ch):
            return True
        return self._full_view(run_id, view, ch) is not None
