"""SQLite backend: queue, run store and coordination in one database file.

Several worker *processes* on one machine share the file (WAL mode). Every statement is
parameterised; keys are never pasted into SQL. Blocking sqlite calls run on one dedicated
thread per backend object, so the event loop stays responsive.

Tables: ``fc_jobs`` (queue with visibility timeouts: a claimed message is invisible until its
``available_at``), ``fc_ctx`` (one row per run and key, JSON values, and ``ver``: the run
version that last wrote the key; a deleted key keeps its row with an empty value, which no
JSON text is), ``fc_runs`` (version, status and last progress per run, indexed for the
reconciler), ``fc_coord`` (coordination keys with expiry checked on every read), ``fc_dead``
(dead letters). A worker that saw version N of a run reads only the rows with ``ver > N``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..context import PatchOperation
from ..state import FINAL_STATUSES
from .adapter import BaseDistributedAdapter
from .codec import decode_value, encode_value
from .consumer import PollingConsumer
from .contracts import Capabilities, Changes, CommitResult, JobPayload, Snapshot
from .delivery import Delivery, JobHandler
from .doorbell import Doorbell
from .results import FinalSource, PullSource

log = logging.getLogger("flowcraft.sqlite")

T = TypeVar("T")

_FINAL = ("completed", "failed", "stalled", "cancelled")
_SET_AVAILABLE = "UPDATE fc_jobs SET available_at = ? WHERE id = ?"
_VERSION = "SELECT version FROM fc_runs WHERE run_id = ?"

SCHEMA = """
CREATE TABLE IF NOT EXISTS fc_jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  body TEXT NOT NULL,
  available_at REAL NOT NULL,
  receives INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS fc_jobs_available ON fc_jobs (available_at, id);
