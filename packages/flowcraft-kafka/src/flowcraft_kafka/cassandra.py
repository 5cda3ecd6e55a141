"""The run store in Cassandra: one partition per run, commits as lightweight transactions.

Schema (created by :func:`create_schema`; the same statements are quoted in the docs)::

    CREATE TABLE <ks>.<prefix>_runs (
        run_id text, k text, v text,
        version bigint STATIC, status text STATIC,
        PRIMARY KEY (run_id, k))
    CREATE TABLE <ks>.<prefix>_active (
        shard int, run_id text,
        PRIMARY KEY (shard, run_id))

A run is one partition of ``_runs``: a row per context key (``k``, its encoded value ``v``) and
the run's ``version`` and ``status`` as static columns. A commit is ONE conditional batch on
that partition: ``UPDATE ... SET version = expected + 1 [, status = ?] IF version = expected``
plus an ``INSERT`` per set key and a ``DELETE`` per deleted key, so only what changed is
written (deltas, never a rewritten blob) and Paxos (``SERIAL``/``LOCAL_SERIAL``) makes it
all-or-nothing. The first commit of a run first creates its static row with ``INSERT ...
(run_id, version) VALUES (?, 0) IF NOT EXISTS`` (both contenders may; the batch then decides).
Operations of one commit are folded per key first (the statements of a batch share one
timestamp, where a delete would beat a set of the same key). ``_active`` lists non-final runs
per shard for the reconciler (read by partition, never ``ALLOW FILTERING``); it is updated
after each commit that changed the status.

Needs Cassandra >= 2.0.6 (lightweight transactions in batches, static columns): a store
opened on an older node raises :class:`UnsupportedCassandraError` before it prepares anything.
The active-run index (:class:`CassandraActiveIndex`) is plain CQL 3 and works on any version.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Iterable, Sequence
from typing import Any, Final

from cassandra import ConsistencyLevel
from cassandra.cluster import Cluster, ResponseFuture, Session
from cassandra.query import BatchStatement, PreparedStatement, SimpleStatement
from flowcraft import PatchOperation
from flowcraft.distributed import PullSource, Snapshot, decode_value, encode_value
from flowcraft.redis import RedisStoreStats

FINAL_STATUSES: Final = frozenset({"completed", "failed", "cancelled", "stalled"})
MIN_VERSION: Final = (2, 0, 6)
"""The oldest Cassandra with lightweight transactions in batches and static columns."""


class UnsupportedCassandraError(RuntimeError):
    """A node of the cluster is older than :data:`MIN_VERSION` (the message names it)."""


def _version(release: str) -> tuple[int, ...]:
    parts = []
    for piece in release.split("-")[0].split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def check_version(cluster: Cluster) -> None:
    """Raise :class:`UnsupportedCassandraError` when a known node runs a release older than
    :data:`MIN_VERSION` (read from the driver's metadata: no query, so it works even where the
    node would refuse the session's consistency level)."""
    need = ".".join(map(str, MIN_VERSION))
    for host in cluster.metadata.all_hosts():
        release = getattr(host, "release_version", None)
        if release and _version(str(release)) < MIN_VERSION:
            raise UnsupportedCassandraError(
                f"Cassandra {release} at {host.address}: the flowcraft run store needs "
                f">= {need} (lightweight transactions in batches, static columns); use a "
                "newer Cassandra or run_store='redis'"
            )


def schema_statements(keyspace: str, prefix: str) -> list[str]:
    """The CQL of the store's two tables (idempotent): the runs table, then the index."""
    return [
        f"CREATE TABLE IF NOT EXISTS {keyspace}.{prefix}_runs (run_id text, k text, v text, "
        "version bigint STATIC, status text STATIC, PRIMARY KEY (run_id, k))",
        f"CREATE TABLE IF NOT EXISTS {keyspace}.{prefix}_active (shard int, run_id text, "
        "PRIMARY KEY (shard, run_id))",
    ]


def create_schema(
    session: Session, keyspace: str, prefix: str = "flowcraft", replication: int = 1
) -> None:
    """Create the keyspace (SimpleStrategy, ``replication``) unless it exists, and the tables
    of :func:`schema_statements` (blocking; call it in a thread)."""
    session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
        f"{{'class': 'SimpleStrategy', 'replication_factor': {replication}}}"
    )
    for cql in schema_statements(keyspace, prefix):
        session.execute(cql)


async def _run(fut: ResponseFuture) -> Any:
    """Await a driver ``ResponseFuture`` (its callbacks run on the driver's thread)."""
    loop = asyncio.get_running_loop()
    out: asyncio.Future[Any] = loop.create_future()

    def settle(rows: Any = None, exc: BaseException | None = None) -> None:
        if out.done():
            return
        if exc is not None:
            out.set_exception(exc)
        else:
            out.set_result(rows)

    def ok(rows: Any) -> None:
        loop.call_soon_threadsafe(settle, rows)

    def err(exc: BaseException) -> None:
        loop.call_soon_threadsafe(settle, None, exc)

    fut.add_callbacks(ok, err)
    return await out


