"""Run state and coordination in one DynamoDB table.

Layout (partition key ``pk``, sort key ``sk``, both strings):

=========================  =====================  ===============================================
item                       ``pk``                 ``sk`` and attributes
=========================  =====================  ===============================================
run meta (one per run)     ``r#<run id>``         ``#meta``: ``ver`` (N, the run's version),
                                                  ``st`` (status), ``upd`` (last progress, epoch
                                                  s), ``pend`` (version of an unapplied
                                                  journal), ``gpk``/``gsk`` (active-run index,
                                                  present only while the run is not final),
                                                  ``rs``/``ra`` (published result status/time)
context key (one per key)  ``r#<run id>``         ``k#<key>`` (or ``h#<sha256>`` with the key in
                                                  ``k`` when longer than the 1 KB sort-key
                                                  limit): ``v`` (the value as JSON text)
journal part               ``r#<run id>``         ``j#<version>#<part>``: ``ops`` (JSON), only
                                                  while a large commit is being applied
coordination key           ``c#<key>``            ``#``: ``val`` (S) or ``n`` (N counter),
                                                  ``exp`` (N, expiry epoch s), ``ttl`` (N, for
                                                  DynamoDB's TTL sweeper)
=========================  =====================  ===============================================

Why one item per key, not one item per run: a run's context (user values plus the engine's
per-node, per-edge and per-join keys) grows with the workflow and with its data; one item per
run caps the *whole run* at DynamoDB's 400 KB item limit, and an ``UpdateItem`` expression is
capped at 4 KB, about 300 changed keys. One item per key caps only each *value* (at
:data:`MAX_VALUE_BYTES`), reads a run with one ``Query`` and writes only the changed keys.

A commit is atomic: one ``TransactWriteItems`` holding the conditional version bump of the meta
item (``ver = :expected``, compare-and-set) and a ``Put``/``Delete`` per changed key. Operations
on one key are coalesced first (last wins), so setting and removing a key in one commit never
hits DynamoDB's "multiple operations on one item" error. A commit with more keys than a
transaction holds (100 items, 4 MB) is still atomic: its operations go into journal items
written in the same transaction as the version bump (that transaction is the commit point), and
are then applied to the key items in chunks, each guarded by a ``ConditionCheck`` that the
journal is still pending; readers overlay a pending journal, and the next writer finishes
applying it before committing.

Reads: :meth:`DynamoRunStore.load` reads the meta item first (``GetItem``, serializable against
transactions) and then the partition (``Query``, strongly consistent, paged). A ``Query`` is only
read-committed against transactions, so it may see part of a *later* commit; the snapshot's
version is the one read first, so a commit based on such a snapshot fails its compare-and-set
and is retried on fresh data (it can never overwrite newer data).

Node leases travel with the commit: :class:`DynamoLeasingContext` adds the release of the
committing delivery's lease and the take of its successor's lease (conditional ``Delete`` and
``Put`` of coordination items) to the commit's transaction; a lease condition that fails drops
that lease operation and the transaction is retried without it, so a lease never blocks a
commit and a successor is leased exactly when the run is as committed.

Coordination items expire lazily in DynamoDB (its TTL sweeper may take days), so expiry is
checked on every read *and* inside every conditional write: an expired item behaves as absent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from flowcraft.context import PatchOperation
from flowcraft.distributed.codec import decode_value, encode_value
from flowcraft.distributed.contracts import Changes, CommitResult, Snapshot
from flowcraft.errors import SerializationError
from flowcraft.state import FINAL_STATUSES

from .aws import AwsClients, error_code

__all__ = [
    "ACTIVE_INDEX",
    "MAX_VALUE_BYTES",
    "DynamoCoordinationStore",
    "DynamoLeasingContext",
    "DynamoRunContext",
    "DynamoRunStore",
    "create_table",
    "delete_table",
]

META_SK: Final = "#meta"
ACTIVE_INDEX: Final = "active"
"""Name of the sparse global secondary index of non-final runs (``gpk`` / ``gsk``)."""
MAX_TX_ITEMS: Final = 100
"""DynamoDB's limit of items in one ``TransactWriteItems``."""
MAX_TX_BYTES: Final = 3_800_000
"""Stay under the 4 MB limit of one transaction (with room for attribute overhead)."""
MAX_VALUE_BYTES: Final = 380_000
"""Largest JSON value stored (the 400 KB item limit minus keys and attribute names)."""
JOURNAL_PART_BYTES: Final = 350_000
_SK_LIMIT: Final = 1024
_PK_LIMIT: Final = 2048
_MAX_CONFLICT_RETRIES: Final = 200


def _s(v: str) -> dict[str, str]:
    return {"S": v}


def _n(v: float) -> dict[str, str]:
    return {"N": repr(v) if isinstance(v, float) else str(v)}


def key_sk(key: str) -> str:
    """The sort key of a context key's item (hashed when too long for a sort key)."""
    sk = "k#" + key
    if len(sk.encode("utf-8")) <= _SK_LIMIT:
        return sk
    return "h#" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def _item_key(item: Mapping[str, Any]) -> str | None:
    sk = item["sk"]["S"]
    if sk.startswith("k#"):
        return str(sk[2:])
    if sk.startswith("h#"):
        return str(item["k"]["S"])
    return None


def _failed_meta(exc: BaseException) -> dict[str, Any] | None:
    """The meta item returned by a transaction cancelled on the meta item's condition
    (``ReturnValuesOnConditionCheckFailure``), saving a read; None otherwise."""
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return None
    reasons = response.get("CancellationReasons") or []
    if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
        item = reasons[0].get("Item")
        if isinstance(item, dict) and "ver" in item:
            return item
    return None


