"""Event history: stores that keep every event of every run, and a bus that writes to them.

Attach a :class:`PersistentEventBus` to a runtime and every event it emits is stored under its
run's execution id (every event carries one; resumes keep the id, so one execution's history
covers all of its legs)::

    store = SqliteEventStore("events.sqlite")
    runtime = FlowRuntime(registry=..., event_bus=PersistentEventBus(store))
    result = await runtime.run(blueprint, {"n": 1})
    events = await store.retrieve(result.execution_id)  # in emission order
    replayed = replay(blueprint, events)                 # flowcraft.replay

Stores return events in the order they were stored, which is emission order: SQLite and
Postgres order by an autoincrement id (upstream ordered by a one-second timestamp, so events
within a second came back in any order). Table names are validated identifiers, never pasted
into SQL unchecked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sqlite3
import threading
from collections.abc import Awaitable, Generator, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from .events import EventBus, FlowcraftEvent

__all__ = [
    "DEFAULT_TABLE",
    "EventStore",
    "ExecutionSummary",
    "InMemoryEventStore",
    "PersistentEventBus",
    "PostgresEventStore",
    "SqliteEventStore",
    "decode_payload",
    "encode_payload",
    "event_from_wire",
    "validate_table_name",
]

log = logging.getLogger("flowcraft.history")

DEFAULT_TABLE: Final = "flowcraft_events"
"""Table the SQL stores use unless told otherwise."""

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORKFLOW_EVENTS: Final = ("workflow:start", "workflow:resume", "workflow:finish")


def validate_table_name(name: object) -> str:
    """``name`` if it is a plain SQL identifier (``^[A-Za-z_][A-Za-z0-9_]*$``, at most 63
    characters), else ``ValueError``. Stores quote it as well, but never trust it unchecked."""
    if not isinstance(name, str) or len(name) > 63 or not _IDENT.fullmatch(name):
        raise ValueError(
            f"invalid table name {name!r}: use letters, digits and underscores, not starting "
            "with a digit (at most 63 characters)"
        )
    return name


# -- payload encoding ------------------------------------------------------------------------


def _plain(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy: non-finite floats become None, unknown objects their ``repr``."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth > 100:
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v, depth + 1) for v in value]
    return repr(value)


def encode_payload(payload: Mapping[str, Any]) -> str:
    """Strict JSON text of an event payload; never raises.

    Values JSON cannot hold (NaN, sets, dates, arbitrary objects, circular data) are stored
    degraded (None, a list, their ``repr``) rather than losing the whole event.
    """
    try:
        return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return json.dumps(_plain(payload), ensure_ascii=False, separators=(",", ":"))


def decode_payload(text: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`encode_payload` (a mapping, e.g. from a JSONB column, is copied)."""
    if isinstance(text, Mapping):
        return dict(text)
    data = json.loads(text)
    return data if isinstance(data, dict) else {"value": data}


def event_from_wire(data: Mapping[str, Any]) -> FlowcraftEvent:
    """Rebuild an event from :meth:`FlowcraftEvent.to_wire` output (e.g. ``inspect --json``)."""
    payload = dict(data.get("payload") or {})
    execution_id = str(payload.pop("executionId", ""))
    blueprint_id = str(payload.pop("blueprintId", ""))
    return FlowcraftEvent(
        type=str(data["type"]),
        payload=payload,
        execution_id=execution_id,
        timestamp=float(data.get("timestamp", 0.0)),
        seq=int(data.get("seq", 0)),
        blueprint_id=blueprint_id,
    )


# -- protocol and summaries ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecutionSummary:
    """One execution in a store: when it ran and how its latest leg ended."""

    execution_id: str
    blueprint_id: str
    status: str
    """``running`` until a ``workflow:finish`` follows the latest start/resume, then its status
    (``completed``, ``failed``, ``awaiting``, ``stalled``, ``cancelled``); ``unknown`` when the
    history holds no workflow event."""
    error_count: int
    event_count: int
    started_at: float
    """Timestamp of the first stored event (seconds since the epoch)."""
    updated_at: float
    """Timestamp of the last stored event."""

    def to_dict(self) -> dict[str, Any]:
        """camelCase JSON form."""
        return {
            "executionId": self.execution_id,
            "blueprintId": self.blueprint_id,
            "status": self.status,
            "errorCount": self.error_count,
            "eventCount": self.event_count,
            "startedAt": self.started_at,
            "updatedAt": self.updated_at,
        }