class CassandraActiveIndex:
    """The non-final runs of a store, one ``_active`` partition per shard: the reconciler
    reads it partition by partition with a cursor (never ``ALLOW FILTERING``). Plain CQL 3
    (no lightweight transactions), so it runs on every Cassandra version."""

    def __init__(
        self,
        session: Session,
        keyspace: str,
        *,
        prefix: str = "flowcraft",
        shards: int = 16,
        consistency: int = ConsistencyLevel.LOCAL_QUORUM,
    ) -> None:
        self.session = session
        self.shards = shards
        a = f"{keyspace}.{prefix}_active"
        p = session.prepare
        self._add: PreparedStatement = p(f"INSERT INTO {a} (shard, run_id) VALUES (?, ?)")
        self._remove: PreparedStatement = p(f"DELETE FROM {a} WHERE shard = ? AND run_id = ?")
        # LIMIT is written into the query: a bind marker there needs CQL 3.1 (Cassandra 2.0).
        # The driver binds the other values client-side (quoted); the reconciler's only path.
        self._page = f"SELECT run_id FROM {a} WHERE shard = %s AND run_id > %s LIMIT {{limit:d}}"
        self.consistency = consistency
        for st in (self._add, self._remove):
            st.consistency_level = consistency

    def shard(self, run_id: str) -> int:
        """The index partition of a run."""
        return zlib.crc32(run_id.encode("utf-8")) % self.shards

    async def update(self, run_id: str, status: str) -> None:
        """List the run while ``status`` is not final, drop it once it is."""
        stmt = self._remove if status in FINAL_STATUSES else self._add
        await _run(self.session.execute_async(stmt, (self.shard(run_id), run_id)))

    async def page(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """Up to ``limit`` listed runs after ``cursor`` (``<shard>:<last run id>``) and the
        next cursor, None after the last shard."""
        shard, after = 0, ""
        if cursor:
            s, sep, after = cursor.partition(":")
            if not sep or not s.isdigit() or int(s) >= self.shards:
                raise ValueError(f"not an active-run cursor of this store: {cursor!r}")
            shard = int(s)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        out: list[str] = []
        while shard < self.shards:
            query = SimpleStatement(
                self._page.format(limit=limit - len(out)), consistency_level=self.consistency
            )
            rows = await _run(self.session.execute_async(query, (shard, after)))
            got = [str(r.run_id) for r in rows]
            out.extend(got)
            if len(out) >= limit:
                return out, f"{shard}:{got[-1]}"
            shard, after = shard + 1, ""
        return out, None


class CassandraRunStore:
    """Run contexts, the active-run index and final-run polling on a Cassandra session
    (see the module docstring). ``consistency`` applies to plain reads and writes,
    ``serial_consistency`` to the lightweight transactions (``LOCAL_SERIAL`` in one data
    center, ``SERIAL`` across)."""

    def __init__(
        self,
        session: Session,
        keyspace: str,
        *,
        prefix: str = "flowcraft",
        shards: int = 16,
        consistency: int = ConsistencyLevel.LOCAL_QUORUM,
        serial_consistency: int = ConsistencyLevel.LOCAL_SERIAL,
        max_value_bytes: int | None = 64 * 1024 * 1024,
        stats: RedisStoreStats | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        check_version(session.cluster)
        self.session = session
        self.cluster = cluster
        self.index = CassandraActiveIndex(
            session, keyspace, prefix=prefix, shards=shards, consistency=consistency
        )
        self.consistency = consistency
        self.serial_consistency = serial_consistency
        self.max_value_bytes = max_value_bytes
        self.stats = stats or RedisStoreStats()
        t = f"{keyspace}.{prefix}_runs"
        p = session.prepare
        self._load: PreparedStatement = p(f"SELECT k, v, version FROM {t} WHERE run_id = ?")
        self._status: PreparedStatement = p(f"SELECT status FROM {t} WHERE run_id = ? LIMIT 1")
        self._init: PreparedStatement = p(
            f"INSERT INTO {t} (run_id, version) VALUES (?, 0) IF NOT EXISTS"
        )
        self._cas: PreparedStatement = p(
            f"UPDATE {t} SET version = ? WHERE run_id = ? IF version = ?"
        )
        self._cas_status: PreparedStatement = p(
            f"UPDATE {t} SET version = ?, status = ? WHERE run_id = ? IF version = ?"
        )
        self._put: PreparedStatement = p(f"INSERT INTO {t} (run_id, k, v) VALUES (?, ?, ?)")
        self._del: PreparedStatement = p(f"DELETE FROM {t} WHERE run_id = ? AND k = ?")
        for st in (self._load, self._status, self._put, self._del):
            st.consistency_level = consistency
        for st in (self._init, self._cas, self._cas_status):
            st.consistency_level = consistency
            st.serial_consistency_level = serial_consistency
        self._final: PullSource | None = None

    @classmethod
    async def connect(
        cls,
        hosts: Sequence[str],
        keyspace: str,
        *,
        port: int = 9042,
        create: bool = True,
        replication: int = 1,
        prefix: str = "flowcraft",
        **kwargs: Any,
    ) -> CassandraRunStore:
        """Connect to ``hosts`` (and create the schema when ``create``)."""

        def open_() -> tuple[Cluster, Session]:
            cluster = Cluster(list(hosts), port=port)
            session = cluster.connect()
            try:
                check_version(cluster)  # before any DDL an old node would reject obscurely
            except UnsupportedCassandraError:
                cluster.shutdown()
                raise
            if create:
                create_schema(session, keyspace, prefix, replication)
            return cluster, session

        cluster, session = await asyncio.to_thread(open_)
        return cls(session, keyspace, prefix=prefix, cluster=cluster, **kwargs)

    def context(self, run_id: str) -> CassandraRunContext:
        """The run's context."""
        return CassandraRunContext(self, run_id)

    async def read_status(self, run_id: str) -> str | None:
        """The run's status, or None when there is no such run."""
        rows = list(await _run(self.session.execute_async(self._status, (run_id,))))
        return str(rows[0].status) if rows and rows[0].status is not None else None

    async def publish_final(self, run_id: str, status: str) -> None:
        """Nothing to send: waiting clients poll statuses (:meth:`final_source`)."""

    def final_source(self) -> PullSource:
        """Clients learn that runs ended by reading their status partitions."""
        if self._final is None:

            async def statuses(run_ids: Sequence[str]) -> dict[str, str | None]:
                got = await asyncio.gather(*(self.read_status(r) for r in run_ids))
                return dict(zip(run_ids, got, strict=True))

            self._final = PullSource(statuses)
        return self._final

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """Non-final runs, shard by shard (:meth:`CassandraActiveIndex.page`)."""
        return await self.index.page(cursor, limit)

    async def aclose(self) -> None:
        """Shut the driver's cluster object down (when this store opened it)."""
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.shutdown)
            self.cluster = None


class CassandraRunContext:
    """One run's context (``DistributedContext``) in :class:`CassandraRunStore`."""

    __slots__ = ("_run_id", "_store")

    def __init__(self, store: CassandraRunStore, run_id: str) -> None:
        self._store = store
        self._run_id = run_id

    async def load(self) -> Snapshot:
        """See DistributedContext: every key row and the static version."""
        s = self._store
        rows = await _run(s.session.execute_async(s._load, (self._run_id,)))
        data: dict[str, Any] = {}
        version = 0
        for r in rows:
            if r.version is not None:
                version = int(r.version)
            if r.k is not None and r.v is not None:
                data[str(r.k)] = decode_value(str(r.v))
        return Snapshot(data, version)

    async def commit(
        self, ops: Sequence[PatchOperation], expected_version: int, status: str | None = None
    ) -> bool:
        """See DistributedContext: one lightweight-transaction batch."""
        s = self._store
        final: dict[str, str | None] = {}
        for op in ops:  # in order: the last operation on a key wins
            if op.op == "set":
                final[op.key] = encode_value(op.key, op.value, s.max_value_bytes)
            else:
                final[op.key] = None
        rid = self._run_id
        if expected_version == 0:
            await _run(s.session.execute_async(s._init, (rid,)))
        batch = BatchStatement(
            consistency_level=s.consistency, serial_consistency_level=s.serial_consistency
        )
        new = expected_version + 1
        if status is None:
            batch.add(s._cas, (new, rid, expected_version))
        else:
            batch.add(s._cas_status, (new, status, rid, expected_version))
        written = 0
        for k, v in final.items():
            if v is None:
                batch.add(s._del, (rid, k))
            else:
                batch.add(s._put, (rid, k, v))
                written += len(k.encode("utf-8")) + len(v.encode("utf-8"))
        rows = list(await _run(s.session.execute_async(batch)))
        if not rows or not rows[0][0]:
            return False
        s.stats.commits += 1
        s.stats.bytes_written += written
        if status is not None:
            await s.index.update(rid, status)
        return True

    async def _write(self, ops: Iterable[PatchOperation]) -> None:
        ops = list(ops)
        while True:
            snap = await self.load()
            if await self.commit(ops, snap.version):
                return

    async def get(self, key: str, default: Any = None) -> Any:
        """See AsyncContext."""
        return (await self.load()).data.get(key, default)

    async def set(self, key: str, value: Any) -> None:
        """See AsyncContext (a commit at the current version, retried on a conflict)."""
        await self._write([PatchOperation("set", key, value)])

    async def has(self, key: str) -> bool:
        """See AsyncContext."""
        return key in (await self.load()).data

    async def delete(self, key: str) -> bool:
        """See AsyncContext."""
        had = await self.has(key)
        await self._write([PatchOperation("delete", key)])
        return had

    async def to_dict(self) -> dict[str, Any]:
        """See AsyncContext."""
        return (await self.load()).data

    async def patch(self, ops: Iterable[PatchOperation]) -> None:
        """See AsyncContext."""
        await self._write(ops)


__all__ = [
    "FINAL_STATUSES",
    "MIN_VERSION",
    "CassandraActiveIndex",
    "CassandraRunContext",
    "CassandraRunStore",
    "UnsupportedCassandraError",
    "check_version",
    "create_schema",
    "schema_statements",
]
