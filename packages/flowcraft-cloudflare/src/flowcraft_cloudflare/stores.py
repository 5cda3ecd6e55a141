"""The run store and the coordination store, each a thin client of the companion Worker's
Durable Objects (``worker/index.js``).

* Run store: one SQLite Durable Object per run holds one row per context key (the value as the
  text :func:`~flowcraft.distributed.encode_value` made), the version and the status. A commit
  sends only the changed keys and is one DO transaction with the version check
  (``runs/commit``); the active-run index (``runs/active``) pages by run id with a cursor.
* Coordination store: keys in ``COORD_SHARDS`` Durable Objects (by a hash of the key); every
  operation is one synchronous SQL sequence inside its DO, so operations on a key are
  serialised; the expiry is checked on every read, an alarm deletes expired rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from flowcraft import PatchOperation
from flowcraft.distributed import Snapshot, decode_value, encode_value

from .client import WorkerClient

__all__ = [
    "MAX_VALUE_BYTES",
    "WorkerCoordinationStore",
    "WorkerRunContext",
    "WorkerRunStore",
]

MAX_VALUE_BYTES: Final = 1_000_000
"""Largest encoded context or coordination value the Worker stores (a SQLite-backed Durable
Object row may hold about 2 MB; the Worker refuses more than this with a 400)."""


class WorkerRunStore:
    """Runs in the companion Worker (see the module docstring). ``on_commit(bytes)`` is called
    after each successful commit, with the size of the changes sent."""

    def __init__(
        self,
        client: WorkerClient,
        *,
        max_value_bytes: int = MAX_VALUE_BYTES,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.client = client
        self.max_value_bytes = max_value_bytes
        self.on_commit = on_commit

    async def load(self, run_id: str) -> Snapshot:
        """Every key of the run, decoded, and its version (0 and no keys: no run)."""
        r = await self.client.call("runs/load", {"run": run_id})
        return Snapshot({k: decode_value(v) for k, v in r["data"].items()}, int(r["version"]))

    async def commit(
        self,
        run_id: str,
        ops: Iterable[PatchOperation],
        expected: int | None,
        status: str | None = None,
    ) -> bool:
        """Apply ``ops`` in order if the version is ``expected`` (None: whatever it is), bump
        it, record ``status`` (None: unchanged). One request, one DO transaction."""
        # Encoded before anything is sent: an unstorable value raises naming its key.
        enc = [
            [
                op.key,
                encode_value(op.key, op.value, self.max_value_bytes) if op.op == "set" else None,
            ]
            for op in ops
        ]
        r = await self.client.call(
            "runs/commit", {"run": run_id, "ops": enc, "expected": expected, "status": status}
        )
        ok = bool(r["ok"])
        if ok and self.on_commit is not None:
            self.on_commit(len(json.dumps(enc, ensure_ascii=False).encode("utf-8")))
        return ok

    async def statuses(self, run_ids: Sequence[str]) -> Mapping[str, str | None]:
        """The recorded status of each run (None: no run), in one request."""
        out: dict[str, str | None] = {}
        for i in range(0, len(run_ids), 1000):
            r = await self.client.call("runs/status", {"runs": list(run_ids[i : i + 1000])})
            out.update(r["statuses"])
        return out

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """A page of non-final run ids (ordered by id) and the cursor of the next page."""
        r = await self.client.call(
            "runs/active", {"cursor": cursor, "limit": max(1, min(limit, 1000))}
        )
        return [str(x) for x in r["runs"]], r["cursor"]

    async def delete_run(self, run_id: str) -> int:
        """Delete the run's keys and its index entry; 1 if the run existed, else 0."""
        return int((await self.client.call("runs/delete", {"run": run_id}))["deleted"])


class WorkerRunContext:
    """A run's context (``DistributedContext``) in a :class:`WorkerRunStore`."""

    __slots__ = ("_run_id", "_store")

    def __init__(self, store: WorkerRunStore, run_id: str) -> None:
        self._store = store
        self._run_id = run_id

    async def load(self) -> Snapshot:
        """See DistributedContext."""
        return await self._store.load(self._run_id)

    async def commit(
        self, ops: Sequence[PatchOperation], expected_version: int, status: str | None = None
    ) -> bool:
        """See DistributedContext."""
        return await self._store.commit(self._run_id, ops, expected_version, status)

    async def get(self, key: str, default: Any = None) -> Any:
        """See AsyncContext."""
        return (await self.load()).data.get(key, default)

    async def set(self, key: str, value: Any) -> None:
        """See AsyncContext."""
        await self._store.commit(self._run_id, [PatchOperation("set", key, value)], None)

    async def has(self, key: str) -> bool:
        """See AsyncContext."""
        return key in (await self.load()).data

    async def delete(self, key: str) -> bool:
        """See AsyncContext."""
        had = await self.has(key)
        await self._store.commit(self._run_id, [PatchOperation("delete", key)], None)
        return had

    async def to_dict(self) -> dict[str, Any]:
        """See AsyncContext."""
        return (await self.load()).data

    async def patch(self, ops: Iterable[PatchOperation]) -> None:
        """See AsyncContext."""
        await self._store.commit(self._run_id, ops, None)


class WorkerCoordinationStore:
    """``CoordinationStore`` in the companion Worker's coordination Durable Objects: each
    operation is one request (``POST /v1/coord``)."""

    def __init__(self, client: WorkerClient) -> None:
        self.client = client

    async def _op(self, op: str, key: str, **fields: Any) -> Any:
        body = {"op": op, "key": key, **fields}
        return (await self.client.call("coord", body, repeatable=op != "increment"))["result"]

    async def increment(self, key: str, ttl_seconds: float) -> int:
        """See CoordinationStore."""
        return int(await self._op("increment", key, ttl=ttl_seconds))

    async def set_if_not_exist(self, key: str, value: str, ttl_seconds: float) -> bool:
        """See CoordinationStore."""
        return bool(await self._op("set_if_not_exist", key, value=value, ttl=ttl_seconds))

    async def extend_ttl(self, key: str, ttl_seconds: float) -> bool:
        """See CoordinationStore."""
        return bool(await self._op("extend_ttl", key, ttl=ttl_seconds))

    async def delete(self, key: str) -> None:
        """See CoordinationStore."""
        await self._op("delete", key)

    async def get(self, key: str) -> str | None:
        """See CoordinationStore."""
        got = await self._op("get", key)
        return None if got is None else str(got)

    async def compare_and_delete(self, key: str, value: str) -> bool:
        """See CoordinationStore."""
        return bool(await self._op("compare_and_delete", key, value=value))