def _failed_items(exc: BaseException) -> set[int]:
    """Indexes of a cancelled transaction's items whose condition failed."""
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return set()
    reasons = response.get("CancellationReasons") or []
    return {i for i, r in enumerate(reasons) if r.get("Code") == "ConditionalCheckFailed"}


class LeaseOps:
    """Lease operations to make with a commit (see the module docstring): the releases of
    ``release`` and the takes of ``take`` (``(key, token)`` pairs; taken for ``ttl`` seconds),
    as transaction items of ``coord``'s table."""

    __slots__ = ("coord", "done", "ops", "takes", "ttl")

    def __init__(
        self,
        coord: DynamoCoordinationStore,
        release: Sequence[tuple[str, str]],
        take: Sequence[tuple[str, str]],
        ttl: float,
    ) -> None:
        self.coord = coord
        self.ttl = ttl
        self.ops: dict[tuple[str, int], tuple[str, str]] = {}
        """``("release" | "take", index) -> (key, token)``, at most one per key (one
        operation per item in a transaction); an operation whose condition failed is
        removed."""
        keys: set[str] = set()
        for kind, pairs in (("release", release), ("take", take)):
            for i, (key, token) in enumerate(pairs):
                if key not in keys:
                    keys.add(key)
                    self.ops[(kind, i)] = (key, token)
        self.takes = len(take)
        self.done: set[tuple[str, int]] = set()
        """The operations the successful commit made."""

    def items(self, room: int) -> list[tuple[tuple[str, int], dict[str, Any]]]:
        """The operations as transaction items, at most ``room`` of them (releases first)."""
        out = []
        for tag, (key, token) in list(self.ops.items())[: max(room, 0)]:
            if tag[0] == "release":
                out.append((tag, self.coord.release_item(key, token)))
            else:
                out.append((tag, self.coord.take_item(key, token, self.ttl)))
        return out

    def committed(self, tags: Iterable[tuple[str, int]]) -> None:
        """The transaction holding the operations ``tags`` succeeded."""
        self.done.update(tags)

    @property
    def taken(self) -> list[bool]:
        """Which of ``take`` were taken."""
        return [("take", i) in self.done for i in range(self.takes)]

    def left_out(self) -> list[tuple[str, str]]:
        """The releases that did not fit in the commit's transaction (a commit near
        DynamoDB's 100-item limit): the caller releases them on their own."""
        return [kt for tag, kt in self.ops.items() if tag[0] == "release" and tag not in self.done]


def _journal_sk(version: int, part: int) -> str:
    return f"j#{version:012d}#{part:04d}"


