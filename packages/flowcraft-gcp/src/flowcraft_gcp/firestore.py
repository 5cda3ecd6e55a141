"""Run state and coordination in Firestore (``google.cloud.firestore.AsyncClient``).

Layout (``prefix`` namespaces the collections, e.g. one per deployment)::

    {prefix}runs/{run doc id}                 one document per run:
        v  int      version, +1 per commit (the compare-and-set)
        st str      status (from ``commit(status=...)``)
        a  bool     true while the run is not final (the active-run index: an equality
                    query on ``a`` ordered by document id, paged with a cursor)
        u  float    time of the last commit (epoch seconds)
        d  map      small values: {field name: encoded JSON text}
        s  map      spilled values: {field name: encoded size}
        n  int      bytes held inline in ``d`` (names + texts)
    {prefix}runs/{run doc id}/values/{field name}
        k  str      the context key;  t str  its encoded value;  w int  version written
    {prefix}coord/{key doc id}
        v  str      value;  c  int  counter (``increment``);  e  float  expiry (epoch s);
        expireAt    timestamp for a Firestore TTL policy (deletes lazily; ``e`` is checked)

Why: a document holds at most 1 MiB. Values up to :data:`INLINE_MAX` bytes live in the run
document while its inline total stays under :data:`INLINE_BUDGET`; larger values, and values
past the budget, are one document each in the run's ``values`` subcollection (a value's own
limit is :data:`MAX_VALUE_BYTES`). So a run's context can be far larger than 1 MiB, and a
commit writes only the keys it changes (field-path updates of ``d``/``s``, spilled documents
set or deleted), all in one transaction with the version check.

Keys are arbitrary strings: a context key becomes the field name ``"k" + percent-encoding``
(never empty, never ``__x__``-reserved, also a valid document id), always addressed through
:class:`~google.cloud.firestore_v1.field_path.FieldPath` (dots, backticks and slashes never
split a path; upstream's ``update()`` turned ``_outputs.x`` into a nested map). Names longer
than 1000 bytes become ``"h" + sha256`` and the value records its key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final
from urllib.parse import quote, unquote

from flowcraft.context import PatchOperation
from flowcraft.distributed import Snapshot, decode_value, encode_value
from flowcraft.state import FINAL_STATUSES
from google.api_core import exceptions as gexc
from google.cloud.firestore import (
    DELETE_FIELD,
    AsyncClient,
    AsyncTransaction,
    Increment,
    async_transactional,
)
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath

from .stats import ApiStats

__all__ = [
    "INLINE_BUDGET",
    "INLINE_MAX",
    "MAX_VALUE_BYTES",
    "TRANSACTION_ATTEMPTS",
    "FirestoreCoordinationStore",
    "FirestoreRunContext",
    "FirestoreRunStore",
    "coord_doc_id",
    "field_name",
    "run_doc_id",
]

MAX_VALUE_BYTES: Final = 1_000_000
"""Largest encoded value (bytes of JSON text): one spilled document, under Firestore's 1 MiB."""
INLINE_MAX: Final = 16_384
"""Values larger than this (encoded) always get their own document."""
INLINE_BUDGET: Final = 512_000
"""Bytes of inline values a run document holds at most (the rest spill)."""
TRANSACTION_ATTEMPTS: Final = 50
"""Transaction attempts before giving up (client default 5: under contention on one run
document the emulator fails 6 of 20 concurrent transactions at 5)."""
ROUND_ATTEMPTS: Final = 5
"""Transaction attempts in a row before a commit pauses (see
:meth:`FirestoreRunContext._commit_contended`)."""
_MAX_NAME: Final = 1000


def _quoted(prefix: str, text: str) -> str:
    q = quote(text, safe="")
    if len(q) > _MAX_NAME:
        return "h" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return prefix + q


def field_name(key: str) -> str:
    """The field name (and spilled document id) of context key ``key``."""
    return _quoted("k", key)


