"""The PostgreSQL run store: run contexts, versions, statuses and results of one deployment.

Every statement is parameterised: run ids, context keys and values only ever travel as query
parameters. The only identifiers composed into SQL are the deployment's schema and table names,
quoted with :class:`psycopg.sql.Identifier` (configuration, never data).

Layout (schema ``flowcraft`` by default, created by :meth:`PostgresRunStore.migrate`)::

    runs (run_id TEXT PK, version BIGINT, status TEXT, blueprint_id TEXT,
          created_at, updated_at, finished_at TIMESTAMPTZ, result TEXT, published_at,
          epoch TEXT)                                      -- v2: random id of this row
        partial index runs_active (updated_at, run_id) WHERE status is not final
        (blueprint_id is no longer written: the store never decodes the engine's keys)
    ctx  (run_id TEXT, key TEXT, value TEXT, ver BIGINT, PRIMARY KEY (run_id, key))
        (v2: ``ver`` is the run version that last wrote the key; a deleted key keeps its
        row with ``value`` NULL until the run is purged, so a reader can be told)
    leases (key TEXT PK, token TEXT, expires_at TIMESTAMPTZ)   -- v2: node leases
    meta (key TEXT PK, value TEXT)                         -- schema_version

One row per (run, key) rather than one JSONB document per run: a node's commit then writes only
the rows it changed (a JSONB document is rewritten whole, with its TOAST chunks, on every
update, so a run with a 1 MB value would rewrite 1 MB per node); parallel branches of a run
touch different rows; and values stay exactly the codec's JSON text
(:mod:`flowcraft.distributed.codec`), which JSONB could not hold: JSONB rejects ``\\u0000`` in
strings and reorders object keys. ``value::jsonb`` still works in ad-hoc queries for values
without NUL characters.

A commit (:meth:`PostgresRunStore.commit`) is ONE statement: a data-modifying CTE bumps the
run's version only if it still equals the expected one (``UPDATE runs SET version = version + 1
WHERE run_id = $1 AND version = $2``), and the key upserts and deletes join on that CTE, so
they happen only when the version check passed. The status column is the run's status the
engine passes with each commit (never read from its keys), and a final status
(``completed``/``failed``/``stalled``/``cancelled``) is never replaced by another status
(compare-and-set: a late duplicate never revives a finished run).

The run context implements the engine's incremental protocol
(:class:`~flowcraft.distributed.contracts.IncrementalContext`): a worker that has seen a run
reads only the rows written after the version it saw (one statement), a node lease is taken
in the same round trip as that read (two pipelined statements, so the read's snapshot is
taken after the lease), and a commit releases the committing delivery's lease and takes its
inline successors' leases inside the commit statement. Without it every hop re-read and
decoded the whole run: quadratic in the length of a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, LiteralString

import psycopg
from flowcraft.context import PatchOperation
from flowcraft.distributed.codec import decode_value, encode_value
from flowcraft.distributed.contracts import Changes, CommitResult, Snapshot
from flowcraft.distributed.results import PushSource, one_by_one
from flowcraft.state import FINAL_STATUSES
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("flowcraft.rabbitmq.postgres")

SCHEMA_VERSION: Final = 2
"""The newest schema version :meth:`PostgresRunStore.migrate` creates."""

_FINAL_SQL: Final = "('completed', 'failed', 'stalled', 'cancelled')"
assert set(FINAL_STATUSES) == {"completed", "failed", "stalled", "cancelled"}

_KEY_ESCAPE: Final = "\x01"

# Each migration: statements run in one transaction; {s} is the schema, tables are {runs},
# {ctx}, {meta}, {leases}, {active} (the index name, unqualified).
_MIGRATIONS: Final[dict[int, tuple[LiteralString, ...]]] = {
    1: (
        """CREATE TABLE IF NOT EXISTS {runs} (
             run_id TEXT PRIMARY KEY,
             version BIGINT NOT NULL,
             status TEXT NOT NULL,
             blueprint_id TEXT,
             created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
             updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
             finished_at TIMESTAMPTZ,
             result TEXT,
             published_at TIMESTAMPTZ
           )""",
        "CREATE INDEX IF NOT EXISTS {active} ON {runs} (updated_at, run_id) "
        "WHERE status NOT IN " + _FINAL_SQL,
        """CREATE TABLE IF NOT EXISTS {ctx} (
             run_id TEXT NOT NULL,
             key TEXT NOT NULL,
             value TEXT NOT NULL,
             PRIMARY KEY (run_id, key)
           )""",
    ),
    2: (
        "ALTER TABLE {runs} ADD COLUMN IF NOT EXISTS epoch TEXT NOT NULL "
        "DEFAULT gen_random_uuid()::text",
        "ALTER TABLE {ctx} ADD COLUMN IF NOT EXISTS ver BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE {ctx} ALTER COLUMN value DROP NOT NULL",
        """CREATE TABLE IF NOT EXISTS {leases} (
             key TEXT PRIMARY KEY,
             token TEXT NOT NULL,
             expires_at TIMESTAMPTZ NOT NULL
           )""",
    ),
}


def encode_key(key: str) -> str:
    """A context key as stored in ``ctx.key``: itself, unless it contains NUL (which PostgreSQL
    text cannot hold) or starts with ``\\x01``; then ``\\x01`` + its JSON text."""
    if "\x00" in key or key.startswith(_KEY_ESCAPE):
        return _KEY_ESCAPE + json.dumps(key)
    return key


def decode_key(stored: str) -> str:
    """Inverse of :func:`encode_key`."""
    if stored.startswith(_KEY_ESCAPE):
        return str(json.loads(stored[1:]))
    return stored


@dataclass
class PostgresStoreStats:
    """Counters shared by every context of a store: successful commits, the bytes they wrote
    (keys + encoded values) and round trips (a lease taken with a read is two pipelined
    statements in one round trip)."""

    commits: int = 0
    bytes_written: int = 0
    statements: int = 0


class PostgresRunStore:
    """Run contexts, statuses and results on PostgreSQL (psycopg 3 async pool).

    ``conninfo`` is a libpq URL/DSN, or pass an open ``pool``. ``schema`` names the
    deployment's schema (tests use one schema each). The pool opens on first use; call
    :meth:`migrate` once per deployment (idempotent, safe from several processes at once) or
    let the adapter do it (``migrate=True``). ``max_value_bytes`` refuses larger encoded values
    with a :class:`~flowcraft.errors.SerializationError` naming the key.
    """

    def __init__(
        self,
        conninfo: str | None = None,
        *,
        pool: AsyncConnectionPool | None = None,
        schema: str = "flowcraft",
        min_size: int = 1,
        max_size: int = 8,
        max_value_bytes: int | None = 64 * 1024 * 1024,
        stats: PostgresStoreStats | None = None,
        gate_hold_max: float = 1.0,
    ) -> None:
        if pool is None and conninfo is None:
            raise ValueError("PostgresRunStore needs a conninfo or a pool")
        self.conninfo = conninfo
        self.schema = schema
        self.max_value_bytes = max_value_bytes
        self.stats = stats or PostgresStoreStats()
        self.gate_hold_max = gate_hold_max
        """Longest time (s) a retrying commit keeps its run's in-process gate (0: no gate)."""
        self._gates: dict[str, _RunGate] = {}
        self._own_pool = pool is None
        self._pool = pool or AsyncConnectionPool(
            conninfo or "",
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True},
            open=False,
            name=f"flowcraft-{schema}",
        )
        self._opened = pool is not None
        self._open_lock = asyncio.Lock()
        self.channel = "fc_final_" + hashlib.sha1(schema.encode()).hexdigest()[:16]
        """The LISTEN/NOTIFY channel announcing final runs of this schema."""
        names = {
            "runs": sql.Identifier(schema, "runs"),
            "ctx": sql.Identifier(schema, "ctx"),
            "meta": sql.Identifier(schema, "meta"),
            "leases": sql.Identifier(schema, "leases"),
            "active": sql.Identifier("runs_active"),
            "s": sql.Identifier(schema),
        }
        self._names = names
        q = self._q
        self._sql_load = q(
            "SELECT r.version, c.key, c.value FROM {runs} r "
            "LEFT JOIN {ctx} c ON c.run_id = r.run_id AND c.value IS NOT NULL WHERE r.run_id = %s"
        )
        self._sql_get = q(
            "SELECT value FROM {ctx} WHERE run_id = %s AND key = %s AND value IS NOT NULL"
        )
        self._sql_status = q("SELECT status FROM {runs} WHERE run_id = %s")
        # Every written row carries the new version; a delete leaves a NULL row behind.
        writes = (
            ", up AS (INSERT INTO {ctx} (run_id, key, value, ver) "
            "SELECT v.run_id, t.k, t.val, v.version FROM v, "
            "unnest(%(keys)b::text[], %(vals)b::text[]) AS t(k, val) "
            "ON CONFLICT (run_id, key) DO UPDATE SET value = EXCLUDED.value, "
            "ver = EXCLUDED.ver RETURNING 1), "
            "del AS (UPDATE {ctx} c SET value = NULL, ver = v.version FROM v "
            "WHERE c.run_id = v.run_id AND c.key = ANY(%(dels)b::text[]) "
            "AND c.value IS NOT NULL RETURNING 1)"
        )
        done = " SELECT v.version, v.epoch FROM v"
        # The leases a commit releases (compare-and-delete) and takes (absent or expired),
        # only when its version check passed; the reply lists the keys taken.
        leases = (
            ", rel AS (DELETE FROM {leases} l USING v, "
            "unnest(%(rk)b::text[], %(rt)b::text[]) AS r(k, tok) "
            "WHERE l.key = r.k AND l.token = r.tok RETURNING 1), "
            "tk AS (INSERT INTO {leases} AS l (key, token, expires_at) "
            "SELECT t.k, t.tok, now() + make_interval(secs => %(ttl)s::float8) FROM v, "
            "unnest(%(tk)b::text[], %(tt)b::text[]) AS t(k, tok) "
            "ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, "
            "expires_at = EXCLUDED.expires_at WHERE l.expires_at <= now() RETURNING l.key) "
            "SELECT v.version, v.epoch, ARRAY(SELECT key FROM tk) FROM v"
        )
        # A final status is never replaced by another one (compare-and-set).
        keep_final = (
            "({t}.status NOT IN " + _FINAL_SQL + " OR %(status)s::text IS NULL "
            "OR %(status)s::text = {t}.status)"
        )
        self._sql_commit = q(
            "WITH v AS (UPDATE {runs} SET version = version + 1, "
            "status = COALESCE(%(status)s::text, status), updated_at = now(), "
            "finished_at = CASE WHEN %(final)s::boolean THEN COALESCE(finished_at, now()) "
            "ELSE finished_at END "
            "WHERE run_id = %(run)s AND version = %(expected)s AND "
            + keep_final.replace("{t}", "{runs}")
            + " RETURNING run_id, version, epoch)"
            + writes
        )
        self._sql_commit_leases = self._sql_commit + q(leases)
        self._sql_commit = self._sql_commit + q(done)
        self._sql_create = q(
            "WITH v AS (INSERT INTO {runs} (run_id, version, status, finished_at) "
            "VALUES (%(run)s, 1, COALESCE(%(status)s::text, 'running'), "
            "CASE WHEN %(final)s::boolean THEN now() END) "
            "ON CONFLICT (run_id) DO NOTHING RETURNING run_id, version, epoch)" + writes + done
        )
        self._sql_upsert = q(
            "WITH v AS (INSERT INTO {runs} AS r (run_id, version, status, finished_at) "
            "VALUES (%(run)s, 1, COALESCE(%(status)s::text, 'running'), "
            "CASE WHEN %(final)s::boolean THEN now() END) "
            "ON CONFLICT (run_id) DO UPDATE SET version = r.version + 1, "
            "status = COALESCE(%(status)s::text, r.status), updated_at = now(), "
            "finished_at = CASE WHEN %(final)s::boolean THEN COALESCE(r.finished_at, now()) "
            "ELSE r.finished_at END WHERE "
            + keep_final.replace("{t}", "r")
            + " RETURNING run_id, version, epoch)"
            + writes
            + done
        )
        self._sql_active = q(
            "SELECT run_id, updated_at FROM {runs} WHERE status NOT IN " + _FINAL_SQL + " "
            "AND (updated_at, run_id) > (%(after_ts)s::timestamptz, %(after_id)s::text) "
            "AND (%(stale)s::float8 IS NULL OR "
            "updated_at < now() - make_interval(secs => %(stale)s::float8)) "
            "ORDER BY updated_at, run_id LIMIT %(limit)s"
        )
        self._sql_result = q(
            "WITH u AS (UPDATE {runs} SET result = %s, published_at = now() "
            "WHERE run_id = %s RETURNING run_id) SELECT pg_notify(%s, run_id) FROM u"
        )
        self._sql_get_result = q("SELECT result FROM {runs} WHERE run_id = %s")
        self._sql_delete_run = q(
            "WITH a AS (DELETE FROM {ctx} WHERE run_id = %(run)s RETURNING 1) "
            "DELETE FROM {runs} WHERE run_id = %(run)s"
        )
        self._sql_purge = q(
            "WITH gone AS (DELETE FROM {runs} WHERE status IN " + _FINAL_SQL + " "
            "AND finished_at < now() - make_interval(secs => %(age)s::float8) RETURNING run_id), "
            "c AS (DELETE FROM {ctx} USING gone WHERE {ctx}.run_id = gone.run_id RETURNING 1), "
            "l AS (DELETE FROM {leases} "
            "WHERE expires_at < now() - make_interval(secs => %(age)s::float8)) "
            "SELECT count(*) FROM gone"
        )
        # A run's rows after ``since`` of the same epoch (every live row otherwise); with a
        # lease key, only while that lease is held by the token (first column).
        self._sql_since = q(
            "SELECT l.held, r.version, r.epoch, c.key, c.value FROM "
            "(SELECT %(lk)s::text IS NULL OR EXISTS (SELECT 1 FROM {leases} "
            "WHERE key = %(lk)s AND token = %(lt)s) AS held) l "
            "LEFT JOIN {runs} r ON l.held AND r.run_id = %(run)s "
            "LEFT JOIN {ctx} c ON c.run_id = r.run_id AND CASE "
            "WHEN r.epoch = %(epoch)s AND %(since)s::bigint > 0 "
            "AND %(since)s::bigint <= r.version THEN c.ver > %(since)s::bigint "
            "ELSE c.value IS NOT NULL END"
        )
        self._sql_take = q(
            "INSERT INTO {leases} AS l (key, token, expires_at) "
            "VALUES (%(k)s, %(t)s, now() + make_interval(secs => %(ttl)s::float8)) "
            "ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, "
            "expires_at = EXCLUDED.expires_at WHERE l.expires_at <= now()"
        )
        self._sql_holder = q("SELECT token FROM {leases} WHERE key = %s AND expires_at > now()")
        self._sql_extend = q(
            "UPDATE {leases} SET expires_at = now() + make_interval(secs => %s::float8) "
            "WHERE key = %s AND expires_at > now() RETURNING 1"
        )
        self._sql_release = q("DELETE FROM {leases} WHERE key = %s AND token = %s RETURNING 1")
        self._final: PushSource | None = None

    def _q(self, template: LiteralString) -> bytes:
        """``template`` with the deployment's identifiers filled in (identifiers only), as
        the bytes sent: composed once, not on every execution."""
        return sql.SQL(template).format(**self._names).as_bytes(None)

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def pool(self) -> AsyncConnectionPool:
        """The connection pool (opened on first use)."""
        return self._pool

    async def open(self) -> None:
        """Open the pool (idempotent; every other method calls it)."""
        if self._opened:
            return
        async with self._open_lock:
            if not self._opened:
                await self._pool.open(wait=True, timeout=30.0)
                self._opened = True

    async def aclose(self) -> None:
        """Stop the final-run listener and close the pool if this store created it."""
        if self._final is not None:
            await self._final.aclose()
        if self._own_pool and self._opened:
            await self._pool.close()
            self._opened = False

    async def _execute(self, query: bytes, params: Any = None) -> list[tuple[Any, ...]]:
        await self.open()
        self.stats.statements += 1
        async with self._pool.connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall() if cur.description is not None else []

    # -- schema ------------------------------------------------------------------------------

    async def schema_version(self) -> int:
        """The schema version installed (0 when the schema does not exist)."""
        await self.open()
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (f'"{self.schema}"."meta"',)
            )
            row = await cur.fetchone()
            if not row or not row[0]:
                return 0
            cur = await conn.execute(
                self._q("SELECT value FROM {meta} WHERE key = 'schema_version'")
            )
            got = await cur.fetchone()
            return int(got[0]) if got else 0

    async def migrate(self) -> int:
        """Create or upgrade the schema to :data:`SCHEMA_VERSION`; returns the version.

        Runs in one transaction under an advisory lock, so several workers starting at once
        migrate exactly once; already-applied migrations are skipped. A schema newer than this
        code knows is refused (a RuntimeError naming both versions): an older worker would
        misread what newer ones write. Upgrading changes how rows are written, so stop the
        workers and clients of the older version before the first new one starts.
        """
        await self.open()
        async with self._pool.connection() as conn, conn.transaction():
            lock = int.from_bytes(
                hashlib.sha1(self.schema.encode()).digest()[:8], "big", signed=True
            )
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            await conn.execute(self._q("CREATE SCHEMA IF NOT EXISTS {s}"))
            await conn.execute(
                self._q("CREATE TABLE IF NOT EXISTS {meta} (key TEXT PRIMARY KEY, value TEXT)")
            )
            cur = await conn.execute(
                self._q("SELECT value FROM {meta} WHERE key = 'schema_version'")
            )
            row = await cur.fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"schema {self.schema!r} is at version {current}, newer than the "
                    f"{SCHEMA_VERSION} this flowcraft-rabbitmq knows: it would misread runs "
                    "written by a newer worker; upgrade this process"
                )
            for version in sorted(_MIGRATIONS):
                if version <= current:
                    continue
                for stmt in _MIGRATIONS[version]:
                    await conn.execute(self._q(stmt))
                await conn.execute(
                    self._q(
                        "INSERT INTO {meta} (key, value) VALUES ('schema_version', %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
                    ),
                    (str(version),),
                )
                current = version
            return current

    async def drop_schema(self) -> None:
        """Drop the deployment's schema with every run in it (tests, teardown)."""
        await self._execute(self._q("DROP SCHEMA IF EXISTS {s} CASCADE"))

    # -- runs ----------------------------------------------------------------------------------

    def context(self, run_id: str) -> PostgresRunContext:
        """The run's context (no I/O)."""
        return PostgresRunContext(self, run_id)

    async def load(self, run_id: str) -> Snapshot:
        """Every key of the run and its version, read in ONE statement (one snapshot)."""
        rows = await self._execute(self._sql_load, (run_id,))
        if not rows:
            return Snapshot({}, 0)
        data = {decode_key(k): decode_value(v) for _, k, v in rows if k is not None}
        return Snapshot(data, int(rows[0][0]))

    async def get_key(self, run_id: str, key: str) -> tuple[bool, Any]:
        """``(present, value)`` of one key of a run."""
        rows = await self._execute(self._sql_get, (run_id, encode_key(key)))
        return (True, decode_value(rows[0][0])) if rows else (False, None)

    async def commit(
        self,
        run_id: str,
        ops: Sequence[PatchOperation],
        expected: int | None,
        status: str | None = None,
    ) -> bool:
        """Apply ``ops`` in one statement; with ``expected`` only if the run's version still
        equals it (0: only if the run does not exist yet). ``status`` (None: unchanged)
        becomes the run's indexed status. True when applied."""
        params, written = self._commit_params(run_id, ops, expected, status)
        query = (
            self._sql_upsert
            if expected is None
            else self._sql_create
            if expected == 0
            else self._sql_commit
        )
        rows = await self._execute(query, params)
        if not rows:
            return False
        self._committed(written)
        return True

    def _commit_params(
        self,
        run_id: str,
        ops: Sequence[PatchOperation],
        expected: int | None,
        status: str | None,
    ) -> tuple[dict[str, Any], int]:
        """The parameters of a commit statement and the bytes it writes."""
        last: dict[str, PatchOperation] = {}
        for op in ops:  # the last operation on a key wins, as if applied in order
            last.pop(op.key, None)
            last[op.key] = op
        keys: list[str] = []
        vals: list[str] = []
        dels: list[str] = []
        written = 0
        for op in last.values():
            if op.op == "set":
                text = encode_value(op.key, op.value, self.max_value_bytes)
                keys.append(encode_key(op.key))
                vals.append(text)
                written += len(op.key.encode("utf-8")) + len(text.encode("utf-8"))
            else:
                dels.append(encode_key(op.key))
        params = {
            "run": run_id,
            "expected": expected,
            "status": status,
            "final": status in FINAL_STATUSES,
            "keys": keys,
            "vals": vals,
            "dels": dels,
        }
        return params, written

    def _committed(self, written: int) -> None:
        self.stats.commits += 1
        self.stats.bytes_written += written

    # -- the incremental protocol (rows since a version, leases with reads and commits) --------

    async def load_since(
        self, run_id: str, since: int, epoch: str, lease: tuple[str, str, float] | None
    ) -> Changes | None:
        """What changed in the run after version ``since`` of ``epoch`` (everything when the
        run's epoch differs or ``since`` is 0), in one statement; with ``lease`` ((key,
        token, ttl)), that lease is taken first in the same round trip: None when another
        token holds it."""
        params = {
            "run": run_id,
            "since": since,
            "epoch": epoch,
            "lk": lease[0] if lease else None,
            "lt": lease[1] if lease else None,
        }
        if lease is None:
            rows = await self._execute(self._sql_since, params)
        else:
            await self.open()
            self.stats.statements += 1  # one round trip
            async with self._pool.connection() as conn, conn.pipeline():
                take = {"k": lease[0], "t": lease[1], "ttl": lease[2]}
                await conn.execute(self._sql_take, take)
                cur = await conn.execute(self._sql_since, params)
                rows = await cur.fetchall()
        if not rows[0][0]:
            return None  # the lease is held by another token
        if rows[0][1] is None:
            return Changes(0, "", True, {})
        version, now_epoch = int(rows[0][1]), str(rows[0][2])
        full = now_epoch != epoch or since <= 0 or since > version
        sets: dict[str, Any] = {}
        deletes: list[str] = []
        for _, _, _, k, v in rows:
            if k is None:
                continue
            if v is None:
                deletes.append(decode_key(k))
            else:
                sets[decode_key(k)] = decode_value(v)
        return Changes(version, now_epoch, full, sets, deletes)

    async def commit_release(
        self,
        run_id: str,
        ops: Sequence[PatchOperation],
        expected: int,
        release: Sequence[tuple[str, str]],
        take: Sequence[tuple[str, str]],
        ttl: float,
        status: str | None,
    ) -> CommitResult:
        """:meth:`commit` at version ``expected`` that, in the same statement, releases the
        leases ``release`` ((key, token): only while the token holds them) and takes the
        leases ``take`` (absent or expired ones) for ``ttl`` seconds."""
        params, written = self._commit_params(run_id, ops, expected, status)
        taking = dict(take)
        # One statement cannot delete and insert one row: a key both released and taken is
        # released here and taken right after the commit.
        later = [(k, t) for k, t in take if any(k == r for r, _ in release)]
        for k, _ in later:
            taking.pop(k, None)
        params.update(
            rk=[k for k, _ in release],
            rt=[t for _, t in release],
            tk=list(taking),
            tt=list(taking.values()),
            ttl=ttl,
        )
        rows = await self._execute(self._sql_commit_leases, params)
        if not rows:
            return CommitResult(False)
        self._committed(written)
        got = set(rows[0][2])
        for k, t in later:
            if await self.take_lease(k, t, ttl):
                got.add(k)
        return CommitResult(True, str(rows[0][1]), [k in got for k, _ in take])

    async def take_lease(self, key: str, token: str, ttl: float) -> bool:
        """Take lease ``key`` for ``token`` when it is absent or expired; True when taken."""
        rows = await self._execute(
            self._sql_take + self._q(" RETURNING 1"), {"k": key, "t": token, "ttl": ttl}
        )
        return bool(rows)

    async def lease_holder(self, key: str) -> str | None:
        """The token holding lease ``key`` (None: absent or expired)."""
        rows = await self._execute(self._sql_holder, (key,))
        return str(rows[0][0]) if rows else None

    async def extend_lease(self, key: str, ttl: float) -> bool:
        """Give the live lease ``key`` a new TTL; False when it is absent or expired."""
        return bool(await self._execute(self._sql_extend, (ttl, key)))

    async def release_lease(self, key: str, token: str) -> bool:
        """Delete lease ``key`` only while ``token`` holds it; True when it did."""
        return bool(await self._execute(self._sql_release, (key, token)))

    async def run_status(self, run_id: str) -> str | None:
        """The indexed status of a run (None when there is no such run)."""
        rows = await self._execute(self._sql_status, (run_id,))
        return str(rows[0][0]) if rows else None

    async def list_active_runs(
        self,
        cursor: str | None = None,
        limit: int = 100,
        *,
        stale_after: float | None = None,
    ) -> tuple[list[str], str | None]:
        """A page of non-final run ids, least recently updated first, and the next cursor
        (None at the end). With ``stale_after`` only runs without progress for that many
        seconds ("running and stale", the reconciler's scan). Uses the partial index
        ``runs_active``; keyset pagination, so runs updated meanwhile move behind the cursor
        and are never skipped."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        after_ts, after_id = "-infinity", ""
        if cursor:
            after_ts, after_id = json.loads(cursor)
        rows = await self._execute(
            self._sql_active,
            {
                "after_ts": after_ts,
                "after_id": after_id,
                "stale": stale_after,
                "limit": limit + 1,
            },
        )
        page = rows[:limit]
        ids = [str(r[0]) for r in page]
        if len(rows) > limit:
            ts: datetime = page[-1][1]
            return ids, json.dumps([ts.isoformat(), ids[-1]])
        return ids, None

    async def put_result(self, run_id: str, result: Mapping[str, Any]) -> None:
        """Store a run's published final result and NOTIFY waiting clients."""
        text = json.dumps(result, ensure_ascii=False, separators=(",", ":"), default=str)
        await self._execute(self._sql_result, (text, run_id, self.channel))

    async def get_result(self, run_id: str) -> dict[str, Any] | None:
        """The last published result of a run (None if none was published)."""
        rows = await self._execute(self._sql_get_result, (run_id,))
        if not rows or rows[0][0] is None:
            return None
        value: dict[str, Any] = json.loads(rows[0][0])
        return value

    async def delete_run(self, run_id: str) -> None:
        """Delete a run and its context."""
        await self._execute(self._sql_delete_run, {"run": run_id})

    async def purge_finished(self, older_than: float) -> int:
        """Delete runs that became final more than ``older_than`` seconds ago (retention);
        returns how many."""
        rows = await self._execute(self._sql_purge, {"age": older_than})
        return int(rows[0][0]) if rows else 0

    # -- waiting for final runs ------------------------------------------------------------------

    async def listen_final(
        self, subscribed: Callable[[], None], notify: Callable[[str], None]
    ) -> None:
        """A :data:`~flowcraft.distributed.results.Listener`: ``LISTEN`` on the schema's
        channel on a connection of its own, calling ``notify`` per NOTIFY (the run id)."""
        if not self.conninfo:
            raise RuntimeError("LISTEN needs a conninfo")
        conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            subscribed()
            async for note in conn.notifies():
                notify(note.payload)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    def final_source(self) -> PushSource:
        """Waiting for runs of this store to become final: :meth:`listen_final` announces,
        :meth:`run_status` checks (see :mod:`flowcraft.distributed.results`)."""
        if not self.conninfo:
            raise RuntimeError("waiting needs a conninfo (LISTEN uses its own connection)")
        if self._final is None:
            self._final = PushSource(
                one_by_one(self.run_status),
                self.listen_final,
                recheck_every=1.0,
                ready_timeout=30.0,
            )
        return self._final


