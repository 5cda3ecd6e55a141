"""The run store (``DistributedContext``) and the coordination store, as files.

Every file appears whole or not at all: it is written under ``tmp/`` and moved into place with
``os.replace``, which is atomic within one filesystem, so readers never need a lock. Blocking
file I/O runs in threads (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flowcraft import PatchOperation
from flowcraft.distributed import Snapshot, decode_value, encode_value

FINAL = frozenset({"completed", "failed", "stalled", "cancelled"})
"""Run statuses after which nothing changes."""


def layout(root: str | Path) -> Path:
    """Create the backend directory's subdirectories (if missing); returns it as a Path."""
    path = Path(root)
    for sub in ("queue", "dead", "runs", "coord", "results", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(root: Path, path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` in one step (a file under ``root/tmp``, then rename)."""
    tmp = root / "tmp" / uuid.uuid4().hex
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``. flock locks belong to the open file, so they
    exclude the other threads of this process as well as other processes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def run_path(root: Path, run_id: str, suffix: str = "json", folder: str = "runs") -> Path:
    """``runs/<run id, %-quoted>.json`` (and ``.lock`` beside it), ``results/...``."""
    return root / folder / f"{quote(run_id, safe='')}.{suffix}"


def read_run(root: Path, run_id: str) -> dict[str, Any]:
    """``{"run", "version", "status", "data"}`` of a run (version 0, no data when absent);
    ``data`` maps each key to its JSON text (:func:`encode_value`)."""
    try:
        rec: dict[str, Any] = json.loads(run_path(root, run_id).read_text("utf-8"))
    except FileNotFoundError:
        return {"run": run_id, "version": 0, "status": None, "data": {}}
    return rec


def commit_run(
    root: Path,
    run_id: str,
    ops: Sequence[tuple[str, str | None]],
    expected: int | None,
    status: str | None,
) -> bool:
    """Compare-and-set: under the run's lock, apply ``ops`` (``(key, JSON text)``, ``None``
    deletes) if the version is still ``expected`` (None: always); bump it; set ``status``."""
    with locked(run_path(root, run_id, "lock")):
        rec = read_run(root, run_id)
        if expected is not None and rec["version"] != expected:
            return False
        for key, text in ops:
            if text is None:
                rec["data"].pop(key, None)
            else:
                rec["data"][key] = text
        rec["version"] += 1
        rec["status"] = status or rec["status"] or "running"
        write_atomic(root, run_path(root, run_id), json.dumps(rec, ensure_ascii=False))
    return True


def active_runs(root: Path, after: str, limit: int) -> list[str]:
    """Up to ``limit`` sorted ids greater than ``after`` of runs that are not final."""
    recs = (json.loads(p.read_text("utf-8")) for p in (root / "runs").glob("*.json"))
    return sorted(r["run"] for r in recs if r["status"] not in FINAL and r["run"] > after)[:limit]


class FileRunContext:
    """A run's record (``DistributedContext``): a read is one file read, a write one commit."""

    __slots__ = ("_root", "_run_id")

    def __init__(self, root: Path, run_id: str) -> None:
        self._root = root
        self._run_id = run_id

    async def _commit(
        self, ops: Iterable[PatchOperation], expected: int | None, status: str | None = None
    ) -> bool:
        # Encoded before anything is written: an unstorable value raises SerializationError
        # naming its key, and the engine fails the node with it.
        enc = [(op.key, encode_value(op.key, op.value) if op.op == "set" else None) for op in ops]
        args = (self._root, self._run_id, enc, expected, status)
        return await asyncio.to_thread(commit_run, *args)

    async def load(self) -> Snapshot:
        """See DistributedContext."""
        rec = await asyncio.to_thread(read_run, self._root, self._run_id)
        return Snapshot({k: decode_value(v) for k, v in rec["data"].items()}, rec["version"])

    async def commit(
        self, ops: Sequence[PatchOperation], expected_version: int, status: str | None = None
    ) -> bool:
        """See DistributedContext."""
        return await self._commit(ops, expected_version, status)

    async def get(self, key: str, default: Any = None) -> Any:
        """See AsyncContext."""
        return (await self.load()).data.get(key, default)  # a stored None is a value

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


class FileCoordinationStore:
    """``CoordinationStore``: one file per key (``coord/<sha256 of key>`` holding ``[value,
    expires at]``), every operation under one lock; an expired key is absent."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _op(self, op: str, key: str, value: str = "", ttl: float = 0.0) -> Any:
        path = self.root / "coord" / hashlib.sha256(key.encode()).hexdigest()
        with locked(self.root / "coord.lock"):
            now = time.time()
            try:
                cur, expires = json.loads(path.read_text("utf-8"))
            except FileNotFoundError:
                cur, expires = None, 0.0
            if expires <= now:
                cur = None
            if op == "get":
                return cur
            if op == "delete" or (op == "cad" and cur is not None and cur == value):
                path.unlink(missing_ok=True)
                return True
            if op == "incr":
                new = str(int(cur or 0) + 1)
            elif op == "setnx" and cur is None:
                new = value
            elif op == "extend" and cur is not None:
                new = cur
            else:
                return False
            write_atomic(self.root, path, json.dumps([new, now + ttl]))
            return int(new) if op == "incr" else True

    async def increment(self, key: str, ttl_seconds: float) -> int:
        """See CoordinationStore."""
        return int(await asyncio.to_thread(self._op, "incr", key, "", ttl_seconds))

    async def set_if_not_exist(self, key: str, value: str, ttl_seconds: float) -> bool:
        """See CoordinationStore."""
        return bool(await asyncio.to_thread(self._op, "setnx", key, value, ttl_seconds))

    async def extend_ttl(self, key: str, ttl_seconds: float) -> bool:
        """See CoordinationStore."""
        return bool(await asyncio.to_thread(self._op, "extend", key, "", ttl_seconds))

    async def delete(self, key: str) -> None:
        """See CoordinationStore."""
        await asyncio.to_thread(self._op, "delete", key)

    async def get(self, key: str) -> str | None:
        """See CoordinationStore."""
        value = await asyncio.to_thread(self._op, "get", key)
        return None if value is None else str(value)

    async def compare_and_delete(self, key: str, value: str) -> bool:
        """See CoordinationStore."""
        return bool(await asyncio.to_thread(self._op, "cad", key, value))