def run_doc_id(run_id: str) -> str:
    """The document id of a run: ``r`` + the percent-encoded id (long ids hashed)."""
    return _quoted("r", run_id)


def coord_doc_id(key: str) -> str:
    """The document id of a coordination key: ``c`` + the percent-encoded key (long keys
    hashed)."""
    return _quoted("c", key)


def _key_of(name: str, stored: Any) -> str:
    if isinstance(stored, dict) and "k" in stored:
        return str(stored["k"])
    return unquote(name[1:])


def _path(*parts: str) -> str:
    return FieldPath(*parts).to_api_repr()


class FirestoreRunStore:
    """The runs collection: contexts (:meth:`context`), status reads, the active-run index.

    ``client`` is a ``google.cloud.firestore.AsyncClient`` (it selects the emulator from
    ``FIRESTORE_EMULATOR_HOST``); ``prefix`` is prepended to the collection names.
    ``on_commit(bytes)`` is called after every successful commit with the bytes it wrote.
    """

    def __init__(
        self,
        client: AsyncClient,
        prefix: str = "flowcraft-",
        *,
        on_commit: Callable[[int], None] | None = None,
        transaction_attempts: int = TRANSACTION_ATTEMPTS,
        stats: ApiStats | None = None,
        remembered: int = 1024,
    ) -> None:
        self.client = client
        self.stats = stats or ApiStats()
        self.prefix = prefix
        self.runs = client.collection(f"{prefix}runs")
        self.on_commit = on_commit
        self.transaction_attempts = transaction_attempts
        self.remembered = remembered
        self._seen: OrderedDict[str, tuple[int, Any, dict[str, Any]]] = OrderedDict()

    def remember(self, run_id: str, version: int, update_time: Any, doc: dict[str, Any]) -> None:
        """Keep the run document as read or written at ``version`` (``update_time`` None: the
        run does not exist), so the next commit at that version needs no transaction."""
        if self.remembered <= 0:
            return
        self._seen[run_id] = (version, update_time, doc)
        self._seen.move_to_end(run_id)
        while len(self._seen) > self.remembered:
            self._seen.popitem(last=False)

    def context(self, run_id: str) -> FirestoreRunContext:
        """The run's context."""
        return FirestoreRunContext(self, run_id)

    async def run_statuses(self, run_ids: Sequence[str]) -> dict[str, str | None]:
        """The stored status of each run (None: no such run), in one batched read of the
        ``st`` fields only."""
        refs = [self.runs.document(run_doc_id(r)) for r in run_ids]
        by_id = {run_doc_id(r): r for r in run_ids}
        out: dict[str, str | None] = dict.fromkeys(run_ids)
        self.stats.count("firestore.batch_get")
        async for snap in self.client.get_all(refs, field_paths=["st"]):
            if snap.exists:
                out[by_id[snap.id]] = str((snap.to_dict() or {}).get("st") or "running")
        return out

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """A page of non-final runs (``a == true`` ordered by document id, only the ``k``
        field read) and the next cursor (the last document id; None at the end)."""
        q = self.runs.where(filter=_eq("a", True)).order_by("__name__").select(["k"]).limit(limit)
        if cursor:
            q = q.start_after({"__name__": self.runs.document(cursor)})
        ids: list[str] = []
        last: str | None = None
        self.stats.count("firestore.run_query")
        async for snap in q.stream():
            ids.append(str((snap.to_dict() or {}).get("k") or unquote(snap.id[1:])))
            last = snap.id
        return ids, (last if len(ids) >= limit else None)

    async def mark_published(self, run_id: str, status: str) -> None:
        """Record that the final result was published (field ``pub``)."""
        ref = self.runs.document(run_doc_id(run_id))
        self._seen.pop(run_id, None)
        self.stats.count("firestore.commit")
        try:
            await ref.update({"pub": status})
        except gexc.NotFound:
            pass

    async def delete_run(self, run_id: str) -> int:
        """Delete the run document and its spilled values; returns the documents deleted."""
        ref = self.runs.document(run_doc_id(run_id))
        self._seen.pop(run_id, None)
        n = 0
        async for d in ref.collection("values").list_documents():
            await d.delete()
            n += 1
        await ref.delete()
        return n + 1


