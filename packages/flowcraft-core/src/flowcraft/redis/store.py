"""Redis implementations of the distributed contracts, shared by every Redis-backed adapter.

Install with ``pip install flowcraft-core[redis]``. Everything here talks to Redis through
``redis.asyncio`` with parameterised commands and Lua scripts that receive every key in
``KEYS`` and every value in ``ARGV``: no key or value is ever pasted into a script or command.

Key layout (``prefix`` defaults to ``flowcraft:``; ``{sN}`` is a Redis Cluster hash tag)::

    <prefix>{s<N>}:run:<run id>    hash: one field per context key (user keys and the engine's
                                   ``_fc.`` keys), value = JSON text (flowcraft.distributed.codec),
                                   plus ``_fc.version`` (the run's commit counter) and
                                   ``_fc.epoch`` (a random id set when the hash is created)
    <prefix>{s<N>}:chg:<run id>    sorted set: field name -> version that last wrote or deleted it
    <prefix>{s<N>}:active          sorted set: non-final runs of shard N, score = last update (ms)
    <prefix>{s<N>}:lease:<key>     node leases, taken together with a load (``load_since``) and
                                   released / taken together with a commit (``commit_release``)
    <prefix>coord:<key>            other coordination keys (plain strings, own TTLs)
    <prefix>final:<run id>         pub/sub channel announcing that a run became final

``N = crc32(run id) % shards``. A run's hash, its shard's index and its leases share one hash
tag, so the single commit script below touches one Cluster slot; runs spread over ``shards``
slots. All processes of one deployment must use the same ``prefix`` and ``shards``.

A commit is ONE script: check the version, ``HSET``/``HDEL`` the changed fields, note them
in the change log, bump the version, and keep the active-run index in step (``ZADD`` while
live; ``ZREM`` and the retention ``PEXPIRE`` when the run becomes final); the same script
releases the committing jobs' node leases and takes the leases of inline successors, and on a
version conflict returns the fields changed since the expected version. Nothing expires while
a run is live.

A load is ONE script too (``load_since`` also takes a node lease first, for workers that keep
their own decoded view of the run: :mod:`flowcraft.distributed.view`). A store remembers the
runs it recently loaded or committed (version, epoch, each field's JSON text; ``cache_runs`` of
them): loading such a run again transfers only the fields changed since (nothing at all when
the version is unchanged). Values are still decoded afresh for every snapshot, except engine
node records and edge flags, which the engine only reads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis

from ..context import PatchOperation
from ..distributed.codec import decode_value, encode_value
from ..distributed.contracts import Snapshot
from ..distributed.results import PushSource
from ..distributed.statekeys import RUN_KEY
from ..distributed.view import Changes, CommitResult
from ..state import FINAL_STATUSES

log = logging.getLogger("flowcraft.redis")

VERSION_FIELD: Final = "_fc.version"
"""Hash field holding a run's version (engine namespace: never a user key, never returned by
:meth:`RedisRunContext.load`)."""

EPOCH_FIELD: Final = "_fc.epoch"
"""Hash field holding a random id set when the run's hash is created: a cached snapshot of an
earlier hash under the same key (expired, then created again) is never mistaken for this one."""

_VERSION_B: Final = VERSION_FIELD.encode()
_EPOCH_B: Final = EPOCH_FIELD.encode()
_RESERVED: Final = (VERSION_FIELD, EPOCH_FIELD)
_JSON: Final = json.JSONDecoder()
_dumps: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_SHARED_PREFIXES: Final = ("_fc.node.", "_fc.edge.")
"""Engine keys whose decoded values a cache may hand out to several snapshots: node records
and edge flags are only ever read (into fresh ``NodeState`` objects). Other values are shared
only when immutable (strings, numbers, booleans, null); every list or dict (user values,
inputs, batches, the run record) is decoded afresh for each snapshot, so code that mutates a
value it was given can never alter what another job sees."""
_CHUNK: Final = 1000  # arguments per HSET/HDEL call inside scripts (Lua's unpack limit is ~8000)

_COMMIT_LUA: Final = (
    """