class DynamoRunStore:
    """Versioned run contexts in a DynamoDB table (see the module docstring for the layout).

    ``active_shards`` spreads the active-run index over that many index partitions (so one
    partition never takes every run's status writes); ``max_value_bytes`` refuses larger values
    with an error naming the key.
    """

    def __init__(
        self,
        aws: AwsClients,
        table: str,
        *,
        active_shards: int = 4,
        max_value_bytes: int = MAX_VALUE_BYTES,
        cache_runs: int = 64,
    ) -> None:
        if active_shards < 1:
            raise ValueError("active_shards must be >= 1")
        self.aws = aws
        self.table = table
        self.active_shards = active_shards
        self.max_value_bytes = max_value_bytes
        self.cache_runs = cache_runs
        self._cache: OrderedDict[str, tuple[int, dict[str, str]]] = OrderedDict()
        self._run_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    # -- keys ------------------------------------------------------------------------------------

    @staticmethod
    def pk(run_id: str) -> str:
        """The partition key of a run."""
        return "r#" + run_id

    def shard(self, run_id: str) -> int:
        """The active-index shard of a run."""
        return zlib.crc32(run_id.encode("utf-8")) % self.active_shards

    def _meta_key(self, run_id: str) -> dict[str, Any]:
        return {"pk": _s(self.pk(run_id)), "sk": _s(META_SK)}

    # -- reads -----------------------------------------------------------------------------------

    async def get_meta(self, run_id: str) -> dict[str, Any] | None:
        """The run's meta item (strongly consistent), or None."""
        r = await self.aws.ddb(
            "get_item", TableName=self.table, Key=self._meta_key(run_id), ConsistentRead=True
        )
        item: dict[str, Any] | None = r.get("Item")
        return item

    async def _query(self, run_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kw: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": _s(self.pk(run_id))},
            "ConsistentRead": True,
        }
        while True:
            r = await self.aws.ddb("query", **kw)
            items.extend(r.get("Items", []))
            last = r.get("LastEvaluatedKey")
            if not last:
                return items
            kw["ExclusiveStartKey"] = last

    async def load(self, run_id: str) -> Snapshot:
        """All keys of the run and its version (version 0 and no keys when absent).

        With a cached snapshot of the run (this store's last load or commit of it), one
        ``GetItem`` of the meta item suffices when the run has not changed, and a
        ``BatchGetItem`` of the items the latest commit wrote (listed on the meta item) when it
        changed by one commit; otherwise, or for a pending journal, the whole partition is
        read (:meth:`load_full`)."""
        cached = self._cache.get(run_id)
        if cached is not None:
            snap = await self._load_delta(run_id, *cached)
            if snap is not None:
                return snap
            if self._cache.get(run_id) is cached:
                del self._cache[run_id]
        return await self.load_full(run_id)

    def _remember(self, run_id: str, version: int, texts: dict[str, str]) -> None:
        if self.cache_runs <= 0:
            return
        held = self._cache.get(run_id)
        if held is not None and held[0] > version:
            return  # a concurrent job of this worker already cached a newer version
        self._cache[run_id] = (version, texts)
        self._cache.move_to_end(run_id)
        while len(self._cache) > self.cache_runs:
            self._cache.popitem(last=False)

    @staticmethod
    def _snapshot(version: int, texts: Mapping[str, str]) -> Snapshot:
        # Decoded afresh on every load: node code may mutate the values it reads.
        return Snapshot({k: decode_value(t) for k, t in texts.items()}, version)

    async def _load_delta(
        self, run_id: str, cached_version: int, texts: dict[str, str]
    ) -> Snapshot | None:
        meta = await self.get_meta(run_id)
        if meta is None or "pend" in meta:
            return None
        version = int(meta["ver"]["N"])
        if version == cached_version:
            if run_id in self._cache:  # (another job may have dropped it meanwhile)
                self._cache.move_to_end(run_id)
            return self._snapshot(version, texts)
        if version != cached_version + 1:
            return None
        written = list(meta.get("ls", {}).get("SS", []))
        deleted = list(meta.get("ld", {}).get("SS", []))
        if any(not sk.startswith(("k#", "h#")) for sk in written):
            return None  # a journaled commit
        new = dict(texts)
        if written:
            pk = _s(self.pk(run_id))
            request: dict[str, Any] = {
                self.table: {
                    "Keys": [{"pk": pk, "sk": _s(sk)} for sk in written],
                    "ConsistentRead": True,
                }
            }
            items: list[dict[str, Any]] = []
            for _ in range(10):
                r = await self.aws.ddb("batch_get_item", RequestItems=request)
                items += r.get("Responses", {}).get(self.table, [])
                request = r.get("UnprocessedKeys") or {}
                if not request:
                    break
            if request or len(items) != len(written):
                return None
            for it in items:
                if int(it.get("cv", {"N": "-1"})["N"]) != version:
                    return None  # overwritten meanwhile: read everything
                key = _item_key(it)
                if key is None:
                    return None
                new[key] = it["v"]["S"]
        for sk in deleted:
            if sk.startswith("k#"):
                new.pop(sk[2:], None)
            else:
                for k in [k for k in new if key_sk(k) == sk]:
                    del new[k]
        self._remember(run_id, version, new)
        return self._snapshot(version, new)

    async def load_full(self, run_id: str) -> Snapshot:
        """All keys of the run and its version (version 0 and no keys when absent): one
        strongly consistent ``Query`` of the run's partition (paged), checked for torn reads.

        A ``Query`` is read-committed against transactions, so it may see only part of a
        commit that is being applied. Every key item carries the version of the commit that
        wrote it (``cv``) and the meta item lists the items its latest commit set (``ls``) and
        deleted (``ld``); the snapshot is accepted only when that commit is fully visible and
        no item is newer than the meta item. After repeated torn reads (heavy write traffic)
        the snapshot is returned with a version one lower than read, so a commit based on it
        fails its compare-and-set instead of writing from stale data."""
        items: list[dict[str, Any]] = []
        meta: dict[str, Any] | None = None
        torn = True
        for attempt in range(20):
            items = await self._query(run_id)
            meta = next((i for i in items if i["sk"]["S"] == META_SK), None)
            if meta is None:
                return Snapshot({}, 0)
            if not self._torn(meta, items):
                torn = False
                break
            await asyncio.sleep(min(0.001 * 2**attempt, 0.05))
        assert meta is not None
        version = int(meta["ver"]["N"])
        texts: dict[str, str] = {}
        for item in items:
            key = _item_key(item)
            if key is not None:
                texts[key] = item["v"]["S"]
        pending = meta.get("pend")
        if pending is not None:
            prefix = f"j#{int(pending['N']):012d}#"
            parts = sorted(
                (i for i in items if i["sk"]["S"].startswith(prefix)),
                key=lambda i: i["sk"]["S"],
            )
            for part in parts:
                for op, key, text in json.loads(part["ops"]["S"]):
                    if op == "set":
                        texts[key] = text
                    else:
                        texts.pop(key, None)
        elif not torn:
            self._remember(run_id, version, texts)
        return self._snapshot(version - 1 if torn else version, texts)

    @staticmethod
    def _torn(meta: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> bool:
        version = int(meta["ver"]["N"])
        by_sk = {i["sk"]["S"]: i for i in items}
        for i in items:
            cv = i.get("cv")
            if cv is not None and int(cv["N"]) > version:
                return True  # part of a later commit is visible
        for sk in meta.get("ls", {}).get("SS", []):
            it = by_sk.get(sk)
            if it is None or ("cv" in it and int(it["cv"]["N"]) != version):
                return True  # part of the latest commit is not visible yet
        return any(sk in by_sk for sk in meta.get("ld", {}).get("SS", []))

    async def get_key(self, run_id: str, key: str) -> tuple[bool, Any]:
        """``(present, value)`` of one key: one ``TransactGetItems`` of the meta item and the
        key's item (a full load only while a large commit is being applied)."""
        r = await self.aws.ddb(
            "transact_get_items",
            TransactItems=[
                {"Get": {"TableName": self.table, "Key": self._meta_key(run_id)}},
                {
                    "Get": {
                        "TableName": self.table,
                        "Key": {"pk": _s(self.pk(run_id)), "sk": _s(key_sk(key))},
                    }
                },
            ],
        )
        responses = r.get("Responses", [])
        meta = responses[0].get("Item") if responses else None
        if meta is not None and "pend" in meta:
            snap = await self.load(run_id)
            return (key in snap.data, snap.data.get(key))
        item = responses[1].get("Item") if len(responses) > 1 else None
        if item is None:
            return (False, None)
        return (True, decode_value(item["v"]["S"]))

    async def run_status(self, run_id: str) -> str | None:
        """The status recorded on the run's meta item (None when there is no run)."""
        r = await self.aws.ddb(
            "get_item",
            TableName=self.table,
            Key=self._meta_key(run_id),
            ConsistentRead=True,
            ProjectionExpression="#s",
            ExpressionAttributeNames={"#s": "st"},
        )
        item = r.get("Item")
        if item is None:
            return None
        st = item.get("st")
        return str(st["S"]) if st else "running"

    async def run_statuses(self, run_ids: Sequence[str]) -> dict[str, str | None]:
        """The recorded status of up to 100 runs in one ``BatchGetItem`` (strongly
        consistent); None for runs that do not exist."""
        out: dict[str, str | None] = {rid: None for rid in run_ids}
        keys = [self._meta_key(rid) for rid in run_ids]
        request: dict[str, Any] = {
            self.table: {
                "Keys": keys,
                "ConsistentRead": True,
                "ProjectionExpression": "pk, #s",
                "ExpressionAttributeNames": {"#s": "st"},
            }
        }
        for _ in range(10):
            r = await self.aws.ddb("batch_get_item", RequestItems=request)
            for item in r.get("Responses", {}).get(self.table, []):
                st = item.get("st")
                out[item["pk"]["S"][2:]] = str(st["S"]) if st else "running"
            request = r.get("UnprocessedKeys") or {}
            if not request:
                break
            await asyncio.sleep(0.02)
        return out

    async def list_active_runs(
        self, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """A page of non-final run ids from the sparse ``active`` index, shard by shard; the
        cursor is opaque (base64 JSON of the shard and DynamoDB's ``LastEvaluatedKey``)."""
        shard, start = 0, None
        if cursor:
            state = json.loads(base64.urlsafe_b64decode(cursor.encode()).decode())
            shard, start = int(state["s"]), state.get("k")
        out: list[str] = []
        while shard < self.active_shards and len(out) < limit:
            kw: dict[str, Any] = {
                "TableName": self.table,
                "IndexName": ACTIVE_INDEX,
                "KeyConditionExpression": "gpk = :g",
                "ExpressionAttributeValues": {":g": _s(f"active#{shard}")},
                "Limit": limit - len(out),
            }
            if start:
                kw["ExclusiveStartKey"] = start
            r = await self.aws.ddb("query", **kw)
            out.extend(i["gsk"]["S"] for i in r.get("Items", []))
            start = r.get("LastEvaluatedKey")
            if not start:
                shard += 1
        if shard >= self.active_shards:
            return out, None
        token = json.dumps({"s": shard, "k": start}, separators=(",", ":"))
        return out, base64.urlsafe_b64encode(token.encode()).decode()

    # -- writes ----------------------------------------------------------------------------------

    def _encode_ops(self, ops: Iterable[PatchOperation]) -> list[tuple[str, str, str]]:
        """Coalesce per key (last wins) and encode: ``[(op, key, json)]``."""
        last: dict[str, PatchOperation] = {}
        for op in ops:
            last.pop(op.key, None)
            last[op.key] = op
        out: list[tuple[str, str, str]] = []
        for key, op in last.items():
            if op.op == "set":
                out.append(("set", key, encode_value(key, op.value, self.max_value_bytes)))
            else:
                out.append(("delete", key, ""))
        return out

    def _meta_update(
        self,
        run_id: str,
        expected: int,
        status: str | None,
        pending: bool,
        written: Sequence[str],
        deleted: Sequence[str],
    ) -> dict[str, Any]:
        new = expected + 1
        names = {"#v": "ver", "#u": "upd"}
        values: dict[str, Any] = {":n": _n(new), ":u": _n(time.time())}
        sets = ["#v = :n", "#u = :u"]
        removes: list[str] = []
        if status is not None:
            names |= {"#s": "st", "#g": "gpk", "#r": "gsk"}
            values[":s"] = _s(status)
            sets.append("#s = :s")
            if status in FINAL_STATUSES:
                removes += ["#g", "#r"]
            else:
                values[":g"] = _s(f"active#{self.shard(run_id)}")
                values[":r"] = _s(run_id)
                sets += ["#g = :g", "#r = :r"]
        if written:
            names["#ls"] = "ls"
            values[":ls"] = {"SS": sorted(written)}
            sets.append("#ls = :ls")
        else:
            names["#ls"] = "ls"
            removes.append("#ls")
        names["#ld"] = "ld"
        if deleted:
            values[":ld"] = {"SS": sorted(deleted)}
            sets.append("#ld = :ld")
        else:
            removes.append("#ld")
        if pending or expected != 0:
            names["#p"] = "pend"
        if pending:
            sets.append("#p = :n")
        if expected == 0:
            cond = "attribute_not_exists(#v)"
        else:
            cond = "#v = :e AND attribute_not_exists(#p)"
            values[":e"] = _n(expected)
        expr = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        return {
            "Update": {
                "TableName": self.table,
                "Key": self._meta_key(run_id),
                "UpdateExpression": expr,
                "ConditionExpression": cond,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        }

    def _key_action(
        self, run_id: str, op: str, key: str, text: str, version: int
    ) -> dict[str, Any]:
        pk = _s(self.pk(run_id))
        sk = key_sk(key)
        if op == "delete":
            return {"Delete": {"TableName": self.table, "Key": {"pk": pk, "sk": _s(sk)}}}
        item: dict[str, Any] = {"pk": pk, "sk": _s(sk), "v": _s(text), "cv": _n(version)}
        if sk.startswith("h#"):
            item["k"] = _s(key)
        return {"Put": {"TableName": self.table, "Item": item}}

    async def commit(
        self,
        run_id: str,
        ops: Sequence[PatchOperation],
        expected: int | None,
        status: str | None = None,
        leases: LeaseOps | None = None,
    ) -> tuple[bool, int]:
        """Apply ``ops`` atomically when the run's version equals ``expected`` (any version when
        None); returns ``(committed, bytes written)``. ``status`` (when given) is the run's
        status after the commit: it is recorded on the meta item and keeps the ``active`` index
        (non-final runs) current. ``leases``: lease operations made in the same transaction
        when their conditions hold (``leases.taken`` says which were taken).

        Commits of one run from this store (one worker's concurrent jobs, e.g. the branches of
        a fan-in) go one at a time, so one that is already stale fails here, without a
        transaction; commits from other workers are refused by DynamoDB's condition."""
        lock = self._run_locks.get(run_id)
        if lock is None:
            lock = self._run_locks[run_id] = asyncio.Lock()
        async with lock:
            return await self._commit(run_id, ops, expected, status, leases)

    async def _commit(
        self,
        run_id: str,
        ops: Sequence[PatchOperation],
        expected: int | None,
        status: str | None,
        leases: LeaseOps | None = None,
    ) -> tuple[bool, int]:
        cached = self._cache.get(run_id)
        if expected is not None and cached is not None and cached[0] > expected:
            # This store already saw a newer version (versions only grow): the compare-and-set
            # would fail, so do not spend a transaction on it.
            return False, 0
        encoded = self._encode_ops(ops)
        nbytes = sum(len(k) + len(t) for op, k, t in encoded if op == "set")
        size = sum(len(k.encode()) + len(t.encode()) + 64 for _, k, t in encoded)
        journal = len(encoded) + 1 > MAX_TX_ITEMS or size > MAX_TX_BYTES
        parts: list[list[tuple[str, str, str]]] = []
        if journal:
            parts = self._journal_parts(encoded)
        for attempt in range(_MAX_CONFLICT_RETRIES):
            exp = expected
            if exp is None:
                meta = await self.get_meta(run_id)
                exp = int(meta["ver"]["N"]) if meta else 0
            if journal:
                written: list[str] = [_journal_sk(exp + 1, i) for i in range(len(parts))]
                deleted: list[str] = []
            else:
                written = [key_sk(k) for op, k, _ in encoded if op == "set"]
                deleted = [key_sk(k) for op, k, _ in encoded if op == "delete"]
            items = [self._meta_update(run_id, exp, status, journal, written, deleted)]
            if journal:
                pk = _s(self.pk(run_id))
                for i, part in enumerate(parts):
                    items.append(
                        {
                            "Put": {
                                "TableName": self.table,
                                "Item": {
                                    "pk": pk,
                                    "sk": _s(_journal_sk(exp + 1, i)),
                                    "ops": _s(json.dumps(part, ensure_ascii=False)),
                                },
                            }
                        }
                    )
            else:
                items += [self._key_action(run_id, *e, exp + 1) for e in encoded]
            base = len(items)
            extra = leases.items(MAX_TX_ITEMS - base) if leases is not None else []
            items += [item for _, item in extra]
            try:
                await self.aws.ddb("transact_write_items", TransactItems=items)
            except Exception as exc:
                if error_code(exc) not in ("TransactionCanceledException", "TransactionConflict"):
                    raise
                failed = _failed_items(exc)
                if leases is not None and 0 not in failed and max(failed, default=-1) >= base:
                    for i in failed:  # not ours to release, or held by another delivery:
                        if i >= base:  # commit without that lease operation
                            leases.ops.pop(extra[i - base][0], None)
                    continue
                meta = _failed_meta(exc)
                if meta is None:  # not the version check that failed: read the meta item
                    meta = await self.get_meta(run_id)
                current = int(meta["ver"]["N"]) if meta and "ver" in meta else 0
                if current != exp and expected is not None:
                    return False, 0
                if meta is not None and "pend" in meta:
                    await self.roll_forward(run_id, int(meta["pend"]["N"]))
                elif current == exp:
                    await asyncio.sleep(min(0.002 * (attempt + 1), 0.05))  # a conflict
                continue
            cached = self._cache.get(run_id)
            if journal or cached is None or cached[0] != exp:
                self._cache.pop(run_id, None)
            else:
                texts = dict(cached[1])
                for op, k, t in encoded:
                    if op == "set":
                        texts[k] = t
                    else:
                        texts.pop(k, None)
                self._remember(run_id, exp + 1, texts)
            if leases is not None:
                leases.committed(tag for tag, _ in extra)
            if journal:
                await self.roll_forward(run_id, exp + 1)
            return True, nbytes
        raise RuntimeError(f"run {run_id!r}: commit kept conflicting")

    def _journal_parts(
        self, encoded: list[tuple[str, str, str]]
    ) -> list[list[tuple[str, str, str]]]:
        parts: list[list[tuple[str, str, str]]] = [[]]
        size = 0
        for e in encoded:
            n = len(e[1].encode()) + len(e[2].encode()) + 16
            if parts[-1] and size + n > JOURNAL_PART_BYTES:
                parts.append([])
                size = 0
            parts[-1].append(e)
            size += n
        total = sum(len(e[1].encode()) + len(e[2].encode()) for e in encoded)
        if len(parts) + 1 > MAX_TX_ITEMS or total > MAX_TX_BYTES:
            raise SerializationError(
                f"one commit writes {len(encoded)} keys / {total} bytes; DynamoDB transactions "
                f"hold at most {MAX_TX_BYTES} bytes"
            )
        return parts

    async def roll_forward(self, run_id: str, version: int) -> None:
        """Apply the pending journal of commit ``version`` to the key items, then clear it.
        Idempotent and safe to run concurrently: every chunk is conditional on the journal
        still being pending, so a late applier never overwrites a later commit."""
        prefix = f"j#{version:012d}#"
        r = await self.aws.ddb(
            "query",
            TableName=self.table,
            KeyConditionExpression="pk = :p AND begins_with(sk, :j)",
            ExpressionAttributeValues={":p": _s(self.pk(run_id)), ":j": _s(prefix)},
            ConsistentRead=True,
        )
        parts = sorted(r.get("Items", []), key=lambda i: i["sk"]["S"])
        ops: list[tuple[str, str, str]] = []
        for part in parts:
            ops.extend((str(o), str(k), str(t)) for o, k, t in json.loads(part["ops"]["S"]))
        guard = {
            "ConditionCheck": {
                "TableName": self.table,
                "Key": self._meta_key(run_id),
                "ConditionExpression": "#p = :v",
                "ExpressionAttributeNames": {"#p": "pend"},
                "ExpressionAttributeValues": {":v": _n(version)},
            }
        }
        chunks: list[list[dict[str, Any]]] = [[]]
        size = 0
        for op, key, text in ops:
            n = len(key.encode()) + len(text.encode()) + 64
            if chunks[-1] and (len(chunks[-1]) + 2 > MAX_TX_ITEMS or size + n > MAX_TX_BYTES):
                chunks.append([])
                size = 0
            chunks[-1].append(self._key_action(run_id, op, key, text, version))
            size += n
        finish = [
            {
                "Update": {
                    "TableName": self.table,
                    "Key": self._meta_key(run_id),
                    "UpdateExpression": "REMOVE #p, #ls, #ld",
                    "ConditionExpression": "#p = :v",
                    "ExpressionAttributeNames": {"#p": "pend", "#ls": "ls", "#ld": "ld"},
                    "ExpressionAttributeValues": {":v": _n(version)},
                }
            },
            *(
                {"Delete": {"TableName": self.table, "Key": {"pk": p["pk"], "sk": p["sk"]}}}
                for p in parts
            ),
        ]
        for chunk in [*([guard, *c] for c in chunks if c), finish]:
            for attempt in range(_MAX_CONFLICT_RETRIES):
                try:
                    await self.aws.ddb("transact_write_items", TransactItems=chunk)
                    break
                except Exception as exc:
                    if error_code(exc) not in (
                        "TransactionCanceledException",
                        "TransactionConflict",
                    ):
                        raise
                    meta = await self.get_meta(run_id)
                    if meta is None or int(meta.get("pend", {"N": "-1"})["N"]) != version:
                        return  # another applier finished it
                    await asyncio.sleep(min(0.002 * (attempt + 1), 0.05))
            else:
                raise RuntimeError(f"run {run_id!r}: journal {version} kept conflicting")

    async def mark_published(self, run_id: str, status: str) -> None:
        """Record on the meta item that the final result (``status``) was published."""
        await self.aws.ddb(
            "update_item",
            TableName=self.table,
            Key=self._meta_key(run_id),
            UpdateExpression="SET #rs = :s, #ra = :t",
            ConditionExpression="attribute_exists(#v)",
            ExpressionAttributeNames={"#rs": "rs", "#ra": "ra", "#v": "ver"},
            ExpressionAttributeValues={":s": _s(status), ":t": _n(time.time())},
        )

    async def delete_run(self, run_id: str) -> int:
        """Delete every item of a run (meta, keys, journal); returns how many were deleted."""
        items = await self._query(run_id)
        for i in range(0, len(items), 25):
            batch = [
                {"DeleteRequest": {"Key": {"pk": it["pk"], "sk": it["sk"]}}}
                for it in items[i : i + 25]
            ]
            request: dict[str, Any] = {self.table: batch}
            while request:
                r = await self.aws.ddb("batch_write_item", RequestItems=request)
                request = r.get("UnprocessedItems") or {}
                if request:
                    await asyncio.sleep(0.05)
        return len(items)


class DynamoRunContext:
    """A run's context in a :class:`DynamoRunStore` (a ``DistributedContext``)."""

    __slots__ = ("_on_commit", "_run_id", "_store")

    def __init__(
        self,
        store: DynamoRunStore,
        run_id: str,
        on_commit: Any = None,
    ) -> None:
        self._store = store
        self._run_id = run_id
        self._on_commit = on_commit

    async def _commit(
        self, ops: Sequence[PatchOperation], expected: int | None, status: str | None = None
    ) -> bool:
        ok, written = await self._store.commit(self._run_id, ops, expected, status)
        if ok and self._on_commit is not None:
            self._on_commit(written)
        return ok

    async def get(self, key: str, default: Any = None) -> Any:
        """See AsyncContext."""
        present, value = await self._store.get_key(self._run_id, key)
        return value if present else default

    async def set(self, key: str, value: Any) -> None:
        """See AsyncContext (an atomic single-key commit)."""
        await self._commit([PatchOperation("set", key, value)], None)

    async def has(self, key: str) -> bool:
        """See AsyncContext."""
        return (await self._store.get_key(self._run_id, key))[0]

    async def delete(self, key: str) -> bool:
        """See AsyncContext."""
        had = await self.has(key)
        await self._commit([PatchOperation("delete", key)], None)
        return had

    async def to_dict(self) -> dict[str, Any]:
        """See AsyncContext."""
        return (await self._store.load(self._run_id)).data

    async def patch(self, ops: Iterable[PatchOperation]) -> None:
        """See AsyncContext (one atomic commit)."""
        await self._commit(list(ops), None)

    async def load(self) -> Snapshot:
        """See DistributedContext."""
        return await self._store.load(self._run_id)

    async def commit(
        self,
        ops: Sequence[PatchOperation],
        expected_version: int,
        status: str | None = None,
    ) -> bool:
        """See DistributedContext (``status`` keeps the meta item's status and the active-run
        index)."""
        return await self._commit(ops, expected_version, status)


class DynamoLeasingContext(DynamoRunContext):
    """A :class:`DynamoRunContext` that also implements the engine's ``IncrementalContext``
    protocol with the leases of ``coord``: a lease is taken just before the read, and the
    commit releases the delivery's lease and takes its successor's in its own transaction
    (two DynamoDB requests saved per node; a successor run inline needs no lease request)."""

    __slots__ = ("_coord",)

    def __init__(
        self,
        store: DynamoRunStore,
        run_id: str,
        coord: DynamoCoordinationStore,
        on_commit: Any = None,
    ) -> None:
        super().__init__(store, run_id, on_commit)
        self._coord = coord

    async def load_since(
        self, since: int, epoch: str, lease: tuple[str, str, float] | None = None
    ) -> Changes | None:
        """See IncrementalContext (a full read, after taking ``lease``; None when another
        delivery holds it)."""
        if lease is not None and not await self._coord.set_if_not_exist(*lease):
            return None
        snap = await self._store.load(self._run_id)
        return Changes(snap.version, "", True, snap.data)

    async def commit_release(
        self,
        ops: list[PatchOperation],
        expected_version: int,
        release: Sequence[tuple[str, str]] = (),
        take: Sequence[tuple[str, str]] = (),
        ttl_seconds: float = 0.0,
        epoch: str = "",
        status: str | None = None,
    ) -> CommitResult:
        """See IncrementalContext (a refusal carries no changes: the engine reloads)."""
        leases = LeaseOps(self._coord, release, take, ttl_seconds)
        ok, written = await self._store.commit(self._run_id, ops, expected_version, status, leases)
        if not ok:
            return CommitResult(False)
        for key, token in leases.left_out():
            await self._coord.compare_and_delete(key, token)
        if self._on_commit is not None:
            self._on_commit(written)
        return CommitResult(True, "", leases.taken)

    async def lease_holder(self, key: str) -> str | None:
        """See IncrementalContext."""
        return await self._coord.get(key)

    async def extend_lease(self, key: str, ttl_seconds: float) -> bool:
        """See IncrementalContext."""
        return await self._coord.extend_ttl(key, ttl_seconds)

    async def release_lease(self, key: str, token: str) -> bool:
        """See IncrementalContext."""
        return await self._coord.compare_and_delete(key, token)


class DynamoCoordinationStore:
    """``CoordinationStore`` on DynamoDB: conditional writes, ``ADD`` counters, and expiry
    checked on every read and in every condition (an expired item is absent, whatever
    DynamoDB's lazy TTL sweeper has not deleted yet). Times come from this machine's clock."""

    def __init__(self, aws: AwsClients, table: str, *, prefix: str = "") -> None:
        self.aws = aws
        self.table = table
        self.prefix = prefix

    def _key(self, key: str) -> dict[str, Any]:
        pk = "c#" + self.prefix + key
        if len(pk.encode("utf-8")) > _PK_LIMIT:  # e.g. the lease of a node with a huge id
            pk = "c#h#" + hashlib.sha256(pk.encode("utf-8")).hexdigest()
        return {"pk": _s(pk), "sk": _s("#")}

    @staticmethod
    def _expiry(ttl_seconds: float) -> tuple[dict[str, str], dict[str, str]]:
        exp = time.time() + ttl_seconds
        return _n(exp), _n(int(exp) + 1)

    _NAMES: Final = {"#e": "exp", "#t": "ttl"}

    async def increment(self, key: str, ttl_seconds: float) -> int:
        """See CoordinationStore (``ADD`` on a live item; a fresh item when absent/expired)."""
        while True:
            exp, ttl = self._expiry(ttl_seconds)
            now = _n(time.time())
            try:
                r = await self.aws.ddb(
                    "update_item",
                    TableName=self.table,
                    Key=self._key(key),
                    UpdateExpression="ADD #n :one SET #e = :e, #t = :t",
                    ConditionExpression="attribute_exists(#e) AND #e > :now",
                    ExpressionAttributeNames={**self._NAMES, "#n": "n"},
                    ExpressionAttributeValues={":one": _n(1), ":e": exp, ":t": ttl, ":now": now},
                    ReturnValues="UPDATED_NEW",
                )
                return int(r["Attributes"]["n"]["N"])
            except Exception as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
            item = {**self._key(key), "n": _n(1), "exp": exp, "ttl": ttl}
            if await self._put_if_absent(item):
                return 1

    def _absent_put(self, item: dict[str, Any]) -> dict[str, Any]:
        """``PutItem`` parameters writing ``item`` only when its key is absent or expired."""
        return {
            "TableName": self.table,
            "Item": item,
            "ConditionExpression": "attribute_not_exists(#e) OR #e <= :now",
            "ExpressionAttributeNames": {"#e": "exp"},
            "ExpressionAttributeValues": {":now": _n(time.time())},
        }

    def _held_delete(self, key: str, value: str) -> dict[str, Any]:
        """``DeleteItem`` parameters deleting ``key`` only when it is live and holds
        ``value``."""
        return {
            "TableName": self.table,
            "Key": self._key(key),
            "ConditionExpression": "#val = :v AND #e > :now",
            "ExpressionAttributeNames": {"#val": "val", "#e": "exp"},
            "ExpressionAttributeValues": {":v": _s(value), ":now": _n(time.time())},
        }

    def _value_item(self, key: str, value: str, ttl_seconds: float) -> dict[str, Any]:
        exp, ttl = self._expiry(ttl_seconds)
        return {**self._key(key), "val": _s(value), "exp": exp, "ttl": ttl}

    def take_item(self, key: str, token: str, ttl_seconds: float) -> dict[str, Any]:
        """A transaction item doing :meth:`set_if_not_exist` (its condition fails when the
        key is live)."""
        return {"Put": self._absent_put(self._value_item(key, token, ttl_seconds))}

    def release_item(self, key: str, token: str) -> dict[str, Any]:
        """A transaction item doing :meth:`compare_and_delete` (its condition fails unless
        ``token`` holds the live key)."""
        return {"Delete": self._held_delete(key, token)}

    async def _conditional(self, op: str, params: dict[str, Any]) -> bool:
        """``op`` with ``params``; False when its condition failed."""
        try:
            await self.aws.ddb(op, **params)
            return True
        except Exception as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            return False

    async def _put_if_absent(self, item: dict[str, Any]) -> bool:
        return await self._conditional("put_item", self._absent_put(item))

    async def set_if_not_exist(self, key: str, value: str, ttl_seconds: float) -> bool:
        """See CoordinationStore (a conditional ``PutItem``)."""
        return await self._put_if_absent(self._value_item(key, value, ttl_seconds))

    async def extend_ttl(self, key: str, ttl_seconds: float) -> bool:
        """See CoordinationStore (conditional on the item being live)."""
        exp, ttl = self._expiry(ttl_seconds)
        try:
            await self.aws.ddb(
                "update_item",
                TableName=self.table,
                Key=self._key(key),
                UpdateExpression="SET #e = :e, #t = :t",
                ConditionExpression="attribute_exists(#e) AND #e > :now",
                ExpressionAttributeNames=self._NAMES,
                ExpressionAttributeValues={":e": exp, ":t": ttl, ":now": _n(time.time())},
            )
            return True
        except Exception as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            return False

    async def delete(self, key: str) -> None:
        """See CoordinationStore."""
        await self.aws.ddb("delete_item", TableName=self.table, Key=self._key(key))

    async def get(self, key: str) -> str | None:
        """See CoordinationStore (None when absent or expired)."""
        r = await self.aws.ddb(
            "get_item", TableName=self.table, Key=self._key(key), ConsistentRead=True
        )
        item = r.get("Item")
        if item is None or float(item["exp"]["N"]) <= time.time():
            return None
        if "val" in item:
            return str(item["val"]["S"])
        return str(int(item["n"]["N"]))

    async def compare_and_delete(self, key: str, value: str) -> bool:
        """Delete ``key`` only when it is live and holds ``value`` (atomic lease release)."""
        return await self._conditional("delete_item", self._held_delete(key, value))


async def create_table(
    aws: AwsClients,
    table: str,
    *,
    billing_mode: str = "PAY_PER_REQUEST",
    ttl: bool = True,
    wait: bool = True,
) -> None:
    """Create the Flowcraft table (keys ``pk``/``sk``, the sparse ``active`` index) and turn on
    DynamoDB TTL on the ``ttl`` attribute. Does nothing when the table exists."""
    try:
        await aws.ddb(
            "create_table",
            TableName=table,
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
                {"AttributeName": "gpk", "AttributeType": "S"},
                {"AttributeName": "gsk", "AttributeType": "S"},
            ],
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": ACTIVE_INDEX,
                    "KeySchema": [
                        {"AttributeName": "gpk", "KeyType": "HASH"},
                        {"AttributeName": "gsk", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            ],
            BillingMode=billing_mode,
        )
    except Exception as exc:
        if error_code(exc) != "ResourceInUseException":
            raise
        return
    if wait:
        for _ in range(600):
            r = await aws.ddb("describe_table", TableName=table)
            if r["Table"]["TableStatus"] == "ACTIVE":
                break
            await asyncio.sleep(0.5)
    if ttl:
        await aws.ddb(
            "update_time_to_live",
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"},
        )


async def delete_table(aws: AwsClients, table: str) -> None:
    """Delete the table (no error when it does not exist)."""
    try:
        await aws.ddb("delete_table", TableName=table)
    except Exception as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