def _eq(field: str, value: Any) -> FieldFilter:
    return FieldFilter(field, "==", value)


class FirestoreRunContext:
    """One run's :class:`~flowcraft.distributed.DistributedContext` in Firestore (see the
    module docstring for the layout). ``commit`` writes the changed fields and spilled
    documents and bumps the version, atomically, only at the expected version: one batched
    write under an update-time precondition when the store knows the run document at that
    version (it read or wrote it last: the usual case, no transaction, no lock), otherwise a
    transaction that reads the document and checks the version."""

    def __init__(self, store: FirestoreRunStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.ref = store.runs.document(run_doc_id(run_id))

    # -- DistributedContext ------------------------------------------------------------------

    async def load(self) -> Snapshot:
        """Every key and the version (a run that does not exist: version 0, no keys). One
        document read; with spilled values, a read-only transaction reading the run document
        and those documents together (a consistent snapshot)."""
        self.store.stats.count("firestore.get")
        snap = await self.ref.get()
        if not snap.exists:
            self.store.remember(self.run_id, 0, None, {})
            return Snapshot({}, 0)
        doc = snap.to_dict() or {}
        if not doc.get("s"):
            self.store.remember(self.run_id, int(doc.get("v", 0)), snap.update_time, doc)
            return Snapshot(self._decode(doc, {}), int(doc.get("v", 0)))
        tx = self.store.client.transaction(read_only=True)
        return await _read_consistent(tx, self)

    async def commit(
        self, ops: Sequence[PatchOperation], expected_version: int, status: str | None = None
    ) -> bool:
        """See :class:`~flowcraft.distributed.DistributedContext`."""
        return await self._commit(ops, expected_version, status)

    # -- AsyncContext ------------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` (``default`` when absent)."""
        data = (await self.load()).data
        return data.get(key, default)

    async def set(self, key: str, value: Any) -> None:
        """Write ``key`` unconditionally (a commit at any version)."""
        await self._commit([PatchOperation(op="set", key=key, value=value)], None, None)

    async def has(self, key: str) -> bool:
        """True when ``key`` is stored (also with a None value)."""
        return key in (await self.load()).data

    async def delete(self, key: str) -> bool:
        """Delete ``key``; True when it existed."""
        existed = await self.has(key)
        await self._commit([PatchOperation(op="delete", key=key)], None, None)
        return existed

    async def to_dict(self) -> dict[str, Any]:
        """Every key of the run."""
        return dict((await self.load()).data)

    async def patch(self, operations: list[PatchOperation]) -> None:
        """Apply ``operations`` in order, unconditionally, in one commit."""
        await self._commit(operations, None, None)

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _decode(doc: dict[str, Any], spilled: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, stored in (doc.get("d") or {}).items():
            text = stored["t"] if isinstance(stored, dict) else stored
            out[_key_of(name, stored)] = decode_value(text)
        for name, stored in spilled.items():
            out[_key_of(name, stored)] = decode_value(stored["t"])
        return out

    async def _commit(
        self, ops: Iterable[PatchOperation], expected: int | None, status: str | None
    ) -> bool:
        # Encoded before anything is written: an unstorable value raises SerializationError
        # naming its key, and nothing is written.
        final: dict[str, tuple[str, str | None]] = {}
        for op in ops:
            text = encode_value(op.key, op.value, MAX_VALUE_BYTES) if op.op == "set" else None
            name = field_name(op.key)
            final.pop(name, None)  # keep the order of last writes
            final[name] = (op.key, text)
        store = self.store
        seen = store._seen.get(self.run_id) if expected is not None else None
        if seen is not None and seen[0] == expected:
            written = await self._commit_known(final, seen, status)
        else:
            written = await self._commit_contended(final, expected, status)
        if written is None:
            return False
        if store.on_commit is not None:
            store.on_commit(written)
        return True

    async def _commit_contended(
        self, final: dict[str, tuple[str, str | None]], expected: int | None, status: str | None
    ) -> int | None:
        """The transactional commit, in rounds of :data:`ROUND_ATTEMPTS` attempts (the
        client retries aborted attempts at once, keeping its place in line) with a random,
        growing pause between rounds, :attr:`FirestoreRunStore.transaction_attempts` attempts
        in all. Commits of one run racing each other can abort every attempt in lockstep
        (lock timeouts: the emulator's pessimistic locks under load); the pause lets one
        through, and the others then read the version it wrote and refuse."""
        store = self.store
        per = max(1, min(store.transaction_attempts, ROUND_ATTEMPTS))
        rounds = -(-store.transaction_attempts // per)
        for attempt in range(rounds):
            tx = store.client.transaction(max_attempts=per)
            try:
                return await _commit_tx(tx, self, final, expected, status)
            except ValueError as exc:  # "Failed to commit transaction in N attempts"
                if not isinstance(exc.__cause__, gexc.Aborted) or attempt + 1 == rounds:
                    raise
            await asyncio.sleep(random.uniform(0.0, min(1.0, 0.02 * 2**attempt)))
        raise AssertionError("unreachable")

    async def _commit_known(
        self,
        final: dict[str, tuple[str, str | None]],
        seen: tuple[int, Any, dict[str, Any]],
        status: str | None,
    ) -> int | None:
        """Commit on top of the version this store last read or wrote: one batched write,
        the run document's under a ``last_update_time`` precondition (or ``create`` for a
        new run), so it applies only if nobody wrote the run since. No transaction."""
        version, update_time, doc = seen
        store = self.store
        plan = _plan(doc, update_time is not None, final, version, status, self.run_id)
        batch = store.client.batch()
        if update_time is None:
            batch.create(self.ref, plan.create)
        else:
            opt = store.client.write_option(last_update_time=update_time)
            batch.update(self.ref, plan.update, option=opt)
        plan.apply_values(batch, self.ref)
        store.stats.count("firestore.commit")
        try:
            results = await batch.commit()
        except (gexc.FailedPrecondition, gexc.AlreadyExists, gexc.NotFound, gexc.Aborted):
            store._seen.pop(self.run_id, None)
            return None
        store.remember(self.run_id, version + 1, results[0].update_time, plan.doc)
        return plan.written


class _Plan:
    """The writes of one commit, computed from the run document as last read."""

    def __init__(self) -> None:
        self.update: dict[str, Any] = {}
        self.create: dict[str, Any] = {}
        self.value_sets: dict[str, dict[str, Any]] = {}
        self.value_deletes: set[str] = set()
        self.doc: dict[str, Any] = {}
        self.written = 0

    def apply_values(self, writer: Any, ref: Any) -> None:
        """Add the spilled-value writes to a batch or transaction."""
        values = ref.collection("values")
        for name in self.value_deletes:
            writer.delete(values.document(name))
        for name, data in self.value_sets.items():
            writer.set(values.document(name), data)


def _plan(
    doc: dict[str, Any],
    exists: bool,
    final: dict[str, tuple[str, str | None]],
    version: int,
    status: str | None,
    run_id: str,
) -> _Plan:
    p = _Plan()
    inline: dict[str, Any] = dict(doc.get("d") or {})
    spilled: dict[str, Any] = dict(doc.get("s") or {})
    used = int(doc.get("n", 0))
    upd = p.update
    for name, (key, text) in final.items():
        old = inline.pop(name, None)
        if old is not None:
            used -= len(name) + _stored_size(old)
            upd[_path("d", name)] = DELETE_FIELD
        was_spilled = spilled.pop(name, None) is not None
        if was_spilled:
            upd[_path("s", name)] = DELETE_FIELD
        if text is None:
            if was_spilled:
                p.value_deletes.add(name)
            continue
        hashed = name.startswith("h")
        stored: Any = {"k": key, "t": text} if hashed else text
        size = len(name) + _stored_size(stored)
        p.written += size
        if size <= INLINE_MAX and used + size <= INLINE_BUDGET:
            inline[name] = stored
            used += size
            upd[_path("d", name)] = stored
            if was_spilled:
                p.value_deletes.add(name)
        else:
            spilled[name] = len(text)
            upd[_path("s", name)] = len(text)
            p.value_sets[name] = {"k": key, "t": text, "w": version + 1}
    meta: dict[str, Any] = {"v": version + 1, "n": used, "u": time.time()}
    if status is not None:
        meta["st"] = status
        meta["a"] = status not in FINAL_STATUSES
    elif not exists:
        meta["st"], meta["a"] = "running", True
    upd.update(meta)
    # ``set``/``create`` take map keys literally (no field-path parsing).
    p.create = {**meta, "k": run_id, "d": inline, "s": spilled}
    p.doc = {**doc, **p.create}
    return p


@async_transactional
async def _read_consistent(tx: AsyncTransaction, ctx: FirestoreRunContext) -> Snapshot:
    ctx.store.stats.count("firestore.begin_transaction")
    ctx.store.stats.count("firestore.get")
    snap = await ctx.ref.get(transaction=tx)
    if not snap.exists:
        return Snapshot({}, 0)
    doc = snap.to_dict() or {}
    names = list((doc.get("s") or {}).keys())
    spilled: dict[str, Any] = {}
    if names:
        ctx.store.stats.count("firestore.batch_get")
        refs = [ctx.ref.collection("values").document(n) for n in names]
        # AsyncTransaction.get_all awaits an async generator (a bug in the client library):
        # read through the client with the transaction instead.
        async for s in ctx.store.client.get_all(refs, transaction=tx):
            if s.exists:
                spilled[s.id] = s.to_dict() or {}
    ctx.store.remember(ctx.run_id, int(doc.get("v", 0)), snap.update_time, doc)
    return Snapshot(ctx._decode(doc, spilled), int(doc.get("v", 0)))


@async_transactional
async def _commit_tx(
    tx: AsyncTransaction,
    ctx: FirestoreRunContext,
    final: dict[str, tuple[str, str | None]],
    expected: int | None,
    status: str | None,
) -> int | None:
    stats = ctx.store.stats
    stats.count("firestore.begin_transaction")
    stats.count("firestore.get")
    stats.count("firestore.commit")  # also an empty one (a refused version), or a rollback
    snap = await ctx.ref.get(transaction=tx)
    doc = (snap.to_dict() or {}) if snap.exists else {}
    version = int(doc.get("v", 0))
    if expected is not None and version != expected:
        return None
    plan = _plan(doc, snap.exists, final, version, status, ctx.run_id)
    if snap.exists:
        tx.update(ctx.ref, plan.update)
    else:
        tx.set(ctx.ref, plan.create)
    plan.apply_values(tx, ctx.ref)
    ctx.store._seen.pop(ctx.run_id, None)  # the commit time is not known here
    return plan.written


def _stored_size(stored: Any) -> int:
    if isinstance(stored, dict):
        return len(str(stored.get("t", "")).encode()) + len(str(stored.get("k", "")).encode())
    return len(str(stored).encode())


class FirestoreCoordinationStore:
    """The :class:`~flowcraft.distributed.CoordinationStore` on a Firestore collection: one
    document per key (``{prefix}coord``), its expiry ``e`` checked on every read. Every
    operation reads the document and then writes with a precondition (``create`` for an
    absent key, ``last_update_time`` for an existing one), retrying when another writer got
    there first: set-if-not-exists is a ``create``, counters are ``Increment`` transforms
    (the new value comes back in the write result), a lease release is a delete with an
    update-time precondition. A value this store wrote itself is released or extended without
    reading it first (the update time of its own write is the precondition; a failed
    precondition falls back to reading). An expired key behaves as absent everywhere."""

    def __init__(
        self, client: AsyncClient, prefix: str = "flowcraft-", *, stats: ApiStats | None = None
    ) -> None:
        self.client = client
        self.coll = client.collection(f"{prefix}coord")
        self.stats = stats or ApiStats()
        self._mine: OrderedDict[str, tuple[str, float, Any]] = OrderedDict()

    def _ref(self, key: str) -> Any:
        return _Counted(self.coll.document(coord_doc_id(key)), self.stats)

    @staticmethod
    def _fields(value: str | None, counter: int | None, ttl: float) -> dict[str, Any]:
        now = time.time()
        exp = now + max(ttl, 0.0)
        f: dict[str, Any] = {
            "e": exp,
            "expireAt": dt.datetime.fromtimestamp(exp, dt.UTC),
        }
        if value is not None:
            f["v"] = value
        if counter is not None:
            f["c"] = counter
        return f

    @staticmethod
    def _live(snap: Any) -> dict[str, Any] | None:
        if not snap.exists:
            return None
        doc: dict[str, Any] = snap.to_dict() or {}
        return doc if float(doc.get("e", 0)) > time.time() else None

    def _when(self, snap: Any) -> Any:
        return self.client.write_option(last_update_time=snap.update_time)

    async def _replace(self, ref: Any, snap: Any, fields: dict[str, Any]) -> Any:
        """Overwrite an (expired) document, only if nobody wrote it since ``snap``."""
        for f in ("v", "c"):
            fields.setdefault(f, DELETE_FIELD)
        return await ref.update(fields, option=self._when(snap))

    def _wrote(self, key: str, value: str, fields: dict[str, Any], result: Any) -> None:
        """Remember a value this store wrote (its expiry and update time), so releasing or
        extending it needs no read: a write with that update time as precondition."""
        t = getattr(result, "update_time", None)
        if t is None:
            return
        self._mine[key] = (value, float(fields["e"]), t)
        self._mine.move_to_end(key)
        while len(self._mine) > 4096:
            self._mine.popitem(last=False)

    def _mine_live(self, key: str, value: str | None = None) -> Any:
        """The update time of ``key`` as this store last wrote it, if that write still holds
        ``value`` and has not expired (else None)."""
        m = self._mine.pop(key, None)
        if m is None or (value is not None and m[0] != value) or m[1] <= time.time():
            return None
        return m

    async def _contended(self, attempt: int) -> None:
        await asyncio.sleep(random.uniform(0, min(0.002 * 2**attempt, 0.1)))

    async def get(self, key: str) -> str | None:
        """The live value (a counter as its decimal text), or None."""
        doc = self._live(await self._ref(key).get())
        if doc is None:
            return None
        return str(doc["c"]) if "c" in doc else str(doc.get("v", ""))

    async def set_if_not_exist(self, key: str, value: str, ttl_seconds: float) -> bool:
        """``create`` the key; over an expired one, replace it with a precondition."""
        ref = self._ref(key)
        for attempt in range(1000):
            fields = self._fields(value, None, ttl_seconds)
            try:
                self._wrote(key, value, fields, await ref.create(fields))
                return True
            except gexc.AlreadyExists:
                pass
            snap = await ref.get()
            if not snap.exists:
                continue
            if self._live(snap) is not None:
                return False
            fields = self._fields(value, None, ttl_seconds)
            try:
                self._wrote(key, value, fields, await self._replace(ref, snap, fields))
                return True
            except (gexc.FailedPrecondition, gexc.NotFound, gexc.Aborted):
                await self._contended(attempt)
        raise RuntimeError(f"set_if_not_exist({key!r}): too much contention")

    async def increment(self, key: str, ttl_seconds: float) -> int:
        """Add one (``Increment``; an absent or expired key starts from 0) and renew the TTL."""
        ref = self._ref(key)
        for attempt in range(1000):
            snap = await ref.get()
            doc = self._live(snap)
            try:
                if not snap.exists:
                    await ref.create(self._fields(None, 1, ttl_seconds))
                    return 1
                if doc is None:
                    await self._replace(ref, snap, self._fields(None, 1, ttl_seconds))
                    return 1
                f = self._fields(None, None, ttl_seconds)
                f["c"] = Increment(1)
                res = await ref.update(f, option=self._when(snap))
                tr = getattr(res, "transform_results", None)
                if tr:
                    return int(tr[0].integer_value)
                return int(doc.get("c", 0)) + 1  # precondition held: nobody wrote between
            except (gexc.AlreadyExists, gexc.FailedPrecondition, gexc.NotFound, gexc.Aborted):
                await self._contended(attempt)
        raise RuntimeError(f"increment({key!r}): too much contention")

    async def extend_ttl(self, key: str, ttl_seconds: float) -> bool:
        """Renew a live key's TTL; False when absent or expired."""
        ref = self._ref(key)
        mine = self._mine_live(key)
        if mine is not None:
            fields = self._fields(None, None, ttl_seconds)
            opt = self.client.write_option(last_update_time=mine[2])
            try:
                self._wrote(key, mine[0], fields, await ref.update(fields, option=opt))
                return True
            except (gexc.FailedPrecondition, gexc.NotFound, gexc.Aborted):
                pass  # written by someone else since: read it
        for attempt in range(1000):
            snap = await ref.get()
            doc = self._live(snap)
            if doc is None:
                return False
            fields = self._fields(None, None, ttl_seconds)
            try:
                res = await ref.update(fields, option=self._when(snap))
                if "v" in doc and "c" not in doc:
                    self._wrote(key, str(doc["v"]), fields, res)
                return True
            except (gexc.FailedPrecondition, gexc.NotFound, gexc.Aborted):
                await self._contended(attempt)
        raise RuntimeError(f"extend_ttl({key!r}): too much contention")

    async def delete(self, key: str) -> None:
        """Delete the key (no error when absent)."""
        self._mine.pop(key, None)
        await self._ref(key).delete()

    async def compare_and_delete(self, key: str, value: str) -> bool:
        """Delete the key only while it is live and holds ``value`` (a delete with an
        update-time precondition; no read when this store wrote it last)."""
        ref = self._ref(key)
        mine = self._mine_live(key, value)
        if mine is not None:
            try:
                await ref.delete(option=self.client.write_option(last_update_time=mine[2]))
                return True
            except (gexc.FailedPrecondition, gexc.NotFound, gexc.Aborted):
                pass  # written by someone else since (or gone): read it
        for attempt in range(1000):
            snap = await ref.get()
            doc = self._live(snap)
            if doc is None or "c" in doc or doc.get("v") != value:
                return False
            try:
                await ref.delete(option=self._when(snap))
                return True
            except (gexc.FailedPrecondition, gexc.NotFound, gexc.Aborted):
                await self._contended(attempt)
        raise RuntimeError(f"compare_and_delete({key!r}): too much contention")


class _Counted:
    """A document reference whose calls are counted in ``stats``."""

    def __init__(self, ref: Any, stats: ApiStats) -> None:
        self._ref = ref
        self._stats = stats

    async def get(self) -> Any:
        self._stats.count("firestore.get")
        return await self._ref.get()

    async def create(self, data: dict[str, Any]) -> Any:
        self._stats.count("firestore.commit")
        return await self._ref.create(data)

    async def update(self, data: dict[str, Any], option: Any = None) -> Any:
        self._stats.count("firestore.commit")
        return await self._ref.update(data, option=option)

    async def delete(self, option: Any = None) -> Any:
        self._stats.count("firestore.commit")
        return await self._ref.delete(option=option)
