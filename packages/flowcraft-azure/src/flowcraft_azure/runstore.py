"""The run store: one Cosmos item per run, partitioned by the run id, committed atomically.

The item is ``{"id": "r:<run>", "pk": "r:<run>", "run": <run id>, "v": <version>, "status": ...,
"data": {<context key>: <JSON text of the value>}}``. A commit is compare-and-set on ``v``
and always ONE request, whatever the number of changes, so it is atomic:

* a **patch** (``set``/``remove`` of ``/data/<key>``, ``incr /v``, ``set /status``) with the
  ``filter_predicate`` ``from c where c.v = <expected>``, when the commit needs at most 10 patch
  operations (Cosmos's limit) and the store knows the item at the expected version (it caches
  the item every response returns), so it removes only keys that exist (a ``remove`` of a
  missing path fails a whole Cosmos patch) and knows the item stays under 2 MB;
* otherwise a **replace** of the whole item, conditional on its ``_etag`` (``If-Match``).

A transactional batch would also be atomic, but it is no cheaper than a replace for one item.
Context keys are opaque: in patch paths they are JSON pointers with ``~`` → ``~0`` and ``/`` →
``~1`` (upstream forgot this), and dots, backticks, quotes or non-ASCII text need nothing.

Cosmos refuses items over 2 MB: values are encoded with ``max_bytes`` (:data:`MAX_VALUE_BYTES`),
and a commit that would grow the item past :data:`MAX_ITEM_BYTES` raises
:class:`~flowcraft.distributed.codec.UnstorableValueError` naming the largest key it writes
(the engine fails the node that wrote it) instead of sending a request that would fail.

The active-run index: while a run is not final, an item ``{"id": <run>, "pk": "a:<shard>"}``
exists in one of ``active_shards`` known partitions (written before the commit that makes the
run active, deleted after the one that makes it final), so :meth:`CosmosRunStore.list_active_runs`
reads a few single-partition queries, never a cross-partition scan.
"""

from __future__ import annotations

import json
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from flowcraft import PatchOperation
from flowcraft.distributed import Snapshot, decode_value, encode_value
from flowcraft.distributed.codec import UnstorableValueError
from flowcraft.state import FINAL_STATUSES

from .cosmos import CosmosContainer, safe_key

__all__ = [
    "MAX_ITEM_BYTES",
    "MAX_VALUE_BYTES",
    "CosmosRunContext",
    "CosmosRunStore",
    "json_pointer",
]

MAX_ITEM_BYTES: Final = 2_000_000
"""Largest run item the store writes (Cosmos's limit is 2 MB, including system properties)."""
MAX_VALUE_BYTES: Final = 1_000_000
"""Largest encoded context value (a run item holds all its values, and must stay under
:data:`MAX_ITEM_BYTES`)."""
MAX_PATCH_OPS: Final = 10
"""Cosmos's limit of operations in one patch request."""
_MAX_CAS: Final = 20