class _RunGate:
    """A per-run mutex of one process, held from a retry's reload to its commit.

    Only timing depends on it (every write is still a version compare-and-set), so it can
    never cost correctness: a holder that never commits (its job turned out to be done) loses
    the gate after ``hold_max`` seconds."""

    __slots__ = ("holder", "lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0
        self.holder: asyncio.TimerHandle | None = None


class PostgresRunContext:
    """A run's context in a :class:`PostgresRunStore`
    (:class:`~flowcraft.distributed.contracts.DistributedContext` and its incremental
    protocol, :class:`~flowcraft.distributed.contracts.IncrementalContext`).

    Conflicting commits of one run from one process (the branches of a wide fan-out finishing
    together) would otherwise reload the whole run and collide again in lock step: after a
    lost version race, this context's next ``load`` waits for the run's in-process gate and
    keeps it until its ``commit``, so the retries of one process take turns."""

    __slots__ = ("_conflicts", "_gate", "_store", "run_id")

    def __init__(self, store: PostgresRunStore, run_id: str) -> None:
        self._store = store
        self.run_id = run_id
        self._conflicts = 0
        self._gate: _RunGate | None = None

    async def get(self, key: str, default: Any = None) -> Any:
        """See AsyncContext."""
        present, value = await self._store.get_key(self.run_id, key)
        return value if present else default

    async def set(self, key: str, value: Any) -> None:
        """See AsyncContext (unconditional, atomic)."""
        await self._store.commit(self.run_id, [PatchOperation("set", key, value)], None)

    async def has(self, key: str) -> bool:
        """See AsyncContext."""
        return (await self._store.get_key(self.run_id, key))[0]

    async def delete(self, key: str) -> bool:
        """See AsyncContext."""
        had = await self.has(key)
        await self._store.commit(self.run_id, [PatchOperation("delete", key)], None)
        return had

    async def to_dict(self) -> dict[str, Any]:
        """See AsyncContext (every key of the run, engine keys included)."""
        return (await self._store.load(self.run_id)).data

    async def patch(self, ops: Iterable[PatchOperation]) -> None:
        """See AsyncContext: every operation in one statement, without a version check."""
        await self._store.commit(self.run_id, list(ops), None)

    async def load(self) -> Snapshot:
        """See DistributedContext (one statement)."""
        if self._conflicts and self._gate is None and self._store.gate_hold_max > 0:
            await self._enter_gate()
        return await self._store.load(self.run_id)

    async def commit(
        self,
        ops: Sequence[PatchOperation],
        expected_version: int,
        status: str | None = None,
    ) -> bool:
        """See DistributedContext (one statement with the version check; ``status`` is the
        run's status after the commit, None: unchanged)."""
        try:
            ok = await self._store.commit(self.run_id, ops, expected_version, status)
        finally:
            self._leave_gate()
        self._conflicts = 0 if ok else self._conflicts + 1
        return ok

    # IncrementalContext: reads return the rows written since the version a worker saw, the
    # node lease travels with the read and with the commit.

    async def load_since(
        self, since: int, epoch: str, lease: tuple[str, str, float] | None = None
    ) -> Changes | None:
        """See IncrementalContext (one round trip; None when ``lease`` is held elsewhere).
        A reread after a lost commit waits for the run's gate, as :meth:`load` does."""
        if self._conflicts and self._gate is None and self._store.gate_hold_max > 0:
            await self._enter_gate()
        return await self._store.load_since(self.run_id, since, epoch, lease)

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
        """See IncrementalContext (one statement; a refusal carries no changes, the engine
        rereads what changed)."""
        try:
            r = await self._store.commit_release(
                self.run_id, ops, expected_version, release, take, ttl_seconds, status
            )
        finally:
            self._leave_gate()
        self._conflicts = 0 if r.ok else self._conflicts + 1
        return r

    async def lease_holder(self, key: str) -> str | None:
        """See IncrementalContext."""
        return await self._store.lease_holder(key)

    async def extend_lease(self, key: str, ttl_seconds: float) -> bool:
        """See IncrementalContext."""
        return await self._store.extend_lease(key, ttl_seconds)

    async def release_lease(self, key: str, token: str) -> bool:
        """See IncrementalContext."""
        return await self._store.release_lease(key, token)

    async def _enter_gate(self) -> None:
        gates = self._store._gates
        gate = gates.get(self.run_id)
        if gate is None:
            gate = gates[self.run_id] = _RunGate()
        gate.users += 1
        hold = self._store.gate_hold_max
        try:
            await asyncio.wait_for(gate.lock.acquire(), hold)
        except TimeoutError:
            self._release_user(gate)
            return  # go ahead without the gate
        except BaseException:
            self._release_user(gate)
            raise
        self._gate = gate
        gate.holder = asyncio.get_running_loop().call_later(hold, self._leave_gate)

    def _leave_gate(self) -> None:
        gate, self._gate = self._gate, None
        if gate is None:
            return
        if gate.holder is not None:
            gate.holder.cancel()
            gate.holder = None
        gate.lock.release()
        self._release_user(gate)

    def _release_user(self, gate: _RunGate) -> None:
        gate.users -= 1
        if gate.users == 0 and self._store._gates.get(self.run_id) is gate:
            del self._store._gates[self.run_id]


__all__ = [
    "SCHEMA_VERSION",
    "PostgresRunContext",
    "PostgresRunStore",
    "PostgresStoreStats",
    "decode_key",
    "encode_key",
]