-- KEYS[1] run hash, KEYS[2] shard's active index, KEYS[3] the run's change log,
-- KEYS[4 ..] node leases: ARGV[8] to release after the commit, then ARGV[9] to take after it
-- ARGV[1] expected version (-1: no check)   ARGV[2] 'live' | 'final' | '' (status unchanged)
-- ARGV[3] now (ms)   ARGV[4] retention (ms, 0 = keep)   ARGV[5] run id (index member)
-- ARGV[6] epoch for a hash this creates   ARGV[7] n = number of fields to set
-- ARGV[8] leases to release   ARGV[9] leases to take   ARGV[10] their TTL (ms)
-- ARGV[11] the epoch the caller knows (on a version mismatch the fields changed since the
-- expected version are returned, saving the caller a reload)
-- then one token per lease (release, then take), then two JSON arrays (one argument each, so
-- a commit is a few arguments however many keys it writes): field, value, field, value, ...
-- to set (n pairs) and fields to delete
-- -> {-1, ''} version mismatch | {-1, 'D', version, fields, values} mismatch with changes
--    | {new version, epoch, 1/0 per lease taken}
local cur = tonumber(redis.call('HGET', KEYS[1], '@VERSION@') or '0')
local expected = tonumber(ARGV[1])
if expected >= 0 and cur ~= expected then
  if ARGV[11] == '' or expected <= 0 or expected > cur
      or redis.call('HGET', KEYS[1], '@EPOCH@') ~= ARGV[11] then
    return {-1, ''}
  end
  local fields = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. expected, '+inf')
  if #fields == 0 or #fields > 4000 then
    return {-1, ''}
  end
  return {-1, 'D', cur, fields, redis.call('HMGET', KEYS[1], unpack(fields))}