def json_pointer(*parts: str) -> str:
    """A JSON pointer (RFC 6901) to ``parts``: ``~`` escaped as ``~0``, ``/`` as ``~1``."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _size(item: dict[str, Any]) -> int:
    return len(json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _active(status: str | None) -> bool:
    return status is not None and status not in FINAL_STATUSES


class CosmosRunStore:
    """Run items and the active-run index in one container (see the module docstring).

    ``cache`` items are kept (the last response of each recently used run), so a commit at the
    version this worker last saw needs no read. ``on_commit(bytes)`` is called after each
    successful commit (counters)."""

    def __init__(
        self,
        cosmos: CosmosContainer,
        *,
        active_shards: int = 4,
        cache: int = 64,
        max_value_bytes: int = MAX_VALUE_BYTES,
        max_item_bytes: int = MAX_ITEM_BYTES,
    ) -> None:
        if active_shards < 1:
            raise ValueError("active_shards must be >= 1")
        self.cosmos = cosmos
        self.active_shards = active_shards
        self.max_value_bytes = max_value_bytes
        self.max_item_bytes = max_item_bytes
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache_size = cache

    # -- keys ----------------------------------------------------------------------------------

    @staticmethod
    def pk(run_id: str) -> str:
        """The partition key of a run's item."""
        return "r:" + safe_key(run_id)

    def shard(self, run_id: str) -> str:
        """The active-index partition of a run."""
        return f"a:{zlib.crc32(run_id.encode('utf-8', 'surrogatepass')) % self.active_shards}"

    def _index_item(self, run_id: str) -> dict[str, Any]:
        return {"id": safe_key(run_id), "pk": self.shard(run_id), "run": run_id}

    # -- cache ---------------------------------------------------------------------------------

    def _remember(self, run_id: str, item: dict[str, Any] | None) -> None:
        if item is None or self._cache_size <= 0:
            self._cache.pop(run_id, None)
            return
        self._cache[run_id] = item
        self._cache.move_to_end(run_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    # -- reads ---------------------------------------------------------------------------------

    async def read(self, run_id: str) -> dict[str, Any] | None:
        """The run's item (None: no run)."""
        item = await self.cosmos.read(self.pk(run_id), self.pk(run_id))
        self._remember(run_id, item)
        return item

    async def load(self, run_id: str) -> Snapshot:
        """Every key of the run, decoded, and its version (0 and no keys: no run)."""
        item = await self.read(run_id)
        if item is None:
            return Snapshot({}, 0)
        return Snapshot({k: decode_value(v) for k, v in item["data"].items()}, int(item["v"]))

    async def run_status(self, run_id: str) -> str | None:
        """The status recorded by the last commit that gave one (None: no run)."""
        item = await self.read(run_id)
        return None if item is None else item.get("status")

    # -- commits -------------------------------------------------------------------------------

    def _encode(self, ops: Iterable[PatchOperation]) -> list[tuple[str, str | None]]:
        # Encoded before anything is written: an unstorable value raises naming its key.
        return [
            (
                op.key,
                encode_value(op.key, op.value, self.max_value_bytes) if op.op == "set" else None,
            )
            for op in ops
        ]

    async def commit(
        self,
        run_id: str,
        ops: Sequence[PatchOperation],
        expected: int | None,
        status: str | None = None,
    ) -> tuple[bool, int]:
        """Apply ``ops`` in order if the version is ``expected`` (None: whatever it is), bump
        it, record ``status`` (None: unchanged); returns ``(committed, bytes sent)``."""
        enc = self._encode(ops)
        for _ in range(_MAX_CAS):
            item = self._cache.get(run_id)
            if item is None or expected is None or int(item["v"]) != expected:
                item = await self.read(run_id)
            version = 0 if item is None else int(item["v"])
            if expected is not None and version != expected:
                return False, 0
            done = await self._write(run_id, item, enc, status)
            if done is not None:
                return True, done
            if expected is not None:
                # Refused: the version moved (or the item changed under us); decide on a
                # fresh read whether the commit lost.
                self._remember(run_id, None)
        raise RuntimeError(f"run {run_id!r}: commit kept conflicting")

    async def _write(
        self,
        run_id: str,
        item: dict[str, Any] | None,
        enc: list[tuple[str, str | None]],
        status: str | None,
    ) -> int | None:
        """One conditional write based on ``item`` (None: create); bytes sent, or None when
        the item changed meanwhile."""
        prev_status = None if item is None else item.get("status")
        new_status = status if status is not None else prev_status
        if _active(new_status) and not _active(prev_status):
            # Indexed before the commit that makes the run active: an active run is always
            # listed (a commit that then loses leaves an entry that _write cleans up below).
            await self.cosmos.upsert(
                {"id": safe_key(run_id), "pk": self.shard(run_id), "run": run_id}
            )
        if item is None:
            new = {"id": self.pk(run_id), "pk": self.pk(run_id), "run": run_id, "v": 0, "data": {}}
            sent = self._apply(new, enc, new_status)
            got = await self.cosmos.create(new)
        else:
            got, sent = await self._update(run_id, item, enc, status, new_status)
        if got is None:
            if _active(new_status) and not _active(prev_status):
                fresh = await self.read(run_id)
                if fresh is None or not _active(fresh.get("status")):
                    await self.cosmos.delete(self.shard(run_id), safe_key(run_id))
            return None
        self._remember(run_id, got)
        if _active(prev_status) and not _active(new_status) and new_status is not None:
            await self.cosmos.delete(self.shard(run_id), safe_key(run_id))
        return sent

    def _apply(
        self, new: dict[str, Any], enc: list[tuple[str, str | None]], status: str | None
    ) -> int:
        """Apply ``enc`` to the item ``new`` in place (a new version); its size is checked."""
        data = new["data"]
        for key, text in enc:
            if text is None:
                data.pop(key, None)
            else:
                data[key] = text
        new["v"] = int(new["v"]) + 1
        if status is not None:
            new["status"] = status
        size = _size(new)
        if size > self.max_item_bytes:
            largest = max(
                (k for k, t in enc if t is not None),
                key=lambda k: len(data.get(k) or ""),
                default=None,
            )
            raise UnstorableValueError(
                largest or "",
                f"context value {largest!r} makes the run's Cosmos item {size} bytes; "
                f"it may hold at most {self.max_item_bytes} bytes",
            )
        return size

    async def _update(
        self,
        run_id: str,
        item: dict[str, Any],
        enc: list[tuple[str, str | None]],
        status: str | None,
        new_status: str | None,
    ) -> tuple[dict[str, Any] | None, int]:
        final: dict[str, str | None] = {}
        for key, text in enc:
            final.pop(key, None)  # keep the order of the last write of each key
            final[key] = text
        data = item["data"]
        patch: list[dict[str, Any]] = []
        grow = 0
        for key, text in final.items():
            path = json_pointer("data", key)
            if text is None:
                if key in data:
                    patch.append({"op": "remove", "path": path})
            else:
                patch.append({"op": "set", "path": path, "value": text})
                grow += len(text.encode("utf-8")) + len(key.encode("utf-8")) + 8
        patch.append({"op": "incr", "path": "/v", "value": 1})
        if status is not None and status != item.get("status"):
            patch.append({"op": "set", "path": "/status", "value": status})
        if (
            len(patch) <= MAX_PATCH_OPS
            and "" not in final  # "/data/" is an odd JSON pointer: the replace needs none
            and _size(item) + grow <= self.max_item_bytes
        ):
            sent = sum(len(json.dumps(p, ensure_ascii=False).encode("utf-8")) for p in patch)
            got = await self.cosmos.patch(
                self.pk(run_id), self.pk(run_id), patch, f"from c where c.v = {int(item['v'])}"
            )
            return got, sent
        new = {k: v for k, v in item.items() if not k.startswith("_")}
        new["data"] = dict(data)
        sent = self._apply(new, enc, new_status)
        return await self.cosmos.replace(new, item["_etag"]), sent

    # -- the index, deletion -------------------------------------------------------------------

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """A page of non-final run ids: shard by shard (single-partition queries ordered by
        id); the cursor is ``<shard>|<last id>``."""
        shard, after = 0, ""
        if cursor:
            s, _, after = cursor.partition("|")
            shard = int(s)
        out: list[str] = []
        while shard < self.active_shards and len(out) < limit:
            rows = await self.cosmos.query_partition(
                f"a:{shard}",
                "SELECT c.id, c.run FROM c WHERE c.pk = @pk AND c.id > @after ORDER BY c.id",
                [{"name": "@after", "value": after}],
                limit - len(out),
            )
            if len(rows) < limit - len(out):
                shard, after = shard + 1, ""
            else:
                after = str(rows[-1]["id"])
            out.extend(str(r["run"]) for r in rows)
        if shard >= self.active_shards:
            return out, None
        return out, f"{shard}|{after}"

    async def delete_run(self, run_id: str) -> int:
        """Delete the run's item and index entry; how many items were deleted."""
        n = int(await self.cosmos.delete(self.pk(run_id), self.pk(run_id)))
        n += int(await self.cosmos.delete(self.shard(run_id), safe_key(run_id)))
        self._remember(run_id, None)
        return n


class CosmosRunContext:
    """A run's context (``DistributedContext``) in a :class:`CosmosRunStore`."""

    __slots__ = ("_on_commit", "_run_id", "_store")

    def __init__(
        self,
        store: CosmosRunStore,
        run_id: str,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        self._run_id = run_id
        self._on_commit = on_commit

    async def _commit(
        self, ops: Iterable[PatchOperation], expected: int | None, status: str | None = None
    ) -> bool:
        ok, sent = await self._store.commit(self._run_id, list(ops), expected, status)
        if ok and self._on_commit is not None:
            self._on_commit(sent)
        return ok

    async def load(self) -> Snapshot:
        """See DistributedContext."""
        return await self._store.load(self._run_id)

    async def commit(
        self, ops: Sequence[PatchOperation], expected_version: int, status: str | None = None
    ) -> bool:
        """See DistributedContext."""
        return await self._commit(ops, expected_version, status)

    async def get(self, key: str, default: Any = None) -> Any:
        """See AsyncContext."""
        return (await self.load()).data.get(key, default)

    async def set(self, key: str, value: Any) -> None:
        """See AsyncContext."""
        await self._commit([PatchOperation("set", key, value)], None)

    async def has(self, key: str) -> bool:
        """See AsyncContext."""
        return key in (await self.load()).data

    async def delete(self, key: str) -> bool:
        """See AsyncContext."""
        had = await self.has(key)
        await self._commit([PatchOperation("delete", key)], None)
        return had

    async def to_dict(self) -> dict[str, Any]:
        """See AsyncContext."""
        return (await self.load()).data

    async def patch(self, ops: Iterable[PatchOperation]) -> None:
        """See AsyncContext."""
        await self._commit(ops, None)