CREATE TABLE IF NOT EXISTS fc_ctx (
  run_id TEXT NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  ver INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fc_runs (
  run_id TEXT PRIMARY KEY,
  version INTEGER NOT NULL,
  status TEXT NOT NULL,
  updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS fc_runs_active ON fc_runs (status, updated_at);
CREATE TABLE IF NOT EXISTS fc_coord (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL,
  expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fc_results (
  run_id TEXT PRIMARY KEY,
  result TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fc_dead (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  body TEXT NOT NULL,
  reason TEXT NOT NULL,
  at REAL NOT NULL
);
"""


_DELETED = ""
"""``fc_ctx.value`` of a deleted key (the codec never produces empty text)."""


def _read_run(c: sqlite3.Connection, run_id: str) -> Snapshot:
    """Inside a transaction: every key of a run and its version (0 and none when absent)."""
    row = c.execute("SELECT version FROM fc_runs WHERE run_id = ?", (run_id,)).fetchone()
    data = {
        k: decode_value(v)
        for k, v in c.execute(
            "SELECT key, value FROM fc_ctx WHERE run_id = ? AND value != ''", (run_id,)
        )
    }
    return Snapshot(data, row[0] if row else 0)


def _read_since(c: sqlite3.Connection, run_id: str, since: int) -> Changes:
    """Inside a transaction: the run's rows written after version ``since`` (every live row
    when ``since`` is 0 or newer than the run)."""
    row = c.execute("SELECT version FROM fc_runs WHERE run_id = ?", (run_id,)).fetchone()
    version = row[0] if row else 0
    if since <= 0 or since > version:
        return Changes(version, "", True, _read_run(c, run_id).data)
    sets: dict[str, Any] = {}
    deletes: list[str] = []
    for k, v in c.execute(
        "SELECT key, value FROM fc_ctx WHERE run_id = ? AND ver > ?", (run_id, since)
    ):
        if v == _DELETED:
            deletes.append(k)
        else:
            sets[k] = decode_value(v)
    return Changes(version, "", False, sets, deletes)


SCHEMA_VERSION = 2
"""The database layout this code reads and writes (``PRAGMA user_version``); 2 added
``fc_ctx.ver``."""


def _migrate(c: sqlite3.Connection) -> None:
    """Bring a database made by an earlier version up to this schema (idempotent; another
    process may be doing the same). A file of a newer layout is refused: this code would
    misread what newer processes write."""
    found = int(c.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"database layout version {found} is newer than the {SCHEMA_VERSION} this "
            "flowcraft-core knows: upgrade this process"
        )
    if found == SCHEMA_VERSION:
        return
    cols = {r[1] for r in c.execute("PRAGMA table_info(fc_ctx)")}
    if "ver" not in cols:
        try:
            c.execute("ALTER TABLE fc_ctx ADD COLUMN ver INTEGER NOT NULL DEFAULT 0")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):
                raise
    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _coord_op(c: sqlite3.Connection, now: float, op: str, key: str, value: str, ttl: float) -> Any:
    """Inside a write transaction: one coordination operation; expired keys count as absent."""
    row = c.execute("SELECT value, expires_at FROM fc_coord WHERE key = ?", (key,)).fetchone()
    live = row is not None and row[1] > now
    cur = row[0] if live else None
    if op == "get":
        return cur
    if op == "delete":
        c.execute("DELETE FROM fc_coord WHERE key = ?", (key,))
        return None
    if op == "cad":
        if live and cur == value:
            c.execute("DELETE FROM fc_coord WHERE key = ?", (key,))
            return True
        return False
    if op == "extend":
        if not live:
            return False
        c.execute("UPDATE fc_coord SET expires_at = ? WHERE key = ?", (now + ttl, key))
        return True
    if op == "setnx":
        if live:
            return False
        new = value
    elif op == "incr":
        new = str(int(cur) + 1 if cur is not None else 1)
    else:  # pragma: no cover
        raise ValueError(op)
    c.execute(
        "INSERT INTO fc_coord (key, value, expires_at) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
        (key, new, now + ttl),
    )
    return True if op == "setnx" else int(new)


class SqliteBackend:
    """One connection to a Flowcraft SQLite database, used by adapters, contexts and stores."""

    def __init__(
        self,
        path: str | Path,
        *,
        visibility_timeout: float = 30.0,
        busy_timeout: float = 30.0,
        max_value_bytes: int | None = None,
    ) -> None:
        self.path = str(path)
        self.visibility_timeout = visibility_timeout
        self.max_value_bytes = max_value_bytes
        self._busy_timeout = busy_timeout
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowcraft-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.commits = 0
        self.bytes_written = 0
        self.bell = Doorbell(os.path.abspath(self.path))
        """Rings ``jobs`` when a message becomes visible now and ``runs`` when a run's
        indexed status or result changes, so idle workers and waiting clients of any process
        on this machine wake at once (see :mod:`~flowcraft.distributed.doorbell`)."""

    # -- plumbing ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Switching to WAL and creating the schema take locks that the busy handler does
            # not always wait for when several processes open a new file at once: retry.
            deadline = time.monotonic() + self._busy_timeout
            while True:
                try:
                    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                        conn.execute("PRAGMA journal_mode=WAL")
                    conn.executescript(SCHEMA)
                    _migrate(conn)
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        conn.close()
                        raise
                    time.sleep(0.005)
                except BaseException:
                    conn.close()
                    raise
            self._conn = conn
        return self._conn

    class _tx:
        def __init__(self, conn: sqlite3.Connection, immediate: bool = True) -> None:
            self.conn = conn
            self.immediate = immediate

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE" if self.immediate else "BEGIN")
            return self.conn

        def __exit__(self, et: object, ev: object, tb: object) -> None:
            if et is None:
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the backend's thread."""
        loop = asyncio.get_running_loop()

        def run() -> T:
            with self._lock:
                return fn(self._connect())

        return await loop.run_in_executor(self._pool, run)

    def close(self) -> None:
        """Close the connection and the thread."""

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self.bell.close()  # the ringing socket (listeners belong to adapters)

        self._pool.submit(shut).result()
        self._pool.shutdown(wait=True)

    # -- queue -----------------------------------------------------------------------------------

    async def put(self, body: str, delay: float = 0.0) -> None:
        """Enqueue a message deliverable after ``delay`` seconds."""
        at = time.time() + max(delay, 0.0)

        def q(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO fc_jobs (body, available_at) VALUES (?, ?)", (body, at))
            if delay <= 0:
                self.bell.ring("jobs")

        await self.call(q)

    async def put_many(self, bodies: Sequence[str]) -> None:
        """Enqueue messages deliverable now, in one transaction."""
        at = time.time()

        def q(c: sqlite3.Connection) -> None:
            with self._tx(c):
                c.executemany(
                    "INSERT INTO fc_jobs (body, available_at) VALUES (?, ?)",
                    [(b, at) for b in bodies],
                )
            self.bell.ring("jobs")

        await self.call(q)

    async def claim(self, limit: int) -> list[tuple[int, str, int]]:
        """Take up to ``limit`` visible messages, making them invisible for the visibility
        timeout; returns ``(id, body, receive_count)``."""
        vis = self.visibility_timeout

        def q(c: sqlite3.Connection) -> list[tuple[int, str, int]]:
            now = time.time()
            # Cheap check outside a write transaction first (most polls find nothing).
            if (
                c.execute(
                    "SELECT 1 FROM fc_jobs WHERE available_at <= ? LIMIT 1", (now,)
                ).fetchone()
                is None
            ):
                return []
            with self._tx(c):
                rows = c.execute(
                    "SELECT id, body, receives FROM fc_jobs WHERE available_at <= ? "
                    "ORDER BY available_at, id LIMIT ?",
                    (now, limit),
                ).fetchall()
                c.executemany(
                    "UPDATE fc_jobs SET available_at = ?, receives = receives + 1 WHERE id = ?",
                    [(now + vis, r[0]) for r in rows],
                )
            return [(r[0], r[1], r[2] + 1) for r in rows]

        return await self.call(q)

    async def ack(self, message_id: int) -> None:
        """Delete a delivered message."""
        await self.call(lambda c: c.execute("DELETE FROM fc_jobs WHERE id = ?", (message_id,)))

    async def nack(self, message_id: int, delay: float = 0.0) -> None:
        """Make a delivered message visible again after ``delay``."""
        at = time.time() + delay

        def q(c: sqlite3.Connection) -> None:
            c.execute("UPDATE fc_jobs SET available_at = ? WHERE id = ?", (at, message_id))
            if delay <= 0:
                self.bell.ring("jobs")

        await self.call(q)

    async def extend(self, message_id: int, seconds: float) -> None:
        """Keep a delivered message invisible for ``seconds`` more."""
        at = time.time() + seconds
        await self.call(
            lambda c: c.execute(
                "UPDATE fc_jobs SET available_at = ? WHERE id = ?", (at, message_id)
            )
        )

    async def dead_letter(self, message_id: int | None, body: str, reason: str) -> None:
        """Move a message to ``fc_dead`` (and out of the queue)."""

        def q(c: sqlite3.Connection) -> None:
            with self._tx(c):
                c.execute(
                    "INSERT INTO fc_dead (body, reason, at) VALUES (?, ?, ?)",
                    (body, reason, time.time()),
                )
                if message_id is not None:
                    c.execute("DELETE FROM fc_jobs WHERE id = ?", (message_id,))

        await self.call(q)

    async def queue_depth(self) -> int:
        """Messages not yet acked."""
        return int(
            await self.call(lambda c: c.execute("SELECT COUNT(*) FROM fc_jobs").fetchone()[0])
        )

    async def dead_letters(self) -> list[tuple[str, str]]:
        """``(body, reason)`` of every dead letter."""
        return await self.call(
            lambda c: [
                (r[0], r[1]) for r in c.execute("SELECT body, reason FROM fc_dead ORDER BY id")
            ]
        )

    # -- run store -------------------------------------------------------------------------------

    async def load(self, run_id: str) -> Snapshot:
        """All keys of a run and its version (version 0 and no keys when absent)."""

        def q(c: sqlite3.Connection) -> Snapshot:
            with self._tx(c, immediate=False):
                return _read_run(c, run_id)

        return await self.call(q)

    async def get_key(self, run_id: str, key: str) -> tuple[bool, Any]:
        """``(present, value)`` of one key."""

        def q(c: sqlite3.Connection) -> tuple[bool, Any]:
            row = c.execute(
                "SELECT value FROM fc_ctx WHERE run_id = ? AND key = ? AND value != ''",
                (run_id, key),
            ).fetchone()
            return (True, decode_value(row[0])) if row else (False, None)

        return await self.call(q)

    async def commit(
        self,
        run_id: str,
        ops: Sequence[PatchOperation],
        expected: int | None,
        status: str | None = None,
    ) -> bool:
        """Apply ``ops`` atomically; with ``expected`` only if the version still matches;
        ``status`` (when given) becomes the run's indexed status."""
        enc = self._encode(ops)

        def q(c: sqlite3.Connection) -> bool:
            with self._tx(c):
                if not self._apply(c, run_id, enc, expected, status):
                    return False
            self._committed(enc, status)
            return True

        return await self.call(q)

    def _encode(self, ops: Sequence[PatchOperation]) -> list[tuple[PatchOperation, str]]:
        """Each operation with its stored text (before the transaction: a value that cannot
        be stored fails here, with nothing written)."""
        return [
            (op, encode_value(op.key, op.value, self.max_value_bytes) if op.op == "set" else "")
            for op in ops
        ]

    @staticmethod
    def _apply(
        c: sqlite3.Connection,
        run_id: str,
        enc: list[tuple[PatchOperation, str]],
        expected: int | None,
        status: str | None,
    ) -> bool:
        """Inside a write transaction: the version check, the writes and the version bump."""
        row = c.execute("SELECT version FROM fc_runs WHERE run_id = ?", (run_id,)).fetchone()
        version = row[0] if row else 0
        if expected is not None and version != expected:
            return False
        last = {op.key: (op, text) for op, text in enc}  # in order: the last op wins
        ver = version + 1
        sets = [(run_id, op.key, text, ver) for op, text in last.values() if op.op == "set"]
        dels = [(ver, run_id, op.key) for op, _ in last.values() if op.op == "delete"]
        if sets:
            c.executemany(
                "INSERT INTO fc_ctx (run_id, key, value, ver) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value, "
                "ver = excluded.ver",
                sets,
            )
        if dels:  # the row stays, emptied, so a reader of an older version learns of it
            c.executemany(
                "UPDATE fc_ctx SET value = '', ver = ? WHERE run_id = ? AND key = ? "
                "AND value != ''",
                dels,
            )
        now = time.time()
        if row is None:
            c.execute(
                "INSERT INTO fc_runs (run_id, version, status, updated_at) VALUES (?, ?, ?, ?)",
                (run_id, version + 1, status or "running", now),
            )
        else:
            c.execute(
                "UPDATE fc_runs SET version = ?, status = COALESCE(?, status), "
                "updated_at = ? WHERE run_id = ?",
                (version + 1, status, now, run_id),
            )
        return True

    def _committed(self, enc: list[tuple[PatchOperation, str]], status: str | None) -> None:
        """After a commit: counters, and the doorbell when the run's status was written."""
        self.commits += 1
        self.bytes_written += sum(len(op.key) + len(t) for op, t in enc if op.op == "set")
        if status in FINAL_STATUSES:  # what clients waiting for results wait for
            self.bell.ring("runs")

    async def run_statuses(self, run_ids: Sequence[str]) -> dict[str, str | None]:
        """The indexed status of each run (None when absent), in one query per 500 runs."""

        def q(c: sqlite3.Connection) -> dict[str, str | None]:
            out: dict[str, str | None] = dict.fromkeys(run_ids)
            ids = list(out)
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = ",".join("?" * len(part))
                sel = f"SELECT run_id, status FROM fc_runs WHERE run_id IN ({marks})"
                out.update((str(r), str(st)) for r, st in c.execute(sel, part))
            return out

        return await self.call(q)

    async def active_runs(self, cursor: str | None, limit: int) -> list[str]:
        """Non-final run ids after ``cursor`` (sorted)."""

        def q(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "SELECT run_id FROM fc_runs WHERE status NOT IN (?, ?, ?, ?) AND run_id > ? "
                "ORDER BY run_id LIMIT ?",
                (*_FINAL, cursor or "", limit),
            ).fetchall()
            return [r[0] for r in rows]

        return await self.call(q)

    async def put_result(self, run_id: str, result: Mapping[str, Any]) -> None:
        """Store a run's published final result."""
        text = json.dumps(result, ensure_ascii=False, separators=(",", ":"))

        def q(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO fc_results (run_id, result) VALUES (?, ?) "
                "ON CONFLICT (run_id) DO UPDATE SET result = excluded.result",
                (run_id, text),
            )
            self.bell.ring("runs")

        await self.call(q)

    # -- coordination ----------------------------------------------------------------------------

    async def coord(self, op: str, key: str, value: str = "", ttl: float = 0.0) -> Any:
        """One coordination operation, atomically; expired keys count as absent."""

        def q(c: sqlite3.Connection) -> Any:
            with self._tx(c):
                return _coord_op(c, time.time(), op, key, value, ttl)

        return await self.call(q)

    # -- the incremental protocol (lease with the read, leases with the commit) ---------------

    async def load_since(
        self, run_id: str, since: int, lease: tuple[str, str, float] | None
    ) -> Changes | None:
        """Take ``lease`` ((key, token, ttl); None when someone else holds it) and read what
        changed in the run after version ``since`` (everything when ``since`` is 0), in one
        transaction."""

        def q(c: sqlite3.Connection) -> Changes | None:
            with self._tx(c, immediate=lease is not None):
                if lease is not None and not _coord_op(
                    c, time.time(), "setnx", lease[0], lease[1], lease[2]
                ):
                    return None
                return _read_since(c, run_id, since)

        return await self.call(q)

    async def commit_release(
        self,
        run_id: str,
        ops: Sequence[PatchOperation],
        expected: int,
        release: Sequence[tuple[str, str]],
        take: Sequence[tuple[str, str]],
        ttl: float,
        status: str | None,
    ) -> list[bool] | None:
        """:meth:`commit`; when it succeeded, release the leases ``release`` and take those of
        ``take`` for ``ttl`` seconds, in the same transaction. None on a version mismatch,
        else which of ``take`` were taken."""
        enc = self._encode(ops)

        def q(c: sqlite3.Connection) -> list[bool] | None:
            with self._tx(c):
                if not self._apply(c, run_id, enc, expected, status):
                    return None
                now = time.time()
                for key, token in release:
                    _coord_op(c, now, "cad", key, token, 0.0)
                taken = [bool(_coord_op(c, now, "setnx", k, t, ttl)) for k, t in take]
            self._committed(enc, status)
            return taken

        return await self.call(q)


class SqliteCoordinationStore:
    """CoordinationStore on a :class:`SqliteBackend` (shared by every process on the file)."""

    def __init__(self, backend: SqliteBackend) -> None:
        self.backend = backend

    async def increment(self, key: str, ttl_seconds: float) -> int:
        """See CoordinationStore."""
        return int(await self.backend.coord("incr", key, ttl=ttl_seconds))

    async def set_if_not_exist(self, key: str, value: str, ttl_seconds: float) -> bool:
        """See CoordinationStore."""
        return bool(await self.backend.coord("setnx", key, value, ttl_seconds))

    async def extend_ttl(self, key: str, ttl_seconds: float) -> bool:
        """See CoordinationStore."""
        return bool(await self.backend.coord("extend", key, ttl=ttl_seconds))

    async def delete(self, key: str) -> None:
        """See CoordinationStore."""
        await self.backend.coord("delete", key)

    async def get(self, key: str) -> str | None:
        """See CoordinationStore."""
        v = await self.backend.coord("get", key)
        return None if v is None else str(v)

    async def compare_and_delete(self, key: str, value: str) -> bool:
        """Delete ``key`` when it holds ``value`` (atomic)."""
        return bool(await self.backend.coord("cad", key, value))


class SqliteRunContext:
    """A run's record in a :class:`SqliteBackend` (DistributedContext)."""

    __slots__ = ("_b", "_run_id")

    def __init__(self, backend: SqliteBackend, run_id: str) -> None:
        self._b = backend
        self._run_id = run_id

    async def get(self, key: str, default: Any = None) -> Any:
        """See AsyncContext."""
        present, value = await self._b.get_key(self._run_id, key)
        return value if present else default

    async def set(self, key: str, value: Any) -> None:
        """See AsyncContext."""
        await self._b.commit(self._run_id, [PatchOperation("set", key, value)], None)

    async def has(self, key: str) -> bool:
        """See AsyncContext."""
        return (await self._b.get_key(self._run_id, key))[0]

    async def delete(self, key: str) -> bool:
        """See AsyncContext."""
        had = await self.has(key)
        await self._b.commit(self._run_id, [PatchOperation("delete", key)], None)
        return had

    async def to_dict(self) -> dict[str, Any]:
        """See AsyncContext."""
        return (await self._b.load(self._run_id)).data

    async def patch(self, ops: Iterable[PatchOperation]) -> None:
        """See AsyncContext (atomic)."""
        await self._b.commit(self._run_id, list(ops), None)

    async def load(self) -> Snapshot:
        """See DistributedContext."""
        return await self._b.load(self._run_id)

    async def commit(
        self,
        ops: Sequence[PatchOperation],
        expected_version: int,
        status: str | None = None,
    ) -> bool:
        """See DistributedContext."""
        return await self._b.commit(self._run_id, ops, expected_version, status)

    # IncrementalContext: the lease travels with the read and the commit (one transaction
    # each), so an inline successor needs no second read; a read returns only the rows
    # written since the version the worker saw (runs are never deleted: no epochs).

    async def load_since(
        self, since: int, epoch: str, lease: tuple[str, str, float] | None = None
    ) -> Changes | None:
        """See IncrementalContext (None when ``lease`` is held elsewhere)."""
        return await self._b.load_since(self._run_id, since, lease)

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
        taken = await self._b.commit_release(
            self._run_id, ops, expected_version, release, take, ttl_seconds, status
        )
        return CommitResult(False) if taken is None else CommitResult(True, "", taken)

    async def lease_holder(self, key: str) -> str | None:
        """See IncrementalContext."""
        held: str | None = await self._b.coord("get", key)
        return held

    async def extend_lease(self, key: str, ttl_seconds: float) -> bool:
        """See IncrementalContext."""
        return bool(await self._b.coord("extend", key, ttl=ttl_seconds))

    async def release_lease(self, key: str, token: str) -> bool:
        """See IncrementalContext."""
        return bool(await self._b.coord("cad", key, token))


class SqliteAdapter(BaseDistributedAdapter):
    """A worker (or client) on a SQLite database file; run one per process."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        delayed_delivery=True,
        multi_process=True,
        redelivery_on_crash=True,
        dead_letter=True,
        extra={"bytes_counter": True},
    )

    def __init__(
        self,
        backend: SqliteBackend | str | Path,
        *,
        concurrency: int = 8,
        poll_interval: float = 0.005,
        max_poll_interval: float = 0.1,
        visibility_timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        self._owns_backend = not isinstance(backend, SqliteBackend)
        self.backend = (
            backend
            if isinstance(backend, SqliteBackend)
            else SqliteBackend(backend, visibility_timeout=visibility_timeout)
        )
        kwargs.setdefault("coordination_store", SqliteCoordinationStore(self.backend))
        # A commit takes its successor's lease in the same transaction, so the worker runs
        # the successor next without a queue hop or a second read (docs/distributed.md).
        kwargs.setdefault("inline_successors", 64)
        super().__init__(**kwargs)
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self._bell = Doorbell(os.path.abspath(self.backend.path))  # this adapter's listeners

    async def create_context(self, run_id: str) -> SqliteRunContext:
        """See BaseDistributedAdapter."""
        return SqliteRunContext(self.backend, run_id)

    async def enqueue_job(
        self, job: JobPayload, *, delay: float = 0.0, options: Mapping[str, Any] | None = None
    ) -> None:
        """See BaseDistributedAdapter."""
        await self.backend.put(job.to_json(), delay)

    async def enqueue_jobs(
        self, jobs: Sequence[tuple[JobPayload, Mapping[str, Any] | None]]
    ) -> None:
        """See BaseDistributedAdapter: one transaction for all of them."""
        await self.backend.put_many([job.to_json() for job, _ in jobs])

    async def publish_final_result(self, run_id: str, result: Mapping[str, Any]) -> None:
        """See BaseDistributedAdapter: stored in ``fc_results``."""
        await self.backend.put_result(run_id, result)

    async def extend_delivery(self, delivery: Delivery) -> None:
        """Keep the message invisible while its nodes run."""
        await self.backend.extend(delivery.message, self.backend.visibility_timeout)

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """See BaseDistributedAdapter (uses the ``fc_runs`` status index)."""
        ids = await self.backend.active_runs(cursor, limit + 1)
        page = ids[:limit]
        return page, (page[-1] if len(ids) > limit else None)

    def final_source(self) -> FinalSource:
        """See BaseDistributedAdapter: polls the indexed statuses of all waiting runs at once,
        2 to 100 ms apart, and at once when a commit on this machine rings the doorbell."""
        src: FinalSource | None = getattr(self, "_final_source", None)
        if src is None:
            pull = PullSource(self.backend.run_statuses, min_delay=0.002, max_delay=0.1)
            try:
                self._bell.listen("runs", pull.poke)
            except RuntimeError:  # no running loop: polling only
                pass
            self._final_source = src = pull
        return src

    async def aclose(self) -> None:
        """Close the database connection if this adapter opened it."""
        self._bell.close()
        if self._owns_backend:
            await asyncio.get_running_loop().run_in_executor(None, self.backend.close)

    async def process_jobs(self, handler: JobHandler) -> None:
        """Claim and handle jobs until :meth:`stop`; up to ``concurrency`` at once."""
        wake = asyncio.Event()
        unlisten = self._bell.listen("jobs", wake.set)
        try:
            await PollingConsumer(
                self,
                self._receive,
                concurrency=self.concurrency,
                idle=(self.poll_interval, self.max_poll_interval),
                handler=handler,
                wake=wake,
            ).run()
        finally:
            if unlisten is not None:
                unlisten()

    async def _receive(self, n: int) -> list[Delivery]:
        return [Delivery(body, mid, count) for mid, body, count in await self.backend.claim(n)]

    async def ack(self, delivery: Delivery) -> None:
        """Delete the message."""
        await self.backend.ack(delivery.message)

    async def redeliver(self, delivery: Delivery, delay: float) -> None:
        """Make the message visible again after ``delay``."""
        await self.backend.nack(delivery.message, delay)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to ``fc_dead`` with ``reason``."""
        body = delivery.body
        text = body if isinstance(body, str) else str(body)
        await self.backend.dead_letter(delivery.message, text, reason)