def _status_of(last_workflow: tuple[str, Mapping[str, Any]] | None) -> tuple[str, int]:
    if last_workflow is None:
        return "unknown", 0
    type_, payload = last_workflow
    if type_ != "workflow:finish":
        return "running", 0
    errors = payload.get("errors") or []
    return str(payload.get("status", "unknown")), len(errors) if isinstance(errors, list) else 0


@runtime_checkable
class EventStore(Protocol):
    """Keeps events by execution id and returns them in the order they were stored."""

    def store(self, event: FlowcraftEvent) -> Awaitable[None]:
        """Record ``event`` under ``event.execution_id``.

        The event is captured when this is called; await the result to know it is durable.
        """
        ...

    async def retrieve(self, execution_id: str) -> list[FlowcraftEvent]:
        """Every event of ``execution_id`` in emission order (empty when unknown)."""
        ...

    async def retrieve_many(self, execution_ids: Iterable[str]) -> dict[str, list[FlowcraftEvent]]:
        """:meth:`retrieve` for several executions (each id present, possibly empty)."""
        ...

    async def list_executions(self, limit: int = 20, offset: int = 0) -> list[ExecutionSummary]:
        """Executions by most recent activity first."""
        ...


class _Ready:
    """An awaitable that is already done (stores that record synchronously)."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        yield from ()


_READY: Final = _Ready()


# -- in memory -------------------------------------------------------------------------------


class InMemoryEventStore:
    """An :class:`EventStore` in a dict: for tests and short-lived processes.

    Events are kept by reference (like :class:`~flowcraft.testing.EventRecorder`), so a value a
    node mutates in place after writing it shows the mutation here; SQL stores keep the value
    as it was when the event was emitted.
    """

    def __init__(self) -> None:
        """Start empty."""
        self._events: dict[str, list[FlowcraftEvent]] = {}
        self._last: dict[str, int] = {}
        self._counter = 0

    def store(self, event: FlowcraftEvent) -> Awaitable[None]:
        """See :meth:`EventStore.store` (recorded at once)."""
        self._events.setdefault(event.execution_id, []).append(event)
        self._counter += 1
        self._last[event.execution_id] = self._counter
        return _READY

    async def retrieve(self, execution_id: str) -> list[FlowcraftEvent]:
        """See :meth:`EventStore.retrieve`."""
        return list(self._events.get(execution_id, ()))

    async def retrieve_many(self, execution_ids: Iterable[str]) -> dict[str, list[FlowcraftEvent]]:
        """See :meth:`EventStore.retrieve_many`."""
        return {i: list(self._events.get(i, ())) for i in execution_ids}

    async def list_executions(self, limit: int = 20, offset: int = 0) -> list[ExecutionSummary]:
        """See :meth:`EventStore.list_executions`."""
        ids = sorted(self._last, key=self._last.__getitem__, reverse=True)[offset : offset + limit]
        out = []
        for i in ids:
            evs = self._events[i]
            wf = next(
                ((e.type, e.payload) for e in reversed(evs) if e.type in _WORKFLOW_EVENTS), None
            )
            status, n_err = _status_of(wf)
            out.append(
                ExecutionSummary(
                    execution_id=i,
                    blueprint_id=evs[0].blueprint_id,
                    status=status,
                    error_count=n_err,
                    event_count=len(evs),
                    started_at=evs[0].timestamp,
                    updated_at=evs[-1].timestamp,
                )
            )
        return out

    def clear(self) -> None:
        """Forget every event."""
        self._events.clear()
        self._last.clear()


# -- SQLite ----------------------------------------------------------------------------------

_Row = tuple[str, int, str, str, str, float]


class SqliteEventStore:
    """An :class:`EventStore` in a SQLite file (stdlib ``sqlite3``), safe to share between
    processes (WAL mode).

    Table (default ``flowcraft_events``): ``id INTEGER PRIMARY KEY AUTOINCREMENT``,
    ``execution_id``, ``seq``, ``type``, ``blueprint_id``, ``payload`` (JSON text),
    ``timestamp`` (seconds since the epoch), indexed on ``(execution_id, id)``; events are
    always read back ordered by ``id``. Blocking calls run on one dedicated thread per store,
    so the event loop stays responsive. Events stored in the same tick are written in one
    transaction. Call :meth:`close` when done.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        table: str = DEFAULT_TABLE,
        wal: bool = True,
        busy_timeout: float = 30.0,
    ) -> None:
        """Open (lazily, on first use) the database at ``path`` (``":memory:"`` works too)."""
        self.path = str(path)
        self.table = validate_table_name(table)
        self._wal = wal
        self._busy_timeout = busy_timeout
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowcraft-history")
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._rows: list[_Row] = []
        self._batch: asyncio.Future[None] | None = None
        self._batch_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        t = f'"{self.table}"'
        self._insert = (
            f"INSERT INTO {t} (execution_id, seq, type, blueprint_id, payload, timestamp) "
            "VALUES (?, ?, ?, ?, ?, ?)"
        )
        self._select = (
            f"SELECT execution_id, seq, type, blueprint_id, payload, timestamp FROM {t} "
            "WHERE execution_id = ? ORDER BY id"
        )
        self._schema = (
            f"CREATE TABLE IF NOT EXISTS {t} ("
            "id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "execution_id TEXT NOT NULL, "
            "seq INTEGER NOT NULL, "
            "type TEXT NOT NULL, "
            "blueprint_id TEXT NOT NULL DEFAULT '', "
            "payload TEXT NOT NULL, "
            "timestamp REAL NOT NULL);"
            f'CREATE INDEX IF NOT EXISTS "{self.table}_execution" ON {t} (execution_id, id);'
        )
        self._list = (
            f"SELECT execution_id, MAX(id) AS last, COUNT(*), MIN(timestamp), MAX(timestamp), "
            f"MIN(blueprint_id) FROM {t} GROUP BY execution_id ORDER BY last DESC LIMIT ? OFFSET ?"
        )
        self._last_workflow = (
            f"SELECT type, payload FROM {t} WHERE execution_id = ? AND type IN (?, ?, ?) "
            "ORDER BY id DESC LIMIT 1"
        )

    # -- plumbing --------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            if self._wal:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(self._schema)
            self._conn = conn
        return self._conn

    def _write_batch(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
            self._batch = None
            self._batch_loop = None
        if not rows:
            return
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(self._insert, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def _call(self, fn: Any, *args: Any) -> Any:
        if self._closed:
            raise RuntimeError("the event store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    # -- EventStore ------------------------------------------------------------------------

    def store(self, event: FlowcraftEvent) -> Awaitable[None]:
        """See :meth:`EventStore.store`: the payload is encoded now, the row is written on the
        store's thread together with the other events of the same tick."""
        if self._closed:
            raise RuntimeError("the event store is closed")
        row: _Row = (
            event.execution_id,
            event.seq,
            event.type,
            event.blueprint_id,
            encode_payload(event.payload),
            event.timestamp,
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called from synchronous code: write now
            with self._lock:
                self._rows.append(row)
            self._pool.submit(self._write_batch).result()
            return _READY
        with self._lock:
            self._rows.append(row)
            fut = self._batch
            if fut is None or self._batch_loop is not loop:
                fut = loop.run_in_executor(self._pool, self._write_batch)
                self._batch = fut
                self._batch_loop = loop
        return fut

    def _retrieve(self, execution_id: str) -> list[FlowcraftEvent]:
        rows = self._connect().execute(self._select, (execution_id,)).fetchall()
        return [
            FlowcraftEvent(
                type=r[2],
                payload=decode_payload(r[4]),
                execution_id=r[0],
                timestamp=float(r[5]),
                seq=int(r[1]),
                blueprint_id=r[3],
            )
            for r in rows
        ]

    async def retrieve(self, execution_id: str) -> list[FlowcraftEvent]:
        """See :meth:`EventStore.retrieve` (ordered by the autoincrement id)."""
        result: list[FlowcraftEvent] = await self._call(self._retrieve, execution_id)
        return result

    async def retrieve_many(self, execution_ids: Iterable[str]) -> dict[str, list[FlowcraftEvent]]:
        """See :meth:`EventStore.retrieve_many`."""
        ids = list(dict.fromkeys(execution_ids))

        def q() -> dict[str, list[FlowcraftEvent]]:
            return {i: self._retrieve(i) for i in ids}

        result: dict[str, list[FlowcraftEvent]] = await self._call(q)
        return result

    async def list_executions(self, limit: int = 20, offset: int = 0) -> list[ExecutionSummary]:
        """See :meth:`EventStore.list_executions`."""

        def q() -> list[ExecutionSummary]:
            c = self._connect()
            out = []
            for eid, _last, count, first_ts, last_ts, bp in c.execute(
                self._list, (max(limit, 0), max(offset, 0))
            ).fetchall():
                row = c.execute(self._last_workflow, (eid, *_WORKFLOW_EVENTS)).fetchone()
                status, n_err = _status_of((row[0], decode_payload(row[1])) if row else None)
                out.append(
                    ExecutionSummary(
                        execution_id=eid,
                        blueprint_id=bp or "",
                        status=status,
                        error_count=n_err,
                        event_count=int(count),
                        started_at=float(first_ts),
                        updated_at=float(last_ts),
                    )
                )
            return out

        result: list[ExecutionSummary] = await self._call(q)
        return result

    async def clear(self) -> None:
        """Delete every stored event."""

        def q() -> None:
            self._connect().execute(f'DELETE FROM "{self.table}"')

        await self._call(q)

    def close(self) -> None:
        """Write what is pending, close the connection and stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            self._write_batch()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            self._pool.submit(shut).result()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> SqliteEventStore:
        """Use as a context manager that closes the store."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the store."""
        self.close()


# -- Postgres --------------------------------------------------------------------------------


class PostgresEventStore:
    """An :class:`EventStore` in PostgreSQL (``psycopg`` 3; extra ``flowcraft-core[postgres]``).

    Table (default ``flowcraft_events``, created when missing unless ``create_table=False``):
    ``id BIGSERIAL PRIMARY KEY``, ``execution_id``, ``seq``, ``type``, ``blueprint_id``,
    ``payload JSONB``, ``timestamp``, indexed on ``(execution_id, id)``; reads order by ``id``.
    Every value is a query parameter and the table name is validated and quoted as an
    identifier (upstream pasted it into the SQL). One connection per store, used from one
    event loop; events stored in the same tick are inserted in one transaction.
    Call :meth:`close` when done.
    """

    def __init__(
        self, conninfo: str, *, table: str = DEFAULT_TABLE, create_table: bool = True
    ) -> None:
        """Connect lazily to ``conninfo`` (a libpq connection string or URL)."""
        self.conninfo = conninfo
        self.table = validate_table_name(table)
        self.create_table = create_table
        self._conn: Any = None
        self._conn_loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._rows: list[_Row] = []
        self._flush: asyncio.Task[None] | None = None

    def _sql(self, template: str) -> Any:
        from psycopg import sql

        return sql.SQL(template).format(
            t=sql.Identifier(self.table), ix=sql.Identifier(f"{self.table}_execution")
        )

    async def _connect(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._conn_loop is not loop:  # a connection belongs to one event loop
            self._conn = None
            self._conn_loop = loop
            self._lock = asyncio.Lock()
            self._connect_lock = asyncio.Lock()
        assert self._connect_lock is not None
        async with self._connect_lock:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            self._conn = await self._open()
            return self._conn

    async def _open(self) -> Any:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        if self.create_table:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
                await conn.execute(
                    self._sql(
                        "CREATE TABLE IF NOT EXISTS {t} ("
                        "id BIGSERIAL PRIMARY KEY, "
                        "execution_id TEXT NOT NULL, "
                        "seq INTEGER NOT NULL, "
                        "type TEXT NOT NULL, "
                        "blueprint_id TEXT NOT NULL DEFAULT '', "
                        "payload JSONB NOT NULL, "
                        "timestamp DOUBLE PRECISION NOT NULL)"
                    )
                )
                await conn.execute(
                    self._sql("CREATE INDEX IF NOT EXISTS {ix} ON {t} (execution_id, id)")
                )
        return conn

    def store(self, event: FlowcraftEvent) -> Awaitable[None]:
        """See :meth:`EventStore.store` (encoded now, inserted with the tick's other events)."""
        text = encode_payload(event.payload)
        if "\\u0000" in text:  # JSONB cannot hold NUL characters
            text = encode_payload(_plain_text(event.payload))
        self._rows.append(
            (
                event.execution_id,
                event.seq,
                event.type,
                event.blueprint_id,
                text,
                event.timestamp,
            )
        )
        if self._flush is None:
            self._flush = asyncio.ensure_future(self._write())
        return self._flush

    async def _write(self) -> None:
        conn = await self._connect()
        assert self._lock is not None
        async with self._lock:
            rows, self._rows = self._rows, []
            self._flush = None
            if not rows:
                return
            insert = self._sql(
                "INSERT INTO {t} (execution_id, seq, type, blueprint_id, payload, timestamp) "
                "VALUES (%s, %s, %s, %s, %s::jsonb, %s)"
            )
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(insert, rows)

    async def _fetch(self, query: Any, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self._flush is not None:
            await self._flush
        conn = await self._connect()
        cur = await conn.execute(query, params)
        rows: list[tuple[Any, ...]] = await cur.fetchall()
        return rows

    async def retrieve(self, execution_id: str) -> list[FlowcraftEvent]:
        """See :meth:`EventStore.retrieve` (ordered by id)."""
        rows = await self._fetch(
            self._sql(
                "SELECT execution_id, seq, type, blueprint_id, payload, timestamp FROM {t} "
                "WHERE execution_id = %s ORDER BY id"
            ),
            (execution_id,),
        )
        return [
            FlowcraftEvent(
                type=r[2],
                payload=decode_payload(r[4]),
                execution_id=r[0],
                timestamp=float(r[5]),
                seq=int(r[1]),
                blueprint_id=r[3],
            )
            for r in rows
        ]

    async def retrieve_many(self, execution_ids: Iterable[str]) -> dict[str, list[FlowcraftEvent]]:
        """See :meth:`EventStore.retrieve_many`."""
        return {i: await self.retrieve(i) for i in dict.fromkeys(execution_ids)}

    async def list_executions(self, limit: int = 20, offset: int = 0) -> list[ExecutionSummary]:
        """See :meth:`EventStore.list_executions`."""
        rows = await self._fetch(
            self._sql(
                "SELECT execution_id, MAX(id) AS last, COUNT(*), MIN(timestamp), "
                "MAX(timestamp), MIN(blueprint_id) FROM {t} GROUP BY execution_id "
                "ORDER BY last DESC LIMIT %s OFFSET %s"
            ),
            (max(limit, 0), max(offset, 0)),
        )
        out = []
        for eid, _last, count, first_ts, last_ts, bp in rows:
            wf = await self._fetch(
                self._sql(
                    "SELECT type, payload FROM {t} WHERE execution_id = %s "
                    "AND type IN (%s, %s, %s) ORDER BY id DESC LIMIT 1"
                ),
                (eid, *_WORKFLOW_EVENTS),
            )
            status, n_err = _status_of((wf[0][0], decode_payload(wf[0][1])) if wf else None)
            out.append(
                ExecutionSummary(
                    execution_id=eid,
                    blueprint_id=bp or "",
                    status=status,
                    error_count=n_err,
                    event_count=int(count),
                    started_at=float(first_ts),
                    updated_at=float(last_ts),
                )
            )
        return out

    async def clear(self) -> None:
        """Delete every stored event."""
        await self._fetch_none(self._sql("DELETE FROM {t}"))

    async def drop_table(self) -> None:
        """Drop the events table (tests, teardown)."""
        await self._fetch_none(self._sql("DROP TABLE IF EXISTS {t}"))

    async def _fetch_none(self, query: Any) -> None:
        if self._flush is not None:
            await self._flush
        conn = await self._connect()
        await conn.execute(query)

    async def close(self) -> None:
        """Write what is pending and close the connection."""
        if self._flush is not None:
            await self._flush
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def _plain_text(value: Any) -> Any:
    """``value`` with NUL characters removed from every string (for JSONB)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, Mapping):
        return {str(k).replace("\x00", ""): _plain_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_text(v) for v in value]
    return value


# -- the bus ---------------------------------------------------------------------------------


async def _both(first: Awaitable[None], second: Awaitable[None]) -> None:
    try:
        await first
    finally:
        await second


class PersistentEventBus:
    """An :class:`~flowcraft.events.EventBus` that stores every event in ``store`` (under the
    event's execution id) and passes it on to ``forward`` when given.

    The engine awaits what :meth:`emit` returns before a run returns, so a run's events are
    durable once ``run()``/``resume()`` has returned. A failing store is logged by the engine
    and never fails the run.
    """

    def __init__(self, store: EventStore, forward: EventBus | None = None) -> None:
        """Store into ``store``; also emit every event to ``forward``."""
        self.store = store
        self.forward = forward

    def emit(self, event: FlowcraftEvent) -> Awaitable[None] | None:
        """Store ``event`` and forward it (a failure of either is logged, the other goes on)."""
        stored: Awaitable[None] | None
        try:
            stored = self.store.store(event)
        except Exception:
            log.exception("event store failed on %s", event.type)
            stored = None
        if self.forward is None:
            return None if stored is _READY else stored
        try:
            fwd = self.forward.emit(event)
        except Exception:
            log.exception("forwarded event bus failed on %s", event.type)
            fwd = None
        if fwd is None or stored is None or stored is _READY:
            return fwd if fwd is not None else stored
        return _both(stored, fwd)