end
local epoch = redis.call('HGET', KEYS[1], '@EPOCH@')
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', KEYS[1], '@EPOCH@', epoch)
end
local v = cur + 1
local nrel = tonumber(ARGV[8])
local ntake = tonumber(ARGV[9])
local sets = cjson.decode(ARGV[12 + nrel + ntake])
local dels = cjson.decode(ARGV[13 + nrel + ntake])
local i = 1
local last = #sets
while i <= last do
  local j = math.min(i + @CHUNK@ - 1, last)
  redis.call('HSET', KEYS[1], unpack(sets, i, j))
  local log = {}
  for k = i, j, 2 do
    log[#log + 1] = v
    log[#log + 1] = sets[k]
  end
  redis.call('ZADD', KEYS[3], unpack(log))
  i = j + 1
end
i = 1
last = #dels
while i <= last do
  local j = math.min(i + @CHUNK@ - 1, last)
  redis.call('HDEL', KEYS[1], unpack(dels, i, j))
  local log = {}
  for k = i, j do
    log[#log + 1] = v
    log[#log + 1] = dels[k]
  end
  redis.call('ZADD', KEYS[3], unpack(log))
  i = j + 1
end
redis.call('HSET', KEYS[1], '@VERSION@', v)
if ARGV[2] == 'final' then
  redis.call('ZREM', KEYS[2], ARGV[5])
  local ttl = tonumber(ARGV[4])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
elseif ARGV[2] == 'live' then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
else
  redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[5])
end
for k = 1, nrel do
  if redis.call('GET', KEYS[3 + k]) == ARGV[11 + k] then
    redis.call('DEL', KEYS[3 + k])
  end
end
local out = {v, epoch}
for k = 1, ntake do
  local key = KEYS[3 + nrel + k]
  out[#out + 1] = redis.call('SET', key, ARGV[11 + nrel + k], 'NX', 'PX', ARGV[10]) and 1 or 0
end
return out
""".replace("@CHUNK@", str(_CHUNK))
    .replace("@VERSION@", VERSION_FIELD)
    .replace("@EPOCH@", EPOCH_FIELD)
)

_LOAD_SINCE_LUA: Final = """
-- KEYS[1] run hash, KEYS[2] the run's change log, KEYS[3] a lease to take first (when ARGV[3]
-- is a token; ARGV[4] its TTL in ms); ARGV[1] cached version, ARGV[2] its epoch
-- -> {'L'} lease held by someone else | {'U', version} unchanged
--    | {'D', version, fields, values} changed fields (nil = deleted) | {'F', version, HGETALL}
if ARGV[3] and ARGV[3] ~= '' then
  if not redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', ARGV[4]) then
    return {'L'}
  end
end
local cur = tonumber(redis.call('HGET', KEYS[1], '@VERSION@') or '0')
local since = tonumber(ARGV[1])
if since > 0 and since <= cur and redis.call('HGET', KEYS[1], '@EPOCH@') == ARGV[2] then
  if since == cur then
    return {'U', cur}
  end
  local fields = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. since, '+inf')
  if #fields > 4000 then
    return {'F', cur, redis.call('HGETALL', KEYS[1])}
  end
  if #fields == 0 then
    return {'D', cur, {}, {}}
  end
  return {'D', cur, fields, redis.call('HMGET', KEYS[1], unpack(fields))}
end
return {'F', cur, redis.call('HGETALL', KEYS[1])}
""".replace("@VERSION@", VERSION_FIELD).replace("@EPOCH@", EPOCH_FIELD)

_INCR_LUA: Final = """
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n
"""

_CAD_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1 (Redis rejects 0)."""
    return max(1, round(seconds * 1000))


POOL_SIZE: Final = 100
"""Default most connections a :func:`connect` client opens."""

POOL_WAIT: Final = 30.0
"""Default seconds a command waits for a free connection of a :func:`connect` client."""


def connect(
    url: str,
    *,
    max_connections: int = POOL_SIZE,
    pool_timeout: float = POOL_WAIT,
    **kwargs: Any,
) -> aioredis.Redis:
    """A ``redis.asyncio`` client for ``url`` (bytes responses, as the stores expect; more
    keyword arguments go to the connections).

    Its pool blocks: beyond ``max_connections`` commands at once, a command waits for a free
    connection (up to ``pool_timeout`` s, then redis' ``ConnectionError``) instead of failing
    at once with ``MaxConnectionsError``, as redis-py's default pool does: a client that
    gathers 1,000 ``result()`` or ``start_run()`` calls must not fail for it."""
    kwargs.setdefault("decode_responses", False)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout, **kwargs
    )
    return aioredis.Redis.from_pool(pool)


@dataclass
class RedisStoreStats:
    """Counters of successful commits and of the bytes they wrote (keys + encoded values),
    shared by every context of a :class:`RedisStateStore` (and by stores given the same
    object)."""

    commits: int = 0
    bytes_written: int = 0


class RedisKeyLayout:
    """Key names of a deployment (see the module docstring)."""

    __slots__ = ("prefix", "shards")

    def __init__(self, prefix: str = "flowcraft:", shards: int = 16) -> None:
        if shards < 1:
            raise ValueError("shards must be >= 1")
        self.prefix = prefix
        self.shards = shards

    def shard(self, run_id: str) -> int:
        """The shard of ``run_id`` (stable across processes and Python versions)."""
        return zlib.crc32(run_id.encode("utf-8")) % self.shards

    def tag(self, shard: int) -> str:
        """The hash-tagged key prefix of ``shard``."""
        return f"{self.prefix}{{s{shard}}}:"

    def run(self, run_id: str) -> str:
        """The run's hash."""
        return f"{self.tag(self.shard(run_id))}run:{run_id}"

    def changes(self, run_id: str) -> str:
        """The run's change log: a sorted set of field names scored by the version that last
        wrote (or deleted) them, so a reader that knows version V fetches only what changed."""
        return f"{self.tag(self.shard(run_id))}chg:{run_id}"

    def active(self, shard: int) -> str:
        """The active-run index of ``shard``."""
        return f"{self.tag(shard)}active"

    def lease(self, run_id: str, key: str) -> str:
        """A lease key in the run's slot (usable in one script with the run's hash)."""
        return f"{self.tag(self.shard(run_id))}lease:{key}"

    def coordination(self, key: str) -> str:
        """A coordination key outside any run."""
        return f"{self.prefix}coord:{key}"

    def final_channel(self, run_id: str) -> str:
        """The pub/sub channel announcing that ``run_id`` became final."""
        return f"{self.prefix}final:{run_id}"


class RedisCoordinationStore:
    """:class:`~flowcraft.distributed.contracts.CoordinationStore` on Redis.

    ``set_if_not_exist`` is ``SET NX PX``; ``increment`` is ``INCR`` + ``PEXPIRE`` in one
    script (atomic, unlike a pipeline); ``compare_and_delete`` is a script (atomic lease
    release). Values are stored as the plain strings the contract specifies (counters must be
    integers for ``INCR``). Never uses ``KEYS``.
    """

    def __init__(self, client: aioredis.Redis, layout: RedisKeyLayout | None = None) -> None:
        self.client = client
        self.layout = layout or RedisKeyLayout()
        self._incr = client.register_script(_INCR_LUA)
        self._cad = client.register_script(_CAD_LUA)

    def _key(self, key: str) -> str:
        return self.layout.coordination(key)

    async def increment(self, key: str, ttl_seconds: float) -> int:
        """See CoordinationStore."""
        return int(await self._incr(keys=[self._key(key)], args=[_ms(ttl_seconds)]))

    async def set_if_not_exist(self, key: str, value: str, ttl_seconds: float) -> bool:
        """See CoordinationStore."""
        return bool(await self.client.set(self._key(key), value, nx=True, px=_ms(ttl_seconds)))

    async def extend_ttl(self, key: str, ttl_seconds: float) -> bool:
        """See CoordinationStore."""
        return bool(await self.client.pexpire(self._key(key), _ms(ttl_seconds)))

    async def delete(self, key: str) -> None:
        """See CoordinationStore."""
        await self.client.delete(self._key(key))

    async def get(self, key: str) -> str | None:
        """See CoordinationStore."""
        v = await self.client.get(self._key(key))
        return None if v is None else (v.decode("utf-8") if isinstance(v, bytes) else str(v))

    async def compare_and_delete(self, key: str, value: str) -> bool:
        """Delete ``key`` only when it holds ``value`` (atomic)."""
        return bool(await self._cad(keys=[self._key(key)], args=[value]))


def _decode_hash(raw: Any) -> Snapshot:
    """HGETALL reply (a dict from redis-py, or a flat list from a script) -> Snapshot."""
    if isinstance(raw, dict):
        items: Iterable[tuple[Any, Any]] = raw.items()
    else:
        it = iter(raw)
        items = zip(it, it, strict=True)
    version = 0
    data: dict[str, Any] = {}
    loads = _JSON.decode  # decode_value's JSON, without re-detecting the encoding per value
    for k, v in items:
        if k in (_VERSION_B, VERSION_FIELD):
            version = int(v)
            continue
        if k in (_EPOCH_B, EPOCH_FIELD):
            continue
        if isinstance(k, bytes):
            k = k.decode("utf-8")
        data[k] = loads(v.decode("utf-8")) if isinstance(v, bytes) else decode_value(v)
    return Snapshot(data, version)


def _status_of(status: str | None) -> str:
    """'final' / 'live' for the active-run index and retention; '' when unchanged."""
    if status is None:
        return ""
    return "final" if status in FINAL_STATUSES else "live"


class _CachedRun:
    """What a store remembers of a run it loaded or committed: its version and epoch, every
    field's JSON text, and the decoded values of the shareable engine keys."""

    __slots__ = ("epoch", "shared", "texts", "version")

    def __init__(self, version: int, epoch: str, texts: dict[str, str]) -> None:
        self.version = version
        self.epoch = epoch
        self.texts = texts
        self.shared: dict[str, Any] = {}

    def snapshot(self) -> Snapshot:
        loads = _JSON.decode
        shared = self.shared
        data: dict[str, Any] = {}
        for k, text in self.texts.items():
            v = shared.get(k, _MISSING)
            if v is _MISSING:
                v = loads(text)
                if type(v) in _IMMUTABLE or (
                    k.startswith(_SHARED_PREFIXES)
                    and not (isinstance(v, dict) and v.get("error") is not None)
                ):
                    shared[k] = v  # never mutated by anyone: safe to hand out again
            data[k] = v
        return Snapshot(data, self.version)

    def apply(self, version: int, sets: dict[str, str], deletes: Iterable[str]) -> None:
        texts, shared = self.texts, self.shared
        for k, text in sets.items():
            texts[k] = text
            shared.pop(k, None)
        for k in deletes:
            texts.pop(k, None)
            shared.pop(k, None)
        self.version = version


_MISSING: Final = object()
_IMMUTABLE: Final = (str, int, float, bool, type(None))


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _changes(reply: Sequence[Any], epoch: str) -> Changes:
    """``[version, fields, values]`` of a script (nil value = deleted) -> Changes."""
    loads = _JSON.decode
    sets: dict[str, Any] = {}
    dels: list[str] = []
    for k, v in zip(reply[1], reply[2], strict=True):
        if v is None:
            dels.append(_text(k))
        else:
            sets[_text(k)] = loads(_text(v))
    return Changes(int(reply[0]), epoch, False, sets, dels)


class RedisRunContext:
    """A run's context in Redis: one hash (:class:`~flowcraft.distributed.contracts.
    DistributedContext`). ``load`` is one ``HGETALL``; ``commit`` is one script."""

    __slots__ = ("_active", "_changes", "_hash", "_store", "run_id")

    def __init__(self, store: RedisStateStore, run_id: str) -> None:
        self._store = store
        self.run_id = run_id
        layout = store.layout
        self._hash = layout.run(run_id)
        self._active = layout.active(layout.shard(run_id))
        self._changes = layout.changes(run_id)

    @property
    def key(self) -> str:
        """The Redis key of the run's hash."""
        return self._hash

    async def get(self, key: str, default: Any = None) -> Any:
        """See AsyncContext."""
        v = await self._store.client.hget(self._hash, key)
        return default if v is None else decode_value(v)

    async def set(self, key: str, value: Any) -> None:
        """See AsyncContext (unconditional, atomic)."""
        await self._write([PatchOperation("set", key, value)], -1)

    async def has(self, key: str) -> bool:
        """See AsyncContext."""
        return bool(await self._store.client.hexists(self._hash, key))

    async def delete(self, key: str) -> bool:
        """See AsyncContext."""
        had = await self.has(key)
        await self._write([PatchOperation("delete", key)], -1)
        return had

    async def to_dict(self) -> dict[str, Any]:
        """See AsyncContext (every key of the run, engine keys included)."""
        return (await self.load()).data

    async def patch(self, ops: Iterable[PatchOperation]) -> None:
        """See AsyncContext: all operations in one atomic script, without a version check."""
        await self._write(list(ops), -1)

    async def load(self) -> Snapshot:
        """See DistributedContext: one script call. When this store has seen the run before
        (it loaded or committed it), only the fields changed since then travel (nothing when
        the version is unchanged); otherwise the whole hash."""
        store = self._store
        if not store.cache_runs:
            return _decode_hash(await store.client.hgetall(self._hash))
        cached = store._cache.get(self.run_id)
        since, epoch = (cached.version, cached.epoch) if cached is not None else (0, "")
        reply = await store._load_since(keys=[self._hash, self._changes], args=[since, epoch])
        kind = _text(reply[0])
        version = int(reply[1])
        if kind == "F":
            it = iter(reply[2])
            texts: dict[str, str] = {}
            epoch = ""
            for k, v in zip(it, it, strict=True):
                key = _text(k)
                if key == VERSION_FIELD:
                    continue
                if key == EPOCH_FIELD:
                    epoch = _text(v)
                    continue
                texts[key] = _text(v)
            if version == 0:
                store._forget(self.run_id)
                return Snapshot({}, 0)
            cached = _CachedRun(version, epoch, texts)
            store._remember(self.run_id, cached)
            return cached.snapshot()
        assert cached is not None
        if kind == "D":
            sets: dict[str, str] = {}
            dels: list[str] = []
            for k, v in zip(reply[2], reply[3], strict=True):
                key = _text(k)
                if v is None:
                    dels.append(key)
                else:
                    sets[key] = _text(v)
            cached.apply(version, sets, dels)
        store._remember(self.run_id, cached)
        return cached.snapshot()

    async def commit(
        self,
        ops: Sequence[PatchOperation],
        expected_version: int,
        status: str | None = None,
    ) -> bool:
        """See DistributedContext: one script (version check, HSET/HDEL, version bump,
        active-run index, retention when the run became final)."""
        return (await self._write(ops, expected_version, status=status)).ok

    # -- IncrementalContext (flowcraft.distributed.view) ----------------------------------------

    async def load_since(
        self, since: int, epoch: str, lease: tuple[str, str, float] | None = None
    ) -> Changes | None:
        """Take ``lease`` (``SET NX PX`` in the run's slot; None when held by someone else) and
        read what changed after version ``since`` of ``epoch``, in one script call."""
        store = self._store
        if lease is None:
            keys = [self._hash, self._changes]
            args: list[Any] = [since, epoch]
        else:
            keys = [self._hash, self._changes, store.layout.lease(self.run_id, lease[0])]
            args = [since, epoch, lease[1], _ms(lease[2])]
        reply = await store._load_since(keys=keys, args=args)
        kind = _text(reply[0])
        if kind == "L":
            return None
        version = int(reply[1])
        loads = _JSON.decode
        if kind == "U":
            return Changes(version, epoch, False, {})
        if kind == "D":
            return _changes(reply[1:], epoch)
        it = iter(reply[2])
        data: dict[str, Any] = {}
        new_epoch = ""
        for k, v in zip(it, it, strict=True):
            key = _text(k)
            if key == VERSION_FIELD:
                continue
            if key == EPOCH_FIELD:
                new_epoch = _text(v)
                continue
            data[key] = loads(_text(v))
        return Changes(version, new_epoch, True, data)

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
        """:meth:`commit`, then (when it succeeded) release the leases ``release`` ((key,
        token) pairs) and take the leases ``take`` for ``ttl_seconds``, in the same script.
        On a version mismatch the result carries the changes since ``expected_version`` when
        ``epoch`` is the run's."""
        return await self._write(ops, expected_version, release, take, ttl_seconds, epoch, status)

    async def lease_holder(self, key: str) -> str | None:
        """The token holding lease ``key`` of this run, or None."""
        v = await self._store.client.get(self._store.layout.lease(self.run_id, key))
        return None if v is None else _text(v)

    async def extend_lease(self, key: str, ttl_seconds: float) -> bool:
        """Give lease ``key`` a new TTL; False when it is gone."""
        lk = self._store.layout.lease(self.run_id, key)
        return bool(await self._store.client.pexpire(lk, _ms(ttl_seconds)))

    async def release_lease(self, key: str, token: str) -> bool:
        """Delete lease ``key`` when ``token`` holds it (atomic)."""
        lk = self._store.layout.lease(self.run_id, key)
        return bool(await self._store.coordination._cad(keys=[lk], args=[token]))

    async def _write(
        self,
        ops: Sequence[PatchOperation],
        expected: int,
        release: Sequence[tuple[str, str]] = (),
        take: Sequence[tuple[str, str]] = (),
        ttl_seconds: float = 0.0,
        known_epoch: str = "",
        status: str | None = None,
    ) -> CommitResult:
        store = self._store
        last: dict[str, PatchOperation] = {}
        for op in ops:  # the last operation on a key wins, as if applied in order
            last.pop(op.key, None)
            last[op.key] = op
        sets: dict[str, str] = {}
        dels: list[str] = []
        written = 0
        limit = store.max_value_bytes
        for op in last.values():
            if op.key in _RESERVED:
                raise ValueError(f"{op.key!r} is reserved")
            if op.op == "set":
                text = encode_value(op.key, op.value, limit)
                sets[op.key] = text
                written += len(op.key.encode("utf-8")) + len(text.encode("utf-8"))
            else:
                dels.append(op.key)
        args: list[Any] = [
            expected,
            _status_of(status),
            int(time.time() * 1000),
            store.retention_ms,
            self.run_id,
            uuid.uuid4().hex if expected <= 0 else "",  # epoch of a hash this creates
            len(sets),
            len(release),
            len(take),
            _ms(ttl_seconds),
            known_epoch,
        ]
        keys = [self._hash, self._active, self._changes]
        layout = store.layout
        for k, token in (*release, *take):
            keys.append(layout.lease(self.run_id, k))
            args.append(token)
        flat: list[str] = []
        for k, text in sets.items():
            flat.append(k)
            flat.append(text)
        args.append(_dumps(flat))
        args.append(_dumps(dels))
        reply = await store._commit(keys=keys, args=args)
        version = int(reply[0])
        if version < 0:
            if len(reply) > 2:
                return CommitResult(False, changes=_changes(reply[2:], known_epoch))
            return CommitResult(False)
        store.stats.commits += 1
        store.stats.bytes_written += written
        if store.cache_runs:
            cached = store._cache.get(self.run_id)
            epoch = _text(reply[1])
            if cached is not None and cached.version == version - 1 and cached.epoch == epoch:
                cached.apply(version, sets, dels)  # this commit's result, without a reload
            elif expected == 0:  # a new run: the hash holds exactly these fields
                store._remember(self.run_id, _CachedRun(version, epoch, dict(sets)))
            else:
                store._forget(self.run_id)
        return CommitResult(True, _text(reply[1]), [bool(int(x)) for x in reply[2:]])


class RedisStateStore:
    """Run contexts, coordination, the active-run index and final-result notifications of
    one deployment on one Redis (standalone or Cluster).

    ``retention_seconds`` is how long a final run stays readable (``None``/0: forever); it is
    applied in the commit that makes the run final, never earlier. ``max_value_bytes`` refuses
    larger encoded values with a :class:`~flowcraft.errors.SerializationError`.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "flowcraft:",
        shards: int = 16,
        retention_seconds: float | None = 7 * 24 * 3600,
        max_value_bytes: int | None = 64 * 1024 * 1024,
        stats: RedisStoreStats | None = None,
        cache_runs: int = 256,
    ) -> None:
        self.client = client
        self.cache_runs = cache_runs
        self._cache: OrderedDict[str, _CachedRun] = OrderedDict()
        self.layout = RedisKeyLayout(prefix, shards)
        self.retention_ms = _ms(retention_seconds) if retention_seconds else 0
        self.max_value_bytes = max_value_bytes
        self.stats = stats or RedisStoreStats()
        self.coordination = RedisCoordinationStore(client, self.layout)
        self._commit = client.register_script(_COMMIT_LUA)
        self._load_since = client.register_script(_LOAD_SINCE_LUA)
        self._final: PushSource | None = None

    def _remember(self, run_id: str, cached: _CachedRun) -> None:
        cache = self._cache
        cache[run_id] = cached
        cache.move_to_end(run_id)
        while len(cache) > self.cache_runs:
            cache.popitem(last=False)

    def _forget(self, run_id: str) -> None:
        self._cache.pop(run_id, None)

    def context(self, run_id: str) -> RedisRunContext:
        """The run's context (no I/O)."""
        return RedisRunContext(self, run_id)

    async def list_active_runs(
        self, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[str], str | None]:
        """A page of non-final run ids (per shard, oldest progress first) and the next cursor
        (None at the end). Uses the sorted-set indexes, never ``KEYS``/``SCAN``."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        shard, score, member = 0, "-inf", ""
        if cursor:
            shard, score, member = json.loads(cursor)
        page: list[tuple[int, str, str]] = []
        while shard < self.layout.shards and len(page) <= limit:
            key = self.layout.active(shard)
            offset = 0
            while len(page) <= limit:
                rows: list[Any] = await self.client.zrange(
                    key,
                    score,
                    "+inf",
                    byscore=True,
                    offset=offset,
                    num=limit + 1,
                    withscores=True,
                    score_cast_func=int,
                )
                for m, s in rows:
                    rid = m.decode("utf-8") if isinstance(m, bytes) else str(m)
                    if member and s == int(score) and rid <= member:
                        continue  # at or before the cursor (same score, earlier member)
                    page.append((shard, str(s), rid))
                if len(rows) < limit + 1:
                    break
                offset += len(rows)
            if len(page) <= limit:
                shard, score, member = shard + 1, "-inf", ""
        if len(page) > limit:
            last = page[limit - 1]
            return [p[2] for p in page[:limit]], json.dumps([last[0], last[1], last[2]])
        return [p[2] for p in page], None

    # -- final-result notifications ------------------------------------------------------------

    async def publish_final(self, run_id: str, status: str) -> None:
        """Announce that ``run_id`` became final (``PUBLISH`` on its channel)."""
        msg = json.dumps({"runId": run_id, "status": status}, separators=(",", ":"))
        await self.client.publish(self.layout.final_channel(run_id), msg)

    async def run_statuses(self, run_ids: Sequence[str]) -> dict[str, str | None]:
        """The status in each run's ``_fc.run`` record (None when the run does not exist):
        one ``HGET`` per run, pipelined when there are several."""
        if len(run_ids) == 1:
            raw: list[Any] = [await self.client.hget(self.layout.run(run_ids[0]), RUN_KEY)]
        else:
            pipe = self.client.pipeline(transaction=False)
            for rid in run_ids:
                pipe.hget(self.layout.run(rid), RUN_KEY)
            raw = await pipe.execute()
        out: dict[str, str | None] = {}
        for rid, text in zip(run_ids, raw, strict=True):
            rec = None if text is None else decode_value(text)
            out[rid] = str(rec.get("status")) if isinstance(rec, dict) else None
        return out

    async def listen_final(
        self, subscribed: Callable[[], None], notify: Callable[[str], None]
    ) -> None:
        """A :data:`~flowcraft.distributed.results.Listener`: one pattern subscription to the
        final-result channels of the deployment, calling ``notify`` per announced run."""
        prefix_len = len(self.layout.final_channel(""))
        pubsub = self.client.pubsub()
        try:
            await pubsub.psubscribe(self.layout.final_channel("*"))
            subscribed()
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                if msg is None or msg.get("type") != "pmessage":
                    continue
                ch = msg["channel"]
                ch = ch.decode("utf-8") if isinstance(ch, bytes) else str(ch)
                notify(ch[prefix_len:])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def final_source(self) -> PushSource:
        """Waiting for runs of this store to become final: :meth:`listen_final` announces,
        :meth:`run_statuses` checks (see :mod:`flowcraft.distributed.results`)."""
        if self._final is None:
            self._final = PushSource(self.run_statuses, self.listen_final, recheck_every=2.0)
        return self._final

    async def aclose(self) -> None:
        """Stop the notification listener (the client is closed by its owner)."""
        if self._final is not None:
            await self._final.aclose()


__all__ = [
    "VERSION_FIELD",
    "RedisCoordinationStore",
    "RedisKeyLayout",
    "RedisRunContext",
    "RedisStateStore",
    "RedisStoreStats",
    "connect",
]
